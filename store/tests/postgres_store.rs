//! What the conformance suite cannot see of the PostgreSQL backend: several stores (API
//! servers) sharing one database, racing appends, the schema and its version, damaged rows
//! and wake-ups that cross processes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_store::conformance::{
    append_ok, assert_every_stream_verifies, events, read_whole_log, read_whole_stream,
    unique_stream,
};
use latchkey_store::postgres::testing::TestDatabase;
use latchkey_store::postgres::PostgresStore;
use latchkey_store::{EventStore, ExpectedState, StoreError};

async fn open(db: &TestDatabase) -> PostgresStore {
    PostgresStore::connect(db.url())
        .await
        .unwrap_or_else(|e| panic!("cannot open the store in {}: {e}", db.name()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_sharing_a_database_see_each_others_appends() {
    let db = TestDatabase::create().await;
    let (first, second) = (open(&db).await, open(&db).await);
    let stream = unique_stream("shared");
    append_ok(&first, &stream, ExpectedState::NoStream, events(0, 1)).await;
    append_ok(&second, &stream, ExpectedState::Exact(0), events(1, 1)).await;
    // `first` remembers revision 0 as the head; it must notice the other server's append.
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
    let result = append_ok(&first, &stream, ExpectedState::Any, events(3, 2)).await;
    assert_eq!(result.next_expected_revision, 3);
    let log = read_whole_log(&second).await;
    assert_eq!(log.len(), 4);
    assert_every_stream_verifies(&log);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_append_sent_twice_at_once_is_written_once() {
    let db = TestDatabase::create().await;
    let (first, second) = (open(&db).await, open(&db).await);
    for _ in 0..10 {
        let stream = unique_stream("twice");
        let batch = events(0, 3);
        let (a, b) = tokio::join!(
            first.append(&stream, ExpectedState::NoStream, batch.clone()),
            second.append(&stream, ExpectedState::NoStream, batch.clone()),
        );
        let (a, b) = (a.expect("first copy"), b.expect("second copy"));
        assert_eq!(a, b, "both callers get the one result");
        let ids: Vec<_> = read_whole_stream(&first, &stream)
            .await
            .iter()
            .map(|e| e.id)
            .collect();
        assert_eq!(ids, batch.iter().map(|e| e.id).collect::<Vec<_>>());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_racing_for_one_stream_all_land_in_one_chain() {
    const WRITERS: u64 = 16;
    const APPENDS: u64 = 15;
    let db = TestDatabase::create().await;
    let stores = [open(&db).await, open(&db).await];
    let stream = unique_stream("contended");
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let store = stores[writer as usize % 2].clone();
        let stream = stream.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..APPENDS {
                let batch = events(writer * 100 + n * 2, 1 + n % 2);
                append_ok(&store, &stream, ExpectedState::Any, batch).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer task");
    }
    let read = read_whole_stream(&stores[0], &stream).await;
    let per_writer: u64 = (0..APPENDS).map(|n| 1 + n % 2).sum();
    assert_eq!(read.len() as u64, WRITERS * per_writer);
    assert_every_stream_verifies(&read);
    let ids = |events: &[latchkey_store::RecordedEvent]| -> Vec<uuid::Uuid> {
        events.iter().map(|e| e.id).collect()
    };
    assert_eq!(
        ids(&read_whole_log(&stores[1]).await),
        ids(&read),
        "$all holds the stream's events in revision order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_starting_together_create_the_schema_once() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    let starts: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for start in starts {
        stores.push(
            start
                .await
                .expect("start task")
                .expect("every server starts"),
        );
    }
    let stream = unique_stream("schema");
    append_ok(&stores[0], &stream, ExpectedState::NoStream, events(0, 1)).await;
    assert_eq!(read_whole_log(&stores[7]).await.len(), 1);
}

#[tokio::test]
async fn a_database_with_a_newer_schema_is_refused() {
    let db = TestDatabase::create().await;
    drop(open(&db).await);
    db.raw_connection()
        .await
        .batch_execute("UPDATE latchkey_store.schema_version SET version = 99")
        .await
        .expect("bumps the version");
    let refused = PostgresStore::connect(db.url()).await.map(|_| ());
    assert!(
        matches!(&refused, Err(StoreError::Unavailable(m)) if m.contains("upgrade Latchkey")),
        "{refused:?}"
    );
}

#[tokio::test]
async fn a_corrupt_row_is_reported_not_returned() {
    let db = TestDatabase::create().await;
    let store = open(&db).await;
    let stream = unique_stream("corrupt");
    append_ok(&store, &stream, ExpectedState::NoStream, events(0, 2)).await;
    db.raw_connection()
        .await
        .batch_execute("UPDATE latchkey_store.events SET hash = '\\x00' WHERE revision = 1")
        .await
        .expect("vandalises");
    let read = store.read_all(None, 10).await;
    assert!(
        matches!(&read, Err(StoreError::Corrupt(m)) if m.contains("hash")),
        "{read:?}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_reported_with_where_it_was_looked_for() {
    let refused = PostgresStore::connect("postgres://latchkey:hunter2@127.0.0.1:1/events")
        .await
        .map(|_| ());
    match refused {
        Err(StoreError::Unavailable(message)) => {
            assert!(message.contains("127.0.0.1 port 1"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Another server's append reaches a waiter through NOTIFY, well before the poll would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_wakes_on_another_servers_append() {
    let db = TestDatabase::create().await;
    let (writer, waiter) = (open(&db).await, Arc::new(open(&db).await));
    let stream = unique_stream("notify");
    let mut waits = Vec::new();
    for n in 0..5 {
        let after = read_whole_log(&*waiter).await.last().map(|e| e.position);
        let waiting = {
            let waiter = Arc::clone(&waiter);
            tokio::spawn(async move {
                let started = Instant::now();
                // Wake-ups may be spurious: wait until the event is really readable.
                loop {
                    waiter.wait_for_events_after(after).await;
                    if !waiter.read_all(after, 1).await.expect("reads").is_empty() {
                        return started.elapsed();
                    }
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(30)).await;
        append_ok(&writer, &stream, ExpectedState::Any, events(n, 1)).await;
        waits.push(waiting.await.expect("waiter task"));
    }
    // The poll alone would take 250 ms from the start of each wait; the median leaves room
    // for a round slowed by whatever else the machine runs.
    waits.sort();
    assert!(
        waits[waits.len() / 2] < Duration::from_millis(200),
        "appends 30 ms into a wait were seen only after {waits:?}"
    );
}

/// PostgreSQL's plan for `EXECUTE name(args)` of a statement prepared from `sql`, one line per
/// step.
async fn plan(client: &tokio_postgres::Client, name: &str, sql: &str, args: &str) -> String {
    client
        .batch_execute(&format!("DEALLOCATE ALL; PREPARE {name} AS {sql}"))
        .await
        .unwrap();
    client
        .query(&format!("EXPLAIN EXECUTE {name}({args})"), &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<_, String>(0))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn looking_for_new_events_reads_a_few_index_pages_not_the_whole_log() {
    use latchkey_store::postgres::testing::{PROBE_SQL, READ_ALL_SQL};
    let db = TestDatabase::create().await;
    let store = open(&db).await;
    // A log of many transactions, as a server's is.
    for i in 0..300 {
        let stream = unique_stream("probe");
        append_ok(&store, &stream, ExpectedState::NoStream, events(i, 1)).await;
    }
    let client = db.raw_connection().await;
    client
        .batch_execute("ANALYZE latchkey_store.events")
        .await
        .unwrap();
    let head: (String, i64) = {
        let row = client
            .query_one(
                "SELECT transaction_id::text, position FROM latchkey_store.events
                 ORDER BY transaction_id DESC, position DESC LIMIT 1",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    // A server's connections keep their statements prepared, and PostgreSQL soon plans them
    // once for any parameters (a generic plan): both kinds of plan must use the index.
    for mode in ["force_generic_plan", "force_custom_plan"] {
        client
            .batch_execute(&format!("SET plan_cache_mode = {mode}"))
            .await
            .unwrap();
        for (name, sql, args) in [
            ("probe", PROBE_SQL, format!("'{}', {}", head.0, head.1)),
            (
                "read_all",
                READ_ALL_SQL,
                format!("'{}', {}, 1000", head.0, head.1),
            ),
        ] {
            let plan = plan(&client, name, sql, &args).await;
            assert!(
                plan.contains("Index")
                    && plan.contains("events_pkey")
                    && !plan.contains("Seq Scan"),
                "{name} with {mode}:\n{plan}"
            );
        }
    }
}
