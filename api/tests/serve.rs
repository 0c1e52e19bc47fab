//! `latchkey serve` starts on the embedded store with no other server, answers /healthz,
//! keeps its state under --data, and shows a new MSP admin token once.

mod support;

use std::io::BufRead;
use std::process::Command;
use support::Server;

#[test]
fn serve_starts_on_the_embedded_store_and_answers_healthz() {
    let data = tempfile::tempdir().unwrap();
    let mut server = Server::start(&data.path().join("data"), &[]);
    let (status, body) = server.json("GET", "/healthz", None, None);
    assert_eq!(status, 200);
    assert_eq!(body["status"], "ok");
    for file in ["events.db", "read-models.db", "secrets.db", "tokens.db"] {
        assert!(data.path().join("data").join(file).exists(), "{file}");
    }
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(data.path().join("data/secret.key")).unwrap();
    assert_eq!(
        key.permissions().mode() & 0o777,
        0o600,
        "the generated key is private"
    );

    let mut line = String::new();
    server.stdout.read_line(&mut line).unwrap();
    let token = line
        .trim()
        .strip_prefix("MSP admin API token (shown once; keep it safe): ")
        .unwrap_or_else(|| panic!("no token line: {line:?}"))
        .to_owned();
    let (status, _) = server.json(
        "GET",
        "/v1/tenants/00000000-0000-0000-0000-000000000001",
        Some(&token),
        None,
    );
    assert_eq!(status, 404, "the printed token works");

    drop(server);

    // A restart finds the admin and shows no new token.
    let server = Server::start(&data.path().join("data"), &[]);
    assert_eq!(server.json("GET", "/healthz", None, None).0, 200);
    let printed = server.stop();
    assert!(
        !printed.contains("token"),
        "a second token was shown: {printed:?}"
    );
}

#[test]
fn a_bad_listen_address_is_reported_with_the_flag() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["serve", "--listen", "not-an-address", "--data"])
        .arg(data.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--listen not-an-address"), "{stderr}");
}

#[test]
fn a_malformed_secret_key_stops_the_start_with_the_variable_named() {
    let data = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data.path())
        .env("LATCHKEY_SECRET_KEY", "c2hvcnQ=")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("LATCHKEY_SECRET_KEY must be 32 bytes"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("c2hvcnQ"),
        "the key itself is never echoed: {stderr}"
    );
}

#[test]
fn the_openapi_document_and_the_docs_page_describe_every_route() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let (status, document) = server.json("GET", "/openapi.json", None, None);
    assert_eq!(status, 200);
    assert_eq!(document["openapi"], "3.1.0");
    let paths = document["paths"].as_object().unwrap();
    let checkout = &paths["/v1/tenants/{tenant_id}/computers/{computer_id}/checkout"]["post"];
    assert!(checkout["summary"].as_str().unwrap().contains("Check out"));
    // The request body is the JSON Schema of the type the handler parses.
    let body = &checkout["requestBody"]["content"]["application/json"]["schema"];
    let name = body["$ref"].as_str().unwrap().rsplit('/').next().unwrap();
    let schema = &document["components"]["schemas"][name];
    assert!(schema["properties"]["ticket"].is_object(), "{schema}");
    let policy = &paths["/v1/tenants/{tenant_id}/policy"]["put"]["requestBody"];
    assert!(policy.to_string().contains("JitPolicy"), "{policy}");
    let operations: usize = paths.values().map(|m| m.as_object().unwrap().len()).sum();
    assert!(operations >= 35, "{operations}");
    let (status, content_type, page) = server.request("GET", "/docs", None, None);
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/html"));
    assert!(page.contains("/openapi.json"));
}
