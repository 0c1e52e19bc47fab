//! Turning stored rows back into `RecordedEvent`s. Every column is checked, so a damaged row
//! surfaces as `StoreError::Corrupt` naming its position; it must never panic or guess.

use chrono::DateTime;
use rusqlite::types::ValueRef;
use rusqlite::Row;
use uuid::Uuid;

use crate::api::{EventMetadata, Hash, Position, RecordedEvent, StoreError, StreamName};

/// The columns `decode` expects, in its order.
macro_rules! columns {
    () => {
        "position, event_id, stream, revision, event_type, schema_version, actor, \
         correlation_id, causation_id, recorded_at, prev_hash, hash, payload"
    };
}

const COLUMNS: &str = columns!();

// `LIMIT (SELECT ?n)`, not `LIMIT ?n`: SQLite 3.54 re-prepares a statement whose LIMIT is a
// bare parameter every time the parameter changes, which cost about a tenth of the server's
// CPU under load; a scalar subquery keeps the cached plan.
pub(super) const READ_ALL: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE position >= ?1 ORDER BY position LIMIT (SELECT ?2)"
);

pub(super) const READ_STREAM: &str = concat!(
    "SELECT ",
    columns!(),
    " FROM events WHERE stream = ?1 AND revision >= ?2 ORDER BY revision LIMIT (SELECT ?3)"
);

pub(super) fn decode(row: &Row<'_>) -> Result<RecordedEvent, StoreError> {
    let seq = integer(row, 0, 0)?;
    let stream = StreamName::new(text(row, 2, seq)?).map_err(|_| column_error(seq, 2))?;
    let schema_version = u32::try_from(integer(row, 5, seq)?).map_err(|_| column_error(seq, 5))?;
    let recorded_at = i64::try_from(integer(row, 9, seq)?)
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .ok_or_else(|| column_error(seq, 9))?;
    Ok(RecordedEvent {
        id: uuid(row, 1, seq)?,
        stream,
        revision: integer(row, 3, seq)?,
        position: Position::new(seq, seq),
        event_type: text(row, 4, seq)?.to_owned(),
        schema_version,
        payload: blob(row, 12, seq)?.to_vec(),
        metadata: EventMetadata {
            actor: text(row, 6, seq)?.to_owned(),
            correlation_id: uuid(row, 7, seq)?,
            causation_id: optional(row, 8, seq, uuid)?,
        },
        recorded_at,
        prev_hash: optional(row, 10, seq, hash)?,
        hash: hash(row, 11, seq)?,
    })
}

pub(super) fn column_error(seq: u64, column: usize) -> StoreError {
    let name = COLUMNS.split(", ").nth(column).unwrap_or("column");
    StoreError::Corrupt(format!(
        "the event at position {seq} has an unreadable {name}"
    ))
}

fn value<'r>(row: &'r Row<'_>, column: usize, seq: u64) -> Result<ValueRef<'r>, StoreError> {
    row.get_ref(column).map_err(|_| column_error(seq, column))
}

/// A non-negative integer column; stored integers are never negative.
pub(super) fn integer(row: &Row<'_>, column: usize, seq: u64) -> Result<u64, StoreError> {
    value(row, column, seq)?
        .as_i64()
        .ok()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| column_error(seq, column))
}

fn text<'r>(row: &'r Row<'_>, column: usize, seq: u64) -> Result<&'r str, StoreError> {
    value(row, column, seq)?
        .as_str()
        .map_err(|_| column_error(seq, column))
}

fn blob<'r>(row: &'r Row<'_>, column: usize, seq: u64) -> Result<&'r [u8], StoreError> {
    value(row, column, seq)?
        .as_blob()
        .map_err(|_| column_error(seq, column))
}

fn uuid(row: &Row<'_>, column: usize, seq: u64) -> Result<Uuid, StoreError> {
    Uuid::from_slice(blob(row, column, seq)?).map_err(|_| column_error(seq, column))
}

pub(super) fn hash(row: &Row<'_>, column: usize, seq: u64) -> Result<Hash, StoreError> {
    <[u8; 32]>::try_from(blob(row, column, seq)?)
        .map(Hash)
        .map_err(|_| column_error(seq, column))
}

fn optional<T>(
    row: &Row<'_>,
    column: usize,
    seq: u64,
    read: fn(&Row<'_>, usize, u64) -> Result<T, StoreError>,
) -> Result<Option<T>, StoreError> {
    match value(row, column, seq)? {
        ValueRef::Null => Ok(None),
        _ => read(row, column, seq).map(Some),
    }
}
