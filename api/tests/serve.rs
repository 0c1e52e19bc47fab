//! `latchkey serve` starts on the embedded store with no other server, answers /healthz,
//! keeps its state under --data, and shows a new MSP admin token once.

mod support;

use serde_json::json;
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
    // Its log went to a file: plain text, no terminal colour codes.
    let log = std::fs::read_to_string(data.path().join("data/server.log")).unwrap();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log file: {log:?}"
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

    // Every operation documents what its success answer carries, and the problems it may
    // answer; an operation taking a body documents 413 and 415.
    let schema_of = |reference: &serde_json::Value| -> serde_json::Value {
        match reference["$ref"].as_str() {
            Some(r) => document["components"]["schemas"][r.rsplit('/').next().unwrap()].clone(),
            None => reference.clone(),
        }
    };
    for (path, methods) in paths {
        for (method, operation) in methods.as_object().unwrap() {
            let name = format!("{method} {path}");
            let responses = operation["responses"].as_object().unwrap();
            let (status, success) = responses
                .iter()
                .find(|(status, _)| status.starts_with('2'))
                .unwrap_or_else(|| panic!("{name}: no success answer"));
            assert_ne!(success["description"], "OK", "{name}");
            match status.as_str() {
                "204" => assert!(success.get("content").is_none(), "{name}"),
                _ => {
                    let content = success["content"].as_object().unwrap();
                    let (media, body) = content.iter().next().unwrap();
                    if media == "application/json" {
                        let schema = schema_of(&body["schema"]);
                        assert_eq!(schema["type"], "object", "{name}: {schema}");
                        assert!(schema["required"].is_array(), "{name}: {schema}");
                    }
                }
            }
            for problem in ["401", "5XX"] {
                if operation["security"] != json!([]) || problem == "5XX" {
                    assert!(responses.contains_key(problem), "{name}: no {problem}");
                }
            }
            if operation.get("requestBody").is_some() {
                for problem in ["400", "413", "415"] {
                    assert!(responses.contains_key(problem), "{name}: no {problem}");
                }
            }
        }
    }
    // What check-out and reveal return is there to read.
    let created = schema_of(&checkout["responses"]["201"]["content"]["application/json"]["schema"]);
    for field in ["session_id", "account", "status", "expires_at"] {
        assert!(
            created["required"]
                .as_array()
                .unwrap()
                .contains(&json!(field)),
            "{created}"
        );
    }
    let reveal = &paths["/v1/sessions/{session_id}/credential"]["post"];
    let revealed = schema_of(&reveal["responses"]["200"]["content"]["application/json"]["schema"]);
    assert_eq!(
        revealed["properties"]["password"]["type"], "string",
        "{revealed}"
    );
    // Query parameters have their types.
    let parameter = |path: &str, name: &str| -> serde_json::Value {
        paths[path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path}: no {name}"))["schema"]
            .clone()
    };
    assert_eq!(parameter("/v1/audit", "tenant_id")["format"], "uuid");
    assert_eq!(parameter("/v1/audit", "from")["format"], "date-time");
    assert_eq!(parameter("/v1/audit", "limit")["maximum"], 1000);
    assert!(parameter("/v1/audit", "cursor")["pattern"].is_string());
    assert_eq!(
        parameter("/v1/tenants/{tenant_id}/sessions", "open")["type"],
        "boolean"
    );
    assert_eq!(parameter("/v1/agent/commands", "wait")["maximum"], 60);
    assert_eq!(
        parameter("/v1/tokens", "role")["enum"],
        json!([
            "msp_admin",
            "tenant_admin",
            "technician",
            "auditor",
            "agent"
        ])
    );
    // The schema refuses what the server refuses.
    let schemas = &document["components"]["schemas"];
    assert_eq!(
        schemas["NewToken"]["properties"]["role"]["enum"],
        json!(["msp_admin", "tenant_admin", "technician", "auditor"])
    );
    assert_eq!(
        schemas["NewToken"]["properties"]["expires_in"]["maximum"],
        365 * 86_400,
        "this server's maximum token lifetime (the default, a year)"
    );
    assert_eq!(
        schemas["CheckOutRequest"]["properties"]["duration_minutes"]["maximum"],
        10_080
    );
    assert_eq!(schemas["AccountTemplate"]["maxLength"], 23);
}

/// A path asked with a method it does not have answers 405 naming the ones it has; an
/// unknown path a 404 problem; an unknown or malformed query parameter a 400 naming it.
#[test]
fn an_unsupported_method_is_a_405_with_allow() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let mut answer = server.send("PATCH", "/v1/tenants", None, Some("{}"));
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if answer.read_line(&mut line).unwrap() == 0 || line.trim().is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    assert!(
        head.starts_with("http/1.1 405") || head.starts_with("http/1.0 405"),
        "{head}"
    );
    assert!(
        head.contains("allow: post, get") || head.contains("allow: get, post"),
        "{head}"
    );
    assert!(
        head.contains("content-type: application/problem+json"),
        "{head}"
    );
    let mut body = String::new();
    std::io::Read::read_to_string(&mut answer, &mut body).unwrap();
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(problem["type"], "urn:latchkey:problem:method-not-allowed");
    assert_eq!(problem["status"], 405);
    let (status, problem) = server.json("DELETE", "/v1/sessions", None, None);
    assert_eq!((status, problem["status"].clone()), (405, json!(405)));
    let (status, problem) = server.json("GET", "/v1/no-such-thing", None, None);
    assert_eq!(status, 404);
    assert_eq!(problem["type"], "urn:latchkey:problem:no-such-path");
    // Every operation takes exactly the query parameters it documents: a list that takes
    // none refuses one, naming it, as a list with a filter refuses a malformed filter.
    let (status, problem) = server.json("GET", "/v1/tenants?name=customer-1", None, None);
    assert_eq!(
        (status, problem["field"].clone()),
        (400, json!("name")),
        "{problem}"
    );
    let (status, problem) = server.json("GET", "/v1/audit?from=yesterday", None, None);
    assert_eq!(
        (status, problem["field"].clone()),
        (400, json!("from")),
        "{problem}"
    );
}

/// The check every end-to-end test runs on every answer it sees (`support::contract`)
/// fails when an answer and the document disagree.
#[test]
fn the_contract_check_catches_an_answer_the_document_does_not_describe() {
    let data = tempfile::tempdir().unwrap();
    let server = Server::start(data.path(), &[]);
    let contract = server.contract();
    let tenant = "/v1/tenants/0190e0a4-8f6a-7c1e-9d1c-3b1f6f3b9a10";
    let good = json!({
        "tenant_id": "0190e0a4-8f6a-7c1e-9d1c-3b1f6f3b9a10",
        "name": "customer-1",
        "login_mode": "named",
        "policy": latchkey_domain::policy::JitPolicy::default(),
        "shared_account": null
    });
    let check = |path: &str, status: u16, body: &serde_json::Value| {
        contract.check("GET", path, status, "application/json", &body.to_string())
    };
    check(tenant, 200, &good).unwrap();
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("policy");
    let mut extra = good.clone();
    extra["owner"] = json!("x");
    let mut wrong = good.clone();
    wrong["login_mode"] = json!("nammed");
    let mut malformed = good.clone();
    malformed["tenant_id"] = json!("not-a-uuid");
    for (what, body) in [
        ("a missing field", &missing),
        ("a field it does not name", &extra),
        ("a value outside its enum", &wrong),
        ("a malformed UUID", &malformed),
    ] {
        let broken = check(tenant, 200, body).expect_err(what);
        assert!(
            broken.contains("GET /v1/tenants/{tenant_id}"),
            "{what}: {broken}"
        );
    }
    assert!(check(tenant, 201, &good)
        .unwrap_err()
        .contains("does not document"));
    assert!(contract
        .check("GET", tenant, 200, "text/plain", "hello")
        .is_err());
    assert!(contract
        .check(
            "DELETE",
            "/v1/tokens/00000000000000000000000000000001",
            204,
            "",
            ""
        )
        .is_ok());
    assert!(contract
        .check("GET", "/v1/nowhere", 200, "application/json", "{}")
        .is_err());
    // Problems too: a status the operation does not document, or a body that is no Problem.
    let problem = |status: u16, detail: &str| {
        json!({"type": "urn:latchkey:problem:x", "title": "t", "status": status,
               "detail": detail})
        .to_string()
    };
    let problem_check = |status: u16, body: &str| {
        contract.check("GET", tenant, status, "application/problem+json", body)
    };
    problem_check(404, &problem(404, "the tenant does not exist")).unwrap();
    assert!(problem_check(413, &problem(413, "too large"))
        .unwrap_err()
        .contains("does not document"));
    assert!(problem_check(404, r#"{"error":"gone"}"#).is_err());
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

// ---------------------------------------------------------------------------------------
// HTTPS

/// How long a certificate changed on disk may take to be served (the server looks every
/// 2 s).
const RELOAD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(20);

/// The MSP admin token a first start prints (its second line).
fn printed_token(server: &mut Server) -> String {
    let mut line = String::new();
    server.stdout.read_line(&mut line).unwrap();
    line.trim()
        .strip_prefix("MSP admin API token (shown once; keep it safe): ")
        .unwrap_or_else(|| panic!("no token line: {line:?}"))
        .to_owned()
}

/// Starts the server with `--tls-cert` and `--tls-key`.
fn start_https(data: &std::path::Path, issued: &support::ca::Issued) -> Server {
    Server::start_with_args(
        data,
        &[
            "--tls-cert",
            issued.cert_file.to_str().unwrap(),
            "--tls-key",
            issued.key_file.to_str().unwrap(),
        ],
        &[],
    )
}

/// The CLI against `server`, with the admin token and `args` (and no proxy).
fn cli(url: &str, token: &str, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .args(args)
        .env("LATCHKEY_SERVER", url)
        .env("LATCHKEY_TOKEN", token)
        .env_remove("LATCHKEY_CA_FILE")
        .env("RUST_LOG", "off");
    for proxy in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "ALL_PROXY",
    ] {
        command.env_remove(proxy);
    }
    command.envs(env.iter().copied());
    command.output().unwrap()
}

#[test]
fn https_is_served_with_the_configured_certificate_and_the_cli_trusts_its_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    let ca = support::ca::Ca::new(certs.path(), "msp");
    let issued = ca.issue(certs.path(), "latchkey-one", 1);
    let data = tempfile::tempdir().unwrap();
    let mut server = start_https(data.path(), &issued);
    assert_eq!(server.url, format!("https://{}", server.addr));
    let token = printed_token(&mut server);

    let served = support::https::served_certificate(&server.addr, &ca.pem).unwrap();
    assert_eq!(served, issued.der, "the configured certificate is served");
    let (status, body) = support::https::request(&server.addr, &ca.pem, "GET", "/healthz", None);
    assert_eq!((status, body.contains("\"ok\"")), (200, true), "{body}");

    // The CLI trusts the CA given with --ca-file, or with LATCHKEY_CA_FILE.
    let ca_file = ca.file.to_str().unwrap();
    let listed = cli(
        &server.url,
        &token,
        &["tenants", "list", "--ca-file", ca_file],
        &[],
    );
    assert!(listed.status.success(), "{listed:?}");
    let created = cli(
        &server.url,
        &token,
        &[
            "tenants",
            "create",
            "--name",
            "customer-1",
            "--mode",
            "named",
        ],
        &[("LATCHKEY_CA_FILE", ca_file)],
    );
    assert!(created.status.success(), "{created:?}");
    let listed = cli(
        &server.url,
        &token,
        &["tenants", "list", "--json"],
        &[("LATCHKEY_CA_FILE", ca_file)],
    );
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("customer-1"),
        "{listed:?}"
    );

    // Without it, or trusting another CA, the server's certificate is refused, and nothing
    // is sent (the token never leaves).
    let other = support::ca::Ca::new(certs.path(), "other");
    for args in [
        vec!["tenants", "list"],
        vec!["tenants", "list", "--ca-file", other.file.to_str().unwrap()],
    ] {
        let refused = cli(&server.url, &token, &args, &[]);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("certificate is not trusted"), "{stderr}");
        assert!(stderr.contains("--ca-file"), "{stderr}");
        assert!(!stderr.contains(&token), "{stderr}");
    }
    assert!(
        support::https::served_certificate(&server.addr, &other.pem).is_err(),
        "a client trusting another CA refuses the handshake"
    );

    // Plain HTTP to the HTTPS port gets no HTTP answer.
    let mut plain = std::net::TcpStream::connect(&server.addr).unwrap();
    plain
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    std::io::Write::write_all(&mut plain, b"GET /healthz HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut plain, &mut answer);
    assert!(!answer.starts_with(b"HTTP/"), "{answer:?}");
}

#[test]
fn a_certificate_replaced_on_disk_is_served_without_a_restart() {
    let certs = tempfile::tempdir().unwrap();
    let ca = support::ca::Ca::new(certs.path(), "msp");
    let first = ca.issue(certs.path(), "latchkey-one", 1);
    let data = tempfile::tempdir().unwrap();
    let mut server = start_https(data.path(), &first);
    let pid = server.pid();
    assert_eq!(
        support::https::served_certificate(&server.addr, &ca.pem).unwrap(),
        first.der
    );
    let served_becomes = |expected: &[u8], what: &str| {
        let start = std::time::Instant::now();
        loop {
            let served = support::https::served_certificate(&server.addr, &ca.pem).unwrap();
            if served == expected {
                return;
            }
            assert!(
                start.elapsed() < RELOAD_PATIENCE,
                "{what} was not served after {RELOAD_PATIENCE:?}"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    };

    // Renewed: a new certificate (another subject and serial) and key, moved over the
    // files the server was started with, the certificate first.
    let renewed = ca.issue(certs.path(), "latchkey-two", 2);
    support::ca::write(
        &first.cert_file,
        &std::fs::read_to_string(&renewed.cert_file).unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    support::ca::write(
        &first.key_file,
        &std::fs::read_to_string(&renewed.key_file).unwrap(),
    );
    served_becomes(&renewed.der, "the renewed certificate");

    // A broken pair (a certificate without its key) is not served: the renewed one stays,
    // and the log says why.
    let stray = ca.issue(certs.path(), "latchkey-stray", 3);
    support::ca::write(
        &first.cert_file,
        &std::fs::read_to_string(&stray.cert_file).unwrap(),
    );
    std::thread::sleep(latchkey_api::tls::CHECK_INTERVAL * 3);
    assert_eq!(
        support::https::served_certificate(&server.addr, &ca.pem).unwrap(),
        renewed.der,
        "a certificate whose key did not come is not served"
    );

    // SIGHUP reads the files at once; a good pair again is served.
    let third = ca.issue(certs.path(), "latchkey-three", 4);
    support::ca::write(
        &first.key_file,
        &std::fs::read_to_string(&third.key_file).unwrap(),
    );
    support::ca::write(
        &first.cert_file,
        &std::fs::read_to_string(&third.cert_file).unwrap(),
    );
    let hup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    served_becomes(&third.der, "the third certificate");
    assert!(server.is_running(), "SIGHUP does not stop the server");
    assert_eq!(server.pid(), pid, "no restart");

    let log = server.stop_and_keep(data.path());
    assert!(
        log.contains("the TLS certificate files changed but cannot be used"),
        "{log}"
    );
    assert!(log.contains("is not the private key"), "{log}");
    assert!(
        log.contains("serving the TLS certificate read again from its files"),
        "{log}"
    );
    assert!(
        !log.contains("PRIVATE KEY"),
        "no key material in the log: {log}"
    );
}

#[test]
fn plain_http_on_an_address_that_is_not_loopback_needs_the_flag() {
    let data = tempfile::tempdir().unwrap();
    support::make_private(data.path());
    let serve = |extra: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
        command
            .args(["serve", "--listen", "0.0.0.0:0", "--data"])
            .arg(data.path())
            .args(extra)
            .env_remove("LATCHKEY_STORE")
            .env_remove("LATCHKEY_INSECURE_HTTP")
            .env_remove("LATCHKEY_TLS_CERT")
            .env_remove("LATCHKEY_TLS_KEY");
        command
    };
    let output = serve(&[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(output.stdout.is_empty(), "it never listened: {output:?}");
    assert!(
        stderr.contains("--listen 0.0.0.0:0: not a loopback address"),
        "{stderr}"
    );
    for flag in ["--tls-cert FILE --tls-key FILE", "--insecure-http"] {
        assert!(stderr.contains(flag), "{stderr}");
    }
    assert!(
        modes_in(data.path()).is_empty(),
        "refused before touching the data directory"
    );

    // Asked for by name, plain HTTP is served there, with a warning in the log. (Only
    // loopback is ever sent to.)
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("server.log");
    let mut child = serve(&["--insecure-http"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        line.starts_with("latchkey listening on http://0.0.0.0:"),
        "{line:?}"
    );
    // The warning is written before the address is printed.
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(
        said.contains("serving plain HTTP on an address that is not loopback"),
        "{said}"
    );
    assert!(said.contains("--insecure-http"), "{said}");
}

/// A well-formed token the server never issued, with token id `id`.
fn made_up_token(id: u128) -> String {
    format!("lk_{id:032x}_{}", "A".repeat(43))
}

#[test]
fn failed_authentications_are_limited_per_client_address_and_per_token_id() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap(); // so the server's log is kept
    let mut server = Server::start(
        &data,
        &[
            ("LATCHKEY_AUTH_FAILURES_PER_ADDRESS", "3"),
            ("LATCHKEY_AUTH_FAILURES_PER_TOKEN", "2"),
            ("LATCHKEY_AUTH_FAILURE_WINDOW_SECONDS", "600"),
        ],
    );
    let admin = printed_token(&mut server);
    let get = |from: &str, token: Option<&str>| {
        let bearer = token.map(|t| format!("Bearer {t}"));
        let headers: Vec<(&str, &str)> = bearer
            .as_deref()
            .map(|b| vec![("Authorization", b)])
            .unwrap_or_default();
        server.exchange_from(from, "GET", "/v1/tenants", &headers, None)
    };

    // 127.0.0.1 fails three times (a missing token counts too), with three token ids.
    assert_eq!(get("127.0.0.1", None).status, 401);
    for id in 1..=2 {
        assert_eq!(get("127.0.0.1", Some(&made_up_token(id))).status, 401);
    }
    let refused = get("127.0.0.1", Some(&made_up_token(3)));
    assert_eq!(refused.status, 429, "{refused:?}");
    // 3 per 600 s drain one every 200 s.
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After in seconds: {refused:?}"));
    assert!((1..=200).contains(&retry_after), "{retry_after}");
    assert_eq!(
        refused.header("content-type"),
        Some("application/problem+json")
    );
    let problem = refused.json();
    assert_eq!(problem["type"], "urn:latchkey:problem:too-many-attempts");
    assert_eq!(problem["status"], 429);
    // Refused before the token is looked at: the right token from there is refused too.
    assert_eq!(get("127.0.0.1", Some(&admin)).status, 429);
    // Another client address is not affected.
    assert_eq!(get("127.0.0.2", Some(&admin)).status, 200);

    // Enrollment tokens are guessed the same way.
    let enroll = |from: &str, token: &str| {
        let body = format!(r#"{{"token":"{token}","hostname":"pc1","os":"linux"}}"#);
        server.exchange_from(from, "POST", "/v1/agent/enroll", &[], Some(&body))
    };
    for id in 10..=12 {
        assert_eq!(enroll("127.0.0.3", &made_up_token(id)).status, 401);
    }
    let refused = enroll("127.0.0.3", &made_up_token(13));
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(refused.header("retry-after").is_some());

    // The admin token's id guessed with wrong secrets from two addresses: after two, the
    // id is refused from everywhere, even with its right secret.
    let forged = format!("{}{}", &admin[..admin.len() - 43], "A".repeat(43));
    assert_eq!(get("127.0.0.4", Some(&forged)).status, 401);
    assert_eq!(get("127.0.0.5", Some(&forged)).status, 401);
    let refused = get("127.0.0.6", Some(&admin));
    assert_eq!(refused.status, 429, "{refused:?}");
    assert!(
        refused.json()["detail"]
            .as_str()
            .unwrap()
            .contains("token id"),
        "{refused:?}"
    );

    let (_, _, text) = server.request("GET", "/metrics", None, None);
    let refused_by = |limit: &str| -> f64 {
        let prefix = format!("latchkey_auth_attempts_refused_total{{limit=\"{limit}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {prefix} in {text}"))
    };
    assert_eq!(refused_by("address"), 3.0, "{text}");
    assert_eq!(refused_by("token_id"), 1.0, "{text}");

    let log = server.stop_and_keep(&data);
    assert!(
        log.contains("too many failed authentications from this client address")
            && log.contains("127.0.0.1"),
        "{log}"
    );
    assert!(
        log.contains("too many failed authentications with this token id"),
        "{log}"
    );
    let secret = &admin[admin.len() - 43..];
    assert!(!log.contains(secret), "no token in the log: {log}");
    assert!(!log.contains(&"A".repeat(43)), "no made-up secret either");
}
