//! The PostgreSQL store's queries and the decoding of what they return. Every column is
//! checked, so a damaged row surfaces as `StoreError::Corrupt` naming its position; it must
//! never panic or guess.

use chrono::{DateTime, Utc};
use tokio_postgres::types::FromSql;
use tokio_postgres::Row;
use uuid::Uuid;

use crate::api::{EventMetadata, Hash, Position, RecordedEvent, StoreError, StreamName};

/// The columns `decode` expects, in its order. The text form of the transaction id is renamed
/// so that `ORDER BY transaction_id` sorts by the `xid8` column, not by its text (where
/// "1137" < "812").
macro_rules! columns {
    () => {
        "transaction_id::text AS commit, position, event_id, stream, revision, event_type, \
         schema_version, actor, correlation_id, causation_id, recorded_at, prev_hash, hash, \
         payload"
    };
}

const COLUMN_NAMES: [&str; 14] = [
    "transaction_id",
    "position",
    "event_id",
    "stream",
    "revision",
    "event_type",
    "schema_version",
    "actor",
    "correlation_id",
    "causation_id",
    "recorded_at",
    "prev_hash",
    "hash",
    "payload",
];

/// A `Position` as query parameters: `$1` the transaction id (as text: `xid8` has no binary
/// mapping here and may exceed `i64`), `$2` the sequence.
///
/// The reader only sees transactions below the oldest one still running
/// (`pg_snapshot_xmin`): every event that may still commit belongs to a transaction at or
/// above it, so its position is above everything returned and no reader can pass it by.
/// The snapshot is the statement's own, the one deciding which rows it sees. The price: any
/// transaction holding an id, in any database of the server, holds readers back until it
/// ends, so long transactions belong elsewhere.
pub(super) const READ_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM latchkey_store.events
      WHERE (transaction_id, position) > ($1::text::xid8, $2)
        AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
      ORDER BY transaction_id, position
      LIMIT $3"
);

pub(super) const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM latchkey_store.events
      WHERE stream = $1 AND revision >= $2
      ORDER BY revision
      LIMIT $3"
);

/// Whether events follow a position, and if so whether a reader may see them now: the first
/// event after it, in `$all` order, is readable if its transaction is below the oldest one
/// still running; if it is not, no later one is either (they are ordered by transaction id),
/// so the events are committed but held back. No row: nothing follows.
///
/// Written as the first row of an ordered scan, which is always a few pages of the primary
/// key. The earlier form, two `EXISTS`, each with the position and the snapshot bound in its
/// filter, was planned as a sequential scan of the whole table once PostgreSQL switched to a
/// generic plan for it (it cannot tell how selective the bounds are without their values),
/// and it runs every time a reader waits for new events.
pub(super) const PROBE: &str = "
    SELECT transaction_id < pg_snapshot_xmin(pg_current_snapshot())
      FROM latchkey_store.events
     WHERE (transaction_id, position) > ($1::text::xid8, $2)
     ORDER BY transaction_id, position
     LIMIT 1";

pub(super) const FIND_IDS: &str = "
    SELECT event_id, stream, revision, transaction_id::text, position
      FROM latchkey_store.events WHERE event_id = ANY($1)";

pub(super) const HEAD: &str = "
    SELECT revision, hash, recorded_at FROM latchkey_store.events
     WHERE stream = $1 ORDER BY revision DESC LIMIT 1";

/// Taken by an append that lost the race for a stream several times, before it reads the
/// head: appends that lost from several processes then queue instead of colliding again.
pub(super) const LOCK_STREAM: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// One append in one statement: one round trip, and one transaction when run on its own.
/// The writer computed the hash chain from the head it believes the stream has (`$2`, `$3`;
/// NULL for no stream) and its recorded-at (`$4`); the events follow from `$5`, as arrays
/// (`APPEND_MANY`) or as single values (`APPEND_ONE`, cheaper to run). The statement queues
/// on the stream's lock, then inserts only if its snapshot shows that head, and returns the
/// transaction id and position of each event written: none if the guess was wrong.
///
/// The snapshot was taken before the statement waited for the lock, so it misses a writer
/// that committed meanwhile; but that writer took the revision this append wants, and the
/// unique (stream, revision) key rejects the insert. That is also why a stream's events
/// appear in `$all` in revision order: a write only succeeds if its statement began after
/// the previous write to the stream committed, so its transaction id, assigned by the
/// insert, is higher. The lock makes appends to one stream queue rather than collide, and
/// lets a `LOCK_STREAM` holder, which reads the head after it got the lock, go first.
macro_rules! append {
    ($rows:literal) => {
        concat!(
            "WITH locked AS MATERIALIZED (
                 SELECT pg_advisory_xact_lock(hashtextextended($1, 0))
             )
             INSERT INTO latchkey_store.events (event_id, stream, revision, event_type,
                 schema_version, actor, correlation_id, causation_id, recorded_at, prev_hash,
                 hash, payload) ",
            $rows,
            " WHERE EXISTS (
                   SELECT FROM locked
                     LEFT JOIN LATERAL (
                          SELECT revision, hash FROM latchkey_store.events
                           WHERE stream = $1 ORDER BY revision DESC LIMIT 1
                     ) AS head ON true
                    WHERE head.revision IS NOT DISTINCT FROM $2::bigint
                      AND head.hash IS NOT DISTINCT FROM $3::bytea)
             RETURNING transaction_id::text, position"
        )
    };
}

pub(super) const APPEND_ONE: &str = append!(
    "SELECT $5::uuid, $1, $6::bigint, $7::text, $8::bigint, $9::text, $10::uuid, $11::uuid,
            $4::timestamptz, $12::bytea, $13::bytea, $14::bytea"
);

pub(super) const APPEND_MANY: &str = append!(
    "SELECT e.event_id, $1, e.revision, e.event_type, e.schema_version, e.actor,
            e.correlation_id, e.causation_id, $4::timestamptz, e.prev_hash, e.hash, e.payload
       FROM unnest($5::uuid[], $6::bigint[], $7::text[], $8::bigint[], $9::text[],
                   $10::uuid[], $11::uuid[], $12::bytea[], $13::bytea[], $14::bytea[])
            AS e(event_id, revision, event_type, schema_version, actor, correlation_id,
                 causation_id, prev_hash, hash, payload)"
);

/// A stream's last event: what its next event links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Head {
    pub revision: u64,
    pub hash: Hash,
    pub recorded_at: DateTime<Utc>,
}

/// Where `position` has been seen, for error messages.
fn column_error(at: Option<Position>, column: usize) -> StoreError {
    let name = COLUMN_NAMES.get(column).copied().unwrap_or("column");
    match at {
        Some(position) => StoreError::Corrupt(format!(
            "the event at position {position} has an unreadable {name}"
        )),
        None => StoreError::Corrupt(format!("an event has an unreadable {name}")),
    }
}

fn get<'r, T: FromSql<'r>>(
    row: &'r Row,
    column: usize,
    at: Option<Position>,
) -> Result<T, StoreError> {
    row.try_get(column).map_err(|_| column_error(at, column))
}

fn unsigned(row: &Row, column: usize, at: Option<Position>) -> Result<u64, StoreError> {
    u64::try_from(get::<i64>(row, column, at)?).map_err(|_| column_error(at, column))
}

fn hash(bytes: &[u8]) -> Option<Hash> {
    <[u8; 32]>::try_from(bytes).ok().map(Hash)
}

/// Reads a position from a `transaction_id::text` and a `position` column.
pub(super) fn position(row: &Row, commit: usize, prepare: usize) -> Result<Position, StoreError> {
    let transaction: &str = get(row, commit, None)?;
    let transaction = transaction
        .parse::<u64>()
        .map_err(|_| column_error(None, 0))?;
    let sequence =
        u64::try_from(get::<i64>(row, prepare, None)?).map_err(|_| column_error(None, 1))?;
    Ok(Position::new(transaction, sequence))
}

pub(super) fn decode(row: &Row) -> Result<RecordedEvent, StoreError> {
    let position = position(row, 0, 1)?;
    let at = Some(position);
    let stream = StreamName::new(get::<&str>(row, 3, at)?).map_err(|_| column_error(at, 3))?;
    let schema_version = u32::try_from(get::<i64>(row, 6, at)?).map_err(|_| column_error(at, 6))?;
    let prev_hash = match get::<Option<&[u8]>>(row, 11, at)? {
        None => None,
        Some(bytes) => Some(hash(bytes).ok_or_else(|| column_error(at, 11))?),
    };
    Ok(RecordedEvent {
        id: get::<Uuid>(row, 2, at)?,
        stream,
        revision: unsigned(row, 4, at)?,
        position,
        event_type: get::<String>(row, 5, at)?,
        schema_version,
        payload: get::<Vec<u8>>(row, 13, at)?,
        metadata: EventMetadata {
            actor: get::<String>(row, 7, at)?,
            correlation_id: get::<Uuid>(row, 8, at)?,
            causation_id: get::<Option<Uuid>>(row, 9, at)?,
        },
        recorded_at: get::<DateTime<Utc>>(row, 10, at)?,
        prev_hash,
        hash: hash(get::<&[u8]>(row, 12, at)?).ok_or_else(|| column_error(at, 12))?,
    })
}

/// Decodes a head from the `revision, hash, recorded_at` columns of `HEAD`.
pub(super) fn decode_head(row: &Row) -> Result<Head, StoreError> {
    let damaged =
        |what: &str| StoreError::Corrupt(format!("a stream's last event has an unreadable {what}"));
    let revision = row
        .try_get::<_, i64>(0)
        .ok()
        .and_then(|r| u64::try_from(r).ok())
        .ok_or_else(|| damaged("revision"))?;
    let hash = row
        .try_get::<_, &[u8]>(1)
        .ok()
        .and_then(hash)
        .ok_or_else(|| damaged("hash"))?;
    let recorded_at = row
        .try_get::<_, DateTime<Utc>>(2)
        .map_err(|_| damaged("recorded_at"))?;
    Ok(Head {
        revision,
        hash,
        recorded_at,
    })
}
