//! Technicians (MSP staff): register, list and read them, let them work for a tenant or stop
//! them, and offboard them everywhere.

use super::answer::Json;
use super::idempotency::{idempotent, Reply};
use super::openapi::{Doc, Routes};
use super::who::{ADMINS, READERS};
use super::Caller;
use super::{
    actor, administered_tenant, forbidden, now, own_tenant, visible_technician, visible_tenant,
    Services,
};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::{web, HttpRequest};
use latchkey_domain::ids::TechnicianId;
use latchkey_domain::technician::{Technician, TechnicianCommand, TechnicianState};
use latchkey_domain::technician_names::NameHolder;
use latchkey_server_stores::tokens::Principal;
use latchkey_wire::{NewTechnician, OffboardedView, TechnicianList, TechnicianView};

pub fn routes(r: &mut Routes<'_>) {
    r.add(
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
    );
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

pub(super) fn registered(technician: &Technician) -> Result<&TechnicianState, ApiError> {
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
