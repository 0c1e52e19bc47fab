//! An MSP on a real `latchkey serve`: the admin token, a tenant with the technician nik and
//! an enrolled computer answered by a simulated [`Agent`], and the calls the stories make.

use super::agent::{self, Agent};
use super::Server;
use serde_json::{json, Value};

pub struct Msp {
    pub server: Server,
    pub admin: String,
    pub data: tempfile::TempDir,
}

impl Msp {
    pub fn start() -> Msp {
        Self::start_with(&[])
    }

    pub fn start_with(env: &[(&str, &str)]) -> Msp {
        let data = tempfile::tempdir().unwrap();
        let admin = latchkey_server_stores::tokens::generate_token().1;
        let mut all = vec![
            ("LATCHKEY_ADMIN_TOKEN", admin.as_str()),
            ("LATCHKEY_ADMIN_EMAIL", "admin@msp.example"),
        ];
        all.extend_from_slice(env);
        let server = Server::start(data.path(), &all);
        Self::adopt(server, admin, data)
    }

    /// An MSP on a server started otherwise, with `admin` as its admin token and `data` as
    /// its data directory.
    pub fn adopt(server: Server, admin: String, data: tempfile::TempDir) -> Msp {
        Msp {
            server,
            admin,
            data,
        }
    }

    pub fn call(&self, method: &str, path: &str, token: &str, body: Value) -> (u16, Value) {
        let body = (method != "GET").then(|| body.to_string());
        self.server.json(method, path, Some(token), body.as_deref())
    }

    pub fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let (status, answer) = self.call(method, path, token, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// A tenant in `mode`, the technician nik in it with a token, and an enrolled computer.
    pub fn setup(&self, mode: &str, hostname: &str) -> Setup {
        let admin = &self.admin;
        let tenant = self.ok(
            "POST",
            "/v1/tenants",
            admin,
            json!({"name": "customer-1", "login_mode": mode}),
        );
        let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
        let nik = self.ok(
            "POST",
            "/v1/technicians",
            admin,
            json!({"username": "nik", "email": "nik@nikpot.com"}),
        );
        let nik_id = nik["technician_id"].as_str().unwrap().to_owned();
        self.ok(
            "PUT",
            &format!("/v1/tenants/{tenant_id}/technicians/{nik_id}"),
            admin,
            json!({}),
        );
        let token = self.ok(
            "POST",
            "/v1/tokens",
            admin,
            json!({"role": "technician", "technician_id": nik_id}),
        );
        let nik_token = token["token"].as_str().unwrap().to_owned();
        let agent = self.enroll(&tenant_id, hostname);
        Setup {
            tenant_id,
            nik_id,
            nik_token,
            agent,
            shared_account: tenant["shared_account"].as_str().map(str::to_owned),
        }
    }

    /// Another computer of the tenant, enrolled with a fresh one-time token.
    pub fn enroll(&self, tenant_id: &str, hostname: &str) -> Agent {
        let enrollment = self.ok(
            "POST",
            &format!("/v1/tenants/{tenant_id}/enrollment-tokens"),
            &self.admin,
            json!({}),
        );
        Agent::enroll(
            &self.server,
            enrollment["token"].as_str().unwrap(),
            hostname,
        )
    }

    /// Checks `computer_id` out as `token`; returns the new session (still provisioning).
    pub fn start_check_out(&self, token: &str, tenant_id: &str, computer_id: &str) -> Value {
        let session = self.ok(
            "POST",
            &format!("/v1/tenants/{tenant_id}/computers/{computer_id}/checkout"),
            token,
            json!({"reason": "printer driver", "ticket": "T-1001"}),
        );
        assert_eq!(session["status"], "provisioning");
        session
    }

    /// One figure of `/metrics` (0 if absent).
    pub fn metric(&self, name: &str) -> f64 {
        let (status, _, text) = self.server.request("GET", "/metrics", None, None);
        assert_eq!(status, 200);
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn set_policy(&self, tenant_id: &str, edit: impl FnOnce(&mut Value)) {
        let tenant = self.ok(
            "GET",
            &format!("/v1/tenants/{tenant_id}"),
            &self.admin,
            json!({}),
        );
        let mut policy = tenant["policy"].clone();
        edit(&mut policy);
        self.ok(
            "PUT",
            &format!("/v1/tenants/{tenant_id}/policy"),
            &self.admin,
            policy,
        );
    }

    pub fn session_status(&self, token: &str, session: &str) -> String {
        let view = self.ok("GET", &format!("/v1/sessions/{session}"), token, json!({}));
        view["status"].as_str().unwrap().to_owned()
    }

    pub fn check_out(&self, setup: &mut Setup) -> (String, String) {
        let session =
            self.start_check_out(&setup.nik_token, &setup.tenant_id, &setup.agent.computer_id);
        let id = session["session_id"].as_str().unwrap().to_owned();
        let token = setup.nik_token.clone();
        setup.agent.until(&self.server, 200, || {
            self.session_status(&token, &id) == "active"
        });
        (id, session["account"].as_str().unwrap().to_owned())
    }

    pub fn reveal(&self, token: &str, session: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/v1/sessions/{session}/credential"),
            token,
            json!({}),
        )
    }

    pub fn check_in(&self, setup: &mut Setup, session: &str) {
        let answer = self.ok(
            "POST",
            &format!("/v1/sessions/{session}/checkin"),
            &setup.nik_token,
            json!({}),
        );
        assert_eq!(answer["status"], "checked_in");
        // The agent drains its revocation requests.
        let token = setup.agent.token.clone();
        setup.agent.until(&self.server, 200, || {
            agent::feed(&self.server, &token, 1).is_empty()
        });
    }

    pub fn audit_sentences(&self, tenant_id: &str) -> Vec<String> {
        let page = self.ok(
            "GET",
            &format!("/v1/audit?tenant_id={tenant_id}&limit=1000"),
            &self.admin,
            json!({}),
        );
        page["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["sentence"].as_str().unwrap().to_owned())
            .collect()
    }

    /// Waits for the audit trail (a read model) to include `sentence`.
    pub fn audit_shows(&self, tenant_id: &str, sentence: &str) -> Vec<String> {
        for _ in 0..100 {
            let sentences = self.audit_sentences(tenant_id);
            if sentences.iter().any(|s| s == sentence) {
                return sentences;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "the audit trail never said {sentence:?}; it says {:#?}",
            self.audit_sentences(tenant_id)
        );
    }
}

pub struct Setup {
    pub tenant_id: String,
    pub nik_id: String,
    pub nik_token: String,
    pub agent: Agent,
    pub shared_account: Option<String>,
}

/// A fresh PostgreSQL database (on `LATCHKEY_TEST_POSTGRES_URL`) for a server's event store,
/// read models and token, secret and idempotency tables.
pub fn postgres_database() -> latchkey_store::postgres::testing::TestDatabase {
    latchkey_store::postgres::testing::TestDatabase::create_blocking()
}
