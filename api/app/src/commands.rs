//! The one place where a command meets the log: load the aggregate's stream, `decide`,
//! append with the expected revision, and on a concurrent write retry against fresh state.
//! HTTP handlers, process managers and the expiry scheduler all go through here; none of
//! them appends by itself. It never logs an event body.

use latchkey_domain::{Aggregate, DecodeError, DomainError, Event};
use latchkey_server_stores::snapshots::{Snapshot, SnapshotStore};
use latchkey_store::{EventMetadata, EventStore, ExpectedState, NewEvent, StoreError, StreamName};
use std::any::Any;
use std::collections::HashMap;
use std::sync::Arc;
use uuid::Uuid;

/// How often a command is re-decided after losing a race before it is reported as a conflict.
pub const MAX_ATTEMPTS: usize = 8;

/// Events are read back in pages of this many.
const PAGE: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// A rule said no (maps to 404/409/422 through `DomainError::kind`).
    #[error(transparent)]
    Domain(#[from] DomainError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The stream holds an event this version of Latchkey cannot read.
    #[error("stream {stream} cannot be read: {source}")]
    Decode {
        stream: StreamName,
        source: DecodeError,
    },
    /// Other writers kept changing the stream; the client may retry (HTTP 409).
    #[error("stream {stream} kept changing under {attempts} attempts; try again")]
    Contended { stream: StreamName, attempts: usize },
}

/// Who sends a command and in which flow; copied into every event's metadata.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

/// An aggregate's state as of one revision of its stream.
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    /// `None` if the stream does not exist yet.
    pub revision: Option<u64>,
}

/// What a command appended.
#[derive(Debug, Clone)]
pub struct Executed<A: Aggregate> {
    pub events: Vec<A::Event>,
    /// The state after the command.
    pub state: A,
    pub attempts: usize,
}

/// Aggregates whose streams grow long keep snapshots of their state (see
/// [`latchkey_server_stores::snapshots`]).
/// The default is none: only what overrides [`Snapshots::VERSION`] is snapshotted.
pub trait Snapshots: Aggregate + Sized {
    /// The form of the stored state; `None`: never snapshotted.
    const VERSION: Option<u32> = None;

    fn encode(&self) -> Option<Vec<u8>> {
        None
    }

    fn decode(_: &[u8]) -> Option<Self> {
        None
    }
}

impl Snapshots for latchkey_domain::tenant::Tenant {}
impl Snapshots for latchkey_domain::technician::Technician {}
impl Snapshots for latchkey_domain::technician_names::TechnicianNames {}
impl Snapshots for latchkey_domain::session::Session {}

impl Snapshots for latchkey_domain::computer::Computer {
    const VERSION: Option<u32> = Some(latchkey_domain::computer::SNAPSHOT_VERSION);

    fn encode(&self) -> Option<Vec<u8>> {
        serde_json::to_vec(self).ok()
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}

/// Which states the [`StateCache`] keeps. A state no command will change any more (a session
/// checked in or failed) is not kept: it is seldom used again, and one stream per session would
/// otherwise fill the cache with the past. A command on such a stream reads it again (a session's
/// stream is a handful of events) and is decided exactly as before.
pub trait Retained: Aggregate {
    /// `true`: no command will change this state any more; the cache lets it go.
    fn is_final(&self) -> bool {
        false
    }
}

impl Retained for latchkey_domain::tenant::Tenant {}
impl Retained for latchkey_domain::technician::Technician {}
impl Retained for latchkey_domain::technician_names::TechnicianNames {}
impl Retained for latchkey_domain::computer::Computer {}

impl Retained for latchkey_domain::session::Session {
    /// Checked in or failed: every later command on it is already satisfied or refused.
    fn is_final(&self) -> bool {
        self.state().is_some_and(|s| !s.is_open())
    }
}

/// What the command path can load, execute and cache.
pub trait Stored: Snapshots + Retained + Send + Sync + 'static {}
impl<A: Snapshots + Retained + Send + Sync + 'static> Stored for A {}

/// A snapshot is taken when a stream has grown by this many events since the last one.
pub const SNAPSHOT_EVERY: u64 = 500;

/// A cached state: the revision it is at, the aggregate, and the revision of the stream's
/// last snapshot (if it has one).
#[derive(Clone)]
struct CachedState {
    revision: u64,
    state: Arc<dyn Any + Send + Sync>,
    snapshot: Option<u64>,
}

/// Recent aggregate states by stream, so a command reads only the events appended since the
/// state was cached instead of the whole stream (a computer's stream grows with every
/// session); and, behind it, the snapshots of long streams, so a cold load (after a restart)
/// does not fold the whole stream either. Always correct: streams only grow, so a state at
/// revision r plus the events after r is the current state, whichever server appended them.
/// Bounded: two generations of at most half the capacity each; when the newer one fills up,
/// the older one is dropped, so what was used recently stays. Final states (see [`Retained`])
/// are not kept at all, so the cache holds the streams that are still in use (tenants,
/// technicians, computers, open sessions) and does not grow with the number of past sessions.
pub struct StateCache {
    generations: std::sync::Mutex<[HashMap<String, CachedState>; 2]>,
    capacity: usize,
    snapshots: Option<Arc<SnapshotStore>>,
}

impl StateCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            generations: std::sync::Mutex::new([HashMap::new(), HashMap::new()]),
            capacity,
            snapshots: None,
        }
    }

    /// Reads and keeps snapshots of long streams in `snapshots`.
    pub fn with_snapshots(mut self, snapshots: SnapshotStore) -> Self {
        self.snapshots = Some(Arc::new(snapshots));
        self
    }

    fn entry(&self, stream: &StreamName) -> Option<CachedState> {
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(found) = generations[0].get(stream.as_str()) {
            return Some(found.clone());
        }
        // Used again: back into the newer generation.
        let found = generations[1].remove(stream.as_str())?;
        Self::insert(&mut generations, self.capacity, stream, found.clone());
        Some(found)
    }

    fn insert(
        generations: &mut [HashMap<String, CachedState>; 2],
        capacity: usize,
        stream: &StreamName,
        entry: CachedState,
    ) {
        if generations[0].len() >= capacity.div_ceil(2)
            && !generations[0].contains_key(stream.as_str())
        {
            generations[1] = std::mem::take(&mut generations[0]);
        }
        generations[0].insert(stream.as_str().to_owned(), entry);
    }

    /// The state of `stream` this server has cached, if any, without reading the store: it
    /// may be behind the stream (another server appended since), never ahead of it.
    pub fn cached<A: Stored>(&self, stream: &StreamName) -> Option<A> {
        self.get::<A>(stream).map(|(state, _, _)| state)
    }

    fn get<A: Stored>(&self, stream: &StreamName) -> Option<(A, u64, Option<u64>)> {
        let entry = self.entry(stream)?;
        entry
            .state
            .downcast_ref::<A>()
            .map(|state| (state.clone(), entry.revision, entry.snapshot))
    }

    fn put<A: Stored>(&self, stream: &StreamName, state: &A, revision: u64, snapshot: Option<u64>) {
        if self.capacity == 0 {
            return;
        }
        let mut generations = self.generations.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_final() {
            // Whatever was cached of it is older still: let that go too.
            for generation in generations.iter_mut() {
                generation.remove(stream.as_str());
            }
            return;
        }
        let (newer, snapshot) = match generations[0]
            .get(stream.as_str())
            .or_else(|| generations[1].get(stream.as_str()))
        {
            Some(cached) => (
                cached.revision < revision
                    || (cached.revision == revision && snapshot > cached.snapshot),
                snapshot.max(cached.snapshot),
            ),
            None => (true, snapshot),
        };
        if newer {
            let entry = CachedState {
                revision,
                state: Arc::new(state.clone()),
                snapshot,
            };
            generations[1].remove(stream.as_str());
            Self::insert(&mut generations, self.capacity, stream, entry);
        }
    }

    /// The stored snapshot of `stream`, if it is of `A`'s current form. Errors are logged and
    /// answered with `None`: the state is then folded from the events.
    async fn snapshot<A: Stored>(&self, stream: &StreamName) -> Option<(A, u64, Uuid)> {
        let version = A::VERSION?;
        let snapshots = self.snapshots.clone()?;
        let name = stream.as_str().to_owned();
        let found = tokio::task::spawn_blocking(move || snapshots.get(&name)).await;
        match found {
            Ok(Ok(Some(snapshot))) if snapshot.version == version => {
                let state = A::decode(&snapshot.state)?;
                Some((state, snapshot.revision, snapshot.event_id))
            }
            Ok(Ok(_)) => None,
            Ok(Err(e)) => {
                tracing::warn!(%stream, error = %e, "cannot read the stream's snapshot");
                None
            }
            Err(e) => {
                tracing::warn!(%stream, error = %e, "cannot read the stream's snapshot");
                None
            }
        }
    }

    /// Keeps a snapshot of `state` at `revision` (the event `event_id`), in the background.
    fn take_snapshot<A: Stored>(
        &self,
        stream: &StreamName,
        state: &A,
        revision: u64,
        event_id: Uuid,
    ) {
        let (Some(version), Some(snapshots)) = (A::VERSION, self.snapshots.clone()) else {
            return;
        };
        let Some(encoded) = state.encode() else {
            return;
        };
        let name = stream.as_str().to_owned();
        let snapshot = Snapshot {
            version,
            revision,
            event_id,
            state: encoded,
        };
        tokio::task::spawn_blocking(move || {
            if let Err(e) = snapshots.put(&name, &snapshot) {
                tracing::warn!(stream = %name, error = %e, "cannot keep the stream's snapshot");
            }
        });
    }
}

/// The state from the stream's snapshot, if it has one of `A`'s current form that belongs to
/// this log: the event it names is read back and must be there, with that id.
async fn from_snapshot<A: Stored>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream: &StreamName,
) -> Result<Option<(A, u64)>, CommandError> {
    let Some((state, at, event_id)) = cache.snapshot::<A>(stream).await else {
        return Ok(None);
    };
    let there = store.read_stream(stream, at, 1).await?;
    if there
        .first()
        .is_some_and(|e| e.revision == at && e.id == event_id)
    {
        Ok(Some((state, at)))
    } else {
        tracing::warn!(%stream, "the stream's snapshot does not match the log; folding the events");
        Ok(None)
    }
}

/// Folds a whole stream into its aggregate's state.
pub async fn load<A: Stored>(
    store: &dyn EventStore,
    stream: &StreamName,
) -> Result<Loaded<A>, CommandError> {
    load_cached(store, &StateCache::new(0), stream).await
}

/// [`load`], starting from the cached state if there is one, else from the stream's snapshot
/// if it has one; takes a snapshot when the stream has grown [`SNAPSHOT_EVERY`] events since
/// its last one.
pub async fn load_cached<A: Stored>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream: &StreamName,
) -> Result<Loaded<A>, CommandError> {
    let (mut state, mut revision, mut snapshot) = match cache.get::<A>(stream) {
        Some((state, revision, snapshot)) => (state, Some(revision), snapshot),
        None => match from_snapshot::<A>(store, cache, stream).await? {
            Some((state, revision)) => (state, Some(revision), Some(revision)),
            None => (A::default(), None, None),
        },
    };
    let cached = revision;
    let mut last_event = None;
    loop {
        let from = revision.map_or(0, |r: u64| r + 1);
        let page = store.read_stream(stream, from, PAGE).await?;
        let full = page.len() == PAGE;
        for recorded in page {
            let json =
                serde_json::from_slice(&recorded.payload).map_err(|e| CommandError::Decode {
                    stream: stream.clone(),
                    source: DecodeError::Invalid {
                        event_type: recorded.event_type.clone(),
                        version: recorded.schema_version,
                        reason: e.to_string(),
                    },
                })?;
            let event = A::Event::from_json(&recorded.event_type, recorded.schema_version, json)
                .and_then(|e| {
                    e.ok_or_else(|| DecodeError::UnknownType(recorded.event_type.clone()))
                })
                .map_err(|source| CommandError::Decode {
                    stream: stream.clone(),
                    source,
                })?;
            state = A::evolve(state, &event);
            revision = Some(recorded.revision);
            last_event = Some(recorded.id);
        }
        if !full {
            let mut took = false;
            if let (Some(at), Some(event_id)) = (revision, last_event) {
                if at + 1 >= snapshot.map_or(0, |s| s + 1) + SNAPSHOT_EVERY {
                    cache.take_snapshot(stream, &state, at, event_id);
                    (snapshot, took) = (Some(at), true);
                }
            }
            if let Some(revision) = revision.filter(|r| took || Some(*r) != cached) {
                cache.put(stream, &state, revision, snapshot);
            }
            return Ok(Loaded { state, revision });
        }
    }
}

/// The stored form of a domain event. Ids are time-ordered (v7): the store's id index then
/// grows at its end, which is markedly faster than random ids.
pub fn to_new_event<E: Event>(event: &E, envelope: &Envelope) -> NewEvent {
    NewEvent {
        id: Uuid::now_v7(),
        event_type: event.event_type().to_owned(),
        schema_version: event.schema_version(),
        payload: serde_json::to_vec(&event.to_json()).expect("a JSON value serialises"),
        metadata: EventMetadata {
            actor: envelope.actor.clone(),
            correlation_id: envelope.correlation_id,
            causation_id: envelope.causation_id,
        },
    }
}

/// Whether any event of `stream` carries `correlation_id` (a request's claim: see
/// `http::idempotency`). Reads the whole stream; only a request resumed after a crash asks.
pub async fn stream_has_correlation(
    store: &dyn EventStore,
    stream: &StreamName,
    correlation_id: Uuid,
) -> Result<bool, StoreError> {
    const PAGE: usize = 512;
    let mut from = 0;
    loop {
        let page = store.read_stream(stream, from, PAGE).await?;
        if page
            .iter()
            .any(|e| e.metadata.correlation_id == correlation_id)
        {
            return Ok(true);
        }
        match page.last() {
            Some(last) if page.len() == PAGE => from = last.revision + 1,
            _ => return Ok(false),
        }
    }
}

/// Runs one command against `stream`: `command` builds it from the current state (so it can
/// look at that state), `decide` judges it, and the events are appended only if nobody wrote
/// to the stream in between; otherwise the whole thing runs again on fresh state.
pub async fn execute<A, F>(
    store: &dyn EventStore,
    stream: &StreamName,
    envelope: &Envelope,
    command: F,
) -> Result<Executed<A>, CommandError>
where
    A: Stored,
    F: FnMut(&A) -> A::Command,
{
    execute_cached(store, &StateCache::new(0), stream, envelope, command).await
}

/// [`execute`] with a [`StateCache`].
pub async fn execute_cached<A, F>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream: &StreamName,
    envelope: &Envelope,
    mut command: F,
) -> Result<Executed<A>, CommandError>
where
    A: Stored,
    F: FnMut(&A) -> A::Command,
{
    // A cached state is usually current (this server's commands keep it so), and the
    // append's expected revision proves whether it was: deciding on it first saves reading
    // the stream. What that proves nothing about, a refusal or a command with nothing to do,
    // or an append that lost the race, is decided again on the stream, as below.
    let mut tries = 0;
    if let Some((state, revision, snapshot)) = cache.get::<A>(stream) {
        tries = 1;
        if let Ok(events) = A::decide(&state, command(&state)) {
            if !events.is_empty() {
                let batch = events.iter().map(|e| to_new_event(e, envelope)).collect();
                match store
                    .append(stream, ExpectedState::Exact(revision), batch)
                    .await
                {
                    Ok(written) => {
                        let state = events.iter().fold(state, A::evolve);
                        cache.put(stream, &state, written.next_expected_revision, snapshot);
                        return Ok(Executed {
                            events,
                            state,
                            attempts: 1,
                        });
                    }
                    Err(StoreError::WrongExpectedState { .. }) => {
                        tracing::debug!(%stream, "the cached state was behind, reading on");
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    for attempt in (1 + tries)..=(MAX_ATTEMPTS + tries) {
        let loaded = load_cached::<A>(store, cache, stream).await?;
        let events = A::decide(&loaded.state, command(&loaded.state))?;
        if events.is_empty() {
            return Ok(Executed {
                events,
                state: loaded.state,
                attempts: attempt,
            });
        }
        let expected = match loaded.revision {
            None => ExpectedState::NoStream,
            Some(revision) => ExpectedState::Exact(revision),
        };
        let batch = events.iter().map(|e| to_new_event(e, envelope)).collect();
        match store.append(stream, expected, batch).await {
            Ok(written) => {
                let state = events.iter().fold(loaded.state, A::evolve);
                cache.put(stream, &state, written.next_expected_revision, None);
                return Ok(Executed {
                    events,
                    state,
                    attempts: attempt,
                });
            }
            Err(StoreError::WrongExpectedState { .. }) => {
                tracing::debug!(%stream, attempt, "concurrent write, deciding again");
                // A random, growing pause spreads out writers that keep colliding.
                let pause = rand::random_range(0..=200 * attempt as u64);
                tokio::time::sleep(std::time::Duration::from_micros(pause)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(CommandError::Contended {
        stream: stream.clone(),
        attempts: MAX_ATTEMPTS + tries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use latchkey_domain::ids::{TechnicianId, TenantId};
    use latchkey_domain::names::{Email, Username};
    use latchkey_domain::technician::{Technician, TechnicianCommand, TechnicianEvent};
    use latchkey_domain::{Actor, AnyEvent};
    use latchkey_store::{AppendResult, MemoryStore, Position, RecordedEvent};
    use std::sync::Arc;

    fn envelope() -> Envelope {
        Envelope {
            actor: "user:admin@msp.example".into(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
        }
    }

    fn admin() -> Actor {
        Actor::User {
            email: Email::parse("admin@msp.example").unwrap(),
        }
    }

    fn at() -> latchkey_domain::Timestamp {
        chrono::DateTime::from_timestamp(1_795_000_000, 0).unwrap()
    }

    fn nik() -> (TechnicianId, StreamName) {
        let id = TechnicianId(Uuid::from_u128(10));
        (id, StreamName::new(id.stream_name()).unwrap())
    }

    async fn register(store: &dyn EventStore) {
        let (id, stream) = nik();
        execute::<Technician, _>(store, &stream, &envelope(), |_| {
            TechnicianCommand::Register {
                technician_id: id,
                username: Username::parse("nik").unwrap(),
                email: Email::parse("nik@nikpot.com").unwrap(),
                by: admin(),
                at: at(),
            }
        })
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_cached_state_catches_up_with_events_another_writer_appended() {
        let store = MemoryStore::new();
        let cache = StateCache::new(10);
        register(&store).await;
        let (_, stream) = nik();
        let first = load_cached::<Technician>(&store, &cache, &stream)
            .await
            .unwrap();
        assert!(first.state.state().unwrap().tenants.is_empty());
        // Another server (no shared cache) adds nik to a tenant.
        let tenant = TenantId(Uuid::from_u128(1));
        execute::<Technician, _>(&store, &stream, &envelope(), |_| {
            TechnicianCommand::JoinTenant {
                tenant_id: tenant,
                by: admin(),
                at: at(),
            }
        })
        .await
        .unwrap();
        let cached = load_cached::<Technician>(&store, &cache, &stream)
            .await
            .unwrap();
        let fresh = load::<Technician>(&store, &stream).await.unwrap();
        assert_eq!(cached.revision, Some(1));
        assert_eq!(cached.state, fresh.state);
        assert!(cached.state.state().unwrap().tenants.contains(&tenant));
    }

    #[tokio::test]
    async fn a_command_appends_its_events_with_type_version_and_metadata() {
        let store = MemoryStore::new();
        register(&store).await;
        let (_, stream) = nik();
        let stored = store.read_stream(&stream, 0, 10).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].event_type, "TechnicianRegistered");
        assert_eq!(stored[0].schema_version, 1);
        assert_eq!(stored[0].metadata.actor, "user:admin@msp.example");
        let json = serde_json::from_slice(&stored[0].payload).unwrap();
        let decoded = AnyEvent::from_json("TechnicianRegistered", 1, json).unwrap();
        assert!(matches!(
            decoded,
            AnyEvent::Technician(TechnicianEvent::TechnicianRegistered(_))
        ));
    }

    #[tokio::test]
    async fn a_refused_command_appends_nothing() {
        let store = MemoryStore::new();
        register(&store).await;
        let (id, stream) = nik();
        let err = execute::<Technician, _>(&store, &stream, &envelope(), |_| {
            TechnicianCommand::Register {
                technician_id: id,
                username: Username::parse("nikolai").unwrap(),
                email: Email::parse("nik@nikpot.com").unwrap(),
                by: admin(),
                at: at(),
            }
        })
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            CommandError::Domain(DomainError::TechnicianAlreadyRegistered)
        ));
        assert_eq!(store.read_stream(&stream, 0, 10).await.unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commands_on_one_stream_lose_no_update() {
        let store = Arc::new(MemoryStore::new());
        register(store.as_ref()).await;
        let (_, stream) = nik();
        let tasks: Vec<_> = (0..16u128)
            .map(|n| {
                let (store, stream) = (store.clone(), stream.clone());
                tokio::spawn(async move {
                    let tenant = TenantId(Uuid::from_u128(100 + n));
                    let result =
                        execute::<Technician, _>(store.as_ref(), &stream, &envelope(), |_| {
                            TechnicianCommand::JoinTenant {
                                tenant_id: tenant,
                                by: admin(),
                                at: at(),
                            }
                        })
                        .await;
                    (tenant, result)
                })
            })
            .collect();
        let mut joined = std::collections::BTreeSet::new();
        for task in tasks {
            match task.await.unwrap() {
                (tenant, Ok(_)) => {
                    joined.insert(tenant);
                }
                // Reported to the caller (HTTP 409), and nothing of it was written.
                (_, Err(CommandError::Contended { .. })) => {}
                (_, Err(e)) => panic!("{e}"),
            }
        }
        let loaded = load::<Technician>(store.as_ref(), &stream).await.unwrap();
        let tenants = &loaded.state.state().unwrap().tenants;
        assert_eq!(
            tenants, &joined,
            "exactly the acknowledged joins are in the stream"
        );
        assert!(
            joined.len() >= 8,
            "most writers get through: {}",
            joined.len()
        );
    }

    #[tokio::test]
    async fn a_command_that_keeps_losing_the_race_is_reported_as_contended() {
        let store = TestStore::always_behind();
        let (id, stream) = nik();
        let mut decided = 0;
        let err = execute::<Technician, _>(&store, &stream, &envelope(), |_| {
            decided += 1;
            TechnicianCommand::Register {
                technician_id: id,
                username: Username::parse("nik").unwrap(),
                email: Email::parse("nik@nikpot.com").unwrap(),
                by: admin(),
                at: at(),
            }
        })
        .await
        .unwrap_err();
        assert!(matches!(
            err,
            CommandError::Contended {
                attempts: MAX_ATTEMPTS,
                ..
            }
        ));
        assert_eq!(
            decided, MAX_ATTEMPTS,
            "each attempt decided again on fresh state"
        );
    }

    fn join(tenant: u128) -> TechnicianCommand {
        TechnicianCommand::JoinTenant {
            tenant_id: TenantId(Uuid::from_u128(tenant)),
            by: admin(),
            at: at(),
        }
    }

    fn tenants_of(state: &Technician) -> Vec<TenantId> {
        state.state().unwrap().tenants.iter().copied().collect()
    }

    #[tokio::test]
    async fn a_command_on_a_current_cached_state_appends_without_reading_the_stream() {
        let store = TestStore::default();
        let cache = StateCache::new(10);
        register(&store).await;
        let (_, stream) = nik();
        load_cached::<Technician>(&store, &cache, &stream)
            .await
            .unwrap();
        store.reads();
        let done =
            execute_cached::<Technician, _>(&store, &cache, &stream, &envelope(), |_| join(1))
                .await
                .unwrap();
        assert_eq!(
            store.reads(),
            0,
            "the append's expected revision was the check"
        );
        assert_eq!(done.attempts, 1);
        assert_eq!(tenants_of(&done.state), [TenantId(Uuid::from_u128(1))]);
        assert_eq!(store.read_stream(&stream, 0, 10).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn a_command_on_a_cached_state_that_is_behind_is_decided_again_on_the_stream() {
        let store = TestStore::default();
        let cache = StateCache::new(10);
        register(&store).await;
        let (_, stream) = nik();
        load_cached::<Technician>(&store, &cache, &stream)
            .await
            .unwrap();
        // Another server (no shared cache) adds nik to tenant 1.
        execute::<Technician, _>(&store, &stream, &envelope(), |_| join(1))
            .await
            .unwrap();
        let done =
            execute_cached::<Technician, _>(&store, &cache, &stream, &envelope(), |_| join(2))
                .await
                .unwrap();
        assert_eq!(
            done.attempts, 2,
            "the cached state lost the race, then the stream won"
        );
        let both = [TenantId(Uuid::from_u128(1)), TenantId(Uuid::from_u128(2))];
        assert_eq!(tenants_of(&done.state), both);
        let fresh = load::<Technician>(&store, &stream).await.unwrap();
        assert_eq!(tenants_of(&fresh.state), both);
        assert_eq!(fresh.revision, Some(2));
    }

    #[tokio::test]
    async fn what_a_cached_state_refuses_or_finds_done_is_checked_on_the_stream() {
        let store = TestStore::default();
        let cache = StateCache::new(10);
        register(&store).await;
        let (_, stream) = nik();
        load_cached::<Technician>(&store, &cache, &stream)
            .await
            .unwrap();
        // Another server adds nik to tenant 1: the cached state does not know.
        execute::<Technician, _>(&store, &stream, &envelope(), |_| join(1))
            .await
            .unwrap();
        // For the cached state leaving tenant 1 is nothing to do; for the stream it is not.
        let leave = TechnicianCommand::LeaveTenant {
            tenant_id: TenantId(Uuid::from_u128(1)),
            by: admin(),
            at: at(),
        };
        let left = execute_cached::<Technician, _>(&store, &cache, &stream, &envelope(), |_| {
            leave.clone()
        })
        .await
        .unwrap();
        assert_eq!(
            left.events.len(),
            1,
            "decided again on the stream: nik left"
        );
        assert!(tenants_of(&left.state).is_empty());
        assert_eq!(store.read_stream(&stream, 0, 10).await.unwrap().len(), 3);
    }

    /// A memory store for the tests: it counts the events it hands out from streams, and
    /// with `behind` every append loses the race (to see the give-up path).
    #[derive(Default)]
    struct TestStore {
        inner: MemoryStore,
        read: std::sync::atomic::AtomicUsize,
        /// Stream reads, events or not.
        reads: std::sync::atomic::AtomicUsize,
        behind: bool,
    }

    impl TestStore {
        fn always_behind() -> Self {
            Self {
                behind: true,
                ..Self::default()
            }
        }

        /// Events read from streams since the last call.
        fn taken(&self) -> usize {
            self.read.swap(0, std::sync::atomic::Ordering::SeqCst)
        }

        /// Stream reads since the last call, whether they found events or not.
        fn reads(&self) -> usize {
            self.reads.swap(0, std::sync::atomic::Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl EventStore for TestStore {
        async fn append(
            &self,
            stream: &StreamName,
            expected: ExpectedState,
            events: Vec<NewEvent>,
        ) -> Result<AppendResult, StoreError> {
            if self.behind {
                return Err(StoreError::WrongExpectedState {
                    stream: stream.clone(),
                    expected,
                    actual: Some(99),
                });
            }
            self.inner.append(stream, expected, events).await
        }
        async fn read_stream(
            &self,
            stream: &StreamName,
            from: u64,
            max: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            let page = self.inner.read_stream(stream, from, max).await?;
            self.read
                .fetch_add(page.len(), std::sync::atomic::Ordering::SeqCst);
            self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(page)
        }
        async fn read_all(
            &self,
            after: Option<Position>,
            max: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.inner.read_all(after, max).await
        }
        async fn wait_for_events_after(&self, after: Option<Position>) {
            self.inner.wait_for_events_after(after).await
        }
    }

    /// A computer whose stream holds `events` events (its enrollment, then inventories).
    async fn long_computer(store: &dyn EventStore, events: usize) -> StreamName {
        use latchkey_domain::computer::{Computer, ComputerCommand, OsKind};
        use latchkey_domain::ids::{AgentKeyId, ComputerId};
        let computer_id = ComputerId(Uuid::from_u128(7));
        let stream = StreamName::new(computer_id.stream_name()).unwrap();
        let enroll = ComputerCommand::Enroll {
            computer_id,
            tenant_id: TenantId(Uuid::from_u128(1)),
            hostname: latchkey_domain::names::Hostname::parse("W11-L-PASSWORD").unwrap(),
            os: OsKind::Windows,
            agent_key_id: AgentKeyId(Uuid::from_u128(8)),
            admin_group: None,
            by: admin(),
            at: at(),
        };
        execute::<Computer, _>(store, &stream, &envelope(), |_| enroll.clone())
            .await
            .unwrap();
        for n in 1..events {
            // The members change every time, so every report is an event.
            let members: std::collections::BTreeSet<String> =
                [format!("member-{n}")].into_iter().collect();
            let group = latchkey_domain::names::GroupName::parse("Administrators").unwrap();
            execute::<Computer, _>(store, &stream, &envelope(), |_| {
                ComputerCommand::ReportInventory {
                    group: group.clone(),
                    members: members.clone(),
                    at: at(),
                }
            })
            .await
            .unwrap();
        }
        stream
    }

    fn snapshot_store(dir: &tempfile::TempDir) -> SnapshotStore {
        SnapshotStore::open(dir.path().join("snapshots.db")).unwrap()
    }

    /// Waits for the background write of a snapshot of `stream`.
    async fn snapshot_of(store: &SnapshotStore, stream: &StreamName) -> Snapshot {
        for _ in 0..500 {
            if let Some(snapshot) = store.get(stream.as_str()).unwrap() {
                return snapshot;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("no snapshot of {stream} was kept");
    }

    #[tokio::test]
    async fn a_cold_load_of_a_long_stream_reads_only_the_events_after_its_snapshot() {
        use latchkey_domain::computer::Computer;
        let dir = tempfile::tempdir().unwrap();
        let store = TestStore::default();
        let stream = long_computer(&store, SNAPSHOT_EVERY as usize + 20).await;
        store.taken();
        let full = load::<Computer>(&store, &stream).await.unwrap();
        assert_eq!(store.taken(), SNAPSHOT_EVERY as usize + 20);

        // A server loads it and keeps a snapshot.
        let running = StateCache::new(10).with_snapshots(snapshot_store(&dir));
        load_cached::<Computer>(&store, &running, &stream)
            .await
            .unwrap();
        let kept = snapshot_of(&snapshot_store(&dir), &stream).await;
        assert_eq!(kept.revision, SNAPSHOT_EVERY + 19);

        // After a restart (an empty cache), a load reads the snapshot's own event (to check
        // it belongs to this log) and nothing before it.
        store.taken();
        let restarted = StateCache::new(10).with_snapshots(snapshot_store(&dir));
        let loaded = load_cached::<Computer>(&store, &restarted, &stream)
            .await
            .unwrap();
        assert_eq!(store.taken(), 1);
        assert_eq!(loaded.state, full.state);
        assert_eq!(loaded.revision, full.revision);
    }

    #[tokio::test]
    async fn a_snapshot_that_does_not_match_the_log_or_the_state_form_is_ignored() {
        use latchkey_domain::computer::Computer;
        let dir = tempfile::tempdir().unwrap();
        let store = TestStore::default();
        let stream = long_computer(&store, 30).await;
        let full = load::<Computer>(&store, &stream).await.unwrap();
        let wrong_state = Computer::default().encode().unwrap();
        let version = <Computer as Snapshots>::VERSION.unwrap();
        let event_10 = store.read_stream(&stream, 10, 1).await.unwrap()[0].id;
        for bad in [
            // Another log (a restored backup): the event at the revision is another one.
            Snapshot {
                version,
                revision: 10,
                event_id: Uuid::from_u128(99),
                state: wrong_state.clone(),
            },
            // Beyond the end of this log.
            Snapshot {
                version,
                revision: 1000,
                event_id: Uuid::from_u128(99),
                state: wrong_state.clone(),
            },
            // An older form of the state.
            Snapshot {
                version: version + 1,
                revision: 10,
                event_id: event_10,
                state: wrong_state.clone(),
            },
        ] {
            snapshot_store(&dir).put(stream.as_str(), &bad).unwrap();
            let cold = StateCache::new(10).with_snapshots(snapshot_store(&dir));
            let loaded = load_cached::<Computer>(&store, &cold, &stream)
                .await
                .unwrap();
            assert_eq!(
                loaded.state, full.state,
                "snapshot at {} of version {}",
                bad.revision, bad.version
            );
            let _ = std::fs::remove_file(dir.path().join("snapshots.db"));
        }
    }

    /// A session's stream: checked out, and with `ended` checked in too.
    async fn session_stream(store: &dyn EventStore, ended: bool) -> StreamName {
        use latchkey_domain::computer::AccountOwner;
        use latchkey_domain::ids::{ComputerId, SessionId};
        use latchkey_domain::names::{AccountName, GroupName};
        use latchkey_domain::policy::{CheckInAction, LoginMode};
        use latchkey_domain::session::{
            CheckInReason, SessionCheckedIn, SessionCheckedOut, SessionEvent,
        };
        let session_id = SessionId(Uuid::now_v7());
        let computer_id = ComputerId(Uuid::from_u128(7));
        let (technician_id, _) = nik();
        let stream = StreamName::new(session_id.stream_name()).unwrap();
        let mut events: Vec<SessionEvent> = vec![SessionCheckedOut {
            session_id,
            tenant_id: TenantId(Uuid::from_u128(1)),
            technician_id,
            computer_id,
            login_mode: LoginMode::Named,
            account: AccountName::parse("msp-nik").unwrap(),
            account_owner: AccountOwner::Named { technician_id },
            admin_group: GroupName::parse("Administrators").unwrap(),
            on_check_in: CheckInAction::RemoveFromGroup,
            rotate_on_check_in: true,
            post_session: None,
            create_account: true,
            reason: None,
            ticket: None,
            expires_at: at() + chrono::Duration::hours(1),
            by: admin(),
            at: at(),
        }
        .into()];
        if ended {
            events.push(
                SessionCheckedIn {
                    session_id,
                    computer_id,
                    reason: CheckInReason::Manual,
                    by: admin(),
                    at: at(),
                }
                .into(),
            );
        }
        let batch = events
            .iter()
            .map(|e| to_new_event(e, &envelope()))
            .collect();
        store
            .append(&stream, ExpectedState::NoStream, batch)
            .await
            .unwrap();
        stream
    }

    fn cached_streams(cache: &StateCache) -> usize {
        cache
            .generations
            .lock()
            .unwrap()
            .iter()
            .map(HashMap::len)
            .sum()
    }

    #[tokio::test]
    async fn the_cache_keeps_an_open_session_but_not_one_that_has_ended() {
        use latchkey_domain::session::Session;
        let store = MemoryStore::new();
        let cache = StateCache::new(100);
        let open = session_stream(&store, false).await;
        let ended = session_stream(&store, true).await;
        load_cached::<Session>(&store, &cache, &open).await.unwrap();
        let loaded = load_cached::<Session>(&store, &cache, &ended)
            .await
            .unwrap();
        assert!(loaded.state.is_final());
        assert_eq!(loaded.revision, Some(1));
        assert!(
            cache.get::<Session>(&open).is_some(),
            "an open session is kept"
        );
        assert!(
            cache.get::<Session>(&ended).is_none(),
            "an ended session is not"
        );
        assert_eq!(cached_streams(&cache), 1);
    }

    #[tokio::test]
    async fn a_session_ended_through_the_cache_leaves_it_and_later_commands_read_its_stream() {
        use latchkey_domain::session::{CheckInReason, Session, SessionCommand};
        let store = TestStore::default();
        let cache = StateCache::new(100);
        let stream = session_stream(&store, false).await;
        load_cached::<Session>(&store, &cache, &stream)
            .await
            .unwrap();
        assert_eq!(cached_streams(&cache), 1);
        let check_in = SessionCommand::CheckIn {
            reason: CheckInReason::Manual,
            by: admin(),
            at: at(),
        };
        let done = execute_cached::<Session, _>(&store, &cache, &stream, &envelope(), |_| {
            check_in.clone()
        })
        .await
        .unwrap();
        assert_eq!(done.events.len(), 1);
        assert!(done.state.is_final());
        assert_eq!(
            cached_streams(&cache),
            0,
            "the ended session left the cache"
        );
        // A second check-in (say, expiry) reads the stream and finds nothing to do.
        store.taken();
        let again = execute_cached::<Session, _>(&store, &cache, &stream, &envelope(), |_| {
            check_in.clone()
        })
        .await
        .unwrap();
        assert!(again.events.is_empty());
        assert_eq!(again.state, done.state);
        assert_eq!(
            store.taken(),
            2,
            "read from the stream: checked out, checked in"
        );
        assert_eq!(cached_streams(&cache), 0);
    }

    #[test]
    fn the_cache_keeps_what_was_used_recently_when_it_is_full() {
        let cache = StateCache::new(4);
        let state = Technician::default();
        let name = |n: u32| StreamName::new(format!("technician-{n}")).unwrap();
        for n in 0..4 {
            cache.put(&name(n), &state, 1, None);
        }
        // Stream 0 is used again; then new streams push the others out.
        assert!(cache.get::<Technician>(&name(0)).is_some());
        for n in 4..6 {
            cache.put(&name(n), &state, 1, None);
        }
        assert!(
            cache.get::<Technician>(&name(0)).is_some(),
            "used recently: kept"
        );
        assert!(
            cache.get::<Technician>(&name(1)).is_none(),
            "not used since: dropped"
        );
        let held: usize = cache
            .generations
            .lock()
            .unwrap()
            .iter()
            .map(HashMap::len)
            .sum();
        assert!(held <= 4, "never more than the capacity: {held}");
    }
}
