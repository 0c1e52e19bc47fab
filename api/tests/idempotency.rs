//! `Idempotency-Key` is exactly-once across crashes: a server killed after a keyed request's
//! events are durable and before its answer is stored (the window where a claim used to stay
//! "in progress" forever) answers the retry after its restart with the entity the first run
//! created, writes nothing twice, and refuses the key with another body. The crash is a real
//! `abort()` of the real binary (`LATCHKEY_TEST_CRASH_AT`), as `kill -9` would be.

mod support;

use serde_json::{json, Value};
use std::io::Read;
use std::time::Duration;
use support::Server;

const CRASH: (&str, &str) = ("LATCHKEY_TEST_CRASH_AT", "before-answer-stored");

struct Answer {
    status: u16,
    replayed: bool,
    body: Value,
}

/// A keyed POST (PUT for the login mode); `None` if the server closed the connection without an answer.
fn keyed(server: &Server, token: &str, path: &str, key: &str, body: &Value) -> Option<Answer> {
    // The login mode is set with PUT, everything else here created with POST.
    let method = if path.ends_with("/login-mode") {
        "PUT"
    } else {
        "POST"
    };
    let body = body.to_string();
    let mut reader = server.send_with_headers(
        method,
        path,
        Some(token),
        Some(&body),
        &[("Idempotency-Key", key)],
    );
    let mut text = String::new();
    reader.read_to_string(&mut text).ok()?;
    let answer = support::Answer::parse(&text)?;
    Some(Answer {
        status: answer.status,
        replayed: answer.header("idempotent-replayed") == Some("true"),
        body: answer.json(),
    })
}

/// A data directory only its owner may use (the server refuses others).
fn private_dir(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
}

fn start(data: &std::path::Path, admin: &str, crash: bool) -> Server {
    let mut env = vec![
        ("LATCHKEY_ADMIN_TOKEN", admin),
        ("LATCHKEY_ADMIN_EMAIL", "admin@msp.example"),
    ];
    if crash {
        env.push(CRASH);
    }
    Server::start(data, &env)
}

fn get(server: &Server, token: &str, path: &str) -> Value {
    let (status, body) = server.json("GET", path, Some(token), None);
    assert_eq!(status, 200, "GET {path}: {body}");
    body
}

/// Each keyed request crashes the server inside the window once; after a restart every key
/// is answered, with what the crashed run created, and nothing exists twice.
#[test]
fn a_key_whose_request_was_cut_by_a_crash_is_answered_after_the_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    private_dir(&data);
    let admin = latchkey_server_stores::tokens::generate_token().1;

    // Set-up: nothing keyed.
    let server = start(&data, &admin, false);
    let (status, tenant) = server.json(
        "POST",
        "/v1/tenants",
        Some(&admin),
        Some(r#"{"name":"acme","login_mode":"named"}"#),
    );
    assert_eq!(status, 201, "{tenant}");
    let tenant_id = tenant["tenant_id"].as_str().unwrap().to_owned();
    server.stop();

    // (path, key, body, another valid body)
    let cases: Vec<(String, String, Value, Value)> = vec![
        (
            "/v1/tenants".into(),
            "tenant-globex".into(),
            json!({"name": "globex", "login_mode": "shared"}),
            json!({"name": "globex", "login_mode": "named"}),
        ),
        (
            "/v1/technicians".into(),
            "technician-nik".into(),
            json!({"username": "nik", "email": "nik@nikpot.com"}),
            json!({"username": "nik", "email": "nik@other.example"}),
        ),
        (
            format!("/v1/tenants/{tenant_id}/login-mode"),
            "mode-ephemeral".into(),
            json!({"login_mode": "ephemeral"}),
            json!({"login_mode": "shared"}),
        ),
    ];
    for (path, key, body, changed) in &cases {
        // The first run: its events are written, then the server dies before answering.
        let mut server = start(&data, &admin, true);
        let cut = keyed(&server, &admin, path, key, body);
        assert!(cut.is_none(), "{path}: the server answered before crashing");
        assert!(
            server.exited_within(Duration::from_secs(10)),
            "{path}: the server did not crash"
        );
        server.stop();

        let server = start(&data, &admin, false);
        let first = keyed(&server, &admin, path, key, body).expect("an answer");
        assert!(
            first.status == 200 || first.status == 201,
            "{path}: the retry after the crash answered {} {}",
            first.status,
            first.body
        );
        let again = keyed(&server, &admin, path, key, body).expect("an answer");
        assert_eq!((again.status, &again.body), (first.status, &first.body));
        assert!(again.replayed, "{path}: the stored answer is replayed");
        let refused = keyed(&server, &admin, path, key, changed).expect("an answer");
        assert_eq!(refused.status, 422, "{path}: {}", refused.body);
        assert_eq!(refused.body["field"], "Idempotency-Key");
        server.stop();
    }

    // Exactly one of everything the keyed requests created, and the mode changed once.
    let server = start(&data, &admin, false);
    let tenants = get(&server, &admin, "/v1/tenants");
    let names: Vec<&str> = tenants["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names.iter().filter(|n| **n == "globex").count(),
        1,
        "{names:?}"
    );
    let technicians = get(&server, &admin, "/v1/technicians");
    let nik = technicians["technicians"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["username"] == "nik")
        .count();
    assert_eq!(nik, 1, "{technicians}");
    let acme = get(&server, &admin, &format!("/v1/tenants/{tenant_id}"));
    assert_eq!(acme["login_mode"], "ephemeral");
    // The raw log (NDJSON): the login mode changed once.
    let (status, _, events) = server.request("GET", "/v1/events?limit=10000", Some(&admin), None);
    assert_eq!(status, 200);
    let mode_changes = events
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["event_type"] == "LoginModeChanged")
        .count();
    assert_eq!(mode_changes, 1, "{events}");
}

/// The answer a crashed run's retry gets names the entity the crashed run created: the
/// tenant made before the crash is the one the retry returns.
#[test]
fn the_retry_returns_what_the_crashed_run_created() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    private_dir(&data);
    let admin = latchkey_server_stores::tokens::generate_token().1;
    let body = json!({"name": "initech", "login_mode": "named"});
    let mut server = start(&data, &admin, true);
    assert!(keyed(&server, &admin, "/v1/tenants", "k1", &body).is_none());
    assert!(server.exited_within(Duration::from_secs(10)));
    server.stop();

    let server = start(&data, &admin, false);
    let tenants = get(&server, &admin, "/v1/tenants");
    let created: Vec<String> = tenants["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["name"] == "initech")
        .map(|t| t["tenant_id"].as_str().unwrap().to_owned())
        .collect();
    // The read models follow the log; the write is durable either way, so wait for them.
    let created = if created.is_empty() {
        let mut found = Vec::new();
        for _ in 0..100 {
            std::thread::sleep(Duration::from_millis(50));
            found = get(&server, &admin, "/v1/tenants")["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|t| t["name"] == "initech")
                .map(|t| t["tenant_id"].as_str().unwrap().to_owned())
                .collect();
            if !found.is_empty() {
                break;
            }
        }
        found
    } else {
        created
    };
    assert_eq!(created.len(), 1, "the crashed run wrote the tenant");
    let retry = keyed(&server, &admin, "/v1/tenants", "k1", &body).expect("an answer");
    assert_eq!(retry.status, 201, "{}", retry.body);
    assert_eq!(retry.body["tenant_id"], created[0].as_str());
}
