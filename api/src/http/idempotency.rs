//! `Idempotency-Key`: a client that retries a POST with the same key gets the first answer
//! again instead of doing the thing twice (a second check-out, a second technician). Keys are
//! per API token. The first request with a key claims it before it runs, so two concurrent
//! requests with one key cannot both run: the second gets 409 until the first has finished.
//! Failed requests release their key (a retry may then succeed). Responses that carry a secret
//! (a revealed password, a new token) are never stored: those endpoints do not take the key.

use super::Services;
use crate::auth::Principal;
use crate::problem::ApiError;
use crate::storage::{Durable, Place};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use latchkey_store::sql::{params, OptionalExtension, SqlError};
use std::future::Future;

pub const HEADER: &str = "Idempotency-Key";

/// A successful answer as the handler made it: status, JSON body and optional `Location`.
pub struct Reply {
    pub status: StatusCode,
    pub body: serde_json::Value,
    pub location: Option<String>,
}

impl Reply {
    pub fn ok(body: impl serde::Serialize) -> Result<Self, ApiError> {
        Self::with(StatusCode::OK, body, None)
    }

    pub fn created(body: impl serde::Serialize, location: String) -> Result<Self, ApiError> {
        Self::with(StatusCode::CREATED, body, Some(location))
    }

    pub fn with(
        status: StatusCode,
        body: impl serde::Serialize,
        location: Option<String>,
    ) -> Result<Self, ApiError> {
        let body = serde_json::to_value(body).map_err(|e| super::internal("encoding", &e))?;
        Ok(Self {
            status,
            body,
            location,
        })
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

pub struct IdempotencyStore {
    db: Durable,
}

/// request, status, body, location.
type StoredRow = (String, Option<u16>, Option<String>, Option<String>);

enum Claim {
    /// The key is new and now ours.
    Claimed,
    /// Answered before: the stored reply.
    Done(Reply),
    /// Another request with this key is running.
    Running,
    /// The key was used for another method or path.
    Mismatch,
}

impl IdempotencyStore {
    pub fn open(place: impl Into<Place>) -> Result<Self, SqlError> {
        let db = Durable::open(
            place.into(),
            "CREATE TABLE IF NOT EXISTS idempotency (
                 token_id TEXT NOT NULL,
                 key TEXT NOT NULL,
                 request TEXT NOT NULL,
                 status INTEGER,
                 body TEXT,
                 location TEXT,
                 created_at TEXT NOT NULL,
                 PRIMARY KEY (token_id, key)
             ) WITHOUT ROWID;",
        )?;
        Ok(Self { db })
    }

    fn claim(&self, token: &str, key: &str, request: &str) -> Result<Claim, SqlError> {
        let conn = self.db.lock();
        let inserted = conn.execute(
            "INSERT INTO idempotency (token_id, key, request, created_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
            params![token, key, request, chrono::Utc::now().to_rfc3339()],
        )?;
        if inserted == 1 {
            return Ok(Claim::Claimed);
        }
        let row: Option<StoredRow> = conn
            .query_row(
                "SELECT request, status, body, location FROM idempotency
                 WHERE token_id = ?1 AND key = ?2",
                params![token, key],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()?;
        Ok(match row {
            None => Claim::Running,
            Some((stored, _, _, _)) if stored != request => Claim::Mismatch,
            Some((_, Some(status), Some(body), location)) => Claim::Done(Reply {
                status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                location,
            }),
            Some(_) => Claim::Running,
        })
    }

    fn finish(&self, token: &str, key: &str, reply: &Reply) -> Result<(), SqlError> {
        self.db.lock().execute(
            "UPDATE idempotency SET status = ?3, body = ?4, location = ?5
             WHERE token_id = ?1 AND key = ?2",
            params![
                token,
                key,
                reply.status.as_u16(),
                reply.body.to_string(),
                reply.location
            ],
        )?;
        Ok(())
    }

    fn release(&self, token: &str, key: &str) -> Result<(), SqlError> {
        self.db.lock().execute(
            "DELETE FROM idempotency WHERE token_id = ?1 AND key = ?2 AND status IS NULL",
            params![token, key],
        )?;
        Ok(())
    }
}

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
pub async fn idempotent<Fut>(
    services: &web::Data<Services>,
    req: &HttpRequest,
    principal: &Principal,
    handler: impl FnOnce() -> Fut,
) -> Result<HttpResponse, ApiError>
where
    Fut: Future<Output = Result<Reply, ApiError>>,
{
    let Some(key) = key_of(req)? else {
        return Ok(handler().await?.into_response(false));
    };
    let token = principal.token_id.to_string();
    let request = format!("{} {}", req.method(), req.path());
    let claim = {
        let (token, key) = (token.clone(), key.clone());
        super::blocking(services, STORE, move |s| {
            s.idempotency.claim(&token, &key, &request)
        })
        .await?
    };
    match claim {
        Claim::Done(reply) => return Ok(reply.into_response(true)),
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
                "this Idempotency-Key was used for a different request",
            )
            .with_field(HEADER))
        }
        Claim::Claimed => {}
    }
    match handler().await {
        Ok(reply) => {
            let stored = super::blocking(services, STORE, move |s| {
                s.idempotency.finish(&token, &key, &reply).map(|()| reply)
            })
            .await?;
            Ok(stored.into_response(false))
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
