//! The conformance suite against a real KurrentDB (EventStoreDB) server, named by
//! `LATCHKEY_TEST_KURRENTDB_URL`, e.g.
//!
//! ```text
//! docker run -d -p 2113:2113 -e KURRENTDB_INSECURE=true kurrentplatform/kurrentdb:26.1.1
//! LATCHKEY_TEST_KURRENTDB_URL='kurrentdb://localhost:2113?tls=false' \
//!     cargo test -p latchkey-store --features kurrentdb --test conformance_kurrentdb
//! ```
//!
//! Without the variable every test says loudly that it was skipped and passes: no KurrentDB
//! server can be installed on the development machines, so this is the one suite that
//! cannot run everywhere. With the variable set, a server that cannot be reached fails the
//! tests.
//!
//! Isolation. KurrentDB has no databases to hand each case an empty store, and renaming
//! streams (a per-case prefix) would change the stream names the hash chain covers, so
//! chains read back through a renaming wrapper would no longer verify. Instead:
//! - every case already writes to streams no other case uses (`unique_stream`);
//! - the cases of this binary run one at a time (a lock held by each backend value for the
//!   whole case), and each case's store sees `$all` only after the position where the log
//!   ended when the case started (the `Isolated` wrapper below), so `read_all`, the
//!   subscriptions and the kill -9 case (whose child process writes streams of its own)
//!   see exactly the events written during that case, as if the store had been empty.
//!
//! So the server must be dedicated to this run: another process writing to it while the
//! suite runs would show up in the `$all` assertions. Events from earlier runs do not
//! matter. The kill -9 case kills the client process, not the server: it proves that an
//! append acknowledged by this backend is on the server.
#![cfg(feature = "kurrentdb")]

use std::io::Write;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use latchkey_store::conformance::{self, Backend};
use latchkey_store::kurrentdb::KurrentStore;
use latchkey_store::{
    AppendResult, EventStore, ExpectedState, NewEvent, Position, RecordedEvent, StoreError,
    StreamName,
};
use tokio::sync::{Mutex, OwnedMutexGuard};

const URL_VARIABLE: &str = "LATCHKEY_TEST_KURRENTDB_URL";

/// One backend value per case; it holds this binary's turn on the server for the case.
struct Kurrent {
    url: String,
    /// Where `$all` ended when the case started.
    start: Option<Position>,
    _turn: OwnedMutexGuard<()>,
}

fn turns() -> Arc<Mutex<()>> {
    static TURNS: OnceLock<Arc<Mutex<()>>> = OnceLock::new();
    Arc::clone(TURNS.get_or_init(|| Arc::new(Mutex::new(()))))
}

impl Kurrent {
    /// The backend for one case, or `None` (after saying so) when no server is configured.
    async fn from_env() -> Option<Self> {
        let url = match std::env::var(URL_VARIABLE) {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                announce_skip();
                return None;
            }
        };
        let turn = turns().lock_owned().await;
        let store = connect(&url).await;
        let start = store.last_position().await.unwrap_or_else(|e| {
            panic!("cannot read the end of $all on the {URL_VARIABLE} server: {e}")
        });
        Some(Self {
            url,
            start,
            _turn: turn,
        })
    }
}

async fn connect(url: &str) -> KurrentStore {
    KurrentStore::connect(url).await.unwrap_or_else(|e| {
        panic!("{URL_VARIABLE} is set but its KurrentDB server cannot be used: {e}")
    })
}

/// Written straight to the process's stderr, past the test harness's output capture, so the
/// skip shows in every test run's log and not only with `--nocapture`.
fn announce_skip() {
    let case = std::thread::current()
        .name()
        .unwrap_or("a KurrentDB conformance case")
        .to_owned();
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {case}: no KurrentDB server is configured, so the KurrentDB backend is NOT \
         tested. Set {URL_VARIABLE} (e.g. kurrentdb://localhost:2113?tls=false for an --insecure server) \
         to run it."
    );
}

#[async_trait]
impl Backend for Kurrent {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(Isolated {
            store: connect(&self.url).await,
            start: self.start,
        })
    }

    fn url(&self) -> Option<String> {
        Some(self.url.clone())
    }
}

/// The real store, with `$all` starting after `start`: what an empty store would show.
/// Appends and stream reads pass through untouched.
struct Isolated {
    store: KurrentStore,
    start: Option<Position>,
}

impl Isolated {
    fn after(&self, after: Option<Position>) -> Option<Position> {
        match (after, self.start) {
            (Some(after), Some(start)) => Some(after.max(start)),
            (after, start) => after.or(start),
        }
    }
}

#[async_trait]
impl EventStore for Isolated {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        self.store.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store
            .read_stream(stream, from_revision, max_count)
            .await
    }

    async fn read_all(
        &self,
        after: Option<Position>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        self.store.read_all(self.after(after), max_count).await
    }

    async fn wait_for_events_after(&self, after: Option<Position>) {
        self.store.wait_for_events_after(self.after(after)).await
    }
}

latchkey_store::conformance_tests!(match Kurrent::from_env().await {
    Some(backend) => backend,
    None => return,
});

// ---------------------------------------------------------------------------------------
// KurrentDB-specific cases.

/// The store is usable from a current-thread runtime (actix's kind): the client runs on the
/// store's own runtime, and dropping the store there must not panic.
#[tokio::test(flavor = "current_thread")]
async fn works_from_a_current_thread_runtime_and_drops_cleanly() {
    let Some(backend) = Kurrent::from_env().await else {
        return;
    };
    let store = backend.open().await;
    let stream = conformance::unique_stream("current-thread");
    let batch = conformance::events(0, 2);
    let result = conformance::append_ok(&*store, &stream, ExpectedState::NoStream, batch).await;
    assert_eq!(result.next_expected_revision, 1);
    let read = conformance::read_whole_stream(&*store, &stream).await;
    assert_eq!(read.len(), 2);
    assert_eq!(read[1].position, result.position);
    drop(store);
}

/// A conflict reported by the server (another writer got in between our read and our
/// append) surfaces as `WrongExpectedState` with the revision the stream really has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_exact_appends_leave_one_winner_and_report_the_real_revision() {
    let Some(backend) = Kurrent::from_env().await else {
        return;
    };
    let store = backend.open().await;
    let stream = conformance::unique_stream("race");
    conformance::append_ok(
        &*store,
        &stream,
        ExpectedState::NoStream,
        conformance::events(0, 1),
    )
    .await;
    let attempts: Vec<_> = (0..8)
        .map(|n| {
            let store = Arc::clone(&store);
            let stream = stream.clone();
            tokio::spawn(async move {
                store
                    .append(
                        &stream,
                        ExpectedState::Exact(0),
                        conformance::events(10 + n, 1),
                    )
                    .await
            })
        })
        .collect();
    let mut winners = 0;
    for attempt in attempts {
        match attempt.await.expect("append task") {
            Ok(result) => {
                winners += 1;
                assert_eq!(result.next_expected_revision, 1);
            }
            Err(StoreError::WrongExpectedState { actual, .. }) => assert_eq!(actual, Some(1)),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    assert_eq!(winners, 1, "exactly one exact append wins");
    let read = conformance::read_whole_stream(&*store, &stream).await;
    assert_eq!(read.len(), 2);
    conformance::assert_every_stream_verifies(&read);
}
