//! Tenants: register a customer tenant, list the tenants the caller may see, read one with its
//! login mode and JIT policy. Changing those settings is `policy`'s.

use super::answer::Json;
use super::idempotency::{idempotent, Reply};
use super::openapi::{Doc, Routes};
use super::who::MEMBERS;
use super::Caller;
use super::{actor, forbidden, now, visible_tenant, Services};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::{web, HttpRequest};
use latchkey_domain::ids::TenantId;
use latchkey_domain::names::SharedAccountDigits;
use latchkey_domain::tenant::{Tenant, TenantCommand};
use latchkey_wire::{NewTenant, TenantList, TenantView};

pub fn routes(r: &mut Routes<'_>) {
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
    );
}

pub(super) fn random_digits() -> SharedAccountDigits {
    SharedAccountDigits::parse(format!("{:04}", rand::random_range(0..10_000u32)))
        .expect("four digits")
}

pub(super) fn tenant_view(tenant: &Tenant) -> Result<TenantView, ApiError> {
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
