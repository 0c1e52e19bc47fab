//! The real `latchkey serve` and the real `latchkey-agent` on loopback with temp
//! directories, for the agent's end-to-end tests: an MSP set up over HTTP, an agent enrolled
//! and run as a process on a throw-away `--root`, and readers for what a user would look at
//! (HTTP answers, the account files under the root, the agent's journal).

#![allow(dead_code)] // each test file uses part of it

/// The throw-away CA of the HTTPS tests, shared with the server's tests.
#[path = "../../../api/tests/support/ca.rs"]
pub mod ca;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The secret-store key of servers sharing a database (base64 of 32 bytes; tests only).
pub const SHARED_KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc=";

/// The admin group of the default JIT policy, created in every throw-away root.
pub const ADMIN_GROUP: &str = "Administrators";

/// How long any wait in these tests may take before it fails.
const PATIENCE: Duration = Duration::from_secs(20);

/// The `latchkey` server binary. It belongs to another package, so Cargo does not say where
/// it is: it sits next to this test's directory (`target/debug/deps/..`).
pub fn latchkey_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let binary = profile_dir.join("latchkey");
    assert!(
        binary.is_file(),
        "the latchkey server binary is not at {}: build it first (cargo build -p latchkey-api, \
         or run the tests with cargo test --workspace)",
        binary.display()
    );
    binary
}

pub fn agent_binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_latchkey-agent"))
}

/// These tests drive the shadow-utils with `--root`, which chroots.
pub fn require_root() {
    let uid = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(str::to_owned))
        });
    assert_eq!(
        uid.as_deref(),
        Some("0"),
        "the agent's end-to-end tests drive useradd --root, which chroots: run them as root"
    );
}

/// A well-formed MSP admin token (`lk_<32 hex>_<43 base64url>`), made up for the test.
pub fn admin_token() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let secret = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    // 42 characters of hex and a final `A` (no stray low bits) are 32 bytes of base64url.
    format!("lk_{id}_{}A", &secret[..42])
}

/// Polls `done` until it holds; fails naming `what` (and showing `context()`) otherwise.
pub fn wait_for(what: &str, context: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < PATIENCE {
        if done() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}\n{}", context());
}

/// A running `latchkey serve`; killed when dropped.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `http` or `https`.
    pub scheme: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server on `data`, listening on `listen` (`127.0.0.1:0` for any port); its
    /// log goes to `<data>/server.log`.
    pub fn start(data: &Path, admin: &str, listen: &str) -> Server {
        Self::start_with(data, admin, listen, &[])
    }

    /// [`Server::start`] with more environment (e.g. `LATCHKEY_STORE`).
    /// The data directory is made private first, as the server asks (`tempfile::tempdir()`
    /// makes them 0755).
    pub fn start_with(data: &Path, admin: &str, listen: &str, env: &[(&str, &str)]) -> Server {
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(0o700))
            .expect("the data directory can be made private");
        // Private like the rest of the data directory: the server refuses a data directory
        // with a file others may read.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(data.join("server.log"))
            .expect("a log file in the data directory");
        let mut child = Command::new(latchkey_binary())
            .args(["serve", "--listen", listen, "--data"])
            .arg(data)
            .env_remove("LATCHKEY_STORE")
            .env_remove("LATCHKEY_SECRET_KEY")
            .env("LATCHKEY_ADMIN_TOKEN", admin)
            .env("LATCHKEY_ADMIN_EMAIL", "admin@msp.example")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("latchkey starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a first line");
        let (scheme, addr) = line
            .trim()
            .strip_prefix("latchkey listening on ")
            .and_then(|url| url.split_once("://"))
            .map(|(scheme, addr)| (scheme.to_owned(), addr.to_owned()))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stdout.read_to_end(&mut sink);
        });
        Server {
            child,
            addr,
            scheme,
        }
    }

    /// Kills the server (SIGKILL) and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The MSP side: a server with its data directory and admin token, driven over HTTP.
pub struct Msp {
    pub server: Option<Server>,
    pub addr: String,
    /// `http` or `https`.
    pub scheme: String,
    pub admin: String,
    pub data: tempfile::TempDir,
    http: reqwest::blocking::Client,
}

/// A tenant with the technician nik in it, and an enrollment token for a computer.
pub struct Setup {
    pub tenant_id: String,
    pub nik_id: String,
    pub nik_token: String,
    pub enrollment_token: String,
    pub shared_account: Option<String>,
}

impl Msp {
    pub fn start() -> Msp {
        let data = tempfile::tempdir().unwrap();
        let admin = admin_token();
        let server = Server::start(data.path(), &admin, "127.0.0.1:0");
        Msp {
            addr: server.addr.clone(),
            scheme: server.scheme.clone(),
            server: Some(server),
            admin,
            data,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        }
    }

    /// Two servers on one PostgreSQL database (`store`, a `postgres://` URL) with the same
    /// secret key: the MSP talks to the first, which starts first and so leads; the second
    /// is returned with its data directory.
    pub fn start_pair(store: &str) -> (Msp, Server, tempfile::TempDir) {
        let env = [
            ("LATCHKEY_STORE", store),
            ("LATCHKEY_SECRET_KEY", SHARED_KEY),
        ];
        let (first, second) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let admin = admin_token();
        let server = Server::start_with(first.path(), &admin, "127.0.0.1:0", &env);
        let other = Server::start_with(second.path(), &admin, "127.0.0.1:0", &env);
        let msp = Msp {
            addr: server.addr.clone(),
            scheme: server.scheme.clone(),
            server: Some(server),
            admin,
            data: first,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
        };
        (msp, other, second)
    }

    /// A server serving HTTPS with `issued` (see `ca.rs`); the MSP trusts `ca`.
    pub fn start_https(ca: &ca::Ca, issued: &ca::Issued) -> Msp {
        let data = tempfile::tempdir().unwrap();
        let admin = admin_token();
        let env = [
            ("LATCHKEY_TLS_CERT", issued.cert_file.to_str().unwrap()),
            ("LATCHKEY_TLS_KEY", issued.key_file.to_str().unwrap()),
        ];
        let server = Server::start_with(data.path(), &admin, "127.0.0.1:0", &env);
        assert_eq!(server.scheme, "https");
        let trusted = reqwest::Certificate::from_pem(ca.pem.as_bytes()).unwrap();
        Msp {
            addr: server.addr.clone(),
            scheme: server.scheme.clone(),
            server: Some(server),
            admin,
            data,
            http: reqwest::blocking::Client::builder()
                .timeout(Duration::from_secs(10))
                .tls_certs_merge([trusted])
                .build()
                .unwrap(),
        }
    }

    /// From now on the MSP talks to `server` (another server on the same database).
    pub fn switch_to(&mut self, server: Server) {
        self.addr = server.addr.clone();
        self.server = Some(server);
    }

    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// Kills the server (SIGKILL), keeping its data directory.
    pub fn stop_server(&mut self) {
        if let Some(server) = self.server.take() {
            server.kill();
        }
    }

    /// Starts the server again on the same data directory (same key file) and address.
    pub fn start_server(&mut self) {
        assert!(self.server.is_none(), "the server is running");
        let start = Instant::now();
        loop {
            // The port was just freed; binding it again may take a moment.
            let attempt = std::panic::catch_unwind(|| {
                Server::start(self.data.path(), &self.admin, &self.addr)
            });
            match attempt {
                Ok(server) => {
                    self.server = Some(server);
                    return;
                }
                Err(_) if start.elapsed() < PATIENCE => {
                    std::thread::sleep(Duration::from_millis(200))
                }
                Err(e) => std::panic::resume_unwind(e),
            }
        }
    }

    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.data.path().join("server.log")).unwrap_or_default()
    }

    pub fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.url()))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().expect("the server answers");
        let status = response.status().as_u16();
        let text = response.text().unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub fn ok(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, path, token, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// A tenant in `mode` with the technician nik (and a token for him), and an enrollment
    /// token for one computer.
    pub fn setup(&self, mode: &str) -> Setup {
        let admin = &self.admin;
        let tenant = self.ok(
            "POST",
            "/v1/tenants",
            admin,
            Some(json!({"name": "customer-1", "login_mode": mode})),
        );
        let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
        let nik = self.ok(
            "POST",
            "/v1/technicians",
            admin,
            Some(json!({"username": "nik", "email": "nik@nikpot.com"})),
        );
        let nik_id = nik["technician_id"].as_str().unwrap().to_owned();
        self.ok(
            "PUT",
            &format!("/v1/tenants/{tenant_id}/technicians/{nik_id}"),
            admin,
            Some(json!({})),
        );
        let token = self.ok(
            "POST",
            "/v1/tokens",
            admin,
            Some(json!({"role": "technician", "technician_id": nik_id})),
        );
        Setup {
            enrollment_token: self.enrollment_token(&tenant_id),
            tenant_id,
            nik_id,
            nik_token: token["token"].as_str().unwrap().to_owned(),
            shared_account: tenant["shared_account"].as_str().map(str::to_owned),
        }
    }

    pub fn enrollment_token(&self, tenant_id: &str) -> String {
        let enrollment = self.ok(
            "POST",
            &format!("/v1/tenants/{tenant_id}/enrollment-tokens"),
            &self.admin,
            Some(json!({})),
        );
        enrollment["token"].as_str().unwrap().to_owned()
    }

    pub fn set_policy(&self, tenant_id: &str, edit: impl FnOnce(&mut Value)) {
        let tenant = self.ok(
            "GET",
            &format!("/v1/tenants/{tenant_id}"),
            &self.admin,
            None,
        );
        let mut policy = tenant["policy"].clone();
        edit(&mut policy);
        self.ok(
            "PUT",
            &format!("/v1/tenants/{tenant_id}/policy"),
            &self.admin,
            Some(policy),
        );
    }

    pub fn session(&self, token: &str, session: &str) -> Value {
        self.ok("GET", &format!("/v1/sessions/{session}"), token, None)
    }

    /// Asks for a check-out; returns the session id and the account.
    pub fn request_check_out(&self, setup: &Setup, computer_id: &str) -> (String, String) {
        let session = self.ok(
            "POST",
            &format!(
                "/v1/tenants/{}/computers/{computer_id}/checkout",
                setup.tenant_id
            ),
            &setup.nik_token,
            Some(json!({"reason": "printer driver", "ticket": "T-1001"})),
        );
        (
            session["session_id"].as_str().unwrap().to_owned(),
            session["account"].as_str().unwrap().to_owned(),
        )
    }

    /// Checks out and waits for the agent to have granted the access.
    pub fn check_out(&self, setup: &Setup, agent: &Agent) -> (String, String) {
        let (session, account) = self.request_check_out(setup, &agent.computer_id());
        self.wait_active(setup, agent, &session);
        (session, account)
    }

    pub fn wait_active(&self, setup: &Setup, agent: &Agent, session: &str) {
        wait_for(
            "the session to become active",
            || {
                format!(
                    "session: {}\nagent log:\n{}",
                    self.session(&setup.nik_token, session),
                    agent.log()
                )
            },
            || self.session(&setup.nik_token, session)["status"] == "active",
        );
    }

    /// The password the technician is shown for the session.
    pub fn reveal(&self, setup: &Setup, session: &str) -> String {
        let revealed = self.ok(
            "POST",
            &format!("/v1/sessions/{session}/credential"),
            &setup.nik_token,
            Some(json!({})),
        );
        revealed["password"].as_str().unwrap().to_owned()
    }

    pub fn check_in(&self, setup: &Setup, session: &str) {
        let answer = self.ok(
            "POST",
            &format!("/v1/sessions/{session}/checkin"),
            &setup.nik_token,
            Some(json!({})),
        );
        assert_eq!(answer["status"], "checked_in");
    }

    /// Whether the agent's feed is empty (asked with the agent's own credential, not waiting).
    pub fn feed_is_empty(&self, agent: &Agent) -> bool {
        let (status, body) = self.call("GET", "/v1/agent/commands?wait=0", &agent.token(), None);
        status == 200 && body["commands"].as_array().is_some_and(Vec::is_empty)
    }

    /// The server's `/metrics` (Prometheus text).
    pub fn metrics(&self) -> String {
        let response = self
            .http
            .get(format!("{}/metrics", self.url()))
            .send()
            .expect("the server answers /metrics");
        assert_eq!(response.status(), 200);
        response.text().unwrap()
    }

    /// One figure of `/metrics`: the sum of the samples of `name` whose labels include every
    /// one of `labels` (`route="/v1/agent/feed"`, …); 0 if there are none.
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .lines()
            .filter_map(|line| {
                let (sample, value) = line.rsplit_once(' ')?;
                let rest = sample.strip_prefix(name)?;
                let matches = (rest.is_empty() || rest.starts_with('{'))
                    && labels.iter().all(|label| rest.contains(label));
                matches.then(|| value.parse::<f64>().ok()).flatten()
            })
            .sum()
    }

    pub fn audit_sentences(&self, tenant_id: &str) -> Vec<String> {
        let page = self.ok(
            "GET",
            &format!("/v1/audit?tenant_id={tenant_id}&limit=1000"),
            &self.admin,
            None,
        );
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sentence"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits for the audit trail (a read model) to have a sentence that `matches`.
    pub fn audit_shows(&self, tenant_id: &str, matches: impl Fn(&str) -> bool) -> Vec<String> {
        wait_for(
            "an audit sentence",
            || format!("{:#?}", self.audit_sentences(tenant_id)),
            || self.audit_sentences(tenant_id).iter().any(|s| matches(s)),
        );
        self.audit_sentences(tenant_id)
    }
}

/// One computer: a state directory, a throw-away root, and the agent process when running.
pub struct Agent {
    pub dir: tempfile::TempDir,
    pub daemon: Option<Child>,
    pub hostname: String,
    /// Extra flags for `run`.
    pub run_flags: Vec<String>,
    /// The root the agent works on, when not its throw-away one (`/` inside a private mount
    /// namespace: see `tests/logons.rs`).
    pub root_dir: Option<PathBuf>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Agent {
    /// A computer with a fresh throw-away root (with the admin group), not enrolled yet.
    pub fn new(hostname: &str) -> Agent {
        require_root();
        let dir = tempfile::tempdir().unwrap();
        latchkey_agent::os::linux::throwaway_root(&dir.path().join("root"), &[ADMIN_GROUP])
            .expect("a throw-away root");
        Agent {
            dir,
            daemon: None,
            hostname: hostname.to_owned(),
            run_flags: Vec::new(),
            root_dir: None,
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn root(&self) -> PathBuf {
        self.root_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("root"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs `latchkey-agent ARGS` to completion.
    pub fn command(&self, args: &[&str]) -> Output {
        self.command_with_env(args, &[])
    }

    /// [`Agent::command`] with more environment.
    pub fn command_with_env(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        Command::new(agent_binary())
            .args(args)
            .env_remove("LATCHKEY_AGENT_STATE")
            .env_remove("LATCHKEY_AGENT_ROOT")
            .env_remove("LATCHKEY_CA_FILE")
            .envs(env.iter().copied())
            .output()
            .expect("latchkey-agent runs")
    }

    pub fn enroll(&self, server: &str, token: &str) -> Output {
        self.enroll_with(server, token, &[])
    }

    /// [`Agent::enroll`] with more flags (e.g. `--ca-file FILE`).
    pub fn enroll_with(&self, server: &str, token: &str, flags: &[&str]) -> Output {
        let state = self.state();
        let mut args = vec![
            "enroll",
            "--server",
            server,
            "--token",
            token,
            "--state",
            state.to_str().unwrap(),
            "--hostname",
            &self.hostname,
        ];
        // The throw-away roots have the group the tests' audit sentences name; the agent
        // would find the host's `sudo` there first.
        if !flags
            .iter()
            .any(|f| *f == "--admin-group" || *f == "--root")
        {
            args.extend_from_slice(&["--admin-group", ADMIN_GROUP]);
        }
        args.extend_from_slice(flags);
        self.command(&args)
    }

    /// Enrolls (which must succeed) and starts the daemon.
    pub fn enroll_and_run(&mut self, msp: &Msp, setup: &Setup) {
        let enrolled = self.enroll(&msp.url(), &setup.enrollment_token);
        assert!(enrolled.status.success(), "{enrolled:?}");
        self.run();
    }

    /// Starts the daemon with short waits (unless `run_flags` set them), its output appended
    /// to the agent's log.
    pub fn run(&mut self) {
        assert!(self.daemon.is_none(), "the daemon is running already");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .unwrap();
        let child = Command::new(agent_binary())
            // Where a crash on purpose would leave a core file, if the machine keeps them.
            .current_dir(self.dir.path())
            .args(["run", "--state"])
            .arg(self.state())
            .arg("--root")
            .arg(self.root())
            .args(
                [
                    ("--poll-seconds", "2"),
                    ("--inventory-seconds", "1"),
                    ("--secrets-seconds", "2"),
                    ("--max-backoff-seconds", "1"),
                ]
                .into_iter()
                .filter(|(flag, _)| !self.run_flags.iter().any(|f| f == flag))
                .flat_map(|(flag, value)| [flag, value]),
            )
            .args(&self.run_flags)
            .env("LATCHKEY_AGENT_LOG", "info")
            .env_remove("LATCHKEY_CA_FILE")
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("latchkey-agent run starts");
        self.daemon = Some(child);
    }

    /// Kills the daemon with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits for the daemon to exit by itself; returns its exit code.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let child = self.daemon.as_mut().expect("the daemon was started");
        let start = Instant::now();
        while start.elapsed() < PATIENCE {
            if let Some(status) = child.try_wait().unwrap() {
                self.daemon = None;
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the daemon did not exit\n{}", self.log());
    }

    pub fn credential(&self) -> Value {
        let text = std::fs::read_to_string(self.state().join("credential.json"))
            .expect("an enrolled agent has a credential");
        serde_json::from_str(&text).unwrap()
    }

    pub fn computer_id(&self) -> String {
        self.credential()["computer_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    pub fn token(&self) -> String {
        self.credential()["agent_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The journal's records, in order.
    pub fn journal(&self) -> Vec<Value> {
        std::fs::read_to_string(self.state().join("journal.jsonl"))
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).expect("a journal line"))
            .collect()
    }

    /// How many times each (request, attempt) reached `step` in the journal.
    pub fn steps(&self, step: &str) -> std::collections::BTreeMap<(u64, u64), usize> {
        let mut counts = std::collections::BTreeMap::new();
        for record in self.journal().iter().filter(|r| r["step"] == step) {
            let key = (
                record["request_id"].as_u64().unwrap(),
                record["attempt"].as_u64().unwrap(),
            );
            *counts.entry(key).or_insert(0) += 1;
        }
        counts
    }

    /// Every (request, attempt) the agent started was applied exactly once: one `applying`
    /// line and one ending (`applied` or `failed`) each, and every ending was reported.
    /// Returns the operations applied, in order.
    pub fn assert_exactly_once(&self) -> Vec<String> {
        // The server has a result before the agent journals that it was reported.
        wait_for(
            "every ending to be journaled as reported",
            || format!("{:#?}", self.journal()),
            || {
                let reported = self.steps("reported");
                self.steps("applied")
                    .keys()
                    .chain(self.steps("failed").keys())
                    .all(|key| reported.contains_key(key))
            },
        );
        let applying = self.steps("applying");
        let applied = self.steps("applied");
        let failed = self.steps("failed");
        for (key, count) in &applying {
            assert_eq!(
                *count,
                1,
                "{key:?} was applied {count} times\n{:#?}",
                self.journal()
            );
            let endings = applied.get(key).unwrap_or(&0) + failed.get(key).unwrap_or(&0);
            assert_eq!(
                endings,
                1,
                "{key:?} ended {endings} times\n{:#?}",
                self.journal()
            );
        }
        for key in applied.keys() {
            assert!(
                applying.contains_key(key),
                "{key:?} applied without applying"
            );
        }
        let reported = self.steps("reported");
        for key in applied.keys().chain(failed.keys()) {
            assert!(
                reported.contains_key(key),
                "{key:?} was never reported\n{:#?}",
                self.journal()
            );
        }
        self.journal()
            .iter()
            .filter(|r| r["step"] == "applying")
            .map(|r| r["operation"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    fn etc(&self, file: &str) -> String {
        std::fs::read_to_string(self.root().join("etc").join(file)).unwrap()
    }

    fn line(&self, file: &str, name: &str) -> Option<Vec<String>> {
        self.etc(file)
            .lines()
            .map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>())
            .find(|fields| fields.first().map(String::as_str) == Some(name))
    }

    /// Lists `member` in `group` in the root's `/etc/group`, as an admin editing it would.
    pub fn add_member_by_hand(&self, group: &str, member: &str) {
        let path = self.root().join("etc/group");
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|line| match line.starts_with(&format!("{group}:")) {
                true if line.ends_with(':') => format!("{line}{member}\n"),
                true => format!("{line},{member}\n"),
                false => format!("{line}\n"),
            })
            .collect();
        std::fs::write(&path, text).unwrap();
    }

    /// The account is in the root's `/etc/passwd`.
    pub fn has_account(&self, account: &str) -> bool {
        self.line("passwd", account).is_some()
    }

    /// Whether `userdel` has finished with `account`: no line in passwd or shadow and no
    /// group membership. (userdel rewrites the files one after another, so one file alone
    /// can be read half-way through.)
    pub fn is_gone(&self, account: &str) -> bool {
        !self.has_account(account) && self.shadow_hash(account).is_none() && !self.is_admin(account)
    }

    /// The members `/etc/group` lists for `group`.
    pub fn members(&self, group: &str) -> Vec<String> {
        self.line("group", group)
            .and_then(|fields| fields.get(3).cloned())
            .map(|list| {
                list.split(',')
                    .filter(|m| !m.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn is_admin(&self, account: &str) -> bool {
        self.members(ADMIN_GROUP).iter().any(|m| m == account)
    }

    /// The account's hash in the root's `/etc/shadow`.
    pub fn shadow_hash(&self, account: &str) -> Option<String> {
        self.line("shadow", account)
            .and_then(|fields| fields.get(1).cloned())
    }

    /// Whether the shadow file's hash of `account` is that of `password`.
    pub fn password_is(&self, account: &str, password: &str) -> bool {
        self.shadow_hash(account)
            .is_some_and(|hash| latchkey_agent::os::password_matches(password, &hash))
    }
}

/// The stdout and stderr of a finished command, for messages.
pub fn said(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}
