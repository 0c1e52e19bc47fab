//! The audit (read by auditors, and by admins within their scope): the audit trail, raw events
//! as NDJSON from a global position (optionally followed live), hash-chain verification, and
//! "who was an admin on computer X at time T, through which session".
//!
//! A tenant-scoped reader (tenant admin, tenant auditor) sees only its tenant: audit rows of
//! that tenant, and raw events of the tenant's own stream, its computers' and its sessions'
//! streams. Technician streams span tenants and are shown to all-tenant readers only.

use super::answer::{Json, Lines};
use super::openapi::{Doc, Kind, Query, Routes};
use super::Caller;
use super::{forbidden, own_tenant, tenant_computer, visible_tenant, Params, Services};
use crate::problem::ApiError;
use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use futures::StreamExt;
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_projections::{AuditFilter, AuditPage};
use latchkey_server_stores::tokens::Principal;
use latchkey_store::hash_chain::verify_after;
use latchkey_store::{subscribe_all, Position, RecordedEvent, StreamName};
use latchkey_wire::{AdminsAt, EventLine, EventLineMetadata, Verification};
use std::collections::HashMap;

const AUDIT_QUERY: &[Query] = &[
    Query::new("tenant_id", Kind::Uuid, "only this tenant's"),
    Query::new("computer_id", Kind::Uuid, "only this computer's"),
    Query::new("technician_id", Kind::Uuid, "only this technician's"),
    Query::new("account", Kind::Text, "only this account's"),
    Query::new("from", Kind::Time, "from this time, inclusive"),
    Query::new("to", Kind::Time, "to this time, exclusive (after from)"),
    Query::new("cursor", Kind::Cursor, "next_cursor of the previous page"),
    Query::PAGE_LIMIT,
];

const EVENTS_QUERY: &[Query] = &[
    Query::new(
        "after",
        Kind::Position,
        "global position commit.prepare (exclusive); from the start when absent",
    ),
    Query::new(
        "limit",
        Kind::Integer {
            min: 1,
            max: 10_000,
            default: 1000,
        },
        "at most this many",
    ),
    Query::new(
        "follow",
        Kind::Flag,
        "true: keep the response open and stream new events",
    ),
];

const VERIFY_QUERY: &[Query] = &[Query::new(
    "stream",
    Kind::Stream,
    "e.g. computer-<id>; absent: every stream (all-tenant readers)",
)];

const ADMINS_QUERY: &[Query] = &[Query::new("at", Kind::Time, "the time (default now)")];

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
        .query(AUDIT_QUERY)
        .problems(&[404])
        .answer(200, "one page of the trail"),
    )
    .add(
        Method::GET,
        "/events",
        events,
        Doc::new(
            "Raw events as NDJSON after a global position; follow=true streams live",
            READERS,
        )
        .query(EVENTS_QUERY)
        .answer(
            200,
            "one event a line; header Latchkey-Next-After: where to continue from",
        ),
    )
    .add(
        Method::GET,
        "/verify",
        verify,
        Doc::new(
            "Verify the hash chain of one stream, or of the whole log",
            READERS,
        )
        .query(VERIFY_QUERY)
        .problems(&[404])
        .answer(
            200,
            "whether the chain is intact, and where it breaks if not",
        ),
    )
    .add(
        Method::GET,
        "/tenants/{tenant_id}/computers/{computer_id}/admins",
        admins_as_of,
        Doc::new(
            "Which accounts were in the admin group at a time, through which session",
            "msp_admin; tenant_admin or auditor of this tenant; auditor of all",
        )
        .query(ADMINS_QUERY),
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
    Caller(principal): Caller,
) -> Result<Json<AuditPage>, ApiError> {
    let scope = audit_scope(&principal)?;
    let params = Params::parse(&req, AUDIT_QUERY)?;
    let asked = params.uuid("tenant_id").map(TenantId);
    let tenant = match (scope, asked) {
        (Some(own), Some(asked)) if own != asked => return Err(ApiError::not_found("the tenant")),
        (Some(own), _) => Some(own),
        (None, asked) => asked,
    };
    let filter = AuditFilter {
        tenant,
        computer: params.uuid("computer_id").map(ComputerId),
        technician: params.uuid("technician_id").map(TechnicianId),
        account: params.text("account"),
        from: params.time("from"),
        to: params.time("to"),
        cursor: params.text("cursor"),
        limit: params.number("limit") as u32,
    };
    let page = services.query(move |q| q.audit_trail(&filter)).await?;
    Ok(Json::ok(&page))
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

fn event_line(e: &RecordedEvent) -> String {
    let payload: serde_json::Value =
        serde_json::from_slice(&e.payload).unwrap_or(serde_json::Value::Null);
    Lines::line(&EventLine {
        position: super::format_position(e.position),
        stream: e.stream.as_str().to_owned(),
        revision: e.revision,
        event_id: e.id,
        event_type: e.event_type.clone(),
        schema_version: e.schema_version,
        recorded_at: e.recorded_at,
        metadata: EventLineMetadata {
            actor: e.metadata.actor.clone(),
            correlation_id: e.metadata.correlation_id,
            causation_id: e.metadata.causation_id,
        },
        payload,
        prev_hash: e.prev_hash.map(|h| hex::encode(h.0)),
        hash: hex::encode(e.hash.0),
    })
}

/// Raw events as NDJSON after `after` (exclusive; from the start when absent), at most
/// `limit` of them; with `follow=true` the response stays open and streams new events as they
/// are committed (the live tail).
async fn events(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
) -> Result<Lines<EventLine>, ApiError> {
    let scope = audit_scope(&principal)?;
    let params = Params::parse(&req, EVENTS_QUERY)?;
    let after = params.position("after");
    let follow = params.flag("follow");
    let limit = params.number("limit") as usize;
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
        return Ok(Lines::new(
            HttpResponse::Ok()
                .content_type("application/x-ndjson")
                .streaming(body.boxed_local()),
        ));
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
    Ok(Lines::new(
        response.content_type("application/x-ndjson").body(out),
    ))
}

/// Verifies the hash chain of one stream (`?stream=computer-…`) or, for all-tenant readers,
/// of every stream in the log. Answers 200 with `"intact": true` or `"intact": false` and the
/// first broken stream and revision.
async fn verify(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
) -> Result<Json<Verification>, ApiError> {
    let scope = audit_scope(&principal)?;
    let params = Params::parse(&req, VERIFY_QUERY)?;
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
            return Ok(Json::ok(&Verification {
                stream: Some(stream.as_str().to_owned()),
                intact: false,
                revision: Some(e.revision()),
                problem: Some(e.to_string()),
                ..Verification::default()
            }));
        }
        count += page.len() as u64;
        previous = page.into_iter().last();
    }
    if count == 0 {
        return Err(ApiError::not_found("the stream"));
    }
    Ok(Json::ok(&Verification {
        stream: Some(stream.as_str().to_owned()),
        intact: true,
        events: Some(count),
        last_hash: previous.map(|p| hex::encode(p.hash.0)),
        ..Verification::default()
    }))
}

async fn verify_all(services: &web::Data<Services>) -> Result<Json<Verification>, ApiError> {
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
                return Ok(Json::ok(&Verification {
                    stream: Some(event.stream.as_str().to_owned()),
                    intact: false,
                    revision: Some(e.revision()),
                    problem: Some(e.to_string()),
                    ..Verification::default()
                }));
            }
            count += 1;
            last.insert(event.stream.as_str().to_owned(), event);
        }
    }
    Ok(Json::ok(&Verification {
        intact: true,
        streams: Some(last.len()),
        events: Some(count),
        ..Verification::default()
    }))
}

async fn admins_as_of(
    services: web::Data<Services>,
    req: HttpRequest,
    Caller(principal): Caller,
    path: web::Path<(String, String)>,
) -> Result<Json<AdminsAt>, ApiError> {
    let (tenant, computer) = path.into_inner();
    let tenant = visible_tenant(&services, &principal, &tenant).await?;
    if !principal.can_read_tenant(tenant) {
        return Err(forbidden("only the tenant's admins and auditors see this"));
    }
    let computer = tenant_computer(&services, tenant, &computer).await?;
    let params = Params::parse(&req, ADMINS_QUERY)?;
    let at = params.time("at").unwrap_or_else(chrono::Utc::now);
    let admins = services
        .query(move |q| q.admins_as_of(computer, at))
        .await?;
    Ok(Json::ok(&AdminsAt {
        computer_id: computer,
        at,
        admins,
    }))
}
