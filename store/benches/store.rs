//! Throughput of the embedded store: durable appends with 1, 16 and 64 concurrent writers
//! (group commit), then a full catch-up read of `$all`. Prints a markdown table.
//!
//! `cargo bench -p latchkey-store --bench store`. The store lives under Cargo's target
//! directory (same disk as the repository) unless `LATCHKEY_BENCH_DIR` names another place;
//! `LATCHKEY_BENCH_SECS` sets how long each append run lasts (default 5) and
//! `LATCHKEY_BENCH_WRITERS` which writer counts run (default `1,16,64`).
//!
//! With `LATCHKEY_BENCH_POSTGRES_URL` (or `LATCHKEY_TEST_POSTGRES_URL`, which
//! `scripts/test.sh` sets) naming a PostgreSQL server, the same runs go to the PostgreSQL
//! store in a fresh database there, each beside two baselines: the same writers doing plain
//! single-row INSERTs of the same rows, each its own transaction, into a table with the
//! same columns and only a primary key ("raw INSERT"), and into one with the same columns
//! and the same keys as the store's table ("raw INSERT, same keys").
//!
//! `cargo test --all-targets` runs this too, without cargo bench's `--bench` flag: then every
//! run lasts 0.2 s by default, a smoke test rather than a measurement.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use latchkey_store::postgres::testing::{self, TestDatabase};
use latchkey_store::postgres::{PostgresOptions, PostgresStore};
use latchkey_store::{
    EmbeddedStore, EventMetadata, EventStore, ExpectedState, NewEvent, StreamName,
};
use tokio_postgres::NoTls;
use uuid::Uuid;

const WRITER_COUNTS: [usize; 3] = [1, 16, 64];
const STREAMS_PER_WRITER: usize = 4;
const READ_PAGE: usize = 1000;

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let secs = std::env::var("LATCHKEY_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(if measuring { 5.0 } else { 0.2 });
    let run_for = Duration::from_secs_f64(secs);
    let parent = std::env::var_os("LATCHKEY_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")));
    if let Err(e) = std::fs::create_dir_all(&parent) {
        eprintln!("cannot create {}: {e}", parent.display());
        std::process::exit(1);
    }
    let dir = match tempfile::tempdir_in(&parent) {
        Ok(dir) => dir,
        Err(e) => {
            eprintln!(
                "cannot create a temporary directory in {}: {e}",
                parent.display()
            );
            std::process::exit(1);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("cannot start tokio: {e}");
            std::process::exit(1);
        }
    };
    let path = dir.path().join("events.db");
    let store = match EmbeddedStore::open(&path) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("cannot open {}: {e}", path.display());
            std::process::exit(1);
        }
    };
    eprintln!("store: {}; {secs} s per append run", path.display());

    // `LATCHKEY_BENCH_WRITERS=64` (comma-separated) runs only some columns, for profiling.
    let runs: Vec<(usize, Ids)> = match std::env::var("LATCHKEY_BENCH_WRITERS") {
        Ok(list) => list
            .split(',')
            .filter_map(|n| n.trim().parse().ok())
            .map(|n| (n, Ids::TimeOrdered))
            .collect(),
        Err(_) => WRITER_COUNTS
            .iter()
            .map(|&n| (n, Ids::TimeOrdered))
            .chain([(64, Ids::Random)])
            .collect(),
    };
    let mut rows = Vec::new();
    for &(writers, ids) in &runs {
        let before = store.writer_stats();
        let (events, elapsed) = runtime.block_on(append_for(&store, writers, ids, run_for));
        let after = store.writer_stats();
        let commits = after.commits - before.commits;
        let mean_batch = (after.events - before.events) as f64 / commits.max(1) as f64;
        rows.push(format!(
            "| append, {writers} writer{}, {} event ids | {events} | {:.2} | {:.0} | \
             {mean_batch:.1} |",
            if writers == 1 { "" } else { "s" },
            ids.label(),
            elapsed.as_secs_f64(),
            events as f64 / elapsed.as_secs_f64(),
        ));
        eprintln!("{}", rows.last().map_or("", String::as_str));
    }
    let (events, elapsed) = runtime.block_on(read_everything(&store));
    rows.push(format!(
        "| read $all, pages of {READ_PAGE} | {events} | {:.2} | {:.0} | |",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
    ));
    let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);

    println!("| run | events | seconds | events/s | mean events per commit |");
    println!("|---|---:|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    println!(
        "\nfile size after the runs: {:.1} MiB",
        size as f64 / 1048576.0
    );
    drop(store);

    let postgres = std::env::var("LATCHKEY_BENCH_POSTGRES_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .or_else(testing::server_url);
    match postgres {
        Some(server) => runtime.block_on(bench_postgres(&server, &runs, run_for)),
        None => eprintln!(
            "no PostgreSQL runs: set LATCHKEY_BENCH_POSTGRES_URL to a server's URL (a role \
             that may CREATE DATABASE) to include them"
        ),
    }
}

/// The PostgreSQL runs, each beside its raw-INSERT baseline, then a catch-up read.
async fn bench_postgres(server: &str, runs: &[(usize, Ids)], run_for: Duration) {
    let db = TestDatabase::create_on(server).await;
    let most_writers = runs.iter().map(|&(n, _)| n).max().unwrap_or(1);
    let store = PostgresStore::connect_with(
        db.url(),
        PostgresOptions {
            pool_size: most_writers,
        },
    )
    .await
    .unwrap_or_else(|e| panic!("cannot open the PostgreSQL store: {e}"));
    let admin = db.raw_connection().await;
    admin
        .batch_execute(RAW_TABLES)
        .await
        .unwrap_or_else(|e| panic!("cannot create the baseline tables: {e}"));
    eprintln!("postgres: database {}; {run_for:?} per run", db.name());

    let mut rows = Vec::new();
    let mut ratios = Vec::new();
    for &(writers, ids) in runs {
        let (ours, ours_elapsed) = append_for(&store, writers, ids, run_for).await;
        let (raw, raw_elapsed) =
            raw_insert_for(db.url(), "bench_raw_events", writers, ids, run_for).await;
        let (keyed, keyed_elapsed) =
            raw_insert_for(db.url(), "bench_keyed_events", writers, ids, run_for).await;
        let rate = |n: u64, elapsed: Duration| n as f64 / elapsed.as_secs_f64();
        let ours_rate = rate(ours, ours_elapsed);
        let raw_rate = rate(raw, raw_elapsed);
        let keyed_rate = rate(keyed, keyed_elapsed);
        let plural = if writers == 1 { "" } else { "s" };
        rows.push(format!(
            "| postgres append, {writers} writer{plural}, {} event ids | {ours} | {:.2} | \
             {ours_rate:.0} |",
            ids.label(),
            ours_elapsed.as_secs_f64(),
        ));
        rows.push(format!(
            "| raw INSERT, {writers} writer{plural} | {raw} | {:.2} | {raw_rate:.0} |",
            raw_elapsed.as_secs_f64(),
        ));
        rows.push(format!(
            "| raw INSERT, same keys, {writers} writer{plural} | {keyed} | {:.2} | \
             {keyed_rate:.0} |",
            keyed_elapsed.as_secs_f64(),
        ));
        eprintln!("{}", rows[rows.len() - 3..].join("\n"));
        ratios.push(format!(
            "- {writers} writer{plural}, {} ids: append at {:.0}% of raw INSERT, {:.0}% of raw \
             INSERT with the same keys",
            ids.label(),
            100.0 * ours_rate / raw_rate.max(f64::MIN_POSITIVE),
            100.0 * ours_rate / keyed_rate.max(f64::MIN_POSITIVE),
        ));
    }
    let (events, elapsed) = read_everything(&store).await;
    rows.push(format!(
        "| postgres read $all, pages of {READ_PAGE} | {events} | {:.2} | {:.0} |",
        elapsed.as_secs_f64(),
        events as f64 / elapsed.as_secs_f64(),
    ));

    println!("\n| postgres run | events | seconds | events/s |");
    println!("|---|---:|---:|---:|");
    for row in rows {
        println!("{row}");
    }
    println!();
    for ratio in ratios {
        println!("{ratio}");
    }
    drop(store);
    db.drop_now().await;
}

/// The baselines: the columns of the store's events table with a primary key and nothing
/// else, and with the store's keys.
const RAW_TABLES: &str = "
    CREATE TABLE bench_raw_events (
        transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
        position       bigserial   PRIMARY KEY,
        event_id       uuid        NOT NULL,
        stream         text        NOT NULL,
        revision       bigint      NOT NULL,
        event_type     text        NOT NULL,
        schema_version bigint      NOT NULL,
        actor          text        NOT NULL,
        correlation_id uuid        NOT NULL,
        causation_id   uuid,
        recorded_at    timestamptz NOT NULL,
        prev_hash      bytea,
        hash           bytea       NOT NULL,
        payload        bytea       NOT NULL
    );
    CREATE TABLE bench_keyed_events (LIKE latchkey_store.events INCLUDING ALL);";

/// The baseline INSERT into `{table}`.
fn raw_insert(table: &str) -> String {
    format!(
        "INSERT INTO {table} (event_id, stream, revision, event_type, schema_version, actor, \
         correlation_id, causation_id, recorded_at, prev_hash, hash, payload) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
    )
}

/// `writers` connections each INSERTing one row per transaction (autocommit) into `table`
/// until `run_for` has passed; returns the rows inserted and the time taken.
async fn raw_insert_for(
    url: &str,
    table: &str,
    writers: usize,
    ids: Ids,
    run_for: Duration,
) -> (u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for _ in 0..writers {
        let (client, connection) = tokio_postgres::connect(url, NoTls)
            .await
            .unwrap_or_else(|e| panic!("cannot connect for the baseline: {e}"));
        tokio::spawn(connection);
        let insert = client
            .prepare(&raw_insert(table))
            .await
            .unwrap_or_else(|e| panic!("cannot prepare the baseline INSERT: {e}"));
        clients.push((client, insert));
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (writer, (client, insert)) in clients.into_iter().enumerate() {
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let stream = format!("session-raw-{}-{writer}", Uuid::new_v4().simple());
            let hash = [7u8; 32];
            let mut inserted = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let event = realistic_event(ids, inserted);
                let revision = inserted as i64;
                client
                    .execute(
                        &insert,
                        &[
                            &event.id,
                            &stream,
                            &revision,
                            &event.event_type,
                            &i64::from(event.schema_version),
                            &event.metadata.actor,
                            &event.metadata.correlation_id,
                            &event.metadata.causation_id,
                            &chrono::Utc::now(),
                            &Some(&hash[..]),
                            &&hash[..],
                            &event.payload,
                        ],
                    )
                    .await
                    .unwrap_or_else(|e| panic!("baseline INSERT failed: {e}"));
                inserted += 1;
            }
            inserted
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or_else(|e| panic!("baseline task: {e}"));
    }
    (total, started.elapsed())
}

/// How the benchmark's writers pick event ids. Random (v4) ids land all over the id index,
/// so each append dirties one more page than a time-ordered (v7) id, which goes to its end.
#[derive(Debug, Clone, Copy)]
enum Ids {
    TimeOrdered,
    Random,
}

impl Ids {
    fn new_id(self) -> Uuid {
        match self {
            Ids::TimeOrdered => Uuid::now_v7(),
            Ids::Random => Uuid::new_v4(),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Ids::TimeOrdered => "v7",
            Ids::Random => "v4",
        }
    }
}

/// Runs `writers` tasks appending single-event batches to their own streams with `Exact`
/// expectations until `run_for` has passed; returns the events appended and the time taken.
async fn append_for<S: EventStore + Clone>(
    store: &S,
    writers: usize,
    ids: Ids,
    run_for: Duration,
) -> (u64, Duration) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..writers {
        let store = store.clone();
        let stop = Arc::clone(&stop);
        tasks.push(tokio::spawn(async move {
            let run = Uuid::new_v4().simple().to_string();
            let streams: Vec<StreamName> = (0..STREAMS_PER_WRITER)
                .map(|s| StreamName::new(format!("session-{run}-{writer}-{s}")))
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| panic!("{e}"));
            let mut heads = vec![None; streams.len()];
            let mut appended = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let k = appended as usize % streams.len();
                let expected = heads[k].map_or(ExpectedState::NoStream, ExpectedState::Exact);
                let result = store
                    .append(&streams[k], expected, vec![realistic_event(ids, appended)])
                    .await
                    .unwrap_or_else(|e| panic!("append failed: {e}"));
                heads[k] = Some(result.next_expected_revision);
                appended += 1;
            }
            appended
        }));
    }
    tokio::time::sleep(run_for).await;
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or_else(|e| panic!("writer task: {e}"));
    }
    (total, started.elapsed())
}

/// Reads the whole log the way a catch-up subscription does.
async fn read_everything(store: &impl EventStore) -> (u64, Duration) {
    let started = Instant::now();
    let mut after = None;
    let mut events = 0u64;
    loop {
        let page = store
            .read_all(after, READ_PAGE)
            .await
            .unwrap_or_else(|e| panic!("read failed: {e}"));
        let Some(last) = page.last() else {
            return (events, started.elapsed());
        };
        after = Some(last.position);
        events += page.len() as u64;
    }
}

/// A session-requested event of about 300 bytes, shaped like the real ones.
fn realistic_event(ids: Ids, n: u64) -> NewEvent {
    let payload = format!(
        concat!(
            r#"{{"session_id":"{}","computer_id":"6f1c2d4e-8a9b-4c3d-9e8f-7a6b5c4d3e2f","#,
            r#""technician_id":"0b9a8c7d-6e5f-4a3b-8c2d-1e0f9a8b7c6d","account":"admin-jdoe","#,
            r#""login_mode":"named","requested_at":"2026-01-01T12:00:00Z","ttl_minutes":60,"#,
            r#""reason":"Install printer driver for ticket #{}"}}"#
        ),
        Uuid::new_v4(),
        n
    );
    NewEvent {
        id: ids.new_id(),
        event_type: "SessionRequested".into(),
        schema_version: 1,
        payload: payload.into_bytes(),
        metadata: EventMetadata {
            actor: "user:jdoe@msp.example".into(),
            correlation_id: Uuid::new_v4(),
            causation_id: None,
        },
    }
}
