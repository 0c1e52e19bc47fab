//! The KurrentDB (EventStoreDB) backend, through the official `kurrentdb` gRPC client. Built
//! only with the `kurrentdb` cargo feature; `open_url` reaches it for `kurrentdb://`,
//! `kurrentdb+discover://`, `esdb://` and `esdb+discover://` URLs (the client's own
//! connection-string format, e.g. `kurrentdb://admin:changeit@localhost:2113?tls=false`).
//!
//! How our model maps onto KurrentDB's:
//!
//! | ours | KurrentDB |
//! |---|---|
//! | stream, revision | stream, event number (both 0-based) |
//! | `Position { commit, prepare }` | the event's `$all` commit / prepare position, unchanged |
//! | event id | the event's id |
//! | event type, payload | event type; data, sent as `application/json` when it is JSON (byte for byte), else as binary |
//! | actor, correlation id, causation id, schema version, recorded at, prev hash, hash | the event's custom metadata, a JSON object (see [`StoredMetadata`]); the ids under KurrentDB's own `$correlationId` / `$causationId` keys |
//! | `ExpectedState` | checked here against the stream's last event, which the hash chain makes us read anyway; the server is then sent the exact state that read found (`NoStream` or `StreamRevision(n)`), so a concurrent writer surfaces as `WrongExpectedVersion` and we re-read and re-check |
//! | idempotent event ids, `DuplicateEventId` | KurrentDB dedupes ids only loosely and only per stream, so every id is also claimed in an index stream `$latchkey-event-id-<id>` before the append; a claim counts once the event it names is really at that place (see `lookup_id`) |
//! | `read_all` | a forward read of `$all` that skips system events (`$`-prefixed streams or types) |
//! | `wait_for_events_after` | a live subscription to `$all` from the position, resolved by the first non-system event after it, or after [`WAIT_POLL`] |
//!
//! The client runs on a multi-thread tokio runtime owned by the store, and every call goes
//! through it, so the store works from any caller: an actix current-thread runtime, a test
//! runtime, or a plain `block_on`.
//!
//! Requirements on the server: the connecting user must be allowed to read `$all` and to
//! read and write `$`-prefixed (system) streams, i.e. be an admin under the default ACLs (or
//! the server runs `--insecure`). Streams written through this store must never be deleted:
//! a soft-deleted stream restarts below its old revisions and its hash chain no longer
//! verifies.
//!
//! Limits, stated plainly:
//! - Claiming an id and appending the event are two writes (KurrentDB has no transaction
//!   across streams). A claim whose event is not (yet) where it says counts as unknown, so
//!   two writers that concurrently append the same id to *different* streams can both
//!   succeed if each checks while the other's event is still in flight. A retry of the same
//!   batch to the same stream stays idempotent even then: both writers append with the same
//!   exact expected revision, so the server lets only one batch land (it answers the other
//!   with `WrongExpectedVersion`, after which the re-check finds the batch, or with its own
//!   idempotent success).
//! - Event types starting with `$` are rejected (`InvalidAppend`): KurrentDB treats them as
//!   system events, which `read_all` must skip, so such an event could never be read back
//!   from `$all`.
//! - One append must fit KurrentDB's maximum append size (1 MiB by default), metadata
//!   included (a few hundred bytes per event).
//! - `$all` is gap-free for catch-up readers because KurrentDB has one writer (the leader)
//!   and only serves committed events in log order; every request here requires the leader.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use futures::{StreamExt, TryStreamExt};
use kurrentdb::{
    AppendToStreamOptions, Client, ClientSettings, CurrentRevision, EventData, ReadAllOptions,
    ReadStreamOptions, StreamPosition, StreamState, SubscribeToAllOptions, SubscriptionFilter,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::{
    AppendResult, EventMetadata, EventStore, ExpectedState, Hash, NewEvent, Position,
    RecordedEvent, StoreError, StreamName,
};
use crate::append_rules::{self, Placed};
use crate::hash_chain::{self, LinkFields};

/// Worker threads of the runtime the client runs on.
const WORKER_THREADS: usize = 2;

/// The index stream of one event id; `$`-prefixed, so it is a system stream that no
/// `StreamName` can name and `read_all` skips.
const ID_INDEX_PREFIX: &str = "$latchkey-event-id-";

/// The type of the events in the index streams.
const CLAIM_EVENT_TYPE: &str = "LatchkeyEventIdClaimed";

/// The most events one read request asks for; longer reads take several requests.
const READ_CHUNK: usize = 4096;

/// How long one read request may take before it counts as a failure.
const READ_DEADLINE: Duration = Duration::from_secs(60);

/// How long opening the store waits for the server to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest `wait_for_events_after` waits without seeing a commit.
pub const WAIT_POLL: Duration = Duration::from_secs(2);

/// How long `wait_for_events_after` pauses after its subscription failed, so a server that
/// is down is not hammered by callers that wait in a loop.
const WAIT_ERROR_BACKOFF: Duration = Duration::from_millis(500);

/// How many id lookups or claims one append runs at once.
const PARALLEL_LOOKUPS: usize = 32;

/// How often one append re-reads and retries after losing a race to concurrent writers.
const MAX_APPEND_ATTEMPTS: usize = 1000;

/// A connection to a KurrentDB server or cluster.
pub struct KurrentStore {
    client: Client,
    handle: tokio::runtime::Handle,
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
}

/// Connects to the store `url` names; `open_url` calls this.
pub async fn open(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    Ok(Arc::new(KurrentStore::connect(url).await?))
}

impl KurrentStore {
    /// Connects and checks that the server answers (and lets this user read `$all`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let settings: ClientSettings =
            url.parse()
                .map_err(|e: kurrentdb::ClientSettingsParseError| {
                    StoreError::Unavailable(format!(
                        "invalid KurrentDB connection string: {}",
                        redact_password(url, e.message())
                    ))
                })?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKER_THREADS)
            .thread_name("latchkey-kurrentdb")
            .enable_all()
            .build()
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the KurrentDB client runtime: {e}"))
            })?;
        let handle = runtime.handle().clone();
        let client = {
            let _inside = runtime.enter();
            Client::with_runtime_handle(handle.clone(), settings)
        };
        let client = match client {
            Ok(client) => client,
            Err(e) => {
                runtime.shutdown_background();
                return Err(StoreError::Unavailable(format!(
                    "cannot create the KurrentDB client: {}",
                    redact_password(url, &e.to_string())
                )));
            }
        };
        // From here on an early return drops the runtime through `Drop`, which is safe
        // inside the caller's async context.
        let store = Self {
            client,
            handle,
            runtime: Some(runtime),
        };
        let probe = store.last_position();
        match tokio::time::timeout(CONNECT_TIMEOUT, probe).await {
            Ok(Ok(_)) => Ok(store),
            Ok(Err(StoreError::Unavailable(why))) => Err(StoreError::Unavailable(format!(
                "the first read from the KurrentDB server failed: {why}"
            ))),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StoreError::Unavailable(format!(
                "the KurrentDB server did not answer within {CONNECT_TIMEOUT:?}"
            ))),
        }
    }

    /// The position of the last record in `$all`, system events included (`None`: the log
    /// is empty). Every event appended later has a greater position.
    pub async fn last_position(&self) -> Result<Option<Position>, StoreError> {
        self.run(|client| async move {
            let options = ReadAllOptions::default()
                .position(StreamPosition::End)
                .backwards()
                .max_count(1)
                .requires_leader(true)
                .deadline(READ_DEADLINE);
            let mut read = client.read_all(&options).await.map_err(map_error)?;
            match read.next().await.map_err(map_error)? {
                Some(resolved) => Ok(Some(to_position(resolved.get_original_event().position))),
                None => Ok(None),
            }
        })
        .await
    }

    /// Runs `task` on the store's own runtime and waits for it from whatever runtime the
    /// caller is on. Dropping the returned future aborts the task.
    async fn run<T, F, Fut>(&self, task: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let mut spawned = AbortOnDrop(self.handle.spawn(task(self.client.clone())));
        match (&mut spawned.0).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(StoreError::Unavailable(format!(
                "the KurrentDB client task stopped: {e}"
            ))),
        }
    }
}

impl Drop for KurrentStore {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which panics inside an async context; this does not.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts a spawned task once nobody waits for it any more.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[async_trait]
impl EventStore for KurrentStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        append_rules::validate_batch(&events)?;
        if let Some(event) = events.iter().find(|e| is_system_type(&e.event_type)) {
            return Err(StoreError::InvalidAppend(format!(
                "event {} has a type starting with '$', which KurrentDB reserves for system \
                 events",
                event.id
            )));
        }
        let stream = stream.clone();
        self.run(|client| async move { append_on(&client, &stream, expected, &events).await })
            .await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        // KurrentDB reads revision u64::MAX as "the end"; no event can be that far anyway.
        if max_count == 0 || from_revision > i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let stream = stream.clone();
        self.run(|client| async move {
            let mut events = Vec::new();
            let mut from = from_revision;
            while events.len() < max_count {
                let chunk = (max_count - events.len()).min(READ_CHUNK);
                let page = read_stream_raw(&client, stream.as_str(), from, chunk).await?;
                let full = page.len() == chunk;
                for event in &page {
                    events.push(decode(event)?);
                }
                match events.last() {
                    Some(last) if full => from = last.revision + 1,
                    _ => break,
                }
            }
            Ok(events)
        })
        .await
    }

    async fn read_all(
        &self,
        after: Option<Position>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max_count == 0 {
            return Ok(Vec::new());
        }
        self.run(move |client| async move { read_all_on(&client, after, max_count).await })
            .await
    }

    async fn wait_for_events_after(&self, after: Option<Position>) {
        let waited = self
            .run(move |client| async move {
                wait_on(&client, after).await;
                Ok(())
            })
            .await;
        if waited.is_err() {
            // The runtime is shutting down; do not let a caller's wait loop spin.
            tokio::time::sleep(WAIT_ERROR_BACKOFF).await;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Appending.

/// The stream's last event, as far as the hash chain needs it.
#[derive(Debug, Clone, Copy)]
struct Tail {
    revision: u64,
    hash: Hash,
    recorded_at: DateTime<Utc>,
}

/// What the index stream of one event id says.
struct IdLookup {
    /// The index stream's state, to claim the id against.
    index: StreamState,
    /// Where the event with this id really is, if anywhere.
    placed: Option<Placed>,
}

/// The body of a claim event in an index stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Claim {
    stream: String,
    revision: u64,
}

async fn append_on(
    client: &Client,
    stream: &StreamName,
    expected: ExpectedState,
    events: &[NewEvent],
) -> Result<AppendResult, StoreError> {
    for _ in 0..MAX_APPEND_ATTEMPTS {
        // Collected first: a lazily mapped stream trips the compiler's `Send` check.
        let lookups: Vec<_> = events.iter().map(|e| lookup_id(client, e.id)).collect();
        let lookups: Vec<IdLookup> = futures::stream::iter(lookups)
            .buffered(PARALLEL_LOOKUPS)
            .try_collect()
            .await?;
        if let Some(original) = replay_verdict(stream, events, &lookups)? {
            return Ok(original);
        }

        let tail = read_tail(client, stream).await?;
        let actual = tail.map(|t| t.revision);
        append_rules::check_expected(stream, expected, actual)?;
        let first = actual.map_or(0, |r| r + 1);
        let data = events
            .iter()
            .zip(chain(stream, tail, events, Utc::now()))
            .map(|(event, metadata)| event_data(event, &metadata))
            .collect::<Result<Vec<_>, _>>()?;

        let claims: Vec<_> = events
            .iter()
            .zip(&lookups)
            .enumerate()
            .map(|(offset, (event, lookup))| {
                claim(
                    client,
                    event.id,
                    stream,
                    first + offset as u64,
                    lookup.index,
                )
            })
            .collect();
        let claimed: Vec<bool> = futures::stream::iter(claims)
            .buffered(PARALLEL_LOOKUPS)
            .try_collect()
            .await?;
        if claimed.contains(&false) {
            // Another writer claimed one of these ids meanwhile: look again.
            continue;
        }

        let options = AppendToStreamOptions::default()
            .stream_state(server_state(actual))
            .requires_leader(true);
        match client
            .append_to_stream(stream.as_str(), &options, data)
            .await
        {
            Ok(_) => {}
            // The stream moved since we read it: re-check the ids and the expectation.
            Err(kurrentdb::Error::WrongExpectedVersion { .. }) => continue,
            Err(e) => return Err(map_error(e)),
        }

        // The server's own write position is that of the whole write, and absent for an
        // idempotent one; the result must name the last event's own `$all` position.
        let last_revision = first + events.len() as u64 - 1;
        let last_id = events[events.len() - 1].id;
        return match read_event_at(client, stream.as_str(), last_revision).await? {
            Some(event) if event.id == last_id => Ok(AppendResult {
                next_expected_revision: last_revision,
                position: known_position(&event)?,
            }),
            _ => Err(StoreError::Unavailable(format!(
                "KurrentDB acknowledged the append to {stream} but event {last_id} is not at \
                 revision {last_revision}"
            ))),
        };
    }
    Err(StoreError::Unavailable(format!(
        "gave up appending to {stream} after {MAX_APPEND_ATTEMPTS} races with concurrent writers"
    )))
}

/// Whether `events` replay an earlier append, by the rules every backend shares.
fn replay_verdict(
    stream: &StreamName,
    events: &[NewEvent],
    lookups: &[IdLookup],
) -> Result<Option<AppendResult>, StoreError> {
    let mut placements = lookups.iter().map(|l| {
        l.placed.as_ref().map(|p| Placed {
            stream: p.stream.clone(),
            revision: p.revision,
            position: p.position,
        })
    });
    let verdict = append_rules::replay(stream, events, |_| {
        Ok::<_, std::convert::Infallible>(placements.next().flatten())
    });
    match verdict {
        Ok(verdict) => verdict,
        Err(never) => match never {},
    }
}

/// Reads the index stream of `id` and checks each claim against the stream it names: a
/// claim counts only if the event with this id is really at that place. Claims that lost
/// a race (another event holds the revision) or whose append never happened are ignored.
async fn lookup_id(client: &Client, id: Uuid) -> Result<IdLookup, StoreError> {
    let index_stream = id_index_stream(id);
    let claims = read_stream_raw(client, &index_stream, 0, usize::MAX).await?;
    let index = server_state(claims.last().map(|c| c.revision));
    for raw in &claims {
        let claim: Claim = serde_json::from_slice(&raw.data).map_err(|e| {
            StoreError::Corrupt(format!(
                "claim {} in {index_stream} is not a Latchkey id claim: {e}",
                raw.revision
            ))
        })?;
        if let Some(event) = read_event_at(client, &claim.stream, claim.revision).await? {
            if event.id == id {
                return Ok(IdLookup {
                    index,
                    placed: Some(Placed {
                        position: known_position(&event)?,
                        stream: claim.stream,
                        revision: claim.revision,
                    }),
                });
            }
        }
    }
    Ok(IdLookup {
        index,
        placed: None,
    })
}

/// Claims `id` for `stream` at `revision`; `false` if another writer claimed it since the
/// lookup that returned `index`.
async fn claim(
    client: &Client,
    id: Uuid,
    stream: &StreamName,
    revision: u64,
    index: StreamState,
) -> Result<bool, StoreError> {
    let body = Claim {
        stream: stream.as_str().to_owned(),
        revision,
    };
    let event = EventData::json(CLAIM_EVENT_TYPE, &body)
        .map_err(|e| StoreError::Unavailable(format!("cannot encode an id claim: {e}")))?
        .id(Uuid::new_v4());
    let options = AppendToStreamOptions::default()
        .stream_state(index)
        .requires_leader(true);
    match client
        .append_to_stream(id_index_stream(id), &options, event)
        .await
    {
        Ok(_) => Ok(true),
        Err(kurrentdb::Error::WrongExpectedVersion { .. }) => Ok(false),
        Err(e) => Err(map_error(e)),
    }
}

async fn read_tail(client: &Client, stream: &StreamName) -> Result<Option<Tail>, StoreError> {
    let options = ReadStreamOptions::default()
        .position(StreamPosition::End)
        .backwards()
        .max_count(1)
        .requires_leader(true)
        .deadline(READ_DEADLINE);
    let Some(raw) = collect(client.read_stream(stream.as_str(), &options).await, 1)
        .await?
        .pop()
    else {
        return Ok(None);
    };
    let last = decode(&raw)?;
    Ok(Some(Tail {
        revision: last.revision,
        hash: last.hash,
        recorded_at: last.recorded_at,
    }))
}

/// Links `events` onto the stream's chain after `tail`: the metadata each one is stored
/// with, hash included.
fn chain(
    stream: &StreamName,
    tail: Option<Tail>,
    events: &[NewEvent],
    now: DateTime<Utc>,
) -> Vec<StoredMetadata> {
    let mut prev_hash = tail.map(|t| t.hash);
    let first = tail.map_or(0, |t| t.revision + 1);
    // Never before the stream's last event, even if the wall clock stepped back.
    let now = hash_chain::truncate_to_micros(now);
    let recorded_at = tail.map_or(now, |t| t.recorded_at.max(now));
    let mut stored = Vec::with_capacity(events.len());
    for (revision, event) in (first..).zip(events) {
        let hash = hash_chain::link(
            prev_hash.as_ref(),
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
        stored.push(StoredMetadata::new(
            &event.metadata,
            event.schema_version,
            recorded_at,
            prev_hash,
            hash,
        ));
        prev_hash = Some(hash);
    }
    stored
}

/// The client's form of one event: our id, our type, the payload byte for byte (as JSON
/// when it is JSON, so KurrentDB's UI and projections can read it) and our metadata.
fn event_data(event: &NewEvent, metadata: &StoredMetadata) -> Result<EventData, StoreError> {
    let data = match verbatim_json(&event.payload) {
        Some(json) => EventData::json(&event.event_type, &json).map_err(|e| {
            StoreError::InvalidAppend(format!("event {} cannot be encoded: {e}", event.id))
        })?,
        None => EventData::binary(&event.event_type, Bytes::copy_from_slice(&event.payload)),
    };
    Ok(data.id(event.id).metadata(Bytes::from(metadata.to_json())))
}

/// `payload` as a JSON value that serializes back to exactly the same bytes, if it is one.
fn verbatim_json(payload: &[u8]) -> Option<Box<serde_json::value::RawValue>> {
    let text = std::str::from_utf8(payload).ok()?;
    let raw = serde_json::value::RawValue::from_string(text.to_owned()).ok()?;
    let again = serde_json::to_vec(&raw).ok()?;
    (again == payload).then_some(raw)
}

// ---------------------------------------------------------------------------------------
// Reading.

/// Up to `max_count` events of `stream` from revision `from`, as the client returns them.
/// A stream that does not exist (or was deleted) reads as empty.
async fn read_stream_raw(
    client: &Client,
    stream: &str,
    from: u64,
    max_count: usize,
) -> Result<Vec<kurrentdb::RecordedEvent>, StoreError> {
    let options = ReadStreamOptions::default()
        .position(StreamPosition::Position(from))
        .forwards()
        .max_count(max_count)
        .requires_leader(true)
        .deadline(READ_DEADLINE);
    collect(client.read_stream(stream, &options).await, max_count).await
}

/// The event at `revision` of `stream`, if there is one.
async fn read_event_at(
    client: &Client,
    stream: &str,
    revision: u64,
) -> Result<Option<kurrentdb::RecordedEvent>, StoreError> {
    Ok(read_stream_raw(client, stream, revision, 1)
        .await?
        .pop()
        .filter(|e| e.revision == revision))
}

/// Drains a stream read, turning "no such stream" into an empty result.
async fn collect(
    read: kurrentdb::Result<kurrentdb::ReadStream>,
    max_count: usize,
) -> Result<Vec<kurrentdb::RecordedEvent>, StoreError> {
    let mut read = match read {
        Ok(read) => read,
        Err(kurrentdb::Error::ResourceNotFound | kurrentdb::Error::ResourceDeleted) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(map_error(e)),
    };
    let mut events = Vec::new();
    while events.len() < max_count {
        match read.next().await {
            Ok(Some(resolved)) => {
                if let Some(event) = resolved.event {
                    events.push(event);
                }
            }
            Ok(None) => break,
            Err(kurrentdb::Error::ResourceNotFound | kurrentdb::Error::ResourceDeleted) => {
                return Ok(Vec::new())
            }
            Err(e) => return Err(map_error(e)),
        }
    }
    Ok(events)
}

/// Up to `max_count` non-system events of `$all` strictly after `after`. KurrentDB reads
/// from a position inclusively, so the event at `after` is dropped here; system events are
/// skipped client-side, and the read goes on until the page is full or `$all` ends, so a
/// run of system events can never make a page look like the end of the log.
async fn read_all_on(
    client: &Client,
    after: Option<Position>,
    max_count: usize,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut events = Vec::new();
    let mut cursor = after;
    loop {
        let chunk = (max_count - events.len()).saturating_add(1).min(READ_CHUNK);
        let start = cursor.map_or(StreamPosition::Start, |p| {
            StreamPosition::Position(from_position(p))
        });
        let options = ReadAllOptions::default()
            .position(start)
            .forwards()
            .max_count(chunk)
            .requires_leader(true)
            .deadline(READ_DEADLINE);
        let mut read = client.read_all(&options).await.map_err(map_error)?;
        let mut received = 0;
        while let Some(resolved) = read.next().await.map_err(map_error)? {
            received += 1;
            let Some(event) = resolved.event else {
                continue;
            };
            let position = to_position(event.position);
            if cursor.is_some_and(|c| position <= c) {
                continue;
            }
            cursor = Some(position);
            if is_system_event(event.stream_id(), &event.event_type) {
                continue;
            }
            events.push(decode(&event)?);
            if events.len() == max_count {
                return Ok(events);
            }
        }
        if received < chunk {
            return Ok(events);
        }
    }
}

/// Returns on the first non-system event after `after`, whether already stored or newly
/// committed, or after [`WAIT_POLL`].
async fn wait_on(client: &Client, after: Option<Position>) {
    let start = after.map_or(StreamPosition::Start, |p| {
        StreamPosition::Position(from_position(p))
    });
    let options = SubscribeToAllOptions::default()
        .position(start)
        .filter(SubscriptionFilter::on_stream_name().regex("^[^$]"))
        .requires_leader(true);
    let _ = tokio::time::timeout(WAIT_POLL, async {
        let mut subscription = client.subscribe_to_all(&options).await;
        loop {
            match subscription.next().await {
                Ok(resolved) => {
                    let event = resolved.get_original_event();
                    let position = to_position(event.position);
                    if after.is_none_or(|a| position > a)
                        && !is_system_event(event.stream_id(), &event.event_type)
                    {
                        return;
                    }
                }
                Err(_) => {
                    tokio::time::sleep(WAIT_ERROR_BACKOFF).await;
                    return;
                }
            }
        }
    })
    .await;
}

/// Our event from the client's, or `Corrupt` if it was not written by this backend.
fn decode(event: &kurrentdb::RecordedEvent) -> Result<RecordedEvent, StoreError> {
    decode_parts(
        event.stream_id(),
        event.id,
        event.revision,
        known_position(event)?,
        &event.event_type,
        &event.data,
        &event.custom_metadata,
    )
}

fn decode_parts(
    stream: &str,
    id: Uuid,
    revision: u64,
    position: Position,
    event_type: &str,
    data: &[u8],
    custom_metadata: &[u8],
) -> Result<RecordedEvent, StoreError> {
    let at = || format!("event {id} at revision {revision} of {stream:?}");
    let stream =
        StreamName::new(stream).map_err(|e| StoreError::Corrupt(format!("{}: {e}", at())))?;
    let stored = StoredMetadata::from_json(custom_metadata)
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at())))?;
    let (metadata, schema_version, recorded_at, prev_hash, hash) = stored
        .into_parts()
        .map_err(|e| StoreError::Corrupt(format!("{}: {e}", at())))?;
    Ok(RecordedEvent {
        id,
        stream,
        revision,
        position,
        event_type: event_type.to_owned(),
        schema_version,
        payload: data.to_vec(),
        metadata,
        recorded_at,
        prev_hash,
        hash,
    })
}

/// The event's `$all` position; KurrentDB reports "unknown" (all ones) only for events of
/// old explicit transactions, which this backend never writes.
fn known_position(event: &kurrentdb::RecordedEvent) -> Result<Position, StoreError> {
    if event.position.commit == u64::MAX {
        return Err(StoreError::Corrupt(format!(
            "event {} at revision {} of {:?} has no known position in $all",
            event.id,
            event.revision,
            event.stream_id()
        )));
    }
    Ok(to_position(event.position))
}

// ---------------------------------------------------------------------------------------
// The mapping between our model and KurrentDB's, as pure functions.

/// The custom metadata of every event this backend writes. KurrentDB's own conventions
/// name the correlation and causation ids, so its tools (e.g. the `$by_correlation_id`
/// projection) understand them; the rest is ours.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMetadata {
    #[serde(rename = "$correlationId")]
    pub correlation_id: Uuid,
    #[serde(
        rename = "$causationId",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub causation_id: Option<Uuid>,
    pub actor: String,
    pub schema_version: u32,
    /// RFC 3339, UTC, microseconds.
    pub recorded_at: String,
    /// Lower-case hex; absent for revision 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// Lower-case hex.
    pub hash: String,
}

impl StoredMetadata {
    pub fn new(
        metadata: &EventMetadata,
        schema_version: u32,
        recorded_at: DateTime<Utc>,
        prev_hash: Option<Hash>,
        hash: Hash,
    ) -> Self {
        Self {
            correlation_id: metadata.correlation_id,
            causation_id: metadata.causation_id,
            actor: metadata.actor.clone(),
            schema_version,
            recorded_at: recorded_at.to_rfc3339_opts(SecondsFormat::Micros, true),
            prev_hash: prev_hash.map(|h| h.to_hex()),
            hash: hash.to_hex(),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A struct of strings, ids and numbers always serializes.
        serde_json::to_vec(self).unwrap_or_else(|e| unreachable!("metadata serializes: {e}"))
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        serde_json::from_slice(bytes)
            .map_err(|e| format!("its metadata is not Latchkey event metadata: {e}"))
    }

    /// Our metadata, schema version, recorded-at, previous hash and hash.
    #[allow(clippy::type_complexity)]
    pub fn into_parts(
        self,
    ) -> Result<(EventMetadata, u32, DateTime<Utc>, Option<Hash>, Hash), String> {
        let recorded_at = DateTime::parse_from_rfc3339(&self.recorded_at)
            .map_err(|e| format!("its recorded_at {:?} is not a time: {e}", self.recorded_at))?
            .with_timezone(&Utc);
        let prev_hash = self.prev_hash.as_deref().map(parse_hash).transpose()?;
        let hash = parse_hash(&self.hash)?;
        Ok((
            EventMetadata {
                actor: self.actor,
                correlation_id: self.correlation_id,
                causation_id: self.causation_id,
            },
            self.schema_version,
            recorded_at,
            prev_hash,
            hash,
        ))
    }
}

fn parse_hash(text: &str) -> Result<Hash, String> {
    let mut bytes = [0u8; 32];
    hex::decode_to_slice(text, &mut bytes)
        .map_err(|e| format!("{text:?} is not a 32-byte hex hash: {e}"))?;
    Ok(Hash(bytes))
}

/// The state to send the server for a stream whose last revision is `last` (`None`: no
/// stream). Always exact: the hash chain was computed against exactly that state.
pub fn server_state(last: Option<u64>) -> StreamState {
    last.map_or(StreamState::NoStream, StreamState::StreamRevision)
}

/// KurrentDB's expected-state vocabulary for ours. The backend itself checks expectations
/// against the stream it read and sends [`server_state`]; this names the correspondence.
pub fn to_stream_state(expected: ExpectedState) -> StreamState {
    match expected {
        ExpectedState::Any => StreamState::Any,
        ExpectedState::NoStream => StreamState::NoStream,
        ExpectedState::StreamExists => StreamState::StreamExists,
        ExpectedState::Exact(revision) => StreamState::StreamRevision(revision),
    }
}

/// The last revision a `WrongExpectedVersion` reports, in our terms.
pub fn actual_revision(current: CurrentRevision) -> Option<u64> {
    match current {
        CurrentRevision::Current(revision) => Some(revision),
        CurrentRevision::NoStream => None,
    }
}

pub fn to_position(position: kurrentdb::Position) -> Position {
    Position::new(position.commit, position.prepare)
}

pub fn from_position(position: Position) -> kurrentdb::Position {
    kurrentdb::Position {
        commit: position.commit,
        prepare: position.prepare,
    }
}

/// The index stream that records where event `id` was appended.
pub fn id_index_stream(id: Uuid) -> String {
    format!("{ID_INDEX_PREFIX}{}", id.simple())
}

fn is_system_type(event_type: &str) -> bool {
    event_type.starts_with('$')
}

/// KurrentDB's own events: everything in a `$` stream (stats, metadata, projections, our
/// id index) and `$`-typed events anywhere (stream metadata, tombstones, links).
pub fn is_system_event(stream: &str, event_type: &str) -> bool {
    stream.starts_with('$') || is_system_type(event_type)
}

fn map_error(e: kurrentdb::Error) -> StoreError {
    match e {
        kurrentdb::Error::AccessDenied => StoreError::Unavailable(
            "KurrentDB denied access: the user in the connection string must be allowed to \
             read $all and write $-prefixed streams (an admin, under the default ACLs)"
                .into(),
        ),
        kurrentdb::Error::WrongExpectedVersion { expected, current } => {
            StoreError::Unavailable(format!(
                "unexpected conflict: KurrentDB expected {expected} but the stream is at {:?}",
                actual_revision(current)
            ))
        }
        e => StoreError::Unavailable(format!("KurrentDB: {e}")),
    }
}

/// `message` with the connection string's password, if any, blanked out: errors must never
/// carry a secret.
fn redact_password(url: &str, message: &str) -> String {
    let password = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?']).next())
        .and_then(|authority| authority.rsplit_once('@'))
        .and_then(|(userinfo, _)| userinfo.split_once(':'))
        .map(|(_, password)| password)
        .filter(|p| !p.is_empty());
    match password {
        Some(password) => message.replace(password, "***"),
        None => message.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata() -> EventMetadata {
        EventMetadata {
            actor: "user:admin@msp.example".into(),
            correlation_id: Uuid::from_u128(0x1234),
            causation_id: Some(Uuid::from_u128(0x5678)),
        }
    }

    fn at(micros: i64) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(micros).expect("a valid time")
    }

    #[test]
    fn positions_map_one_to_one_and_keep_their_order() {
        let ours = Position::new(1_234, 1_200);
        let theirs = from_position(ours);
        assert_eq!((theirs.commit, theirs.prepare), (1_234, 1_200));
        assert_eq!(to_position(theirs), ours);
        let later = Position::new(1_234, 1_300);
        assert_eq!(
            ours.cmp(&later),
            from_position(ours).cmp(&from_position(later)),
            "both sides order (commit, prepare) lexicographically"
        );
    }

    #[test]
    fn expected_states_map_to_kurrentdb_stream_states() {
        assert_eq!(to_stream_state(ExpectedState::Any), StreamState::Any);
        assert_eq!(
            to_stream_state(ExpectedState::NoStream),
            StreamState::NoStream
        );
        assert_eq!(
            to_stream_state(ExpectedState::StreamExists),
            StreamState::StreamExists
        );
        assert_eq!(
            to_stream_state(ExpectedState::Exact(7)),
            StreamState::StreamRevision(7)
        );
    }

    #[test]
    fn the_server_is_always_sent_the_exact_state_that_was_read() {
        assert_eq!(server_state(None), StreamState::NoStream);
        assert_eq!(server_state(Some(0)), StreamState::StreamRevision(0));
        assert_eq!(server_state(Some(41)), StreamState::StreamRevision(41));
        assert_eq!(actual_revision(CurrentRevision::NoStream), None);
        assert_eq!(actual_revision(CurrentRevision::Current(3)), Some(3));
    }

    #[test]
    fn metadata_uses_kurrentdb_conventions_and_round_trips() {
        let recorded_at = at(1_700_000_000_123_456);
        let stored = StoredMetadata::new(
            &metadata(),
            2,
            recorded_at,
            Some(Hash([0xab; 32])),
            Hash([0x01; 32]),
        );
        let json: serde_json::Value =
            serde_json::from_slice(&stored.to_json()).expect("metadata is JSON");
        assert_eq!(
            json["$correlationId"],
            "00000000-0000-0000-0000-000000001234"
        );
        assert_eq!(json["$causationId"], "00000000-0000-0000-0000-000000005678");
        assert_eq!(json["actor"], "user:admin@msp.example");
        assert_eq!(json["schema_version"], 2);
        assert_eq!(json["recorded_at"], "2023-11-14T22:13:20.123456Z");
        assert_eq!(json["prev_hash"], "ab".repeat(32));
        assert_eq!(json["hash"], "01".repeat(32));

        let parts = StoredMetadata::from_json(&stored.to_json())
            .and_then(StoredMetadata::into_parts)
            .expect("reads back");
        assert_eq!(
            parts,
            (
                metadata(),
                2,
                recorded_at,
                Some(Hash([0xab; 32])),
                Hash([0x01; 32])
            )
        );
    }

    #[test]
    fn absent_causation_and_previous_hash_are_left_out() {
        let mut first = metadata();
        first.causation_id = None;
        let stored = StoredMetadata::new(&first, 1, at(0), None, Hash([2; 32]));
        let json: serde_json::Value =
            serde_json::from_slice(&stored.to_json()).expect("metadata is JSON");
        assert!(json.get("$causationId").is_none(), "{json}");
        assert!(json.get("prev_hash").is_none(), "{json}");
        let (back, _, _, prev, _) = StoredMetadata::from_json(&stored.to_json())
            .and_then(StoredMetadata::into_parts)
            .expect("reads back");
        assert_eq!(back, first);
        assert_eq!(prev, None);
    }

    #[test]
    fn foreign_or_damaged_metadata_is_corrupt() {
        let position = Position::new(10, 10);
        let decode =
            |meta: &[u8]| decode_parts("tenant-1", Uuid::nil(), 0, position, "T", b"{}", meta);
        for bad in [
            &b""[..],
            b"{}",
            br#"{"$correlationId":"not-a-uuid"}"#,
            br#"{"$correlationId":"00000000-0000-0000-0000-000000000001","actor":"a","schema_version":1,"recorded_at":"yesterday","hash":"00"}"#,
        ] {
            assert!(
                matches!(decode(bad), Err(StoreError::Corrupt(m)) if m.contains("tenant-1")),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        let good = StoredMetadata::new(&metadata(), 1, at(5), None, Hash([3; 32])).to_json();
        assert!(matches!(
            decode_parts("$bad", Uuid::nil(), 0, position, "T", b"{}", &good),
            Err(StoreError::Corrupt(_))
        ));
    }

    #[test]
    fn decoding_rebuilds_the_recorded_event_so_its_hash_verifies() {
        let stream = StreamName::new("computer-9").expect("valid");
        let new = NewEvent {
            id: Uuid::from_u128(77),
            event_type: "PasswordRotated".into(),
            schema_version: 3,
            payload: br#"{"version": 4}"#.to_vec(),
            metadata: metadata(),
        };
        let recorded_at = at(1_000_000);
        let hash = hash_chain::link(
            None,
            &LinkFields {
                stream: &stream,
                revision: 0,
                id: new.id,
                event_type: &new.event_type,
                schema_version: new.schema_version,
                payload: &new.payload,
                metadata: &new.metadata,
                recorded_at,
            },
        );
        let meta = StoredMetadata::new(&new.metadata, 3, recorded_at, None, hash).to_json();
        let event = decode_parts(
            stream.as_str(),
            new.id,
            0,
            Position::new(300, 300),
            &new.event_type,
            &new.payload,
            &meta,
        )
        .expect("decodes");
        assert_eq!(event.payload, new.payload);
        assert_eq!(event.metadata, new.metadata);
        assert_eq!(event.schema_version, 3);
        assert_eq!(event.position, Position::new(300, 300));
        assert_eq!(hash_chain::verify_stream(&[event]), Ok(()));
    }

    #[test]
    fn chaining_links_each_event_to_the_one_before_and_never_goes_back_in_time() {
        let stream = StreamName::new("session-1").expect("valid");
        let events: Vec<NewEvent> = (0..3u128)
            .map(|n| NewEvent {
                id: Uuid::from_u128(n + 1),
                event_type: "SessionRequested".into(),
                schema_version: 1,
                payload: format!("{{\"n\":{n}}}").into_bytes(),
                metadata: metadata(),
            })
            .collect();
        let tail = Tail {
            revision: 4,
            hash: Hash([9; 32]),
            recorded_at: at(2_000_000),
        };
        // The clock is behind the stream's last event: recorded_at must not go back.
        let stored = chain(&stream, Some(tail), &events, at(1_000_000));
        let recorded: Vec<RecordedEvent> = events
            .iter()
            .zip(&stored)
            .enumerate()
            .map(|(offset, (event, meta))| {
                decode_parts(
                    stream.as_str(),
                    event.id,
                    5 + offset as u64,
                    Position::new(100 + offset as u64, 100 + offset as u64),
                    &event.event_type,
                    &event.payload,
                    &meta.to_json(),
                )
                .expect("decodes")
            })
            .collect();
        assert_eq!(recorded[0].prev_hash, Some(tail.hash));
        assert!(recorded.iter().all(|e| e.recorded_at == tail.recorded_at));
        let mut previous = RecordedEvent {
            revision: 4,
            hash: tail.hash,
            ..recorded[0].clone()
        };
        previous.id = Uuid::nil();
        assert_eq!(hash_chain::verify_after(Some(&previous), &recorded), Ok(()));

        // A new stream starts the chain at revision 0 with the current time.
        let fresh = chain(&stream, None, &events[..1], at(3_000_001));
        assert_eq!(fresh[0].prev_hash, None);
        assert_eq!(fresh[0].recorded_at, "1970-01-01T00:00:03.000001Z");
    }

    #[test]
    fn json_payloads_are_kept_byte_for_byte_or_sent_as_binary() {
        for json in [
            &br#"{"b":1,"a":2}"#[..],
            br#"{ "spaced" : [1, 2.50, "x"] }"#,
            b"[]",
        ] {
            let raw = verbatim_json(json).expect("JSON is sent as JSON");
            assert_eq!(raw.get().as_bytes(), json);
        }
        for not_json in [&b"\xff\xfe"[..], b"not json", b"{\"a\":1} trailing", b""] {
            assert!(verbatim_json(not_json).is_none());
        }
    }

    #[test]
    fn system_events_are_recognised_by_stream_or_type() {
        assert!(is_system_event("$stats-127.0.0.1:2113", "$statsCollected"));
        assert!(is_system_event("$$tenant-1", "$metadata"));
        assert!(is_system_event("tenant-1", "$>"));
        assert!(is_system_event(
            &id_index_stream(Uuid::nil()),
            CLAIM_EVENT_TYPE
        ));
        assert!(!is_system_event("tenant-1", "TenantCreated"));
        assert!(
            StreamName::new(id_index_stream(Uuid::nil())).is_err(),
            "no stream of ours can collide with the id index"
        );
    }

    #[test]
    fn claims_round_trip_through_json() {
        let claim = Claim {
            stream: "tenant-1".into(),
            revision: 12,
        };
        let json = serde_json::to_vec(&claim).expect("serializes");
        assert_eq!(
            serde_json::from_slice::<Claim>(&json).expect("parses"),
            claim
        );
    }

    #[test]
    fn passwords_never_reach_error_messages() {
        let url = "kurrentdb://admin:s3cret@db.example:2113/?tls=false";
        assert_eq!(
            redact_password(url, "bad value s3cret here"),
            "bad value *** here"
        );
        assert_eq!(
            redact_password("kurrentdb://db:2113", "no secret"),
            "no secret"
        );
        assert_eq!(
            redact_password("esdb://user@db:2113", "user only"),
            "user only"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_bad_connection_string_fails_without_echoing_the_password() {
        let Err(error) = KurrentStore::connect("kurrentdb://admin:hunter2@:::?tls=maybe").await
        else {
            panic!("a malformed connection string must not connect");
        };
        let message = error.to_string();
        assert!(matches!(error, StoreError::Unavailable(_)), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn an_unreachable_server_fails_to_open_and_drops_cleanly_in_async_code() {
        // Port 1 on loopback: nothing listens, so the first read fails fast; the store (and
        // its runtime) is dropped inside this current-thread runtime without panicking.
        let opened = tokio::time::timeout(
            Duration::from_secs(60),
            KurrentStore::connect("kurrentdb://127.0.0.1:1?tls=false&maxDiscoverAttempts=1"),
        )
        .await
        .expect("gives up within a minute");
        assert!(matches!(opened, Err(StoreError::Unavailable(_))));
    }
}
