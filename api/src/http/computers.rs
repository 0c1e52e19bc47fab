//! A tenant's computers: enrollment tokens for their agents, the computers and their managed
//! accounts, decommissioning, the account-state views (managed accounts, standing privilege,
//! drift, stuck revocations), and a technician's offline TOTP secret on a computer (audited).

use super::answer::Json;
use super::openapi::{Doc, Routes};
use super::who::{ADMINS, MEMBERS, READERS, TECHNICIAN};
use super::Caller;
use super::{
    actor, administered_tenant, forbidden, now, tenant_computer, visible_tenant, Services,
};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::web;
use latchkey_domain::computer::{Computer, ComputerCommand, ComputerEvent};
use latchkey_domain::ids::{ComputerId, TechnicianId, TenantId};
use latchkey_domain::names::AccountName;
use latchkey_domain::policy::LoginMode;
use latchkey_domain::technician::Technician;
use latchkey_domain::tenant::Tenant;
use latchkey_server_stores::secrets::{self, Secret, SecretRef};
use latchkey_server_stores::tokens::Principal;
use latchkey_wire::{
    AccountView, ComputerList, ComputerView, Decommissioned, Drift, EnrollmentTokenIssued,
    ManagedAccounts, NewEnrollmentToken, OfflineSecret, StandingPrivileges, StuckRequests,
};

pub fn routes(r: &mut Routes<'_>) {
    r.add(
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
        "/tenants/{tenant_id}/computers/{computer_id}/offline-secret",
        offline_secret,
        Doc::new(
            "Your offline TOTP secret on this computer: otpauth:// URI and QR code (audited)",
            TECHNICIAN,
        )
        .answer(200, "the secret (never cached)"),
    );
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
