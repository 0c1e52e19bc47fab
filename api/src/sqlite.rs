//! How the server's own small SQLite files (tokens, secrets) are opened: WAL, a sync on every
//! commit, and a bounded wait for a lock. One place, so none of them is ever less durable.

use rusqlite::Connection;
use std::path::Path;

pub fn open_durable(path: &Path) -> rusqlite::Result<Connection> {
    let connection = Connection::open(path)?;
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    connection.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(connection)
}
