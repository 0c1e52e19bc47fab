//! The one place where a command meets the log: load the aggregate's stream, `decide`,
//! append with the expected revision, and on a concurrent write retry against fresh state.
//! HTTP handlers, process managers and the expiry scheduler all go through here; none of
//! them appends by itself. It never logs an event body.

use latchkey_domain::{Aggregate, DecodeError, DomainError, Event};
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

/// Recent aggregate states by stream, so a command reads only the events appended since the
/// state was cached instead of the whole stream (a computer's stream grows with every
/// session). Always correct: streams only grow, so a cached state at revision r plus the
/// events after r is the current state, whichever server appended them. Bounded: when full it
/// starts again empty.
/// A cached state: the revision it is at, and the aggregate.
type CachedState = (u64, Arc<dyn Any + Send + Sync>);

pub struct StateCache {
    entries: std::sync::Mutex<HashMap<String, CachedState>>,
    capacity: usize,
}

impl StateCache {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: std::sync::Mutex::new(HashMap::new()),
            capacity,
        }
    }

    fn get<A: Aggregate + Send + Sync + 'static>(&self, stream: &StreamName) -> Option<(A, u64)> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (revision, state) = entries.get(stream.as_str())?;
        state
            .downcast_ref::<A>()
            .map(|state| (state.clone(), *revision))
    }

    fn put<A: Aggregate + Send + Sync + 'static>(
        &self,
        stream: &StreamName,
        state: &A,
        revision: u64,
    ) {
        if self.capacity == 0 {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity && !entries.contains_key(stream.as_str()) {
            entries.clear();
        }
        let newer = entries
            .get(stream.as_str())
            .is_none_or(|(cached, _)| *cached < revision);
        if newer {
            entries.insert(
                stream.as_str().to_owned(),
                (revision, Arc::new(state.clone())),
            );
        }
    }
}

/// Folds a whole stream into its aggregate's state.
pub async fn load<A: Aggregate + Send + Sync + 'static>(
    store: &dyn EventStore,
    stream: &StreamName,
) -> Result<Loaded<A>, CommandError> {
    load_cached(store, &StateCache::new(0), stream).await
}

/// [`load`], starting from the cached state if there is one.
pub async fn load_cached<A: Aggregate + Send + Sync + 'static>(
    store: &dyn EventStore,
    cache: &StateCache,
    stream: &StreamName,
) -> Result<Loaded<A>, CommandError> {
    let (mut state, mut revision) = match cache.get::<A>(stream) {
        Some((state, revision)) => (state, Some(revision)),
        None => (A::default(), None),
    };
    let cached = revision;
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
        }
        if !full {
            if let Some(revision) = revision.filter(|r| Some(*r) != cached) {
                cache.put(stream, &state, revision);
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
    A: Aggregate + Send + Sync + 'static,
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
    A: Aggregate + Send + Sync + 'static,
    F: FnMut(&A) -> A::Command,
{
    for attempt in 1..=MAX_ATTEMPTS {
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
                cache.put(stream, &state, written.next_expected_revision);
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
        attempts: MAX_ATTEMPTS,
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

    /// A store where every append loses the race, to see the give-up path.
    struct AlwaysBehind(MemoryStore);

    #[async_trait]
    impl EventStore for AlwaysBehind {
        async fn append(
            &self,
            stream: &StreamName,
            expected: ExpectedState,
            _: Vec<NewEvent>,
        ) -> Result<AppendResult, StoreError> {
            Err(StoreError::WrongExpectedState {
                stream: stream.clone(),
                expected,
                actual: Some(99),
            })
        }
        async fn read_stream(
            &self,
            stream: &StreamName,
            from: u64,
            max: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.0.read_stream(stream, from, max).await
        }
        async fn read_all(
            &self,
            after: Option<Position>,
            max: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            self.0.read_all(after, max).await
        }
        async fn wait_for_events_after(&self, after: Option<Position>) {
            self.0.wait_for_events_after(after).await
        }
    }

    #[tokio::test]
    async fn a_command_that_keeps_losing_the_race_is_reported_as_contended() {
        let store = AlwaysBehind(MemoryStore::new());
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
}
