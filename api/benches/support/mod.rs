//! What the HTTP and fleet benchmarks share: starting the real `latchkey serve` binary, the
//! HTTP helper that calls it, the full JIT cycle one client runs (technician and simulated
//! agent), and the percentile.
//!
//! Each benchmark includes this module (`mod support;`); it uses nothing of `tests/support`
//! but the simulated machine.

#![allow(dead_code)] // each benchmark uses part of it

#[path = "../../tests/support/machine.rs"]
pub mod machine;

use machine::Machine;
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// Whether `cargo bench` runs us (it passes `--bench`). `cargo test --all-targets` runs the
/// benchmarks too, without it: then they run a short smoke version.
pub fn measuring() -> bool {
    std::env::args().any(|arg| arg == "--bench")
}

/// A `latchkey serve` of its own, on loopback, on a fresh data directory (or everything in
/// the PostgreSQL database `LATCHKEY_BENCH_STORE` names). Stopped when dropped, however the
/// benchmark ends (a panic included).
pub struct Server {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub pid: u32,
    child: KillOnDrop,
    _data: tempfile::TempDir,
}

impl Server {
    /// Starts the server with `admin` as its MSP admin token and waits until it listens.
    /// `LATCHKEY_BENCH_BIN` names another `latchkey` binary to run instead of the one Cargo
    /// built with the benchmark.
    pub fn start(admin: &str) -> Server {
        // Private, as the server wants its data directory (`tempdir()` makes it 0755).
        let data = tempfile::Builder::new()
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .unwrap();
        // Another build of the server (an older one, to compare), or the one Cargo built.
        let binary = std::env::var_os("LATCHKEY_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_latchkey").into());
        let mut server = Command::new(binary);
        server
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data.path());
        // Another event store (a postgres:// URL puts everything in that database).
        if let Ok(store) = std::env::var("LATCHKEY_BENCH_STORE") {
            server.args(["--store", &store]);
            // The secret store is then in the database too: every server of this run must
            // have the same key (unless LATCHKEY_SECRET_KEY gives one, which they inherit).
            if std::env::var_os("LATCHKEY_SECRET_KEY").is_none() {
                server.env("LATCHKEY_SECRET_KEY", run_key());
            }
        }
        let mut server = server
            .env("LATCHKEY_ADMIN_TOKEN", admin)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("latchkey starts");
        let mut line = String::new();
        std::io::BufReader::new(server.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let pid = server.id();
        let child = KillOnDrop(server);
        assert!(
            line.starts_with("latchkey listening on "),
            "latchkey did not start (its error is above). On a database an earlier run used, \
             the secret-store key differs: use a fresh database, or set LATCHKEY_SECRET_KEY \
             for every run"
        );
        let base = line.trim().replace("latchkey listening on ", "");
        Server {
            base,
            pid,
            child,
            _data: data,
        }
    }

    /// `127.0.0.1:PORT`
    pub fn addr(&self) -> std::net::SocketAddr {
        self.base
            .trim_start_matches("http://")
            .parse()
            .expect("the server listens on an IP address")
    }
}

/// A secret-store key for every server of this run.
fn run_key() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(|| {
        latchkey_server_stores::secrets::Key::generate()
            .to_base64()
            .expose()
            .to_owned()
    })
}

/// Stops the server however the benchmark ends (a panic included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Api {
    pub client: reqwest::Client,
    pub base: String,
    /// Latency of every request, in microseconds.
    pub latencies: Arc<Mutex<Vec<u64>>>,
}

impl Api {
    pub fn new(base: &str) -> Api {
        Api {
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(256)
                .build()
                .unwrap(),
            base: base.to_owned(),
            latencies: Arc::default(),
        }
    }

    /// One request with `token`; panics unless the answer is a success.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let started = Instant::now();
        let mut request = self
            .client
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let value: Value = response.json().await.unwrap_or(Value::Null);
        self.latencies
            .lock()
            .await
            .push(started.elapsed().as_micros() as u64);
        assert!(status.is_success(), "{method} {path}: {status} {value}");
        value
    }

    /// `POST /v1/agent/enroll` with a one-time enrollment token (no bearer token); returns
    /// the computer id and the agent token. Panics unless the enrollment succeeds.
    pub async fn enroll(&self, enrollment_token: &str, hostname: &str) -> (String, String) {
        let response = self
            .client
            .post(format!("{}/v1/agent/enroll", self.base))
            .json(&json!({
                "token": enrollment_token,
                "hostname": hostname,
                "os": "linux",
                "admin_group": "sudo",
            }))
            .send()
            .await
            .expect("the server answers");
        let status = response.status();
        let enrolled: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            status.is_success(),
            "enroll {hostname}: {status} {enrolled}"
        );
        (
            enrolled["computer_id"].as_str().unwrap().to_owned(),
            enrolled["agent_token"].as_str().unwrap().to_owned(),
        )
    }

    /// A one-time enrollment token for `tenant`, valid for a day.
    pub async fn enrollment_token(&self, admin: &str, tenant: &str) -> String {
        let issued = self
            .call(
                reqwest::Method::POST,
                &format!("/v1/tenants/{tenant}/enrollment-tokens"),
                admin,
                Some(json!({"expires_in_minutes": 1440})),
            )
            .await;
        issued["token"].as_str().unwrap().to_owned()
    }
}

/// One technician with one computer (named mode), and the computer's simulated agent.
pub struct Client {
    pub tenant: String,
    pub computer: String,
    pub technician_token: String,
    pub agent_token: String,
    pub machine: Machine,
}

impl Client {
    /// Polls the agent feed once and answers everything; returns the operations applied.
    async fn agent_round(&mut self, api: &Api, wait: u32) -> Vec<String> {
        let feed = api
            .call(
                reqwest::Method::GET,
                &format!("/v1/agent/commands?wait={wait}"),
                &self.agent_token,
                None,
            )
            .await;
        let mut done = Vec::new();
        for command in feed["commands"].as_array().unwrap() {
            let report = self.machine.answer(command);
            api.call(
                reqwest::Method::POST,
                "/v1/agent/results",
                &self.agent_token,
                Some(report),
            )
            .await;
            done.push(command["operation"]["op"].as_str().unwrap().to_owned());
        }
        done
    }

    /// One full cycle: check-out → the agent provisions (ensure, rotate, add to the group) →
    /// the session reads `active` → check-in → the agent revokes (out of the group, rotate
    /// again). Panics at any failed request. Returns the time from the check-out request
    /// until the session read `active`.
    pub async fn cycle(&mut self, api: &Api) -> Duration {
        let started = Instant::now();
        let session = api
            .call(
                reqwest::Method::POST,
                &format!(
                    "/v1/tenants/{}/computers/{}/checkout",
                    self.tenant, self.computer
                ),
                &self.technician_token,
                Some(json!({})),
            )
            .await;
        let id = session["session_id"].as_str().unwrap().to_owned();
        // The agent provisions until the account is in the admin group.
        loop {
            let done = self.agent_round(api, 5).await;
            if done.iter().any(|op| op == "add_to_group") {
                break;
            }
        }
        // The session turns active once the process managers have seen the result.
        loop {
            let view = api
                .call(
                    reqwest::Method::GET,
                    &format!("/v1/sessions/{id}"),
                    &self.technician_token,
                    None,
                )
                .await;
            if view["status"] == "active" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let to_active = started.elapsed();
        api.call(
            reqwest::Method::POST,
            &format!("/v1/sessions/{id}/checkin"),
            &self.technician_token,
            Some(json!({})),
        )
        .await;
        // The agent revokes: out of the group, then the password rotated again.
        let mut seen = Vec::new();
        while !(seen.iter().any(|op| op == "remove_from_group")
            && seen.iter().any(|op| op == "rotate_password"))
        {
            seen.extend(self.agent_round(api, 5).await);
        }
        to_active
    }
}

/// The `p` quantile of `sorted` microseconds, in milliseconds.
pub fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

/// A new tenant in named mode, with a unique name; returns its id.
pub async fn create_tenant(api: &Api, admin: &str) -> String {
    let tenant = api
        .call(
            reqwest::Method::POST,
            "/v1/tenants",
            admin,
            Some(json!({"name": format!("bench-{}", uuid::Uuid::now_v7().simple()), "login_mode": "named"})),
        )
        .await;
    tenant["tenant_id"].as_str().unwrap().to_owned()
}

/// `count` clients in `tenant`: each a new technician, member of the tenant, with an API
/// token and a newly enrolled computer of their own.
pub async fn add_clients(api: &Api, admin: &str, tenant: &str, count: usize) -> Vec<Client> {
    use reqwest::Method;
    let mut clients = Vec::new();
    for i in 0..count {
        // Usernames and e-mail addresses are never given twice, even across runs on one
        // server.
        let username = format!(
            "tech{i}-{}",
            &uuid::Uuid::now_v7().simple().to_string()[24..]
        );
        let technician = api
            .call(
                Method::POST,
                "/v1/technicians",
                admin,
                Some(json!({"username": username, "email": format!("{username}@msp.example")})),
            )
            .await;
        let technician = technician["technician_id"].as_str().unwrap().to_owned();
        api.call(
            Method::PUT,
            &format!("/v1/tenants/{tenant}/technicians/{technician}"),
            admin,
            None,
        )
        .await;
        let token = api
            .call(
                Method::POST,
                "/v1/tokens",
                admin,
                Some(json!({"role": "technician", "technician_id": technician})),
            )
            .await;
        let enrollment = api.enrollment_token(admin, tenant).await;
        let (computer, agent_token) = api.enroll(&enrollment, &format!("PC-{i}")).await;
        clients.push(Client {
            tenant: tenant.to_owned(),
            computer,
            technician_token: token["token"].as_str().unwrap().to_owned(),
            agent_token,
            machine: Machine::default(),
        });
    }
    clients
}

/// A new tenant with `count` clients.
pub async fn setup(api: &Api, admin: &str, count: usize) -> Vec<Client> {
    let tenant = create_tenant(api, admin).await;
    add_clients(api, admin, &tenant, count).await
}
