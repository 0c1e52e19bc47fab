//! Fleet-scale benchmark: what N enrolled, idle agents cost the real `latchkey serve` binary
//! while each holds its long poll open, and what full JIT cycles cost beside them.
//!
//! `cargo bench -p latchkey-api --bench fleet`. For each N of `LATCHKEY_FLEET_IDLE` (default
//! `0,1000,10000`; empty for none), on a server of its own:
//!
//! 1. **Idle agents.** N computers are enrolled in one tenant (an enrollment token each, then
//!    `POST /v1/agent/enroll`, 32 at a time). Every one then holds `GET
//!    /v1/agent/commands?wait=60` on a TCP connection of its own (HTTP/1.1 keep-alive, one
//!    hyper client connection per agent on this one tokio runtime), re-issued whenever it
//!    returns. Once every poll is out and the server's CPU has gone quiet, its resident
//!    memory (VmRSS) is read, and the memory per held connection derived from it.
//! 2. **Active cycles beside them.** `LATCHKEY_FLEET_ACTIVE` clients (default 4; each one
//!    technician with one computer in the same tenant) run full cycles, exactly as the HTTP
//!    benchmark does, for `LATCHKEY_FLEET_SECONDS` (default 20): cycles/s, check-out → active
//!    latency, the server's CPU (100% = one core) and memory. Beside them the CPU of this
//!    benchmark process (the client) and of every other process (the database on PostgreSQL,
//!    and whatever else runs on the machine: on a shared machine, read this column first).
//! 3. **Enrollment versus tenant size.** For the largest N, the enrollment rate per block of
//!    `LATCHKEY_FLEET_BLOCK` (default 1,000) computers, and the first 100 against the last 100.
//!
//! 4. **History** (`LATCHKEY_FLEET_HISTORY=10000`, off by default), on a server of its own with
//!    no idle agents: the active clients cycle until each of their computers has had that many
//!    sessions. One row per `LATCHKEY_FLEET_INTERVAL` seconds (default 60): cycles/s in it,
//!    sessions per computer so far, the server's memory and CPU, the other processes' CPU.
//!    Then the same server runs the cycle on those computers and on as many new ones,
//!    alternated (5 rounds of half `LATCHKEY_FLEET_SECONDS` each): what a computer's past
//!    costs, measured apart from the machine's other load and from the size of the log.
//!
//! `LATCHKEY_BENCH_STORE=postgres://…` runs every server with everything in that database (as
//! the HTTP benchmark does); each server's tenant is new, the database is not emptied. Every
//! server of a run gets the same secret-store key, so use a fresh database for each run (or set
//! `LATCHKEY_SECRET_KEY`). `LATCHKEY_BENCH_BIN` runs another `latchkey` binary (to compare
//! builds) instead of the one Cargo built.
//!
//! Agent connections past the first 25,000 are bound to the source addresses 127.0.0.2,
//! 127.0.0.3, … (one address has about 28,000 ephemeral ports). The open-files limit is raised
//! before any server starts, so the servers inherit it: the soft limit to the hard one, and as
//! root both to 1,048,576 (a hard limit the process may not raise caps N: agents past the
//! limit less 512 are not started). An agent that cannot connect, or whose first poll is not
//! answered within 30 s, is counted as failed and the benchmark goes on with the rest.
//!
//! `LATCHKEY_FLEET_FEED=sse` has the idle agents hold the event feed (`GET /v1/agent/feed`,
//! server-sent events) instead of long polls.
//!
//! `cargo test --all-targets` runs this too, without cargo bench's `--bench` flag: then it is
//! a smoke test of a few seconds (N = 0 and 20, 2 s of cycles, no history, unless the
//! variables say otherwise) that checks every agent held its poll and every cycle succeeded.

mod support;

use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, AUTHORIZATION, HOST};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{add_clients, create_tenant, percentile, Api, Client, Server};
use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};

/// Agent connections per loopback source address (`LATCHKEY_FLEET_PER_SOURCE` to try the
/// other addresses with fewer agents).
const CONNECTIONS_PER_SOURCE: usize = 25_000;
/// File descriptors kept for everything but the idle agents' connections.
const FD_RESERVE: u64 = 512;
/// Enrollments (and enrollment tokens) in flight at once.
const ENROLL_CONCURRENCY: usize = 32;
/// Agent connections being opened at once.
const CONNECT_CONCURRENCY: usize = 256;
/// How long an agent may take to connect and get its first poll answered.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);
/// The idle agents' long poll.
const WAIT_SECONDS: u32 = 60;
/// The open-files limit wanted when running as root.
const WANTED_NOFILE: u64 = 1_048_576;

struct Settings {
    measuring: bool,
    idle: Vec<usize>,
    seconds: f64,
    active: usize,
    history: Option<u64>,
    interval: Duration,
    block: usize,
    per_source: usize,
    /// Idle agents hold the event feed (`LATCHKEY_FLEET_FEED=sse`) instead of long polls.
    sse: bool,
}

impl Settings {
    fn read() -> Settings {
        let measuring = support::measuring();
        let var = |name: &str| std::env::var(name).ok();
        let number = |name: &str, default: f64| {
            var(name)
                .map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v}")))
                .unwrap_or(default)
        };
        let idle = var("LATCHKEY_FLEET_IDLE")
            .unwrap_or_else(|| if measuring { "0,1000,10000" } else { "0,20" }.into())
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse().expect("LATCHKEY_FLEET_IDLE: numbers"))
            .collect();
        let history = var("LATCHKEY_FLEET_HISTORY")
            .filter(|v| !v.trim().is_empty())
            .map(|v| v.trim().parse().expect("LATCHKEY_FLEET_HISTORY: a number"));
        Settings {
            measuring,
            idle,
            seconds: number("LATCHKEY_FLEET_SECONDS", if measuring { 20.0 } else { 2.0 }),
            active: number("LATCHKEY_FLEET_ACTIVE", 4.0) as usize,
            history,
            interval: Duration::from_secs_f64(number("LATCHKEY_FLEET_INTERVAL", 60.0)),
            block: (number(
                "LATCHKEY_FLEET_BLOCK",
                if measuring { 1000.0 } else { 10.0 },
            ) as usize)
                .max(1),
            per_source: (number("LATCHKEY_FLEET_PER_SOURCE", CONNECTIONS_PER_SOURCE as f64)
                as usize)
                .max(1),
            sse: match var("LATCHKEY_FLEET_FEED").as_deref().map(str::trim) {
                None | Some("" | "poll") => false,
                Some("sse") => true,
                Some(other) => panic!("LATCHKEY_FLEET_FEED={other}: poll or sse"),
            },
        }
    }
}

#[tokio::main]
async fn main() {
    let settings = Settings::read();
    let nofile = raise_nofile();
    let store = std::env::var("LATCHKEY_BENCH_STORE")
        .map(|url| latchkey_api::config::redacted_store_url(&url))
        .unwrap_or_else(|_| "embedded (SQLite)".into());
    let history_note = match settings.history {
        Some(sessions) => format!("; history to {sessions} sessions per computer"),
        None => String::new(),
    };
    println!(
        "fleet benchmark: store {store}; open-files limit {nofile}; idle N {:?}; {} active \
         clients; {} s of cycles per N{history_note}{}",
        settings.idle,
        settings.active,
        settings.seconds,
        if settings.measuring {
            ""
        } else {
            " (smoke test: not a measurement)"
        }
    );
    let admin = latchkey_server_stores::tokens::generate_token().1;
    let mut runs = Vec::new();
    let mut enrollment = None;
    let largest = settings.idle.iter().copied().max();
    for &n in &settings.idle {
        let (run, blocks) = fleet_run(&settings, &admin, n, nofile).await;
        eprintln!(
            "N = {n}: {} held, {:.1} cycles/s, check-out → active p99 {:.1} ms",
            run.held,
            run.cycles as f64 / run.elapsed,
            percentile(&run.to_active, 0.99)
        );
        if Some(n) == largest {
            enrollment = Some((n, blocks));
        }
        runs.push(run);
    }
    if !runs.is_empty() {
        print_idle(&runs);
        print_active(&runs);
    }
    if let Some((n, enrolled)) = &enrollment {
        print_enrollment(*n, enrolled, settings.block);
    }
    if let Some(sessions) = settings.history {
        history(&settings, &admin, sessions).await;
    }
    if !settings.measuring {
        for run in &runs {
            assert_eq!(
                run.held, run.n,
                "N = {}: every idle agent holds a poll",
                run.n
            );
            assert_eq!(run.failed, 0, "N = {}: no agent failed to connect", run.n);
            assert_eq!(run.lost, 0, "N = {}: no agent lost its connection", run.n);
            assert_eq!(
                run.commands, 0,
                "N = {}: idle agents get no commands",
                run.n
            );
            assert!(run.cycles > 0, "N = {}: cycles ran", run.n);
        }
    }
}

/// What one N gave.
struct Run {
    n: usize,
    /// Agents holding a long poll when the memory was read.
    held: usize,
    failed: usize,
    lost: u64,
    commands: u64,
    /// Seconds from the last agent's first answer until the server's CPU went quiet.
    settle: f64,
    /// VmRSS in KiB: right after start, after enrolling, with the polls held, after cycles.
    rss_start: u64,
    rss_enrolled: u64,
    rss_idle: u64,
    /// Of `rss_idle`: anonymous memory and mapped files (the binary, SQLite's memory maps of
    /// the event store), KiB.
    idle_parts: (u64, u64),
    rss_end: u64,
    cycles: usize,
    elapsed: f64,
    /// Check-out → active, microseconds, sorted.
    to_active: Vec<u64>,
    server_cpu: f64,
    client_cpu: f64,
    /// Every other process (the database, anything else running), 100 = one core.
    other_cpu: f64,
    /// Server CPU per cycle, ms.
    cpu_per_cycle: f64,
    /// Idle polls answered during the cycles (60 s timeouts; more means early wake-ups).
    answered: u64,
    first_error: Option<String>,
}

async fn fleet_run(settings: &Settings, admin: &str, n: usize, nofile: u64) -> (Run, Enrolled) {
    eprintln!("N = {n}: starting a server");
    let server = Server::start(admin);
    let api = Arc::new(Api::new(&server.base));
    let tenant = create_tenant(&api, admin).await;
    let rss_start = rss_kib(server.pid);
    eprintln!("N = {n}: enrolling");
    let enrolled = enroll_fleet(&api, admin, &tenant, n, settings.block, server.pid).await;
    let rss_enrolled = rss_kib(server.pid);
    eprintln!("N = {n}: opening the idle agents' long polls");
    let room = nofile.saturating_sub(FD_RESERVE) as usize;
    let fleet = Fleet::start(
        server.addr(),
        enrolled.agent_tokens.clone(),
        room,
        settings.per_source,
        settings.sse,
    )
    .await;
    fleet.opened(n).await;
    let settle = fleet.settle(server.pid).await;
    let held = fleet.stats.connected.load(Ordering::SeqCst);
    let rss_idle = rss_kib(server.pid);
    let idle_parts = rss_parts(server.pid);
    eprintln!(
        "N = {n}: {held} polls held, server RSS {} MiB; cycling",
        rss_idle / 1024
    );
    let clients = add_clients(&api, admin, &tenant, settings.active).await;
    let answered_before = fleet.stats.answered.load(Ordering::SeqCst);
    let (active, _) = run_active(&api, clients, settings.seconds, server.pid).await;
    let answered = fleet.stats.answered.load(Ordering::SeqCst) - answered_before;
    let rss_end = rss_kib(server.pid);
    let stats = fleet.stats.clone();
    // Read before the server stops: then every agent loses its connection.
    let lost = stats.lost.load(Ordering::SeqCst);
    let first_error = stats.first_error.lock().await.clone();
    // The server goes first, so the agents' sockets are not left in TIME_WAIT on our side.
    drop(server);
    fleet.stop().await;
    if let Some(e) = &first_error {
        eprintln!("N = {n}: first agent error: {e}");
    }
    let run = Run {
        n,
        held,
        failed: stats.failed.load(Ordering::SeqCst),
        lost,
        commands: stats.commands.load(Ordering::SeqCst),
        settle,
        rss_start,
        rss_enrolled,
        rss_idle,
        idle_parts,
        rss_end,
        cycles: active.to_active.len(),
        elapsed: active.elapsed,
        to_active: active.to_active,
        server_cpu: active.server_cpu,
        client_cpu: active.client_cpu,
        other_cpu: active.other_cpu,
        cpu_per_cycle: active.cpu_per_cycle,
        answered,
        first_error,
    };
    (run, enrolled)
}

// ---------------------------------------------------------------------------------------
// Enrollment

/// The enrolled computers, and how long their enrollment took.
struct Enrolled {
    agent_tokens: Vec<String>,
    /// For each computer, its enroll request's start and end.
    times: Vec<(Instant, Instant)>,
    blocks: Vec<Block>,
}

/// One block of computers: its enrollment tokens issued, then its enrollments, each phase
/// `ENROLL_CONCURRENCY` at a time.
struct Block {
    first: usize,
    last: usize,
    tokens_per_s: f64,
    enrollments_per_s: f64,
    /// Server CPU per enrollment, ms.
    cpu_ms: f64,
    /// Enroll request latencies, microseconds, sorted.
    latencies: Vec<u64>,
}

async fn enroll_fleet(
    api: &Api,
    admin: &str,
    tenant: &str,
    n: usize,
    block: usize,
    pid: u32,
) -> Enrolled {
    let mut enrolled = Enrolled {
        agent_tokens: Vec::with_capacity(n),
        times: Vec::with_capacity(n),
        blocks: Vec::new(),
    };
    let mut reported = Instant::now();
    for first in (0..n).step_by(block) {
        let end = (first + block).min(n);
        let started = Instant::now();
        let tokens: Vec<String> = futures::stream::iter(first..end)
            .map(|_| api.enrollment_token(admin, tenant))
            .buffered(ENROLL_CONCURRENCY)
            .collect()
            .await;
        let tokens_per_s = tokens.len() as f64 / started.elapsed().as_secs_f64();
        let started = Instant::now();
        let cpu = CpuClock::start(pid);
        let done: Vec<(String, Instant, Instant)> =
            futures::stream::iter(tokens.iter().zip(first..end))
                .map(|(token, i)| async move {
                    let sent = Instant::now();
                    let (_, agent_token) = api.enroll(token, &format!("FLEET-{i}")).await;
                    (agent_token, sent, Instant::now())
                })
                .buffered(ENROLL_CONCURRENCY)
                .collect()
                .await;
        let enrollments_per_s = done.len() as f64 / started.elapsed().as_secs_f64();
        let cpu_ms = cpu.seconds() * 1000.0 / done.len() as f64;
        let mut latencies: Vec<u64> = done
            .iter()
            .map(|(_, sent, answered)| (*answered - *sent).as_micros() as u64)
            .collect();
        latencies.sort_unstable();
        for (token, sent, answered) in done {
            enrolled.agent_tokens.push(token);
            enrolled.times.push((sent, answered));
        }
        enrolled.blocks.push(Block {
            first,
            last: end - 1,
            tokens_per_s,
            enrollments_per_s,
            cpu_ms,
            latencies,
        });
        if reported.elapsed() > Duration::from_secs(10) {
            eprintln!("  {end} of {n} enrolled ({enrollments_per_s:.0}/s)");
            reported = Instant::now();
        }
    }
    enrolled
}

/// Enrollments per second over computers `range` (by their order of enrollment), from the
/// first one's request to the last one's answer; and their mean latency in ms.
fn enrollment_rate(times: &[(Instant, Instant)], range: std::ops::Range<usize>) -> (f64, f64) {
    let part = &times[range];
    let start = part.iter().map(|t| t.0).min().unwrap();
    let end = part.iter().map(|t| t.1).max().unwrap();
    let mean =
        part.iter().map(|t| (t.1 - t.0).as_secs_f64()).sum::<f64>() / part.len() as f64 * 1000.0;
    (part.len() as f64 / (end - start).as_secs_f64(), mean)
}

// ---------------------------------------------------------------------------------------
// Idle agents

#[derive(Default)]
struct FleetStats {
    /// Agents whose first poll (`wait=0`) was answered.
    opened: AtomicUsize,
    /// Agents that could not connect or got no first answer.
    failed: AtomicUsize,
    /// Agents now polling on a live connection.
    connected: AtomicUsize,
    /// Long polls sent and not answered yet.
    outstanding: AtomicUsize,
    /// Long polls answered.
    answered: AtomicU64,
    /// Agents that lost their connection after opening it.
    lost: AtomicU64,
    /// Commands handed to idle agents (there should be none).
    commands: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl FleetStats {
    async fn error(&self, error: String) {
        self.first_error.lock().await.get_or_insert(error);
    }
}

/// Counts one up while it lives.
struct Held<'a>(&'a AtomicUsize);

impl<'a> Held<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Held(counter)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The idle agents, each a task on this runtime with its own connection.
struct Fleet {
    tasks: tokio::task::JoinSet<()>,
    stats: Arc<FleetStats>,
}

impl Fleet {
    /// Starts an agent for each token, at most `room` of them (the open-files limit, less
    /// what the rest needs); the others count as failed.
    async fn start(
        server: SocketAddr,
        agent_tokens: Vec<String>,
        room: usize,
        per_source: usize,
        sse: bool,
    ) -> Fleet {
        let stats = Arc::new(FleetStats::default());
        if agent_tokens.len() > room {
            let left_out = agent_tokens.len() - room;
            stats.failed.fetch_add(left_out, Ordering::SeqCst);
            stats
                .error(format!(
                    "{left_out} agents not started: the open-files limit leaves room for {room}"
                ))
                .await;
        }
        let permits = Arc::new(Semaphore::new(CONNECT_CONCURRENCY));
        let mut tasks = tokio::task::JoinSet::new();
        for (i, token) in agent_tokens.into_iter().take(room).enumerate() {
            let stats = stats.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let permit = permits.acquire_owned().await.unwrap();
                idle_agent(i, server, &token, permit, &stats, per_source, sse).await;
            });
        }
        Fleet { tasks, stats }
    }

    /// Waits until every agent has opened its connection or failed to, and has its long
    /// poll out.
    async fn opened(&self, n: usize) {
        let started = Instant::now();
        let mut reported = Instant::now();
        loop {
            let opened = self.stats.opened.load(Ordering::SeqCst);
            let failed = self.stats.failed.load(Ordering::SeqCst);
            let connected = self.stats.connected.load(Ordering::SeqCst);
            let outstanding = self.stats.outstanding.load(Ordering::SeqCst);
            if opened + failed >= n && outstanding >= connected {
                eprintln!(
                    "  {opened} agents connected, {failed} failed, in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            if reported.elapsed() > Duration::from_secs(10) {
                eprintln!("  {opened} of {n} agents connected, {failed} failed");
                reported = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (up to a minute) until the server has taken in every poll: its CPU below 10% of
    /// a core for a whole second. Returns the seconds it took.
    async fn settle(&self, pid: u32) -> f64 {
        let started = Instant::now();
        let mut quiet = 0;
        let mut last = cpu_ticks(pid);
        while quiet < 4 && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let now = cpu_ticks(pid);
            let share = (now - last) as f64 / ticks_per_second() / 0.25;
            last = now;
            quiet = if share < 0.10 { quiet + 1 } else { 0 };
        }
        started.elapsed().as_secs_f64()
    }

    async fn stop(mut self) {
        self.tasks.shutdown().await;
    }
}

/// One idle agent: connects, checks its credential with one `wait=0` poll, then holds
/// `wait=60` polls one after the other until its connection breaks.
async fn idle_agent(
    i: usize,
    server: SocketAddr,
    token: &str,
    permit: OwnedSemaphorePermit,
    stats: &FleetStats,
    per_source: usize,
    sse: bool,
) {
    let fail = |why: String| async move {
        stats.failed.fetch_add(1, Ordering::SeqCst);
        stats.error(format!("agent {i}: {why}")).await;
    };
    let stream = match tokio::time::timeout(OPEN_TIMEOUT, connect(i, server, per_source)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return fail(format!("connect: {e}")).await,
        Err(_) => return fail("connect: timed out".into()).await,
    };
    let (mut sender, connection) = match hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(
        TokioIo::new(stream),
    )
    .await
    {
        Ok(handshake) => handshake,
        Err(e) => return fail(format!("handshake: {e}")).await,
    };
    let host = HeaderValue::from_str(&server.to_string()).unwrap();
    let auth = HeaderValue::from_str(&format!("Bearer {token}")).unwrap();
    let mut opened = false;
    let polls = async {
        match tokio::time::timeout(OPEN_TIMEOUT, poll(&mut sender, &host, &auth, 0)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(_)) => return "an idle agent was given commands".to_owned(),
            Ok(Err(e)) => return e,
            Err(_) => return "first poll: no answer".into(),
        }
        opened = true;
        stats.opened.fetch_add(1, Ordering::SeqCst);
        drop(permit);
        let _connected = Held::new(&stats.connected);
        if sse {
            return hold_feed(&mut sender, &host, &auth, stats).await;
        }
        loop {
            let answer = {
                let _outstanding = Held::new(&stats.outstanding);
                poll(&mut sender, &host, &auth, WAIT_SECONDS).await
            };
            match answer {
                Ok(0) => {
                    stats.answered.fetch_add(1, Ordering::SeqCst);
                }
                Ok(count) => {
                    // Not answered by an idle agent: it would be given them again at once.
                    stats.commands.fetch_add(count as u64, Ordering::SeqCst);
                    return "an idle agent was given commands".to_owned();
                }
                Err(e) => return e,
            }
        }
    };
    let why = tokio::select! {
        why = polls => why,
        closed = connection => format!("connection closed: {closed:?}"),
    };
    if opened {
        stats.lost.fetch_add(1, Ordering::SeqCst);
        stats.error(format!("agent {i}: {why}")).await;
    } else {
        fail(why).await;
    }
}

/// A connection to the server: the first `per_source` agents from the default source
/// address, each next `per_source` from 127.0.0.2, 127.0.0.3, …
async fn connect(
    i: usize,
    server: SocketAddr,
    per_source: usize,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    let source = i / per_source;
    if source > 0 {
        let address = Ipv4Addr::new(127, 0, 0, 1 + u8::try_from(source).expect("< 254 sources"));
        // A port of an earlier run may still be in TIME_WAIT.
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(IpAddr::V4(address), 0))?;
    }
    let stream = socket.connect(server).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Holds `GET /v1/agent/feed` (server-sent events) until it ends: the first event must be
/// an empty `commands` list, every later chunk a keep-alive. Returns why it ended.
async fn hold_feed(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
    auth: &HeaderValue,
    stats: &FleetStats,
) -> String {
    if let Err(e) = sender.ready().await {
        return format!("not ready: {e}");
    }
    let request = hyper::Request::get("/v1/agent/feed")
        .header(HOST, host)
        .header(AUTHORIZATION, auth)
        .body(Empty::new())
        .unwrap();
    let response = match sender.send_request(request).await {
        Ok(response) => response,
        Err(e) => return format!("feed: {e}"),
    };
    if !response.status().is_success() {
        return format!("feed: {}", response.status());
    }
    let mut body = response.into_body();
    let mut first = true;
    let _outstanding = Held::new(&stats.outstanding);
    loop {
        let chunk = match body.frame().await {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue,
            },
            Some(Err(e)) => return format!("feed: {e}"),
            None => return "the feed ended".into(),
        };
        let text = String::from_utf8_lossy(&chunk);
        if first {
            first = false;
            if !text.contains(r#""commands":[]"#) {
                return format!("the feed opened with {text}");
            }
            stats.answered.fetch_add(1, Ordering::SeqCst);
        } else if text.contains("event: commands") {
            stats.commands.fetch_add(1, Ordering::SeqCst);
            return "an idle agent was given commands".into();
        }
    }
}

/// One `GET /v1/agent/commands?wait=…`; returns how many commands it gave.
async fn poll(
    sender: &mut SendRequest<Empty<Bytes>>,
    host: &HeaderValue,
    auth: &HeaderValue,
    wait: u32,
) -> Result<usize, String> {
    sender
        .ready()
        .await
        .map_err(|e| format!("not ready: {e}"))?;
    let request = hyper::Request::get(format!("/v1/agent/commands?wait={wait}"))
        .header(HOST, host)
        .header(AUTHORIZATION, auth)
        .body(Empty::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("poll: {e}"))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("poll body: {e}"))?
        .to_bytes();
    if !status.is_success() {
        return Err(format!("poll: {status} {}", String::from_utf8_lossy(&body)));
    }
    let feed: Value = serde_json::from_slice(&body).map_err(|e| format!("poll body: {e}"))?;
    Ok(feed["commands"].as_array().map_or(0, Vec::len))
}

// ---------------------------------------------------------------------------------------
// Active cycles

struct Active {
    /// Check-out → active of every cycle, microseconds, sorted.
    to_active: Vec<u64>,
    elapsed: f64,
    /// CPU over the run, 100 = one core.
    server_cpu: f64,
    client_cpu: f64,
    /// Every other process (the database, anything else running), 100 = one core.
    other_cpu: f64,
    /// Server CPU per cycle, ms.
    cpu_per_cycle: f64,
}

/// Runs `clients` through full cycles for `seconds`; panics if any cycle fails.
/// The `clients` cycle for `seconds`; they are given back with what was measured.
async fn run_active(
    api: &Arc<Api>,
    clients: Vec<Client>,
    seconds: f64,
    pid: u32,
) -> (Active, Vec<Client>) {
    let to_active: Arc<Mutex<Vec<u64>>> = Arc::default();
    let server = CpuClock::start(pid);
    let client = CpuClock::start(std::process::id());
    let machine = CpuClock::machine();
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let api = api.clone();
            let to_active = to_active.clone();
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let took = client.cycle(&api).await;
                    to_active.lock().await.push(took.as_micros() as u64);
                }
                client
            })
        })
        .collect();
    let mut clients = Vec::new();
    for task in tasks {
        match task.await {
            Ok(client) => clients.push(client),
            Err(e) => panic!("a client failed: {e}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let server_cpu = server.percent();
    let client_cpu = client.percent();
    let other_cpu = (machine.percent() - server_cpu - client_cpu).max(0.0);
    let cycles = to_active.lock().await.len();
    let cpu_per_cycle = server.seconds() * 1000.0 / cycles.max(1) as f64;
    let mut to_active = to_active.lock().await.clone();
    to_active.sort_unstable();
    api.latencies.lock().await.clear();
    let active = Active {
        to_active,
        elapsed,
        server_cpu,
        client_cpu,
        other_cpu,
        cpu_per_cycle,
    };
    (active, clients)
}

// ---------------------------------------------------------------------------------------
// History

/// The active clients cycle until each computer has had `sessions` sessions; one row per
/// interval.
async fn history(settings: &Settings, admin: &str, sessions: u64) {
    eprintln!("history: starting a server");
    let server = Server::start(admin);
    let api = Arc::new(Api::new(&server.base));
    let tenant = create_tenant(&api, admin).await;
    let clients = add_clients(&api, admin, &tenant, settings.active).await;
    let done: Arc<Vec<AtomicU64>> = Arc::new(clients.iter().map(|_| AtomicU64::new(0)).collect());
    let to_active: Arc<Mutex<Vec<u64>>> = Arc::default();
    let mut tasks: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let api = api.clone();
            let done = done.clone();
            let to_active = to_active.clone();
            tokio::spawn(async move {
                while done[i].load(Ordering::SeqCst) < sessions {
                    let took = client.cycle(&api).await;
                    to_active.lock().await.push(took.as_micros() as u64);
                    done[i].fetch_add(1, Ordering::SeqCst);
                }
                client
            })
        })
        .collect();
    println!();
    println!(
        "History: {} computers, each until it has had {sessions} sessions (one row per {} s)",
        done.len(),
        settings.interval.as_secs_f64()
    );
    println!();
    println!("| until | cycles/s | sessions per computer | check-out → active p50 | p99 | server CPU | server CPU per cycle | other CPU | server RSS | of it anon / file |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let started = Instant::now();
    let total = |done: &[AtomicU64]| done.iter().map(|d| d.load(Ordering::SeqCst)).sum::<u64>();
    // Cycles/s and server CPU per cycle of each row, and the server's RSS after the first.
    let mut rates = Vec::new();
    let mut first_rss = None;
    let mut last_total = 0;
    let mut old = Vec::new();
    loop {
        let clock = CpuClock::start(server.pid);
        let client = CpuClock::start(std::process::id());
        let machine = CpuClock::machine();
        let from = Instant::now();
        let all_done = async {
            while !tasks.iter().all(|t| t.is_finished()) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let finished = tokio::time::timeout(settings.interval, all_done)
            .await
            .is_ok();
        let now = total(&done);
        let cycles = now - last_total;
        let rate = cycles as f64 / from.elapsed().as_secs_f64();
        last_total = now;
        let least = done.iter().map(|d| d.load(Ordering::SeqCst)).min().unwrap();
        let most = done.iter().map(|d| d.load(Ordering::SeqCst)).max().unwrap();
        let mut latencies = std::mem::take(&mut *to_active.lock().await);
        latencies.sort_unstable();
        api.latencies.lock().await.clear();
        let rss = rss_kib(server.pid);
        let (anon, file) = rss_parts(server.pid);
        let server_cpu = clock.percent();
        let cpu_per_cycle = clock.seconds() * 1000.0 / cycles.max(1) as f64;
        first_rss.get_or_insert(rss);
        println!(
            "| {:.0} s{} | {rate:.1} | {least}–{most} | {:.1} ms | {:.1} ms | {:.0}% | {:.1} ms | {:.0}% | {:.1} MiB | {:.1} / {:.1} MiB |",
            started.elapsed().as_secs_f64(),
            if finished { " (end)" } else { "" },
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            server_cpu,
            cpu_per_cycle,
            (machine.percent() - server_cpu - client.percent()).max(0.0),
            mib(rss),
            mib(anon),
            mib(file),
        );
        rates.push((rate, cpu_per_cycle));
        // A client that is done has reached its sessions, or failed: then stop here.
        for task in tasks.iter_mut().filter(|t| t.is_finished()) {
            match task.await {
                Ok(client) => old.push(client),
                Err(e) => panic!("a client failed: {e}"),
            }
        }
        tasks.retain(|t| !t.is_finished());
        if finished {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // The last row is usually a partial one.
    let (first_rate, first_cpu) = rates[0];
    let (last_rate, last_cpu) = rates[rates.len().saturating_sub(2)];
    println!();
    println!(
        "{} cycles in {elapsed:.0} s ({:.1} cycles/s overall). First row {first_rate:.1} \
         cycles/s at {first_cpu:.1} ms of server CPU per cycle; last full row {last_rate:.1} \
         cycles/s ({:.0}% of the first) at {last_cpu:.1} ms per cycle ({:.0}% of the first). \
         Server RSS {:.1} MiB after the first row, {:.1} MiB at the end",
        total(&done),
        total(&done) as f64 / elapsed,
        last_rate / first_rate * 100.0,
        last_cpu / first_cpu * 100.0,
        mib(first_rss.unwrap_or(0)),
        mib(rss_kib(server.pid)),
    );
    old_against_new(settings, admin, &api, &tenant, server.pid, sessions, old).await;
}

/// The same cycle on the computers with the long past and on new computers of the same
/// server, alternated in the same minutes: what a computer's past costs, apart from the
/// machine's other load and from the size of the whole log (which both sets share).
async fn old_against_new(
    settings: &Settings,
    admin: &str,
    api: &Arc<Api>,
    tenant: &str,
    pid: u32,
    sessions: u64,
    mut old: Vec<Client>,
) {
    const ROUNDS: usize = 5;
    let seconds = (settings.seconds / 2.0).max(1.0);
    let mut new = add_clients(api, admin, tenant, old.len()).await;
    println!();
    println!(
        "Old against new computers, same server, alternated: {} computers with {sessions} \
         sessions each, then {} new ones, {seconds:.0} s each, {ROUNDS} rounds",
        old.len(),
        new.len()
    );
    println!();
    println!("| round | computers | cycles/s | check-out → active p50 | p99 | server CPU per cycle | other CPU |");
    println!("|---:|---|---:|---:|---:|---:|---:|");
    let mut ratios = Vec::new();
    for round in 1..=ROUNDS {
        let mut rates = [0.0; 2];
        let mut cpu = [0.0; 2];
        for (k, (label, set)) in [("old", &mut old), ("new", &mut new)]
            .into_iter()
            .enumerate()
        {
            let (active, back) = run_active(api, std::mem::take(set), seconds, pid).await;
            *set = back;
            let rate = active.to_active.len() as f64 / active.elapsed;
            rates[k] = rate;
            cpu[k] = active.cpu_per_cycle;
            println!(
                "| {round} | {label} | {rate:.1} | {:.1} ms | {:.1} ms | {:.1} ms | {:.0}% |",
                percentile(&active.to_active, 0.50),
                percentile(&active.to_active, 0.99),
                active.cpu_per_cycle,
                active.other_cpu,
            );
        }
        ratios.push((rates[0] / rates[1], cpu[0] / cpu[1]));
    }
    let listed = |pick: fn(&(f64, f64)) -> f64| {
        let mut values: Vec<f64> = ratios.iter().map(pick).collect();
        let rounds = values
            .iter()
            .map(|v| format!("{v:.2}"))
            .collect::<Vec<_>>()
            .join(", ");
        values.sort_by(f64::total_cmp);
        format!("median {:.2} (rounds: {rounds})", values[values.len() / 2])
    };
    println!();
    println!(
        "Old computers against new: cycle rate {}; server CPU per cycle {}",
        listed(|r| r.0),
        listed(|r| r.1)
    );
}

// ---------------------------------------------------------------------------------------
// Tables

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// What each idle agent holds, as `LATCHKEY_FLEET_FEED` says.
fn idle_request() -> &'static str {
    match std::env::var("LATCHKEY_FLEET_FEED").as_deref() {
        Ok("sse") => "GET /v1/agent/feed (server-sent events)",
        _ => "GET /v1/agent/commands?wait=60",
    }
}

fn print_idle(runs: &[Run]) {
    println!();
    println!(
        "Idle agents: N enrolled, each holding {} on its own connection",
        idle_request()
    );
    println!();
    println!(
        "| N | polls held | failed | RSS at start | RSS enrolled | RSS polls held | of it anon / file | KiB per connection | KiB per agent | slope vs previous N | settle |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut previous: Option<&Run> = None;
    for run in runs {
        let per_connection = if run.held > 0 {
            format!(
                "{:.1}",
                (run.rss_idle as f64 - run.rss_enrolled as f64) / run.held as f64
            )
        } else {
            "-".into()
        };
        let per_agent = if run.n > 0 {
            format!(
                "{:.1}",
                (run.rss_idle as f64 - run.rss_start as f64) / run.n as f64
            )
        } else {
            "-".into()
        };
        let slope = match previous {
            Some(p) if run.n > p.n => format!(
                "{:.1} KiB",
                (run.rss_idle as f64 - p.rss_idle as f64) / (run.n - p.n) as f64
            ),
            _ => "-".into(),
        };
        println!(
            "| {} | {} | {} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {:.1} / {:.1} MiB | {per_connection} | {per_agent} | {slope} | {:.1} s |",
            run.n,
            run.held,
            run.failed,
            mib(run.rss_start),
            mib(run.rss_enrolled),
            mib(run.rss_idle),
            mib(run.idle_parts.0),
            mib(run.idle_parts.1),
            run.settle,
        );
        previous = Some(run);
    }
    for run in runs {
        if let Some(e) = &run.first_error {
            println!("N = {}: first agent error: {e}", run.n);
        }
    }
}

fn print_active(runs: &[Run]) {
    println!();
    println!("Active cycles beside the idle polls");
    println!();
    println!(
        "| N | polls held | cycles | cycles/s | check-out → active p50 | p99 | server CPU | server CPU per cycle | client CPU | other CPU | server RSS at end | idle polls answered | agents lost |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for run in runs {
        println!(
            "| {} | {} | {} | {:.1} | {:.1} ms | {:.1} ms | {:.0}% | {:.1} ms | {:.0}% | {:.0}% | {:.1} MiB | {} | {} |",
            run.n,
            run.held,
            run.cycles,
            run.cycles as f64 / run.elapsed,
            percentile(&run.to_active, 0.50),
            percentile(&run.to_active, 0.99),
            run.server_cpu,
            run.cpu_per_cycle,
            run.client_cpu,
            run.other_cpu,
            mib(run.rss_end),
            run.answered,
            run.lost,
        );
    }
}

fn print_enrollment(n: usize, enrolled: &Enrolled, block: usize) {
    if n == 0 {
        return;
    }
    println!();
    println!(
        "Enrollment versus tenant size (N = {n}; per block of {block}: its tokens issued, then its enrollments, {ENROLL_CONCURRENCY} at a time)"
    );
    println!();
    println!("| computers | tokens/s | enrollments/s | server CPU per enrollment | enroll p50 | enroll p99 |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for b in &enrolled.blocks {
        println!(
            "| {}–{} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms |",
            b.first + 1,
            b.last + 1,
            b.tokens_per_s,
            b.enrollments_per_s,
            b.cpu_ms,
            percentile(&b.latencies, 0.50),
            percentile(&b.latencies, 0.99),
        );
    }
    if n >= 200 {
        let (first, first_mean) = enrollment_rate(&enrolled.times, 0..100);
        let (last, last_mean) = enrollment_rate(&enrolled.times, n - 100..n);
        println!();
        println!(
            "Computers 1–100: {first:.0} enrollments/s (mean {first_mean:.2} ms); computers \
             {}–{n}: {last:.0} enrollments/s (mean {last_mean:.2} ms); the last 100 at {:.0}% of \
             the first 100's rate",
            n - 99,
            last / first * 100.0
        );
    }
}

// ---------------------------------------------------------------------------------------
// The server process, from /proc

/// Resident memory (VmRSS) of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

/// Of the resident memory of `pid`: anonymous (the heap) and file-backed (the binary, and
/// SQLite's memory maps of the event store: a page read through several connections counts
/// once in each), KiB.
fn rss_parts(pid: u32) -> (u64, u64) {
    (status_kib(pid, "RssAnon:"), status_kib(pid, "RssFile:"))
}

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // After the command name (in parentheses, maybe with spaces): state is field 3, utime 14
    // and stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14).unwrap_or(0) + field(15).unwrap_or(0)
}

fn ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// Busy CPU time of the whole machine (every core), in clock ticks: `/proc/stat` less idle
/// and I/O wait.
fn machine_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(cpu) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    // user nice system idle iowait irq softirq steal …
    cpu.split_whitespace()
        .skip(1)
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum()
}

/// CPU used by a process (or the whole machine) since `start`, as a share of wall time
/// (100 = one core).
struct CpuClock {
    /// `None` for the whole machine.
    pid: Option<u32>,
    ticks: u64,
    at: Instant,
}

impl CpuClock {
    fn start(pid: u32) -> CpuClock {
        CpuClock {
            pid: Some(pid),
            ticks: cpu_ticks(pid),
            at: Instant::now(),
        }
    }

    fn machine() -> CpuClock {
        CpuClock {
            pid: None,
            ticks: machine_ticks(),
            at: Instant::now(),
        }
    }

    /// CPU seconds used since the start.
    fn seconds(&self) -> f64 {
        let now = match self.pid {
            Some(pid) => cpu_ticks(pid),
            None => machine_ticks(),
        };
        now.saturating_sub(self.ticks) as f64 / ticks_per_second()
    }

    fn percent(&self) -> f64 {
        self.seconds() / self.at.elapsed().as_secs_f64() * 100.0
    }
}

/// Raises the open-files limit, inherited by the servers started afterwards: as root both
/// limits to `WANTED_NOFILE` (at most fs.nr_open), otherwise the soft one to the hard one.
/// Returns the soft limit now in force.
fn raise_nofile() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct we pass, nothing else.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(WANTED_NOFILE);
        let wanted = WANTED_NOFILE.min(nr_open);
        if libc::geteuid() == 0 && limit.rlim_max < wanted {
            let raised = libc::rlimit {
                rlim_cur: wanted,
                rlim_max: wanted,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                return wanted;
            }
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
            limit.rlim_cur
        } else {
            0
        }
    }
}
