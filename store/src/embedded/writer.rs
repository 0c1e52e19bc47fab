//! The embedded store's single writer: one OS thread owning the read-write connection,
//! committing every append waiting for it in one transaction (group commit), so one fsync
//! covers many appends and commit order is position order. It must never answer an append
//! before the transaction holding it is durable.

use std::collections::HashMap;
use std::ffi::c_int;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{params, Connection, ErrorCode};
use tokio::sync::{oneshot, watch};
use uuid::Uuid;

use super::rows;
use crate::api::{AppendResult, ExpectedState, Hash, NewEvent, Position, StoreError, StreamName};
use crate::append_rules::{self, Placed};
use crate::hash_chain::{self, LinkFields};

/// A group commit takes at most this many events, so one transaction stays short enough
/// that the first caller in it is not kept waiting behind a flood.
const MAX_BATCH_EVENTS: usize = 4096;

/// How long a commit may wait for the callers the previous commit answered (see `gather`).
/// Well under one fsync, which is what the wait saves.
const GATHER_WINDOW: Duration = Duration::from_micros(200);

/// The WAL size, in pages, past which the writer checkpoints it (128 MiB of 4 KiB pages).
/// Far above SQLite's default of 1000 because a page rewritten by many commits between two
/// checkpoints (a stream's last index page, the table's last page) is copied to the
/// database file only once: under load this was worth a quarter of the append throughput.
#[cfg(not(test))]
const CHECKPOINT_FRAMES: i32 = 32_768;
/// Small enough for unit tests to cross it.
#[cfg(test)]
const CHECKPOINT_FRAMES: i32 = 64;

/// Stream heads remembered between batches; forgotten all at once when this many, which
/// keeps memory bounded without an LRU's bookkeeping on the hot path. Small: every session
/// is a stream of its own, written for a few seconds and then never again, so a larger map
/// only grew with the past (about 130 bytes per session, up to 13 MiB), while the streams
/// written often (tenants, technicians, computers in use) come back after each clearing
/// at the cost of one indexed look-up each.
const MAX_CACHED_STREAMS: usize = 10_000;

const INSERT: &str = "INSERT INTO events (position, event_id, stream, revision, event_type, \
     schema_version, actor, correlation_id, causation_id, recorded_at, prev_hash, hash, payload) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)";
const STREAM_HEAD: &str =
    "SELECT revision, hash FROM events WHERE stream = ?1 ORDER BY revision DESC LIMIT 1";
const FIND_ID: &str = "SELECT stream, revision, position FROM events WHERE event_id = ?1";
pub(super) const LAST_POSITION: &str = "SELECT coalesce(max(position), 0) FROM events";

pub(super) struct AppendRequest {
    pub stream: StreamName,
    pub expected: ExpectedState,
    pub events: Vec<NewEvent>,
    pub reply: oneshot::Sender<Result<AppendResult, StoreError>>,
}

/// Counts kept by the writer, cheap enough to keep always.
#[derive(Default)]
pub(super) struct Counters {
    pub commits: AtomicU64,
    pub events: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct StreamHead {
    revision: u64,
    hash: Hash,
}

/// A failure that spoils the whole transaction (I/O, a full disk, a wrong cache): every
/// append of the batch is answered `Unavailable` (`Full` when the disk is full) and nothing
/// of it is kept. The writer goes on: the next batch tries again, so appends succeed once
/// the disk has room.
struct Fatal {
    reason: String,
    full: bool,
}

impl Fatal {
    fn new(reason: String) -> Self {
        Self {
            reason,
            full: false,
        }
    }
}

impl From<rusqlite::Error> for Fatal {
    fn from(e: rusqlite::Error) -> Self {
        Self {
            full: e.sqlite_error_code() == Some(ErrorCode::DiskFull),
            reason: e.to_string(),
        }
    }
}

/// Takes `first` and whatever else is queued into `batch`, up to `MAX_BATCH_EVENTS`.
///
/// Callers answered by the last commit usually come straight back with their next append.
/// Committing without them would split steady writers into two cohorts that alternate,
/// each paying a full fsync for half the batch; so while fewer requests than last time
/// have arrived, wait up to `GATHER_WINDOW` for the rest.
fn gather(
    requests: &Receiver<AppendRequest>,
    first: AppendRequest,
    answered_last_time: usize,
    batch: &mut Vec<AppendRequest>,
) {
    let mut events = first.events.len();
    batch.push(first);
    let deadline = Instant::now() + GATHER_WINDOW;
    while events < MAX_BATCH_EVENTS {
        let next = match requests.try_recv() {
            Ok(request) => Some(request),
            Err(TryRecvError::Empty) if batch.len() < answered_last_time => {
                let now = Instant::now();
                if now >= deadline {
                    None
                } else {
                    requests.recv_timeout(deadline - now).ok()
                }
            }
            Err(_) => None,
        };
        match next {
            Some(request) => {
                events += request.events.len();
                batch.push(request);
            }
            None => break,
        }
    }
}

struct Writer {
    conn: Connection,
    /// Frames in the WAL after the last commit, as SQLite's WAL hook reports them.
    wal_frames: Arc<AtomicI32>,
    /// The sequence number of the last event written in the open transaction or before.
    head: u64,
    /// `None` records a stream known not to exist.
    streams: HashMap<StreamName, Option<StreamHead>>,
    last_recorded_at: DateTime<Utc>,
    published: watch::Sender<u64>,
    counters: Arc<Counters>,
}

pub(super) fn spawn(
    conn: Connection,
    head: u64,
    published: watch::Sender<u64>,
    counters: Arc<Counters>,
    requests: Receiver<AppendRequest>,
) -> Result<JoinHandle<()>, StoreError> {
    let mut conn = conn;
    let wal_frames = Arc::new(AtomicI32::new(0));
    let frames = Arc::clone(&wal_frames);
    // Replaces SQLite's automatic checkpoint, which would run inside COMMIT and make the
    // batch's callers wait for it.
    conn.wal_hook(Some(move |_: &mut Wal, count: c_int| {
        frames.store(count, Ordering::Relaxed);
        Ok(())
    }))
    .map_err(|e| StoreError::Unavailable(format!("cannot watch the write-ahead log: {e}")))?;
    let writer = Writer {
        conn,
        wal_frames,
        head,
        streams: HashMap::new(),
        last_recorded_at: DateTime::<Utc>::MIN_UTC,
        published,
        counters,
    };
    std::thread::Builder::new()
        .name("latchkey-store-writer".into())
        .spawn(move || writer.run(requests))
        .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))
}

impl Writer {
    /// Ends when every sender is gone, i.e. when the last store handle was dropped.
    fn run(mut self, requests: Receiver<AppendRequest>) {
        let mut batch: Vec<AppendRequest> = Vec::new();
        let mut outcomes = Vec::new();
        let mut answered_last_time = 0;
        while let Ok(first) = requests.recv() {
            gather(&requests, first, answered_last_time, &mut batch);
            answered_last_time = batch.len();
            self.commit_batch(&batch, &mut outcomes);
            for (request, outcome) in batch.drain(..).zip(outcomes.drain(..)) {
                // A caller that stopped waiting still had its append applied; a retry with
                // the same event ids will replay it.
                let _ = request.reply.send(outcome);
            }
            self.checkpoint_if_due();
        }
    }

    /// Copies the WAL back into the database file once it has grown past
    /// `CHECKPOINT_FRAMES`, after the batch's callers were answered so they never wait for
    /// it. PASSIVE never blocks on readers; a WAL a long reader pins is simply tried again
    /// after the next commit.
    fn checkpoint_if_due(&mut self) {
        if self.wal_frames.load(Ordering::Relaxed) < CHECKPOINT_FRAMES {
            return;
        }
        // A failure here is not the callers' (they were answered); a broken connection
        // shows itself at the next BEGIN.
        let _ = self
            .conn
            .wal_checkpoint_v2(Some(rusqlite::MAIN_DB), CheckpointMode::PASSIVE);
        self.wal_frames.store(0, Ordering::Relaxed);
    }

    fn commit_batch(
        &mut self,
        batch: &[AppendRequest],
        outcomes: &mut Vec<Result<AppendResult, StoreError>>,
    ) {
        let before = self.head;
        match self.try_commit_batch(batch, outcomes) {
            Ok(()) => {
                if self.head != before {
                    self.counters.commits.fetch_add(1, Ordering::Relaxed);
                    self.counters
                        .events
                        .fetch_add(self.head - before, Ordering::Relaxed);
                    // Before the replies, so a caller's next wait sees its own events.
                    self.published.send_replace(self.head);
                }
            }
            Err(Fatal { reason, full }) => {
                if !self.conn.is_autocommit() {
                    // If even this fails the connection is unusable and the next BEGIN says so.
                    let _ = self.conn.execute_batch("ROLLBACK");
                }
                self.streams.clear();
                self.head = before;
                outcomes.clear();
                // A failed COMMIT may still have reached the disk, so say "may"; the retry
                // the message suggests is safe because appends replay by event id.
                outcomes.extend(batch.iter().map(|_| {
                    Err(if full {
                        // Rolled back above, so nothing of it is on disk.
                        StoreError::Full(reason.clone())
                    } else {
                        StoreError::Unavailable(format!(
                            "the append failed and may not have been written ({reason}); \
                             retry it with the same event ids"
                        ))
                    })
                }));
            }
        }
    }

    fn try_commit_batch(
        &mut self,
        batch: &[AppendRequest],
        outcomes: &mut Vec<Result<AppendResult, StoreError>>,
    ) -> Result<(), Fatal> {
        self.begin()?;
        let recorded_at = hash_chain::truncate_to_micros(Utc::now()).max(self.last_recorded_at);
        for request in batch {
            let outcome = self.apply(request, recorded_at)?;
            outcomes.push(outcome);
        }
        execute(&self.conn, "COMMIT")?;
        self.last_recorded_at = recorded_at;
        Ok(())
    }

    fn begin(&mut self) -> Result<(), Fatal> {
        execute(&self.conn, "BEGIN IMMEDIATE")?;
        let last: i64 = self
            .conn
            .prepare_cached(LAST_POSITION)?
            .query_row([], |row| row.get(0))?;
        let last = u64::try_from(last)
            .map_err(|_| Fatal::new(format!("the last position {last} is negative")))?;
        if last != self.head {
            // Someone else wrote to the file: what we remember about streams is stale.
            self.streams.clear();
            self.head = last;
        }
        Ok(())
    }

    /// Applies one append inside the open transaction. The inner result is this append's
    /// own answer; a `Fatal` error aborts the whole batch.
    fn apply(
        &mut self,
        request: &AppendRequest,
        recorded_at: DateTime<Utc>,
    ) -> Result<Result<AppendResult, StoreError>, Fatal> {
        if request.events.is_empty() {
            // `append` rejects these before they get here; never write a headless result.
            return Ok(Err(StoreError::InvalidAppend(
                "an append needs at least one event".into(),
            )));
        }
        let head = self.stream_head(&request.stream)?;
        let actual = head.map(|h| h.revision);
        if !request.expected.is_satisfied_by(actual) {
            // Idempotency comes first: a retry of a committed append succeeds even though
            // the stream has moved on since.
            return Ok(match self.replay(request)? {
                Ok(Some(original)) => Ok(original),
                Ok(None) => Err(StoreError::WrongExpectedState {
                    stream: request.stream.clone(),
                    expected: request.expected,
                    actual,
                }),
                Err(duplicate) => Err(duplicate),
            });
        }
        let count = request.events.len() as u64;
        let first_revision = actual.map_or(0, |r| r + 1);
        let fits = |start: u64| {
            start
                .checked_add(count)
                .is_some_and(|end| end <= i64::MAX as u64)
        };
        if !fits(first_revision) || !fits(self.head + 1) {
            return Ok(Err(StoreError::InvalidAppend(format!(
                "stream {} cannot take {count} more events",
                request.stream
            ))));
        }
        // A single INSERT that fails leaves nothing behind on its own; only several need a
        // savepoint to be undone together.
        let several = count > 1;
        if several {
            execute(&self.conn, "SAVEPOINT append")?;
        }
        match insert(&self.conn, request, head, self.head, recorded_at) {
            Ok(new_head) => {
                if several {
                    execute(&self.conn, "RELEASE append")?;
                }
                self.head += count;
                self.remember(&request.stream, Some(new_head));
                Ok(Ok(AppendResult {
                    next_expected_revision: new_head.revision,
                    position: Position::new(self.head, self.head),
                }))
            }
            Err(e) if e.sqlite_error_code() == Some(ErrorCode::ConstraintViolation) => {
                if several {
                    execute(&self.conn, "ROLLBACK TO append")?;
                    execute(&self.conn, "RELEASE append")?;
                }
                match self.replay(request)? {
                    Ok(Some(original)) => Ok(Ok(original)),
                    Err(duplicate) => Ok(Err(duplicate)),
                    Ok(None) => Err(Fatal::new(format!(
                        "stream {} changed behind the writer's back",
                        request.stream
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    fn replay(
        &self,
        request: &AppendRequest,
    ) -> Result<Result<Option<AppendResult>, StoreError>, Fatal> {
        let mut find = self.conn.prepare_cached(FIND_ID)?;
        append_rules::replay(&request.stream, &request.events, |id: Uuid| {
            let mut rows = find.query([&id.as_bytes()[..]])?;
            let Some(row) = rows.next()? else {
                return Ok(None);
            };
            let position = rows::integer(row, 2, 0).map_err(|e| Fatal::new(e.to_string()))?;
            let revision =
                rows::integer(row, 1, position).map_err(|e| Fatal::new(e.to_string()))?;
            let stream: String = row.get(0)?;
            Ok(Some(Placed {
                stream,
                revision,
                position: Position::new(position, position),
            }))
        })
    }

    fn stream_head(&mut self, stream: &StreamName) -> Result<Option<StreamHead>, Fatal> {
        if let Some(head) = self.streams.get(stream) {
            return Ok(*head);
        }
        let mut query = self.conn.prepare_cached(STREAM_HEAD)?;
        let mut rows = query.query([stream.as_str()])?;
        let head = match rows.next()? {
            None => None,
            Some(row) => {
                let bad = |e: StoreError| Fatal::new(e.to_string());
                Some(StreamHead {
                    revision: rows::integer(row, 0, 0).map_err(bad)?,
                    hash: rows::hash(row, 1, 0).map_err(bad)?,
                })
            }
        };
        drop(rows);
        drop(query);
        self.remember(stream, head);
        Ok(head)
    }

    fn remember(&mut self, stream: &StreamName, head: Option<StreamHead>) {
        if let Some(cached) = self.streams.get_mut(stream) {
            *cached = head;
            return;
        }
        if self.streams.len() >= MAX_CACHED_STREAMS {
            self.streams.clear();
        }
        self.streams.insert(stream.clone(), head);
    }
}

/// Inserts the request's events after `head` (the stream's current last event) at the
/// positions following `last_position`; returns the stream's new head.
fn insert(
    conn: &Connection,
    request: &AppendRequest,
    head: Option<StreamHead>,
    last_position: u64,
    recorded_at: DateTime<Utc>,
) -> rusqlite::Result<StreamHead> {
    let mut statement = conn.prepare_cached(INSERT)?;
    let mut prev = head.map(|h| h.hash);
    let mut revision = head.map_or(0, |h| h.revision + 1);
    let micros = recorded_at.timestamp_micros();
    // The caller checked that every position and revision fits in an i64.
    let mut position = last_position as i64;
    for event in &request.events {
        position += 1;
        let hash = hash_chain::link(
            prev.as_ref(),
            &LinkFields {
                stream: &request.stream,
                revision,
                id: event.id,
                event_type: &event.event_type,
                schema_version: event.schema_version,
                payload: &event.payload,
                metadata: &event.metadata,
                recorded_at,
            },
        );
        statement.execute(params![
            position,
            &event.id.as_bytes()[..],
            request.stream.as_str(),
            revision as i64,
            event.event_type,
            event.schema_version,
            event.metadata.actor,
            &event.metadata.correlation_id.as_bytes()[..],
            event
                .metadata
                .causation_id
                .as_ref()
                .map(|id| &id.as_bytes()[..]),
            micros,
            prev.as_ref().map(|h| &h.0[..]),
            &hash.0[..],
            event.payload,
        ])?;
        prev = Some(hash);
        revision += 1;
    }
    Ok(StreamHead {
        revision: revision - 1,
        hash: prev.unwrap_or(Hash([0; 32])),
    })
}

fn execute(conn: &Connection, sql: &str) -> Result<(), Fatal> {
    conn.prepare_cached(sql)?.execute([])?;
    Ok(())
}
