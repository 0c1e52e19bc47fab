//! Technician endpoints: check out a computer, follow the session, reveal its credential
//! (audited, only while active), get the offline TOTP secret (audited) and check in.

use super::answer::Json;
use super::idempotency::{idempotent, Reply};
use super::openapi::{Doc, Kind, Query, Routes};
use super::Caller;
use super::{actor, forbidden, tenant_computer, visible_session, visible_tenant, Services};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use latchkey_domain::computer::{Computer, ComputerCommand, ComputerEvent};
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{AccountName, EphemeralDigits};
use latchkey_domain::policy::{LoginMode, SessionLength};
use latchkey_domain::session::{
    CheckInReason, CheckOut, Session, SessionCommand, SessionState, SessionStatus,
};
use latchkey_domain::technician::Technician;
use latchkey_domain::tenant::Tenant;
use latchkey_projections::SessionFilter;
use latchkey_server_stores::secrets::{self, Secret, SecretRef};
use latchkey_server_stores::tokens::Principal;
pub use latchkey_wire::SessionView;
use latchkey_wire::{CheckOutRequest, Credential, OfflineSecret, SessionList};

const MY_SESSIONS_QUERY: &[Query] = &[
    Query::new("open", Kind::Flag, "true: only open ones"),
    Query::PAGE_LIMIT,
];

pub fn routes(r: &mut Routes<'_>) {
    const TECHNICIAN: &str = "technician who is a member of the tenant";
    const OWN: &str = "the session's technician";
    r.add(
        Method::POST,
        "/tenants/{tenant_id}/computers/{computer_id}/checkout",
        check_out,
        Doc::new("Check out admin access to a computer", TECHNICIAN)
            .idempotent()
            .answer(201, "the session (provisioning)"),
    )
    .add(
        Method::POST,
        "/tenants/{tenant_id}/computers/{computer_id}/offline-secret",
        offline_secret,
        Doc::new(
            "Your offline TOTP secret on this computer: otpauth:// URI and QR code (audited)",
            TECHNICIAN,
        )
        .answer(200, "the secret (never cached)"),
    )
    .add(
        Method::GET,
        "/sessions",
        my_sessions,
        Doc::new("Your own sessions, newest first", "technician").query(MY_SESSIONS_QUERY),
    )
    .add(
        Method::GET,
        "/sessions/{session_id}",
        get_session,
        Doc::new(
            "A session",
            "its technician; admins and auditors of its tenant",
        ),
    )
    .add(
        Method::POST,
        "/sessions/{session_id}/credential",
        reveal,
        Doc::new(
            "Reveal the account's current password (audited; only while active)",
            OWN,
        )
        .answer(200, "the password (never cached)"),
    )
    .add(
        Method::POST,
        "/sessions/{session_id}/checkin",
        check_in,
        Doc::new("Check in: access is taken away on the computer", OWN)
            .idempotent()
            .answer(200, "the session"),
    );
}

pub fn view(s: &SessionState) -> SessionView {
    let (status, check_in_reason, failure) = match &s.status {
        SessionStatus::Provisioning => ("provisioning", None, None),
        SessionStatus::Active => ("active", None, None),
        SessionStatus::CheckedIn(reason) => ("checked_in", Some(*reason), None),
        SessionStatus::Failed(reason) => ("failed", None, Some(reason.to_string())),
    };
    SessionView {
        session_id: s.session_id,
        tenant_id: s.tenant_id,
        technician_id: s.technician_id,
        computer_id: s.computer_id,
        login_mode: s.login_mode,
        account: s.account.clone(),
        status: status.to_owned(),
        check_in_reason,
        failure,
        checked_out_at: s.checked_out_at,
        expires_at: s.expires_at,
    }
}

pub fn session_view(session: &Session) -> Result<SessionView, ApiError> {
    session
        .state()
        .map(view)
        .ok_or_else(|| ApiError::not_found("the session"))
}

async fn check_out(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<CheckOutRequest>,
) -> Result<Json<SessionView>, ApiError> {
    let (tenant, computer) = path.into_inner();
    let tenant = visible_tenant(&services, &principal, &tenant).await?;
    let computer = tenant_computer(&services, tenant, &computer).await?;
    let Some(technician_id) = principal.technician_id() else {
        return Err(forbidden("only a technician checks out a computer"));
    };
    let duration = body
        .duration_minutes
        .map(SessionLength::minutes)
        .transpose()
        .map_err(|e| ApiError::from(e).with_field("duration_minutes"))?;
    let (services, principal) = (&services, &principal);
    idempotent(services, &req, principal, |scope| async move {
        let tenant_state: Tenant = services.load(tenant.stream_name()).await?;
        let technician: Technician = services.load(technician_id.stream_name()).await?;
        let computer_state: Computer = services.load(computer.stream_name()).await?;
        let (Some(tenant_state), Some(technician)) = (tenant_state.state(), technician.state())
        else {
            return Err(ApiError::not_found("the tenant"));
        };
        let session_id = SessionId(scope.new_id());
        let digits = EphemeralDigits::parse(format!(
            "{:012}",
            rand::random_range(0..1_000_000_000_000u64)
        ))
        .expect("twelve digits");
        let command = SessionCommand::CheckOut(Box::new(CheckOut {
            session_id,
            tenant: tenant_state.clone(),
            technician: technician.clone(),
            computer: computer_state,
            reason: body.reason,
            ticket: body.ticket,
            duration,
            ephemeral_digits: digits,
            by: actor(principal),
            at: chrono::Utc::now(),
        }));
        let executed = services
            .execute_in::<Session>(scope, principal, session_id.stream_name(), command)
            .await?;
        Reply::created(
            &session_view(&executed.state)?,
            format!("/v1/sessions/{session_id}"),
        )
    })
    .await
}

async fn get_session(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let session = visible_session(&services, &principal, &path).await?;
    Ok(Json::ok(&view(&session)))
}

/// A technician's own sessions, newest first.
async fn my_sessions(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
) -> Result<Json<SessionList>, ApiError> {
    let Some(technician) = principal.technician_id() else {
        return Err(forbidden(
            "this lists a technician's own sessions; admins use /v1/tenants/{id}/sessions",
        ));
    };
    let params = super::Params::parse(&req, MY_SESSIONS_QUERY)?;
    let filter = SessionFilter {
        technician: Some(technician),
        open_only: params.flag("open"),
        limit: params.number("limit") as u32,
        ..SessionFilter::default()
    };
    let sessions = services.query(move |q| q.sessions(&filter)).await?;
    Ok(Json::ok(&SessionList { sessions }))
}

/// The session's technician, and only them (admins can see the session, not its password).
fn own_session(principal: &Principal, session: &SessionState) -> Result<(), ApiError> {
    if principal.technician_id() == Some(session.technician_id) {
        Ok(())
    } else {
        Err(forbidden("only the session's technician may do this"))
    }
}

/// Reveals the session's current password: audited (`CredentialRevealed`), refused unless the
/// session is active. Never stored for idempotent replay.
async fn reveal(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<Credential>, ApiError> {
    let session = visible_session(&services, &principal, &path).await?;
    own_session(&principal, &session)?;
    let computer: Computer = services.load(session.computer_id.stream_name()).await?;
    let version = computer
        .accounts
        .get(&session.account)
        .and_then(|a| a.verified.as_ref()?.password_version)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::CONFLICT,
                "not-ready",
                "the computer has not confirmed a password for this account yet",
            )
        })?;
    let command = SessionCommand::RevealCredential {
        password_version: version,
        by: actor(&principal),
        at: chrono::Utc::now(),
    };
    services
        .execute::<Session>(&principal, session.session_id.stream_name(), command)
        .await?;
    let reference = SecretRef::password(session.computer_id, &session.account, version);
    let password = super::blocking(&services, "secret store", move |s| {
        s.secrets.get(&reference)
    })
    .await?
    .ok_or_else(|| super::internal("secret store", &"the rotated password is missing"))?;
    tracing::info!(session = %session.session_id, account = %session.account, version, "credential revealed");
    Ok(Json::ok(&Credential {
        session_id: session.session_id,
        account: session.account,
        password: password.expose().to_owned(),
        password_version: version,
        expires_at: session.expires_at,
    })
    .no_store())
}

/// The technician's offline TOTP secret on this computer as an `otpauth://` URI and a QR
/// code (SVG). Audited (`OfflineSecretDisclosed`).
async fn offline_secret(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<(String, String)>,
) -> Result<Json<OfflineSecret>, ApiError> {
    let (tenant, computer) = path.into_inner();
    let tenant = visible_tenant(&services, &principal, &tenant).await?;
    let computer = tenant_computer(&services, tenant, &computer).await?;
    let Some(technician_id) = principal.technician_id() else {
        return Err(forbidden("offline secrets are a technician's own"));
    };
    let command = ComputerCommand::DiscloseOfflineSecret {
        technician_id,
        by: actor(&principal),
        at: chrono::Utc::now(),
    };
    let executed = match services
        .execute::<Computer>(&principal, computer.stream_name(), command)
        .await
    {
        Ok(executed) => executed,
        Err(refused) => {
            no_offline_secret_yet(&services, tenant, computer, technician_id).await?;
            return Err(refused);
        }
    };
    let Some(ComputerEvent::OfflineSecretDisclosed(shown)) = executed.events.first() else {
        return Err(super::internal("offline secret", &"no disclosure event"));
    };
    let hostname = executed
        .state
        .profile()
        .map(|p| p.hostname.to_string())
        .unwrap_or_default();
    let secret = totp_secret(&services, computer, &shown.account, shown.generation).await?;
    let label = secrets::totp_label(shown.account.as_str(), &hostname);
    let uri = secrets::totp_uri(&secret, &label).map_err(|e| super::internal("totp", &e))?;
    let qr = qrcode::QrCode::new(uri.expose().as_bytes())
        .map_err(|e| super::internal("qr code", &e))?
        .render::<qrcode::render::svg::Color<'_>>()
        .min_dimensions(200, 200)
        .build();
    Ok(Json::ok(&OfflineSecret {
        computer_id: computer,
        account: shown.account.clone(),
        generation: shown.generation,
        otpauth_uri: uri.expose().to_owned(),
        qr_svg: qr,
    })
    .no_store())
}

/// Refuses (422) when the technician has no offline secret on the computer yet, saying
/// which account would have one under the tenant's login mode and how it gets it (the
/// domain's own refusal cannot: the computer does not know the tenant's mode).
async fn no_offline_secret_yet(
    services: &web::Data<Services>,
    tenant: TenantId,
    computer: ComputerId,
    technician_id: TechnicianId,
) -> Result<(), ApiError> {
    let state: Computer = services.load(computer.stream_name()).await?;
    if state.offline_secret_for(technician_id).is_some() {
        return Ok(());
    }
    let tenant: Tenant = services.load(tenant.stream_name()).await?;
    let technician: Technician = services.load(technician_id.stream_name()).await?;
    let (Some(tenant), Some(technician)) = (tenant.state(), technician.state()) else {
        return Ok(()); // the command refuses it
    };
    let policy = state.effective_policy(&tenant.policy);
    let why = match tenant.login_mode {
        LoginMode::Named => format!(
            "the tenant is in named mode and your account {} has no offline secret on this \
             computer yet; it gets one at your next check-out here",
            policy
                .named_account_template()
                .account_for(&technician.username)
        ),
        LoginMode::Shared => match &tenant.shared_account {
            Some(account) => format!(
                "the tenant is in shared mode and its shared account {account} has no offline \
                 secret on this computer yet; it gets one at the next check-out here"
            ),
            None => "the tenant is in shared mode and its shared account has no offline \
                     secret on this computer yet; it gets one at the next check-out here"
                .to_owned(),
        },
        LoginMode::Ephemeral => "the tenant is in ephemeral mode: ephemeral accounts have no \
                                 offline secret"
            .to_owned(),
    };
    Err(ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "no-offline-secret",
        format!("no offline secret for you on this computer: {why}"),
    ))
}

/// The TOTP secret of (computer, account, generation), created on first use.
pub async fn totp_secret(
    services: &web::Data<Services>,
    computer: ComputerId,
    account: &AccountName,
    generation: u32,
) -> Result<Secret, ApiError> {
    let reference = SecretRef::totp(computer, account, generation);
    super::blocking(services, "secret store", move |s| {
        s.secrets
            .put_if_absent(&reference, &secrets::generate_totp_secret())
    })
    .await
}

async fn check_in(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let session = visible_session(&services, &principal, &path).await?;
    own_session(&principal, &session)?;
    let (services, principal) = (&services, &principal);
    idempotent(services, &req, principal, |scope| async move {
        let command = SessionCommand::CheckIn {
            reason: CheckInReason::Manual,
            by: actor(principal),
            at: chrono::Utc::now(),
        };
        let executed = services
            .execute_in::<Session>(scope, principal, session.session_id.stream_name(), command)
            .await?;
        Reply::ok(&session_view(&executed.state)?)
    })
    .await
}
