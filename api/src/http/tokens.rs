//! API tokens: issue (the secret shown once), list (never a secret), rotate and revoke.
//! Enrollment tokens for agents are `computers`'.

use super::answer::{Json, NoContent};
use super::openapi::{Doc, Kind, Query, Routes};
use super::technicians::registered;
use super::Caller;
use super::{forbidden, path_id, Params, Services};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest};
use latchkey_domain::ids::{TechnicianId, TenantId};
use latchkey_domain::technician::Technician;
use latchkey_domain::tenant::Tenant;
use latchkey_domain::DomainError;
use latchkey_server_stores::tokens::{Role, TokenQuery, TokenScope, ROLE_KINDS};
use latchkey_wire::{IssuedToken, NewToken, Rotation, TokenList};

pub fn routes(r: &mut Routes<'_>) {
    r.add(
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

const TOKENS_QUERY: &[Query] = &[
    Query::new("role", Kind::OneOf(&ROLE_KINDS), "only this role"),
    Query::new("technician_id", Kind::Uuid, "only this technician's"),
    Query::new("revoked", Kind::Flag, "true: revoked tokens too"),
    Query::PAGE_LIMIT,
];

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
