//! Admin endpoints: tenants and their PAM settings (login mode, JIT policy), technicians and
//! their tenant memberships, API tokens, enrollment tokens, computers, sessions to revoke, and
//! the account-state views (managed accounts, standing privilege, stuck revocations).

use super::answer::{Json, NoContent};
use super::idempotency::{idempotent, Reply};
use super::openapi::{Doc, Kind, Query, Routes};
use super::Caller;
use super::{
    actor, administered_tenant, forbidden, own_tenant, path_id, tenant_computer, visible_session,
    visible_technician, visible_tenant, Params, Services,
};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use latchkey_domain::computer::{Computer, ComputerCommand};
use latchkey_domain::ids::{ComputerId, TechnicianId, TenantId};
use latchkey_domain::names::SharedAccountDigits;
use latchkey_domain::policy::JitPolicy;
use latchkey_domain::session::{CheckInReason, Session, SessionCommand};
use latchkey_domain::technician::{Technician, TechnicianCommand, TechnicianState};
use latchkey_domain::technician_names::NameHolder;
use latchkey_domain::tenant::{Tenant, TenantCommand};
use latchkey_domain::DomainError;
use latchkey_projections::SessionFilter;
use latchkey_server_stores::tokens::{Principal, Role, TokenQuery, TokenScope, ROLE_KINDS};
use latchkey_wire::{
    AccountView, ComputerList, ComputerView, Decommissioned, Drift, EnrollmentTokenIssued,
    IssuedToken, ManagedAccounts, NewEnrollmentToken, NewLoginMode, NewTechnician, NewTenant,
    NewToken, OffboardedView, PolicyOverridden, PolicyOverride, Rotation, SessionList,
    StandingPrivileges, StuckRequests, TechnicianList, TechnicianView, TenantList, TenantView,
    TokenList,
};

pub fn routes(r: &mut Routes<'_>) {
    const ADMINS: &str = "msp_admin; tenant_admin of this tenant";
    const READERS: &str = "msp_admin; tenant_admin or auditor of this tenant; auditor of all";
    const MEMBERS: &str = "msp_admin; tenant_admin or auditor of this tenant; auditor of all; \
                           technicians who are members";
    r.add(
        Method::POST,
        "/tenants",
        create_tenant,
        Doc::new("Register a customer tenant", "msp_admin")
            .idempotent()
            .answer(201, "the tenant"),
    )
    .add(
        Method::GET,
        "/tenants",
        list_tenants,
        Doc::new("List the tenants the caller may see", "everyone but agents"),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}",
        get_tenant,
        Doc::new("A tenant with its login mode and JIT policy", MEMBERS),
    )
    .add(
        Method::PUT,
        "/tenants/{tenant_id}/login-mode",
        set_login_mode,
        Doc::new(
            "Change the technician login mode (named, shared, ephemeral)",
            ADMINS,
        )
        .idempotent()
        .answer(200, "the tenant"),
    )
    .add(
        Method::PUT,
        "/tenants/{tenant_id}/policy",
        set_policy,
        Doc::new("Replace the tenant's JIT policy", ADMINS)
            .idempotent()
            .answer(200, "the tenant"),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/technicians",
        list_tenant_technicians,
        Doc::new("The tenant's technicians", READERS),
    )
    .add(
        Method::PUT,
        "/tenants/{tenant_id}/technicians/{technician_id}",
        join_tenant,
        Doc::new("Let a technician work for the tenant", ADMINS).answer(200, "the technician"),
    )
    .add(
        Method::DELETE,
        "/tenants/{tenant_id}/technicians/{technician_id}",
        leave_tenant,
        Doc::new(
            "Stop a technician working for the tenant (their accounts are retired)",
            ADMINS,
        )
        .answer(200, "the technician"),
    )
    .add(
        Method::POST,
        "/tenants/{tenant_id}/enrollment-tokens",
        create_enrollment_token,
        Doc::new(
            "A one-time token for enrolling one computer's agent (shown once)",
            ADMINS,
        )
        .answer(201, "the token"),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/computers",
        list_computers,
        Doc::new("The tenant's computers", MEMBERS),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/computers/{computer_id}",
        get_computer,
        Doc::new(
            "A computer with its managed accounts (accounts hidden from technicians)",
            MEMBERS,
        ),
    )
    .add(
        Method::PUT,
        "/tenants/{tenant_id}/computers/{computer_id}/policy",
        override_policy,
        Doc::new(
            "Set (or clear with null) the computer's own JIT policy",
            ADMINS,
        ),
    )
    .add(
        Method::POST,
        "/tenants/{tenant_id}/computers/{computer_id}/decommission",
        decommission,
        Doc::new(
            "Decommission the computer: its accounts are removed",
            ADMINS,
        ),
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
        Method::GET,
        "/tenants/{tenant_id}/accounts",
        managed_accounts,
        Doc::new(
            "Managed accounts on every computer, as the agents verified them",
            READERS,
        ),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/standing-privilege",
        standing_privilege,
        Doc::new(
            "Admin-group memberships no open session explains (should be empty)",
            READERS,
        ),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/drift",
        drift,
        Doc::new(
            "Admin-group members that no open session explains (agents' inventories)",
            READERS,
        ),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/stuck-requests",
        stuck_requests,
        Doc::new(
            "Failed revocations and clean-ups waiting for their next retry",
            READERS,
        ),
    )
    .add(
        Method::POST,
        "/technicians",
        create_technician,
        Doc::new("Register a technician (MSP staff)", "msp_admin")
            .idempotent()
            .answer(201, "the technician"),
    )
    .add(
        Method::GET,
        "/technicians",
        list_technicians,
        Doc::new(
            "Technicians (tenant-scoped callers: their tenant's)",
            READERS,
        ),
    )
    .add(
        Method::GET,
        "/technicians/{technician_id}",
        get_technician,
        Doc::new(
            "A technician",
            "msp_admin; auditor of all; the technician; tenant admins \
                                  and auditors of a tenant they work for",
        ),
    )
    .add(
        Method::POST,
        "/technicians/{technician_id}/offboard",
        offboard,
        Doc::new(
            "Offboard a technician everywhere: sessions revoked, accounts retired",
            "msp_admin",
        ),
    )
    .add(
        Method::POST,
        "/sessions/{session_id}/revoke",
        revoke,
        Doc::new("Revoke a session now", ADMINS).answer(200, "the session"),
    )
    .add(
        Method::POST,
        "/tokens",
        issue_token,
        Doc::new(
            "Issue an API token (shown once)",
            "msp_admin (any role); tenant_admin \
                  (tenant_admin or auditor of their tenant)",
        )
        .problems(&[404])
        .answer(201, "the token (its secret shown once)"),
    )
    .add(
        Method::GET,
        "/tokens",
        list_tokens,
        Doc::new(
            "List API tokens: holder, role, scope, created, last used (to the minute), \
             expires; never a secret",
            "msp_admin and auditors of all tenants (all); tenant_admin and auditor of a \
             tenant (its tenant_admin and auditor tokens); technician (their own)",
        )
        .query(TOKENS_QUERY),
    )
    .add(
        Method::POST,
        "/tokens/{token_id}/rotate",
        rotate_token,
        Doc::new(
            "Rotate an API token: a new secret (shown once) and expiry; the old secret stops \
             working",
            "the token's holder; msp_admin (any person's token); tenant_admin (tenant_admin \
             and auditor tokens of their tenant)",
        )
        .answer(200, "the token with its new secret (shown once)"),
    )
    .add(
        Method::DELETE,
        "/tokens/{token_id}",
        revoke_token,
        Doc::new("Revoke an API token", "msp_admin").answer(204, "revoked"),
    );
}

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

const TOKENS_QUERY: &[Query] = &[
    Query::new("role", Kind::OneOf(&ROLE_KINDS), "only this role"),
    Query::new("technician_id", Kind::Uuid, "only this technician's"),
    Query::new("revoked", Kind::Flag, "true: revoked tokens too"),
    Query::PAGE_LIMIT,
];

fn now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}

fn random_digits() -> SharedAccountDigits {
    SharedAccountDigits::parse(format!("{:04}", rand::random_range(0..10_000u32)))
        .expect("four digits")
}

fn tenant_view(tenant: &Tenant) -> Result<TenantView, ApiError> {
    let t = tenant
        .state()
        .ok_or_else(|| ApiError::not_found("the tenant"))?;
    Ok(TenantView {
        tenant_id: t.tenant_id,
        name: t.name.clone(),
        login_mode: t.login_mode,
        policy: t.policy.clone(),
        shared_account: t.shared_account.clone(),
    })
}

async fn create_tenant(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
    JsonBody(body): JsonBody<NewTenant>,
) -> Result<Json<TenantView>, ApiError> {
    if !principal.is_msp_admin() {
        return Err(forbidden("only an MSP admin creates tenants"));
    }
    let (services, principal) = (&services, &principal);
    idempotent(services, &req, principal, |scope| async move {
        let tenant_id = TenantId(scope.new_id());
        let command = TenantCommand::Register {
            tenant_id,
            name: body.name,
            login_mode: body.login_mode,
            policy: body.policy.unwrap_or_default(),
            shared_account_digits: random_digits(),
            by: actor(principal),
            at: now(),
        };
        let executed = services
            .execute_in::<Tenant>(scope, principal, tenant_id.stream_name(), command)
            .await?;
        Reply::created(
            &tenant_view(&executed.state)?,
            format!("/v1/tenants/{tenant_id}"),
        )
    })
    .await
}

async fn list_tenants(
    services: web::Data<Services>,
    Caller(principal): Caller,
) -> Result<Json<TenantList>, ApiError> {
    if principal.agent_computer_id().is_some() {
        return Err(forbidden("agents use the /v1/agent endpoints only"));
    }
    let technician = principal.technician_id();
    let all = services.query(|q| q.tenants()).await?;
    let mut visible = Vec::new();
    for tenant in all {
        let id = tenant.tenant_id;
        let shown = match technician {
            Some(t) => services.query(move |q| q.is_member(t, id)).await?,
            None => principal.can_read_tenant(id),
        };
        if shown {
            visible.push(tenant);
        }
    }
    Ok(Json::ok(&TenantList { tenants: visible }))
}

async fn get_tenant(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = visible_tenant(&services, &principal, &path).await?;
    let loaded: Tenant = services.load(tenant.stream_name()).await?;
    Ok(Json::ok(&tenant_view(&loaded)?))
}

async fn set_login_mode(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
    path: web::Path<String>,
    JsonBody(body): JsonBody<NewLoginMode>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = administered_tenant(&services, &principal, &path).await?;
    let (services, principal) = (&services, &principal);
    idempotent(services, &req, principal, |scope| async move {
        let command = TenantCommand::ChangeLoginMode {
            login_mode: body.login_mode,
            shared_account_digits: random_digits(),
            by: actor(principal),
            at: now(),
        };
        let executed = services
            .execute_in::<Tenant>(scope, principal, tenant.stream_name(), command)
            .await?;
        Reply::ok(&tenant_view(&executed.state)?)
    })
    .await
}

async fn set_policy(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
    path: web::Path<String>,
    JsonBody(policy): JsonBody<JitPolicy>,
) -> Result<Json<TenantView>, ApiError> {
    let tenant = administered_tenant(&services, &principal, &path).await?;
    let (services, principal) = (&services, &principal);
    idempotent(services, &req, principal, |scope| async move {
        let command = TenantCommand::ChangeJitPolicy {
            policy,
            by: actor(principal),
            at: now(),
        };
        let executed = services
            .execute_in::<Tenant>(scope, principal, tenant.stream_name(), command)
            .await?;
        Reply::ok(&tenant_view(&executed.state)?)
    })
    .await
}

/// The technician as `principal` may see them.
fn technician_view(t: &TechnicianState, principal: &Principal) -> TechnicianView {
    TechnicianView {
        technician_id: t.technician_id,
        username: t.username.clone(),
        email: t.email.clone(),
        tenants: principal.tenants_shown(&t.tenants),
        offboarded: t.offboarded,
    }
}

fn registered(technician: &Technician) -> Result<&TechnicianState, ApiError> {
    technician
        .state()
        .ok_or_else(|| ApiError::not_found("the technician"))
}

/// Registers a technician. Their username and e-mail address are theirs for good: another
/// technician asking for either (e-mail in any case), even after they were offboarded, gets
/// a 409 naming the field.
async fn create_technician(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
    JsonBody(body): JsonBody<NewTechnician>,
) -> Result<Json<TechnicianView>, ApiError> {
    if !principal.is_msp_admin() {
        return Err(forbidden("only an MSP admin registers technicians"));
    }
    let (services, principal) = (&services, &principal);
    idempotent(services, &req, principal, |scope| async move {
        let technician_id = TechnicianId(scope.new_id());
        let stream = technician_id.stream_name();
        // The technician's id is the claim's: a resumed claim whose technician exists was
        // registered by this request (or, cut short after the names, by the runner).
        let resumed: Option<Technician> = match scope.resumed {
            true => Some(services.load::<Technician>(stream.clone()).await?)
                .filter(|t| t.state().is_some()),
            false => None,
        };
        let executed = match resumed {
            Some(state) => latchkey_app::commands::Executed {
                events: Vec::new(),
                state,
                attempts: 0,
            },
            None => {
                let holder = NameHolder {
                    technician_id,
                    username: body.username,
                    email: body.email,
                };
                latchkey_app::technicians::register(
                    &*services.store,
                    &services.cache,
                    &super::envelope_in(scope, principal),
                    holder,
                    actor(principal),
                    now(),
                )
                .await?
            }
        };
        Reply::created(
            &technician_view(registered(&executed.state)?, principal),
            format!("/v1/technicians/{technician_id}"),
        )
    })
    .await
}

async fn list_technicians(
    services: web::Data<Services>,
    Caller(principal): Caller,
) -> Result<Json<TechnicianList>, ApiError> {
    let scope = if principal.can_read_all_tenants() {
        None
    } else if let Some(tenant) = own_tenant(&principal) {
        Some(tenant)
    } else {
        return Err(forbidden(
            "only admins and auditors list technicians; see your own at /v1/technicians/{id}",
        ));
    };
    let technicians = services.query(move |q| q.technicians(scope)).await?;
    Ok(Json::ok(&TechnicianList { technicians }))
}

async fn list_tenant_technicians(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<TechnicianList>, ApiError> {
    let tenant = visible_tenant(&services, &principal, &path).await?;
    if principal.technician_id().is_some() {
        return Err(forbidden("technicians do not list their colleagues"));
    }
    let technicians = services.query(move |q| q.technicians(Some(tenant))).await?;
    Ok(Json::ok(&TechnicianList { technicians }))
}

async fn get_technician(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<TechnicianView>, ApiError> {
    let technician = visible_technician(&services, &principal, &path).await?;
    Ok(Json::ok(&technician_view(&technician, &principal)))
}

/// Lets a technician work for the tenant. Only an MSP admin adds one
/// ([`Principal::adds_technicians_to_tenants`]); a tenant admin sees only the tenant's own
/// technicians, so for them this answers 404 for anyone else (exactly as for an id that does
/// not exist) and changes nothing for a member.
async fn join_tenant(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<(String, String)>,
) -> Result<Json<TechnicianView>, ApiError> {
    let (tenant, technician) = path.into_inner();
    let tenant = administered_tenant(&services, &principal, &tenant).await?;
    let technician = visible_technician(&services, &principal, &technician).await?;
    if !principal.adds_technicians_to_tenants() {
        // Visible to a tenant admin means a member already: nothing to add.
        return Ok(Json::ok(&technician_view(&technician, &principal)));
    }
    let command = TechnicianCommand::JoinTenant {
        tenant_id: tenant,
        by: actor(&principal),
        at: now(),
    };
    let executed = services
        .execute::<Technician>(&principal, technician.technician_id.stream_name(), command)
        .await?;
    Ok(Json::ok(&technician_view(
        registered(&executed.state)?,
        &principal,
    )))
}

/// Stops a technician working for the tenant: an MSP admin anyone, a tenant admin the
/// tenant's members (anyone else is a 404, as for an id that does not exist).
async fn leave_tenant(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<(String, String)>,
) -> Result<Json<TechnicianView>, ApiError> {
    let (tenant, technician) = path.into_inner();
    let tenant = administered_tenant(&services, &principal, &tenant).await?;
    let technician = visible_technician(&services, &principal, &technician).await?;
    let command = TechnicianCommand::LeaveTenant {
        tenant_id: tenant,
        by: actor(&principal),
        at: now(),
    };
    let executed = services
        .execute::<Technician>(&principal, technician.technician_id.stream_name(), command)
        .await?;
    Ok(Json::ok(&technician_view(
        registered(&executed.state)?,
        &principal,
    )))
}

/// Offboards a technician everywhere: the process managers revoke their sessions and retire
/// their accounts, and every API token of theirs is revoked now.
async fn offboard(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<OffboardedView>, ApiError> {
    let technician = visible_technician(&services, &principal, &path).await?;
    if !principal.is_msp_admin() {
        return Err(forbidden("only an MSP admin offboards technicians"));
    }
    let (executed, tokens_revoked) = latchkey_app::technicians::offboard(
        &*services.store,
        &services.cache,
        &services.tokens,
        &super::envelope(&principal),
        technician.technician_id,
        actor(&principal),
        now(),
    )
    .await?;
    Ok(Json::ok(&OffboardedView {
        technician: technician_view(registered(&executed.state)?, &principal),
        tokens_revoked,
    }))
}

async fn create_enrollment_token(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
    JsonBody(body): JsonBody<NewEnrollmentToken>,
) -> Result<Json<EnrollmentTokenIssued>, ApiError> {
    let tenant = administered_tenant(&services, &principal, &path).await?;
    let minutes = body.expires_in_minutes.unwrap_or(60);
    if !(1..=10_080).contains(&minutes) {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-value",
            "expires_in_minutes must be between 1 and 10080 (7 days)",
        )
        .with_field("expires_in_minutes"));
    }
    let expires_at = now() + chrono::Duration::minutes(minutes.into());
    let issued_by = principal.name.clone();
    let (token_id, token) = super::blocking(&services, "token store", move |s| {
        s.tokens.issue_enrollment(tenant, &issued_by, expires_at)
    })
    .await?;
    tracing::info!(%tenant, %token_id, "enrollment token issued");
    let issued = EnrollmentTokenIssued {
        token_id,
        tenant_id: tenant,
        token,
        expires_at,
        note: "shown once: give it to the agent (`latchkey-agent enroll --token …`)".into(),
    };
    Ok(Json::new(StatusCode::CREATED, &issued).no_store())
}

async fn list_computers(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<ComputerList>, ApiError> {
    let tenant = visible_tenant(&services, &principal, &path).await?;
    let computers = services.query(move |q| q.computers(tenant)).await?;
    Ok(Json::ok(&ComputerList { computers }))
}

async fn get_computer(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<(String, String)>,
) -> Result<Json<ComputerView>, ApiError> {
    let (tenant, computer) = path.into_inner();
    let tenant = visible_tenant(&services, &principal, &tenant).await?;
    let computer = tenant_computer(&services, tenant, &computer).await?;
    let loaded: Computer = services.load(computer.stream_name()).await?;
    let profile = loaded
        .profile()
        .ok_or_else(|| ApiError::not_found("the computer"))?;
    // Technicians see the computer, not who else uses it.
    let accounts = if principal.technician_id().is_some() {
        Vec::new()
    } else {
        loaded
            .accounts
            .values()
            .map(|a| AccountView {
                account: a.name.to_string(),
                owner: a.owner,
                wanted: a.status.is_wanted(),
                retiring: a.status.is_retired(),
                password_version: a.password_version,
                sessions: a.sessions.keys().copied().collect(),
                verified: a.verified.clone(),
            })
            .collect()
    };
    Ok(Json::ok(&ComputerView {
        computer_id: computer,
        tenant_id: tenant,
        hostname: profile.hostname.to_string(),
        os: profile.os,
        decommissioned: loaded.is_decommissioned(),
        policy_override: loaded.policy_override.clone(),
        accounts,
    }))
}

async fn override_policy(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<(String, String)>,
    JsonBody(body): JsonBody<PolicyOverride>,
) -> Result<Json<PolicyOverridden>, ApiError> {
    let (tenant, computer) = path.into_inner();
    let tenant = administered_tenant(&services, &principal, &tenant).await?;
    let computer = tenant_computer(&services, tenant, &computer).await?;
    let command = ComputerCommand::OverrideJitPolicy {
        policy: body.policy,
        by: actor(&principal),
        at: now(),
    };
    let executed = services
        .execute::<Computer>(&principal, computer.stream_name(), command)
        .await?;
    Ok(Json::ok(&PolicyOverridden {
        computer_id: computer,
        policy_override: executed.state.policy_override,
    }))
}

async fn decommission(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<(String, String)>,
) -> Result<Json<Decommissioned>, ApiError> {
    let (tenant, computer) = path.into_inner();
    let tenant = administered_tenant(&services, &principal, &tenant).await?;
    let computer = tenant_computer(&services, tenant, &computer).await?;
    let command = ComputerCommand::Decommission {
        by: actor(&principal),
        at: now(),
    };
    services
        .execute::<Computer>(&principal, computer.stream_name(), command)
        .await?;
    Ok(Json::ok(&Decommissioned {
        computer_id: computer,
        decommissioned: true,
    }))
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

async fn revoke(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<super::technician::SessionView>, ApiError> {
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
    Ok(Json::ok(&super::technician::session_view(&executed.state)?))
}

async fn managed_accounts(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<ManagedAccounts>, ApiError> {
    let tenant = readable_by_staff(&services, &principal, &path).await?;
    let accounts = services.query(move |q| q.managed_accounts(tenant)).await?;
    Ok(Json::ok(&ManagedAccounts { accounts }))
}

async fn standing_privilege(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<StandingPrivileges>, ApiError> {
    let tenant = readable_by_staff(&services, &principal, &path).await?;
    let standing_privilege = services
        .query(move |q| q.standing_privilege(Some(tenant), chrono::Utc::now()))
        .await?;
    Ok(Json::ok(&StandingPrivileges { standing_privilege }))
}

async fn drift(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<Drift>, ApiError> {
    let tenant = readable_by_staff(&services, &principal, &path).await?;
    let drift = services
        .query(move |q| q.admin_drift(tenant, chrono::Utc::now()))
        .await?;
    Ok(Json::ok(&Drift { drift }))
}

async fn stuck_requests(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<Json<StuckRequests>, ApiError> {
    let tenant = readable_by_staff(&services, &principal, &path).await?;
    let stuck_requests = services
        .query(move |q| q.failed_requests(Some(tenant)))
        .await?;
    Ok(Json::ok(&StuckRequests { stuck_requests }))
}

/// Admins and auditors of the tenant; technicians may see the tenant but not these views.
async fn readable_by_staff(
    services: &web::Data<Services>,
    principal: &Principal,
    raw: &str,
) -> Result<TenantId, ApiError> {
    let tenant = visible_tenant(services, principal, raw).await?;
    if principal.can_read_tenant(tenant) {
        Ok(tenant)
    } else {
        Err(forbidden("only the tenant's admins and auditors see this"))
    }
}

/// The lifetime asked for, or a 422 naming `expires_in`.
fn lifetime(services: &Services, expires_in: Option<u64>) -> Result<std::time::Duration, ApiError> {
    services
        .tokens
        .lifetimes()
        .choose(expires_in)
        .map_err(|reason| {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid-value", reason)
                .with_field("expires_in")
        })
}

async fn issue_token(
    services: web::Data<Services>,
    Caller(principal): Caller,
    JsonBody(body): JsonBody<NewToken>,
) -> Result<Json<IssuedToken>, ApiError> {
    // The caller's right comes first, before anything is looked up, so the answer never
    // depends on whether a technician or tenant exists. MSP admins issue any role. A tenant
    // admin issues tenant-admin and auditor tokens of their own tenant only (another tenant
    // is invisible: 404). Technician tokens are not tenant-scoped (technicians are MSP staff
    // working across customers), so only an MSP admin issues them.
    match (&principal.role, body.role.as_str()) {
        (Role::MspAdmin, _) => {}
        (Role::TenantAdmin { tenant_id: own }, "tenant_admin" | "auditor") => {
            match body.tenant_id.map(TenantId) {
                Some(tenant) if tenant == *own => {}
                Some(_) => return Err(ApiError::not_found("the tenant")),
                None if body.role == "auditor" => {
                    return Err(forbidden(
                        "a tenant admin issues auditor tokens of their own tenant only",
                    ))
                }
                None => {}
            }
        }
        (_, "msp_admin" | "tenant_admin" | "technician" | "auditor") => {
            return Err(forbidden(
                "you may not issue a token for that role; ask an MSP admin",
            ))
        }
        _ => {}
    }
    let missing = |field: &str| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-value",
            format!("{field} is required for role {}", body.role),
        )
        .with_field(field)
    };
    let tenant = body.tenant_id.map(TenantId);
    let (role, name) = match body.role.as_str() {
        "msp_admin" => (Role::MspAdmin, body.name.clone()),
        "tenant_admin" => (
            Role::TenantAdmin {
                tenant_id: tenant.ok_or_else(|| missing("tenant_id"))?,
            },
            body.name.clone(),
        ),
        "auditor" => (Role::Auditor { tenant_id: tenant }, body.name.clone()),
        "technician" => {
            let id = TechnicianId(body.technician_id.ok_or_else(|| missing("technician_id"))?);
            let loaded: Technician = services.load(id.stream_name()).await?;
            let technician = registered(&loaded)?;
            if technician.offboarded {
                return Err(DomainError::TechnicianOffboarded.into());
            }
            (
                Role::Technician { technician_id: id },
                Some(technician.email.clone()),
            )
        }
        _ => {
            return Err(ApiError::bad_request(
                "role",
                "role must be one of msp_admin, tenant_admin, technician, auditor",
            ))
        }
    };
    let name = name.ok_or_else(|| missing("name"))?;
    if let Some(tenant) = tenant.filter(|_| body.role != "technician") {
        let loaded: Tenant = services.load(tenant.stream_name()).await?;
        if loaded.state().is_none() {
            return Err(ApiError::not_found("the tenant"));
        }
    }
    let lifetime = lifetime(&services, body.expires_in)?;
    let kind = role.kind();
    let issued_name = name.to_string();
    let technician = match role {
        Role::Technician { technician_id } => Some(technician_id),
        _ => None,
    };
    let issued = super::blocking(&services, "token store", move |s| {
        s.tokens.issue_for(role, &issued_name, Some(lifetime))
    })
    .await?;
    if let Some(technician) = technician {
        // Checked again after the token exists: an offboarding that came in between would
        // not have revoked it (see `technicians::keep_new_token`).
        let kept = latchkey_app::technicians::keep_new_token(
            &*services.store,
            &services.cache,
            &services.tokens,
            technician,
            issued.token_id,
        )
        .await?;
        if !kept {
            return Err(DomainError::TechnicianOffboarded.into());
        }
    }
    tracing::info!(role = kind.as_str(), holder = %name, token_id = %issued.token_id, by = %principal.name, "API token issued");
    let answer = IssuedToken {
        token_id: issued.token_id.simple().to_string(),
        role: kind,
        name: name.to_string(),
        token: issued.token,
        expires_at: issued.expires_at,
        note: "shown once; the server keeps only its hash".into(),
    };
    Ok(Json::new(StatusCode::CREATED, &answer).no_store())
}

async fn list_tokens(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
) -> Result<Json<TokenList>, ApiError> {
    let Some(scope) = principal.token_scope() else {
        return Err(forbidden("agents use the /v1/agent endpoints only"));
    };
    let params = Params::parse(&req, TOKENS_QUERY)?;
    // Checked against the same list by `Params::parse`.
    let role = params
        .text("role")
        .and_then(|kind| ROLE_KINDS.into_iter().find(|k| *k == kind));
    let scope = match params.uuid("technician_id").map(TechnicianId) {
        None => Some(scope),
        // One technician's tokens, if the caller may see them at all.
        Some(technician) => match scope {
            TokenScope::All => Some(TokenScope::Technician(technician)),
            TokenScope::Technician(own) if own == technician => Some(scope),
            _ => None,
        },
    };
    let tokens = match scope {
        None => Vec::new(),
        Some(scope) => {
            let query = TokenQuery {
                scope,
                role,
                include_revoked: params.flag("revoked"),
                limit: params.number("limit") as u32,
            };
            super::blocking(&services, "token store", move |s| s.tokens.list(&query)).await?
        }
    };
    Ok(Json::ok(&TokenList { tokens }))
}

/// Gives a token a new secret and a new expiry; the old secret stops working at once. The
/// token keeps its id, role and holder. Its holder may rotate it, an MSP admin any person's
/// token, a tenant admin their tenant's tenant-admin and auditor tokens.
async fn rotate_token(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
    JsonBody(body): JsonBody<Rotation>,
) -> Result<Json<IssuedToken>, ApiError> {
    if principal.agent_computer_id().is_some() {
        return Err(forbidden("agents use the /v1/agent endpoints only"));
    }
    let token_id = path_id(&path, "token_id")?;
    let token = super::blocking(&services, "token store", move |s| s.tokens.token(token_id))
        .await?
        .filter(|t| principal.can_see_token(t))
        .ok_or_else(|| ApiError::not_found("the token"))?;
    if !principal.can_rotate_token(&token) {
        return Err(forbidden(
            "you may rotate your own token and, as an admin, the tokens you may issue",
        ));
    }
    if let Role::Agent { .. } = token.grants {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "rule",
            "an agent's credential is not rotated here: enroll the computer again",
        ));
    }
    let lifetime = lifetime(&services, body.expires_in)?;
    let revoked = || {
        ApiError::new(
            StatusCode::CONFLICT,
            "revoked",
            "the token has been revoked; issue a new one",
        )
    };
    let rotated = super::blocking(&services, "token store", move |s| {
        s.tokens.rotate(token_id, Some(lifetime))
    })
    .await?
    .ok_or_else(revoked)?;
    if let Role::Technician { technician_id } = token.grants {
        // A token of an offboarded technician is revoked now, not renewed: checked after
        // the new secret is stored, so an offboarding that came in between counts too (see
        // `technicians::keep_new_token`).
        let kept = latchkey_app::technicians::keep_new_token(
            &*services.store,
            &services.cache,
            &services.tokens,
            technician_id,
            token_id,
        )
        .await?;
        if !kept {
            return Err(revoked());
        }
    }
    tracing::info!(token_id = %token_id, by = %principal.name, "API token rotated");
    Ok(Json::ok(&IssuedToken {
        token_id: rotated.token_id.simple().to_string(),
        role: token.role,
        name: token.holder.clone(),
        token: rotated.token,
        expires_at: rotated.expires_at,
        note: "shown once; the old secret no longer works".into(),
    })
    .no_store())
}

async fn revoke_token(
    services: web::Data<Services>,
    Caller(principal): Caller,
    path: web::Path<String>,
) -> Result<NoContent, ApiError> {
    if !principal.is_msp_admin() {
        return Err(forbidden("only an MSP admin revokes tokens"));
    }
    let token_id = path_id(&path, "token_id")?;
    let revoked =
        super::blocking(&services, "token store", move |s| s.tokens.revoke(token_id)).await?;
    if revoked {
        tracing::info!(%token_id, by = %principal.name, "API token revoked");
        Ok(NoContent)
    } else {
        Err(ApiError::not_found("the token"))
    }
}
