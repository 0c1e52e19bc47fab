//! HTTP load benchmark: full check-out → agent results → active → check-in → revocation cycles
//! against the real `latchkey serve` binary on loopback, with simulated agents answering over
//! the real agent endpoints. Reports cycles per second and p50/p99 latency (per HTTP request
//! and per full cycle) at 1, 16 and 64 concurrent clients.
//!
//! `cargo bench -p latchkey-api --bench http` (`LATCHKEY_BENCH_SECONDS`, default 10 per level;
//! `LATCHKEY_BENCH_LEVELS`, default `1,16,64`). Each client is one technician with one
//! computer (named mode), so clients do not queue behind each other's computers.

#[path = "../tests/support/machine.rs"]
mod machine;

use machine::Machine;
use serde_json::{json, Value};
use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

struct Api {
    client: reqwest::Client,
    base: String,
    /// Latency of every request, in microseconds.
    latencies: Arc<Mutex<Vec<u64>>>,
}

impl Api {
    async fn call(
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
}

struct Client {
    tenant: String,
    computer: String,
    technician_token: String,
    agent_token: String,
    machine: Machine,
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

    async fn cycle(&mut self, api: &Api) {
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
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index] as f64 / 1000.0
}

async fn setup(api: &Api, admin: &str, count: usize) -> Vec<Client> {
    use reqwest::Method;
    let tenant = api
        .call(
            Method::POST,
            "/v1/tenants",
            admin,
            Some(json!({"name": format!("bench-{}", uuid::Uuid::now_v7().simple()), "login_mode": "named"})),
        )
        .await;
    let tenant = tenant["tenant_id"].as_str().unwrap().to_owned();
    let mut clients = Vec::new();
    for i in 0..count {
        let technician = api
            .call(
                Method::POST,
                "/v1/technicians",
                admin,
                Some(json!({"username": format!("tech{i}-{}", &uuid::Uuid::now_v7().simple().to_string()[24..]), "email": format!("tech{i}@msp.example")})),
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
        let enrollment = api
            .call(
                Method::POST,
                &format!("/v1/tenants/{tenant}/enrollment-tokens"),
                admin,
                Some(json!({})),
            )
            .await;
        let enrolled = api
            .client
            .post(format!("{}/v1/agent/enroll", api.base))
            .json(&json!({"token": enrollment["token"], "hostname": format!("PC-{i}"), "os": "linux"}))
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        clients.push(Client {
            tenant: tenant.clone(),
            computer: enrolled["computer_id"].as_str().unwrap().to_owned(),
            technician_token: token["token"].as_str().unwrap().to_owned(),
            agent_token: enrolled["agent_token"].as_str().unwrap().to_owned(),
            machine: Machine::default(),
        });
    }
    clients
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("LATCHKEY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let levels: Vec<usize> = std::env::var("LATCHKEY_BENCH_LEVELS")
        .unwrap_or_else(|_| "1,16,64".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let data = tempfile::tempdir().unwrap();
    let admin = latchkey_api::auth::generate_token().1;
    let mut server = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    server
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path());
    // Another event store (a postgres:// URL puts everything in that database).
    if let Ok(store) = std::env::var("LATCHKEY_BENCH_STORE") {
        server.args(["--store", &store]);
    }
    let mut server = server
        .env("LATCHKEY_ADMIN_TOKEN", &admin)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("latchkey starts");
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let base = line.trim().replace("latchkey listening on ", "");
    let _server = KillOnDrop(server);
    let api = Arc::new(Api {
        client: reqwest::Client::builder()
            .pool_max_idle_per_host(256)
            .build()
            .unwrap(),
        base,
        latencies: Arc::default(),
    });
    println!(
        "{:>8} {:>10} {:>9} {:>14} {:>14} {:>12} {:>12}",
        "clients", "cycles", "cycles/s", "req p50 (ms)", "req p99 (ms)", "cycle p50", "cycle p99"
    );
    for level in levels {
        let clients = setup(&api, &admin, level).await;
        api.latencies.lock().await.clear();
        let cycles: Arc<Mutex<Vec<u64>>> = Arc::default();
        let deadline = Instant::now() + Duration::from_secs(seconds);
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
}

/// Stops the server however the benchmark ends (a panic included).
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
