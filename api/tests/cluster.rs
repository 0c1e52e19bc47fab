//! Two `latchkey serve` processes (A and B) on one PostgreSQL database, over HTTP only:
//!
//! 1. set-up through A and B mixed (tenant, technicians, memberships, API tokens, one-time
//!    enrollment tokens, simulated agents enrolling two computers);
//! 2. check-outs, check-ins and login-mode changes from several threads at once, each request
//!    to A or B: no 5xx, only 2xx or a 409 problem, no lost login-mode change, every check-out
//!    listed exactly once, idempotency keys honoured across servers, and admin rights on the
//!    (simulated) machines only where an open session explains them;
//! 3. once things settle, A and B answer the session list, the audit trail and the managed
//!    accounts identically, and the audit trail covers the whole log;
//! 4. the leader is killed (`kill -9`) while the agent long-polls it: the other server takes
//!    over the process managers, provisions and revokes through the agent, and a server
//!    started afterwards sees the same state.
//!
//! Needs `LATCHKEY_TEST_POSTGRES_URL` (`scripts/test.sh` sets it); fails without it.

mod support;

use latchkey_store::postgres::testing::TestDatabase;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use support::machine::Machine;
use support::Server;

const GROUP: &str = "Administrators";
const ADMIN_EMAIL: &str = "admin@msp.example";
const MODES: [&str; 3] = ["named", "shared", "ephemeral"];
/// Check-outs per technician thread in the concurrent phase.
const ROUNDS: usize = 8;
/// Admin threads changing the login mode in the concurrent phase, and changes per thread.
const MODE_CHANGERS: usize = 3;
const MODE_CHANGES: usize = 6;
const SHORT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------
// HTTP

/// One HTTP answer.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// An RFC 9457 problem with this status.
    fn is_problem(&self, status: u16) -> bool {
        self.status == status
            && self
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/problem+json"))
            && self.json()["status"] == status
    }
}

/// Where one server listens. Clients keep it after the process is gone.
#[derive(Debug, Clone)]
struct Node {
    name: &'static str,
    addr: String,
}

impl Node {
    /// One HTTP/1.0 request on a fresh connection; `Err` if the connection fails or the
    /// answer is cut short (a killed server), never a panic.
    fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> Result<Answer, String> {
        let fail = |e: &dyn std::fmt::Display| format!("{method} {path} on {}: {e}", self.name);
        let mut stream = TcpStream::connect(&self.addr).map_err(|e| fail(&e))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| fail(&e))?;
        let body = body.map(Value::to_string);
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.addr);
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        match &body {
            Some(body) => head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            )),
            // HTTP/1.0 has no chunked bodies: a body-less POST says so.
            None if method != "GET" => head.push_str("Content-Length: 0\r\n"),
            None => {}
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).map_err(|e| fail(&e))?;
        if let Some(body) = &body {
            stream.write_all(body.as_bytes()).map_err(|e| fail(&e))?;
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).map_err(|e| fail(&e))?;
        let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
            return Err(fail(&format!("no complete answer ({} bytes)", raw.len())));
        };
        let head = String::from_utf8_lossy(&raw[..split]);
        let body = &raw[split + 4..];
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| fail(&format!("no status in {head:?}")))?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect();
        // A streamed answer (the long poll's, once it waited) comes chunked, even to an
        // HTTP/1.0 request; one without its last, empty chunk was cut short.
        let chunked = headers.iter().any(|(k, v)| {
            k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
        });
        let body = if chunked {
            support::read_chunked(&mut &body[..]).map_err(|got| {
                fail(&format!(
                    "answer cut short: no last chunk after {} bytes",
                    got.len()
                ))
            })?
        } else {
            String::from_utf8_lossy(body).into_owned()
        };
        let answer = Answer {
            status,
            headers,
            body,
        };
        if let Some(length) = answer
            .header("content-length")
            .and_then(|l| l.parse::<usize>().ok())
        {
            if length != answer.body.len() {
                return Err(fail(&format!(
                    "answer cut short: {} of {length} bytes",
                    answer.body.len()
                )));
            }
        }
        Ok(answer)
    }

    fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Answer {
        self.send(method, path, Some(token), body.as_ref(), &[], SHORT)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A 2xx answer's JSON body.
    fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let answer = self.call(method, path, token, body);
        assert!(
            (200..300).contains(&answer.status),
            "{method} {path} on {}: {} {}",
            self.name,
            answer.status,
            answer.body
        );
        answer.json()
    }

    fn get(&self, path: &str, token: &str) -> Value {
        self.ok("GET", path, token, None)
    }

    fn session_status(&self, token: &str, session: &str) -> String {
        self.get(&format!("/v1/sessions/{session}"), token)["status"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    /// Every event in the log, as the NDJSON endpoint gives them.
    fn raw_events(&self, token: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let path = match &after {
                Some(position) => format!("/v1/events?limit=10000&after={position}"),
                None => "/v1/events?limit=10000".to_owned(),
            };
            let answer = self.call("GET", &path, token, None);
            assert_eq!(
                answer.status, 200,
                "{path} on {}: {}",
                self.name, answer.body
            );
            let page: Vec<Value> = answer
                .body
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).expect("an NDJSON line"))
                .collect();
            if page.is_empty() {
                return out;
            }
            out.extend(page);
            after = answer.header("latchkey-next-after").map(str::to_owned);
            if after.is_none() {
                return out;
            }
        }
    }

    /// The whole audit trail (every page).
    fn audit(&self, token: &str) -> Vec<Value> {
        let mut out = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let path = match &cursor {
                Some(cursor) => format!("/v1/audit?limit=1000&cursor={cursor}"),
                None => "/v1/audit?limit=1000".to_owned(),
            };
            let page = self.get(&path, token);
            out.extend(page["entries"].as_array().cloned().unwrap_or_default());
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return out,
            }
        }
    }
}

use support::eventually_ok as eventually;

// ---------------------------------------------------------------------------------------
// The servers

/// What every server of one cluster shares: the database, the secret-store key and the
/// admin token.
struct Settings {
    url: String,
    key: String,
    admin: String,
}

impl Settings {
    fn new() -> Settings {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        // Panics (fails the test) when LATCHKEY_TEST_POSTGRES_URL is not set.
        let database = runtime.block_on(TestDatabase::create());
        Settings {
            url: database.url().to_owned(),
            key: latchkey_server_stores::secrets::Key::generate()
                .to_base64()
                .expose()
                .to_owned(),
            admin: latchkey_server_stores::tokens::generate_token().1,
        }
    }
}

/// One `latchkey serve --store postgres://…` with its own data directory. On a failing test
/// its log is printed.
struct Proc {
    node: Node,
    server: Option<Server>,
    data: tempfile::TempDir,
}

impl Proc {
    fn start(name: &'static str, settings: &Settings) -> Proc {
        let data = tempfile::tempdir().expect("a data directory");
        let server = Server::start_with_args(
            data.path(),
            &["--store", &settings.url],
            &[
                ("LATCHKEY_SECRET_KEY", &settings.key),
                ("LATCHKEY_ADMIN_TOKEN", &settings.admin),
                ("LATCHKEY_ADMIN_EMAIL", ADMIN_EMAIL),
                ("NO_COLOR", "1"),
            ],
        );
        let node = Node {
            name,
            addr: server.addr.clone(),
        };
        let health = node
            .send("GET", "/healthz", None, None, &[], SHORT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(health.status, 200, "{name}: {}", health.body);
        Proc {
            node,
            server: Some(server),
            data,
        }
    }

    /// `kill -9` (`Child::kill` sends SIGKILL) and wait for the process to be gone.
    fn kill(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(80)..].join("\n");
            eprintln!(
                "----- server {} ({}) log, last lines -----\n{tail}",
                self.node.name, self.node.addr
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// The simulated agent

/// A computer's agent, played over the agent endpoints: its [`Machine`] applies each request
/// and reads back what it then sees there, like `latchkey-agent` does; like it, the agent
/// remembers which requests it has reported (a feed may deliver one again while the read
/// models catch up) and never applies those twice.
#[derive(Debug)]
struct Agent {
    token: String,
    computer_id: String,
    machine: Machine,
    /// Requests reported and recorded.
    done: BTreeSet<u64>,
}

impl Agent {
    fn enroll(node: &Node, enrollment: &str, hostname: &str) -> Agent {
        let body = json!({"token": enrollment, "hostname": hostname, "os": "windows"});
        let answer = node
            .send("POST", "/v1/agent/enroll", None, Some(&body), &[], SHORT)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            answer.status, 201,
            "enrolling on {}: {}",
            node.name, answer.body
        );
        let enrolled = answer.json();
        Agent {
            token: enrolled["agent_token"].as_str().unwrap().to_owned(),
            computer_id: enrolled["computer_id"].as_str().unwrap().to_owned(),
            machine: Machine::default(),
            done: BTreeSet::new(),
        }
    }

    /// One long poll on `node` (waiting up to `wait` seconds); applies and reports every
    /// request not done yet. Returns how many requests the feed held. `Err` for a failed
    /// connection or an answer no agent should get.
    fn poll(&mut self, node: &Node, wait: u64) -> Result<usize, String> {
        let answer = node.send(
            "GET",
            &format!("/v1/agent/commands?wait={wait}"),
            Some(&self.token),
            None,
            &[],
            Duration::from_secs(wait + 20),
        )?;
        if answer.status != 200 {
            return Err(format!(
                "request feed on {}: {} {}",
                node.name, answer.status, answer.body
            ));
        }
        let commands = answer.json()["commands"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no commands from {}: {}", node.name, answer.body))?;
        for command in &commands {
            let id = command["request_id"]
                .as_u64()
                .ok_or_else(|| format!("no request_id in {command}"))?;
            if self.done.contains(&id) {
                continue;
            }
            let known = self.machine.problems.len();
            let report = self.machine.report(command);
            for problem in &mut self.machine.problems[known..] {
                problem.push_str(&format!(" (from {})", node.name));
            }
            let answer = node.send(
                "POST",
                "/v1/agent/results",
                Some(&self.token),
                Some(&report),
                &[],
                SHORT,
            )?;
            match answer.status {
                200 => {
                    self.done.insert(id);
                }
                // Lost a race for the computer's stream: the request stays in the feed.
                409 if answer.is_problem(409) => {}
                other => {
                    return Err(format!(
                        "report of request {id} to {}: {other} {}",
                        node.name, answer.body
                    ))
                }
            }
        }
        Ok(commands.len())
    }

    /// Serves the feed, from `nodes` in turn, until `done` holds.
    fn serve_until(
        &mut self,
        nodes: &[&Node],
        limit: Duration,
        what: &str,
        mut done: impl FnMut(&Agent) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        let mut turn = 0;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "{what}: not so within {limit:?}; agent log: {:?}",
                self.machine.log
            );
            let node = nodes[turn % nodes.len()];
            if let Err(e) = self.poll(node, 1) {
                panic!("{what}: {e}");
            }
            turn += 1;
        }
    }

    /// Serves the feed until every server in `nodes` has had nothing for it for a second
    /// and a half.
    fn drain(&mut self, nodes: &[&Node], limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut quiet_since: Option<Instant> = None;
        loop {
            assert!(
                Instant::now() < deadline,
                "the request feed of {} never ran dry; agent log: {:?}",
                self.computer_id,
                self.machine.log
            );
            let mut held = 0;
            for node in nodes {
                held += self.poll(node, 0).unwrap_or_else(|e| panic!("{e}"));
            }
            match quiet_since {
                _ if held > 0 => quiet_since = None,
                None => quiet_since = Some(Instant::now()),
                Some(since) if since.elapsed() >= Duration::from_millis(1500) => return,
                Some(_) => {}
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The concurrent workload

struct Tech {
    name: &'static str,
    id: String,
    token: String,
}

/// One request of the concurrent phase and its answer (all of it shown when a rule fails).
#[derive(Debug)]
#[allow(dead_code)] // `node`, `path` and `body` are read through `Debug` only
struct Record {
    what: &'static str,
    node: &'static str,
    path: String,
    status: u16,
    problem: bool,
    body: String,
}

impl Record {
    fn new(what: &'static str, node: &Node, path: &str, answer: &Answer) -> Record {
        Record {
            what,
            node: node.name,
            path: path.to_owned(),
            status: answer.status,
            problem: answer.is_problem(answer.status),
            body: answer.body.chars().take(400).collect(),
        }
    }

    /// The answers the handlers can give to these requests under load: success, or a 409
    /// problem (`contended`: the stream kept changing under MAX_ATTEMPTS tries;
    /// `AccountNameTaken` for a clashing random ephemeral name).
    fn allowed(&self) -> bool {
        let success = match self.what {
            "check-out" | "check-out retry" => 201,
            "check-in" | "login-mode" | "get session" => 200,
            other => panic!("unknown request kind {other}"),
        };
        let may_conflict = matches!(self.what, "check-out" | "check-in" | "login-mode");
        self.status == success || (may_conflict && self.status == 409 && self.problem)
    }
}

/// A tiny deterministic generator (xorshift), so each run sends the same pattern.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// What a technician thread did: (session, computer) of every check-out that succeeded, and
/// the sessions it left open.
struct Worked {
    checked_out: Vec<(String, String)>,
    still_open: Vec<String>,
}

#[allow(clippy::too_many_arguments)]
fn technician_worker(
    i: usize,
    tech: &Tech,
    tenant: &str,
    computers: &[String; 2],
    nodes: &[Node; 2],
    records: &Mutex<Vec<Record>>,
    problems: &Mutex<Vec<String>>,
) -> Worked {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((i as u64 + 1) * 7919));
    let record = |what: &'static str, node: &Node, path: &str, answer: &Answer| {
        records
            .lock()
            .unwrap()
            .push(Record::new(what, node, path, answer));
    };
    let mut checked_out = Vec::new();
    let mut open = VecDeque::new();
    for k in 0..ROUNDS {
        let n = rng.below(2);
        let (node, other) = (&nodes[n], &nodes[1 - n]);
        let computer = &computers[rng.below(2)];
        let path = format!("/v1/tenants/{tenant}/computers/{computer}/checkout");
        let body = json!({"reason": format!("job {i}-{k}"), "ticket": format!("T-{i}{k:02}")});
        let answer = if k % 3 == 0 {
            // With an Idempotency-Key, retried on the other server: the first answer again.
            let key = format!("checkout-{}-{k}", tech.name);
            let headers = [("Idempotency-Key", key.as_str())];
            let first = node
                .send(
                    "POST",
                    &path,
                    Some(&tech.token),
                    Some(&body),
                    &headers,
                    SHORT,
                )
                .unwrap_or_else(|e| panic!("{e}"));
            record("check-out", node, &path, &first);
            if first.status == 201 {
                let retry = other
                    .send(
                        "POST",
                        &path,
                        Some(&tech.token),
                        Some(&body),
                        &headers,
                        SHORT,
                    )
                    .unwrap_or_else(|e| panic!("{e}"));
                record("check-out retry", other, &path, &retry);
                let same = retry.status == 201
                    && retry.json()["session_id"] == first.json()["session_id"]
                    && retry.header("idempotent-replayed") == Some("true");
                if !same {
                    problems.lock().unwrap().push(format!(
                        "Idempotency-Key {key}: {} answered {} {}, the retry on {} answered {} \
                         {} (headers {:?})",
                        node.name,
                        first.status,
                        first.body,
                        other.name,
                        retry.status,
                        retry.body,
                        retry.headers
                    ));
                }
            }
            first
        } else {
            let answer = node
                .send("POST", &path, Some(&tech.token), Some(&body), &[], SHORT)
                .unwrap_or_else(|e| panic!("{e}"));
            record("check-out", node, &path, &answer);
            answer
        };
        if answer.status == 201 {
            let session = answer.json()["session_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            // Read-your-writes across servers: the other one knows the session at once.
            let get = format!("/v1/sessions/{session}");
            let seen = other
                .send("GET", &get, Some(&tech.token), None, &[], SHORT)
                .unwrap_or_else(|e| panic!("{e}"));
            record("get session", other, &get, &seen);
            checked_out.push((session.clone(), computer.clone()));
            open.push_back(session);
        }
        if open.len() >= 2 || (k % 2 == 1 && !open.is_empty()) {
            let session = open.pop_front().unwrap();
            let node = &nodes[rng.below(2)];
            let path = format!("/v1/sessions/{session}/checkin");
            let answer = node
                .send("POST", &path, Some(&tech.token), None, &[], SHORT)
                .unwrap_or_else(|e| panic!("{e}"));
            record("check-in", node, &path, &answer);
            if answer.status == 200 {
                if answer.json()["status"] != "checked_in" {
                    problems.lock().unwrap().push(format!(
                        "check-in of {session} on {}: {}",
                        node.name, answer.body
                    ));
                }
            } else {
                open.push_front(session);
            }
        }
    }
    Worked {
        checked_out,
        still_open: open.into_iter().collect(),
    }
}

/// One login-mode change of the concurrent phase; each is made with its own admin token,
/// so its events can be told apart by their actor.
#[derive(Debug)]
struct ModeChange {
    actor: String,
    target: &'static str,
    status: u16,
    sent: Instant,
    answered: Instant,
}

fn mode_worker(
    c: usize,
    tokens: &[(String, String)],
    tenant: &str,
    nodes: &[Node; 2],
    records: &Mutex<Vec<Record>>,
    problems: &Mutex<Vec<String>>,
) -> Vec<ModeChange> {
    let path = format!("/v1/tenants/{tenant}/login-mode");
    let mut changes = Vec::new();
    for (k, (email, token)) in tokens.iter().enumerate() {
        let target = MODES[(c + k + 1) % 3];
        let node = &nodes[(c + k) % 2];
        let body = json!({ "login_mode": target });
        let sent = Instant::now();
        let answer = node
            .send("PUT", &path, Some(token), Some(&body), &[], SHORT)
            .unwrap_or_else(|e| panic!("{e}"));
        records
            .lock()
            .unwrap()
            .push(Record::new("login-mode", node, &path, &answer));
        if answer.status == 200 && answer.json()["login_mode"] != target {
            problems.lock().unwrap().push(format!(
                "PUT login-mode {target} on {} answered {}",
                node.name, answer.body
            ));
        }
        changes.push(ModeChange {
            actor: format!("user:{email}"),
            target,
            status: answer.status,
            sent,
            answered: Instant::now(),
        });
        // Pacing only: spreads the changes over the check-outs.
        std::thread::sleep(Duration::from_millis(40));
    }
    changes
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs an agent until `stop`, polling A and B in turn; it skips its turn while `paused`.
fn agent_worker(
    first: usize,
    agent: &Mutex<Agent>,
    nodes: &[Node; 2],
    stop: &AtomicBool,
    paused: &AtomicBool,
) -> Vec<String> {
    let mut errors = Vec::new();
    let mut turn = first;
    while !stop.load(Ordering::SeqCst) {
        if paused.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        }
        let result = agent.lock().unwrap().poll(&nodes[turn % 2], 1);
        if let Err(e) = result {
            errors.push(e);
        }
        turn += 1;
    }
    errors
}

fn array(value: &Value, field: &str) -> Vec<Value> {
    value[field].as_array().cloned().unwrap_or_default()
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_owned()
}

/// What A and B must agree on once everything has settled.
#[derive(Debug, PartialEq)]
struct Views {
    sessions: Vec<Value>,
    accounts: Vec<Value>,
    standing_privilege: Vec<Value>,
    audit: Vec<Value>,
}

fn views(node: &Node, admin: &str, tenant: &str) -> Views {
    Views {
        sessions: array(
            &node.get(&format!("/v1/tenants/{tenant}/sessions?limit=1000"), admin),
            "sessions",
        ),
        accounts: array(
            &node.get(&format!("/v1/tenants/{tenant}/accounts"), admin),
            "accounts",
        ),
        standing_privilege: array(
            &node.get(&format!("/v1/tenants/{tenant}/standing-privilege"), admin),
            "standing_privilege",
        ),
        audit: node.audit(admin),
    }
}

/// Events of the tenant, computer and session streams without their one audit line (or with
/// more than one), and audit lines of events that are not in the log.
fn audit_gaps(events: &[Value], audit: &[Value]) -> Vec<String> {
    let mut lines: BTreeMap<String, usize> = BTreeMap::new();
    for entry in audit {
        *lines.entry(text(&entry["event_id"])).or_default() += 1;
    }
    let mut gaps = Vec::new();
    let mut logged = BTreeSet::new();
    for event in events {
        let id = text(&event["event_id"]);
        logged.insert(id.clone());
        let stream = text(&event["stream"]);
        let one_line = ["tenant-", "computer-", "session-"]
            .iter()
            .any(|p| stream.starts_with(p));
        let count = lines.get(&id).copied().unwrap_or(0);
        if one_line && count != 1 {
            gaps.push(format!(
                "{} {} has {count} audit lines",
                text(&event["event_type"]),
                text(&event["position"])
            ));
        }
    }
    for id in lines.keys() {
        if !logged.contains(id) {
            gaps.push(format!("audit line for event {id} that is not in the log"));
        }
    }
    gaps
}

fn mode_events(node: &Node, admin: &str, tenant: &str) -> Vec<Value> {
    let stream = format!("tenant-{tenant}");
    node.raw_events(admin)
        .into_iter()
        .filter(|e| e["stream"] == stream.as_str() && e["event_type"] == "LoginModeChanged")
        .collect()
}

#[test]
fn two_servers_on_one_database_agree_under_concurrent_load() {
    let started = Instant::now();
    let settings = Settings::new();
    let a = Proc::start("A", &settings);
    let b = Proc::start("B", &settings);
    let (na, nb) = (a.node.clone(), b.node.clone());
    let nodes = [na.clone(), nb.clone()];
    let admin = settings.admin.as_str();

    // 1. Set-up through A and B mixed.
    let tenant = na.ok(
        "POST",
        "/v1/tenants",
        admin,
        Some(json!({"name": "customer-1", "login_mode": "named"})),
    );
    let tenant_id = text(&tenant["tenant_id"]);
    let tenant_path = format!("/v1/tenants/{tenant_id}");
    assert_eq!(
        nb.get(&tenant_path, admin)["name"],
        "customer-1",
        "B knows the tenant A created at once"
    );
    let mut techs = Vec::new();
    for (i, name) in ["alice", "bob", "carol", "dave"].into_iter().enumerate() {
        let (here, there) = (&nodes[i % 2], &nodes[(i + 1) % 2]);
        let created = here.ok(
            "POST",
            "/v1/technicians",
            admin,
            Some(json!({"username": name, "email": format!("{name}@msp.example")})),
        );
        let id = text(&created["technician_id"]);
        let joined = there.ok(
            "PUT",
            &format!("{tenant_path}/technicians/{id}"),
            admin,
            None,
        );
        assert_eq!(joined["tenants"], json!([tenant_id]), "{joined}");
        let token = here.ok(
            "POST",
            "/v1/tokens",
            admin,
            Some(json!({"role": "technician", "technician_id": id})),
        );
        let token = text(&token["token"]);
        let mine = there.call("GET", "/v1/sessions", &token, None);
        assert_eq!(
            mine.status, 200,
            "a token {} issued works on {}: {}",
            here.name, there.name, mine.body
        );
        techs.push(Tech { name, id, token });
    }
    let enrollment = |node: &Node| {
        let issued = node.ok(
            "POST",
            &format!("{tenant_path}/enrollment-tokens"),
            admin,
            Some(json!({})),
        );
        text(&issued["token"])
    };
    let (first, second) = (enrollment(&na), enrollment(&nb));
    let mut pc1 = Agent::enroll(&nb, &first, "PC-ONE");
    let again = na
        .send(
            "POST",
            "/v1/agent/enroll",
            None,
            Some(&json!({"token": first, "hostname": "PC-AGAIN", "os": "windows"})),
            &[],
            SHORT,
        )
        .unwrap();
    assert_eq!(
        again.status, 410,
        "an enrollment token redeemed on B is spent on A too: {}",
        again.body
    );
    let pc2 = Agent::enroll(&na, &second, "PC-TWO");
    let computers = [pc1.computer_id.clone(), pc2.computer_id.clone()];
    for node in &nodes {
        eventually("both servers list both computers", SHORT, || {
            let listed = array(
                &node.get(&format!("{tenant_path}/computers"), admin),
                "computers",
            );
            let ids: BTreeSet<String> = listed.iter().map(|c| text(&c["computer_id"])).collect();
            let wanted: BTreeSet<String> = computers.iter().cloned().collect();
            (ids == wanted)
                .then_some(())
                .ok_or(format!("{} lists {ids:?}", node.name))
        });
    }

    // Login-mode changes one after the other, alternating servers: each is one event, and
    // the other server sees it at once (no stale state anywhere).
    let mode_path = format!("{tenant_path}/login-mode");
    for (i, (mode, node, other)) in [
        ("shared", &nb, &na),
        ("named", &na, &nb),
        ("ephemeral", &nb, &na),
        ("named", &na, &nb),
    ]
    .into_iter()
    .enumerate()
    {
        let answer = node.ok("PUT", &mode_path, admin, Some(json!({"login_mode": mode})));
        assert_eq!(answer["login_mode"], mode);
        assert_eq!(other.get(&tenant_path, admin)["login_mode"], mode);
        let events = mode_events(other, admin, &tenant_id);
        assert_eq!(
            events.len(),
            i + 1,
            "change {i} to {mode} through {} is one LoginModeChanged: {events:#?}",
            node.name
        );
        assert_eq!(events[i]["payload"]["to"], mode);
    }

    // One whole session across both servers before the load: check-out on A, the agent
    // served by B, the password revealed by B is the one the machine got, check-in on A.
    let alice = &techs[0];
    let checkout = na.call(
        "POST",
        &format!("{tenant_path}/computers/{}/checkout", computers[0]),
        &alice.token,
        Some(json!({"reason": "warm-up"})),
    );
    assert_eq!(checkout.status, 201, "{}", checkout.body);
    let warm_up = text(&checkout.json()["session_id"]);
    assert_eq!(nb.session_status(&alice.token, &warm_up), "provisioning");
    pc1.serve_until(&[&nb, &na], SHORT, "the warm-up session is active", |_| {
        na.session_status(&alice.token, &warm_up) == "active"
    });
    assert!(
        pc1.machine.in_group("msp-alice", GROUP),
        "{:?}",
        pc1.machine.log
    );
    let revealed = nb.ok(
        "POST",
        &format!("/v1/sessions/{warm_up}/credential"),
        &alice.token,
        None,
    );
    assert_eq!(
        revealed["password"].as_str(),
        pc1.machine.password("msp-alice"),
        "B reveals the password the machine was given"
    );
    let checked_in = na.ok(
        "POST",
        &format!("/v1/sessions/{warm_up}/checkin"),
        &alice.token,
        None,
    );
    assert_eq!(checked_in["status"], "checked_in");
    pc1.serve_until(&[&na, &nb], SHORT, "msp-alice leaves the group", |agent| {
        !agent.machine.in_group("msp-alice", GROUP)
    });

    // 2. The concurrent phase: four technicians check out and in, three admins flip the login
    // mode, two agents serve their feeds; every request goes to A or B.
    let mut mode_tokens = Vec::new();
    for c in 0..MODE_CHANGERS {
        let mut mine = Vec::new();
        for k in 0..MODE_CHANGES {
            let email = format!("mode-{c}-{k}@msp.example");
            let issued = nodes[k % 2].ok(
                "POST",
                "/v1/tokens",
                admin,
                Some(json!({"role": "msp_admin", "name": email})),
            );
            mine.push((email, text(&issued["token"])));
        }
        mode_tokens.push(mine);
    }
    let records = Mutex::new(Vec::new());
    let problems = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let paused = AtomicBool::new(false);
    let agents = [Mutex::new(pc1), Mutex::new(pc2)];
    let load_started = Instant::now();
    let (worked, changes, agent_errors) = std::thread::scope(|scope| {
        // However this closure ends (a failed assertion too), the agent threads stop, so the
        // scope can end.
        let _stop_agents = StopOnDrop(&stop);
        let agent_threads: Vec<_> = agents
            .iter()
            .enumerate()
            .map(|(i, agent)| {
                let (nodes, stop, paused) = (&nodes, &stop, &paused);
                scope.spawn(move || agent_worker(i, agent, nodes, stop, paused))
            })
            .collect();
        let tech_threads: Vec<_> = techs
            .iter()
            .enumerate()
            .map(|(i, tech)| {
                let (tenant, computers, nodes) = (&tenant_id, &computers, &nodes);
                let (records, problems) = (&records, &problems);
                scope.spawn(move || {
                    technician_worker(i, tech, tenant, computers, nodes, records, problems)
                })
            })
            .collect();
        let mode_threads: Vec<_> = mode_tokens
            .iter()
            .enumerate()
            .map(|(c, tokens)| {
                let (tenant, nodes, records, problems) = (&tenant_id, &nodes, &records, &problems);
                scope.spawn(move || mode_worker(c, tokens, tenant, nodes, records, problems))
            })
            .collect();
        let worked: Vec<Worked> = tech_threads
            .into_iter()
            .map(|t| t.join().expect("a technician thread"))
            .collect();
        let changes: Vec<ModeChange> = mode_threads
            .into_iter()
            .flat_map(|t| t.join().expect("an admin thread"))
            .collect();
        eprintln!(
            "cluster: concurrent requests took {:?}",
            load_started.elapsed()
        );

        // The answers under load.
        {
            let records = records.lock().unwrap();
            let server_errors: Vec<&Record> = records.iter().filter(|r| r.status >= 500).collect();
            assert!(
                server_errors.is_empty(),
                "5xx under load: {server_errors:#?}"
            );
            let refused: Vec<&Record> = records.iter().filter(|r| !r.allowed()).collect();
            assert!(
                refused.is_empty(),
                "answers outside 2xx / 409 problem: {refused:#?}"
            );
            let problems = problems.lock().unwrap();
            assert!(problems.is_empty(), "{problems:#?}");
            let check_outs = records.iter().filter(|r| r.what == "check-out").count();
            let conflicts = records.iter().filter(|r| r.status == 409).count();
            eprintln!(
                "cluster: {} requests, {check_outs} check-outs, {conflicts} answered 409",
                records.len()
            );
        }

        // Admin rights only where an open session explains them: once no session is
        // provisioning and no revocation is outstanding, the machines' admin groups hold
        // exactly the accounts of the open sessions.
        let open_accounts = eventually("every open session is active", SHORT, || {
            let mut seen = Vec::new();
            for node in &nodes {
                let sessions = array(
                    &node.get(
                        &format!("{tenant_path}/sessions?open=true&limit=1000"),
                        admin,
                    ),
                    "sessions",
                );
                if let Some(s) = sessions.iter().find(|s| s["status"] != "active") {
                    return Err(format!("on {}: {s}", node.name));
                }
                let standing = array(
                    &node.get(&format!("{tenant_path}/standing-privilege"), admin),
                    "standing_privilege",
                );
                if !standing.is_empty() {
                    return Err(format!("standing privilege on {}: {standing:?}", node.name));
                }
                let accounts: BTreeSet<(String, String)> = sessions
                    .iter()
                    .map(|s| (text(&s["computer_id"]), text(&s["account"])))
                    .collect();
                seen.push(accounts);
            }
            if seen[0] != seen[1] {
                return Err(format!("A and B list other open sessions: {seen:?}"));
            }
            let open = seen.pop().unwrap_or_default();
            // The computers' own streams agree: an account is in use exactly when an open
            // session holds it.
            for computer in &computers {
                let view = nb.get(&format!("{tenant_path}/computers/{computer}"), admin);
                for account in array(&view, "accounts") {
                    let name = text(&account["account"]);
                    let in_use = !array(&account, "sessions").is_empty();
                    if in_use != open.contains(&(computer.clone(), name.clone())) {
                        return Err(format!("{name} on {computer}: {account} vs {open:?}"));
                    }
                }
            }
            Ok(open)
        });
        eprintln!(
            "cluster: {} accounts held by open sessions after the load: {open_accounts:?}",
            open_accounts.len()
        );
        paused.store(true, Ordering::SeqCst);
        {
            let machines: Vec<_> = agents.iter().map(|a| a.lock().unwrap()).collect();
            let on_machines: BTreeSet<(String, String)> = machines
                .iter()
                .flat_map(|m| {
                    let admins = m.machine.members(GROUP).into_iter();
                    admins.map(|a| (m.computer_id.clone(), a))
                })
                .collect();
            assert_eq!(
                on_machines, open_accounts,
                "the admin groups on the machines hold exactly the open sessions' accounts"
            );
        }
        paused.store(false, Ordering::SeqCst);

        // Check in whatever is still open, alternating servers.
        let mut turn = 0;
        for (tech, w) in techs.iter().zip(&worked) {
            for session in &w.still_open {
                eventually("a left-over session is checked in", SHORT, || {
                    turn += 1;
                    let node = &nodes[turn % 2];
                    let answer = node.call(
                        "POST",
                        &format!("/v1/sessions/{session}/checkin"),
                        &tech.token,
                        None,
                    );
                    match answer.status {
                        200 => Ok(()),
                        409 if answer.is_problem(409) => Err(answer.body),
                        other => panic!("check-in on {}: {other} {}", node.name, answer.body),
                    }
                });
            }
        }
        eventually(
            "every session is closed and every admin right taken away",
            SHORT,
            || {
                for node in &nodes {
                    let open = array(
                        &node.get(&format!("{tenant_path}/sessions?open=true"), admin),
                        "sessions",
                    );
                    let accounts = array(
                        &node.get(&format!("{tenant_path}/accounts"), admin),
                        "accounts",
                    );
                    let admins: Vec<&Value> = accounts
                        .iter()
                        .filter(|a| array(a, "groups").iter().any(|g| g == GROUP))
                        .collect();
                    if !open.is_empty() || !admins.is_empty() {
                        return Err(format!(
                            "on {}: open {open:?}, admins {admins:?}",
                            node.name
                        ));
                    }
                }
                Ok(())
            },
        );
        stop.store(true, Ordering::SeqCst);
        let agent_errors: Vec<String> = agent_threads
            .into_iter()
            .flat_map(|t| t.join().expect("an agent thread"))
            .collect();
        (worked, changes, agent_errors)
    });
    let [pc1, pc2] = agents.map(|a| a.into_inner().unwrap());
    let mut machines = [pc1, pc2];

    assert!(
        agent_errors.is_empty(),
        "the agents were refused: {agent_errors:#?}"
    );

    // Nothing left for the agents, on either server.
    for agent in &mut machines {
        agent.drain(&[&na, &nb], SHORT);
        let machine = &agent.machine;
        assert!(machine.problems.is_empty(), "{:#?}", machine.problems);
        assert!(machine.members(GROUP).is_empty(), "{:?}", machine.accounts);
    }

    // 3. Convergence: A and B give the same answers, twice in a row, and the audit trail
    // covers the whole log.
    let settled = eventually("A and B agree", SHORT, {
        let mut last: Option<Views> = None;
        let (na, nb, tenant_id) = (&na, &nb, &tenant_id);
        move || {
            let from_a = views(na, admin, tenant_id);
            let from_b = views(nb, admin, tenant_id);
            if from_a != from_b {
                last = None;
                return Err(format!("A: {from_a:?}\nB: {from_b:?}"));
            }
            let gaps = audit_gaps(&na.raw_events(admin), &from_a.audit);
            if !gaps.is_empty() {
                last = None;
                return Err(format!("audit trail behind the log: {gaps:?}"));
            }
            if last.as_ref() == Some(&from_a) {
                return Ok(from_a);
            }
            last = Some(from_a);
            Err("not yet twice the same".to_owned())
        }
    });

    // Every successful check-out exactly once in the session list, all checked in.
    let mut expected: BTreeMap<String, (String, String)> = BTreeMap::new();
    expected.insert(warm_up.clone(), (alice.id.clone(), computers[0].clone()));
    for (tech, w) in techs.iter().zip(&worked) {
        for (session, computer) in &w.checked_out {
            let clash = expected.insert(session.clone(), (tech.id.clone(), computer.clone()));
            assert!(clash.is_none(), "session {session} created twice");
        }
    }
    assert!(
        expected.len() > techs.len(),
        "the load checked out: {expected:?}"
    );
    let mut listed: BTreeMap<String, (String, String)> = BTreeMap::new();
    for row in &settled.sessions {
        let session = text(&row["session_id"]);
        assert_eq!(row["status"], "checked_in", "{row}");
        let again = listed.insert(
            session.clone(),
            (text(&row["technician_id"]), text(&row["computer_id"])),
        );
        assert!(again.is_none(), "session {session} listed twice");
    }
    assert_eq!(
        listed, expected,
        "the session list is exactly the successful check-outs (technician, computer)"
    );

    // No lost login-mode change: each change that succeeded is at most one event, each event
    // comes from a change that succeeded with its target, and the events chain up.
    let events = mode_events(&na, admin, &tenant_id);
    assert_eq!(events, mode_events(&nb, admin, &tenant_id));
    assert!(events.len() >= 5, "{events:#?}");
    let mut mode = "named".to_owned();
    for (i, event) in events.iter().enumerate() {
        assert_eq!(
            event["payload"]["from"], mode,
            "event {i} changes from the mode the previous one set: {event}"
        );
        assert_ne!(event["payload"]["from"], event["payload"]["to"], "{event}");
        mode = text(&event["payload"]["to"]);
        if i < 4 {
            continue; // the sequential changes above
        }
        let actor = text(&event["metadata"]["actor"]);
        let change = changes
            .iter()
            .find(|c| c.actor == actor)
            .unwrap_or_else(|| panic!("event by an unknown actor: {event}"));
        assert_eq!(change.status, 200, "an event for a refused change: {event}");
        assert_eq!(event["payload"]["to"], change.target, "{event}");
    }
    for change in &changes {
        let made = events[4..]
            .iter()
            .filter(|e| e["metadata"]["actor"] == change.actor.as_str())
            .count();
        assert!(
            made <= usize::from(change.status == 200),
            "{change:?} made {made} events"
        );
    }
    // Linearizable: the events' order agrees with real time (a change answered before another
    // was sent comes first), and a change that succeeded without an event found the tenant
    // already in its target mode at some moment while it ran.
    let makers: Vec<Option<&ModeChange>> = events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            (i >= 4).then(|| {
                changes
                    .iter()
                    .find(|c| e["metadata"]["actor"] == c.actor.as_str())
                    .unwrap()
            })
        })
        .collect();
    for (i, earlier) in makers.iter().enumerate() {
        for later in &makers[i + 1..] {
            if let (Some(earlier), Some(later)) = (earlier, later) {
                assert!(
                    later.answered > earlier.sent,
                    "{later:?} was answered before {earlier:?} was sent, yet its event comes \
                     after"
                );
            }
        }
    }
    for change in changes.iter().filter(|c| c.status == 200) {
        if makers.iter().flatten().any(|m| m.actor == change.actor) {
            continue;
        }
        // `j` events applied when the change read the tenant.
        let plausible = (0..=events.len()).any(|j| {
            let mode = match j {
                0 => "named".to_owned(),
                _ => text(&events[j - 1]["payload"]["to"]),
            };
            let before = j == 0 || makers[j - 1].is_none_or(|m| m.sent < change.answered);
            let after = j == events.len() || makers[j].is_some_and(|m| m.answered > change.sent);
            mode == change.target && before && after
        });
        assert!(
            plausible,
            "{change:?} succeeded without an event, but the tenant was never in that mode while \
             it ran: {events:#?}"
        );
    }
    let successful = changes.iter().filter(|c| c.status == 200).count();
    assert!(successful > 0, "{changes:?}");
    assert!(
        events.len() > 4,
        "the concurrent changes changed the mode: {changes:?}"
    );
    for node in &nodes {
        assert_eq!(
            node.get(&tenant_path, admin)["login_mode"],
            mode.as_str(),
            "{} ends in the mode of the last LoginModeChanged",
            node.name
        );
    }

    let mut by_mode: BTreeMap<String, usize> = BTreeMap::new();
    for row in &settled.sessions {
        *by_mode.entry(text(&row["login_mode"])).or_default() += 1;
    }
    eprintln!(
        "cluster: {} sessions by login mode {by_mode:?}; {} of {} concurrent mode changes \
         changed the mode",
        settled.sessions.len(),
        events.len() - 4,
        changes.len()
    );

    // The managed accounts are what the agents verified on their machines.
    for agent in &machines {
        let (computer_id, machine) = (&agent.computer_id, &agent.machine);
        let rows: BTreeMap<String, &Value> = settled
            .accounts
            .iter()
            .filter(|r| r["computer_id"] == computer_id.as_str() && r["present"] == true)
            .map(|r| (text(&r["account"]), r))
            .collect();
        let names: BTreeSet<&String> = rows.keys().collect();
        let on_machine: BTreeSet<&String> = machine.accounts.keys().collect();
        assert_eq!(names, on_machine, "accounts present on {computer_id}");
        for name in machine.accounts.keys() {
            let (row, seen) = (rows[name], machine.observation(name));
            assert_eq!(row["groups"], seen["groups"], "{row}");
            assert_eq!(row["password_version"], seen["password_version"], "{row}");
            assert!(array(row, "open_sessions").is_empty(), "{row}");
        }
    }
    assert!(settled.standing_privilege.is_empty());
    for computer in &computers {
        let view = na.get(&format!("{tenant_path}/computers/{computer}"), admin);
        assert_eq!(
            view,
            nb.get(&format!("{tenant_path}/computers/{computer}"), admin)
        );
        for account in array(&view, "accounts") {
            assert!(array(&account, "sessions").is_empty(), "{account}");
        }
    }

    // Concurrent appends from two servers kept every stream's hash chain intact.
    let verified = na.get("/v1/verify", admin);
    assert_eq!(verified["intact"], true, "{verified}");
    assert_eq!(verified, nb.get("/v1/verify", admin));
    eprintln!("cluster: the concurrency test took {:?}", started.elapsed());
}

#[test]
fn the_other_server_takes_over_when_the_leader_is_killed() {
    let started = Instant::now();
    let settings = Settings::new();
    let admin = settings.admin.as_str();
    // A alone first: it takes the process managers' lock, and a whole session proves they
    // run there.
    let mut a = Proc::start("A", &settings);
    let na = a.node.clone();
    let tenant = na.ok(
        "POST",
        "/v1/tenants",
        admin,
        Some(json!({"name": "customer-2", "login_mode": "named"})),
    );
    let tenant_id = text(&tenant["tenant_id"]);
    let tenant_path = format!("/v1/tenants/{tenant_id}");
    let mut techs = Vec::new();
    for name in ["nik", "ana"] {
        let created = na.ok(
            "POST",
            "/v1/technicians",
            admin,
            Some(json!({"username": name, "email": format!("{name}@nikpot.com")})),
        );
        let id = text(&created["technician_id"]);
        na.ok(
            "PUT",
            &format!("{tenant_path}/technicians/{id}"),
            admin,
            None,
        );
        let token = na.ok(
            "POST",
            "/v1/tokens",
            admin,
            Some(json!({"role": "technician", "technician_id": id})),
        );
        techs.push(Tech {
            name,
            id,
            token: text(&token["token"]),
        });
    }
    let (nik, ana) = (&techs[0], &techs[1]);
    let enrollment = na.ok(
        "POST",
        &format!("{tenant_path}/enrollment-tokens"),
        admin,
        Some(json!({})),
    );
    let mut agent = Agent::enroll(&na, &text(&enrollment["token"]), "W11-L-PASSWORD");
    let checkout_path = format!("{tenant_path}/computers/{}/checkout", agent.computer_id);
    let check_out = |node: &Node, tech: &Tech| {
        let answer = node.call("POST", &checkout_path, &tech.token, Some(json!({})));
        assert_eq!(
            answer.status, 201,
            "check-out on {}: {}",
            node.name, answer.body
        );
        text(&answer.json()["session_id"])
    };
    let first = check_out(&na, nik);
    agent.serve_until(&[&na], SHORT, "the first session is active on A", |_| {
        na.session_status(&nik.token, &first) == "active"
    });
    na.ok(
        "POST",
        &format!("/v1/sessions/{first}/checkin"),
        &nik.token,
        None,
    );
    agent.serve_until(&[&na], SHORT, "msp-nik leaves the group", |agent| {
        !agent.machine.in_group("msp-nik", GROUP)
    });

    // B joins: same tokens, same data.
    let b = Proc::start("B", &settings);
    let nb = b.node.clone();
    assert_eq!(nb.session_status(&nik.token, &first), "checked_in");
    eventually("B lists what A lists", SHORT, || {
        let (from_a, from_b) = (views(&na, admin, &tenant_id), views(&nb, admin, &tenant_id));
        (from_a == from_b && from_a.sessions.len() == 1)
            .then_some(())
            .ok_or(format!("A: {from_a:?}\nB: {from_b:?}"))
    });

    // The agent long-polls A; a check-out through B is in flight; A is killed.
    let password_before = agent.machine.password("msp-nik").map(str::to_owned);
    let (mut agent, long_poll, in_flight, poll_ended_after_kill, killed_at) =
        std::thread::scope(|scope| {
            let na = &na;
            let poller = scope.spawn(move || {
                let result = agent.poll(na, 30);
                (agent, result, Instant::now())
            });
            // Pacing only: lets the long poll reach A before the check-out.
            std::thread::sleep(Duration::from_millis(300));
            let in_flight = check_out(&nb, nik);
            let killed_at = Instant::now();
            a.kill();
            let (agent, result, ended) = poller.join().expect("the long poll");
            (
                agent,
                result,
                in_flight,
                ended.saturating_duration_since(killed_at),
                killed_at,
            )
        });
    eprintln!(
        "cluster: the long poll on A ended {poll_ended_after_kill:?} after the kill: {long_poll:?}"
    );
    assert!(
        poll_ended_after_kill < Duration::from_secs(10),
        "the long poll on the killed server ended at once, not at its timeout"
    );
    let gone = na.send("GET", "/healthz", None, None, &[], SHORT);
    assert!(gone.is_err(), "A is dead: {gone:?}");

    // After the kill only B can react: a check-out now needs B's process managers.
    let after_kill = check_out(&nb, ana);
    agent.serve_until(&[&nb], SHORT, "both sessions are active through B", |_| {
        nb.session_status(&nik.token, &in_flight) == "active"
            && nb.session_status(&ana.token, &after_kill) == "active"
    });
    eprintln!(
        "cluster: B took over {:?} after the kill",
        killed_at.elapsed()
    );
    assert!(
        agent.machine.in_group("msp-nik", GROUP) && agent.machine.in_group("msp-ana", GROUP),
        "{:?}",
        agent.machine.log
    );
    assert_ne!(
        agent.machine.password("msp-nik"),
        password_before.as_deref(),
        "msp-nik got a new password before this session"
    );
    let revealed = nb.ok(
        "POST",
        &format!("/v1/sessions/{after_kill}/credential"),
        &ana.token,
        None,
    );
    assert_eq!(
        revealed["password"].as_str(),
        agent.machine.password("msp-ana")
    );

    // Check-ins through B: the access is taken away on the machine.
    let log_before = agent.machine.log.len();
    for (tech, session) in [(nik, &in_flight), (ana, &after_kill)] {
        let answer = nb.ok(
            "POST",
            &format!("/v1/sessions/{session}/checkin"),
            &tech.token,
            None,
        );
        assert_eq!(answer["status"], "checked_in");
    }
    agent.serve_until(&[&nb], SHORT, "both accounts leave the group", |agent| {
        agent.machine.members(GROUP).is_empty()
    });
    agent.drain(&[&nb], SHORT);
    let revocations = &agent.machine.log[log_before..];
    for account in ["msp-nik", "msp-ana"] {
        for op in ["remove_from_group", "rotate_password"] {
            let wanted = format!("{op} {account}");
            assert!(revocations.contains(&wanted), "{wanted}: {revocations:?}");
        }
    }
    assert!(
        agent.machine.problems.is_empty(),
        "{:#?}",
        agent.machine.problems
    );
    for (tech, session) in [(nik, &in_flight), (ana, &after_kill)] {
        assert_eq!(nb.session_status(&tech.token, session), "checked_in");
    }
    let settled = eventually("B's read models follow", SHORT, || {
        let seen = views(&nb, admin, &tenant_id);
        let closed = seen.sessions.len() == 3 && seen.sessions.iter().all(|s| s["open"] == false);
        let revoked = seen
            .accounts
            .iter()
            .all(|a| array(a, "groups").is_empty() && a["present"] == true);
        let said = seen.audit.iter().any(|e| {
            e["sentence"]
                == "ana@nikpot.com checked in their session on W11-L-PASSWORD with account \
                    msp-ana"
        });
        let gaps = audit_gaps(&nb.raw_events(admin), &seen.audit);
        (closed && revoked && said && seen.standing_privilege.is_empty() && gaps.is_empty())
            .then_some(seen)
            .ok_or_else(|| "not yet".to_owned())
    });
    assert_eq!(settled.accounts.len(), 2, "{:?}", settled.accounts);

    // A server started now sees the same.
    let a2 = Proc::start("A2", &settings);
    let n2 = a2.node.clone();
    eventually("a restarted server answers like B", SHORT, || {
        let (from_b, from_2) = (views(&nb, admin, &tenant_id), views(&n2, admin, &tenant_id));
        (from_b == from_2)
            .then_some(())
            .ok_or(format!("B: {from_b:?}\nA2: {from_2:?}"))
    });
    assert_eq!(n2.session_status(&nik.token, &in_flight), "checked_in");
    assert_eq!(agent.poll(&n2, 0), Ok(0), "nothing left for the agent");
    eprintln!("cluster: the failover test took {:?}", started.elapsed());
}

/// Two servers asked at the same moment to register technicians with one username (issue 10,
/// item 6): exactly one of each pair wins, the other gets a 409 naming the field, and both
/// servers list one technician per name. The names are claimed in one stream of the shared
/// event log, so the event store's expected-revision check decides, whichever server asks.
#[test]
fn two_servers_never_register_one_username_twice() {
    let settings = Settings::new();
    let admin = settings.admin.as_str();
    let (a, b) = (Proc::start("A", &settings), Proc::start("B", &settings));
    let nodes = [a.node.clone(), b.node.clone()];
    const NAMES: usize = 12;
    for round in 0..NAMES {
        let username = format!("tech{round}");
        let barrier = std::sync::Barrier::new(2);
        let answers: Vec<Answer> = std::thread::scope(|scope| {
            let handles: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(i, node)| {
                    let (barrier, username) = (&barrier, &username);
                    scope.spawn(move || {
                        // Different e-mail addresses: the username alone must decide.
                        let body = json!({"username": username,
                                          "email": format!("{username}.{i}@msp.example")});
                        barrier.wait();
                        node.call("POST", "/v1/technicians", admin, Some(body))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
        statuses.sort();
        assert_eq!(statuses, [201, 409], "{username}: {answers:?}");
        let loser = answers.iter().find(|a| a.status == 409).unwrap();
        assert!(loser.is_problem(409), "{loser:?}");
        let problem = loser.json();
        assert!(
            problem["field"] == "username" || problem["type"] == "urn:latchkey:problem:contended",
            "{problem}"
        );
    }
    for node in &nodes {
        eventually("one technician per name on both servers", SHORT, || {
            let listed = node.get("/v1/technicians", admin);
            let names: Vec<String> = array(&listed, "technicians")
                .iter()
                .map(|t| text(&t["username"]))
                .collect();
            let unique: BTreeSet<&String> = names.iter().collect();
            (names.len() == NAMES && unique.len() == NAMES)
                .then_some(())
                .ok_or_else(|| format!("{} on {}: {names:?}", names.len(), node.name))
        });
    }
}
