//! Snapshots of aggregate states whose streams grow long (a computer's stream gains about a
//! dozen events per session, for years): the state as of one revision, so loading it after a
//! restart reads only the events after that revision. A snapshot is derived data: it names
//! the event it was taken at (revision and event id), and one that does not match the log
//! (another version of the state's form, a log restored from an older backup) is ignored and
//! the state is folded from the events again. It never holds a secret: aggregate states hold
//! none.

use latchkey_sql::{params, OptionalExtension, SqlError};
use latchkey_sql::{Durable, Place};
use uuid::Uuid;

/// A stored snapshot.
pub struct Snapshot {
    /// The form of the state (the aggregate's snapshot version).
    pub version: u32,
    pub revision: u64,
    /// The id of the event at `revision`.
    pub event_id: Uuid,
    pub state: Vec<u8>,
}

/// One SQLite file (`snapshots.db`) or a table in the shared PostgreSQL database.
pub struct SnapshotStore {
    db: Durable,
}

impl SnapshotStore {
    /// Blocking.
    pub fn open(place: impl Into<Place>) -> Result<Self, SqlError> {
        let db = Durable::open(
            place.into(),
            "CREATE TABLE IF NOT EXISTS snapshots (
                 stream TEXT PRIMARY KEY,
                 version INTEGER NOT NULL,
                 revision INTEGER NOT NULL,
                 event_id TEXT NOT NULL,
                 state BLOB NOT NULL
             ) WITHOUT ROWID;",
        )?;
        Ok(Self { db })
    }

    /// The snapshot of `stream`, if there is one. Blocking.
    pub fn get(&self, stream: &str) -> Result<Option<Snapshot>, SqlError> {
        let conn = self.db.lock();
        let mut statement = conn.prepare_cached(
            "SELECT version, revision, event_id, state FROM snapshots WHERE stream = ?1",
        )?;
        let row: Option<(i64, i64, String, Vec<u8>)> = statement
            .query_row(params![stream], |row| {
                Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
            })
            .optional()?;
        Ok(row.and_then(|(version, revision, event_id, state)| {
            Some(Snapshot {
                version: u32::try_from(version).ok()?,
                revision: u64::try_from(revision).ok()?,
                event_id: Uuid::parse_str(&event_id).ok()?,
                state,
            })
        }))
    }

    /// Keeps `snapshot` for `stream` unless a newer one of the same form is there (several
    /// servers may take one at about the same time). Blocking.
    pub fn put(&self, stream: &str, snapshot: &Snapshot) -> Result<(), SqlError> {
        self.db.lock().execute(
            "INSERT INTO snapshots (stream, version, revision, event_id, state)
             VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (stream) DO UPDATE
             SET version = excluded.version, revision = excluded.revision,
                 event_id = excluded.event_id, state = excluded.state
             WHERE excluded.revision > snapshots.revision
                OR excluded.version <> snapshots.version",
            params![
                stream,
                i64::from(snapshot.version),
                snapshot.revision as i64,
                snapshot.event_id.to_string(),
                snapshot.state.as_slice(),
            ],
        )?;
        Ok(())
    }
}
