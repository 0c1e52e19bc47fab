//! `Idempotency-Key`: a client that retries a POST with the same key gets the first answer
//! again instead of doing the thing twice (a second check-out, a second technician). Keys are
//! per API token. The first request with a key claims it before it runs, so two concurrent
//! requests with one key cannot both run: the second gets 409 until the first has finished.
//! Failed requests release their key (a retry may then succeed). Responses that carry a secret
//! (a revealed password, a new token) are never stored: those endpoints do not take the key.
//!
//! Exactly once across crashes: a claim has an id, which is the correlation id of every event
//! the request writes and the id of the entity it creates. A claim whose request is no longer
//! running (its process died: `kill -9` between the append and the stored answer, or its
//! client went away mid-request) is taken over by the next retry, which runs the request
//! again as the same claim ([`Scope::resumed`]): if the log already holds an event of the
//! claim, nothing is decided or appended again and the answer is built from the state as it
//! is now; if not, the request runs as if for the first time. A claim's request is no longer
//! running when it was made by an earlier process on this server's own files, by this
//! process but nothing runs it any more, or (several servers sharing PostgreSQL) by another
//! server more than [`LEASE`] ago. A key re-used with a different body is refused (422),
//! never answered with the first answer.

use super::answer::Json;
use super::Services;
use crate::auth::Principal;
use crate::problem::{ApiError, BodyFingerprint};
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use latchkey_sql::{params, Dialect, OptionalExtension, Sql, SqlError, SqlExt};
use latchkey_sql::{Durable, Place};
use std::collections::HashSet;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

pub const HEADER: &str = "Idempotency-Key";

/// How long a claim made by another server may be running before a retry takes it over. A
/// request that takes longer is given up for dead: longer than any HTTP client waits.
pub const LEASE: chrono::Duration = chrono::Duration::seconds(120);

/// The claim a request runs under. Without a key it is a fresh one of its own.
#[derive(Debug, Clone, Copy)]
pub struct Scope {
    /// The correlation id of the events the request writes, and the id of the entity it
    /// creates.
    pub claim_id: Uuid,
    /// Whether an earlier run of this claim may have written already.
    pub resumed: bool,
}

impl Scope {
    pub fn fresh() -> Self {
        Self {
            claim_id: Uuid::now_v7(),
            resumed: false,
        }
    }

    /// The id of the one entity the request creates: the same on every run of the claim.
    pub fn new_id(&self) -> Uuid {
        self.claim_id
    }
}

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
    /// Whether the store is this server's own file: then a claim of an earlier process can
    /// no longer be running.
    own_file: bool,
    /// This process, as claims name their owner.
    instance: String,
    /// The (token, key) claims this process is running now.
    running: Arc<Mutex<HashSet<(String, String)>>>,
}

/// request, fingerprint, status, body, location, claim id, owner, created at.
type StoredRow = (
    String,
    Option<String>,
    Option<u16>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    String,
);

enum Claim {
    /// The key is now ours, new or taken over from a run that is no longer running.
    Claimed(Scope),
    /// Answered before: the stored reply.
    Done(Reply),
    /// Another request with this key is running.
    Running,
    /// The key was used for another method or path.
    Mismatch,
}

/// Columns added since the first version of the table: (name, type).
const ADDED_COLUMNS: [(&str, &str); 3] = [
    ("fingerprint", "TEXT"),
    ("claim_id", "TEXT"),
    ("owner", "TEXT"),
];

impl IdempotencyStore {
    pub fn open(place: impl Into<Place>) -> Result<Self, SqlError> {
        let place = place.into();
        let own_file = !place.is_shared();
        let db = Durable::open(
            place,
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
        {
            let conn = db.lock();
            for (column, kind) in ADDED_COLUMNS {
                add_column(&*conn, column, kind)?;
            }
        }
        Ok(Self {
            db,
            own_file,
            instance: Uuid::now_v7().to_string(),
            running: Arc::default(),
        })
    }

    fn claim(
        &self,
        token: &str,
        key: &str,
        request: &str,
        fingerprint: &str,
    ) -> Result<Claim, SqlError> {
        let now = chrono::Utc::now();
        self.db.transaction(
            |e| e,
            |conn| {
                let fresh = Uuid::now_v7();
                let inserted = conn.execute(
                    "INSERT INTO idempotency
                         (token_id, key, request, fingerprint, claim_id, owner, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
                    params![
                        token,
                        key,
                        request,
                        fingerprint,
                        fresh.to_string(),
                        self.instance,
                        now.to_rfc3339()
                    ],
                )?;
                if inserted == 1 {
                    return Ok(Claim::Claimed(Scope {
                        claim_id: fresh,
                        resumed: false,
                    }));
                }
                let row: Option<StoredRow> = conn
                    .query_row(
                        "SELECT request, fingerprint, status, body, location, claim_id, owner,
                                created_at
                         FROM idempotency WHERE token_id = ?1 AND key = ?2",
                        params![token, key],
                        |row| {
                            Ok((
                                row.get(0)?,
                                row.get(1)?,
                                row.get(2)?,
                                row.get(3)?,
                                row.get(4)?,
                                row.get(5)?,
                                row.get(6)?,
                                row.get(7)?,
                            ))
                        },
                    )
                    .optional()?;
                let Some((stored, stored_fingerprint, status, body, location, claim, owner, at)) =
                    row
                else {
                    return Ok(Claim::Running);
                };
                let other_body = stored_fingerprint.is_some_and(|f| f != fingerprint);
                if stored != request || other_body {
                    return Ok(Claim::Mismatch);
                }
                if let (Some(status), Some(body)) = (status, body) {
                    return Ok(Claim::Done(Reply {
                        status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                        body: serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
                        location,
                    }));
                }
                let mine = owner.as_deref() == Some(self.instance.as_str());
                let still_running = if mine {
                    self.running
                        .lock()
                        .expect("the running set is never poisoned")
                        .contains(&(token.to_owned(), key.to_owned()))
                } else if self.own_file {
                    false
                } else {
                    chrono::DateTime::parse_from_rfc3339(&at)
                        .map(|at| now - at.with_timezone(&chrono::Utc) < LEASE)
                        .unwrap_or(false)
                };
                if still_running {
                    return Ok(Claim::Running);
                }
                // Taken over. A claim from before claims had ids cannot be looked for in
                // the log: it runs again as a new claim.
                let (claim_id, resumed) = match claim.as_deref().map(Uuid::parse_str) {
                    Some(Ok(id)) => (id, true),
                    _ => (fresh, false),
                };
                conn.execute(
                    "UPDATE idempotency SET claim_id = ?3, owner = ?4, created_at = ?5,
                         fingerprint = ?6
                     WHERE token_id = ?1 AND key = ?2 AND status IS NULL",
                    params![
                        token,
                        key,
                        claim_id.to_string(),
                        self.instance,
                        now.to_rfc3339(),
                        fingerprint
                    ],
                )?;
                Ok(Claim::Claimed(Scope { claim_id, resumed }))
            },
        )
    }

    /// Marks (token, key) as running in this process until the guard is dropped (the
    /// request finished, failed, or its future was dropped when the client went away).
    fn run(&self, token: &str, key: &str) -> RunningGuard {
        let entry = (token.to_owned(), key.to_owned());
        self.running
            .lock()
            .expect("the running set is never poisoned")
            .insert(entry.clone());
        RunningGuard {
            running: self.running.clone(),
            entry,
        }
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

struct RunningGuard {
    running: Arc<Mutex<HashSet<(String, String)>>>,
    entry: (String, String),
}

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if let Ok(mut running) = self.running.lock() {
            running.remove(&self.entry);
        }
    }
}

/// Adds `column` to the table unless it is there (tables made by an earlier version).
fn add_column(conn: &dyn Sql, column: &str, kind: &str) -> Result<(), SqlError> {
    let statement = match conn.dialect() {
        Dialect::Postgres => {
            format!("ALTER TABLE idempotency ADD COLUMN IF NOT EXISTS {column} {kind}")
        }
        Dialect::Sqlite => {
            let present = conn.one(
                "SELECT 1 FROM pragma_table_info('idempotency') WHERE name = ?1",
                params![column],
                |_| Ok(()),
            )?;
            if present.is_some() {
                return Ok(());
            }
            format!("ALTER TABLE idempotency ADD COLUMN {column} {kind}")
        }
    };
    conn.execute(&statement, params![])?;
    Ok(())
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
        Claim::Done(reply) => return Ok(Json::made(reply.into_response(true))),
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
            crate::fault::maybe_crash(crate::fault::Point::BeforeAnswerStored);
            let stored = super::blocking(services, STORE, move |s| {
                s.idempotency.finish(&token, &key, &reply).map(|()| reply)
            })
            .await?;
            Ok(Json::made(stored.into_response(false)))
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
