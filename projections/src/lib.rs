//! Read models built from the global event order (DESIGN.md §4). Each batch of events and the
//! checkpoint after it are written in one SQLite transaction, so a crash never applies an
//! event twice or skips one. Read models hold no secret and can be rebuilt from the log.
//!
//! The read models, each applied in the same transaction as the checkpoint:
//! - `directory`: tenants, technicians, memberships, computers, sessions (the process
//!   managers' look-ups, session lists and expiry);
//! - `audit`: the human-readable audit trail;
//! - `accounts`: per-computer account state, admin-group membership history (standing
//!   privilege, as-of queries) and each agent's pending provisioning requests.
//!
//! Writers go through [`ReadModels`]; HTTP handlers read through [`ReadView`], a small pool of
//! read-only connections to the same file (SQLite WAL lets them read while the writer writes).
//! Both answer queries through [`Queries`].

mod accounts;
mod audit;
mod directory;

pub use accounts::*;
pub use audit::*;
pub use directory::*;

use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::process::Lookup;
use latchkey_domain::{AnyEvent, DecodeError};
use latchkey_store::{Position, RecordedEvent};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read model database: {0}")]
    Sql(#[from] rusqlite::Error),
    /// A caller's cursor or filter is malformed (an HTTP 400, naming `field`).
    #[error("{field}: {reason}")]
    BadInput { field: &'static str, reason: String },
    #[error("event at position {position} cannot be read: {source}")]
    Decode {
        position: Position,
        source: DecodeError,
    },
}

/// The read-model database (one SQLite file, or in memory for tests).
pub struct ReadModels {
    conn: Connection,
}

/// Decodes a stored event into the domain's terms.
pub fn decode(recorded: &RecordedEvent) -> Result<AnyEvent, ProjectionError> {
    let bad = |source| ProjectionError::Decode {
        position: recorded.position,
        source,
    };
    let json = serde_json::from_slice(&recorded.payload).map_err(|e| {
        bad(DecodeError::Invalid {
            event_type: recorded.event_type.clone(),
            version: recorded.schema_version,
            reason: e.to_string(),
        })
    })?;
    AnyEvent::from_json(&recorded.event_type, recorded.schema_version, json).map_err(bad)
}

impl ReadModels {
    pub fn open(path: &Path) -> Result<Self, ProjectionError> {
        let conn = Connection::open(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        Self::init(conn)
    }

    pub fn in_memory() -> Result<Self, ProjectionError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, ProjectionError> {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS checkpoint (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 commit_position INTEGER NOT NULL,
                 prepare_position INTEGER NOT NULL
             );
             CREATE TABLE IF NOT EXISTS process_checkpoint (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 commit_position INTEGER NOT NULL,
                 prepare_position INTEGER NOT NULL
             );",
        )?;
        conn.execute_batch(directory::SCHEMA)?;
        conn.execute_batch(audit::SCHEMA)?;
        conn.execute_batch(accounts::SCHEMA)?;
        Ok(Self { conn })
    }

    /// Checkpoints the WAL into the main file and closes the database, so the file can be
    /// moved (`latchkey replay`).
    pub fn close(self) -> Result<(), ProjectionError> {
        self.conn
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;")?;
        self.conn.close().map_err(|(_, e)| e)?;
        Ok(())
    }

    /// Queries on this (writer's) connection; tests and the CLI use it.
    pub fn queries(&self) -> Queries<'_> {
        Queries(&self.conn)
    }

    /// Every read-model row, table by table in a stable order, checkpoints excluded: two read
    /// models built from the same events dump the same text (`latchkey replay` tests this).
    pub fn dump(&self) -> Result<String, ProjectionError> {
        dump(&self.conn)
    }

    /// Drops every row and both checkpoints, for a rebuild from the start of the log.
    pub fn clear(&mut self) -> Result<(), ProjectionError> {
        let tx = self.conn.transaction()?;
        for table in tables(&tx)? {
            crate::exec(&tx, &format!("DELETE FROM \"{table}\""), [])?;
        }
        tx.commit()?;
        Ok(())
    }

    /// The position of the last event applied, `None` before the first.
    pub fn checkpoint(&self) -> Result<Option<Position>, ProjectionError> {
        self.position_in("checkpoint")
    }

    /// The position of the last event the process managers have fully handled.
    pub fn process_checkpoint(&self) -> Result<Option<Position>, ProjectionError> {
        self.position_in("process_checkpoint")
    }

    /// Records that the process managers have handled every event up to `position`.
    pub fn set_process_checkpoint(&self, position: Position) -> Result<(), ProjectionError> {
        Ok(write_position(&self.conn, "process_checkpoint", position)?)
    }

    fn position_in(&self, table: &str) -> Result<Option<Position>, ProjectionError> {
        Ok(self
            .conn
            .prepare_cached(&format!(
                "SELECT commit_position, prepare_position FROM {table} WHERE id = 1"
            ))?
            .query_row([], |row| {
                Ok(Position::new(
                    row.get::<_, i64>(0)? as u64,
                    row.get::<_, i64>(1)? as u64,
                ))
            })
            .optional()?)
    }

    /// Applies events in global order, with the checkpoint, in one transaction. Events at or
    /// before the checkpoint are skipped, so a batch delivered twice changes nothing.
    pub fn apply(&mut self, events: &[RecordedEvent]) -> Result<usize, ProjectionError> {
        Ok(self
            .apply_with(events, |_, _, _| Ok::<_, ProjectionError>(()))?
            .len())
    }

    /// Like [`ReadModels::apply`], and after each event is applied calls `then` with the event
    /// and the read models as they are right after it (inside the transaction), e.g. for the
    /// process managers' reactions. Returns `then`'s answers for the events applied.
    pub fn apply_with<T, E: From<ProjectionError>>(
        &mut self,
        events: &[RecordedEvent],
        mut then: impl FnMut(&RecordedEvent, &AnyEvent, Queries<'_>) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        let checkpoint = self.checkpoint()?;
        let tx = self.conn.transaction().map_err(ProjectionError::from)?;
        let mut answers = Vec::new();
        let mut last = checkpoint;
        for recorded in events {
            if last.is_some_and(|c| recorded.position <= c) {
                continue;
            }
            let event = decode(recorded)?;
            // The directory first: the others look names up in it.
            let applied = directory::apply(&tx, &event)
                .and_then(|()| audit::apply(&tx, recorded, &event))
                .and_then(|()| accounts::apply(&tx, recorded, &event));
            applied.map_err(ProjectionError::from)?;
            answers.push(then(recorded, &event, Queries(&tx))?);
            last = Some(recorded.position);
        }
        if let Some(position) = last.filter(|_| !answers.is_empty()) {
            write_position(&tx, "checkpoint", position).map_err(ProjectionError::from)?;
        }
        tx.commit().map_err(ProjectionError::from)?;
        Ok(answers)
    }
}

/// Read-only access to the read models for query handlers.
pub struct Queries<'a>(pub(crate) &'a Connection);

impl Queries<'_> {
    pub(crate) fn conn(&self) -> &Connection {
        self.0
    }

    fn ids<T>(
        &self,
        sql: &str,
        param: Uuid,
        make: fn(Uuid) -> T,
    ) -> Result<Vec<T>, ProjectionError> {
        let mut statement = self.0.prepare_cached(sql)?;
        let rows = statement.query_map([param.to_string()], |row| row.get::<_, String>(0))?;
        let mut out = Vec::new();
        for row in rows {
            // Only this module writes these columns, always from a Uuid.
            let id = Uuid::parse_str(&row?).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    0,
                    rusqlite::types::Type::Text,
                    Box::new(e),
                )
            })?;
            out.push(make(id));
        }
        Ok(out)
    }
}

/// A pool of read-only connections to the read-model file.
pub struct ReadView {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReadView {
    pub fn open(path: &Path) -> Result<Self, ProjectionError> {
        let view = Self {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
        };
        // Fail now, not at the first query, if the file cannot be read.
        view.with(|_| Ok(()))?;
        Ok(view)
    }

    /// Runs `f` on a pooled connection. Blocking: call it off the async executor.
    pub fn with<T>(
        &self,
        f: impl FnOnce(Queries<'_>) -> Result<T, ProjectionError>,
    ) -> Result<T, ProjectionError> {
        let pooled = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = Connection::open_with_flags(
                    &self.path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                conn
            }
        };
        // One read transaction, so a query made of several statements sees one state.
        exec(&conn, "BEGIN", [])?;
        let result = f(Queries(&conn));
        let ended = exec(&conn, "COMMIT", []);
        if ended.is_ok() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
        let value = result?;
        ended?;
        Ok(value)
    }
}

fn tables(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut statement = conn.prepare(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'
         ORDER BY name",
    )?;
    let names = statement.query_map([], |row| row.get::<_, String>(0))?;
    names.collect()
}

fn dump(conn: &Connection) -> Result<String, ProjectionError> {
    use std::fmt::Write;
    let mut out = String::new();
    for table in tables(conn)? {
        if table.ends_with("checkpoint") {
            continue;
        }
        let _ = writeln!(out, "== {table}");
        let mut statement = conn.prepare(&format!("SELECT * FROM \"{table}\""))?;
        let columns = statement.column_count();
        let mut rows: Vec<String> = statement
            .query_map([], |row| {
                let mut line = String::new();
                for i in 0..columns {
                    let value: rusqlite::types::Value = row.get(i)?;
                    let _ = write!(line, "{value:?}\t");
                }
                Ok(line)
            })?
            .collect::<rusqlite::Result<_>>()?;
        rows.sort();
        for row in rows {
            let _ = writeln!(out, "{row}");
        }
    }
    Ok(out)
}

/// `execute` through the statement cache: the read models run the same few statements for
/// every event, and parsing SQL each time was a large share of the server's CPU.
pub(crate) fn exec<P: rusqlite::Params>(
    conn: &Connection,
    sql: &str,
    params: P,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Enough cached statements for every statement the read models use.
const STATEMENT_CACHE: usize = 256;

fn write_position(conn: &Connection, table: &str, position: Position) -> rusqlite::Result<()> {
    exec(
        conn,
        &format!(
            "INSERT INTO {table} (id, commit_position, prepare_position) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET commit_position = ?1, prepare_position = ?2"
        ),
        params![position.commit as i64, position.prepare as i64],
    )?;
    Ok(())
}

/// The process managers' view, inside or outside a transaction.
impl Lookup for Queries<'_> {
    type Error = ProjectionError;

    fn computers_of_tenant(&self, tenant: TenantId) -> Result<Vec<ComputerId>, ProjectionError> {
        self.ids(
            "SELECT id FROM computers WHERE tenant_id = ?1 ORDER BY id",
            tenant.0,
            ComputerId,
        )
    }

    fn open_sessions_of_technician(
        &self,
        technician: TechnicianId,
        tenant: Option<TenantId>,
    ) -> Result<Vec<SessionId>, ProjectionError> {
        let all = self.ids(
            "SELECT id FROM sessions WHERE technician_id = ?1 AND open = 1 ORDER BY id",
            technician.0,
            SessionId,
        )?;
        let Some(tenant) = tenant else {
            return Ok(all);
        };
        let in_tenant = self.ids(
            "SELECT id FROM sessions WHERE tenant_id = ?1 AND open = 1",
            tenant.0,
            SessionId,
        )?;
        Ok(all.into_iter().filter(|s| in_tenant.contains(s)).collect())
    }

    fn open_sessions_on_computer(
        &self,
        computer: ComputerId,
    ) -> Result<Vec<SessionId>, ProjectionError> {
        self.ids(
            "SELECT id FROM sessions WHERE computer_id = ?1 AND open = 1 ORDER BY id",
            computer.0,
            SessionId,
        )
    }
}

impl Lookup for ReadModels {
    type Error = ProjectionError;

    fn computers_of_tenant(&self, tenant: TenantId) -> Result<Vec<ComputerId>, ProjectionError> {
        self.queries().computers_of_tenant(tenant)
    }

    fn open_sessions_of_technician(
        &self,
        technician: TechnicianId,
        tenant: Option<TenantId>,
    ) -> Result<Vec<SessionId>, ProjectionError> {
        self.queries()
            .open_sessions_of_technician(technician, tenant)
    }

    fn open_sessions_on_computer(
        &self,
        computer: ComputerId,
    ) -> Result<Vec<SessionId>, ProjectionError> {
        self.queries().open_sessions_on_computer(computer)
    }
}
