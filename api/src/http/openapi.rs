//! The OpenAPI 3.1 document (`/openapi.json`) and a browsable page (`/docs`), generated from
//! the same route table that registers the handlers ([`Routes`]): a route cannot exist
//! without its documentation, nor be documented without existing. Request bodies are
//! described by the JSON Schemas of the very types the handlers parse (schemars), so the
//! document follows the code.

use actix_web::{web, HttpResponse};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{json, Map, Value};

/// One documented operation.
pub struct Doc {
    pub summary: &'static str,
    /// Who may call it (the roles), shown in the description.
    pub who: &'static str,
    pub query: &'static [(&'static str, &'static str)],
    pub body: Option<fn(&mut SchemaGenerator) -> Schema>,
    /// The success status and what it returns.
    pub answer: (u16, &'static str),
    pub authenticated: bool,
}

impl Doc {
    pub const fn new(summary: &'static str, who: &'static str) -> Self {
        Self {
            summary,
            who,
            query: &[],
            body: None,
            answer: (200, "OK"),
            authenticated: true,
        }
    }

    pub fn body<T: JsonSchema>(mut self) -> Self {
        self.body = Some(|generator| generator.subschema_for::<T>());
        self
    }

    pub const fn query(mut self, query: &'static [(&'static str, &'static str)]) -> Self {
        self.query = query;
        self
    }

    pub const fn answer(mut self, status: u16, what: &'static str) -> Self {
        self.answer = (status, what);
        self
    }

    pub const fn public(mut self) -> Self {
        self.authenticated = false;
        self
    }
}

/// Registers routes and, at the same time, records their documentation.
pub struct Routes<'a> {
    cfg: Option<&'a mut web::ServiceConfig>,
    pub documented: Vec<(actix_web::http::Method, &'static str, Doc)>,
}

impl<'a> Routes<'a> {
    pub fn registering(cfg: &'a mut web::ServiceConfig) -> Self {
        Self {
            cfg: Some(cfg),
            documented: Vec::new(),
        }
    }

    pub fn documenting() -> Self {
        Self {
            cfg: None,
            documented: Vec::new(),
        }
    }

    /// Adds `handler` at `method` `/v1{path}`, documented by `doc`.
    pub fn add<F, Args>(
        &mut self,
        method: actix_web::http::Method,
        path: &'static str,
        handler: F,
        doc: Doc,
    ) -> &mut Self
    where
        F: actix_web::Handler<Args>,
        Args: actix_web::FromRequest + 'static,
        F::Output: actix_web::Responder + 'static,
    {
        if let Some(cfg) = self.cfg.as_deref_mut() {
            cfg.route(path, web::method(method.clone()).to(handler));
        }
        self.documented.push((method, path, doc));
        self
    }
}

fn problem_schema() -> Value {
    json!({
        "type": "object",
        "description": "RFC 9457 problem details",
        "required": ["type", "title", "status", "detail"],
        "properties": {
            "type": {"type": "string", "description": "urn:latchkey:problem:<kind>"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "field": {"type": "string", "description": "the request field at fault"}
        }
    })
}

/// The whole document.
pub fn document() -> Value {
    let mut routes = Routes::documenting();
    super::all_routes(&mut routes);
    let mut generator = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "#/components/schemas/".into())
        .into_generator();
    let mut paths = Map::new();
    for (method, path, doc) in &routes.documented {
        let full = format!("/v1{path}");
        let mut parameters: Vec<Value> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| {
                json!({"name": name, "in": "path", "required": true,
                       "schema": {"type": "string", "format": "uuid"}})
            })
            .collect();
        parameters.extend(doc.query.iter().map(|(name, what)| {
            json!({"name": name, "in": "query", "required": false, "description": what,
                   "schema": {"type": "string"}})
        }));
        let mut responses = Map::new();
        responses.insert(
            doc.answer.0.to_string(),
            json!({"description": doc.answer.1}),
        );
        for (status, what) in [
            (400, "malformed input; `field` names it"),
            (401, "no valid bearer token"),
            (403, "the caller may see this but not do it"),
            (404, "does not exist, or is not visible to the caller"),
            (409, "conflict; retry"),
            (422, "a domain rule refused it; `detail` says which"),
            (
                429,
                "too many failed authentications from this client or with this token id; \
                 `Retry-After` says when to try again",
            ),
        ] {
            responses.insert(
                status.to_string(),
                json!({"description": what, "content": {"application/problem+json":
                    {"schema": {"$ref": "#/components/schemas/Problem"}}}}),
            );
        }
        let mut operation = json!({
            "summary": doc.summary,
            "description": format!("Who: {}", doc.who),
            "operationId": format!("{}_{}", method.as_str().to_lowercase(),
                full.trim_start_matches('/').replace(['/', '{', '}', '-'], "_")),
            "parameters": parameters,
            "responses": responses,
        });
        if let Some(body) = doc.body {
            let schema = body(&mut generator);
            operation["requestBody"] = json!({
                "required": true,
                "content": {"application/json": {"schema": schema}}
            });
        }
        if doc.authenticated {
            operation["security"] = json!([{"bearer": []}]);
        } else {
            operation["security"] = json!([]);
        }
        let entry = paths
            .entry(full)
            .or_insert_with(|| Value::Object(Map::new()));
        entry[method.as_str().to_lowercase()] = operation;
    }
    let mut schemas: Map<String, Value> = generator.take_definitions(true).into_iter().collect();
    schemas.insert("Problem".into(), problem_schema());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Latchkey",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Just-in-time, audited admin access to customer computers for MSPs. \
                Every call but agent enrollment needs `Authorization: Bearer <token>`. \
                Another tenant's data answers 404, exactly as if it did not exist."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}]
    })
}

pub async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(document())
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
      ops.appendChild(d);
    }
  }
  const s = document.createElement('details'); s.className = 'op';
  s.innerHTML = '<summary>Schemas</summary><pre></pre>';
  s.querySelector('pre').textContent = JSON.stringify(doc.components.schemas, null, 2); ops.appendChild(s);
});
</script></body></html>"#;
