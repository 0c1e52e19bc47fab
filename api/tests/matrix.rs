//! The authorization matrix (issue 3): every endpoint × every role, own tenant and other
//! tenant, on one real `latchkey` server. Another tenant's data is never visible, not even
//! its existence: 404, never 403 and never 200. 403 only for an action on something the
//! caller may see but not change, or for an action its role never may take (creating tenants,
//! issuing tokens as an auditor, ...), whatever the target. 401 without or with a bad token.
//!
//! The world: tenants A (`alpha-corp`) and B (`bravo-corp`), each with an enrolled computer
//! answered by a simulated agent and an active session of its technician; A also has a second
//! technician with her own session, and throwaway resources for the destructive calls.
//! [`MATRIX`] lists the expected status of every call, one row per endpoint, one column per
//! caller; rows run top to bottom and the destructive ones come last. Within a row the calls
//! that must be refused run first, and must not append a single event.
//!
//! Cells where the server is wrong today are listed in [`SERVER_BUGS`]: the table holds the
//! correct status, `matrix` skips those cells and `fixed_server_bugs_stay_fixed` asserts them (and the bugs
//! found outside the table), so `server_bugs` fails until the server is fixed.

mod support;

use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use support::agent::Agent;
use support::Server;

// ---------------------------------------------------------------------------------------------
// Who calls
// ---------------------------------------------------------------------------------------------

/// A caller: no token, a well-formed token the server never issued, or one of the roles.
/// "A" and "B" are the tenants; `TechA` is a member of A only, `TechB` of B only; `AgentA`
/// is the agent of A's computer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Who {
    Anonymous,
    BadToken,
    Msp,
    AdminA,
    AuditorAll,
    AuditorA,
    TechA,
    TechB,
    AgentA,
    AgentB,
    AdminB,
    AuditorB,
}
use Who::*;

/// The columns of [`MATRIX`], in order.
const WHO: [Who; 12] = [
    Anonymous, BadToken, Msp, AdminA, AuditorAll, AuditorA, TechA, TechB, AgentA, AgentB, AdminB,
    AuditorB,
];

/// Whose data a caller must never see in any answer: B's callers nothing of A, A's nothing
/// of B. MSP admins and all-tenant auditors see both; without a token nothing is shown.
#[derive(PartialEq)]
enum Side {
    A,
    B,
    Everything,
}

impl Who {
    fn side(self) -> Side {
        match self {
            AdminA | AuditorA | TechA | AgentA => Side::A,
            TechB | AgentB | AdminB | AuditorB => Side::B,
            Anonymous | BadToken | Msp | AuditorAll => Side::Everything,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The matrix
// ---------------------------------------------------------------------------------------------

/// One endpoint called by every caller. `path` and `body` name the world's resources as
/// `{placeholders}` (see [`World::vars`]).
struct Row {
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: [u16; 12],
}

const fn row(
    method: &'static str,
    path: &'static str,
    body: Option<&'static str>,
    expect: [u16; 12],
) -> Row {
    Row {
        method,
        path,
        body,
        expect,
    }
}

const NEW_TENANT: Option<&str> = Some(r#"{"name":"charlie-corp","login_mode":"named"}"#);
const NEW_TECHNICIAN: Option<&str> = Some(r#"{"username":"cat","email":"cat@msp.example"}"#);
const EMPTY: Option<&str> = Some("{}");
/// A's current JIT policy, sent back unchanged.
const SAME_POLICY: Option<&str> = Some("{policyA}");
const NO_OVERRIDE: Option<&str> = Some(r#"{"policy":null}"#);
const CHECKOUT: Option<&str> = Some(r#"{"reason":"matrix","ticket":"T-1"}"#);
const AUDITOR_OF_A: Option<&str> =
    Some(r#"{"role":"auditor","tenant_id":"{A}","name":"aud2@alpha.example"}"#);
const TOKEN_FOR_ALF: Option<&str> = Some(r#"{"role":"technician","technician_id":"{alf}"}"#);
/// A result for request 1 of the agent's own computer, already reported: changes nothing.
const OLD_RESULT: Option<&str> = Some(
    r#"{"request_id":1,"outcome":"succeeded","verified":{"present":true,"groups":[],"password_version":null}}"#,
);
/// The enrollment token A's computer enrolled with, used up.
const USED_ENROLLMENT: Option<&str> =
    Some(r#"{"token":"{usedEnrollment}","hostname":"pc9","os":"windows"}"#);
const SHARED_MODE: Option<&str> = Some(r#"{"login_mode":"shared"}"#);
const INVENTORY: Option<&str> = Some(r#"{"group":"Administrators","members":["Administrator"]}"#);
/// An offline login for an account no computer has: refused with 404 on both agents.
const UNKNOWN_OFFLINE: Option<&str> = Some(
    r#"{"login_id":"0190f1e2-0000-7000-8000-0000000000aa","account":"msp-nobody","technician_id":null,"generation":1,"used_at":"2026-11-23T10:00:00Z","until":"2026-11-23T11:00:00Z"}"#,
);

/// A lockout of offline login the agent imposed (recorded on the agent's own computer).
const LOCKOUT: Option<&str> = Some(
    r#"{"lockout_id":"0190f1e2-0000-7000-8000-0000000000bb","account":"msp-nobody","technician_id":null,"failures":5,"locked_at":"2026-11-23T10:00:00Z","locked_until":"2026-11-23T10:15:00Z"}"#,
);

/// What every caller gets, row by row. Resources are A's unless the path says `{B}`,
/// `{bob}` or `{sBob}` (B's tenant, technician and session). `{sAlf}` is TechA's active
/// session, `{sAda}` another A technician's session, `{sRev}` a throwaway session of TechA's,
/// `{cDec}` a throwaway computer of A, `{joe}` a technician outside every tenant, `{otto}` a
/// throwaway technician of A, `{nobody}` a technician id that does not exist, `{tokenRev}` a
/// throwaway token (an auditor token of A). Columns as in [`WHO`]; `aud*` is
/// the auditor of all tenants.
#[rustfmt::skip]
const MATRIX: &[Row] = &[
    //  method    path                                                       body              none bad  msp  admA aud* audA tchA tchB agtA agtB admB audB
    // --- tenants, their settings and members ---------------------------------------------------------------------------------------------------------
    row("GET",    "/v1/tenants",                                             None,            [401, 401, 200, 200, 200, 200, 200, 200, 403, 403, 200, 200]),
    row("POST",   "/v1/tenants",                                             NEW_TENANT,      [401, 401, 201, 403, 403, 403, 403, 403, 403, 403, 403, 403]),
    row("GET",    "/v1/tenants/{A}",                                         None,            [401, 401, 200, 200, 200, 200, 200, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{B}",                                         None,            [401, 401, 200, 404, 200, 404, 404, 200, 404, 404, 200, 200]),
    row("PUT",    "/v1/tenants/{A}/policy",                                  SAME_POLICY,     [401, 401, 200, 200, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{A}/technicians",                             None,            [401, 401, 200, 200, 200, 200, 403, 404, 404, 404, 404, 404]),
    // Only an MSP admin adds a technician to a tenant; a tenant admin sees only the tenant's
    // own technicians, so anyone else (joe, in no tenant) is a 404 like an unknown id.
    row("PUT",    "/v1/tenants/{A}/technicians/{joe}",                       None,            [401, 401, 200, 404, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("PUT",    "/v1/tenants/{A}/technicians/{alf}",                       None,            [401, 401, 200, 200, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("PUT",    "/v1/tenants/{A}/technicians/{nobody}",                    None,            [401, 401, 404, 404, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/tenants/{A}/enrollment-tokens",                       EMPTY,           [401, 401, 201, 201, 403, 403, 403, 404, 404, 404, 404, 404]),
    // --- computers --------------------------------------------------------------------------------------------------------------------------------
    row("GET",    "/v1/tenants/{A}/computers",                               None,            [401, 401, 200, 200, 200, 200, 200, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{A}/computers/{cA}",                          None,            [401, 401, 200, 200, 200, 200, 200, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{B}/computers/{cA}",                          None,            [401, 401, 404, 404, 404, 404, 404, 404, 404, 404, 404, 404]),
    row("PUT",    "/v1/tenants/{A}/computers/{cA}/policy",                   NO_OVERRIDE,     [401, 401, 200, 200, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{A}/computers/{cA}/admins",                   None,            [401, 401, 200, 200, 200, 200, 403, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{A}/computers/{cA}/admins?at=2020-01-01T00:00:00Z", None,      [401, 401, 200, 200, 200, 200, 403, 404, 404, 404, 404, 404]),
    // --- account-state views ----------------------------------------------------------------------------------------------------------------------
    row("GET",    "/v1/tenants/{A}/sessions",                                None,            [401, 401, 200, 200, 200, 200, 200, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{A}/accounts",                                None,            [401, 401, 200, 200, 200, 200, 403, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{A}/standing-privilege",                      None,            [401, 401, 200, 200, 200, 200, 403, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{A}/stuck-requests",                          None,            [401, 401, 200, 200, 200, 200, 403, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/tenants/{A}/drift",                                   None,            [401, 401, 200, 200, 200, 200, 403, 404, 404, 404, 404, 404]),
    // --- technicians ------------------------------------------------------------------------------------------------------------------------------
    row("POST",   "/v1/technicians",                                         NEW_TECHNICIAN,  [401, 401, 201, 403, 403, 403, 403, 403, 403, 403, 403, 403]),
    row("GET",    "/v1/technicians",                                         None,            [401, 401, 200, 200, 200, 200, 403, 403, 403, 403, 200, 200]),
    row("GET",    "/v1/technicians/{alf}",                                   None,            [401, 401, 200, 200, 200, 200, 200, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/technicians/{ada}",                                   None,            [401, 401, 200, 200, 200, 200, 404, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/technicians/{bob}",                                   None,            [401, 401, 200, 404, 200, 404, 404, 200, 404, 404, 200, 200]),
    // --- sessions ---------------------------------------------------------------------------------------------------------------------------------
    row("GET",    "/v1/sessions",                                            None,            [401, 401, 403, 403, 403, 403, 200, 200, 403, 403, 403, 403]),
    row("GET",    "/v1/sessions/{sAlf}",                                     None,            [401, 401, 200, 200, 200, 200, 200, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/sessions/{sAda}",                                     None,            [401, 401, 200, 200, 200, 200, 404, 404, 404, 404, 404, 404]),
    row("GET",    "/v1/sessions/{sBob}",                                     None,            [401, 401, 200, 404, 200, 404, 404, 200, 404, 404, 200, 200]),
    row("POST",   "/v1/sessions/{sAlf}/credential",                          EMPTY,           [401, 401, 403, 403, 403, 403, 200, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/sessions/{sAda}/credential",                          EMPTY,           [401, 401, 403, 403, 403, 403, 404, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/sessions/{sAda}/checkin",                             EMPTY,           [401, 401, 403, 403, 403, 403, 404, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/tenants/{A}/computers/{cA}/offline-secret",           EMPTY,           [401, 401, 403, 403, 403, 403, 200, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/tenants/{A}/computers/{cA}/checkout",                 CHECKOUT,        [401, 401, 403, 403, 403, 403, 201, 404, 404, 404, 404, 404]),
    // --- tokens -----------------------------------------------------------------------------------------------------------------------------------
    row("POST",   "/v1/tokens",                                              AUDITOR_OF_A,    [401, 401, 201, 201, 403, 403, 403, 403, 403, 403, 404, 403]),
    row("POST",   "/v1/tokens",                                              TOKEN_FOR_ALF,   [401, 401, 201, 403, 403, 403, 403, 403, 403, 403, 403, 403]),
    row("GET",    "/v1/tokens",                                              None,            [401, 401, 200, 200, 200, 200, 200, 200, 403, 403, 200, 200]),
    // --- audit ------------------------------------------------------------------------------------------------------------------------------------
    row("GET",    "/v1/audit",                                               None,            [401, 401, 200, 200, 200, 200, 403, 403, 403, 403, 200, 200]),
    row("GET",    "/v1/audit?tenant_id={A}",                                 None,            [401, 401, 200, 200, 200, 200, 403, 403, 403, 403, 404, 404]),
    row("GET",    "/v1/audit?tenant_id={B}",                                 None,            [401, 401, 200, 404, 200, 404, 403, 403, 403, 403, 200, 200]),
    row("GET",    "/v1/events",                                              None,            [401, 401, 200, 200, 200, 200, 403, 403, 403, 403, 200, 200]),
    row("GET",    "/v1/verify",                                              None,            [401, 401, 200, 403, 200, 403, 403, 403, 403, 403, 403, 403]),
    row("GET",    "/v1/verify?stream=tenant-{A}",                            None,            [401, 401, 200, 200, 200, 200, 403, 403, 403, 403, 404, 404]),
    row("GET",    "/v1/verify?stream=computer-{cA}",                         None,            [401, 401, 200, 200, 200, 200, 403, 403, 403, 403, 404, 404]),
    row("GET",    "/v1/verify?stream=session-{sAlf}",                        None,            [401, 401, 200, 200, 200, 200, 403, 403, 403, 403, 404, 404]),
    row("GET",    "/v1/verify?stream=technician-{alf}",                      None,            [401, 401, 200, 404, 200, 404, 403, 403, 403, 403, 404, 404]),
    // --- agents (each about its own computer) ---------------------------------------------------------------------------------------------------
    row("GET",    "/v1/agent/commands",                                      None,            [401, 401, 403, 403, 403, 403, 403, 403, 200, 200, 403, 403]),
    row("GET",    "/v1/agent/feed",                                          None,            [401, 401, 403, 403, 403, 403, 403, 403, 200, 200, 403, 403]),
    row("POST",   "/v1/agent/results",                                       OLD_RESULT,      [401, 401, 403, 403, 403, 403, 403, 403, 200, 200, 403, 403]),
    row("GET",    "/v1/agent/offline-secrets",                               None,            [401, 401, 403, 403, 403, 403, 403, 403, 200, 200, 403, 403]),
    row("POST",   "/v1/agent/inventory",                                     INVENTORY,       [401, 401, 403, 403, 403, 403, 403, 403, 200, 200, 403, 403]),
    row("POST",   "/v1/agent/offline-logins",                                UNKNOWN_OFFLINE, [401, 401, 403, 403, 403, 403, 403, 403, 404, 404, 403, 403]),
    row("POST",   "/v1/agent/offline-lockouts",                              LOCKOUT,         [401, 401, 403, 403, 403, 403, 403, 403, 200, 200, 403, 403]),
    row("POST",   "/v1/agent/enroll",                                        USED_ENROLLMENT, [410, 410, 410, 410, 410, 410, 410, 410, 410, 410, 410, 410]),
    // --- destructive, last --------------------------------------------------------------------------------------------------------------------------
    row("DELETE", "/v1/tenants/{A}/technicians/{joe}",                       None,            [401, 401, 200, 200, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/sessions/{sAlf}/checkin",                             EMPTY,           [401, 401, 403, 403, 403, 403, 200, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/sessions/{sRev}/revoke",                              EMPTY,           [401, 401, 200, 200, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/tenants/{A}/computers/{cDec}/decommission",           EMPTY,           [401, 401, 200, 200, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/technicians/{otto}/offboard",                         EMPTY,           [401, 401, 200, 403, 403, 403, 404, 404, 404, 404, 404, 404]),
    row("POST",   "/v1/tokens/{tokenRev}/rotate",                            EMPTY,           [401, 401, 200, 200, 403, 403, 404, 404, 403, 403, 404, 404]),
    row("DELETE", "/v1/tokens/{tokenRev}",                                   None,            [401, 401, 204, 403, 403, 403, 403, 403, 403, 403, 403, 403]),
    row("PUT",    "/v1/tenants/{A}/login-mode",                              SHARED_MODE,     [401, 401, 200, 200, 403, 403, 403, 404, 404, 404, 404, 404]),
    // Cross-tenant: bob works for B only. A's admin neither removes nor adds him, nor learns
    // of him or of B; the MSP admin's PUT adds him to A, so it comes last of all.
    row("DELETE", "/v1/tenants/{A}/technicians/{bob}",                       None,            [401, 401, 200, 404, 403, 403, 403, 404, 404, 404, 404, 404]),
    row("PUT",    "/v1/tenants/{A}/technicians/{bob}",                       None,            [401, 401, 200, 404, 403, 403, 403, 404, 404, 404, 404, 404]),
];

/// The expected status of one cell of [`MATRIX`].
fn expected(row: &Row, who: Who) -> u16 {
    let column = WHO.iter().position(|w| *w == who).expect("a column");
    row.expect[column]
}

/// Cells of [`MATRIX`] the server gets wrong today: (method, path, caller, what happens now).
/// The table holds the correct status; `matrix` skips these cells, `server_bugs` asserts them.
const SERVER_BUGS: &[(&str, &str, Who, &str)] = &[];

/// Lists must show what the caller may see, not only hide the rest: (path, what a 200 answer
/// to A's side, the MSP admin and the all-tenant auditor contains, what one to B's side
/// contains).
const SHOWS: &[(&str, &str, &str)] = &[
    ("/v1/tenants", "{A}", "{B}"),
    ("/v1/technicians", "{alf}", "{bob}"),
    ("/v1/sessions", "{sAlf}", "{sBob}"),
    ("/v1/audit", "{A}", "{B}"),
    ("/v1/events", "{A}", "{B}"),
    ("/v1/tenants/{A}/sessions", "{sAlf}", ""),
    ("/v1/tenants/{A}/computers", "{cA}", ""),
    ("/v1/tenants/{A}/technicians", "{alf}", ""),
    ("/v1/tokens", "alpha.example", "bravo.example"),
];

fn is_server_bug(row: &Row, who: Who) -> bool {
    SERVER_BUGS
        .iter()
        .any(|(m, p, w, _)| *m == row.method && *p == row.path && *w == who)
}

// ---------------------------------------------------------------------------------------------
// The world
// ---------------------------------------------------------------------------------------------

struct World {
    server: Server,
    _data: tempfile::TempDir,
    tokens: BTreeMap<Who, String>,
    /// `{placeholder}` → value, for paths and bodies.
    vars: Vec<(&'static str, String)>,
    /// What B's callers must never see (A's name, ids, accounts), and the reverse.
    markers_a: Vec<String>,
    markers_b: Vec<String>,
    /// What TechA must never see: the other A technician, her session and account.
    hidden_from_tech_a: Vec<String>,
}

/// Retries `f` until it returns `Some`, for up to 10 s (the read models trail the streams).
fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    support::eventually(what, Duration::from_secs(10), f)
}

fn text(value: &Value, key: &str) -> String {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("no {key} in {value}"))
        .to_owned()
}

impl World {
    fn msp(&self) -> &str {
        &self.tokens[&Msp]
    }

    fn var(&self, name: &str) -> &str {
        &self
            .vars
            .iter()
            .find(|(k, _)| *k == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
            .1
    }

    /// `text` with every `{placeholder}` replaced (the policy last: it contains braces).
    fn fill(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for (name, value) in &self.vars {
            if *name != "policyA" {
                out = out.replace(&format!("{{{name}}}"), value);
            }
        }
        out.replace("{policyA}", self.var("policyA"))
    }

    fn token(&self, who: Who) -> Option<String> {
        match who {
            Anonymous => None,
            BadToken => Some(latchkey_server_stores::tokens::generate_token().1),
            _ => Some(self.tokens[&who].clone()),
        }
    }

    /// Sends a request; returns the status, the content type and the body.
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Answer {
        let (status, content_type, body) = self.server.request(method, path, token, body);
        Answer {
            status,
            content_type,
            body,
        }
    }

    fn ok(&self, method: &str, path: &str, token: &str, body: Value) -> Value {
        let body = (method != "GET").then(|| body.to_string());
        let answer = self.call(method, path, Some(token), body.as_deref());
        assert!(
            (200..300).contains(&answer.status),
            "{method} {path}: {} {}",
            answer.status,
            answer.body
        );
        answer.json()
    }

    /// Issues an API token (retrying while the read models catch up with what it names).
    fn issue(&self, issuer: &str, body: Value) -> String {
        eventually(&format!("a token for {body}"), || {
            let answer = self.call("POST", "/v1/tokens", Some(issuer), Some(&body.to_string()));
            (answer.status == 201).then(|| text(&answer.json(), "token"))
        })
    }

    fn session_status(&self, session: &str) -> String {
        let view = self.ok(
            "GET",
            &format!("/v1/sessions/{session}"),
            self.msp(),
            json!({}),
        );
        text(&view, "status")
    }

    /// The number of events in the log.
    fn event_count(&self) -> usize {
        let answer = self.call("GET", "/v1/events?limit=10000", Some(self.msp()), None);
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.body.lines().filter(|l| !l.trim().is_empty()).count()
    }

    /// The number of events once nothing is being appended any more (the process managers
    /// react to a command with more events shortly after it).
    fn quiet_event_count(&self) -> usize {
        let start = Instant::now();
        let mut last = self.event_count();
        loop {
            std::thread::sleep(Duration::from_millis(40));
            let now = self.event_count();
            if now == last || start.elapsed() > Duration::from_secs(5) {
                return now;
            }
            last = now;
        }
    }

    fn build() -> World {
        let data = tempfile::tempdir().unwrap();
        let admin = latchkey_server_stores::tokens::generate_token().1;
        let server = Server::start(
            data.path(),
            &[
                ("LATCHKEY_ADMIN_TOKEN", &admin),
                ("LATCHKEY_ADMIN_EMAIL", "admin@msp.example"),
                // Every row is called without and with a bad token from this one address:
                // far more failures than the limits allow (they are tested in serve.rs).
                ("LATCHKEY_AUTH_FAILURES_PER_ADDRESS", "1000000"),
                ("LATCHKEY_AUTH_FAILURES_PER_TOKEN", "1000000"),
            ],
        );
        let mut world = World {
            server,
            _data: data,
            tokens: BTreeMap::from([(Msp, admin.clone())]),
            vars: Vec::new(),
            markers_a: Vec::new(),
            markers_b: Vec::new(),
            hidden_from_tech_a: Vec::new(),
        };
        let w = &world;
        let tenant = |name: &str| {
            let body = json!({"name": name, "login_mode": "named"});
            text(&w.ok("POST", "/v1/tenants", &admin, body), "tenant_id")
        };
        let (a, b) = (tenant("alpha-corp"), tenant("bravo-corp"));
        let technician = |username: &str, email: &str, tenant: Option<&str>| {
            let body = json!({"username": username, "email": email});
            let id = text(
                &w.ok("POST", "/v1/technicians", &admin, body),
                "technician_id",
            );
            if let Some(tenant) = tenant {
                let path = format!("/v1/tenants/{tenant}/technicians/{id}");
                w.ok("PUT", &path, &admin, json!({}));
            }
            id
        };
        let alf = technician("alf", "alf@alpha.example", Some(&a));
        let ada = technician("ada", "ada@alpha.example", Some(&a));
        let otto = technician("otto", "otto@alpha.example", Some(&a));
        let joe = technician("joe", "joe@alpha.example", None);
        let bob = technician("bob", "bob@bravo.example", Some(&b));

        let person = |role: &str, tenant: Option<&str>, name: &str| {
            w.issue(
                &admin,
                json!({"role": role, "tenant_id": tenant, "name": name}),
            )
        };
        let technician_token =
            |id: &str| w.issue(&admin, json!({"role": "technician", "technician_id": id}));
        let mut tokens = BTreeMap::from([
            (Msp, admin.clone()),
            (
                AdminA,
                person("tenant_admin", Some(&a), "admin@alpha.example"),
            ),
            (AuditorAll, person("auditor", None, "audit@msp.example")),
            (AuditorA, person("auditor", Some(&a), "audit@alpha.example")),
            (
                AdminB,
                person("tenant_admin", Some(&b), "admin@bravo.example"),
            ),
            (AuditorB, person("auditor", Some(&b), "audit@bravo.example")),
            (TechA, technician_token(&alf)),
            (TechB, technician_token(&bob)),
        ]);
        let ada_token = technician_token(&ada);
        let doomed = person("auditor", Some(&a), "gone@alpha.example");
        let token_rev = doomed[3..35].to_owned();

        let enrollment = |tenant: &str| {
            let path = format!("/v1/tenants/{tenant}/enrollment-tokens");
            text(&w.ok("POST", &path, &admin, json!({})), "token")
        };
        let used_enrollment = enrollment(&a);
        let mut agent_a = Agent::enroll(&w.server, &used_enrollment, "alpha-pc1");
        let c_dec = Agent::enroll(&w.server, &enrollment(&a), "alpha-pc2").computer_id;
        let mut agent_b = Agent::enroll(&w.server, &enrollment(&b), "bravo-pc1");
        let (c_a, c_b) = (agent_a.computer_id.clone(), agent_b.computer_id.clone());
        tokens.insert(AgentA, agent_a.token.clone());
        tokens.insert(AgentB, agent_b.token.clone());

        let check_out = |token: &str, tenant: &str, computer: &str| {
            let path = format!("/v1/tenants/{tenant}/computers/{computer}/checkout");
            let session = w.ok("POST", &path, token, json!({"reason": "setting up"}));
            text(&session, "session_id")
        };
        let s_alf = check_out(&tokens[&TechA], &a, &c_a);
        let s_ada = check_out(&ada_token, &a, &c_a);
        let s_rev = check_out(&tokens[&TechA], &a, &c_a);
        let s_bob = check_out(&tokens[&TechB], &b, &c_b);
        let active =
            |sessions: &[&String]| sessions.iter().all(|s| w.session_status(s) == "active");
        agent_a.until(&w.server, 100, || active(&[&s_alf, &s_ada, &s_rev]));
        agent_a.drain(&w.server);
        agent_b.until(&w.server, 100, || active(&[&s_bob]));
        agent_b.drain(&w.server);

        // The read models have caught up: every session is listed as active.
        for (tenant, count) in [(&a, 3), (&b, 1)] {
            eventually("the sessions in the read models", || {
                let path = format!("/v1/tenants/{tenant}/sessions?open=true");
                let listed = w.ok("GET", &path, &admin, json!({}));
                let rows = listed["sessions"].as_array().unwrap();
                (rows.len() == count && rows.iter().all(|r| r["status"] == "active")).then_some(())
            });
        }
        let policy = w.ok("GET", &format!("/v1/tenants/{a}"), &admin, json!({}))["policy"].clone();
        assert!(policy.is_object(), "{policy}");

        world.markers_a = [
            "alpha-corp",
            "alpha.example",
            "alpha-pc",
            &a,
            &c_a,
            &c_dec,
            &alf,
            &ada,
            &otto,
            &joe,
            &s_alf,
            &s_ada,
            &s_rev,
            "msp-alf",
            "msp-ada",
        ]
        .map(str::to_owned)
        .to_vec();
        world.markers_b = [
            "bravo-corp",
            "bravo.example",
            "bravo-pc",
            &b,
            &c_b,
            &bob,
            &s_bob,
            "msp-bob",
        ]
        .map(str::to_owned)
        .to_vec();
        world.hidden_from_tech_a = vec![ada.clone(), s_ada.clone(), "msp-ada".into()];
        world.tokens = tokens;
        world.vars = vec![
            ("A", a),
            ("B", b),
            ("cA", c_a),
            ("cB", c_b),
            ("cDec", c_dec),
            ("alf", alf),
            ("ada", ada),
            ("otto", otto),
            ("joe", joe),
            ("bob", bob),
            ("sAlf", s_alf),
            ("sAda", s_ada),
            ("sRev", s_rev),
            ("sBob", s_bob),
            ("nobody", "0190f1e2-0000-7000-8000-0000000000ff".to_owned()),
            ("tokenRev", token_rev),
            ("usedEnrollment", used_enrollment),
            ("policyA", policy.to_string()),
        ];
        world
    }

    /// Calls one cell; returns what went wrong, if anything.
    fn check_cell(&self, row: &Row, who: Who) -> Vec<String> {
        let path = self.fill(row.path);
        let body = row.body.map(|b| self.fill(b));
        let want = expected(row, who);
        let token = self.token(who);
        let answer = self.call(row.method, &path, token.as_deref(), body.as_deref());
        let cell = format!("{} {} as {who:?}", row.method, row.path);
        let mut wrong = Vec::new();
        if answer.status != want {
            wrong.push(format!(
                "{cell}: expected {want}, got {}: {}",
                answer.status,
                short(&answer.body)
            ));
        }
        if answer.status >= 400 {
            let problem = answer.json();
            if answer.content_type != "application/problem+json"
                || problem["status"] != answer.status
                || !problem["detail"].is_string()
            {
                wrong.push(format!(
                    "{cell}: {} is not a problem document ({}): {}",
                    answer.status,
                    answer.content_type,
                    short(&answer.body)
                ));
            }
        }
        let forbidden: Vec<&String> = match who.side() {
            Side::A => self.markers_b.iter().collect(),
            Side::B => self.markers_a.iter().collect(),
            Side::Everything => Vec::new(),
        };
        let extra: Vec<&String> = if who == TechA {
            self.hidden_from_tech_a.iter().collect()
        } else {
            Vec::new()
        };
        if let Some((_, a, b)) = SHOWS
            .iter()
            .find(|(p, _, _)| *p == row.path && row.method == "GET")
        {
            let shown = if who.side() == Side::B { b } else { a };
            if (200..300).contains(&want) && !answer.body.contains(&self.fill(shown)) {
                wrong.push(format!(
                    "{cell}: the answer does not show {shown}: {}",
                    short(&answer.body)
                ));
            }
        }
        let lower = answer.body.to_lowercase();
        for marker in forbidden.into_iter().chain(extra) {
            if lower.contains(&marker.to_lowercase()) {
                wrong.push(format!(
                    "{cell}: the answer ({}) shows {marker:?}, which this caller must not see: {}",
                    answer.status,
                    short(&answer.body)
                ));
            }
        }
        wrong
    }

    /// Runs the cells of `row` that `include` selects: first those that must be refused (and
    /// must not append an event), then the rest.
    fn run_row(&self, row: &Row, include: impl Fn(Who) -> bool) -> Vec<String> {
        let mut cells: Vec<Who> = WHO.into_iter().filter(|w| include(*w)).collect();
        // The MSP admin's successful call last: it may change what the others may see (a
        // technician it removes from A is out of A's admin's reach after it).
        cells.sort_by_key(|w| ((200..300).contains(&expected(row, *w)), *w == Msp));
        let refused = cells
            .iter()
            .filter(|w| !(200..300).contains(&expected(row, **w)))
            .count();
        let mut wrong = Vec::new();
        let before = (refused > 0).then(|| self.quiet_event_count());
        for (i, who) in cells.iter().enumerate() {
            wrong.extend(self.check_cell(row, *who));
            if i + 1 == refused {
                let after = self.event_count();
                if Some(after) != before {
                    wrong.push(format!(
                        "{} {}: refused calls appended events ({before:?} → {after})",
                        row.method, row.path
                    ));
                }
            }
        }
        wrong
    }
}

struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn short(body: &str) -> String {
    let mut out: String = body.chars().take(300).collect();
    if out.len() < body.len() {
        out.push('…');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

#[test]
fn matrix() {
    let world = World::build();
    let mut wrong = Vec::new();
    let mut calls = 0;
    for row in MATRIX {
        calls += WHO.iter().filter(|w| !is_server_bug(row, **w)).count();
        wrong.extend(world.run_row(row, |who| !is_server_bug(row, who)));
    }
    assert!(
        wrong.is_empty(),
        "{} of {calls} cells are wrong:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

/// Every route of the four `routes` functions has a row in [`MATRIX`].
#[test]
fn every_route_is_in_the_matrix() {
    let normal = |path: &str| -> String {
        let path = path.split('?').next().unwrap();
        path.split('/')
            .map(|s| if s.starts_with('{') { "{}" } else { s })
            .collect::<Vec<_>>()
            .join("/")
    };
    let covered: Vec<(String, String)> = MATRIX
        .iter()
        .map(|r| (r.method.to_owned(), normal(r.path)))
        .collect();
    // The OpenAPI document is generated from the table that registers the routes.
    let document = latchkey_api::http::openapi::document();
    let mut missing = Vec::new();
    let mut found = 0;
    for (path, methods) in document["paths"].as_object().unwrap() {
        for method in methods.as_object().unwrap().keys() {
            found += 1;
            let key = (method.to_uppercase(), normal(path));
            if !covered.contains(&key) {
                missing.push(format!("{} {}", key.0, key.1));
            }
        }
    }
    assert!(found >= 30, "read only {found} routes: has routes() moved?");
    assert!(
        missing.is_empty(),
        "routes without a matrix row: {missing:?}"
    );
}

/// A bad request: method, path, caller's token, body, the status and the field named.
type BadRequest<'a> = (
    &'a str,
    &'a str,
    &'a str,
    Option<&'a str>,
    u16,
    Option<&'a str>,
);

/// Bad input: a 4xx problem naming the field, and nothing changes.
#[test]
fn bad_input_changes_nothing() {
    let w = World::build();
    let (msp, alf) = (w.tokens[&Msp].as_str(), w.tokens[&TechA].as_str());
    let (agent, auditor) = (w.tokens[&AgentA].as_str(), w.tokens[&AuditorA].as_str());
    let snapshot = || {
        let tenants = w.ok("GET", "/v1/tenants", msp, json!({}));
        let tenant = w.ok("GET", &w.fill("/v1/tenants/{A}"), msp, json!({}));
        let technicians = w.ok("GET", "/v1/technicians", msp, json!({}));
        let sessions = w.ok("GET", "/v1/sessions", alf, json!({}));
        (
            w.quiet_event_count(),
            tenants,
            tenant,
            technicians,
            sessions,
        )
    };
    let before = snapshot();
    let huge = format!(
        r#"{{"name":"delta-corp","login_mode":"named","policy":"{}"}}"#,
        "x".repeat(70_000)
    );
    let mut bad_policy: Value = serde_json::from_str(w.var("policyA")).unwrap();
    bad_policy["max_session_minutes"] = json!("long");
    let bad_policy = bad_policy.to_string();
    let mut bad_actions: Value = serde_json::from_str(w.var("policyA")).unwrap();
    bad_actions["post_session_actions"] =
        json!({"end_logons": "yes", "clear_sudo_credentials": true});
    let bad_actions = bad_actions.to_string();
    let mut unknown_action: Value = serde_json::from_str(w.var("policyA")).unwrap();
    unknown_action["post_session_actions"] =
        json!({"end_logons": true, "clear_sudo_credentials": true, "reboot": true});
    let unknown_action = unknown_action.to_string();
    let mut reuse_and_delete: Value = serde_json::from_str(w.var("policyA")).unwrap();
    reuse_and_delete["reuse_existing_account"] = json!(true);
    reuse_and_delete["on_check_in"] = json!("delete_account");
    let nested_reuse_and_delete = json!({ "policy": reuse_and_delete }).to_string();
    let reuse_and_delete = reuse_and_delete.to_string();
    // (method, path, caller, body, status, field)
    #[rustfmt::skip]
    let cases: Vec<BadRequest> = vec![
        // Malformed JSON, unknown fields, wrong types, values our types refuse.
        ("POST", "/v1/tenants", msp, Some(r#"{"name":"delta-corp","login_mode":"#), 400, None),
        ("POST", "/v1/tenants", msp, Some(r#"{"name":"delta-corp","login_mode":"named"} x"#), 400, None),
        ("POST", "/v1/tenants", msp, Some(r#"{"name":"delta-corp","login_mode":"named","owner":"x"}"#), 400, Some("owner")),
        ("POST", "/v1/tenants", msp, Some(r#"{"name":"Delta Corp","login_mode":"named"}"#), 400, Some("name")),
        ("POST", "/v1/tenants", msp, Some(r#"{"name":"delta-corp"}"#), 400, Some("login_mode")),
        ("POST", "/v1/technicians", msp, Some(r#"{"username":"dan","email":"dan@msp.example","admin":true}"#), 400, Some("admin")),
        ("POST", "/v1/technicians", msp, Some(r#"{"username":7,"email":"dan@msp.example"}"#), 400, Some("username")),
        ("PUT", "/v1/tenants/{A}/login-mode", msp, Some(r#"{"login_mode":5}"#), 400, Some("login_mode")),
        ("PUT", "/v1/tenants/{A}/login-mode", msp, Some(r#"{"login_mode":"shared","extra":1}"#), 400, Some("extra")),
        ("PUT", "/v1/tenants/{A}/policy", msp, Some(&bad_policy), 400, Some("max_session_minutes")),
        ("PUT", "/v1/tenants/{A}/policy", msp, Some(&bad_actions), 400, Some("post_session_actions.end_logons")),
        ("PUT", "/v1/tenants/{A}/policy", msp, Some(&unknown_action), 400, Some("post_session_actions.reboot")),
        ("PUT", "/v1/tenants/{A}/computers/{cA}/policy", msp, Some(r#"{"policy":7}"#), 400, Some("policy")),
        // A rule across two fields names the field it refuses.
        ("PUT", "/v1/tenants/{A}/policy", msp, Some(&reuse_and_delete), 400, Some("reuse_existing_account")),
        ("PUT", "/v1/tenants/{A}/computers/{cA}/policy", msp, Some(&nested_reuse_and_delete), 400, Some("policy.reuse_existing_account")),
        ("POST", "/v1/tenants/{A}/enrollment-tokens", msp, Some(r#"{"expires_in_minutes":"soon"}"#), 400, Some("expires_in_minutes")),
        ("POST", "/v1/tenants/{A}/enrollment-tokens", msp, Some(r#"{"expires_in_minutes":0}"#), 422, Some("expires_in_minutes")),
        ("POST", "/v1/tenants/{A}/computers/{cA}/checkout", alf, Some(r#"{"duration_minutes":"ten"}"#), 400, Some("duration_minutes")),
        ("POST", "/v1/tenants/{A}/computers/{cA}/checkout", alf, Some(r#"{"reason":"x","priority":1}"#), 400, Some("priority")),
        // Longer than the policy allows (A's maximum is under 7 days): refused, not shortened.
        ("POST", "/v1/tenants/{A}/computers/{cA}/checkout", alf, Some(r#"{"duration_minutes":10080}"#), 422, Some("duration_minutes")),
        ("POST", "/v1/tokens", msp, Some(r#"{"role":"root","name":"x@msp.example"}"#), 400, Some("role")),
        ("POST", "/v1/tokens", msp, Some(r#"{"role":"auditor","tenant_id":"nope","name":"x@msp.example"}"#), 400, Some("tenant_id")),
        ("POST", "/v1/tokens", msp, Some(r#"{"role":"auditor","name":"x@msp.example","expires_in":999999999}"#), 422, Some("expires_in")),
        ("POST", "/v1/tokens", msp, Some(r#"{"role":"auditor","name":"x@msp.example","expires_in":"soon"}"#), 400, Some("expires_in")),
        ("POST", "/v1/tokens/{tokenRev}/rotate", msp, Some(r#"{"expires_in":0}"#), 422, Some("expires_in")),
        ("POST", "/v1/tokens/{tokenRev}/rotate", msp, Some(r#"{"ttl":5}"#), 400, Some("ttl")),
        ("GET", "/v1/tokens?role=root", msp, None, 400, Some("role")),
        ("GET", "/v1/tokens?limit=lots", msp, None, 400, Some("limit")),
        // Taken names: 409 naming the field (e-mail whatever its case).
        ("POST", "/v1/technicians", msp, Some(r#"{"username":"alf","email":"alfred@msp.example"}"#), 409, Some("username")),
        ("POST", "/v1/technicians", msp, Some(r#"{"username":"alfred","email":"ALF@Alpha.example"}"#), 409, Some("email")),
        ("POST", "/v1/agent/enroll", msp, Some(r#"{"token":"lk_x","hostname":"pc 1","os":"windows"}"#), 400, Some("hostname")),
        // Malformed ids in the path.
        ("GET", "/v1/tenants/not-a-uuid", msp, None, 400, Some("tenant_id")),
        ("PUT", "/v1/tenants/not-a-uuid/policy", msp, Some("{policyA}"), 400, Some("tenant_id")),
        ("GET", "/v1/tenants/{A}/computers/pc-1", msp, None, 400, Some("computer_id")),
        ("POST", "/v1/tenants/{A}/computers/pc-1/decommission", msp, Some("{}"), 400, Some("computer_id")),
        ("PUT", "/v1/tenants/{A}/technicians/bob", msp, None, 400, Some("technician_id")),
        ("GET", "/v1/technicians/bob", msp, None, 400, Some("technician_id")),
        ("GET", "/v1/sessions/42", msp, None, 400, Some("session_id")),
        ("POST", "/v1/sessions/42/checkin", alf, Some("{}"), 400, Some("session_id")),
        ("POST", "/v1/sessions/42/revoke", msp, Some("{}"), 400, Some("session_id")),
        ("DELETE", "/v1/tokens/42", msp, None, 400, Some("token_id")),
        ("POST", "/v1/tokens/42/rotate", msp, Some("{}"), 400, Some("token_id")),
        // Query strings: bad values, unknown and repeated parameters.
        ("GET", "/v1/audit?cursor=garbage", msp, None, 400, Some("cursor")),
        ("GET", "/v1/audit?cursor=1.2", auditor, None, 400, Some("cursor")),
        ("GET", "/v1/audit?tenant=x", msp, None, 400, Some("tenant")),
        ("GET", "/v1/audit?tenant_id=x", msp, None, 400, Some("tenant_id")),
        ("GET", "/v1/audit?limit=1&limit=2", msp, None, 400, Some("limit")),
        ("GET", "/v1/audit?from=yesterday", msp, None, 400, Some("from")),
        ("GET", "/v1/audit?from=2030-01-01T00:00:00Z&to=2020-01-01T00:00:00Z", msp, None, 400, Some("to")),
        ("GET", "/v1/events?since=1", msp, None, 400, Some("since")),
        ("GET", "/v1/events?after=x", msp, None, 400, Some("after")),
        ("GET", "/v1/events?limit=-1", msp, None, 400, Some("limit")),
        ("GET", "/v1/events?follow=maybe", msp, None, 400, Some("follow")),
        ("GET", "/v1/verify?stream=tenant-{A}&deep=1", msp, None, 400, Some("deep")),
        ("GET", "/v1/tenants/{A}/sessions?status=open", msp, None, 400, Some("status")),
        ("GET", "/v1/tenants/{A}/sessions?technician_id=alf", msp, None, 400, Some("technician_id")),
        ("GET", "/v1/sessions?open=yes", alf, None, 400, Some("open")),
        ("GET", "/v1/agent/commands?timeout=5", agent, None, 400, Some("timeout")),
        ("GET", "/v1/agent/commands?wait=600", agent, None, 400, Some("wait")),
        ("GET", "/v1/tenants/{A}/computers/{cA}/admins?at=yesterday", msp, None, 400, Some("at")),
        ("GET", "/v1/tenants/{A}/computers/{cA}/admins?at=2026-13-01T00:00:00Z", auditor, None, 400, Some("at")),
        ("GET", "/v1/tenants/{A}/computers/{cA}/admins?when=now", msp, None, 400, Some("when")),
    ];
    let mut wrong = Vec::new();
    for (method, path, token, body, status, field) in cases {
        let path = w.fill(path);
        let body = body.map(|b| w.fill(b));
        let answer = w.call(method, &path, Some(token), body.as_deref());
        let problem = answer.json();
        let case = format!("{method} {path} {}", short(body.as_deref().unwrap_or("")));
        if answer.status != status
            || answer.content_type != "application/problem+json"
            || problem["status"] != status
            || field.is_some_and(|f| problem["field"] != f)
        {
            wrong.push(format!(
                "{case}: expected {status} naming {field:?}, got {} ({}): {}",
                answer.status,
                answer.content_type,
                short(&answer.body)
            ));
        }
    }
    // Oversized bodies (413) and another media type (415), sent by hand.
    for path in ["/v1/tenants", "/v1/tenants/{A}/enrollment-tokens"] {
        let path = w.fill(path);
        let (status, body) = raw(
            &w.server.addr,
            "POST",
            &path,
            msp,
            "application/json",
            huge.as_bytes(),
        );
        let problem: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if status != 413 || problem["type"] != "urn:latchkey:problem:too-large" {
            wrong.push(format!(
                "POST {path} with 70 kB: expected 413, got {status}: {}",
                short(&body)
            ));
        }
        let (status, body) = raw(&w.server.addr, "POST", &path, msp, "text/plain", b"{}");
        if status != 415 {
            wrong.push(format!(
                "POST {path} as text/plain: expected 415, got {status}: {}",
                short(&body)
            ));
        }
    }
    let after = snapshot();
    assert!(
        wrong.is_empty(),
        "{} bad requests answered wrongly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert_eq!(before.0, after.0, "bad requests appended events");
    assert_eq!(before.1, after.1, "bad requests changed the tenant list");
    assert_eq!(before.2, after.2, "bad requests changed tenant A");
    assert_eq!(before.3, after.3, "bad requests changed the technicians");
    assert_eq!(
        before.4, after.4,
        "bad requests changed the technician's sessions"
    );
}

/// Sends one request by hand (any media type, any size), tolerating a server that answers
/// before reading the whole body and closes.
fn raw(
    addr: &str,
    method: &str,
    path: &str,
    token: &str,
    media: &str,
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("server accepts connections");
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {media}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes());
    let _ = stream.write_all(body);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_owned())
}

/// The server bugs this matrix found, asserting the correct behaviour: fails until fixed.
#[test]
fn fixed_server_bugs_stay_fixed() {
    let w = World::build();
    let mut wrong = Vec::new();

    // 1. The cells of SERVER_BUGS.
    for row in MATRIX {
        if WHO.iter().any(|who| is_server_bug(row, *who)) {
            wrong.extend(w.run_row(row, |who| is_server_bug(row, who)));
        }
    }

    // 2. POST /v1/tokens tells whether a technician id exists to callers who may not see that
    //    technician: the technician is looked up (404 if unknown) before the caller's right to
    //    issue the token is checked (403). The answer must not depend on it.
    let nobody = "0190f1e2-0000-7000-8000-000000000001";
    for (who, invisible) in [
        (AdminA, "bob"),
        (AuditorA, "bob"),
        (TechA, "bob"),
        (AgentA, "bob"),
        (AdminB, "alf"),
        (AuditorB, "alf"),
        (TechB, "alf"),
        (AgentB, "alf"),
    ] {
        let token = w.token(who).unwrap();
        let ask = |id: &str| {
            let body = json!({"role": "technician", "technician_id": id}).to_string();
            w.call("POST", "/v1/tokens", Some(&token), Some(&body))
                .status
        };
        let (existing, unknown) = (ask(w.var(invisible)), ask(nobody));
        if existing != unknown {
            wrong.push(format!(
                "POST /v1/tokens {{role: technician, technician_id: <{invisible}>}} as {who:?}: \
                 {existing} for an existing technician it cannot see, {unknown} for an id that \
                 does not exist (an existence oracle)"
            ));
        }
    }

    // 3. A wrong type inside the agent's result (an internally tagged enum) is a 400 that
    //    does not name the field.
    let report = r#"{"request_id":"one","outcome":"succeeded","verified":{"present":true,"groups":[],"password_version":null}}"#;
    let answer = w.call(
        "POST",
        "/v1/agent/results",
        Some(&w.tokens[&AgentA]),
        Some(report),
    );
    if answer.status != 400 || answer.json()["field"] != "request_id" {
        wrong.push(format!(
            "POST /v1/agent/results with \"request_id\":\"one\" as AgentA: expected 400 naming \
             request_id, got {}: {}",
            answer.status,
            short(&answer.body)
        ));
    }

    // 4. A tenant admin mints a technician token that works in other tenants: technician
    //    tokens are not scoped to a tenant, so A's admin can act as a technician shared with B
    //    in B (check out B's computers, reveal B's passwords).
    let msp = w.msp();
    let body = json!({"username": "sam", "email": "sam@msp.example"});
    let sam = text(&w.ok("POST", "/v1/technicians", msp, body), "technician_id");
    for tenant in ["{A}", "{B}"] {
        let path = w.fill(&format!("/v1/tenants/{tenant}/technicians/{sam}"));
        w.ok("PUT", &path, msp, json!({}));
    }
    for tenant in ["{A}", "{B}"] {
        eventually("sam in the read models", || {
            let path = w.fill(&format!("/v1/tenants/{tenant}/technicians"));
            let listed = w.ok("GET", &path, msp, json!({}));
            listed.to_string().contains(&sam).then_some(())
        });
    }
    let admin_a = w.tokens[&AdminA].clone();
    let minted = eventually("A's admin's answer", || {
        let body = json!({"role": "technician", "technician_id": sam}).to_string();
        let answer = w.call("POST", "/v1/tokens", Some(&admin_a), Some(&body));
        (answer.status != 404).then_some(answer)
    });
    if minted.status == 201 {
        let token = text(&minted.json(), "token");
        let tenant_b = w.call("GET", &w.fill("/v1/tenants/{B}"), Some(&token), None);
        let checkout = w.call(
            "POST",
            &w.fill("/v1/tenants/{B}/computers/{cB}/checkout"),
            Some(&token),
            Some(r#"{"reason":"escalation"}"#),
        );
        if tenant_b.status != 404 || checkout.status != 404 {
            wrong.push(format!(
                "POST /v1/tokens {{role: technician}} as AdminA for a technician shared with B: \
                 201, and the token it mints reaches tenant B (GET /v1/tenants/{{B}} → {}, \
                 check-out of B's computer → {}); expected the token refused (403) or \
                 confined to A (404 in B)",
                tenant_b.status, checkout.status
            ));
        }
    }

    // 5. A tenant admin reached any technician by id through the membership endpoints: a
    //    technician of B only, or of no tenant, was added to or removed from A, the answer
    //    listed the technician's other tenants, and an unknown id answered differently (an
    //    existence oracle). A shared technician's answers must show A's admin A only.
    let admin_a = w.tokens[&AdminA].clone();
    for (method, path) in [
        (
            "PUT",
            w.fill(&format!("/v1/tenants/{{A}}/technicians/{sam}")),
        ),
        ("GET", format!("/v1/technicians/{sam}")),
    ] {
        let answer = w.call(method, &path, Some(&admin_a), None);
        if answer.status != 200 || answer.body.contains(w.var("B")) {
            wrong.push(format!(
                "{method} {path} as AdminA for a technician of A and B: expected 200 showing \
                 tenant A only, got {}: {}",
                answer.status,
                short(&answer.body)
            ));
        }
    }
    for (who, tenant, invisible) in [
        (AdminA, "{A}", "bob"),
        (AdminA, "{A}", "joe"),
        (AdminB, "{B}", "alf"),
    ] {
        let token = w.token(who).unwrap();
        for method in ["DELETE", "PUT"] {
            let ask = |id: &str| {
                let path = w.fill(&format!("/v1/tenants/{tenant}/technicians/{id}"));
                let answer = w.call(method, &path, Some(&token), None);
                (answer.status, answer.body)
            };
            let (existing, unknown) = (ask(w.var(invisible)), ask(w.var("nobody")));
            if existing != unknown {
                wrong.push(format!(
                    "{method} /v1/tenants/{tenant}/technicians/<{invisible}> as {who:?}: {} {} \
                     for a technician it may not see, {} {} for an id that does not exist",
                    existing.0,
                    short(&existing.1),
                    unknown.0,
                    short(&unknown.1)
                ));
            }
        }
    }

    let notes: Vec<String> = SERVER_BUGS
        .iter()
        .map(|(method, path, who, now)| format!("  {method} {path} as {who:?}: {now}"))
        .collect();
    assert!(
        wrong.is_empty(),
        "{} server bugs:\n{}\n(the matrix cells among them, SERVER_BUGS:\n{})",
        wrong.len(),
        wrong.join("\n"),
        notes.join("\n")
    );
}
