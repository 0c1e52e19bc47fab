//! The conformance suite every `EventStore` backend must pass, written once: each case is an
//! async function over a [`Backend`], and [`conformance_tests!`](crate::conformance_tests)
//! turns them into one `#[tokio::test]` each. This is test code: it panics on failure and
//! must never be called from production paths.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use uuid::Uuid;

use crate::api::{
    AppendResult, EventMetadata, EventStore, ExpectedState, NewEvent, Position, RecordedEvent,
    StoreError, StreamName,
};
use crate::hash_chain::{self, ChainError, LinkFields};
use crate::subscription::subscribe_all;

/// How a test case gets at the backend under test. One value serves one test case.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Opens this backend's store. The first call sees an empty store (unless a child
    /// process wrote to `url()` first); every later call must open the same data, and the
    /// suite drops every handle from earlier calls before calling again, to test reopening.
    async fn open(&self) -> Arc<dyn EventStore>;

    /// A `--store` URL under which another process opens the same store, or `None` if the
    /// store cannot outlive or be shared with this process (memory), which skips the
    /// kill -9 case.
    fn url(&self) -> Option<String>;
}

/// Instantiates the whole conformance suite for one backend: one `#[tokio::test]` per case,
/// each evaluating `$backend` (an expression of a type implementing
/// [`conformance::Backend`](crate::conformance::Backend), evaluated inside the async test,
/// so it may `.await`) to get a fresh backend. Use it in an integration test file of this
/// crate, where Cargo provides the crash-writer binary:
///
/// ```ignore
/// latchkey_store::conformance_tests!(MyBackend::new());
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr) => {
        $crate::conformance_tests!(@cases $backend;
            appending_to_a_new_stream_reads_back_with_metadata_intact,
            any_appends_whatever_the_stream_state,
            no_stream_succeeds_only_on_a_new_stream,
            stream_exists_needs_at_least_one_event,
            exact_needs_the_current_last_revision,
            reappending_the_same_event_ids_returns_the_original_result_without_writing,
            partly_matching_event_ids_are_rejected,
            malformed_batches_are_rejected,
            a_multi_event_append_is_all_or_nothing,
            read_stream_starts_at_a_revision_and_stops_at_max_count,
            read_all_pages_strictly_after_a_position,
            concurrent_writers_keep_one_gap_free_global_order,
            the_hash_chain_verifies_and_exposes_tampering,
            waiting_for_events_wakes_on_commit,
            a_subscription_catches_up_then_follows_live_appends,
            a_subscription_resumes_from_a_saved_checkpoint_with_exactly_the_rest,
            reopening_keeps_every_event_and_appends_continue,
        );

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn acknowledged_appends_survive_kill_9() {
            let backend = $backend;
            $crate::conformance::acknowledged_appends_survive_kill_9(
                &backend,
                ::std::path::Path::new(env!("CARGO_BIN_EXE_latchkey-store-crash-writer")),
            )
            .await;
        }
    };
    (@cases $backend:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let backend = $backend;
                $crate::conformance::$case(&backend).await;
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------
// Helpers, public so backend-specific tests can build on them.

/// A stream name no other test uses.
pub fn unique_stream(prefix: &str) -> StreamName {
    StreamName::new(format!("{prefix}-{}", Uuid::new_v4().simple()))
        .unwrap_or_else(|e| panic!("test stream prefix {prefix:?} is not usable: {e}"))
}

/// A new event whose payload and metadata identify it by `n`.
pub fn event(n: u64) -> NewEvent {
    NewEvent {
        id: Uuid::new_v4(),
        event_type: "ConformanceChecked".into(),
        schema_version: 1 + (n % 3) as u32,
        payload: format!(r#"{{"n":{n},"note":"conformance"}}"#).into_bytes(),
        metadata: EventMetadata {
            actor: format!("user:tester-{n}@msp.example"),
            correlation_id: Uuid::new_v4(),
            causation_id: (n & 1 == 0).then(Uuid::new_v4),
        },
    }
}

/// `count` new events numbered from `first`.
pub fn events(first: u64, count: u64) -> Vec<NewEvent> {
    (first..first + count).map(event).collect()
}

pub async fn append_ok(
    store: &dyn EventStore,
    stream: &StreamName,
    expected: ExpectedState,
    events: Vec<NewEvent>,
) -> AppendResult {
    store
        .append(stream, expected, events)
        .await
        .unwrap_or_else(|e| panic!("append to {stream} expecting {expected:?} failed: {e}"))
}

pub async fn read_whole_stream(store: &dyn EventStore, stream: &StreamName) -> Vec<RecordedEvent> {
    store
        .read_stream(stream, 0, usize::MAX)
        .await
        .unwrap_or_else(|e| panic!("reading {stream} failed: {e}"))
}

/// The whole of `$all`, read in pages as a catch-up reader would.
pub async fn read_whole_log(store: &dyn EventStore) -> Vec<RecordedEvent> {
    let mut log: Vec<RecordedEvent> = Vec::new();
    loop {
        let after = log.last().map(|e| e.position);
        let page = store
            .read_all(after, 1000)
            .await
            .unwrap_or_else(|e| panic!("reading $all after {after:?} failed: {e}"));
        if page.is_empty() {
            return log;
        }
        log.extend(page);
    }
}

/// Asserts `recorded` is `new` as appended to `stream` at `revision`.
pub fn assert_recorded_as(
    recorded: &RecordedEvent,
    new: &NewEvent,
    stream: &StreamName,
    revision: u64,
) {
    assert_eq!(recorded.id, new.id, "event id");
    assert_eq!(&recorded.stream, stream, "stream of {}", new.id);
    assert_eq!(recorded.revision, revision, "revision of {}", new.id);
    assert_eq!(
        recorded.event_type, new.event_type,
        "event type of {}",
        new.id
    );
    assert_eq!(
        recorded.schema_version, new.schema_version,
        "schema version of {}",
        new.id
    );
    assert_eq!(recorded.payload, new.payload, "payload of {}", new.id);
    assert_eq!(recorded.metadata, new.metadata, "metadata of {}", new.id);
}

fn assert_wrong_expected_state(
    result: Result<AppendResult, StoreError>,
    stream: &StreamName,
    expected: ExpectedState,
    actual: Option<u64>,
) {
    match result {
        Err(StoreError::WrongExpectedState {
            stream: s,
            expected: e,
            actual: a,
        }) => {
            assert_eq!(&s, stream, "conflict names the stream");
            assert_eq!(e, expected, "conflict names the expectation");
            assert_eq!(a, actual, "conflict reports the actual last revision");
        }
        other => panic!("expected a conflict on {stream} ({expected:?}), got {other:?}"),
    }
}

fn assert_duplicate(result: Result<AppendResult, StoreError>, id: Uuid) {
    match result {
        Err(StoreError::DuplicateEventId { id: reported }) => assert_eq!(reported, id),
        other => panic!("expected DuplicateEventId for {id}, got {other:?}"),
    }
}

fn assert_invalid(result: Result<AppendResult, StoreError>) {
    assert!(
        matches!(result, Err(StoreError::InvalidAppend(_))),
        "expected InvalidAppend, got {result:?}"
    );
}

/// Asserts none of `ids` made it into the log.
async fn assert_never_written(store: &dyn EventStore, ids: &[Uuid]) {
    let log = read_whole_log(store).await;
    for id in ids {
        assert!(
            log.iter().all(|e| e.id != *id),
            "event {id} was written by an append that failed"
        );
    }
}

fn assert_strictly_increasing(events: &[RecordedEvent]) {
    for pair in events.windows(2) {
        assert!(
            pair[0].position < pair[1].position,
            "positions must strictly increase: {} then {}",
            pair[0].position,
            pair[1].position
        );
    }
}

/// Asserts every stream in `log` is an intact hash chain from revision 0.
pub fn assert_every_stream_verifies(log: &[RecordedEvent]) {
    let mut streams: BTreeMap<&StreamName, Vec<RecordedEvent>> = BTreeMap::new();
    for event in log {
        streams
            .entry(&event.stream)
            .or_default()
            .push(event.clone());
    }
    for (stream, events) in streams {
        if let Err(e) = hash_chain::verify_stream(&events) {
            panic!("stream {stream} does not verify: {e}");
        }
    }
}

async fn within<T>(what: &str, future: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// ---------------------------------------------------------------------------------------
// Cases.

pub async fn appending_to_a_new_stream_reads_back_with_metadata_intact(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("tenant");
    let batch = events(0, 2);
    let before = Utc::now();
    let result = append_ok(&*store, &stream, ExpectedState::NoStream, batch.clone()).await;
    assert_eq!(result.next_expected_revision, 1);

    let read = read_whole_stream(&*store, &stream).await;
    assert_eq!(read.len(), 2);
    for (revision, (recorded, new)) in read.iter().zip(&batch).enumerate() {
        assert_recorded_as(recorded, new, &stream, revision as u64);
        assert_eq!(
            hash_chain::truncate_to_micros(recorded.recorded_at),
            recorded.recorded_at,
            "recorded_at is stored at microsecond precision"
        );
        let slack = chrono::Duration::seconds(5);
        assert!(
            recorded.recorded_at >= hash_chain::truncate_to_micros(before) - slack
                && recorded.recorded_at <= Utc::now() + slack,
            "recorded_at {} is the time of the append",
            recorded.recorded_at
        );
    }
    assert_strictly_increasing(&read);
    assert_eq!(
        result.position, read[1].position,
        "the result names the last event's position"
    );
    assert_eq!(read[0].prev_hash, None);
    assert_eq!(read[1].prev_hash, Some(read[0].hash));

    let log = read_whole_log(&*store).await;
    let in_log: Vec<_> = log.into_iter().filter(|e| e.stream == stream).collect();
    assert_eq!(in_log, read, "$all holds the same events as the stream");

    let missing = unique_stream("missing");
    assert!(read_whole_stream(&*store, &missing).await.is_empty());
}

pub async fn any_appends_whatever_the_stream_state(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("computer");
    let first = append_ok(&*store, &stream, ExpectedState::Any, events(0, 1)).await;
    assert_eq!(first.next_expected_revision, 0);
    let second = append_ok(&*store, &stream, ExpectedState::Any, events(1, 2)).await;
    assert_eq!(second.next_expected_revision, 2);
    assert!(second.position > first.position);
}

pub async fn no_stream_succeeds_only_on_a_new_stream(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("session");
    append_ok(&*store, &stream, ExpectedState::NoStream, events(0, 1)).await;
    let rejected = events(1, 1);
    let ids: Vec<_> = rejected.iter().map(|e| e.id).collect();
    let result = store
        .append(&stream, ExpectedState::NoStream, rejected)
        .await;
    assert_wrong_expected_state(result, &stream, ExpectedState::NoStream, Some(0));
    assert_never_written(&*store, &ids).await;
    assert_eq!(read_whole_stream(&*store, &stream).await.len(), 1);
}

pub async fn stream_exists_needs_at_least_one_event(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("technician");
    let rejected = events(0, 2);
    let ids: Vec<_> = rejected.iter().map(|e| e.id).collect();
    let result = store
        .append(&stream, ExpectedState::StreamExists, rejected)
        .await;
    assert_wrong_expected_state(result, &stream, ExpectedState::StreamExists, None);
    assert_never_written(&*store, &ids).await;
    assert!(read_whole_stream(&*store, &stream).await.is_empty());

    append_ok(&*store, &stream, ExpectedState::NoStream, events(2, 1)).await;
    let result = append_ok(&*store, &stream, ExpectedState::StreamExists, events(3, 1)).await;
    assert_eq!(result.next_expected_revision, 1);
}

pub async fn exact_needs_the_current_last_revision(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("computer");
    let result = store
        .append(&stream, ExpectedState::Exact(0), events(0, 1))
        .await;
    assert_wrong_expected_state(result, &stream, ExpectedState::Exact(0), None);

    append_ok(&*store, &stream, ExpectedState::NoStream, events(1, 1)).await;
    let result = append_ok(&*store, &stream, ExpectedState::Exact(0), events(2, 1)).await;
    assert_eq!(result.next_expected_revision, 1);

    for stale in [0, 5] {
        let rejected = events(10 + stale, 2);
        let ids: Vec<_> = rejected.iter().map(|e| e.id).collect();
        let result = store
            .append(&stream, ExpectedState::Exact(stale), rejected)
            .await;
        assert_wrong_expected_state(result, &stream, ExpectedState::Exact(stale), Some(1));
        assert_never_written(&*store, &ids).await;
    }
    assert_eq!(read_whole_stream(&*store, &stream).await.len(), 2);
}

pub async fn reappending_the_same_event_ids_returns_the_original_result_without_writing(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let stream = unique_stream("session");
    let batch = events(0, 2);
    let original = append_ok(&*store, &stream, ExpectedState::NoStream, batch.clone()).await;
    let later = events(2, 1);
    let later_original = append_ok(&*store, &stream, ExpectedState::Exact(1), later.clone()).await;
    let before = read_whole_log(&*store).await;

    // The stream moved on, so every expectation below is stale; a retry must still succeed.
    for expected in [
        ExpectedState::NoStream,
        ExpectedState::Exact(1),
        ExpectedState::Exact(7),
        ExpectedState::Any,
        ExpectedState::StreamExists,
    ] {
        let replayed = store.append(&stream, expected, batch.clone()).await;
        assert_eq!(
            replayed.ok(),
            Some(original),
            "replay expecting {expected:?}"
        );
    }
    let replayed = store.append(&stream, ExpectedState::Exact(1), later).await;
    assert_eq!(replayed.ok(), Some(later_original));
    assert_eq!(
        read_whole_log(&*store).await,
        before,
        "a replay writes nothing"
    );
}

pub async fn partly_matching_event_ids_are_rejected(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("tenant");
    let batch = events(0, 2);
    let (a, b) = (batch[0].clone(), batch[1].clone());
    append_ok(&*store, &stream, ExpectedState::NoStream, batch).await;
    let fresh = event(9);

    assert_duplicate(
        store
            .append(&stream, ExpectedState::Any, vec![a.clone(), fresh.clone()])
            .await,
        fresh.id,
    );
    assert_duplicate(
        store
            .append(&stream, ExpectedState::Any, vec![fresh.clone(), a.clone()])
            .await,
        a.id,
    );
    assert_duplicate(
        store
            .append(&stream, ExpectedState::Any, vec![b.clone(), a.clone()])
            .await,
        a.id,
    );
    let elsewhere = unique_stream("tenant");
    assert_duplicate(
        store
            .append(&elsewhere, ExpectedState::Any, vec![a.clone()])
            .await,
        a.id,
    );
    assert_never_written(&*store, &[fresh.id]).await;
    assert!(read_whole_stream(&*store, &elsewhere).await.is_empty());
    assert_eq!(read_whole_stream(&*store, &stream).await.len(), 2);
}

pub async fn malformed_batches_are_rejected(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("computer");
    assert_invalid(store.append(&stream, ExpectedState::Any, Vec::new()).await);
    let twice = event(0);
    assert_invalid(
        store
            .append(
                &stream,
                ExpectedState::Any,
                vec![twice.clone(), event(1), twice.clone()],
            )
            .await,
    );
    assert_never_written(&*store, &[twice.id]).await;
}

pub async fn a_multi_event_append_is_all_or_nothing(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("computer");
    let batch = events(0, 5);
    let result = append_ok(&*store, &stream, ExpectedState::NoStream, batch.clone()).await;
    assert_eq!(result.next_expected_revision, 4);
    let read = read_whole_stream(&*store, &stream).await;
    for (revision, (recorded, new)) in read.iter().zip(&batch).enumerate() {
        assert_recorded_as(recorded, new, &stream, revision as u64);
    }
    assert_strictly_increasing(&read);

    // The third event's id is taken, so none of the five may land.
    let other = unique_stream("computer");
    let mut spoiled = events(10, 5);
    spoiled[2].id = batch[3].id;
    let fresh: Vec<_> = spoiled
        .iter()
        .filter(|e| e.id != batch[3].id)
        .map(|e| e.id)
        .collect();
    assert_duplicate(
        store.append(&other, ExpectedState::Any, spoiled).await,
        batch[3].id,
    );
    assert_never_written(&*store, &fresh).await;
    assert!(read_whole_stream(&*store, &other).await.is_empty());

    // And a conflicting batch writes none of its events either.
    let conflicting = events(20, 3);
    let ids: Vec<_> = conflicting.iter().map(|e| e.id).collect();
    let result = store
        .append(&stream, ExpectedState::Exact(2), conflicting)
        .await;
    assert_wrong_expected_state(result, &stream, ExpectedState::Exact(2), Some(4));
    assert_never_written(&*store, &ids).await;
}

pub async fn read_stream_starts_at_a_revision_and_stops_at_max_count(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("session");
    let noise = unique_stream("session");
    for n in 0..5 {
        append_ok(&*store, &stream, ExpectedState::Any, events(2 * n, 2)).await;
        append_ok(&*store, &noise, ExpectedState::Any, events(100 + n, 1)).await;
    }
    let revisions = |events: Vec<RecordedEvent>| -> Vec<u64> {
        assert!(events.iter().all(|e| e.stream == stream));
        events.iter().map(|e| e.revision).collect()
    };
    let read = |from, max| store.read_stream(&stream, from, max);
    assert_eq!(
        revisions(read(3, 4).await.expect("reads")),
        vec![3, 4, 5, 6]
    );
    assert_eq!(revisions(read(8, 10).await.expect("reads")), vec![8, 9]);
    assert!(read(10, 10).await.expect("reads").is_empty());
    assert!(read(u64::MAX, 10).await.expect("reads").is_empty());
    assert!(read(0, 0).await.expect("reads").is_empty());
    assert_eq!(read(0, usize::MAX).await.expect("reads").len(), 10);
}

pub async fn read_all_pages_strictly_after_a_position(backend: &dyn Backend) {
    let store = backend.open().await;
    let streams = [unique_stream("a"), unique_stream("b"), unique_stream("c")];
    let mut appended = Vec::new();
    for n in 0..12u64 {
        let batch = events(n * 2, 1 + n % 2);
        appended.extend(batch.iter().map(|e| e.id));
        append_ok(&*store, &streams[n as usize % 3], ExpectedState::Any, batch).await;
    }
    let whole = read_whole_log(&*store).await;
    assert_strictly_increasing(&whole);
    let ids: Vec<_> = whole.iter().map(|e| e.id).collect();
    assert_eq!(
        ids, appended,
        "$all holds every event once, in append order"
    );

    let mut paged: Vec<RecordedEvent> = Vec::new();
    loop {
        let page = store
            .read_all(paged.last().map(|e| e.position), 7)
            .await
            .expect("reads a page");
        assert!(page.len() <= 7);
        if page.is_empty() {
            break;
        }
        paged.extend(page);
    }
    assert_eq!(paged, whole, "pages of 7 add up to the whole log");

    let tail = store
        .read_all(Some(whole[4].position), 3)
        .await
        .expect("reads");
    assert_eq!(
        tail,
        whole[5..8].to_vec(),
        "read_all starts strictly after `after`"
    );
    let end = whole.last().map(|e| e.position);
    assert!(store.read_all(end, 10).await.expect("reads").is_empty());
    assert!(store.read_all(None, 0).await.expect("reads").is_empty());
}

/// What one concurrent writer was told about one event.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ack {
    id: Uuid,
    stream: StreamName,
    revision: u64,
}

pub async fn concurrent_writers_keep_one_gap_free_global_order(backend: &dyn Backend) {
    const WRITERS: u64 = 32;
    const APPENDS: u64 = 50;
    let store = backend.open().await;
    let shared: Arc<Vec<StreamName>> = Arc::new((0..4).map(|_| unique_stream("shared")).collect());
    let batch_len = |append: u64| if append % 5 == 4 { 3 } else { 1 };
    let total: usize = (0..APPENDS).map(batch_len).sum::<u64>() as usize * WRITERS as usize;

    // A catch-up reader running alongside the writers must see exactly what they wrote, in
    // the final order, never skipping an event that committed late.
    let mut subscription = subscribe_all(Arc::clone(&store), None);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(total);
        while seen.len() < total {
            match subscription.next().await {
                Ok(event) => seen.push(event),
                Err(e) => panic!("subscription failed: {e}"),
            }
        }
        seen
    });

    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let store = Arc::clone(&store);
        let shared = Arc::clone(&shared);
        writers.push(tokio::spawn(async move {
            let own = unique_stream("own");
            let mut own_revision: Option<u64> = None;
            let mut acks = Vec::new();
            let mut positions = Vec::new();
            for append in 0..APPENDS {
                let batch = events(writer * 1000 + append * 10, batch_len(append));
                let (stream, result) = if append & 1 == 0 {
                    let expected =
                        own_revision.map_or(ExpectedState::NoStream, ExpectedState::Exact);
                    let result = store.append(&own, expected, batch.clone()).await;
                    (own.clone(), result)
                } else {
                    let stream = shared[(writer + append) as usize % shared.len()].clone();
                    let result = if append % 4 == 1 {
                        store
                            .append(&stream, ExpectedState::Any, batch.clone())
                            .await
                    } else {
                        append_exact_with_retry(&*store, &stream, &batch).await
                    };
                    (stream, result)
                };
                let result =
                    result.unwrap_or_else(|e| panic!("writer {writer} append failed: {e}"));
                if stream == own {
                    own_revision = Some(result.next_expected_revision);
                }
                let first = result.next_expected_revision + 1 - batch.len() as u64;
                for (offset, event) in batch.iter().enumerate() {
                    acks.push(Ack {
                        id: event.id,
                        stream: stream.clone(),
                        revision: first + offset as u64,
                    });
                }
                positions.push(result.position);
            }
            (acks, positions)
        }));
    }
    let mut acks = Vec::new();
    let mut positions = Vec::new();
    for writer in writers {
        let (a, p) = writer.await.expect("writer task");
        acks.extend(a);
        positions.extend(p);
    }

    let log = read_whole_log(&*store).await;
    assert_eq!(log.len(), total, "no event lost or duplicated");
    assert_strictly_increasing(&log);
    let by_id: HashMap<Uuid, &RecordedEvent> = log.iter().map(|e| (e.id, e)).collect();
    assert_eq!(by_id.len(), total, "every event id appears once");
    for ack in &acks {
        let recorded = by_id
            .get(&ack.id)
            .unwrap_or_else(|| panic!("acknowledged event {} is missing", ack.id));
        assert_eq!(
            (&recorded.stream, recorded.revision),
            (&ack.stream, ack.revision)
        );
    }
    let log_positions: HashSet<Position> = log.iter().map(|e| e.position).collect();
    let distinct: HashSet<Position> = positions.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        positions.len(),
        "every append got its own position"
    );
    assert!(
        distinct.is_subset(&log_positions),
        "result positions are event positions"
    );
    assert_every_stream_verifies(&log);

    let seen = within("the concurrent subscription", reader)
        .await
        .expect("reader task");
    assert_eq!(
        seen, log,
        "the live reader saw the final order, without gaps or repeats"
    );
}

/// Appends with `Exact` the way a command handler does: on a conflict, retry against the
/// revision the conflict reported.
async fn append_exact_with_retry(
    store: &dyn EventStore,
    stream: &StreamName,
    batch: &[NewEvent],
) -> Result<AppendResult, StoreError> {
    let mut expected = ExpectedState::NoStream;
    loop {
        match store.append(stream, expected, batch.to_vec()).await {
            Err(StoreError::WrongExpectedState { actual, .. }) => {
                expected = actual.map_or(ExpectedState::NoStream, ExpectedState::Exact);
            }
            other => return other,
        }
    }
}

pub async fn the_hash_chain_verifies_and_exposes_tampering(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("audit");
    let twin = unique_stream("audit");
    for n in 0..4 {
        append_ok(
            &*store,
            &stream,
            ExpectedState::Any,
            events(n * 3, 1 + n % 3),
        )
        .await;
    }
    let read = read_whole_stream(&*store, &stream).await;
    assert_eq!(hash_chain::verify_stream(&read), Ok(()));
    for (i, event) in read.iter().enumerate() {
        let prev = i.checked_sub(1).map(|p| read[p].hash);
        assert_eq!(event.prev_hash, prev);
        assert_eq!(
            event.hash,
            hash_chain::link(prev.as_ref(), &LinkFields::of(event))
        );
    }

    // The same content in another stream links differently: the stream name is hashed.
    let mut copy = events(0, 1);
    copy[0].payload = read[0].payload.clone();
    append_ok(&*store, &twin, ExpectedState::NoStream, copy).await;
    assert_ne!(
        read_whole_stream(&*store, &twin).await[0].hash,
        read[0].hash
    );

    let mut altered = read.clone();
    altered[3].payload = br#"{"n":"forged"}"#.to_vec();
    assert_eq!(
        hash_chain::verify_stream(&altered),
        Err(ChainError::HashMismatch { revision: 3 })
    );
    let mut backdated = read.clone();
    backdated[1].recorded_at -= chrono::Duration::days(1);
    assert_eq!(
        hash_chain::verify_stream(&backdated),
        Err(ChainError::HashMismatch { revision: 1 })
    );
    let mut removed = read.clone();
    removed.remove(2);
    assert!(hash_chain::verify_stream(&removed).is_err());
    let mut relinked = read.clone();
    relinked[4].prev_hash = Some(relinked[2].hash);
    assert_eq!(
        hash_chain::verify_stream(&relinked),
        Err(ChainError::BrokenLink { revision: 4 })
    );
}

pub async fn waiting_for_events_wakes_on_commit(backend: &dyn Backend) {
    let store = backend.open().await;
    let stream = unique_stream("wait");
    let waiter = {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            // Wake-ups may be spurious, so wait until the event is really readable.
            loop {
                store.wait_for_events_after(None).await;
                if !store.read_all(None, 1).await.expect("reads").is_empty() {
                    return;
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let result = append_ok(&*store, &stream, ExpectedState::NoStream, events(0, 1)).await;
    within("a wake-up after a commit", waiter)
        .await
        .expect("waiter task");
    within(
        "an immediate wake-up when events are already there",
        store.wait_for_events_after(None),
    )
    .await;
    let first_position = store.read_all(None, 1).await.expect("reads")[0].position;
    assert_eq!(first_position, result.position);
}

pub async fn a_subscription_catches_up_then_follows_live_appends(backend: &dyn Backend) {
    const STORED: u64 = 2_500;
    let store = backend.open().await;
    let stream = unique_stream("catch-up");
    let mut expected_ids = Vec::new();
    for chunk in 0..STORED / 100 {
        let batch = events(chunk * 100, 100);
        expected_ids.extend(batch.iter().map(|e| e.id));
        append_ok(&*store, &stream, ExpectedState::Any, batch).await;
    }

    let mut subscription = subscribe_all(Arc::clone(&store), None);
    assert_eq!(subscription.checkpoint(), None);
    let mut seen = Vec::new();
    for _ in 0..STORED {
        seen.push(
            within("catch-up", subscription.next())
                .await
                .expect("next event"),
        );
    }

    let live = events(STORED, 10);
    expected_ids.extend(live.iter().map(|e| e.id));
    let writer = {
        let store = Arc::clone(&store);
        let stream = stream.clone();
        tokio::spawn(async move {
            for event in live {
                tokio::time::sleep(Duration::from_millis(5)).await;
                append_ok(&*store, &stream, ExpectedState::Any, vec![event]).await;
            }
        })
    };
    for _ in 0..10 {
        seen.push(
            within("a live event", subscription.next())
                .await
                .expect("next event"),
        );
    }
    writer.await.expect("writer task");

    let ids: Vec<_> = seen.iter().map(|e| e.id).collect();
    assert_eq!(ids, expected_ids, "every event once, in order");
    assert_strictly_increasing(&seen);
    assert_eq!(subscription.checkpoint(), seen.last().map(|e| e.position));
}

pub async fn a_subscription_resumes_from_a_saved_checkpoint_with_exactly_the_rest(
    backend: &dyn Backend,
) {
    let store = backend.open().await;
    let stream = unique_stream("resume");
    append_ok(&*store, &stream, ExpectedState::Any, events(0, 30)).await;

    let mut first = subscribe_all(Arc::clone(&store), None);
    for _ in 0..12 {
        within("an event", first.next()).await.expect("next event");
    }
    let checkpoint = first.checkpoint();
    drop(first);
    append_ok(&*store, &stream, ExpectedState::Any, events(30, 5)).await;

    let mut resumed = subscribe_all(Arc::clone(&store), checkpoint);
    let mut rest = Vec::new();
    for _ in 0..23 {
        rest.push(
            within("an event", resumed.next())
                .await
                .expect("next event"),
        );
    }
    let expected: Vec<_> = read_whole_log(&*store).await.split_off(12);
    assert_eq!(rest, expected, "exactly the events after the checkpoint");
    let nothing_more = tokio::time::timeout(Duration::from_millis(100), resumed.next()).await;
    assert!(
        nothing_more.is_err(),
        "no event is repeated: {nothing_more:?}"
    );
}

pub async fn reopening_keeps_every_event_and_appends_continue(backend: &dyn Backend) {
    let stream = unique_stream("reopen");
    let other = unique_stream("reopen");
    let first_batch = events(0, 2);
    let (before, first_result) = {
        let store = backend.open().await;
        let result = append_ok(
            &*store,
            &stream,
            ExpectedState::NoStream,
            first_batch.clone(),
        )
        .await;
        append_ok(&*store, &other, ExpectedState::NoStream, events(2, 3)).await;
        append_ok(&*store, &stream, ExpectedState::Exact(1), events(5, 1)).await;
        (read_whole_log(&*store).await, result)
    };

    let store = backend.open().await;
    assert_eq!(
        read_whole_log(&*store).await,
        before,
        "everything reads back identically"
    );

    // Idempotency and expectations hold across the restart too.
    let replayed = store
        .append(&stream, ExpectedState::NoStream, first_batch)
        .await;
    assert_eq!(replayed.ok(), Some(first_result));
    let result = store
        .append(&stream, ExpectedState::NoStream, events(6, 1))
        .await;
    assert_wrong_expected_state(result, &stream, ExpectedState::NoStream, Some(2));

    let result = append_ok(&*store, &stream, ExpectedState::Exact(2), events(7, 2)).await;
    assert_eq!(result.next_expected_revision, 4);
    let last_before = before.last().map(|e| e.position);
    assert!(
        Some(result.position) > last_before,
        "positions continue after the old ones"
    );
    let after = read_whole_log(&*store).await;
    assert_eq!(after.len(), before.len() + 2);
    assert_strictly_increasing(&after);
    assert_every_stream_verifies(&after);
}

/// The kill -9 case: a child process appends as fast as it can and prints an `ACK` line for
/// every event once its append returned; we kill it without warning, reopen the store and
/// require every acknowledged event, an intact log, and a store that still takes appends.
pub async fn acknowledged_appends_survive_kill_9(backend: &dyn Backend, crash_writer: &Path) {
    const ENOUGH_ACKS: usize = 300;
    let Some(url) = backend.url() else {
        eprintln!("skipped: this backend cannot be opened from another process");
        return;
    };
    let mut child = KillOnDrop(
        Command::new(crash_writer)
            .args(["--store", &url, "--writers", "8"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", crash_writer.display())),
    );
    let stdout = child.0.stdout.take().expect("piped stdout");

    // Complete lines only: a line cut short by the kill was never a promise.
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    let pump = std::thread::spawn(move || {
        let mut stdout = std::io::BufReader::new(stdout);
        let mut line = String::new();
        while matches!(stdout.read_line(&mut line), Ok(n) if n > 0) {
            if line.ends_with('\n') && lines_tx.send(line.trim_end().to_owned()).is_err() {
                break;
            }
            line.clear();
        }
    });
    let mut acks = Vec::new();
    while acks.len() < ENOUGH_ACKS {
        match within("acknowledgements from the crash writer", lines.recv()).await {
            Some(line) => acks.push(line),
            None => panic!("the crash writer stopped after {} acks", acks.len()),
        }
    }
    child.0.kill().expect("kill -9 the crash writer");
    child.0.wait().expect("reap the crash writer");
    // Lines it printed before dying are acknowledgements too.
    pump.join().expect("stdout pump");
    while let Ok(line) = lines.try_recv() {
        acks.push(line);
    }

    let store = backend.open().await;
    let log = read_whole_log(&*store).await;
    eprintln!(
        "killed the crash writer after {} acknowledged events; {} events in the log",
        acks.len(),
        log.len()
    );
    assert_strictly_increasing(&log);
    assert_every_stream_verifies(&log);
    let by_id: HashMap<Uuid, &RecordedEvent> = log.iter().map(|e| (e.id, e)).collect();
    assert_eq!(by_id.len(), log.len(), "no event id appears twice");
    let mut last_acked: HashMap<StreamName, u64> = HashMap::new();
    for line in &acks {
        let ack = parse_ack(line);
        let recorded = by_id
            .get(&ack.id)
            .unwrap_or_else(|| panic!("acknowledged event is missing after kill -9: {line}"));
        assert_eq!(
            (&recorded.stream, recorded.revision),
            (&ack.stream, ack.revision),
            "{line}"
        );
        let last = last_acked.entry(ack.stream).or_default();
        *last = (*last).max(ack.revision);
    }

    // The store must still take appends where the dead writer left off.
    let (stream, _) = last_acked.iter().next().expect("at least one ack");
    let head = read_whole_stream(&*store, stream)
        .await
        .last()
        .map(|e| e.revision)
        .expect("the stream exists");
    let result = append_ok(&*store, stream, ExpectedState::Exact(head), events(0, 2)).await;
    assert_eq!(result.next_expected_revision, head + 2);
    assert_every_stream_verifies(&read_whole_log(&*store).await);
}

/// Kills the child if the test fails before it does, so no writer outlives the test.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Parses `ACK <stream> <revision> <event-id>`, the crash writer's output format.
fn parse_ack(line: &str) -> Ack {
    let parts: Vec<&str> = line.split(' ').collect();
    match parts.as_slice() {
        ["ACK", stream, revision, id] => Ack {
            stream: StreamName::new(*stream).unwrap_or_else(|e| panic!("{line}: {e}")),
            revision: revision.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
            id: id.parse().unwrap_or_else(|e| panic!("{line}: {e}")),
        },
        _ => panic!("not an ACK line: {line:?}"),
    }
}
