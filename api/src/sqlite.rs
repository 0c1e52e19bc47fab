//! The server's own small SQLite files (tokens, secrets): opened one way — WAL, a sync on
//! every commit, a bounded wait for a lock — and shared between threads behind one lock.
//! One place, so none of them is ever less durable than the others.

use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub struct Durable {
    path: PathBuf,
    connection: Mutex<Connection>,
}

impl Durable {
    /// Opens (or creates) the file and applies `schema` (idempotent DDL).
    pub fn open(path: PathBuf, schema: &str) -> rusqlite::Result<Self> {
        let connection = Connection::open(&path)?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "FULL")?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(schema)?;
        Ok(Self {
            path,
            connection: Mutex::new(connection),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (statements are
        // atomic, transactions roll back on drop), so a poisoned lock is still safe to use.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
