//! The HTTP surface: routes under `/v1/`, the bearer-token extractor, and thin handlers that
//! parse, authorize, call one command or query, and map the result. Rules live in the
//! domain, orchestration in `commands`; nothing here decides anything itself.
//!
//! UNFINISHED (issue 3): only tenants can be created and read so far.

use crate::auth::{Principal, TokenStore};
use crate::commands::{self, Envelope};
use crate::problem::{payload_config, ApiError, JsonBody};
use actix_web::dev::Payload;
use actix_web::http::header;
use actix_web::{web, FromRequest, HttpRequest, HttpResponse};
use latchkey_domain::ids::TenantId;
use latchkey_domain::names::{Email, SharedAccountDigits, TenantName};
use latchkey_domain::policy::{JitPolicy, LoginMode};
use latchkey_domain::tenant::{Tenant, TenantCommand};
use latchkey_domain::Actor;
use latchkey_store::{EventStore, StreamName};
use serde::{Deserialize, Serialize};
use std::future::{ready, Ready};
use std::sync::Arc;
use uuid::Uuid;

/// What every handler can reach.
pub struct Services {
    pub store: Arc<dyn EventStore>,
    pub tokens: TokenStore,
}

impl FromRequest for Principal {
    type Error = ApiError;
    type Future = Ready<Result<Principal, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let Some(services) = req.app_data::<web::Data<Services>>() else {
            return ready(Err(ApiError::internal("no-services")));
        };
        let bearer = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some(bearer) = bearer else {
            return ready(Err(ApiError::unauthorized()));
        };
        ready(match services.tokens.authenticate(bearer.trim()) {
            Ok(Some(principal)) => Ok(principal),
            Ok(None) => Err(ApiError::unauthorized()),
            Err(e) => {
                let reference = Uuid::now_v7().to_string();
                tracing::error!(error = %e, %reference, "token store failed");
                Err(ApiError::internal(&reference))
            }
        })
    }
}

fn envelope(principal: &Principal) -> Envelope {
    Envelope {
        actor: principal.actor_string(),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
    }
}

/// The actor a person's command records: their e-mail if the token names one.
fn actor(principal: &Principal) -> Actor {
    match Email::parse(principal.name.clone()) {
        Ok(email) => Actor::User { email },
        Err(_) => Actor::System,
    }
}

fn tenant_stream(id: TenantId) -> Result<StreamName, ApiError> {
    StreamName::new(id.stream_name()).map_err(|e| ApiError::from(commands::CommandError::Store(e)))
}

/// Parses a path id; a malformed one is a 400 naming the parameter.
fn path_id(raw: &str, field: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw)
        .map_err(|_| ApiError::bad_request(field, format!("{field} must be a UUID")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: TenantName,
    pub login_mode: LoginMode,
    /// The secure default (`JitPolicy::default()`) when absent.
    pub policy: Option<JitPolicy>,
}

#[derive(Serialize)]
pub struct TenantView {
    pub tenant_id: TenantId,
    pub name: TenantName,
    pub login_mode: LoginMode,
    pub policy: JitPolicy,
    pub shared_account: Option<String>,
}

fn view(tenant: &Tenant) -> Option<TenantView> {
    tenant.state().map(|t| TenantView {
        tenant_id: t.tenant_id,
        name: t.name.clone(),
        login_mode: t.login_mode,
        policy: t.policy.clone(),
        shared_account: t.shared_account.as_ref().map(|a| a.to_string()),
    })
}

async fn create_tenant(
    services: web::Data<Services>,
    principal: Principal,
    JsonBody(body): JsonBody<NewTenant>,
) -> Result<HttpResponse, ApiError> {
    if !principal.is_msp_admin() {
        return Err(ApiError::new(
            actix_web::http::StatusCode::FORBIDDEN,
            "forbidden",
            "only an MSP admin creates tenants",
        ));
    }
    let tenant_id = TenantId(Uuid::now_v7());
    let digits = SharedAccountDigits::parse(format!("{:04}", rand::random_range(0..10_000u32)))
        .expect("four digits");
    let command = TenantCommand::Register {
        tenant_id,
        name: body.name,
        login_mode: body.login_mode,
        policy: body.policy.unwrap_or_default(),
        shared_account_digits: digits,
        by: actor(&principal),
        at: chrono::Utc::now(),
    };
    let stream = tenant_stream(tenant_id)?;
    let executed =
        commands::execute::<Tenant, _>(&*services.store, &stream, &envelope(&principal), |_| {
            command.clone()
        })
        .await?;
    let view = view(&executed.state).ok_or_else(|| ApiError::internal("tenant-missing"))?;
    Ok(HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/v1/tenants/{tenant_id}")))
        .json(view))
}

async fn get_tenant(
    services: web::Data<Services>,
    principal: Principal,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let tenant_id = TenantId(path_id(&path, "tenant_id")?);
    // Another tenant's data is never visible, not even its existence: 404, not 403.
    if !principal.can_read_tenant(tenant_id) {
        return Err(ApiError::not_found("the tenant"));
    }
    let loaded = commands::load::<Tenant>(&*services.store, &tenant_stream(tenant_id)?).await?;
    match view(&loaded.state) {
        Some(view) => Ok(HttpResponse::Ok().json(view)),
        None => Err(ApiError::not_found("the tenant")),
    }
}

/// Registers the `/v1` routes and the JSON settings.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(payload_config()).service(
        web::scope("/v1")
            .route("/tenants", web::post().to(create_tenant))
            .route("/tenants/{tenant_id}", web::get().to(get_tenant)),
    );
}
