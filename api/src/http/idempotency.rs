//! `Idempotency-Key`: a client that retries a POST with the same key gets the first answer
//! again instead of doing the thing twice (a second check-out, a second technician). Keys are
//! per API token. The first request with a key claims it before it runs, so two concurrent
//! requests with one key cannot both run: the second gets 409 until the first has finished.
//! Failed requests release their key (a retry may then succeed). Responses that carry a secret
//! (a revealed password, a new token) are never stored: those endpoints do not take the key.
//!
//! Exactly once across crashes: a claim whose request is no longer running (its process died:
//! `kill -9` between the append and the stored answer, or its client went away mid-request)
//! is taken over by the next retry, which runs the request again as the same claim
//! ([`Scope::resumed`]): if the log already holds an event of the claim, nothing is decided or
//! appended again and the answer is built from the state as it is now; if not, the request
//! runs as if for the first time. The claims and answers are kept by
//! [`latchkey_server_stores::idempotency`]. A key re-used with a different body is refused
//! (422), never answered with the first answer.

use super::answer::Json;
use super::Services;
use crate::problem::{ApiError, BodyFingerprint};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use latchkey_server_stores::idempotency::{Claim, Scope, StoredReply};
use latchkey_server_stores::tokens::Principal;
use std::future::Future;
use std::marker::PhantomData;

pub const HEADER: &str = "Idempotency-Key";

/// A successful answer as the handler made it: status, JSON body and optional `Location`.
pub struct Reply {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub location: Option<String>,
}

/// A [`Reply`] whose body is a `T`: what the handler's answer is documented as.
pub struct Typed<T> {
    reply: Reply,
    body: PhantomData<fn() -> T>,
}

impl Reply {
    pub fn ok<T: serde::Serialize>(body: &T) -> Result<Typed<T>, ApiError> {
        Self::with(StatusCode::OK, body, None)
    }

    pub fn created<T: serde::Serialize>(body: &T, location: String) -> Result<Typed<T>, ApiError> {
        Self::with(StatusCode::CREATED, body, Some(location))
    }

    pub fn with<T: serde::Serialize>(
        status: StatusCode,
        body: &T,
        location: Option<String>,
    ) -> Result<Typed<T>, ApiError> {
        let body = serde_json::to_value(body).map_err(|e| super::internal("encoding", &e))?;
        Ok(Typed {
            reply: Self {
                status,
                body,
                location,
            },
            body: PhantomData,
        })
    }

    /// A reply stored by an earlier run of the request.
    fn stored(stored: StoredReply) -> Self {
        Self {
            status: StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
            body: stored.body,
            location: stored.location,
        }
    }

    fn into_response(self, replayed: bool) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(location) = self.location {
            response.insert_header((header::LOCATION, location));
        }
        if replayed {
            response.insert_header(("Idempotent-Replayed", "true"));
        }
        response.json(self.body)
    }
}

/// What a failure of this store is logged as.
const STORE: &str = "idempotency store";

fn key_of(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get(HEADER) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(
            HEADER,
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
        )
    };
    let key = value.to_str().map_err(|_| bad())?;
    if key.is_empty() || key.len() > 255 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad());
    }
    Ok(Some(key.to_owned()))
}

/// Runs `handler` at most once per (token, `Idempotency-Key`), replaying its reply to retries.
/// The handler runs under a [`Scope`]: it takes the id of what it creates from it and passes
/// it to [`Services::execute_in`].
pub async fn idempotent<T, Fut>(
    services: &web::Data<Services>,
    req: &HttpRequest,
    principal: &Principal,
    handler: impl FnOnce(Scope) -> Fut,
) -> Result<Json<T>, ApiError>
where
    Fut: Future<Output = Result<Typed<T>, ApiError>>,
{
    let Some(key) = key_of(req)? else {
        let reply = handler(Scope::fresh()).await?.reply;
        return Ok(Json::made(reply.into_response(false)));
    };
    let token = principal.token_id.to_string();
    let request = format!("{} {}", req.method(), req.path());
    let fingerprint = req
        .extensions()
        .get::<BodyFingerprint>()
        .map_or_else(String::new, |f| f.0.clone());
    let claim = {
        let (token, key) = (token.clone(), key.clone());
        super::blocking(services, STORE, move |s| {
            s.idempotency.claim(&token, &key, &request, &fingerprint)
        })
        .await?
    };
    let scope = match claim {
        // Stored from a `Typed<T>` of this same request (method and path).
        Claim::Done(reply) => return Ok(Json::made(Reply::stored(reply).into_response(true))),
        Claim::Running => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "idempotency-in-progress",
                "a request with this Idempotency-Key is still running; retry shortly",
            )
            .with_field(HEADER))
        }
        Claim::Mismatch => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency-key-reused",
                "this Idempotency-Key was used for a different request (another method, path \
                 or body)",
            )
            .with_field(HEADER))
        }
        Claim::Claimed(scope) => scope,
    };
    let _running = services.idempotency.run(&token, &key);
    match handler(scope).await {
        Ok(Typed { reply, .. }) => {
            latchkey_app::fault::maybe_crash(latchkey_app::fault::Point::BeforeAnswerStored);
            let reply = StoredReply {
                status: reply.status.as_u16(),
                body: reply.body,
                location: reply.location,
            };
            let stored = super::blocking(services, STORE, move |s| {
                s.idempotency.finish(&token, &key, &reply).map(|()| reply)
            })
            .await?;
            Ok(Json::made(Reply::stored(stored).into_response(false)))
        }
        Err(e) => {
            let _ = super::blocking(services, STORE, move |s| {
                s.idempotency.release(&token, &key)
            })
            .await;
            Err(e)
        }
    }
}
