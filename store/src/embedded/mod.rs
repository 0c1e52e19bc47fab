//! The embedded event store: one SQLite file, zero setup, the default backend. Appends go
//! through one writer thread that group-commits them (see `writer`); reads run on a small
//! pool of read-only connections off the async threads. It must never answer an append
//! before it is durable, nor let a reader see a later event without every earlier one.

mod rows;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::Connection;
use tokio::sync::{oneshot, watch};

use crate::api::{
    AppendResult, EventStore, ExpectedState, NewEvent, Position, RecordedEvent, StoreError,
    StreamName,
};
use crate::append_rules;
use crate::sequence::first_seq_after;
use schema::sql_error;
use writer::{AppendRequest, Counters};

/// Reads running at once, each on a connection of its own; more wait their turn: twice the
/// cores, at least 4 and at most 64. Idle connections are kept for reuse up to the same
/// number. Without a bound, a burst of reads (thousands of agents reconnecting at once)
/// opened a connection and a blocking thread per read, until the process ran out of file
/// descriptors. Kept small: every connection maps the file (`mmap_size`) and the pages it has
/// read stay resident in its own mapping, so each one adds to the process's resident memory
/// about as much of the file as it has touched (with 64, a burst of 19,000 agents connecting
/// left 136–270 MiB of the file resident). A read is a few pages already in memory, so more
/// reads at once than cores gain little.
fn max_readers() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |cores| 2 * cores.get())
        .clamp(4, 64)
}

/// How long `wait_for_events_after` sleeps when the writer is gone and no commit can wake it.
const DEAD_WRITER_POLL: Duration = Duration::from_millis(200);

/// A handle on an embedded store. Clones share the file, the writer and the read pool; the
/// writer thread stops once the last handle is dropped.
///
/// One process should own a file at a time. Several would stay correct (each batch
/// re-checks the log's end under SQLite's write lock) but would fight over that lock.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

/// What the writer has done since the store was opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WriterStats {
    /// Transactions committed (each one fsync).
    pub commits: u64,
    /// Events written by those transactions.
    pub events: u64,
}

struct Inner {
    path: PathBuf,
    /// `None` only while dropping, to close the channel before joining the writer.
    requests: Option<mpsc::Sender<AppendRequest>>,
    writer: Option<JoinHandle<()>>,
    head: watch::Receiver<u64>,
    readers: Mutex<Vec<Connection>>,
    /// One permit per read running; see [`max_readers`].
    reading: tokio::sync::Semaphore,
    /// The number of those permits, and of idle connections kept.
    max_readers: usize,
    /// Read connections opened so far (the first one included).
    readers_opened: std::sync::atomic::AtomicUsize,
    counters: Arc<Counters>,
}

impl EmbeddedStore {
    /// Opens the store at `path`, creating the file (0600) and its parent directories (0700)
    /// if needed.
    /// Blocks briefly on file I/O; async callers may prefer [`crate::open_url`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            latchkey_sql::files::create_private_dir(parent).map_err(|e| {
                StoreError::Unavailable(format!(
                    "cannot create the directory {} for the event store: {e}",
                    parent.display()
                ))
            })?;
        }
        let conn = schema::open_writer(&path)?;
        let last: i64 = conn
            .query_row(writer::LAST_POSITION, [], |row| row.get(0))
            .map_err(|e| sql_error("cannot read the end of the log", e))?;
        let head = u64::try_from(last).map_err(|_| {
            StoreError::Corrupt(format!("the log ends at a negative position {last}"))
        })?;
        // Opened now so a file readers cannot use fails here, not on the first read.
        let reader = schema::open_reader(&path)?;
        let (published, head_rx) = watch::channel(head);
        let (requests, queue) = mpsc::channel();
        let counters = Arc::new(Counters::default());
        let writer = writer::spawn(conn, head, published, Arc::clone(&counters), queue)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                requests: Some(requests),
                writer: Some(writer),
                head: head_rx,
                readers: Mutex::new(vec![reader]),
                reading: tokio::sync::Semaphore::new(max_readers()),
                max_readers: max_readers(),
                readers_opened: std::sync::atomic::AtomicUsize::new(1),
                counters,
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn writer_stats(&self) -> WriterStats {
        WriterStats {
            commits: self.inner.counters.commits.load(Ordering::Relaxed),
            events: self.inner.counters.events.load(Ordering::Relaxed),
        }
    }

    /// Runs `query` on a pooled read connection on tokio's blocking threads.
    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let _reading = self
            .inner
            .reading
            .acquire()
            .await
            .map_err(|_| StoreError::Unavailable("the event store is closing".into()))?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let conn = inner.take_reader()?;
            let result = query(&conn);
            // A connection that just failed may be broken; let it go rather than reuse it.
            if result.is_ok() {
                inner.give_back(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("a read task failed: {e}")))?
    }
}

impl Inner {
    fn take_reader(&self) -> Result<Connection, StoreError> {
        let idle = self
            .readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                self.readers_opened.fetch_add(1, Ordering::Relaxed);
                schema::open_reader(&self.path)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.max_readers {
            idle.push(conn);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Readers go first so that the writer's connection is the last one and checkpoints
        // the WAL into the database file as it closes.
        self.readers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        // Closing the channel ends the writer's loop after its current batch.
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

/// SQLite integers are signed; anything larger than the biggest one reads as "no limit".
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn read_events(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<RecordedEvent>, StoreError> {
    let mut statement = conn
        .prepare_cached(sql)
        .map_err(|e| sql_error("cannot read events", e))?;
    let mut rows = statement
        .query(params)
        .map_err(|e| sql_error("cannot read events", e))?;
    // Grown as rows come, not sized to the page: most reads (a cached aggregate catching up)
    // find no event at all, and a page-sized buffer per read cost 180 KiB a time.
    let mut events = Vec::new();
    while let Some(row) = rows
        .next()
        .map_err(|e| sql_error("cannot read events", e))?
    {
        events.push(rows::decode(row)?);
    }
    Ok(events)
}

#[async_trait]
impl EventStore for EmbeddedStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        append_rules::validate_batch(&events)?;
        let stopped = || StoreError::Unavailable("the event store's writer has stopped".into());
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .as_ref()
            .ok_or_else(stopped)?
            .send(AppendRequest {
                stream: stream.clone(),
                expected,
                events,
                reply,
            })
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max_count == 0 {
            return Ok(Vec::new());
        }
        let stream = stream.clone();
        self.read(move |conn| {
            read_events(
                conn,
                rows::READ_STREAM,
                rusqlite::params![
                    stream.as_str(),
                    clamp(from_revision),
                    clamp(max_count as u64)
                ],
            )
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
        let first = clamp(first_seq_after(after));
        self.read(move |conn| {
            // One writer commits in position order, so a snapshot never has a gap below
            // its newest event.
            read_events(
                conn,
                rows::READ_ALL,
                rusqlite::params![first, clamp(max_count as u64)],
            )
        })
        .await
    }

    async fn wait_for_events_after(&self, after: Option<Position>) {
        let first = first_seq_after(after);
        let mut head = self.inner.head.clone();
        if head.wait_for(|&last| last >= first).await.is_err() {
            // The writer is gone: nothing will ever be committed; don't let callers spin.
            tokio::time::sleep(DEAD_WRITER_POLL).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::{event, events, read_whole_log, read_whole_stream, unique_stream};

    fn temp_store() -> (tempfile::TempDir, EmbeddedStore) {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = EmbeddedStore::open(dir.path().join("events.db")).expect("opens");
        (dir, store)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_reads_opens_a_bounded_number_of_connections() {
        let (_dir, store) = temp_store();
        let stream = unique_stream("burst");
        store
            .append(&stream, ExpectedState::NoStream, vec![event(0)])
            .await
            .expect("appends");
        let reads: Vec<_> = (0..2000)
            .map(|_| {
                let (store, stream) = (store.clone(), stream.clone());
                tokio::spawn(async move { store.read_stream(&stream, 0, 10).await })
            })
            .collect();
        for read in reads {
            assert_eq!(read.await.expect("read task").expect("reads").len(), 1);
        }
        let opened = store.inner.readers_opened.load(Ordering::Relaxed);
        assert!(
            opened <= store.inner.max_readers + 1,
            "{opened} read connections opened"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_commits() {
        let (_dir, store) = temp_store();
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let stream = unique_stream("group");
                let mut expected = ExpectedState::NoStream;
                for n in 0..10 {
                    let result = store
                        .append(&stream, expected, vec![event(n)])
                        .await
                        .expect("appends");
                    expected = ExpectedState::Exact(result.next_expected_revision);
                }
            }));
        }
        for task in tasks {
            task.await.expect("writer task");
        }
        let stats = store.writer_stats();
        assert_eq!(stats.events, 320);
        assert!(
            stats.commits < 320,
            "appends waiting together share a commit: {stats:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_same_append_sent_twice_at_once_is_written_once() {
        let (_dir, store) = temp_store();
        let stream = unique_stream("twice");
        let batch = events(0, 3);
        let (a, b) = tokio::join!(
            store.append(&stream, ExpectedState::NoStream, batch.clone()),
            store.append(&stream, ExpectedState::NoStream, batch.clone()),
        );
        let (a, b) = (a.expect("first copy"), b.expect("second copy"));
        assert_eq!(a, b, "both callers get the one result");
        let read = read_whole_stream(&store, &stream).await;
        let ids: Vec<_> = read.iter().map(|e| e.id).collect();
        let expected: Vec<_> = batch.iter().map(|e| e.id).collect();
        assert_eq!(ids, expected);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_handles_opened_on_one_file_stay_consistent() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("events.db");
        let first = EmbeddedStore::open(&path).expect("opens once");
        let second = EmbeddedStore::open(&path).expect("opens twice");
        let stream = unique_stream("shared-file");
        first
            .append(&stream, ExpectedState::NoStream, events(0, 1))
            .await
            .expect("first writes");
        second
            .append(&stream, ExpectedState::Exact(0), events(1, 1))
            .await
            .expect("second sees it");
        // `first` remembers revision 0 as the head; it must notice the other writer.
        let stale = first
            .append(&stream, ExpectedState::Exact(0), events(2, 1))
            .await;
        assert!(
            matches!(
                stale,
                Err(StoreError::WrongExpectedState {
                    actual: Some(1),
                    ..
                })
            ),
            "{stale:?}"
        );
        first
            .append(&stream, ExpectedState::Exact(1), events(3, 1))
            .await
            .expect("first continues");
        let log = read_whole_log(&second).await;
        assert_eq!(log.len(), 3);
        crate::conformance::assert_every_stream_verifies(&log);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_into_the_database_file_as_it_grows() {
        let (dir, store) = temp_store();
        let path = dir.path().join("events.db");
        let size = || std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let empty = size();
        let stream = unique_stream("checkpoint");
        for n in 0..40 {
            store
                .append(&stream, ExpectedState::Any, events(n * 10, 10))
                .await
                .expect("appends");
        }
        assert!(
            size() > empty,
            "the database file grew from {empty} bytes: the WAL was copied into it"
        );
        drop(store);
        let reopened = EmbeddedStore::open(&path).expect("reopens");
        assert_eq!(read_whole_log(&reopened).await.len(), 400);
    }

    #[tokio::test]
    async fn a_corrupt_row_is_reported_not_returned() {
        let (dir, store) = temp_store();
        let stream = unique_stream("corrupt");
        store
            .append(&stream, ExpectedState::NoStream, events(0, 2))
            .await
            .expect("appends");
        let vandal = Connection::open(dir.path().join("events.db")).expect("opens");
        vandal
            .execute("UPDATE events SET event_id = x'00' WHERE revision = 1", [])
            .expect("vandalises");
        drop(vandal);
        let read = store.read_all(None, 10).await;
        assert!(
            matches!(&read, Err(StoreError::Corrupt(m)) if m.contains("event_id")),
            "{read:?}"
        );
    }
}
