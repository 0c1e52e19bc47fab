//! The whole story through HTTP only, on the real `latchkey` binary: an MSP admin sets up a
//! tenant, a technician and an enrollment token; a simulated agent enrolls and answers its
//! provisioning requests over the agent endpoints; the technician checks out, reveals the
//! credential and checks in; the audit trail tells the story. In named, shared and ephemeral
//! modes (ephemeral with delete-on-check-in and with reuse-existing).

mod support;

use serde_json::json;
use support::msp::{postgres_database, Msp};

#[test]
fn named_mode_story() {
    named_story(Msp::start());
}

#[test]
fn named_mode_story_on_postgres() {
    let database = postgres_database();
    named_story(Msp::start_with(&[("LATCHKEY_STORE", database.url())]));
}

fn named_story(msp: Msp) {
    let mut setup = msp.setup("named", "W11-L-PASSWORD");
    let (session, account) = msp.check_out(&mut setup);
    assert_eq!(account, "msp-nik");
    assert_eq!(
        setup.agent.machine.log,
        [
            "ensure_account msp-nik",
            "rotate_password msp-nik",
            "add_to_group msp-nik"
        ],
        "the account joins the admin group only after its password was rotated"
    );
    assert!(setup
        .agent
        .machine
        .groups("msp-nik")
        .unwrap()
        .contains("Administrators"));

    let (status, revealed) = msp.reveal(&setup.nik_token, &session);
    assert_eq!(status, 200, "{revealed}");
    assert_eq!(revealed["account"], "msp-nik");
    assert_eq!(
        revealed["password"].as_str(),
        setup.agent.machine.password("msp-nik"),
        "the technician gets the password the computer was given"
    );
    // Nobody else may see it, not even the MSP admin.
    let (status, _) = msp.reveal(&msp.admin, &session);
    assert_eq!(status, 403);

    let before = setup.agent.machine.password("msp-nik").unwrap().to_owned();
    msp.check_in(&mut setup, &session);
    assert!(
        setup.agent.machine.log[3..].contains(&"remove_from_group msp-nik".to_owned()),
        "{:?}",
        setup.agent.machine.log
    );
    assert!(setup.agent.machine.groups("msp-nik").unwrap().is_empty());
    assert_ne!(
        setup.agent.machine.password("msp-nik").unwrap(),
        before,
        "the password is rotated again at check-in"
    );
    let (status, refused) = msp.reveal(&setup.nik_token, &session);
    assert_eq!(status, 422, "no credential after check-in: {refused}");

    let sentences = msp.audit_shows(
        &setup.tenant_id,
        "nik@nikpot.com logged into the Desktop W11-L-PASSWORD with account msp-nik",
    );
    assert!(
        sentences.iter().any(|s| s.contains("password")
            && s.contains("nik@nikpot.com")
            && s.contains("msp-nik")),
        "the reveal is audited: {sentences:#?}"
    );
}

#[test]
fn shared_mode_story() {
    let msp = Msp::start();
    let mut setup = msp.setup("shared", "W10-local");
    let shared = setup.shared_account.clone().expect("a shared account");
    let (session, account) = msp.check_out(&mut setup);
    assert_eq!(account, shared);
    let (status, revealed) = msp.reveal(&setup.nik_token, &session);
    assert_eq!(status, 200, "{revealed}");
    assert_eq!(
        revealed["password"].as_str(),
        setup.agent.machine.password(&shared)
    );
    msp.check_in(&mut setup, &session);
    assert!(setup.agent.machine.groups(&shared).unwrap().is_empty());
    msp.audit_shows(
        &setup.tenant_id,
        &format!("nik@nikpot.com accessed workstation W10-local with account {shared}"),
    );
}

#[test]
fn ephemeral_mode_with_delete_on_check_in() {
    let msp = Msp::start();
    let mut setup = msp.setup("ephemeral", "W11-EPHEMERAL");
    msp.set_policy(&setup.tenant_id, |p| {
        p["on_check_in"] = json!("delete_account");
        p["reuse_existing_account"] = json!(false);
    });
    let (session, account) = msp.check_out(&mut setup);
    assert!(account.starts_with("nik_"), "{account}");
    assert!(setup.agent.machine.has(&account));
    msp.check_in(&mut setup, &session);
    assert!(
        !setup.agent.machine.has(&account),
        "the ephemeral account is deleted at check-in: {:?}",
        setup.agent.machine.log
    );
    let (_, again) = msp.check_out(&mut setup);
    assert_ne!(again, account, "a fresh account every time");
}

#[test]
fn ephemeral_mode_reusing_the_existing_account() {
    let msp = Msp::start();
    let mut setup = msp.setup("ephemeral", "W11-REUSE");
    msp.set_policy(&setup.tenant_id, |p| {
        p["on_check_in"] = json!("remove_from_group");
        p["reuse_existing_account"] = json!(true);
    });
    let (first, account) = msp.check_out(&mut setup);
    msp.check_in(&mut setup, &first);
    assert!(setup.agent.machine.groups(&account).unwrap().is_empty());
    let (second, again) = msp.check_out(&mut setup);
    assert_eq!(again, account, "the kept account is reused");
    assert!(setup
        .agent
        .machine
        .groups(&account)
        .unwrap()
        .contains("Administrators"));
    msp.check_in(&mut setup, &second);
    assert!(setup.agent.machine.has(&account), "kept, not deleted");
}

/// Every file in the data directory (event log, read models, tokens, idempotency keys, the
/// server's log), with their WAL files, as bytes.
fn data_files(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| (p.display().to_string(), std::fs::read(&p).unwrap()))
        .collect()
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn no_password_or_totp_secret_in_the_log_the_read_models_or_the_server_log() {
    let msp = Msp::start_with(&[("RUST_LOG", "debug")]);
    let mut setup = msp.setup("named", "W11-L-PASSWORD");
    let (session, _) = msp.check_out(&mut setup);
    let (status, revealed) = msp.reveal(&setup.nik_token, &session);
    assert_eq!(status, 200);
    let password = revealed["password"].as_str().unwrap().to_owned();
    let offline = msp.ok(
        "POST",
        &format!(
            "/v1/tenants/{}/computers/{}/offline-secret",
            setup.tenant_id, setup.agent.computer_id
        ),
        &setup.nik_token,
        json!({}),
    );
    let uri = offline["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/"), "{uri}");
    assert!(offline["qr_svg"].as_str().unwrap().contains("<svg"));
    let totp_secret = uri
        .split(['?', '&'])
        .find_map(|part| part.strip_prefix("secret="))
        .unwrap()
        .to_owned();
    assert!(totp_secret.len() >= 16, "{totp_secret}");
    let first_password = setup.agent.machine.password("msp-nik").unwrap().to_owned();
    msp.check_in(&mut setup, &session);
    let rotated = setup.agent.machine.password("msp-nik").unwrap().to_owned();
    msp.audit_shows(
        &setup.tenant_id,
        "nik@nikpot.com was shown the password of msp-nik on W11-L-PASSWORD",
    );
    let dir = msp.data.path().to_owned();
    let log = msp.server.stop_and_keep(&dir);
    assert!(
        log.contains("credential revealed"),
        "the log is real: {log:.300}"
    );
    let mut checked = 0;
    for (name, bytes) in data_files(&dir) {
        for secret in [&password, &first_password, &rotated, &totp_secret] {
            assert!(!contains(&bytes, secret), "{name} holds a secret in clear");
        }
        checked += 1;
    }
    assert!(
        checked >= 6,
        "event log, read models, secrets, tokens, log: {checked}"
    );
}

/// A short story that leaves rows in every read model.
fn some_history(msp: &Msp) {
    let mut setup = msp.setup("shared", "W10-local");
    let (first, _) = msp.check_out(&mut setup);
    msp.check_in(&mut setup, &first);
    let (second, _) = msp.check_out(&mut setup);
    msp.reveal(&setup.nik_token, &second);
}

/// Runs `latchkey replay` with `args` and checks that it says it rebuilt the read models.
fn replay(args: &[&str], data: &std::path::Path) {
    support::make_private(data);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .arg("replay")
        .args(args)
        .arg("--data")
        .arg(data)
        .env_remove("LATCHKEY_STORE")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let said = String::from_utf8_lossy(&output.stdout);
    assert!(said.contains("rebuilt the read models"), "{said}");
}

/// The read models caught up with the whole log (as the runner would on its next start),
/// dumped.
fn caught_up_dump(store_url: &str, mut models: latchkey_projections::ReadModels) -> String {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = latchkey_store::open_url(store_url).await.unwrap();
        let rest = store
            .read_all(models.checkpoint().unwrap(), 100_000)
            .await
            .unwrap();
        models.apply(&rest).unwrap();
        models.dump().unwrap()
    })
}

#[test]
fn rebuilt_read_models_equal_the_live_ones() {
    let msp = Msp::start();
    some_history(&msp);
    let dir = msp.data.path().to_owned();
    msp.server.stop_and_keep(&dir);
    let models = dir.join("read-models.db");
    let url = format!("embedded:{}", dir.join("events.db").display());
    let live = caught_up_dump(
        &url,
        latchkey_projections::ReadModels::open(&models).unwrap(),
    );
    assert!(
        live.contains("accessed workstation W10-local"),
        "{live:.500}"
    );
    replay(&[], &dir);
    let rebuilt = latchkey_projections::ReadModels::open(&models)
        .unwrap()
        .dump()
        .unwrap();
    assert_eq!(rebuilt, live);
}

#[test]
fn replay_on_a_postgres_database_no_server_used_yet_builds_empty_read_models() {
    let database = postgres_database();
    let dir = tempfile::tempdir().unwrap();
    replay(&["--store", database.url()], dir.path());
    let models = latchkey_projections::ReadModels::open(latchkey_sql::Place::Postgres(
        database.url().to_owned(),
    ))
    .unwrap();
    assert_eq!(models.checkpoint().unwrap(), None);
    assert!(models.dump().unwrap().contains("== audit_trail"));
}

#[test]
fn rebuilt_read_models_equal_the_live_ones_on_postgres() {
    let database = postgres_database();
    let msp = Msp::start_with(&[("LATCHKEY_STORE", database.url())]);
    some_history(&msp);
    let dir = msp.data.path().to_owned();
    msp.server.stop_and_keep(&dir);
    let open = || {
        latchkey_projections::ReadModels::open(latchkey_sql::Place::Postgres(
            database.url().to_owned(),
        ))
        .unwrap()
    };
    let live = caught_up_dump(database.url(), open());
    let process_checkpoint = open().process_checkpoint().unwrap();
    assert!(
        live.contains("accessed workstation W10-local"),
        "{live:.500}"
    );
    replay(&["--store", database.url()], &dir);
    let rebuilt = open();
    assert_eq!(rebuilt.dump().unwrap(), live);
    assert_eq!(
        rebuilt.process_checkpoint().unwrap(),
        process_checkpoint,
        "the process managers' checkpoint is carried over"
    );
    assert!(process_checkpoint.is_some());
}

#[test]
fn offline_secrets_offline_logins_and_the_admin_inventory_over_the_agent_endpoints() {
    let msp = Msp::start();
    let mut setup = msp.setup("named", "W11-L-PASSWORD");
    let (session, _) = msp.check_out(&mut setup);
    let agent = setup.agent.token.clone();
    let secrets = msp.ok("GET", "/v1/agent/offline-secrets", &agent, json!({}));
    assert_eq!(secrets["admin_group"], "Administrators");
    assert!(secrets["max_session_minutes"].as_u64().unwrap() > 0);
    let nik = &secrets["secrets"][0];
    assert_eq!(nik["account"], "msp-nik");
    assert_eq!(nik["username"], "nik");
    let secret = nik["secret"].as_str().unwrap();
    // The same secret the technician's authenticator gets.
    let offline = msp.ok(
        "POST",
        &format!(
            "/v1/tenants/{}/computers/{}/offline-secret",
            setup.tenant_id, setup.agent.computer_id
        ),
        &setup.nik_token,
        json!({}),
    );
    assert!(offline["otpauth_uri"]
        .as_str()
        .unwrap()
        .contains(&format!("secret={secret}")));
    msp.check_in(&mut setup, &session);

    let login = json!({
        "login_id": "0190f1e2-0000-7000-8000-000000000042",
        "account": "msp-nik",
        "technician_id": nik["technician_id"],
        "generation": nik["generation"],
        "admin_group": "Administrators",
        "used_at": "2026-11-23T10:00:00Z",
        "until": "2026-11-23T11:00:00Z",
    });
    let first = msp.ok("POST", "/v1/agent/offline-logins", &agent, login.clone());
    assert!(first["recorded"].as_u64().unwrap() >= 1);
    let again = msp.ok("POST", "/v1/agent/offline-logins", &agent, login);
    assert_eq!(again["recorded"], 0, "uploading it again changes nothing");
    // Until the agent is seen to have taken it back, the login (long over by its clock)
    // is standing privilege with the login named, and the as-of answer during the login
    // names it.
    let login_id = "0190f1e2-0000-7000-8000-000000000042";
    // (The read models follow the log asynchronously: wait for the upload to reach them.)
    let offline = loop_until(|| {
        let standing = msp.ok(
            "GET",
            &format!("/v1/tenants/{}/standing-privilege", setup.tenant_id),
            &msp.admin,
            json!({}),
        );
        let offline: Vec<_> = standing["standing_privilege"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["account"] == "msp-nik")
            .map(|p| p["offline_login"]["login_id"].clone())
            .collect();
        (!offline.is_empty()).then_some(offline)
    });
    assert_eq!(offline, [json!(login_id)]);
    let admins = msp.ok(
        "GET",
        &format!(
            "/v1/tenants/{}/computers/{}/admins?at=2026-11-23T10:30:00Z",
            setup.tenant_id, setup.agent.computer_id
        ),
        &msp.admin,
        json!({}),
    );
    let during: Vec<_> = admins["admins"]
        .as_array()
        .unwrap_or_else(|| panic!("{admins:#}"))
        .iter()
        .map(|a| {
            (
                a["account"].clone(),
                a["offline_logins"][0]["login_id"].clone(),
            )
        })
        .collect();
    assert_eq!(during, [(json!("msp-nik"), json!(login_id))], "{admins:#}");
    let before = setup.agent.machine.password("msp-nik").unwrap().to_owned();
    for _ in 0..50 {
        setup.agent.poll(&msp.server, 1);
        if setup.agent.machine.password("msp-nik") != Some(before.as_str()) {
            break;
        }
    }
    assert_ne!(
        setup.agent.machine.password("msp-nik").unwrap(),
        before,
        "the server rotates the password once more after the offline login"
    );

    msp.ok(
        "POST",
        "/v1/agent/inventory",
        &agent,
        json!({"group": "Administrators", "members": ["Administrator", "msp-nik"]}),
    );
    let drift = loop_until(|| {
        let drift = msp.ok(
            "GET",
            &format!("/v1/tenants/{}/drift", setup.tenant_id),
            &msp.admin,
            json!({}),
        );
        (drift["drift"].as_array().unwrap().len() == 2).then_some(drift)
    });
    let managed: Vec<_> = drift["drift"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["member"].as_str().unwrap().to_owned(),
                d["managed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        managed,
        [
            ("Administrator".to_owned(), false),
            ("msp-nik".to_owned(), true)
        ],
        "no open session explains either admin"
    );
    let sentences = msp.audit_sentences(&setup.tenant_id);
    assert!(
        sentences
            .iter()
            .any(|s| s.starts_with("nik@nikpot.com logged in offline to W11-L-PASSWORD")),
        "{sentences:#?}"
    );
}

/// Retries `f` for up to 5 s (the read models trail the streams).
fn loop_until<T>(f: impl FnMut() -> Option<T>) -> T {
    support::eventually(
        "the read models to show it",
        std::time::Duration::from_secs(5),
        f,
    )
}

/// After a switch to shared mode, asking for an offline secret before the shared account has
/// one says which account and mode it is about.
#[test]
fn no_offline_secret_yet_names_the_mode_and_the_account() {
    let msp = Msp::start();
    let mut setup = msp.setup("named", "W11-OFFLINE");
    let path = format!(
        "/v1/tenants/{}/computers/{}/offline-secret",
        setup.tenant_id, setup.agent.computer_id
    );
    let (status, problem) = msp.call("POST", &path, &setup.nik_token, json!({}));
    assert_eq!(status, 422, "{problem}");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("named mode and your account msp-nik"),
        "{problem}"
    );
    let (session, _) = msp.check_out(&mut setup);
    msp.check_in(&mut setup, &session);
    msp.ok(
        "PUT",
        &format!("/v1/tenants/{}/login-mode", setup.tenant_id),
        &msp.admin,
        json!({"login_mode": "shared"}),
    );
    // nik's named account (and its secret) is retired by the process managers, shortly.
    let problem = loop_until(|| {
        let (status, problem) = msp.call("POST", &path, &setup.nik_token, json!({}));
        (status == 422).then_some(problem)
    });
    assert_eq!(problem["type"], "urn:latchkey:problem:no-offline-secret");
    let detail = problem["detail"].as_str().unwrap();
    assert!(
        detail.contains("shared mode and its shared account msp-"),
        "{detail}"
    );
}
