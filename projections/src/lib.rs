//! Read models built from the global event order (DESIGN.md §4). Each batch of events and the
//! checkpoint after it are written in one SQLite transaction, so a crash never applies an
//! event twice or skips one. Read models hold no secret and can be rebuilt from the log.
//!
//! UNFINISHED (issue 3): only the directory (tenants, technicians, computers, sessions) that
//! the process managers look things up in exists; the account state, audit trail and
//! pending-command read models are still to come.

mod directory;

use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::process::Lookup;
use latchkey_domain::{AnyEvent, DecodeError};
use latchkey_store::{Position, RecordedEvent};
use rusqlite::{params, Connection, OptionalExtension};
use std::path::Path;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read model database: {0}")]
    Sql(#[from] rusqlite::Error),
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
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;")?;
        Self::init(conn)
    }

    pub fn in_memory() -> Result<Self, ProjectionError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, ProjectionError> {
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
        Ok(Self { conn })
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
            .query_row(
                &format!("SELECT commit_position, prepare_position FROM {table} WHERE id = 1"),
                [],
                |row| {
                    Ok(Position::new(
                        row.get::<_, i64>(0)? as u64,
                        row.get::<_, i64>(1)? as u64,
                    ))
                },
            )
            .optional()?)
    }

    /// Applies events in global order, with the checkpoint, in one transaction. Events at or
    /// before the checkpoint are skipped, so a batch delivered twice changes nothing.
    pub fn apply(&mut self, events: &[RecordedEvent]) -> Result<usize, ProjectionError> {
        let checkpoint = self.checkpoint()?;
        let tx = self.conn.transaction()?;
        let mut applied = 0;
        let mut last = checkpoint;
        for recorded in events {
            if last.is_some_and(|c| recorded.position <= c) {
                continue;
            }
            directory::apply(&tx, &decode(recorded)?)?;
            last = Some(recorded.position);
            applied += 1;
        }
        if let Some(position) = last.filter(|_| applied > 0) {
            write_position(&tx, "checkpoint", position)?;
        }
        tx.commit()?;
        Ok(applied)
    }

    fn ids<T>(
        &self,
        sql: &str,
        param: Uuid,
        make: fn(Uuid) -> T,
    ) -> Result<Vec<T>, ProjectionError> {
        let mut statement = self.conn.prepare_cached(sql)?;
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

fn write_position(conn: &Connection, table: &str, position: Position) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "INSERT INTO {table} (id, commit_position, prepare_position) VALUES (1, ?1, ?2)
             ON CONFLICT (id) DO UPDATE SET commit_position = ?1, prepare_position = ?2"
        ),
        params![position.commit as i64, position.prepare as i64],
    )?;
    Ok(())
}

/// The process managers' view.
impl Lookup for ReadModels {
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
