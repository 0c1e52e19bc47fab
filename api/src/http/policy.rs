//! A tenant's PAM settings: the technician login mode and the JIT policy, and a computer's own
//! JIT policy overriding the tenant's.

use super::answer::Json;
use super::idempotency::{idempotent, Reply};
use super::openapi::{Doc, Routes};
use super::tenants::{random_digits, tenant_view};
use super::who::ADMINS;
use super::Caller;
use super::{actor, administered_tenant, now, tenant_computer, Services};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::{web, HttpRequest};
use latchkey_domain::computer::{Computer, ComputerCommand};
use latchkey_domain::policy::JitPolicy;
use latchkey_domain::tenant::{Tenant, TenantCommand};
use latchkey_wire::{NewLoginMode, PolicyOverridden, PolicyOverride, TenantView};

pub fn routes(r: &mut Routes<'_>) {
    r.add(
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
        Method::PUT,
        "/tenants/{tenant_id}/computers/{computer_id}/policy",
        override_policy,
        Doc::new(
            "Set (or clear with null) the computer's own JIT policy",
            ADMINS,
        ),
    );
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
