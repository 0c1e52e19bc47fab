//! Creating and reading tenants over HTTP: authentication, validation with problem bodies,
//! and invisibility of what a caller may not see.

mod support;

use support::Server;

fn admin_token() -> String {
    latchkey_server_stores::tokens::generate_token().1
}

#[test]
fn an_msp_admin_creates_a_tenant_and_reads_it_back() {
    let data = tempfile::tempdir().unwrap();
    let token = admin_token();
    let server = Server::start(data.path(), &[("LATCHKEY_ADMIN_TOKEN", &token)]);
    let (status, created) = server.json(
        "POST",
        "/v1/tenants",
        Some(&token),
        Some(r#"{"name":"customer-1","login_mode":"shared"}"#),
    );
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["name"], "customer-1");
    assert_eq!(created["login_mode"], "shared");
    assert_eq!(
        created["policy"]["admin_group"],
        serde_json::Value::Null,
        "each computer's own admin group"
    );
    let shared = created["shared_account"].as_str().unwrap();
    assert!(shared.starts_with("msp-") && shared.len() == 8, "{shared}");
    let id = created["tenant_id"].as_str().unwrap();
    let (status, read) = server.json("GET", &format!("/v1/tenants/{id}"), Some(&token), None);
    assert_eq!(status, 200);
    assert_eq!(read, created);
}

#[test]
fn requests_without_a_valid_token_are_401_problems() {
    let data = tempfile::tempdir().unwrap();
    let token = admin_token();
    let server = Server::start(data.path(), &[("LATCHKEY_ADMIN_TOKEN", &token)]);
    let body = Some(r#"{"name":"customer-1","login_mode":"named"}"#);
    let (status, content_type, _) = server.request("POST", "/v1/tenants", None, body);
    assert_eq!(status, 401);
    assert_eq!(content_type, "application/problem+json");
    let (status, _) = server.json("POST", "/v1/tenants", Some(&admin_token()), body);
    assert_eq!(status, 401, "a well-formed token the server never issued");
    let (status, _) = server.json("POST", "/v1/tenants", Some("lk_nonsense"), body);
    assert_eq!(status, 401);
}

#[test]
fn bad_input_gets_a_problem_naming_the_field_and_changes_nothing() {
    let data = tempfile::tempdir().unwrap();
    let token = admin_token();
    let server = Server::start(data.path(), &[("LATCHKEY_ADMIN_TOKEN", &token)]);
    let cases = [
        (
            r#"{"name":"customer-1","login_mode":"nammed"}"#,
            400,
            Some("login_mode"),
        ),
        (
            r#"{"name":"Customer 1","login_mode":"named"}"#,
            400,
            Some("name"),
        ),
        (
            r#"{"name":"customer-1","login_mode":"named","extra":1}"#,
            400,
            Some("extra"),
        ),
        (r#"{"login_mode":"named"}"#, 400, Some("name")),
        (r#"{"name":"customer-1","#, 400, None),
    ];
    for (body, want, field) in cases {
        let (status, problem) = server.json("POST", "/v1/tenants", Some(&token), Some(body));
        assert_eq!(status, want, "{body}: {problem}");
        assert!(problem["detail"].is_string(), "{problem}");
        if let Some(field) = field {
            assert_eq!(problem["field"], field, "{body}: {problem}");
        }
    }
    let (status, problem) = server.json("GET", "/v1/tenants/not-a-uuid", Some(&token), None);
    assert_eq!(status, 400);
    assert_eq!(problem["field"], "tenant_id");
    let (status, _) = server.json(
        "GET",
        "/v1/tenants/00000000-0000-0000-0000-000000000009",
        Some(&token),
        None,
    );
    assert_eq!(status, 404);
    let events = data.path().join("events.db");
    drop(server);
    let bytes = std::fs::read(&events).unwrap_or_default();
    let wal = std::fs::read(data.path().join("events.db-wal")).unwrap_or_default();
    let text = String::from_utf8_lossy(&bytes) + String::from_utf8_lossy(&wal);
    assert!(
        !text.contains("TenantRegistered"),
        "a refused request wrote an event"
    );
}
