//! Agent endpoints: enroll with a one-time token, receive the computer's provisioning
//! requests, report what was verified on the machine.
//!
//! The request feed is a long poll: `GET /v1/agent/commands?wait=25` answers at once with
//! every request the agent has not reported on yet, or waits up to `wait` seconds for one
//! (the answer's status and headers are then sent at once, its body when it is known).
//! It is resumable by construction: a request stays in the feed until the agent's result for
//! it is recorded, so an agent that restarts or reconnects (to this server or another) gets
//! exactly what it has not acknowledged, and requests are idempotent "ensure" operations.
//! A rotation request carries the new password, generated here to the tenant's policy on
//! first delivery and stored encrypted; every later delivery of the same request carries the
//! same password.

use super::answer::{Events, Json};
use super::openapi::{Doc, Kind, Query, Routes};
use super::Caller;
use super::{actor, forbidden, Params, Services};
use crate::problem::{ApiError, JsonBody};
use actix_web::http::Method;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use latchkey_domain::computer::{Computer, ComputerCommand, Operation, RequestStatus};
use latchkey_domain::ids::{AgentKeyId, ComputerId, RequestId};
use latchkey_domain::names::AccountName;
use latchkey_domain::tenant::{Tenant, TenantState};
use latchkey_server_stores::secrets::{self, Secret, SecretRef};
use latchkey_server_stores::tokens::{EnrollmentRefused, Principal, Role};
use latchkey_wire::{
    AgentCommand, AgentCommands, AgentOfflineSecret, AgentOfflineSecrets, Enrolled, Enrollment,
    FeedData, FeedEnded, Inventory, InventoryTaken, OfflineLockout, OfflineLockoutRecorded,
    OfflineLogin, OfflineLoginRecorded, Recorded, Report, ReportOutcome,
};
use std::pin::Pin;
use std::time::Duration;
use uuid::Uuid;

/// The longest a long poll waits.
pub const MAX_WAIT_SECONDS: u64 = 60;

const COMMANDS_QUERY: &[Query] = &[Query::new(
    "wait",
    Kind::Integer {
        min: 0,
        max: MAX_WAIT_SECONDS,
        default: 0,
    },
    "seconds to wait for a request if there is none",
)];

pub fn routes(r: &mut Routes<'_>) {
    r.add(
        Method::POST,
        "/agent/enroll",
        enroll,
        Doc::new(
            "Enroll this computer with a one-time token; returns the agent's credential",
            "anyone holding an enrollment token",
        )
        .problems(&[401, 410, 429])
        .answer(201, "computer id and agent token (shown once)"),
    )
    .add(
        Method::GET,
        "/agent/commands",
        commands,
        Doc::new(
            "Provisioning requests not yet reported on (long poll)",
            "the computer's agent",
        )
        .query(COMMANDS_QUERY)
        .answer(200, "the requests (never cached)"),
    )
    .add(
        Method::GET,
        "/agent/feed",
        feed,
        Doc::new(
            "Provisioning requests not yet reported on, pushed as server-sent events \
             (text/event-stream): a `commands` event at once and whenever they change, a \
             keep-alive comment every 25 s, an `end` event when the credential is revoked",
            "the computer's agent",
        )
        .answer(200, "the event stream (never cached)"),
    )
    .add(
        Method::POST,
        "/agent/results",
        report,
        Doc::new(
            "Report a request's result and what was verified on the machine",
            "the computer's agent",
        )
        .answer(200, "recorded"),
    )
    .add(
        Method::GET,
        "/agent/offline-secrets",
        offline_secrets,
        Doc::new(
            "The TOTP secrets in force on this computer, with the admin group and maximum \
             session length, for offline login",
            "the computer's agent",
        )
        // No admin group known for the computer (422), as at check-out.
        .problems(&[422])
        .answer(200, "the secrets (never cached)"),
    )
    .add(
        Method::POST,
        "/agent/offline-logins",
        offline_login,
        Doc::new(
            "Upload an offline login the agent granted (idempotent by login_id); the server \
             then rotates the account's password again",
            "the computer's agent",
        )
        .answer(200, "recorded"),
    )
    .add(
        Method::POST,
        "/agent/offline-lockouts",
        offline_lockout,
        Doc::new(
            "Upload a lockout of offline login the agent imposed after too many wrong TOTP \
             codes for an account (idempotent by lockout_id; audited)",
            "the computer's agent",
        )
        .answer(200, "recorded"),
    )
    .add(
        Method::POST,
        "/agent/inventory",
        inventory,
        Doc::new(
            "Report the members of the admin group on the machine (drift detection)",
            "the computer's agent",
        )
        .answer(200, "taken"),
    );
}

async fn enroll(
    services: web::Data<Services>,
    req: actix_web::HttpRequest,
    JsonBody(body): JsonBody<Enrollment>,
) -> Result<Json<Enrolled>, ApiError> {
    // Enrollment tokens are guessed like API tokens: the same limits, before the look-up.
    let attempt = super::attempt(&services, &req, Some(body.token.trim()));
    services
        .limiter
        .check(&attempt, std::time::Instant::now())
        .map_err(ApiError::too_many_attempts)?;
    let token = body.token.clone();
    let redeemed = super::blocking(&services, "token store", move |s| {
        s.tokens.redeem_enrollment(&token, chrono::Utc::now())
    })
    .await?;
    let (enrollment_id, tenant) = match redeemed {
        Ok(found) => found,
        Err(refused) => {
            // Used and expired tokens had the right secret: only a wrong one is a guess.
            if refused == EnrollmentRefused::Unknown {
                services.limiter.failed(&attempt, std::time::Instant::now());
            }
            let status = match refused {
                EnrollmentRefused::Unknown => StatusCode::UNAUTHORIZED,
                EnrollmentRefused::Used | EnrollmentRefused::Expired => StatusCode::GONE,
            };
            return Err(
                ApiError::new(status, "enrollment-refused", refused.to_string())
                    .with_field("token"),
            );
        }
    };
    let computer_id = ComputerId(Uuid::now_v7());
    let issued = super::blocking(&services, "token store", move |s| {
        s.tokens
            .issue(Role::Agent { computer_id }, &format!("agent:{computer_id}"))
    })
    .await?;
    let agent_key = issued
        .get(3..35)
        .and_then(|id| Uuid::parse_str(id).ok())
        .map(AgentKeyId)
        .ok_or_else(|| super::internal("token store", &"malformed agent token"))?;
    let enrolling = Principal {
        token_id: agent_key.0,
        role: Role::Agent { computer_id },
        name: format!("agent:{computer_id}"),
    };
    let command = ComputerCommand::Enroll {
        computer_id,
        tenant_id: tenant,
        hostname: body.hostname,
        os: body.os,
        agent_key_id: agent_key,
        admin_group: body.admin_group,
        by: actor(&enrolling),
        at: chrono::Utc::now(),
    };
    if let Err(e) = services
        .execute::<Computer>(&enrolling, computer_id.stream_name(), command)
        .await
    {
        // Give the token back and drop the credential: nothing was enrolled.
        let _ = super::blocking(&services, "token store", move |s| {
            let _ = s.tokens.revoke(agent_key.0);
            s.tokens.unredeem_enrollment(enrollment_id)
        })
        .await;
        return Err(e);
    }
    tracing::info!(%computer_id, %tenant, "agent enrolled");
    let enrolled = Enrolled {
        computer_id,
        tenant_id: tenant,
        agent_token: issued,
        note: "the agent's credential, shown once; keep it in a 0600 file".into(),
    };
    Ok(Json::new(StatusCode::CREATED, &enrolled).no_store())
}

fn own_computer(principal: &Principal) -> Result<ComputerId, ApiError> {
    principal
        .agent_computer_id()
        .ok_or_else(|| forbidden("only an enrolled agent uses the agent endpoints"))
}

async fn commands(
    services: web::Data<Services>,
    req: actix_web::HttpRequest,
    Caller(principal): Caller,
) -> Result<Json<AgentCommands>, ApiError> {
    let computer = own_computer(&principal)?;
    let params = Params::parse(&req, COMMANDS_QUERY)?;
    let wait = Duration::from_secs(params.number("wait"));
    let stream = computer.stream_name();
    // Woken by events on this computer's stream only (not registered when not waiting).
    // Listen before the first look, so an event that lands in between still wakes the poll.
    let waiter = (!wait.is_zero()).then(|| services.wakeups.wait_on(&stream));
    let woken = waiter.as_ref().map(listen);
    let pending = Box::pin(pending_requests(&services, &stream)).await?;
    let (Some(waiter), Some(woken), true) = (waiter, woken, pending.is_empty()) else {
        let commands = Box::pin(with_passwords(&services, computer, pending)).await?;
        return Ok(Json::ok(&AgentCommands { commands }).no_store());
    };
    // Nothing yet: the answer starts now (200, JSON) and its body follows when the computer's
    // stream changes or the wait is up. So while it waits, an idle poll holds its connection
    // and this future, not the request and its headers (about 7 KiB per agent). A failure
    // after the start, or an agent credential revoked during the wait, cuts the body off
    // instead: the agent sees a broken answer, asks again, and is then told why.
    let deadline = tokio::time::Instant::now() + wait;
    let token = principal.token_id;
    let body = futures::stream::once(async move {
        let pending = wait_for_requests(&services, &stream, &waiter, woken, deadline).await?;
        drop(waiter);
        if !pending.is_empty() && !token_live(&services, token).await {
            return Err(LongPollCut(
                "the agent's credential was revoked during the wait",
            ));
        }
        let commands = Box::pin(with_passwords(&services, computer, pending))
            .await
            .map_err(|_| LongPollCut("the requests could not be read"))?;
        Ok(web::Bytes::from(
            serde_json::to_vec(&AgentCommands { commands })
                .map_err(|_| LongPollCut("the answer could not be written"))?,
        ))
    });
    let response = HttpResponse::Ok()
        .content_type("application/json")
        .streaming(body);
    Ok(Json::made(super::no_store(response)))
}

/// Why a long poll's answer, already started, was cut off (logged by the server, never sent).
#[derive(Debug, thiserror::Error)]
#[error("long poll cut off: {0}")]
struct LongPollCut(&'static str);

/// A listener for the next event on the waiter's stream, already registered.
fn listen(waiter: &latchkey_app::wakeups::Waiter) -> Pin<Box<tokio::sync::futures::OwnedNotified>> {
    let mut woken = Box::pin(waiter.notified_owned());
    woken.as_mut().enable();
    woken
}

/// Waits, woken by `woken` and then by new listeners, until the computer has requests the
/// agent has not reported on, or until `deadline` (then: none).
async fn wait_for_requests(
    services: &web::Data<Services>,
    stream: &str,
    waiter: &latchkey_app::wakeups::Waiter,
    mut woken: Pin<Box<tokio::sync::futures::OwnedNotified>>,
    deadline: tokio::time::Instant,
) -> Result<Vec<Pending>, LongPollCut> {
    loop {
        if tokio::time::timeout_at(deadline, woken).await.is_err() {
            return Ok(Vec::new()); // nothing came
        }
        woken = listen(waiter);
        let pending = Box::pin(pending_requests(services, stream))
            .await
            .map_err(|_| LongPollCut("the requests could not be read"))?;
        if !pending.is_empty() {
            return Ok(pending);
        }
    }
}

/// A request the agent has not reported on yet: id, attempt and operation.
type Pending = (RequestId, u32, Operation);

/// The computer's requests the agent has not reported on, from the computer's stream, not
/// the read models: a request the agent has just reported (to any server) is never handed
/// out again, and a new one is seen as soon as it is written. Failed ones wait for a retry.
async fn pending_requests(
    services: &web::Data<Services>,
    stream: &str,
) -> Result<Vec<Pending>, ApiError> {
    let state: Computer = services.load(stream.to_owned()).await?;
    Ok(state
        .open_requests
        .values()
        .filter_map(|request| match request.status {
            RequestStatus::Pending { attempt } => {
                Some((request.request_id, attempt, request.operation.clone()))
            }
            RequestStatus::Failed { .. } => None,
        })
        .collect())
}

/// The requests as the agent receives them: a rotation carries its password.
async fn with_passwords(
    services: &web::Data<Services>,
    computer: ComputerId,
    pending: Vec<Pending>,
) -> Result<Vec<AgentCommand>, ApiError> {
    let mut out = Vec::with_capacity(pending.len());
    for (request_id, attempt, operation) in pending {
        let password = match &operation {
            Operation::RotatePassword { account, version } => Some(
                password_for(services, computer, account, *version)
                    .await?
                    .expose()
                    .to_owned(),
            ),
            _ => None,
        };
        out.push(AgentCommand {
            request_id,
            attempt,
            operation,
            password,
        });
    }
    Ok(out)
}

/// How often the event feed sends a keep-alive comment and checks the agent's credential
/// again.
pub const FEED_HEARTBEAT: Duration = Duration::from_secs(25);

/// The event feed: one long-lived `text/event-stream` response per agent. It sends a
/// `commands` event (the same body as the long poll) at once and whenever the requests not
/// yet reported on change, a keep-alive comment every [`FEED_HEARTBEAT`], and an `end` event
/// before it closes because the agent's credential no longer holds. The response's body is
/// the feed itself ([`Feed`]), so the request is freed once the answer has started, and an
/// idle agent costs its connection and this small state machine: no task or channel of its
/// own (they took about 2.3 KiB per agent). When the agent goes away, the server drops the
/// body, and the feed with it.
async fn feed(
    services: web::Data<Services>,
    req: actix_web::HttpRequest,
    Caller(principal): Caller,
) -> Result<Events<FeedData>, ApiError> {
    let computer = own_computer(&principal)?;
    Params::parse(&req, &[])?;
    let feed = Feed::new(services, computer, principal.token_id);
    let body = futures::stream::unfold(feed, |mut feed| async move {
        let chunk = feed.next().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), feed))
    });
    let response = HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body);
    Ok(Events::new(super::no_store(response)))
}

fn sse(event: &str, data: &FeedData) -> web::Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    web::Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn feed_end(reason: &'static str) -> web::Bytes {
    sse(
        "end",
        &FeedData::End(FeedEnded {
            reason: reason.into(),
        }),
    )
}

/// One agent's event feed, as the chunks of its response.
struct Feed {
    services: web::Data<Services>,
    computer: ComputerId,
    token: latchkey_server_stores::tokens::TokenId,
    waiter: latchkey_app::wakeups::Waiter,
    /// Listening for events on the computer's stream since the requests were last looked at;
    /// `None`: look at them (again) first. Kept across keep-alives, so a wake-up is never lost
    /// while one is sent.
    woken: Option<Pin<Box<tokio::sync::futures::OwnedNotified>>>,
    /// What the last `commands` event held.
    sent: Option<Vec<(RequestId, u32)>>,
    /// The `end` event has been sent.
    ended: bool,
}

impl Feed {
    fn new(
        services: web::Data<Services>,
        computer: ComputerId,
        token: latchkey_server_stores::tokens::TokenId,
    ) -> Feed {
        let waiter = services.wakeups.wait_on(&computer.stream_name());
        Feed {
            services,
            computer,
            token,
            waiter,
            woken: None,
            sent: None,
            ended: false,
        }
    }

    /// The next chunk to send: a `commands` event, a keep-alive, or the `end` event; `None`
    /// after the end.
    async fn next(&mut self) -> Option<web::Bytes> {
        loop {
            if self.ended {
                return None;
            }
            if self.woken.is_none() {
                // Listen before looking, so an event that lands in between still wakes us.
                self.woken = Some(listen(&self.waiter));
                let changed = Box::pin(changed_commands(
                    &self.services,
                    self.computer,
                    self.token,
                    &mut self.sent,
                ))
                .await;
                match changed {
                    Ok(Some(next)) => return Some(next),
                    Ok(None) => {}
                    Err(FeedEnd::Credential) => {
                        self.ended = true;
                        return Some(feed_end("the agent's credential was revoked"));
                    }
                    Err(FeedEnd::Failed) => {
                        self.ended = true;
                        return Some(feed_end("server error; reconnect"));
                    }
                }
            }
            let woken = self.woken.as_mut()?;
            tokio::select! {
                () = woken.as_mut() => self.woken = None,
                () = tokio::time::sleep(FEED_HEARTBEAT) => {
                    if !token_live(&self.services, self.token).await {
                        self.ended = true;
                        return Some(feed_end("the agent's credential was revoked"));
                    }
                    return Some(web::Bytes::from_static(b": keep-alive\n\n"));
                }
            }
        }
    }
}

enum FeedEnd {
    Credential,
    Failed,
}

async fn token_live(
    services: &web::Data<Services>,
    token: latchkey_server_stores::tokens::TokenId,
) -> bool {
    super::blocking(services, "token store", move |s| s.tokens.is_live(token))
        .await
        .unwrap_or(false)
}

/// The `commands` event to send if the requests not yet reported on differ from what was
/// `sent` last (always on the first call).
async fn changed_commands(
    services: &web::Data<Services>,
    computer: ComputerId,
    token: latchkey_server_stores::tokens::TokenId,
    sent: &mut Option<Vec<(RequestId, u32)>>,
) -> Result<Option<web::Bytes>, FeedEnd> {
    let pending = pending_requests(services, &computer.stream_name())
        .await
        .map_err(|_| FeedEnd::Failed)?;
    let now: Vec<(RequestId, u32)> = pending.iter().map(|(id, a, _)| (*id, *a)).collect();
    if sent.as_ref() == Some(&now) {
        return Ok(None);
    }
    // A commands event may carry passwords: only while the credential holds.
    if !token_live(services, token).await {
        return Err(FeedEnd::Credential);
    }
    let commands = with_passwords(services, computer, pending)
        .await
        .map_err(|_| FeedEnd::Failed)?;
    *sent = Some(now);
    Ok(Some(sse(
        "commands",
        &FeedData::Commands(AgentCommands { commands }),
    )))
}

/// The password of `version` of `account` on `computer`: generated to the effective policy on
/// first use, then always the same.
pub async fn password_for(
    services: &web::Data<Services>,
    computer: ComputerId,
    account: &AccountName,
    version: u32,
) -> Result<Secret, ApiError> {
    let reference = SecretRef::password(computer, account, version);
    let known = {
        let reference = reference.clone();
        super::blocking(services, "secret store", move |s| s.secrets.get(&reference)).await?
    };
    if let Some(known) = known {
        return Ok(known);
    }
    let (state, tenant) = computer_and_tenant(services, computer).await?;
    let policy = state.effective_policy(&tenant.policy).password();
    super::blocking(services, "secret store", move |s| {
        s.secrets
            .put_if_absent(&reference, &secrets::generate_password(&policy))
    })
    .await
}

async fn report(
    services: web::Data<Services>,
    Caller(principal): Caller,
    JsonBody(report): JsonBody<Report>,
) -> Result<Json<Recorded>, ApiError> {
    let computer = own_computer(&principal)?;
    let at = chrono::Utc::now();
    let request_id = RequestId(report.request_id);
    let needs = |field: &str, outcome: &str| {
        ApiError::bad_request(
            field,
            format!("{field} is required when outcome is {outcome}"),
        )
    };
    let command = match (report.outcome, report.verified, report.reason) {
        (ReportOutcome::Succeeded, Some(verified), None) => ComputerCommand::ReportSucceeded {
            request_id,
            verified,
            at,
        },
        (ReportOutcome::Failed, None, Some(reason)) => ComputerCommand::ReportFailed {
            request_id,
            reason,
            at,
        },
        (ReportOutcome::Succeeded, None, _) => return Err(needs("verified", "succeeded")),
        (ReportOutcome::Failed, _, None) => return Err(needs("reason", "failed")),
        (ReportOutcome::Succeeded, _, Some(_)) => {
            return Err(ApiError::bad_request(
                "reason",
                "reason is only for outcome failed",
            ))
        }
        (ReportOutcome::Failed, Some(_), _) => {
            return Err(ApiError::bad_request(
                "verified",
                "verified is only for outcome succeeded",
            ))
        }
    };
    let executed = services
        .execute::<Computer>(&principal, computer.stream_name(), command)
        .await?;
    Ok(Json::ok(&Recorded {
        request_id,
        recorded: executed.events.len(),
    }))
}

/// The computer and its tenant (for the computer's effective policy), both current.
async fn computer_and_tenant(
    services: &web::Data<Services>,
    computer: ComputerId,
) -> Result<(Computer, TenantState), ApiError> {
    let state: Computer = services.load(computer.stream_name()).await?;
    let profile = state
        .profile()
        .ok_or_else(|| ApiError::not_found("the computer"))?;
    let tenant: Tenant = services.load(profile.tenant_id.stream_name()).await?;
    let tenant = tenant
        .state()
        .cloned()
        .ok_or_else(|| ApiError::not_found("the tenant"))?;
    Ok((state, tenant))
}

async fn offline_secrets(
    services: web::Data<Services>,
    Caller(principal): Caller,
) -> Result<Json<AgentOfflineSecrets>, ApiError> {
    let computer = own_computer(&principal)?;
    let (state, tenant) = computer_and_tenant(&services, computer).await?;
    let policy = state.effective_policy(&tenant.policy);
    let admin_group = state.admin_group(&tenant.policy)?;
    let mut secrets = Vec::new();
    for account in state.accounts.values() {
        let Some(generation) = account
            .offline_secret
            .filter(|_| account.status.is_usable())
        else {
            continue;
        };
        let technician_id = account.owner.technician();
        let username = match technician_id {
            Some(id) => {
                let technician: latchkey_domain::technician::Technician =
                    services.load(id.stream_name()).await?;
                technician.state().map(|t| t.username.to_string())
            }
            None => None,
        };
        let secret =
            super::computers::totp_secret(&services, computer, &account.name, generation).await?;
        secrets.push(AgentOfflineSecret {
            account: account.name.clone(),
            technician_id,
            username,
            generation,
            secret: secret.expose().to_owned(),
        });
    }
    Ok(Json::ok(&AgentOfflineSecrets {
        admin_group,
        max_session_minutes: policy.max_session().as_minutes(),
        secrets,
    })
    .no_store())
}

async fn offline_login(
    services: web::Data<Services>,
    Caller(principal): Caller,
    JsonBody(body): JsonBody<OfflineLogin>,
) -> Result<Json<OfflineLoginRecorded>, ApiError> {
    let computer = own_computer(&principal)?;
    if body.until < body.used_at {
        return Err(ApiError::bad_request(
            "until",
            "until must not be before used_at",
        ));
    }
    let command = ComputerCommand::RecordOfflineLogin {
        login_id: body.login_id,
        account: body.account,
        technician_id: body.technician_id.map(latchkey_domain::ids::TechnicianId),
        claimed_by: body.claimed_by,
        generation: body.generation,
        admin_group: body.admin_group,
        used_at: body.used_at,
        until: body.until,
        at: chrono::Utc::now(),
    };
    let executed = services
        .execute::<Computer>(&principal, computer.stream_name(), command)
        .await?;
    Ok(Json::ok(&OfflineLoginRecorded {
        login_id: body.login_id,
        recorded: executed.events.len(),
    }))
}

async fn offline_lockout(
    services: web::Data<Services>,
    Caller(principal): Caller,
    JsonBody(body): JsonBody<OfflineLockout>,
) -> Result<Json<OfflineLockoutRecorded>, ApiError> {
    let computer = own_computer(&principal)?;
    if !(1..=1000).contains(&body.failures) {
        return Err(ApiError::bad_request(
            "failures",
            "failures must be from 1 to 1000",
        ));
    }
    if body.locked_until <= body.locked_at {
        return Err(ApiError::bad_request(
            "locked_until",
            "locked_until must be after locked_at",
        ));
    }
    let command = ComputerCommand::RecordOfflineLockout {
        lockout_id: body.lockout_id,
        account: body.account,
        technician_id: body.technician_id.map(latchkey_domain::ids::TechnicianId),
        failures: body.failures,
        locked_at: body.locked_at,
        locked_until: body.locked_until,
        at: chrono::Utc::now(),
    };
    let executed = services
        .execute::<Computer>(&principal, computer.stream_name(), command)
        .await?;
    Ok(Json::ok(&OfflineLockoutRecorded {
        lockout_id: body.lockout_id,
        recorded: executed.events.len(),
    }))
}

async fn inventory(
    services: web::Data<Services>,
    Caller(principal): Caller,
    JsonBody(body): JsonBody<Inventory>,
) -> Result<Json<InventoryTaken>, ApiError> {
    let computer = own_computer(&principal)?;
    let bad = body.members.len() > 1000
        || body
            .members
            .iter()
            .any(|m| m.is_empty() || m.chars().count() > 64 || m.chars().any(char::is_control));
    if bad {
        return Err(ApiError::bad_request(
            "members",
            "members must be at most 1000 names of 1 to 64 printable characters",
        ));
    }
    let command = ComputerCommand::ReportInventory {
        group: body.group,
        members: body.members,
        at: chrono::Utc::now(),
    };
    let executed = services
        .execute::<Computer>(&principal, computer.stream_name(), command)
        .await?;
    Ok(Json::ok(&InventoryTaken {
        changed: !executed.events.is_empty(),
    }))
}
