//! The idempotency table: which (API token, `Idempotency-Key`) pairs have been claimed, by
//! which request, and the answer each gave. The first request with a key claims it before it
//! runs, so two concurrent requests with one key cannot both run; a failed request releases
//! its key. Only answers without a secret are ever stored here (the HTTP layer decides which).
//!
//! Exactly once across crashes: a claim has an id, which is the correlation id of every event
//! the request writes and the id of the entity it creates. A claim whose request is no longer
//! running (its process died, or nothing in this process runs it any more) is taken over by
//! the next retry as the same claim ([`Scope::resumed`]). A claim's request is no longer
//! running when it was made by an earlier process on this server's own files, by this
//! process but nothing runs it any more, or (several servers sharing PostgreSQL) by another
//! server more than [`LEASE`] ago.

use latchkey_sql::{params, Dialect, OptionalExtension, Sql, SqlError, SqlExt};
use latchkey_sql::{Durable, Place};
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use uuid::Uuid;

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

/// An answer as stored: its status code, JSON body and `Location`, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredReply {
    pub status: u16,
    pub body: serde_json::Value,
    pub location: Option<String>,
}

/// The idempotency table, and which of its claims this process is running.
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

/// What a request with a key finds in the table.
pub enum Claim {
    /// The key is now ours, new or taken over from a run that is no longer running.
    Claimed(Scope),
    /// Answered before: the stored reply.
    Done(StoredReply),
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

    /// Claims (token, key) for `request` (method and path) with a body of `fingerprint`,
    /// or says why not.
    pub fn claim(
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
                    return Ok(Claim::Done(StoredReply {
                        status,
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
    pub fn run(&self, token: &str, key: &str) -> RunningGuard {
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

    /// Stores the answer of the claim's request, to be replayed to retries.
    pub fn finish(&self, token: &str, key: &str, reply: &StoredReply) -> Result<(), SqlError> {
        self.db.lock().execute(
            "UPDATE idempotency SET status = ?3, body = ?4, location = ?5
             WHERE token_id = ?1 AND key = ?2",
            params![
                token,
                key,
                reply.status,
                reply.body.to_string(),
                reply.location
            ],
        )?;
        Ok(())
    }

    /// Gives the key up after its request failed, so a retry may run it again.
    pub fn release(&self, token: &str, key: &str) -> Result<(), SqlError> {
        self.db.lock().execute(
            "DELETE FROM idempotency WHERE token_id = ?1 AND key = ?2 AND status IS NULL",
            params![token, key],
        )?;
        Ok(())
    }
}

/// (token, key) running in this process, until dropped.
pub struct RunningGuard {
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
