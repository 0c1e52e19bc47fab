//! The server's own small databases (tokens, secrets, idempotency keys): a SQLite file per
//! server (WAL, a sync on every commit, a bounded wait for a lock), or with
//! `--store postgres://…` tables in the [`POSTGRES_SCHEMA`] schema of that database, shared
//! by every server on it. One place, so none of them is ever less durable than the others.

use crate::{self as sql, PgConnection, Sql, SqlError};
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The PostgreSQL schema of the token, secret and idempotency tables.
pub const POSTGRES_SCHEMA: &str = "latchkey_api";

/// The advisory lock that serialises schema creation and each store's read-then-write
/// transactions across servers (SQLite's `BEGIN IMMEDIATE` does the same within a file).
const LOCK: i64 = 0x6c6b_6170_6900; // "lkapi"

/// Where a store lives: its own SQLite file, or the shared PostgreSQL database.
#[derive(Debug, Clone)]
pub enum Place {
    File(PathBuf),
    Postgres(String),
}

impl From<PathBuf> for Place {
    fn from(path: PathBuf) -> Self {
        Place::File(path)
    }
}

impl From<&PathBuf> for Place {
    fn from(path: &PathBuf) -> Self {
        Place::File(path.clone())
    }
}

impl From<&Path> for Place {
    fn from(path: &Path) -> Self {
        Place::File(path.to_owned())
    }
}

impl Place {
    /// Whether several servers may share it (then a row one server claimed may be another
    /// live server's, not a crashed one's).
    pub fn is_shared(&self) -> bool {
        matches!(self, Place::Postgres(_))
    }

    /// The file, or a description of the PostgreSQL schema (never the URL: it may hold a
    /// password), for messages.
    pub fn path(&self) -> PathBuf {
        match self {
            Place::File(path) => path.clone(),
            Place::Postgres(_) => PathBuf::from(format!("(PostgreSQL schema {POSTGRES_SCHEMA})")),
        }
    }
}

pub struct Durable {
    /// The file, or a description of the PostgreSQL schema, for messages.
    path: PathBuf,
    /// The PostgreSQL URL, to reconnect.
    url: Option<String>,
    /// One SQLite connection; up to a few PostgreSQL ones, opened as concurrent requests
    /// need them, so they do not queue for one network round trip after another. The first
    /// is always open.
    connections: Vec<Mutex<Database>>,
}

/// PostgreSQL connections each store opens at most.
const POSTGRES_CONNECTIONS: usize = 4;

enum Database {
    Sqlite(Connection),
    Postgres(PgConnection),
    /// A PostgreSQL slot not needed yet.
    Unopened,
}

/// The connection while it is locked; statements run on it through [`Sql`].
pub struct Locked<'a>(MutexGuard<'a, Database>);

impl std::ops::Deref for Locked<'_> {
    type Target = dyn Sql;

    fn deref(&self) -> &(dyn Sql + 'static) {
        match &*self.0 {
            Database::Sqlite(conn) => conn,
            Database::Postgres(conn) => conn,
            Database::Unopened => unreachable!("`Durable::lock` hands out open connections only"),
        }
    }
}

impl Durable {
    /// Opens (or creates) the store and applies `schema` (idempotent DDL, written for SQLite).
    /// Blocking.
    pub fn open(place: Place, schema: &str) -> Result<Self, SqlError> {
        match place {
            Place::File(path) => Self::open_file(path, schema),
            Place::Postgres(url) => Self::open_postgres(&url, schema),
        }
    }

    fn open_file(path: PathBuf, schema: &str) -> Result<Self, SqlError> {
        let connection = sql::open_sqlite(&path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(schema)?;
        Ok(Self {
            path,
            url: None,
            connections: vec![Mutex::new(Database::Sqlite(connection))],
        })
    }

    /// Connects to the PostgreSQL database `url` names and applies `schema` there (translated
    /// by [`sql::postgres_ddl`]).
    fn open_postgres(url: &str, schema: &str) -> Result<Self, SqlError> {
        let connection = PgConnection::connect(url, POSTGRES_SCHEMA)?;
        let tx = connection.transaction()?;
        tx.batch(&format!(
            "SELECT pg_advisory_xact_lock({LOCK}); {}",
            sql::postgres_ddl(schema)
        ))?;
        tx.commit()?;
        let mut connections = vec![Mutex::new(Database::Postgres(connection))];
        connections.extend((1..POSTGRES_CONNECTIONS).map(|_| Mutex::new(Database::Unopened)));
        Ok(Self {
            path: Place::Postgres(String::new()).path(),
            url: Some(url.to_owned()),
            connections,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lock(&self) -> Locked<'_> {
        // A free open connection; else a free slot opened now; else wait for the first.
        let free_open = self.connections.iter().find_map(|slot| {
            slot.try_lock()
                .ok()
                .filter(|db| !matches!(**db, Database::Unopened))
        });
        if let Some(locked) = free_open {
            return self.checked(locked);
        }
        if let Some(url) = &self.url {
            for slot in &self.connections {
                if let Ok(mut locked) = slot.try_lock() {
                    if matches!(*locked, Database::Unopened) {
                        if let Ok(fresh) = PgConnection::connect(url, POSTGRES_SCHEMA) {
                            *locked = Database::Postgres(fresh);
                            return Locked(locked);
                        }
                    }
                }
            }
        }
        // A panic while holding the lock cannot leave the database half-written (statements
        // are atomic, transactions roll back on drop), so a poisoned lock is still safe to use.
        let first = self.connections[0]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.checked(first)
    }

    /// A PostgreSQL connection that broke (the database restarted) is replaced; if that fails
    /// too, the broken one stays and this call's statements report the error.
    fn checked<'a>(&self, mut locked: MutexGuard<'a, Database>) -> Locked<'a> {
        if let (Database::Postgres(conn), Some(url)) = (&*locked, &self.url) {
            if conn.is_closed() {
                if let Ok(fresh) = PgConnection::connect(url, POSTGRES_SCHEMA) {
                    *locked = Database::Postgres(fresh);
                }
            }
        }
        Locked(locked)
    }

    /// Runs `f` in one transaction that no other writer of this store interleaves with (on
    /// any server), committed if `f` returns `Ok`; `storage` turns a database failure into
    /// the caller's error.
    pub fn transaction<T, E>(
        &self,
        storage: impl Fn(SqlError) -> E,
        f: impl FnOnce(&dyn Sql) -> Result<T, E>,
    ) -> Result<T, E> {
        let mut locked = self.lock();
        match &mut *locked.0 {
            Database::Sqlite(conn) => {
                let tx = conn
                    .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                    .map_err(|e| storage(e.into()))?;
                let value = f(&*tx)?;
                tx.commit().map_err(|e| storage(e.into()))?;
                Ok(value)
            }
            Database::Postgres(conn) => {
                let tx = conn.transaction().map_err(&storage)?;
                tx.batch(&format!("SELECT pg_advisory_xact_lock({LOCK})"))
                    .map_err(&storage)?;
                let value = f(&*tx)?;
                tx.commit().map_err(&storage)?;
                Ok(value)
            }
            Database::Unopened => unreachable!("`Durable::lock` hands out open connections only"),
        }
    }
}
