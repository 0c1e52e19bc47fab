//! The embedded store's file: how connections are opened and tuned, and the schema with its
//! migrations. It must never weaken durability: the writer always runs WAL with
//! `synchronous=FULL`, so a commit is on disk before anyone is told it succeeded.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, ErrorCode, OpenFlags};

use crate::api::StoreError;

/// `PRAGMA application_id` marks the file as ours ("LKEY"), so we never migrate a stranger.
const APPLICATION_ID: i64 = 0x4c4b_4559;

/// `MIGRATIONS[n]` takes a file from `PRAGMA user_version` n to n + 1. Append, never edit:
/// files in the field are at every version ever released.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE events (
        position       INTEGER PRIMARY KEY,
        event_id       BLOB    NOT NULL UNIQUE,
        stream         TEXT    NOT NULL,
        revision       INTEGER NOT NULL,
        event_type     TEXT    NOT NULL,
        schema_version INTEGER NOT NULL,
        actor          TEXT    NOT NULL,
        correlation_id BLOB    NOT NULL,
        causation_id   BLOB,
        recorded_at    INTEGER NOT NULL, -- microseconds since the Unix epoch
        prev_hash      BLOB,
        hash           BLOB    NOT NULL,
        payload        BLOB    NOT NULL, -- last: reading the head columns never touches it
        UNIQUE (stream, revision)
    );
"];

/// How long a connection waits for a lock held by another connection before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub(super) fn sql_error(context: &str, e: rusqlite::Error) -> StoreError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            StoreError::Corrupt(format!("{context}: {e}"))
        }
        Some(ErrorCode::DiskFull) => StoreError::Full(format!("{context}: {e}")),
        _ => StoreError::Unavailable(format!("{context}: {e}")),
    }
}

/// Opens the one read-write connection, creating and migrating the file as needed.
pub(super) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let opening = |e| {
        sql_error(
            &format!("cannot open the event store {}", path.display()),
            e,
        )
    };
    // Created 0600 before SQLite sees it: its WAL and shared-memory files take its mode.
    latchkey_sql::files::create_private_file(path).map_err(|e| {
        StoreError::Unavailable(format!(
            "cannot create the event store {}: {e}",
            path.display()
        ))
    })?;
    let mut conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(opening)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
    let journal_mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
        .map_err(opening)?;
    if !journal_mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Unavailable(format!(
            "the event store {} cannot use write-ahead logging (journal mode stays \
             {journal_mode}); put it on a local file system",
            path.display()
        )));
    }
    // FULL: every COMMIT fsyncs the WAL, so an acknowledged append survives power loss.
    // A modest page cache: SQLite scans all of it at every commit (pcache1TruncateUnsafe
    // after B-tree balancing), so a huge one costs more than it saves. The size limit
    // gives back disk space after the WAL grew past the checkpoint threshold.
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA temp_store = MEMORY;
         PRAGMA cache_size = -16384;
         PRAGMA journal_size_limit = 201326592;",
    )
    .map_err(opening)?;
    migrate(&mut conn, path)?;
    // Room for the writer's few statements plus the transaction-control ones.
    conn.set_prepared_statement_cache_capacity(32);
    Ok(conn)
}

/// Opens a connection for the read pool; it can never write, whatever SQL it is given.
pub(super) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let opening = |e| {
        sql_error(
            &format!("cannot open the event store {} for reading", path.display()),
            e,
        )
    };
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(opening)?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(opening)?;
    // Memory-mapping lets catch-up reads copy rows straight from the page cache.
    conn.execute_batch(
        "PRAGMA cache_size = -32768;
         PRAGMA mmap_size = 1073741824;",
    )
    .map_err(opening)?;
    Ok(conn)
}

fn migrate(conn: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let migrating = |e| {
        sql_error(
            &format!("cannot prepare the event store {}", path.display()),
            e,
        )
    };
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .map_err(migrating)?;
    let application_id: i64 = tx
        .query_row("PRAGMA application_id", [], |row| row.get(0))
        .map_err(migrating)?;
    let version: i64 = tx
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(migrating)?;
    let tables: i64 = tx
        .query_row("SELECT count(*) FROM sqlite_schema", [], |row| row.get(0))
        .map_err(migrating)?;
    let fresh = application_id == 0 && version == 0 && tables == 0;
    if !fresh && application_id != APPLICATION_ID {
        return Err(StoreError::Corrupt(format!(
            "{} is not a Latchkey event store (it is some other SQLite file); point the store \
             at a new or existing Latchkey event store file",
            path.display()
        )));
    }
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(StoreError::Unavailable(format!(
            "the event store {} has schema version {version}, newer than the {known} this build \
             understands; upgrade Latchkey",
            path.display()
        )));
    }
    for migration in &MIGRATIONS[version as usize..] {
        tx.execute_batch(migration).map_err(migrating)?;
    }
    tx.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {known};"
    ))
    .map_err(migrating)?;
    tx.commit().map_err(migrating)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_file_is_created_at_the_latest_schema_and_reopens() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.db");
        drop(open_writer(&path).expect("creates"));
        let conn = open_writer(&path).expect("reopens");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .expect("reads version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        let synchronous: i64 = conn
            .query_row("PRAGMA synchronous", [], |row| row.get(0))
            .expect("reads synchronous");
        assert_eq!(synchronous, 2, "FULL");
    }

    #[test]
    fn another_sqlite_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("other.db");
        let other = Connection::open(&path).expect("opens");
        other
            .execute_batch("CREATE TABLE t (x)")
            .expect("creates a table");
        drop(other);
        let refused = open_writer(&path).map(|_| ());
        assert!(
            matches!(&refused, Err(StoreError::Corrupt(m)) if m.contains("not a Latchkey")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_file_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.db");
        let conn = open_writer(&path).expect("creates");
        conn.execute_batch("PRAGMA user_version = 99")
            .expect("bumps version");
        drop(conn);
        let refused = open_writer(&path).map(|_| ());
        assert!(
            matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("upgrade")),
            "{refused:?}"
        );
    }
}
