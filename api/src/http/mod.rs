//! The HTTP surface: routes under `/v1/`, the bearer-token extractor, and thin handlers that
//! parse, authorize, call one command or query, and map the result. Rules live in the
//! domain, orchestration in the application layer (`latchkey_app::commands`); nothing here
//! decides anything itself.
//!
//! One module per resource, each adding its own routes to the one route table
//! ([`all_routes`]): `tenants`, `policy`, `technicians`, `computers`, `sessions`, `tokens`,
//! `audit`, `agent`. What they share (the caller, the visibility checks, query parameters)
//! is here.
//!
//! Authorization never reveals what the caller may not see: a tenant, computer, session or
//! technician outside the caller's reach is answered with 404, exactly as if it did not
//! exist; 403 is only for an action on something the caller may see but not change.

mod agent;
pub mod answer;
mod audit;
mod computers;
mod idempotency;
pub mod openapi;
mod policy;
mod sessions;
mod technicians;
mod tenants;
mod tokens;

use crate::problem::{payload_config, ApiError};
use crate::ratelimit::{Attempt, AuthLimiter};
use actix_web::dev::Payload;
use actix_web::http::{header, StatusCode};
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use latchkey_app::commands::{self, CommandError, Envelope, StateCache};

use latchkey_app::wakeups::StreamWakeups;
use latchkey_domain::computer::Computer;
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::Email;
use latchkey_domain::technician::{Technician, TechnicianState};
use latchkey_domain::tenant::Tenant;
use latchkey_domain::Actor;
use latchkey_projections::{ProjectionError, Queries, ReadView};
use latchkey_server_stores::secrets::SecretStore;
use latchkey_server_stores::tokens::{Authentication, Principal, TokenStore};
use latchkey_store::{EventStore, Position, StreamName};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;
use uuid::Uuid;

use latchkey_server_stores::idempotency::{IdempotencyStore, Scope};

/// What every handler can reach.
pub struct Services {
    pub store: Arc<dyn EventStore>,
    /// Shared with the process runner, which revokes an offboarded technician's tokens.
    pub tokens: Arc<TokenStore>,
    /// Read-only access to the read models.
    pub view: Arc<ReadView>,
    pub secrets: SecretStore,
    pub idempotency: IdempotencyStore,
    /// The read models' checkpoint (for metrics).
    pub progress: watch::Receiver<Option<Position>>,
    /// Long polls wait here on their stream; [`latchkey_app::runner::follow_log`] wakes them.
    pub wakeups: Arc<StreamWakeups>,
    /// Aggregate states, shared with the process runner.
    pub cache: Arc<StateCache>,
    /// Whether the process managers run (for `/healthz` and `/metrics`).
    pub health: Arc<latchkey_app::health::Health>,
    /// Counts failed authentications and refuses clients over the limit (429).
    pub limiter: AuthLimiter,
}

impl Services {
    /// Runs a read-model query off the async executor.
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl FnOnce(Queries<'_>) -> Result<T, ProjectionError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let view = self.view.clone();
        web::block(move || view.with(f))
            .await
            .map_err(|e| internal("blocking pool", &e))?
            .map_err(ApiError::from)
    }

    /// Runs one command through the one command path.
    pub async fn execute<A>(
        &self,
        principal: &Principal,
        stream: String,
        command: A::Command,
    ) -> Result<commands::Executed<A>, ApiError>
    where
        A: commands::Stored,
        A::Command: Clone,
    {
        self.execute_in(Scope::fresh(), principal, stream, command)
            .await
    }

    /// [`Services::execute`] as part of an idempotent request's claim: the events carry the
    /// claim's id as their correlation id, and a claim resumed after a crash whose events
    /// are already in the stream decides nothing again (the state as it is now is the
    /// answer).
    pub async fn execute_in<A>(
        &self,
        scope: Scope,
        principal: &Principal,
        stream: String,
        command: A::Command,
    ) -> Result<commands::Executed<A>, ApiError>
    where
        A: commands::Stored,
        A::Command: Clone,
    {
        let stream = stream_name(stream)?;
        if scope.resumed
            && commands::stream_has_correlation(&*self.store, &stream, scope.claim_id)
                .await
                .map_err(CommandError::from)?
        {
            let loaded = commands::load_cached::<A>(&*self.store, &self.cache, &stream).await?;
            return Ok(commands::Executed {
                events: Vec::new(),
                state: loaded.state,
                attempts: 0,
            });
        }
        let envelope = envelope_in(scope, principal);
        Ok(
            commands::execute_cached::<A, _>(&*self.store, &self.cache, &stream, &envelope, |_| {
                command.clone()
            })
            .await?,
        )
    }

    /// An aggregate's current state, straight from its stream (always up to date, unlike the
    /// read models).
    pub async fn load<A: commands::Stored>(&self, stream: String) -> Result<A, ApiError> {
        Ok(
            commands::load_cached::<A>(&*self.store, &self.cache, &stream_name(stream)?)
                .await?
                .state,
        )
    }
}

impl From<ProjectionError> for ApiError {
    fn from(e: ProjectionError) -> Self {
        match e {
            ProjectionError::BadInput { field, reason } => ApiError::bad_request(field, reason),
            other => internal("read models", &other),
        }
    }
}

/// Logs an internal failure under a fresh reference and returns the 500 naming only that.
/// Runs `f`, a call to the token, secret or idempotency store, off the async executor. A
/// failure is a 500 whose log line names `what` (never the data), or a 507 when the storage
/// is full ([`ApiError::failed`]).
pub async fn blocking<T, E>(
    services: &web::Data<Services>,
    what: &'static str,
    f: impl FnOnce(&Services) -> Result<T, E> + Send + 'static,
) -> Result<T, ApiError>
where
    T: Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let services = services.clone();
    web::block(move || f(&services))
        .await
        .map_err(|e| internal("blocking pool", &e))?
        .map_err(|e| ApiError::failed(what, &e))
}

pub fn internal(what: &str, error: &dyn std::fmt::Display) -> ApiError {
    let reference = Uuid::now_v7().to_string();
    tracing::error!(%error, %reference, "{what} failed");
    ApiError::internal(&reference)
}

/// The authentication attempt `req` makes with `presented` (a bearer or enrollment token):
/// its client address (the peer, or what a trusted proxy forwarded) and the token's id.
pub fn attempt(services: &Services, req: &HttpRequest, presented: Option<&str>) -> Attempt {
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|v| v.to_str().ok());
    services
        .limiter
        .attempt(req.peer_addr(), forwarded, presented)
}

/// The caller of a request, as a handler takes it: the [`Principal`] of its bearer token.
pub struct Caller(pub Principal);

/// The caller, from the bearer token: 401 without a valid one (a problem saying so when it
/// has expired). An offboarded technician's tokens are revoked (see
/// [`latchkey_app::technicians::offboard`]); as defense in depth, a technician's token also
/// acts only while this server knows the technician as registered and not offboarded
/// ([`latchkey_app::technicians::token_may_act`], from the cached state, without a read of the
/// store when it has one).
impl FromRequest for Caller {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Caller, ApiError>>>>;

    /// Checks the bearer token, unless the client or the token id has failed too often: then
    /// 429 before the token is looked at (so a right guess while limited is refused too).
    /// Only failures to present a right secret are counted (missing, malformed, unknown,
    /// revoked or wrong tokens; not an expired one, nor an offboarded technician's). The
    /// check, the look-up and the count run without an await between them, so no other
    /// request of this worker runs in between.
    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let services = req.app_data::<web::Data<Services>>().cloned();
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|v| v.trim().to_owned());
        let attempt = services
            .as_ref()
            .map(|services| attempt(services, req, bearer.as_deref()));
        Box::pin(async move {
            let services = services.ok_or_else(|| ApiError::internal("no-services"))?;
            let attempt = attempt.ok_or_else(|| ApiError::internal("no-services"))?;
            let now = std::time::Instant::now();
            services
                .limiter
                .check(&attempt, now)
                .map_err(ApiError::too_many_attempts)?;
            let authenticated = match &bearer {
                Some(bearer) => services.tokens.authenticate(bearer),
                None => Ok(Authentication::Refused),
            };
            let principal = match authenticated {
                Ok(Authentication::Valid(principal)) => principal,
                Ok(Authentication::Expired(at)) => return Err(ApiError::token_expired(at)),
                Ok(Authentication::Refused) => {
                    services.limiter.failed(&attempt, now);
                    return Err(ApiError::unauthorized());
                }
                Err(e) => return Err(internal("token store", &e)),
            };
            if let Some(technician) = principal.technician_id() {
                let active = latchkey_app::technicians::token_may_act(
                    &*services.store,
                    &services.cache,
                    &services.tokens,
                    technician,
                )
                .await?;
                if !active {
                    return Err(ApiError::unauthorized());
                }
            }
            Ok(Caller(principal))
        })
    }
}

/// Who and why for a request's events: the caller, and the request's claim as correlation.
pub fn envelope_in(scope: Scope, principal: &Principal) -> Envelope {
    Envelope {
        actor: principal.actor_string(),
        correlation_id: scope.claim_id,
        causation_id: None,
    }
}

/// [`envelope_in`] for a request of its own (no `Idempotency-Key`).
pub fn envelope(principal: &Principal) -> Envelope {
    envelope_in(Scope::fresh(), principal)
}

/// The actor a person's command records: their e-mail if the token names one.
pub fn actor(principal: &Principal) -> Actor {
    if let Some(computer_id) = principal.agent_computer_id() {
        return Actor::Agent { computer_id };
    }
    match Email::parse(principal.name.clone()) {
        Ok(email) => Actor::User { email },
        Err(_) => Actor::System,
    }
}

fn stream_name(name: String) -> Result<StreamName, ApiError> {
    StreamName::new(name).map_err(|e| ApiError::from(CommandError::Store(e)))
}

/// Parses a path id; a malformed one is a 400 naming the parameter.
pub fn path_id(raw: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request(field, format!("{field} must be a UUID")))
}

/// Marks a response that carries a secret as never to be cached.
pub fn no_store(mut response: HttpResponse) -> HttpResponse {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}

/// Who may call an operation, as its documentation says (`openapi::Doc::who`); the wordings
/// several resources share.
pub mod who {
    pub const ADMINS: &str = "msp_admin; tenant_admin of this tenant";
    pub const READERS: &str = "msp_admin; tenant_admin or auditor of this tenant; auditor of all";
    pub const MEMBERS: &str = "msp_admin; tenant_admin or auditor of this tenant; auditor of all; \
                               technicians who are members";
    pub const TECHNICIAN: &str = "technician who is a member of the tenant";
}

/// The time a command records.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

pub fn forbidden(detail: &str) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", detail)
}

/// The tenant, if the caller may read it; otherwise 404 as if it did not exist.
/// Technicians may "read" the tenants they are members of (to check out their computers).
/// Checked against the streams, not the read models, so a tenant is usable the moment it is
/// created.
pub async fn visible_tenant(
    services: &web::Data<Services>,
    principal: &Principal,
    raw: &str,
) -> Result<TenantId, ApiError> {
    let tenant = TenantId(path_id(raw, "tenant_id")?);
    let visible = match principal.technician_id() {
        Some(technician) => {
            let loaded: Technician = services.load(technician.stream_name()).await?;
            loaded
                .state()
                .is_some_and(|t| !t.offboarded && t.tenants.contains(&tenant))
        }
        None => principal.can_read_tenant(tenant),
    };
    let exists = visible && {
        let loaded: Tenant = services.load(tenant.stream_name()).await?;
        loaded.state().is_some()
    };
    if exists {
        Ok(tenant)
    } else {
        Err(ApiError::not_found("the tenant"))
    }
}

/// The tenant, if the caller may administer it (else 404 if they cannot even see it, 403 if
/// they can see but not change it).
pub async fn administered_tenant(
    services: &web::Data<Services>,
    principal: &Principal,
    raw: &str,
) -> Result<TenantId, ApiError> {
    let tenant = visible_tenant(services, principal, raw).await?;
    if principal.can_administer_tenant(tenant) {
        Ok(tenant)
    } else {
        Err(forbidden("only an admin of this tenant may change it"))
    }
}

/// A computer of a tenant the caller may see (404 otherwise, and for another tenant's).
pub async fn tenant_computer(
    services: &web::Data<Services>,
    tenant: TenantId,
    raw: &str,
) -> Result<ComputerId, ApiError> {
    let computer = ComputerId(path_id(raw, "computer_id")?);
    let loaded: Computer = services.load(computer.stream_name()).await?;
    match loaded.profile() {
        Some(profile) if profile.tenant_id == tenant => Ok(computer),
        _ => Err(ApiError::not_found("the computer")),
    }
}

/// A session the caller may see: their own as a technician, any of the tenant's as its admin
/// or auditor. 404 for everything else.
pub async fn visible_session(
    services: &web::Data<Services>,
    principal: &Principal,
    raw: &str,
) -> Result<latchkey_domain::session::SessionState, ApiError> {
    let session_id = SessionId(path_id(raw, "session_id")?);
    let session: latchkey_domain::session::Session =
        services.load(session_id.stream_name()).await?;
    let Some(state) = session.state() else {
        return Err(ApiError::not_found("the session"));
    };
    let visible = match principal.technician_id() {
        Some(technician) => technician == state.technician_id,
        None => principal.can_read_tenant(state.tenant_id),
    };
    if visible {
        Ok(state.clone())
    } else {
        Err(ApiError::not_found("the session"))
    }
}

/// A technician the caller may see ([`Principal::may_see_technician`]), as their stream has
/// it now. Everyone else, and an id that does not exist, get the same 404: the answer never
/// tells whether a technician the caller may not see exists.
pub async fn visible_technician(
    services: &web::Data<Services>,
    principal: &Principal,
    raw: &str,
) -> Result<TechnicianState, ApiError> {
    let technician = TechnicianId(path_id(raw, "technician_id")?);
    let loaded: Technician = services.load(technician.stream_name()).await?;
    match loaded.state() {
        Some(state) if principal.may_see_technician(technician, &state.tenants) => {
            Ok(state.clone())
        }
        _ => Err(ApiError::not_found("the technician")),
    }
}

/// The one tenant a tenant-scoped principal (tenant admin, tenant auditor) belongs to.
pub fn own_tenant(principal: &Principal) -> Option<TenantId> {
    use latchkey_server_stores::tokens::Role;
    match principal.role {
        Role::TenantAdmin { tenant_id } => Some(tenant_id),
        Role::Auditor { tenant_id } => tenant_id,
        _ => None,
    }
}

/// Query-string parameters, checked against the operation's declared [`openapi::Query`] list
/// (the one its documentation shows): each malformed one is a 400 naming it, and unknown
/// parameters are refused (a typo must not silently widen a filter).
pub struct Params {
    declared: &'static [openapi::Query],
    values: HashMap<&'static str, String>,
}

impl Params {
    pub fn parse(req: &HttpRequest, declared: &'static [openapi::Query]) -> Result<Self, ApiError> {
        Self::of(req.query_string(), declared)
    }

    /// [`Params::parse`] of a query string.
    pub fn of(query: &str, declared: &'static [openapi::Query]) -> Result<Self, ApiError> {
        let mut values = HashMap::new();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let Some(query) = declared.iter().find(|q| q.name == key) else {
                let names: Vec<&str> = declared.iter().map(|q| q.name).collect();
                return Err(ApiError::bad_request(
                    &key,
                    match names.is_empty() {
                        true => format!("unknown query parameter `{key}`; this takes none"),
                        false => format!(
                            "unknown query parameter `{key}`; expected one of: {}",
                            names.join(", ")
                        ),
                    },
                ));
            };
            check_query(query, &value)?;
            if values.insert(query.name, value.into_owned()).is_some() {
                return Err(ApiError::bad_request(&key, format!("`{key}` given twice")));
            }
        }
        Ok(Self { declared, values })
    }

    fn kind(&self, name: &str) -> Option<openapi::Kind> {
        let kind = self
            .declared
            .iter()
            .find(|q| q.name == name)
            .map(|q| q.kind);
        debug_assert!(kind.is_some(), "query parameter {name} is not declared");
        kind
    }

    pub fn text(&self, name: &str) -> Option<String> {
        self.values.get(name).cloned()
    }

    pub fn uuid(&self, name: &str) -> Option<Uuid> {
        self.values.get(name).and_then(|v| Uuid::parse_str(v).ok())
    }

    pub fn time(&self, name: &str) -> Option<chrono::DateTime<chrono::Utc>> {
        self.values.get(name).and_then(|v| parse_time(v))
    }

    /// The number given, or the declared default.
    pub fn number(&self, name: &str) -> u64 {
        let default = match self.kind(name) {
            Some(openapi::Kind::Integer { default, .. }) => default,
            _ => 0,
        };
        self.values
            .get(name)
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    }

    /// The flag given, or false.
    pub fn flag(&self, name: &str) -> bool {
        self.values
            .get(name)
            .is_some_and(|v| matches!(v.as_str(), "true" | "1"))
    }

    /// A global log position written `<commit>.<prepare>` (or just `<commit>`).
    pub fn position(&self, name: &str) -> Option<Position> {
        self.values.get(name).and_then(|v| parse_position(v))
    }
}

fn parse_time(text: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// Whether `value` is what `query` declares; a 400 naming it if not.
fn check_query(query: &openapi::Query, value: &str) -> Result<(), ApiError> {
    use openapi::Kind;
    let name = query.name;
    let digits = |part: &str, most: usize| {
        !part.is_empty() && part.len() <= most && part.bytes().all(|b| b.is_ascii_digit())
    };
    let problem = match query.kind {
        Kind::Uuid => Uuid::parse_str(value)
            .is_err()
            .then(|| format!("{name} must be a UUID")),
        Kind::Integer { min, max, .. } => match value.parse::<u64>() {
            Ok(n) if (min..=max).contains(&n) && digits(value, 20) => None,
            _ => Some(format!("{name} must be a whole number from {min} to {max}")),
        },
        Kind::Flag => (!matches!(value, "true" | "false" | "1" | "0"))
            .then(|| format!("{name} must be true or false")),
        Kind::Time => parse_time(value)
            .is_none()
            .then(|| format!("{name} must be an RFC 3339 time, e.g. 2026-11-23T09:00:00Z")),
        Kind::Position => {
            let ok = match value.split_once('.') {
                Some((commit, prepare)) => digits(commit, 18) && digits(prepare, 18),
                None => digits(value, 18),
            };
            (!ok).then(|| format!("{name} must be a log position like 42.42 (commit.prepare)"))
        }
        Kind::Cursor => {
            let parts: Vec<&str> = value.split('.').collect();
            let ok = matches!(parts.as_slice(), [commit, prepare, line]
                if digits(commit, 18) && digits(prepare, 18) && digits(line, 9));
            (!ok).then(|| format!("{name} must be the next_cursor of a previous page"))
        }
        Kind::Stream => {
            let ok = value.len() <= 256
                && value.starts_with(|c: char| c.is_ascii_alphanumeric())
                && value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_.:-".contains(c));
            (!ok).then(|| {
                format!("{name} must be a stream name like computer-<id> (letters, digits, '_', '.', ':', '-')")
            })
        }
        Kind::OneOf(words) => {
            (!words.contains(&value)).then(|| format!("{name} must be one of {}", words.join(", ")))
        }
        Kind::Text => None,
    };
    match problem {
        Some(detail) => Err(ApiError::bad_request(name, detail)),
        None => Ok(()),
    }
}

pub fn parse_position(text: &str) -> Option<Position> {
    let (commit, prepare) = match text.split_once('.') {
        Some((c, p)) => (c.parse().ok()?, p.parse().ok()?),
        None => {
            let c = text.parse().ok()?;
            (c, c)
        }
    };
    Some(Position::new(commit, prepare))
}

pub fn format_position(position: Position) -> String {
    format!("{}.{}", position.commit, position.prepare)
}

/// Every `/v1` route, registered and documented in one place: each resource's module adds
/// its own. [`openapi::Routes::finish`] registers them under one scope per first path segment.
pub fn all_routes(routes: &mut openapi::Routes<'_>) {
    tenants::routes(routes);
    policy::routes(routes);
    technicians::routes(routes);
    computers::routes(routes);
    sessions::routes(routes);
    tokens::routes(routes);
    agent::routes(routes);
    audit::routes(routes);
}

/// Registers the `/v1` routes, `/openapi.json`, `/docs` and the JSON settings.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(payload_config())
        .route("/openapi.json", web::get().to(openapi::openapi_json))
        .route("/docs", web::get().to(openapi::docs_page))
        .service(
            web::scope("/v1")
                .configure(|cfg| {
                    let mut routes = openapi::Routes::registering(cfg);
                    all_routes(&mut routes);
                    routes.finish();
                })
                .default_service(web::to(openapi::no_such_path)),
        );
}
