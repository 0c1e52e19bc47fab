//! Auditor endpoints (also open to admins within their scope): the audit trail, raw events
//! as NDJSON from a global position (optionally followed live), hash-chain verification, and
//! "who was an admin on computer X at time T, through which session".
//!
//! A tenant-scoped reader (tenant admin, tenant auditor) sees only its tenant: audit rows of
//! that tenant, and raw events of the tenant's own stream, its computers' and its sessions'
//! streams. Technician streams span tenants and are shown to all-tenant readers only.

use super::openapi::{Doc, Routes};
use super::{forbidden, own_tenant, tenant_computer, visible_tenant, Params, Services};
use crate::auth::Principal;
use crate::problem::ApiError;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_projections::AuditFilter;
use latchkey_store::hash_chain::verify_after;
use latchkey_store::{subscribe_all, Position, RecordedEvent, StreamName};
use std::collections::HashMap;

pub fn routes(r: &mut Routes<'_>) {
    const READERS: &str = "msp_admin; auditor; tenant_admin (their tenant only)";
    r.add(
        Method::GET,
        "/audit",
        audit_trail,
        Doc::new(
            "The audit trail, one sentence per event, oldest first",
            READERS,
        )
        .query(&[
            ("tenant_id", "only this tenant's"),
            ("computer_id", "only this computer's"),
            ("technician_id", "only this technician's"),
            ("account", "only this account's"),
            ("from", "RFC 3339 time, inclusive"),
            ("to", "RFC 3339 time, exclusive"),
            ("cursor", "next_cursor of the previous page"),
            ("limit", "1-1000, default 100"),
        ]),
    )
    .add(
        Method::GET,
        "/events",
        events,
        Doc::new(
            "Raw events as NDJSON after a global position; follow=true streams live",
            READERS,
        )
        .query(&[
            ("after", "global position commit.prepare (exclusive)"),
            ("limit", "at most this many (default 1000, max 10000)"),
            (
                "follow",
                "true: keep the response open and stream new events",
            ),
        ])
        .answer(200, "application/x-ndjson"),
    )
    .add(
        Method::GET,
        "/verify",
        verify,
        Doc::new(
            "Verify the hash chain of one stream, or of the whole log",
            READERS,
        )
        .query(&[(
            "stream",
            "e.g. computer-<id>; absent: every stream (all-tenant readers)",
        )]),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/computers/{computer_id}/admins",
        admins_as_of,
        Doc::new(
            "Which accounts were in the admin group at a time, through which session",
            "msp_admin; tenant_admin or auditor of this tenant; auditor of all",
        )
        .query(&[("at", "RFC 3339 time (default now)")]),
    );
}

/// Who may read audit data and how far: `Ok(None)` all tenants, `Ok(Some(t))` one tenant.
fn audit_scope(principal: &Principal) -> Result<Option<TenantId>, ApiError> {
    if principal.can_read_all_tenants() {
        Ok(None)
    } else if let Some(tenant) = own_tenant(principal) {
        Ok(Some(tenant))
    } else {
        Err(forbidden("only auditors and admins read the audit trail"))
    }
}

async fn audit_trail(
    services: web::Data<Services>,
    req: HttpRequest,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let scope = audit_scope(&principal)?;
    let params = Params::parse(
        &req,
        &[
            "tenant_id",
            "computer_id",
            "technician_id",
            "account",
            "from",
            "to",
            "cursor",
            "limit",
        ],
    )?;
    let asked = params.uuid("tenant_id")?.map(TenantId);
    let tenant = match (scope, asked) {
        (Some(own), Some(asked)) if own != asked => return Err(ApiError::not_found("the tenant")),
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    let filter = AuditFilter {
        tenant,
        computer: params.uuid("computer_id")?.map(ComputerId),
        technician: params.uuid("technician_id")?.map(TechnicianId),
        account: params.text("account"),
        from: params.time("from")?,
        to: params.time("to")?,
        cursor: params.text("cursor"),
        limit: params.number("limit", 1000)?.unwrap_or(100) as u32,
    };
    let page = services.query(move |q| q.audit_trail(&filter)).await?;
    Ok(HttpResponse::Ok().json(page))
}

/// Which tenant a stream belongs to, for tenant-scoped readers; cached per request.
struct StreamScope {
    tenant: TenantId,
    known: HashMap<String, bool>,
}

impl StreamScope {
    async fn allows(&mut self, services: &web::Data<Services>, stream: &StreamName) -> bool {
        if let Some(known) = self.known.get(stream.as_str()) {
            return *known;
        }
        let tenant = self.tenant;
        let name = stream.as_str().to_owned();
        let allowed = if let Some(id) = TenantId::from_stream_name(&name) {
            id == tenant
        } else if let Some(computer) = ComputerId::from_stream_name(&name) {
            services
                .query(move |q| q.computer(computer))
                .await
                .ok()
                .flatten()
                .is_some_and(|c| c.tenant_id == tenant)
        } else if let Some(session) = SessionId::from_stream_name(&name) {
            services
                .query(move |q| q.session(session))
                .await
                .ok()
                .flatten()
                .is_some_and(|s| s.tenant_id == tenant)
        } else {
            false
        };
        self.known.insert(name, allowed);
        allowed
    }
}

/// One stored event as an NDJSON line: everything an auditor needs to re-verify it.
fn event_line(e: &RecordedEvent) -> String {
    let payload: serde_json::Value =
        serde_json::from_slice(&e.payload).unwrap_or(serde_json::Value::Null);
    let mut line = serde_json::json!({
        "position": super::format_position(e.position),
        "stream": e.stream.as_str(),
        "revision": e.revision,
        "event_id": e.id,
        "event_type": e.event_type,
        "schema_version": e.schema_version,
        "recorded_at": e.recorded_at,
        "metadata": {
            "actor": e.metadata.actor,
            "correlation_id": e.metadata.correlation_id,
            "causation_id": e.metadata.causation_id,
        },
        "payload": payload,
        "prev_hash": e.prev_hash.map(|h| hex::encode(h.0)),
        "hash": hex::encode(e.hash.0),
    })
    .to_string();
    line.push('\n');
    line
}

/// Raw events as NDJSON after `after` (exclusive; from the start when absent), at most
/// `limit` of them; with `follow=true` the response stays open and streams new events as they
/// are committed (the live tail).
async fn events(
    services: web::Data<Services>,
    req: HttpRequest,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let scope = audit_scope(&principal)?;
    let params = Params::parse(&req, &["after", "limit", "follow"])?;
    let after = params.position("after")?;
    let follow = params.flag("follow")?.unwrap_or(false);
    let limit = params.number("limit", 10_000)?.unwrap_or(1000) as usize;
    let mut scope = scope.map(|tenant| StreamScope {
        tenant,
        known: HashMap::new(),
    });
    if follow {
        let subscription = subscribe_all(services.store.clone(), after);
        let body = futures::stream::unfold(
            (subscription, scope, services.clone()),
            |(mut subscription, mut scope, services)| async move {
                loop {
                    let event = match subscription.next().await {
                        Ok(event) => event,
                        Err(e) => {
                            tracing::warn!(error = %e, "live tail ended");
                            return None;
                        }
                    };
                    if let Some(scope) = scope.as_mut() {
                        if !scope.allows(&services, &event.stream).await {
                            continue;
                        }
                    }
                    let line = web::Bytes::from(event_line(&event));
                    return Some((
                        Ok::<_, actix_web::Error>(line),
                        (subscription, scope, services),
                    ));
                }
            },
        );
        return Ok(HttpResponse::Ok()
            .content_type("application/x-ndjson")
            .streaming(body.boxed_local()));
    }
    let mut out = String::new();
    let mut cursor = after;
    let mut sent = 0;
    'pages: loop {
        let page = services
            .store
            .read_all(cursor, 1000)
            .await
            .map_err(|e| super::internal("event store", &e))?;
        if page.is_empty() {
            break;
        }
        for event in &page {
            cursor = Some(event.position);
            if let Some(scope) = scope.as_mut() {
                if !scope.allows(&services, &event.stream).await {
                    continue;
                }
            }
            out.push_str(&event_line(event));
            sent += 1;
            if sent >= limit {
                break 'pages;
            }
        }
    }
    let mut response = HttpResponse::Ok();
    if let Some(last) = cursor {
        // Where to continue from: the last event read (sent or filtered out).
        response.insert_header(("Latchkey-Next-After", super::format_position(last)));
    }
    Ok(response.content_type("application/x-ndjson").body(out))
}

/// Verifies the hash chain of one stream (`?stream=computer-…`) or, for all-tenant readers,
/// of every stream in the log. Answers 200 with `"intact": true` or `"intact": false` and the
/// first broken stream and revision.
async fn verify(
    services: web::Data<Services>,
    req: HttpRequest,
    principal: Principal,
) -> Result<HttpResponse, ApiError> {
    let scope = audit_scope(&principal)?;
    let params = Params::parse(&req, &["stream"])?;
    let store = services.store.clone();
    let Some(name) = params.text("stream") else {
        if scope.is_some() {
            return Err(forbidden(
                "a tenant-scoped reader verifies one stream at a time (?stream=…)",
            ));
        }
        return verify_all(&services).await;
    };
    let stream = StreamName::new(name)
        .map_err(|e| ApiError::bad_request("stream", format!("stream: {e}")))?;
    if let Some(tenant) = scope {
        let mut scope = StreamScope {
            tenant,
            known: HashMap::new(),
        };
        if !scope.allows(&services, &stream).await {
            return Err(ApiError::not_found("the stream"));
        }
    }
    let mut previous: Option<RecordedEvent> = None;
    let mut count = 0u64;
    loop {
        let from = previous.as_ref().map_or(0, |p| p.revision + 1);
        let page = store
            .read_stream(&stream, from, 1000)
            .await
            .map_err(|e| super::internal("event store", &e))?;
        if page.is_empty() {
            break;
        }
        if let Err(e) = verify_after(previous.as_ref(), &page) {
            return Ok(HttpResponse::Ok().json(serde_json::json!({
                "stream": stream.as_str(),
                "intact": false,
                "revision": e.revision(),
                "problem": e.to_string(),
            })));
        }
        count += page.len() as u64;
        previous = page.into_iter().last();
    }
    if count == 0 {
        return Err(ApiError::not_found("the stream"));
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "stream": stream.as_str(),
        "intact": true,
        "events": count,
        "last_hash": previous.map(|p| hex::encode(p.hash.0)),
    })))
}

async fn verify_all(services: &web::Data<Services>) -> Result<HttpResponse, ApiError> {
    let mut last: HashMap<String, RecordedEvent> = HashMap::new();
    let mut after: Option<Position> = None;
    let mut count = 0u64;
    loop {
        let page = services
            .store
            .read_all(after, 1000)
            .await
            .map_err(|e| super::internal("event store", &e))?;
        if page.is_empty() {
            break;
        }
        for event in page {
            after = Some(event.position);
            let previous = last.get(event.stream.as_str());
            if let Err(e) = verify_after(previous, std::slice::from_ref(&event)) {
                return Ok(HttpResponse::Ok().json(serde_json::json!({
                    "intact": false,
                    "stream": event.stream.as_str(),
                    "revision": e.revision(),
                    "problem": e.to_string(),
                })));
            }
            count += 1;
            last.insert(event.stream.as_str().to_owned(), event);
        }
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "intact": true,
        "streams": last.len(),
        "events": count,
    })))
}

async fn admins_as_of(
    services: web::Data<Services>,
    req: HttpRequest,
    principal: Principal,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (tenant, computer) = path.into_inner();
    let tenant = visible_tenant(&services, &principal, &tenant).await?;
    if !principal.can_read_tenant(tenant) {
        return Err(forbidden("only the tenant's admins and auditors see this"));
    }
    let computer = tenant_computer(&services, tenant, &computer).await?;
    let params = Params::parse(&req, &["at"])?;
    let at = params.time("at")?.unwrap_or_else(chrono::Utc::now);
    let rows = services
        .query(move |q| q.admins_as_of(computer, at))
        .await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "computer_id": computer,
        "at": at,
        "admins": rows,
    })))
}
