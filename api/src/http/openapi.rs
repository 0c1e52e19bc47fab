//! The OpenAPI 3.1 document (`/openapi.json`) and a browsable page (`/docs`), generated from
//! the same route table that registers the handlers ([`Routes`]): a route cannot exist
//! without its documentation, nor be documented without existing. Request bodies, success
//! bodies and query parameters are described by the very types and declarations the handlers
//! use: the JSON Schemas (schemars) of the types they parse and answer, read from the
//! handler's signature ([`Takes`] for its arguments, [`Answers`] for its return type), and
//! the [`Query`] list every request's query string is checked against. A path with a method
//! it does not have answers 405 naming the methods it has.

use super::answer::Answers;
use crate::problem::ApiError;
use actix_web::http::{header, Method, StatusCode};
use actix_web::{web, HttpResponse, ResponseError};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// One documented operation.
pub struct Doc {
    pub summary: &'static str,
    /// Who may call it (the roles), shown in the description.
    pub who: &'static str,
    pub query: &'static [Query],
    /// The success status and what it means; the body's schema comes from the handler's
    /// return type.
    pub answer: (u16, &'static str),
    /// Takes `Idempotency-Key`.
    pub idempotent: bool,
    /// Problem statuses beyond those the operation's shape implies (see [`problems`]).
    pub problems: &'static [u16],
}

impl Doc {
    pub const fn new(summary: &'static str, who: &'static str) -> Self {
        Self {
            summary,
            who,
            query: &[],
            answer: (200, "success"),
            idempotent: false,
            problems: &[],
        }
    }

    pub const fn query(mut self, query: &'static [Query]) -> Self {
        self.query = query;
        self
    }

    pub const fn answer(mut self, status: u16, what: &'static str) -> Self {
        self.answer = (status, what);
        self
    }

    pub const fn idempotent(mut self) -> Self {
        self.idempotent = true;
        self
    }

    pub const fn problems(mut self, problems: &'static [u16]) -> Self {
        self.problems = problems;
        self
    }
}

/// A query-string parameter an operation takes: documented here and checked by
/// [`super::Params::parse`] from this same declaration.
#[derive(Debug, Clone, Copy)]
pub struct Query {
    pub name: &'static str,
    pub what: &'static str,
    pub kind: Kind,
}

/// What a query parameter holds.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Uuid,
    /// A whole number from `min` to `max`; `default` when absent.
    Integer {
        min: u64,
        max: u64,
        default: u64,
    },
    /// `true` or `false` (also `1` or `0`); false when absent.
    Flag,
    /// An RFC 3339 time.
    Time,
    /// A global log position, `<commit>.<prepare>` or `<commit>`.
    Position,
    /// The audit trail's `next_cursor`.
    Cursor,
    /// A stream name.
    Stream,
    /// One of these words.
    OneOf(&'static [&'static str]),
    /// Any text.
    Text,
}

impl Query {
    pub const fn new(name: &'static str, kind: Kind, what: &'static str) -> Self {
        Self { name, what, kind }
    }

    /// The page size of every list: at most this many rows, 1 to 1000 (100 when absent).
    pub const PAGE_LIMIT: Query = Query::new(
        "limit",
        Kind::Integer {
            min: 1,
            max: 1000,
            default: 100,
        },
        "at most this many",
    );

    /// The parameter's JSON Schema.
    pub fn schema(&self) -> Value {
        match self.kind {
            Kind::Uuid => json!({"type": "string", "format": "uuid"}),
            Kind::Integer { min, max, default } => json!({
                "type": "integer", "minimum": min, "maximum": max, "default": default
            }),
            Kind::Flag => json!({"type": "boolean", "default": false}),
            Kind::Time => json!({"type": "string", "format": "date-time"}),
            // At most 18 digits a part: positions are stored as signed 64-bit integers.
            Kind::Position => json!({
                "type": "string", "pattern": "^[0-9]{1,18}(\\.[0-9]{1,18})?$",
                "examples": ["42.42"]
            }),
            Kind::Cursor => json!({
                "type": "string", "pattern": "^[0-9]{1,18}\\.[0-9]{1,18}\\.[0-9]{1,9}$",
                "description": "opaque: the next_cursor of the previous page"
            }),
            Kind::Stream => json!({
                "type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}$",
                "examples": ["computer-0190e0a4-8f6a-7c1e-9d1c-3b1f6f3b9a10"]
            }),
            Kind::OneOf(words) => json!({"type": "string", "enum": words}),
            Kind::Text => json!({"type": "string"}),
        }
    }
}

/// What a handler's arguments take from the request, as the document shows it: implemented
/// by every extractor a handler uses, and by their tuples (a handler's `Args`), so the
/// request body's schema and whether a token is needed come from the handler's signature.
pub trait Takes {
    /// Whether an argument needs a bearer token.
    const AUTHENTICATED: bool = false;

    /// The request body's schema, if an argument parses one.
    fn body(_: &mut SchemaGenerator) -> Option<Schema> {
        None
    }
}

impl<T: JsonSchema> Takes for crate::problem::JsonBody<T> {
    fn body(generator: &mut SchemaGenerator) -> Option<Schema> {
        Some(generator.subschema_for::<T>())
    }
}

impl Takes for super::Caller {
    const AUTHENTICATED: bool = true;
}

impl<T: ?Sized> Takes for web::Data<T> {}
impl<T> Takes for web::Path<T> {}
impl Takes for actix_web::HttpRequest {}
impl Takes for () {}

macro_rules! takes_tuple {
    ($($part:ident),+) => {
        impl<$($part: Takes),+> Takes for ($($part,)+) {
            const AUTHENTICATED: bool = $($part::AUTHENTICATED)||+;

            fn body(generator: &mut SchemaGenerator) -> Option<Schema> {
                None$(.or_else(|| $part::body(generator)))+
            }
        }
    };
}

takes_tuple!(A);
takes_tuple!(A, B);
takes_tuple!(A, B, C);
takes_tuple!(A, B, C, D);
takes_tuple!(A, B, C, D, E);

/// One registered operation and its documentation.
pub struct Operation {
    pub method: Method,
    pub path: &'static str,
    pub doc: Doc,
    /// From the handler's arguments ([`Takes`]).
    authenticated: bool,
    body: fn(&mut SchemaGenerator) -> Option<Schema>,
    /// From the handler's return type ([`Answers`]).
    answer: fn(&mut SchemaGenerator) -> Option<super::answer::Body>,
}

/// A route to register: its method, the query parameters it takes, and the route.
type Registered = (Method, &'static [Query], actix_web::Route);

/// Registers routes and, at the same time, records their documentation.
pub struct Routes<'a> {
    cfg: Option<&'a mut web::ServiceConfig>,
    /// The routes of each path, with the query parameters each takes, in the order the
    /// paths were first added.
    resources: Vec<(&'static str, Vec<Registered>)>,
    pub documented: Vec<Operation>,
}

impl<'a> Routes<'a> {
    pub fn registering(cfg: &'a mut web::ServiceConfig) -> Self {
        Self {
            cfg: Some(cfg),
            resources: Vec::new(),
            documented: Vec::new(),
        }
    }

    pub fn documenting() -> Self {
        Self {
            cfg: None,
            resources: Vec::new(),
            documented: Vec::new(),
        }
    }

    /// Adds `handler` at `method` `/v1{path}`, documented by `doc`, by its arguments (the
    /// request body, the token) and by its return type (the success body).
    pub fn add<F, Args>(
        &mut self,
        method: Method,
        path: &'static str,
        handler: F,
        doc: Doc,
    ) -> &mut Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + Takes + 'static,
        F::Output: actix_web::Responder + Answers + 'static,
    {
        if self.cfg.is_some() {
            let route = (
                method.clone(),
                doc.query,
                web::method(method.clone()).to(handler),
            );
            match self.resources.iter_mut().find(|(p, _)| *p == path) {
                Some((_, routes)) => routes.push(route),
                None => self.resources.push((path, vec![route])),
            }
        }
        self.documented.push(Operation {
            method,
            path,
            doc,
            authenticated: Args::AUTHENTICATED,
            body: Args::body,
            answer: <F::Output as Answers>::body,
        });
        self
    }

    /// Registers every path added as one resource: its methods, and a 405 naming them for any
    /// other method. Every request's query string is checked against the parameters its
    /// operation declares before the handler runs (400 naming the one at fault), so an
    /// operation takes exactly the parameters its documentation shows.
    ///
    /// The resources are registered under one scope per first path segment (`/tenants`,
    /// `/sessions`, …), so a request is matched against its scope's routes only. A scope
    /// takes every path under its prefix (actix-web does not fall through to the next), so
    /// the scopes follow the paths, not the modules; a path no route has answers as before.
    pub fn finish(self) {
        let Some(cfg) = self.cfg else { return };
        let mut scopes: Vec<(&'static str, Vec<_>)> = Vec::new();
        for (path, routes) in self.resources {
            let (prefix, rest) = first_segment(path);
            let resource = resource(rest, routes);
            match scopes.iter_mut().find(|(p, _)| *p == prefix) {
                Some((_, resources)) => resources.push(resource),
                None => scopes.push((prefix, vec![resource])),
            }
        }
        for (prefix, resources) in scopes {
            let scope = resources
                .into_iter()
                .fold(web::scope(prefix), |scope, resource| {
                    scope.service(resource)
                })
                // A scope does not inherit the enclosing scope's default.
                .default_service(web::to(no_such_path));
            cfg.service(scope);
        }
    }
}

/// `/tenants/{tenant_id}/policy` as (`/tenants`, `/{tenant_id}/policy`); `/tenants` as
/// (`/tenants`, ``).
fn first_segment(path: &'static str) -> (&'static str, &'static str) {
    let end = path[1..].find('/').map_or(path.len(), |i| i + 1);
    path.split_at(end)
}

/// One path's resource: its routes, a 405 for any other method, and the query check.
fn resource(
    path: &'static str,
    routes: Vec<Registered>,
) -> impl actix_web::dev::HttpServiceFactory + 'static {
    use futures::future::{ready, Either};
    let allowed: Vec<Method> = routes.iter().map(|(method, ..)| method.clone()).collect();
    let queries: Vec<(Method, &'static [Query])> = routes
        .iter()
        .map(|(method, query, _)| (method.clone(), *query))
        .collect();
    let mut resource = web::resource(path);
    for (.., route) in routes {
        resource = resource.route(route);
    }
    resource
        .default_service(web::to(move || {
            let allowed = allowed.clone();
            async move { method_not_allowed(&allowed) }
        }))
        .wrap_fn(move |request, service| {
            let refused = queries
                .iter()
                .find(|(method, _)| method == request.method())
                .and_then(|(_, declared)| {
                    super::Params::of(request.query_string(), declared).err()
                });
            match refused {
                Some(problem) => Either::Left(ready(Ok(request.error_response(problem)))),
                None => Either::Right(actix_web::dev::Service::call(service, request)),
            }
        })
}

/// 405 with `Allow` and a problem naming the methods the path has.
fn method_not_allowed(allowed: &[Method]) -> HttpResponse {
    let list = allowed
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
        format!("this path answers {list} only"),
    )
    .error_response();
    if let Ok(value) = header::HeaderValue::from_str(&list) {
        response.headers_mut().insert(header::ALLOW, value);
    }
    response
}

/// 404 for a path under `/v1` that no route has.
pub async fn no_such_path() -> HttpResponse {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "no-such-path",
        "no such path; /openapi.json lists them all",
    )
    .error_response()
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "pattern": "^urn:latchkey:problem:[a-z-]+$",
                     "description": "urn:latchkey:problem:<kind>, stable for clients to match on"},
            "title": {"type": "string"},
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "the request field at fault"}
        }
    })
}

/// The problem statuses an operation may answer, from its shape: malformed input (any
/// operation: an unknown query parameter is refused), authentication, roles and throttled
/// guessing where it needs a token, 404 where it names something, conflicts, refused rules
/// and missing things where it writes, body limits where it takes a body; 5XX always.
fn problems(
    operation: &Operation,
    path_params: bool,
    takes_body: bool,
) -> Vec<(String, &'static str)> {
    let doc = &operation.doc;
    let writes = operation.method != Method::GET;
    // 400 everywhere: every operation refuses a query parameter it does not declare.
    let mut statuses: Vec<u16> = vec![400];
    if operation.authenticated {
        // 429: failed authentication is throttled before the token is looked at.
        statuses.extend([401, 403, 429]);
    }
    if path_params {
        statuses.push(404);
    }
    if writes {
        // A command's rules may also find what it names missing (an account, a request).
        statuses.extend([404, 409, 422]);
    }
    if takes_body {
        statuses.extend([413, 415]);
    }
    statuses.extend(doc.problems);
    statuses.sort_unstable();
    statuses.dedup();
    let mut out: Vec<(String, &'static str)> = statuses
        .into_iter()
        .map(|status| (status.to_string(), problem_meaning(status)))
        .collect();
    out.push((
        "5XX".into(),
        "the server failed (500), its store is unavailable (503), or its storage is full \
         and nothing was written (507, urn:latchkey:problem:storage-full)",
    ));
    out
}

fn problem_meaning(status: u16) -> &'static str {
    match status {
        400 => "malformed input (body, path or query); `field` names it",
        401 => "no valid bearer token (or an expired one: urn:latchkey:problem:token-expired)",
        403 => "the caller may see this but not do it",
        404 => "does not exist, or is not visible to the caller",
        409 => {
            "conflict (a taken name, a state that does not allow it, or a concurrent change); \
                `field` names the field when one is at fault"
        }
        410 => "the token was used or has expired",
        413 => "the body is larger than 64 KiB",
        415 => "the body is not Content-Type: application/json",
        422 => "a rule refused it; `detail` says which and `field` names the field",
        429 => {
            "too many failed authentications from this client or with this token id; \
                `Retry-After` says when to try again"
        }
        _ => "see the problem's detail",
    }
}

/// The whole document.
pub fn document() -> Value {
    let mut routes = Routes::documenting();
    super::all_routes(&mut routes);
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .with_transform(UnsignedMaxima)
        .into_generator();
    let mut paths = Map::new();
    for operation in &routes.documented {
        let (method, path, doc) = (&operation.method, operation.path, &operation.doc);
        let full = format!("/v1{path}");
        let path_names: Vec<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let mut parameters: Vec<Value> = path_names
            .iter()
            .map(|name| {
                json!({"name": name, "in": "path", "required": true,
                       "schema": path_schema(name)})
            })
            .collect();
        parameters.extend(doc.query.iter().map(|query| {
            json!({"name": query.name, "in": "query", "required": false,
                   "description": query.what, "schema": query.schema()})
        }));
        if doc.idempotent {
            parameters.push(json!({
                "name": super::idempotency::HEADER, "in": "header", "required": false,
                "description": "a retry with the same key gets the first answer instead of \
                    running again (per token; 409 while the first still runs, 422 with \
                    another method, path or body)",
                "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"}
            }));
        }
        let mut responses = Map::new();
        let mut success = json!({"description": doc.answer.1});
        if let Some(mut body) = (operation.answer)(&mut generator) {
            schemars::transform::Transform::transform(&mut UnsignedMaxima, &mut body.schema);
            success["content"] = json!({ body.media_type: {"schema": body.schema} });
        }
        responses.insert(doc.answer.0.to_string(), success);
        let request_body = (operation.body)(&mut generator);
        for (status, what) in problems(operation, !path_names.is_empty(), request_body.is_some()) {
            let mut problem = json!({"description": what, "content": {"application/problem+json":
                {"schema": {"$ref": "#/components/schemas/Problem"}}}});
            if status == "429" {
                problem["headers"] = json!({"Retry-After": {
                    "description": "seconds until a new attempt is counted again",
                    "schema": {"type": "integer", "minimum": 0}
                }});
            }
            responses.insert(status, problem);
        }
        let mut entry = json!({
            "summary": doc.summary,
            "description": format!("Who: {}", doc.who),
            "operationId": format!("{}_{}", method.as_str().to_lowercase(),
                full.trim_start_matches('/').replace(['/', '{', '}', '-'], "_")),
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(mut schema) = request_body {
            schemars::transform::Transform::transform(&mut UnsignedMaxima, &mut schema);
            entry["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema}}
            });
        }
        entry["security"] = match operation.authenticated {
            true => json!([{"bearer": []}]),
            false => json!([]),
        };
        let methods = paths
            .entry(full)
            .or_insert_with(|| Value::Object(Map::new()));
        methods[method.as_str().to_lowercase()] = entry;
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert("Problem".into(), problem_schema());
    json!({
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Latchkey",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Just-in-time, audited admin access to customer computers for MSPs. \
                Every call but agent enrollment needs `Authorization: Bearer <token>`. \
                Another tenant's data answers 404, exactly as if it did not exist. Errors are \
                RFC 9457 problems (`application/problem+json`). A path asked with a method it \
                does not have answers 405 with `Allow`."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    })
}

/// A path parameter's schema: every one is a UUID; a token id is also written as the 32 hex
/// digits of the token text and its listing.
fn path_schema(name: &str) -> Value {
    match name {
        "token_id" => json!({
            "type": "string",
            "description": "32 hex digits as in the token text and its listing (a hyphenated \
                UUID is taken too)",
            "pattern": "^([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-\
                [0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
        }),
        _ => json!({"type": "string", "format": "uuid"}),
    }
}

/// Gives the unsigned integers schemars describes by `format` (`uint32`, `uint64`, …) their
/// maximum too, so a schema never allows a number the server's type cannot hold.
#[derive(Debug, Clone)]
struct UnsignedMaxima;

impl schemars::transform::Transform for UnsignedMaxima {
    fn transform(&mut self, schema: &mut Schema) {
        let maximum: Option<Value> = match schema.get("format").and_then(Value::as_str) {
            Some("uint8") => Some(u8::MAX.into()),
            Some("uint16") => Some(u16::MAX.into()),
            Some("uint32") => Some(u32::MAX.into()),
            Some("uint64" | "uint") => Some(u64::MAX.into()),
            _ => None,
        };
        if let (Some(maximum), Some(object)) = (maximum, schema.as_object_mut()) {
            object.entry("maximum").or_insert(maximum);
        }
        schemars::transform::transform_subschemas(self, schema);
    }
}

/// The document as this server serves it: with its own maximum token lifetime.
pub async fn openapi_json(services: web::Data<super::Services>) -> HttpResponse {
    let mut document = document();
    let longest = services.tokens.lifetimes().max.as_secs();
    for schema in ["NewToken", "Rotation"] {
        let property = &mut document["components"]["schemas"][schema]["properties"]["expires_in"];
        if property.is_object() {
            property["maximum"] = longest.into();
        }
    }
    HttpResponse::Ok().json(document)
}

/// A self-contained page (no outside scripts) that renders `/openapi.json`.
pub async fn docs_page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(DOCS_HTML)
}

const DOCS_HTML: &str = r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Latchkey API</title>
<style>
body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#222}
h1{margin-bottom:.2rem} .op{border:1px solid #ddd;border-radius:6px;margin:.6rem 0;padding:.2rem .8rem}
.m{display:inline-block;min-width:4.2rem;font-weight:700} .get{color:#1565c0}.post{color:#2e7d32}
.put{color:#ef6c00}.delete{color:#c62828} code,pre{font:13px ui-monospace,monospace}
pre{background:#f6f8fa;padding:.6rem;overflow:auto;max-height:24rem} summary{cursor:pointer}
.who{color:#555}
</style></head><body>
<h1>Latchkey API</h1><p id="intro"></p><div id="ops">Loading /openapi.json …</div>
<script>
fetch('/openapi.json').then(r => r.json()).then(doc => {
  document.getElementById('intro').textContent = doc.info.description;
  const ops = document.getElementById('ops'); ops.textContent = '';
  for (const [path, methods] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const d = document.createElement('details'); d.className = 'op';
      const s = document.createElement('summary');
      s.innerHTML = `<span class="m ${method}">${method.toUpperCase()}</span> <code></code> — <span class="t"></span>`;
      s.querySelector('code').textContent = path; s.querySelector('.t').textContent = op.summary;
      d.appendChild(s);
      const who = document.createElement('p'); who.className = 'who'; who.textContent = op.description; d.appendChild(who);
      const params = (op.parameters || []).map(p => `${p.in} ${p.name}${p.description ? ': ' + p.description : ''}`);
      if (params.length) { const p = document.createElement('pre'); p.textContent = params.join('\n'); d.appendChild(p); }
      if (op.requestBody) { const b = document.createElement('pre');
        b.textContent = 'request body:\n' + JSON.stringify(op.requestBody.content['application/json'].schema, null, 2); d.appendChild(b); }
      const r = document.createElement('pre');
      r.textContent = Object.entries(op.responses).map(([k, v]) => `${k} ${v.description}`).join('\n'); d.appendChild(r);
      for (const [status, answer] of Object.entries(op.responses)) {
        if (!status.startsWith('2') || !answer.content) continue;
        for (const [media, body] of Object.entries(answer.content)) {
          const b = document.createElement('pre');
          b.textContent = `${status} ${media}:\n` + JSON.stringify(body.schema, null, 2); d.appendChild(b);
        }
      }
      ops.appendChild(d);
    }
  }
  const s = document.createElement('details'); s.className = 'op';
  s.innerHTML = '<summary>Schemas</summary><pre></pre>';
  s.querySelector('pre').textContent = JSON.stringify(doc.components.schemas, null, 2); ops.appendChild(s);
});
</script></body></html>"#;
