//! Read models built from the global event order (DESIGN.md §4). Each batch of events and the
//! checkpoint after it are written in one transaction (SQLite, or PostgreSQL when several
//! servers share them), so a crash never applies an event twice or skips one. Read models
//! hold no secret and can be rebuilt from the log.
//!
//! The read models, each applied in the same transaction as the checkpoint:
//! - `directory`: tenants, technicians, memberships, computers, sessions (the process
//!   managers' look-ups, session lists and expiry);
//! - `audit`: the human-readable audit trail;
//! - `accounts`: per-computer account state, admin-group membership history (standing
//!   privilege, as-of queries) and each agent's pending provisioning requests.
//!
//! Writers go through [`ReadModels`]; HTTP handlers read through [`ReadView`], a small pool of
//! read-only connections to the same database (SQLite WAL, or PostgreSQL snapshots, let them
//! read while the writer writes). Both answer queries through [`Queries`], and all SQL goes
//! through `latchkey_sql`, which runs it on either database.

mod accounts;
mod audit;
mod directory;
mod rebuild;
mod recent;

pub use rebuild::Rebuild;

pub use accounts::*;
pub use audit::*;
pub use directory::*;

use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::process::Lookup;
use latchkey_domain::{AnyEvent, DecodeError};
pub use latchkey_sql::Place;
use latchkey_sql::{self as sql, params, Dialect, PgConnection, Sql, SqlError, SqlExt};
use latchkey_store::{Position, RecordedEvent};
use rusqlite::{Connection, OpenFlags};
use std::path::Path;
use std::sync::Mutex;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("read model database: {0}")]
    Sql(#[from] SqlError),
    /// A caller's cursor or filter is malformed (an HTTP 400, naming `field`).
    #[error("{field}: {reason}")]
    BadInput { field: &'static str, reason: String },
    #[error("event at position {position} cannot be read: {source}")]
    Decode {
        position: Position,
        source: DecodeError,
    },
    /// Moving a rebuilt file over the live one failed.
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

impl From<rusqlite::Error> for ProjectionError {
    fn from(e: rusqlite::Error) -> Self {
        ProjectionError::Sql(e.into())
    }
}

/// The PostgreSQL schema the read models live in (`--store postgres://…`), beside the event
/// store's own `latchkey_store` schema.
pub const POSTGRES_SCHEMA: &str = "latchkey_read";

/// The read-model database: one SQLite file (or in memory for tests), or the
/// [`POSTGRES_SCHEMA`] schema of a PostgreSQL database shared by several servers.
///
/// As the writer it remembers what it wrote, so a batch of events costs few round trips to
/// PostgreSQL: the names the audit sentences need ([`audit::NameCache`]), both checkpoints,
/// and the process managers' progress not written yet (see [`ReadModels::handled`]). Every
/// write transaction still reads both checkpoints (with its `BEGIN` and lock, in one round
/// trip): when the read models' checkpoint is not the one this writer left there, someone
/// else wrote (another server that led meanwhile, or `latchkey replay`), and the writer
/// forgets what it remembered.
pub struct ReadModels {
    db: Database,
    memory: Memory,
    /// On PostgreSQL, where to connect again when the connection breaks: (URL, schema).
    reconnect: Option<(String, String)>,
}

/// What the writer remembers between its transactions.
#[derive(Default)]
struct Memory {
    names: audit::NameCache,
    /// The read models' checkpoint as this writer's last transaction left it; `None` when
    /// not known (nothing written yet, or a transaction failed).
    checkpoint: Option<Option<Position>>,
    /// The process managers' checkpoint in the database as last read or written here.
    process: std::cell::Cell<Option<Option<Position>>>,
    /// What the process managers have handled, not written yet: it goes with the next
    /// transaction.
    handled: Option<Position>,
}

impl Memory {
    /// Forgets everything the database may no longer agree with.
    fn forget(&mut self) {
        self.names.forget();
        self.checkpoint = None;
        self.process.set(None);
    }
}

enum Database {
    Sqlite(Connection),
    Postgres(PgConnection),
}

impl Database {
    fn sql(&self) -> &dyn Sql {
        match self {
            Database::Sqlite(conn) => conn,
            Database::Postgres(conn) => conn,
        }
    }
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

/// The checkpoint tables and every read model's tables, written for SQLite.
fn schema() -> String {
    [
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
        directory::SCHEMA,
        audit::SCHEMA,
        accounts::SCHEMA,
    ]
    .concat()
}

/// Creates the read-model tables on PostgreSQL, one server at a time (several may start at
/// once on the same database).
fn create_postgres_schema(conn: &PgConnection) -> Result<(), ProjectionError> {
    let tx = conn.transaction()?;
    tx.batch(&format!(
        "SELECT pg_advisory_xact_lock({SCHEMA_LOCK}); {}",
        sql::postgres_ddl(&schema())
    ))?;
    tx.commit()?;
    Ok(())
}

/// A connection for the read models' writer. Its commits do not wait for the disk, as the
/// SQLite read models' do not (`synchronous = NORMAL`): read models are rebuilt from the
/// log, and a crash of the database can only lose the last transactions whole, rows and
/// checkpoint together, which are then applied again. Set on this connection only: the event
/// log's appends and the API's tokens, secrets and idempotency keys, on connections of their
/// own, commit durably.
fn writer_connection(url: &str, schema: &str) -> Result<PgConnection, ProjectionError> {
    let conn = PgConnection::connect(url, schema)?;
    conn.batch("SET synchronous_commit TO off")?;
    Ok(conn)
}

/// The advisory lock key that serialises schema creation and read-model writers.
const SCHEMA_LOCK: i64 = 0x6c6b_7265_6164; // "lkread"

impl ReadModels {
    /// Opens the read models where `place` says: a SQLite file of this server's (created
    /// 0600 if missing), or the [`POSTGRES_SCHEMA`] schema of the database every server
    /// shares. Blocking: call it off the async executor.
    pub fn open(place: impl Into<Place>) -> Result<Self, ProjectionError> {
        match place.into() {
            Place::File(path) => Self::open_file(&path),
            Place::Postgres(url) => Self::open_postgres_schema(&url, POSTGRES_SCHEMA),
        }
    }

    fn open_file(path: &Path) -> Result<Self, ProjectionError> {
        let conn = latchkey_sql::open_sqlite(path)?;
        conn.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
        Self::init(conn)
    }

    pub fn in_memory() -> Result<Self, ProjectionError> {
        Self::init(Connection::open_in_memory()?)
    }

    /// The read models in a schema of the database `url` names (the live one, or a
    /// rebuild's before it replaces the live one).
    fn open_postgres_schema(url: &str, schema: &str) -> Result<Self, ProjectionError> {
        let conn = writer_connection(url, schema)?;
        create_postgres_schema(&conn)?;
        Ok(Self {
            db: Database::Postgres(conn),
            memory: Memory::default(),
            reconnect: Some((url.to_owned(), schema.to_owned())),
        })
    }

    /// On PostgreSQL, replaces a connection that broke (the database restarted, or an
    /// administrator ended it) with a new one. A failure to connect is returned; the caller
    /// tries again later. Blocking.
    /// What this writer remembered is forgotten: its last transaction may or may not have
    /// committed.
    pub fn reconnect_if_broken(&mut self) -> Result<(), ProjectionError> {
        if let (Database::Postgres(conn), Some((url, schema))) = (&self.db, &self.reconnect) {
            if conn.is_closed() {
                self.db = Database::Postgres(writer_connection(url, schema)?);
                self.memory.forget();
            }
        }
        Ok(())
    }

    /// Makes the read models rebuilt in `rebuilt` the live ones, in one transaction: the
    /// process managers' checkpoint is carried over from the live ones, which are dropped.
    fn replace_postgres(url: &str, rebuilt: &str) -> Result<(), ProjectionError> {
        let conn = PgConnection::connect(url, POSTGRES_SCHEMA)?;
        // The live tables may not exist yet (no server ever ran on this database).
        create_postgres_schema(&conn)?;
        let tx = conn.transaction()?;
        tx.batch(&format!(
            "SELECT pg_advisory_xact_lock({SCHEMA_LOCK});
             INSERT INTO {rebuilt}.process_checkpoint
                 SELECT * FROM {POSTGRES_SCHEMA}.process_checkpoint
             ON CONFLICT (id) DO UPDATE SET commit_position = excluded.commit_position,
                                            prepare_position = excluded.prepare_position;
             DROP SCHEMA {POSTGRES_SCHEMA} CASCADE;
             ALTER SCHEMA {rebuilt} RENAME TO {POSTGRES_SCHEMA};"
        ))?;
        tx.commit()?;
        Ok(())
    }

    /// Drops a schema a rebuild left behind.
    fn drop_postgres_schema(url: &str, schema: &str) -> Result<(), ProjectionError> {
        let conn = PgConnection::connect(url, POSTGRES_SCHEMA)?;
        conn.batch(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))?;
        Ok(())
    }

    fn init(conn: Connection) -> Result<Self, ProjectionError> {
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        conn.execute_batch(&schema())?;
        Ok(Self {
            db: Database::Sqlite(conn),
            memory: Memory::default(),
            reconnect: None,
        })
    }

    /// Checkpoints the WAL into the main file and closes the database, so the file can be
    /// moved (`latchkey replay`).
    pub fn close(self) -> Result<(), ProjectionError> {
        match self.db {
            Database::Sqlite(conn) => {
                conn.execute_batch(
                    "PRAGMA wal_checkpoint(TRUNCATE); PRAGMA journal_mode = DELETE;",
                )?;
                conn.close().map_err(|(_, e)| e)?;
            }
            Database::Postgres(_) => {}
        }
        Ok(())
    }

    /// Whether the read models are on a database server (PostgreSQL), so that every call
    /// waits for the network, rather than in a local SQLite file.
    pub fn on_server(&self) -> bool {
        matches!(self.db, Database::Postgres(_))
    }

    /// Queries on this (writer's) connection; tests and the CLI use it.
    pub fn queries(&self) -> Queries<'_> {
        Queries(self.db.sql())
    }

    /// Every read-model row, table by table in a stable order, checkpoints excluded: two read
    /// models built from the same events dump the same text (`latchkey replay` tests this).
    pub fn dump(&self) -> Result<String, ProjectionError> {
        dump(self.db.sql())
    }

    /// Drops every row and both checkpoints, for a rebuild from the start of the log.
    pub fn clear(&mut self) -> Result<(), ProjectionError> {
        self.memory.forget();
        self.memory.handled = None;
        let cleared = self.in_transaction(|db| {
            for table in db.tables()? {
                crate::exec(db, &format!("DELETE FROM \"{table}\""), params![])?;
            }
            Ok::<_, ProjectionError>(())
        });
        if cleared.is_ok() {
            self.memory.checkpoint = Some(None);
            self.memory.process.set(Some(None));
        }
        cleared
    }

    /// Runs `f` in one transaction, committed if it returns `Ok`. On PostgreSQL the
    /// transaction first takes the read models' write lock, so two servers never apply the
    /// same events at once (the second then finds them applied and skips them). The `BEGIN`
    /// and the lock go out with `f`'s first statement.
    fn in_transaction<T, E: From<ProjectionError>>(
        &mut self,
        f: impl FnOnce(&dyn Sql) -> Result<T, E>,
    ) -> Result<T, E> {
        match &mut self.db {
            Database::Sqlite(conn) => {
                let tx = conn.transaction().map_err(ProjectionError::from)?;
                let value = f(&*tx)?;
                tx.commit().map_err(ProjectionError::from)?;
                Ok(value)
            }
            Database::Postgres(conn) => {
                let tx = conn.transaction().map_err(ProjectionError::from)?;
                tx.execute_later("SELECT pg_advisory_xact_lock(?1)", params![SCHEMA_LOCK])
                    .map_err(ProjectionError::from)?;
                let value = f(&*tx)?;
                tx.commit().map_err(ProjectionError::from)?;
                Ok(value)
            }
        }
    }

    /// The position of the last event applied, `None` before the first.
    pub fn checkpoint(&self) -> Result<Option<Position>, ProjectionError> {
        position_in(self.db.sql(), "checkpoint")
    }

    /// The position of the last event the process managers have fully handled: what
    /// [`ReadModels::handled`] was last told, or else what the database says.
    pub fn process_checkpoint(&self) -> Result<Option<Position>, ProjectionError> {
        let stored = match self.memory.process.get() {
            Some(known) => known,
            None => {
                let read = position_in(self.db.sql(), "process_checkpoint")?;
                self.memory.process.set(Some(read));
                read
            }
        };
        Ok(stored.max(self.memory.handled))
    }

    /// Records, now and on its own, that the process managers have handled every event up to
    /// `position`.
    pub fn set_process_checkpoint(&self, position: Position) -> Result<(), ProjectionError> {
        write_position(self.db.sql(), "process_checkpoint", position)?;
        self.memory.process.set(None);
        Ok(())
    }

    /// Notes that the process managers have handled every event up to `position`. It is
    /// written with the next transaction (the next batch's, or [`ReadModels::write_handled`]),
    /// so it costs no round trip of its own; a crash before that makes the next leader
    /// handle those events again, which their reactions allow (they are idempotent).
    pub fn handled(&mut self, position: Position) {
        self.memory.handled = self.memory.handled.max(Some(position));
    }

    /// Writes what [`ReadModels::handled`] noted, if it is not written yet (the process
    /// managers call it when they are idle).
    pub fn write_handled(&mut self) -> Result<(), ProjectionError> {
        let Some(handled) = self.memory.handled else {
            return Ok(());
        };
        if self.memory.process.get() == Some(Some(handled)) {
            return Ok(());
        }
        self.write(&[], false, |_, _, _| Ok::<(), ProjectionError>(()), |_| ())
            .map(|_| ())
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
        then: impl FnMut(&RecordedEvent, &AnyEvent, Queries<'_>) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        self.write(events, false, then, |_| ())
    }

    /// The process managers' batch, in one transaction: calls `react` for every event of
    /// `events`, with the read models as they are right after it. Events the read models
    /// already have (a crash came between applying them and reacting to them, or another
    /// server applied them) are reacted to against the read models as they are, before the
    /// others are applied; the others are applied one by one, each followed by its
    /// reaction. What [`ReadModels::handled`] noted is written in the same transaction.
    pub fn apply_and_react<T, E: From<ProjectionError>>(
        &mut self,
        events: &[RecordedEvent],
        react: impl FnMut(&RecordedEvent, &AnyEvent, Queries<'_>) -> Result<T, E>,
    ) -> Result<Vec<T>, E> {
        self.write(events, true, react, |_| ())
    }

    /// [`ReadModels::apply_and_react`] that hands `react`'s answers to `reacted` as soon as
    /// the last event is reacted to, before the transaction commits, so the caller can act
    /// on them while it does. If the commit then fails, the caller has acted on reactions to
    /// events the read models do not have yet: it must be able to act on them again once
    /// they are applied (the process managers' reactions are idempotent).
    pub fn apply_and_react_early<T, E: From<ProjectionError>>(
        &mut self,
        events: &[RecordedEvent],
        react: impl FnMut(&RecordedEvent, &AnyEvent, Queries<'_>) -> Result<T, E>,
        reacted: impl FnOnce(Vec<T>),
    ) -> Result<(), E> {
        let mut reacted = Some(reacted);
        self.write(events, true, react, |answers| {
            if let Some(reacted) = reacted.take() {
                reacted(std::mem::take(answers));
            }
        })
        .map(|_| ())
    }

    /// One write transaction: reads both checkpoints (forgetting the remembered names if the
    /// read models' checkpoint is not the one this writer left), calls `then` for the events
    /// at or before it if `also_applied`, applies the rest, each followed by `then`, writes
    /// the checkpoint and what [`ReadModels::handled`] noted, shows `then`'s answers to
    /// `before_commit`, and commits. Returns `then`'s answers (what `before_commit` left of
    /// them), in order.
    fn write<T, E: From<ProjectionError>>(
        &mut self,
        events: &[RecordedEvent],
        also_applied: bool,
        mut then: impl FnMut(&RecordedEvent, &AnyEvent, Queries<'_>) -> Result<T, E>,
        before_commit: impl FnOnce(&mut Vec<T>),
    ) -> Result<Vec<T>, E> {
        let handled = self.memory.handled;
        let mut memory = std::mem::take(&mut self.memory);
        let outcome = self.in_transaction(|tx| {
            // Read inside the transaction, under its lock: another server may have moved
            // them, or a replay rebuilt the read models.
            let (checkpoint, process) = checkpoints(tx)?;
            if memory.checkpoint != Some(checkpoint) {
                memory.names.forget();
            }
            let mut answers = Vec::with_capacity(events.len());
            let mut audit_lines = audit::Rows::default();
            let mut last = checkpoint;
            for recorded in events {
                if last.is_some_and(|c| recorded.position <= c) {
                    if also_applied {
                        let event = decode(recorded)?;
                        answers.push(then(recorded, &event, Queries(tx))?);
                    }
                    continue;
                }
                let event = decode(recorded)?;
                // The directory first: the others look names up in it.
                let done = directory::apply(tx, &memory.names, &event)
                    .and_then(|()| {
                        audit::apply(tx, &memory.names, &mut audit_lines, recorded, &event)
                    })
                    .and_then(|()| accounts::apply(tx, recorded, &event));
                done.map_err(ProjectionError::from)?;
                answers.push(then(recorded, &event, Queries(tx))?);
                last = Some(recorded.position);
            }
            audit_lines.write(tx).map_err(ProjectionError::from)?;
            if last != checkpoint {
                let last = last.expect("an event was applied");
                write_position_later(tx, "checkpoint", last).map_err(ProjectionError::from)?;
            }
            let mut process_after = process;
            if handled > process {
                let handled = handled.expect("greater than something");
                write_position_later(tx, "process_checkpoint", handled)
                    .map_err(ProjectionError::from)?;
                process_after = Some(handled);
            }
            before_commit(&mut answers);
            Ok((answers, last, process_after))
        });
        match outcome {
            Ok((answers, checkpoint, process)) => {
                memory.checkpoint = Some(checkpoint);
                memory.process.set(Some(process));
                self.memory = memory;
                Ok(answers)
            }
            Err(e) => {
                // The names learnt in the transaction were rolled back with it.
                memory.forget();
                self.memory = memory;
                Err(e)
            }
        }
    }
}

/// Both checkpoints, in one query.
fn checkpoints(db: &dyn Sql) -> Result<(Option<Position>, Option<Position>), ProjectionError> {
    let row = db.query_row(
        "SELECT c.commit_position, c.prepare_position, p.commit_position, p.prepare_position
             FROM (SELECT 1 AS one) o
             LEFT JOIN checkpoint c ON c.id = 1
             LEFT JOIN process_checkpoint p ON p.id = 1",
        params![],
        |row| {
            let position = |i: usize| -> sql::Result<Option<Position>> {
                Ok(
                    match (
                        row.get::<_, Option<i64>>(i)?,
                        row.get::<_, Option<i64>>(i + 1)?,
                    ) {
                        (Some(commit), Some(prepare)) => {
                            Some(Position::new(commit as u64, prepare as u64))
                        }
                        _ => None,
                    },
                )
            };
            Ok((position(0)?, position(2)?))
        },
    )?;
    Ok(row)
}

fn position_in(db: &dyn Sql, table: &str) -> Result<Option<Position>, ProjectionError> {
    Ok(db.one(
        &format!("SELECT commit_position, prepare_position FROM {table} WHERE id = 1"),
        params![],
        |row| {
            Ok(Position::new(
                row.get::<_, i64>(0)? as u64,
                row.get::<_, i64>(1)? as u64,
            ))
        },
    )?)
}

/// Read-only access to the read models for query handlers.
pub struct Queries<'a>(pub(crate) &'a dyn Sql);

impl Queries<'_> {
    pub(crate) fn conn(&self) -> &dyn Sql {
        self.0
    }

    /// The position of the last event applied to the read models, `None` before the first.
    pub fn checkpoint(&self) -> Result<Option<Position>, ProjectionError> {
        position_in(self.0, "checkpoint")
    }

    /// Which database the read models are in, for the rare query that must differ.
    pub(crate) fn dialect(&self) -> Dialect {
        self.0.dialect()
    }

    fn ids<T>(
        &self,
        sql: &str,
        param: Uuid,
        make: fn(Uuid) -> T,
    ) -> Result<Vec<T>, ProjectionError> {
        Ok(self.0.map(sql, params![param.to_string()], |row| {
            // Only this module writes these columns, always from a Uuid.
            let id =
                Uuid::parse_str(&row.get::<_, String>(0)?).map_err(|e| SqlError::column(0, e))?;
            Ok(make(id))
        })?)
    }
}

/// A pool of read-only connections to the read models, at most [`VIEW_CONNECTIONS`] open.
pub struct ReadView {
    location: Place,
    pool: Mutex<Pool>,
    returned: std::sync::Condvar,
}

#[derive(Default)]
struct Pool {
    idle: Vec<Database>,
    /// Connections open, idle or in use.
    open: usize,
}

/// Connections a [`ReadView`] opens at most; further readers wait for one to be free.
pub const VIEW_CONNECTIONS: usize = 16;

impl ReadView {
    /// Reads the read models where `place` says (see [`ReadModels::open`]). Blocking.
    pub fn open(place: impl Into<Place>) -> Result<Self, ProjectionError> {
        let view = Self {
            location: place.into(),
            pool: Mutex::default(),
            returned: std::sync::Condvar::new(),
        };
        // Fail now, not at the first query, if the database cannot be read.
        view.with(|_| Ok(()))?;
        Ok(view)
    }

    fn connect(&self) -> Result<Database, ProjectionError> {
        Ok(match &self.location {
            Place::File(path) => {
                let conn = Connection::open_with_flags(
                    path,
                    OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(std::time::Duration::from_secs(5))?;
                conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
                Database::Sqlite(conn)
            }
            Place::Postgres(url) => {
                Database::Postgres(PgConnection::connect(url, POSTGRES_SCHEMA)?)
            }
        })
    }

    /// An idle connection, a new one if fewer than [`VIEW_CONNECTIONS`] are open, or else the
    /// next one given back.
    fn take(&self) -> Result<Database, ProjectionError> {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(db) = pool.idle.pop() {
                return Ok(db);
            }
            if pool.open < VIEW_CONNECTIONS {
                pool.open += 1;
                drop(pool);
                let connected = self.connect();
                if connected.is_err() {
                    self.give_back(None);
                }
                return connected;
            }
            pool = self.returned.wait(pool).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Returns a connection to the pool, or `None` for one that was closed or broke.
    fn give_back(&self, db: Option<Database>) {
        let mut pool = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        match db {
            Some(db) => pool.idle.push(db),
            None => pool.open -= 1,
        }
        self.returned.notify_one();
    }

    /// Runs `f` in one read transaction on `db`, so a query made of several statements sees
    /// one state. The outer error: the transaction did not start; then `f`'s answer and how
    /// the transaction ended.
    fn in_read_transaction<T>(
        db: &Database,
        f: impl FnOnce(Queries<'_>) -> Result<T, ProjectionError>,
    ) -> Result<(Result<T, ProjectionError>, sql::Result<()>), ProjectionError> {
        Ok(match db {
            Database::Sqlite(conn) => {
                exec(conn, "BEGIN", params![])?;
                let result = f(Queries(conn));
                (result, exec(conn, "COMMIT", params![]).map(|_| ()))
            }
            Database::Postgres(conn) => {
                let tx = conn.read_transaction()?;
                let result = f(Queries(&*tx));
                (result, tx.commit())
            }
        })
    }

    fn broken(db: &Database) -> bool {
        matches!(db, Database::Postgres(conn) if conn.is_closed())
    }

    /// Runs `f` on a pooled connection. Blocking: call it off the async executor.
    pub fn with<T>(
        &self,
        f: impl FnOnce(Queries<'_>) -> Result<T, ProjectionError>,
    ) -> Result<T, ProjectionError> {
        let db = self.take()?;
        let outcome = Self::in_read_transaction(&db, f);
        // A connection whose transaction did not end cleanly, or that broke, is not reused.
        let reusable = matches!(outcome, Ok((_, Ok(())))) && !Self::broken(&db);
        self.give_back(reusable.then_some(db));
        let (result, ended) = outcome?;
        let value = result?;
        ended?;
        Ok(value)
    }
}

fn dump(db: &dyn Sql) -> Result<String, ProjectionError> {
    use std::fmt::Write;
    let mut out = String::new();
    for table in db.tables()? {
        if table.ends_with("checkpoint") {
            continue;
        }
        let _ = writeln!(out, "== {table}");
        let mut rows: Vec<String> =
            db.map(&format!("SELECT * FROM \"{table}\""), params![], |row| {
                let mut line = String::new();
                for value in row.values() {
                    let _ = write!(line, "{value:?}\t");
                }
                Ok(line)
            })?;
        rows.sort();
        for row in rows {
            let _ = writeln!(out, "{row}");
        }
    }
    Ok(out)
}

/// `execute` through the statement cache: the read models run the same few statements for
/// every event, and parsing SQL each time was a large share of the server's CPU.
pub(crate) fn exec<P: sql::Params>(db: &dyn Sql, sql: &str, params: P) -> sql::Result<usize> {
    db.prepare_cached(sql)?.execute(params)
}

/// [`exec`] for a statement whose answer is not needed: on PostgreSQL it is queued and goes
/// out with the next statement that needs one (see [`Sql::execute_later`]).
pub(crate) fn exec_later<P: sql::Params>(db: &dyn Sql, sql: &str, params: P) -> sql::Result<()> {
    let values = params.into_values();
    let refs: Vec<&dyn sql::ToValue> = values.iter().map(|v| v as &dyn sql::ToValue).collect();
    db.execute_later(sql, &refs)
}

/// Enough cached statements for every statement the read models use.
const STATEMENT_CACHE: usize = 256;

fn position_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (id, commit_position, prepare_position) VALUES (1, ?1, ?2)
         ON CONFLICT (id) DO UPDATE SET commit_position = ?1, prepare_position = ?2"
    )
}

fn write_position(db: &dyn Sql, table: &str, position: Position) -> sql::Result<()> {
    let values = params![position.commit as i64, position.prepare as i64];
    exec(db, &position_sql(table), values)?;
    Ok(())
}

fn write_position_later(db: &dyn Sql, table: &str, position: Position) -> sql::Result<()> {
    let values = params![position.commit as i64, position.prepare as i64];
    exec_later(db, &position_sql(table), values)
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
