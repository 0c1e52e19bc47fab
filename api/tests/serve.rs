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
    support::make_private(data.path());
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
    support::make_private(data.path());
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

/// The mode bits of `path` (permissions only).
fn mode(path: &std::path::Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Every entry of `dir` with its mode, sorted by name.
fn modes_in(dir: &std::path::Path) -> Vec<(String, u32)> {
    let mut found: Vec<(String, u32)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            (
                entry.file_name().to_string_lossy().into_owned(),
                mode(&entry.path()),
            )
        })
        .collect();
    found.sort();
    found
}

#[test]
fn a_new_data_directory_is_private_and_so_is_every_file_in_it() {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("srv/latchkey");
    let mut server = Server::start(&data, &[]);
    let mut line = String::new();
    server.stdout.read_line(&mut line).unwrap();
    let token = line.trim().rsplit(' ').next().unwrap().to_owned();
    // Writes to every database: a tenant (the event log, then the read models), a token,
    // and an answer kept for an Idempotency-Key.
    let (status, _) = server.json(
        "POST",
        "/v1/tenants",
        Some(&token),
        Some(r#"{"name":"customer-1","login_mode":"named"}"#),
    );
    assert_eq!(status, 201);
    let mut answer = server.send_with_headers(
        "POST",
        "/v1/technicians",
        Some(&token),
        Some(r#"{"username":"nik","email":"nik@nikpot.com"}"#),
        &[("Idempotency-Key", "nik-1")],
    );
    assert_eq!(support::read_head(&mut answer).0, 201);
    let (status, _) = server.json(
        "POST",
        "/v1/tokens",
        Some(&token),
        Some(r#"{"role":"auditor","name":"audit@msp.example"}"#),
    );
    assert_eq!(status, 201);
    let (status, _) = server.json("GET", "/v1/audit", Some(&token), None);
    assert_eq!(status, 200);

    let check = |when: &str| {
        assert_eq!(mode(&data), 0o700, "{when}: the data directory");
        assert_eq!(
            mode(&root.path().join("srv")),
            0o700,
            "{when}: its new parent"
        );
        let found = modes_in(&data);
        let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
        for file in [
            "events.db",
            "events.db-wal",
            "events.db-shm",
            "read-models.db",
            "read-models.db-wal",
            "tokens.db",
            "secrets.db",
            "idempotency.db",
            "snapshots.db",
            "secret.key",
        ] {
            assert!(names.contains(&file), "{when}: no {file} in {names:?}");
        }
        for (name, mode) in &found {
            assert_eq!(*mode, 0o600, "{when}: {name} has mode {mode:o}");
        }
    };
    check("while the server runs");
    drop(server);
    check("after it stopped");

    // And it starts again on the directory it made.
    let server = Server::start(&data, &[]);
    assert_eq!(server.json("GET", "/healthz", None, None).0, 200);
}

/// Runs `latchkey serve` (or `replay`) on `data`, expecting it to refuse; returns stderr.
fn refused(command: &str, data: &std::path::Path) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args([command, "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env_remove("LATCHKEY_STORE")
        .env_remove("LATCHKEY_SECRET_KEY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "it never listened: {output:?}");
    stderr
}

#[test]
fn a_data_directory_others_may_read_is_refused_with_the_chmod_that_fixes_it() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for command in ["serve", "replay"] {
        let stderr = refused(command, &data);
        assert!(
            stderr.contains(&format!("--data {}", data.display())),
            "{stderr}"
        );
        assert!(stderr.contains("mode 755"), "{stderr}");
        assert!(
            stderr.contains(&format!("chmod 700 {}", data.display())),
            "{stderr}"
        );
    }
    assert!(
        modes_in(&data).is_empty(),
        "nothing was written into the refused directory"
    );
    assert_eq!(mode(&data), 0o755, "nor was its mode changed");

    // A private directory holding a file others may read (say, from an older version) is
    // refused too, naming the file.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).unwrap();
    let events = data.join("events.db");
    std::fs::write(&events, b"").unwrap();
    std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o644)).unwrap();
    let stderr = refused("serve", &data);
    assert!(
        stderr.contains(&format!("chmod 600 {}", events.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("chmod 700"), "{stderr}");

    // Run as told, the server starts.
    std::fs::set_permissions(&events, std::fs::Permissions::from_mode(0o600)).unwrap();
    let server = Server::start(&data, &[]);
    assert_eq!(server.json("GET", "/healthz", None, None).0, 200);
}
