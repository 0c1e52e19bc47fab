//! HTTP load benchmark: full check-out → agent results → active → check-in → revocation cycles
//! against the real `latchkey serve` binary on loopback, with simulated agents answering over
//! the real agent endpoints. Reports cycles per second and p50/p99 latency (per HTTP request
//! and per full cycle) at 1, 16 and 64 concurrent clients.
//!
//! `cargo bench -p latchkey-api --bench http` (`LATCHKEY_BENCH_SECONDS`, default 10 per level;
//! `LATCHKEY_BENCH_LEVELS`, default `1,16,64`). Each client is one technician with one
//! computer (named mode), so clients do not queue behind each other's computers.
//!
//! `cargo test --all-targets` runs this too, without cargo bench's `--bench` flag: then each
//! level lasts 1 s by default, a smoke test (every cycle must succeed) rather than a
//! measurement.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{percentile, setup, Api, Server};
use tokio::sync::Mutex;

#[tokio::main]
async fn main() {
    let seconds: f64 = std::env::var("LATCHKEY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if support::measuring() { 10.0 } else { 1.0 });
    let levels: Vec<usize> = std::env::var("LATCHKEY_BENCH_LEVELS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let admin = latchkey_server_stores::tokens::generate_token().1;
    let server = Server::start(&admin);
    let api = Arc::new(Api::new(&server.base));
    println!(
        "{:>8} {:>10} {:>9} {:>14} {:>14} {:>12} {:>12}",
        "clients", "cycles", "cycles/s", "req p50 (ms)", "req p99 (ms)", "cycle p50", "cycle p99"
    );
    for level in levels {
        let clients = setup(&api, &admin, level).await;
        api.latencies.lock().await.clear();
        let cycles: Arc<Mutex<Vec<u64>>> = Arc::default();
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut client| {
                let api = api.clone();
                let cycles = cycles.clone();
                tokio::spawn(async move {
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        client.cycle(&api).await;
                        cycles.lock().await.push(t.elapsed().as_micros() as u64);
                    }
                })
            })
            .collect();
        for task in tasks {
            if let Err(e) = task.await {
                // Stop the server before reporting (the guard runs on this panic too).
                panic!("a client failed: {e}");
            }
        }
        let elapsed = started.elapsed().as_secs_f64();
        let mut requests = api.latencies.lock().await.clone();
        requests.sort_unstable();
        let mut cycles = cycles.lock().await.clone();
        cycles.sort_unstable();
        println!(
            "{:>8} {:>10} {:>9.1} {:>14.2} {:>14.2} {:>12.2} {:>12.2}",
            level,
            cycles.len(),
            cycles.len() as f64 / elapsed,
            percentile(&requests, 0.50),
            percentile(&requests, 0.99),
            percentile(&cycles, 0.50),
            percentile(&cycles, 0.99),
        );
    }
    drop(server);
}
