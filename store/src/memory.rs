//! An in-memory event store for fast unit tests: the same semantics as every other backend,
//! none of the durability. It must never be used where events have to survive the process.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::watch;
use uuid::Uuid;

use crate::api::{
    AppendResult, EventStore, ExpectedState, NewEvent, Position, RecordedEvent, StoreError,
    StreamName,
};
use crate::append_rules::{self, Placed};
use crate::hash_chain::{self, LinkFields};
use crate::sequence::first_seq_after;

/// An in-memory store. Clones are handles on the same data, which is how tests "reopen" it.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    /// The sequence number of the last committed event; 0 while the log is empty.
    head: watch::Sender<u64>,
}

#[derive(Default)]
struct State {
    /// The log; the event at index `i` has sequence number `i + 1`.
    log: Vec<RecordedEvent>,
    /// Indexes into `log` of each stream's events, in revision order.
    streams: HashMap<StreamName, Vec<usize>>,
    ids: HashMap<Uuid, usize>,
    last_recorded_at: Option<DateTime<Utc>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                head: watch::Sender::new(0),
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Appends change the state only after every check passed, so a panic elsewhere
        // cannot leave it half-updated; carry on with what is there.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    fn append(
        &mut self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        let lookup = append_rules::replay(stream, &events, |id| {
            Ok::<_, Infallible>(self.ids.get(&id).map(|&i| {
                let e = &self.log[i];
                Placed {
                    stream: e.stream.as_str().to_owned(),
                    revision: e.revision,
                    position: e.position,
                }
            }))
        });
        let replayed = match lookup {
            Ok(verdict) => verdict?,
            Err(never) => match never {},
        };
        if let Some(original) = replayed {
            return Ok(original);
        }
        let stream_log = self.streams.get(stream);
        let last = stream_log
            .and_then(|indexes| indexes.last())
            .map(|&i| &self.log[i]);
        append_rules::check_expected(stream, expected, last.map(|e| e.revision))?;

        let mut prev_hash = last.map(|e| e.hash);
        let mut revision = last.map_or(0, |e| e.revision + 1);
        // Keeps recorded_at monotonic along the log even if the wall clock steps back.
        let now = hash_chain::truncate_to_micros(Utc::now());
        let recorded_at = self.last_recorded_at.map_or(now, |last| last.max(now));
        self.last_recorded_at = Some(recorded_at);
        let mut position = Position::new(0, 0);
        for event in events {
            let seq = self.log.len() as u64 + 1;
            position = Position::new(seq, seq);
            let mut recorded = RecordedEvent {
                id: event.id,
                stream: stream.clone(),
                revision,
                position,
                event_type: event.event_type,
                schema_version: event.schema_version,
                payload: event.payload,
                metadata: event.metadata,
                recorded_at,
                prev_hash,
                hash: crate::api::Hash([0; 32]),
            };
            recorded.hash = hash_chain::link(prev_hash.as_ref(), &LinkFields::of(&recorded));
            prev_hash = Some(recorded.hash);
            let index = self.log.len();
            self.ids.insert(recorded.id, index);
            self.streams.entry(stream.clone()).or_default().push(index);
            self.log.push(recorded);
            revision += 1;
        }
        Ok(AppendResult {
            next_expected_revision: revision - 1,
            position,
        })
    }
}

#[async_trait]
impl EventStore for MemoryStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        append_rules::validate_batch(&events)?;
        let mut state = self.state();
        let result = state.append(stream, expected, events)?;
        // Published under the lock so watchers never see the head move backwards; a replay
        // leaves it where it is.
        let committed = state.log.len() as u64;
        self.inner.head.send_if_modified(|head| {
            let moved = committed > *head;
            if moved {
                *head = committed;
            }
            moved
        });
        Ok(result)
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.state();
        let Some(indexes) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let from = usize::try_from(from_revision).unwrap_or(usize::MAX);
        Ok(indexes
            .iter()
            .skip(from)
            .take(max_count)
            .map(|&i| state.log[i].clone())
            .collect())
    }

    async fn read_all(
        &self,
        after: Option<Position>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let state = self.state();
        let from = usize::try_from(first_seq_after(after) - 1).unwrap_or(usize::MAX);
        Ok(state
            .log
            .iter()
            .skip(from)
            .take(max_count)
            .cloned()
            .collect())
    }

    async fn wait_for_events_after(&self, after: Option<Position>) {
        let first = first_seq_after(after);
        let mut head = self.inner.head.subscribe();
        // The sender lives as long as `self`, so this only returns once the head moved.
        let _ = head.wait_for(|&seq| seq >= first).await;
    }
}
