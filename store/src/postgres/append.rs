//! Appends to the PostgreSQL store. The usual append is one statement, one round trip: the
//! writer links the hash chain to the head it remembers for the stream, and the statement
//! (`rows::APPEND_ONE`, `APPEND_MANY`) writes only if that is still the head. Appends of
//! this process to one stream take turns, so they guess right; a wrong guess (another
//! process appended) costs a retry against the head the statement reported, and a stream
//! several processes keep racing for is then queued on a database lock. It must never
//! write an event whose link or revision does not follow the head it saw.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash as _, Hasher};
use std::sync::{Mutex, PoisonError};

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use uuid::Uuid;

use super::rows::{self, Head};
use super::schema::sql_error;
use crate::api::{AppendResult, ExpectedState, Hash, NewEvent, Position, StoreError, StreamName};
use crate::append_rules::{self, Placed};
use crate::hash_chain::{self, LinkFields};

/// Attempts made without the stream's database lock; later attempts take it first.
const UNLOCKED_ATTEMPTS: u32 = 3;

/// Attempts before giving up; only a stream many processes keep racing for gets near it.
const MAX_ATTEMPTS: u32 = 12;

/// Stream heads remembered; forgotten all at once when this many, which keeps memory
/// bounded without an LRU's bookkeeping on the hot path.
const MAX_CACHED_STREAMS: usize = 100_000;

/// How many turn locks the streams share (by hash). Two streams on one lock only wait for
/// each other now and then.
const TURNS: usize = 1024;

/// The heads this process last saw, to guess from. A wrong guess is caught by the append
/// statement, so a stale entry (another process appended) only costs a retry.
pub(super) struct Heads {
    cache: Mutex<HashMap<StreamName, Option<Head>>>,
    /// Appends of this process to one stream take turns: each then guesses the head the one
    /// before it wrote, instead of all guessing one head and all but one failing.
    turns: Vec<tokio::sync::Mutex<()>>,
}

impl Default for Heads {
    fn default() -> Self {
        Self {
            cache: Mutex::default(),
            turns: (0..TURNS).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }
}

impl Heads {
    fn get(&self, stream: &StreamName) -> Option<Option<Head>> {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(stream)
            .copied()
    }

    fn learn(&self, stream: &StreamName, head: Option<Head>) {
        let mut heads = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = heads.get_mut(stream) {
            *known = head;
            return;
        }
        if heads.len() >= MAX_CACHED_STREAMS {
            heads.clear();
        }
        heads.insert(stream.clone(), head);
    }

    fn forget(&self, stream: &StreamName) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(stream);
    }

    fn turn(&self, stream: &StreamName) -> &tokio::sync::Mutex<()> {
        let mut hasher = DefaultHasher::new();
        stream.as_str().hash(&mut hasher);
        &self.turns[(hasher.finish() % TURNS as u64) as usize]
    }
}

/// What the writer believes the stream's head to be.
#[derive(Clone, Copy)]
enum Guess {
    /// Nothing: read it.
    Unknown,
    /// Remembered from earlier appends; may be stale.
    Cached(Option<Head>),
}

/// How one attempt ended.
enum Step {
    Written {
        position: Position,
        head: Head,
    },
    /// The head was not the guessed one.
    Moved,
    /// The stream's real head does not satisfy the expectation.
    Refused(Option<Head>),
    /// An event id is taken: a replay, or a duplicate.
    IdTaken,
    /// Another append to the stream committed after the statement's snapshot.
    HeadRaced,
}

/// Appends `events` (already validated) to `stream` through `client`.
pub(super) async fn append(
    client: &mut deadpool_postgres::Object,
    heads: &Heads,
    stream: &StreamName,
    expected: ExpectedState,
    events: &[NewEvent],
) -> Result<AppendResult, StoreError> {
    let _turn = heads.turn(stream).lock().await;
    let mut guess = heads.get(stream).map_or(Guess::Unknown, Guess::Cached);
    for attempt in 1..=MAX_ATTEMPTS {
        let step = if attempt <= UNLOCKED_ATTEMPTS {
            let (head, fresh) = match guess {
                Guess::Unknown => (read_head(&*client, stream).await?, true),
                Guess::Cached(head) => (head, false),
            };
            if expected.is_satisfied_by(head.map(|h| h.revision)) {
                let batch = Batch::new(stream, head, events)?;
                classify(write(&*client, &batch).await, &batch)?
            } else if fresh {
                Step::Refused(head)
            } else {
                guess = Guess::Unknown;
                continue;
            }
        } else {
            write_locked(client, stream, expected, events).await?
        };
        match step {
            Step::Written { position, head } => {
                heads.learn(stream, Some(head));
                return Ok(AppendResult {
                    next_expected_revision: head.revision,
                    position,
                });
            }
            Step::Moved => {
                heads.forget(stream);
                guess = Guess::Unknown;
            }
            Step::Refused(head) => {
                heads.learn(stream, head);
                return match replay(&*client, stream, events).await? {
                    Ok(Some(original)) => Ok(original),
                    Ok(None) => Err(StoreError::WrongExpectedState {
                        stream: stream.clone(),
                        expected,
                        actual: head.map(|h| h.revision),
                    }),
                    Err(duplicate) => Err(duplicate),
                };
            }
            Step::IdTaken => match replay(&*client, stream, events).await? {
                Ok(Some(original)) => return Ok(original),
                Err(duplicate) => return Err(duplicate),
                // The conflicting append rolled back after all; try again.
                Ok(None) => guess = Guess::Unknown,
            },
            Step::HeadRaced => {
                heads.forget(stream);
                guess = Guess::Unknown;
            }
        }
    }
    Err(StoreError::Unavailable(format!(
        "the append to stream {stream} kept colliding with concurrent appends; retry it with \
         the same event ids"
    )))
}

/// The fallback for a stream several processes keep racing for: queue on its lock, then
/// read the head and write behind it. Appends of processes not yet falling back can still
/// get in between; that is one more retry.
async fn write_locked(
    client: &mut deadpool_postgres::Object,
    stream: &StreamName,
    expected: ExpectedState,
    events: &[NewEvent],
) -> Result<Step, StoreError> {
    let failed = |e| unsure("the append failed", e);
    let tx = client.transaction().await.map_err(failed)?;
    let lock = tx.prepare_cached(rows::LOCK_STREAM).await.map_err(failed)?;
    tx.execute(&lock, &[&stream.as_str()])
        .await
        .map_err(failed)?;
    let head = read_head(&tx, stream).await?;
    if !expected.is_satisfied_by(head.map(|h| h.revision)) {
        // Dropping `tx` rolls it back.
        return Ok(Step::Refused(head));
    }
    let batch = Batch::new(stream, head, events)?;
    let step = classify(write(&tx, &batch).await, &batch)?;
    if matches!(step, Step::Written { .. }) {
        tx.commit().await.map_err(failed)?;
    }
    Ok(step)
}

/// The rows of one append, linked to the head it guessed.
struct Batch<'a> {
    stream: &'a StreamName,
    guessed: Option<Head>,
    recorded_at: DateTime<Utc>,
    events: &'a [NewEvent],
    revisions: Vec<i64>,
    hashes: Vec<Hash>,
}

impl<'a> Batch<'a> {
    fn new(
        stream: &'a StreamName,
        guessed: Option<Head>,
        events: &'a [NewEvent],
    ) -> Result<Self, StoreError> {
        let first = guessed.map_or(0, |h| h.revision + 1);
        let last = first
            .checked_add(events.len() as u64 - 1)
            .filter(|&last| i64::try_from(last).is_ok())
            .ok_or_else(|| {
                StoreError::InvalidAppend(format!(
                    "stream {stream} cannot take {} more events",
                    events.len()
                ))
            })?;
        // A stream's clock never runs backwards, even across servers whose clocks differ.
        let now = hash_chain::truncate_to_micros(Utc::now());
        let recorded_at = guessed.map_or(now, |h| now.max(h.recorded_at));
        let mut prev = guessed.map(|h| h.hash);
        let mut hashes = Vec::with_capacity(events.len());
        for (event, revision) in events.iter().zip(first..=last) {
            let hash = hash_chain::link(
                prev.as_ref(),
                &LinkFields {
                    stream,
                    revision,
                    id: event.id,
                    event_type: &event.event_type,
                    schema_version: event.schema_version,
                    payload: &event.payload,
                    metadata: &event.metadata,
                    recorded_at,
                },
            );
            hashes.push(hash);
            prev = Some(hash);
        }
        Ok(Self {
            stream,
            guessed,
            recorded_at,
            events,
            // Fits: `last` does.
            revisions: (first..=last).map(|r| r as i64).collect(),
            hashes,
        })
    }

    fn last(&self) -> Head {
        let last = self.events.len() - 1;
        Head {
            revision: self.revisions[last] as u64,
            hash: self.hashes[last],
            recorded_at: self.recorded_at,
        }
    }

    /// The hash each event links to: the guessed head's, then each other's.
    fn prev_hashes(&self) -> Vec<Option<&[u8]>> {
        std::iter::once(self.guessed.as_ref().map(|h| &h.hash.0[..]))
            .chain(self.hashes.iter().map(|h| Some(&h.0[..])))
            .take(self.events.len())
            .collect()
    }
}

/// Runs `rows::APPEND_ONE` or `APPEND_MANY` for `batch`; returns the rows written.
async fn write<C: GenericClient>(
    client: &C,
    batch: &Batch<'_>,
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let guessed_revision = batch.guessed.map(|h| h.revision as i64);
    let guessed_hash = batch.guessed.as_ref().map(|h| &h.hash.0[..]);
    let head: [&(dyn ToSql + Sync); 4] = [
        &batch.stream.as_str(),
        &guessed_revision,
        &guessed_hash,
        &batch.recorded_at,
    ];
    let prev_hashes = batch.prev_hashes();
    if let [event] = batch.events {
        let version = i64::from(event.schema_version);
        let statement = client.prepare_cached(rows::APPEND_ONE).await?;
        let params: [&(dyn ToSql + Sync); 10] = [
            &event.id,
            &batch.revisions[0],
            &event.event_type,
            &version,
            &event.metadata.actor,
            &event.metadata.correlation_id,
            &event.metadata.causation_id,
            &prev_hashes[0],
            &&batch.hashes[0].0[..],
            &event.payload,
        ];
        let all: Vec<&(dyn ToSql + Sync)> = head.into_iter().chain(params).collect();
        return client.query(&statement, &all).await;
    }
    let events = batch.events;
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<i64> = events.iter().map(|e| i64::from(e.schema_version)).collect();
    let actors: Vec<&str> = events.iter().map(|e| e.metadata.actor.as_str()).collect();
    let correlations: Vec<Uuid> = events.iter().map(|e| e.metadata.correlation_id).collect();
    let causations: Vec<Option<Uuid>> = events.iter().map(|e| e.metadata.causation_id).collect();
    let hashes: Vec<&[u8]> = batch.hashes.iter().map(|h| &h.0[..]).collect();
    let payloads: Vec<&[u8]> = events.iter().map(|e| e.payload.as_slice()).collect();
    let statement = client.prepare_cached(rows::APPEND_MANY).await?;
    let params: [&(dyn ToSql + Sync); 10] = [
        &ids,
        &batch.revisions,
        &types,
        &versions,
        &actors,
        &correlations,
        &causations,
        &prev_hashes,
        &hashes,
        &payloads,
    ];
    let all: Vec<&(dyn ToSql + Sync)> = head.into_iter().chain(params).collect();
    client.query(&statement, &all).await
}

/// Turns what `write` returned into the attempt's outcome.
fn classify(
    result: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>,
    batch: &Batch<'_>,
) -> Result<Step, StoreError> {
    let written = match result {
        Ok(rows) => rows,
        Err(e) => {
            let unique = e
                .as_db_error()
                .filter(|db| *db.code() == SqlState::UNIQUE_VIOLATION)
                .and_then(|db| db.constraint().map(str::to_owned));
            return match unique.as_deref() {
                Some("events_event_id_key") => Ok(Step::IdTaken),
                Some("events_stream_revision_key") => Ok(Step::HeadRaced),
                _ => Err(unsure("the append failed", e)),
            };
        }
    };
    if written.is_empty() {
        return Ok(Step::Moved);
    }
    // The events of one append share a transaction, and their sequence follows revisions.
    let mut last = None;
    for row in &written {
        let position = rows::position(row, 0, 1)?;
        last = last.max(Some(position));
    }
    match last {
        Some(position) if written.len() == batch.events.len() => Ok(Step::Written {
            position,
            head: batch.last(),
        }),
        _ => Err(StoreError::Corrupt(format!(
            "an append of {} events to stream {} wrote {}",
            batch.events.len(),
            batch.stream,
            written.len()
        ))),
    }
}

/// An error after which the append may or may not have been committed.
fn unsure(context: &str, e: tokio_postgres::Error) -> StoreError {
    match sql_error(context, e) {
        StoreError::Unavailable(reason) => StoreError::Unavailable(format!(
            "{reason}; it may or may not have been written: retry it with the same event ids"
        )),
        other => other,
    }
}

async fn read_head<C: GenericClient>(
    client: &C,
    stream: &StreamName,
) -> Result<Option<Head>, StoreError> {
    let reading = |e| sql_error(&format!("cannot read the head of stream {stream}"), e);
    let statement = client.prepare_cached(rows::HEAD).await.map_err(reading)?;
    match client
        .query_opt(&statement, &[&stream.as_str()])
        .await
        .map_err(reading)?
    {
        Some(row) => rows::decode_head(&row).map(Some),
        None => Ok(None),
    }
}

/// Whether `events` replay an earlier append (see `append_rules::replay`).
async fn replay<C: GenericClient>(
    client: &C,
    stream: &StreamName,
    events: &[NewEvent],
) -> Result<Result<Option<AppendResult>, StoreError>, StoreError> {
    let looking = |e| sql_error("cannot look up earlier appends of these event ids", e);
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let statement = client
        .prepare_cached(rows::FIND_IDS)
        .await
        .map_err(looking)?;
    let found = client.query(&statement, &[&ids]).await.map_err(looking)?;
    let mut placed = HashMap::with_capacity(found.len());
    for row in &found {
        let position = rows::position(row, 3, 4)?;
        let damaged = || {
            StoreError::Corrupt(format!(
                "the event at position {position} has an unreadable id, stream or revision"
            ))
        };
        let id: Uuid = row.try_get(0).map_err(|_| damaged())?;
        let stream: String = row.try_get(1).map_err(|_| damaged())?;
        let revision: i64 = row.try_get(2).map_err(|_| damaged())?;
        let revision = u64::try_from(revision).map_err(|_| damaged())?;
        placed.insert(
            id,
            Placed {
                stream,
                revision,
                position,
            },
        );
    }
    append_rules::replay(stream, events, |id| Ok::<_, StoreError>(placed.remove(&id)))
}
