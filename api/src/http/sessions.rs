//! Sessions: check out a computer, follow the session, reveal its credential (audited, only
//! while active), check in, and an admin's revocation; the tenant's and a technician's own
//! session lists.

use super::answer::Json;
use super::idempotency::{idempotent, Reply};
use super::openapi::{Doc, Kind, Query, Routes};
use super::who::{ADMINS, MEMBERS, TECHNICIAN};
use super::Caller;
use super::{
    actor, forbidden, now, tenant_computer, visible_session, visible_tenant, Params, Services,
};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use latchkey_domain::computer::Computer;
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId};
use latchkey_domain::names::EphemeralDigits;
use latchkey_domain::policy::SessionLength;
use latchkey_domain::session::{
    CheckInReason, CheckOut, Session, SessionCommand, SessionState, SessionStatus,
};
use latchkey_domain::technician::Technician;
use latchkey_domain::tenant::Tenant;
use latchkey_projections::SessionFilter;
use latchkey_server_stores::secrets::SecretRef;
use latchkey_server_stores::tokens::Principal;
use latchkey_wire::SessionView;
use latchkey_wire::{CheckOutRequest, Credential, SessionList};

pub fn routes(r: &mut Routes<'_>) {
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
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/sessions",
        list_sessions,
        Doc::new(
            "The tenant's sessions, newest first (technicians: their own)",
            MEMBERS,
        )
        .query(TENANT_SESSIONS_QUERY),
    )
    .add(
        Method::POST,
        "/sessions/{session_id}/revoke",
        revoke,
        Doc::new("Revoke a session now", ADMINS).answer(200, "the session"),
    );
}

const MY_SESSIONS_QUERY: &[Query] = &[
    Query::new("open", Kind::Flag, "true: only open ones"),
    Query::PAGE_LIMIT,
];

const TENANT_SESSIONS_QUERY: &[Query] = &[
    Query::new(
        "open",
        Kind::Flag,
        "true: only provisioning or active sessions",
    ),
    Query::new("computer_id", Kind::Uuid, "only this computer's"),
    Query::new("technician_id", Kind::Uuid, "only this technician's"),
    Query::PAGE_LIMIT,
];

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

async fn list_sessions(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<SessionList>, ApiError> {
    let tenant = visible_tenant(&services, &principal, &path).await?;
    let params = Params::parse(&req, TENANT_SESSIONS_QUERY)?;
    let mut filter = SessionFilter {
        tenant: Some(tenant),
        technician: params.uuid("technician_id").map(TechnicianId),
        computer: params.uuid("computer_id").map(ComputerId),
        open_only: params.flag("open"),
        limit: params.number("limit") as u32,
    };
    // Technicians see their own sessions only.
    if let Some(own) = principal.technician_id() {
        filter.technician = Some(own);
    }
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

async fn revoke(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<SessionView>, ApiError> {
    let session = visible_session(&services, &principal, &path).await?;
    if !principal.can_administer_tenant(session.tenant_id) {
        return Err(forbidden("only an admin of the tenant revokes sessions"));
    }
    let command = SessionCommand::CheckIn {
        reason: CheckInReason::Revoked,
        by: actor(&principal),
        at: now(),
    };
    let executed = services
        .execute::<Session>(&principal, session.session_id.stream_name(), command)
        .await?;
    Ok(Json::ok(&session_view(&executed.state)?))
}
