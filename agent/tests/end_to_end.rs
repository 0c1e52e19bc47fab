//! The real `latchkey serve` and the real `latchkey-agent` processes on loopback, the agent
//! working on a throw-away `--root`: check-out and check-in change the account files as the
//! technician is told, in named, shared and ephemeral modes; every request is applied exactly
//! once through agent crashes (SIGKILL, and an abort between applying and reporting) and
//! server restarts; offline login works without the server and is uploaded afterwards.

mod support;

use serde_json::json;
use support::{wait_for, Agent, Msp, ADMIN_GROUP};

/// Waits until the agent has carried out and reported everything the server asked.
fn settle(msp: &Msp, agent: &Agent) {
    wait_for(
        "the agent's feed to be empty",
        || agent.log(),
        || msp.feed_is_empty(agent),
    );
}

#[test]
fn named_mode_grants_and_takes_back_access_in_the_account_files() {
    let msp = Msp::start();
    let setup = msp.setup("named");
    let mut agent = Agent::new("W11-L-PASSWORD");
    // An admin nobody told Latchkey about, for the inventory to find.
    agent.add_member_by_hand(ADMIN_GROUP, "intruder");
    agent.enroll_and_run(&msp, &setup);

    let (session, account) = msp.check_out(&setup, &agent);
    assert_eq!(account, "msp-nik");
    assert!(agent.has_account("msp-nik"), "in the root's /etc/passwd");
    assert!(
        agent.is_admin("msp-nik"),
        "{:?}",
        agent.members(ADMIN_GROUP)
    );
    let password = msp.reveal(&setup, &session);
    assert!(
        agent.password_is("msp-nik", &password),
        "the shadow hash is that of the password the technician was shown"
    );

    let granted_hash = agent.shadow_hash("msp-nik").unwrap();
    msp.check_in(&setup, &session);
    wait_for(
        "the access to be taken back",
        || agent.log(),
        || !agent.is_admin("msp-nik") && agent.shadow_hash("msp-nik").unwrap() != granted_hash,
    );
    assert!(agent.has_account("msp-nik"), "a named account is kept");
    assert!(!agent.password_is("msp-nik", &password), "rotated again");
    settle(&msp, &agent);

    let applied = agent.assert_exactly_once();
    assert_eq!(
        applied[..3],
        [
            "make sure account msp-nik exists",
            "rotate the password of msp-nik to version 1",
            "add msp-nik to Administrators"
        ]
    );
    let mut check_in = applied[3..].to_vec();
    check_in.sort();
    assert_eq!(
        check_in,
        [
            "end the logons and clear the cached sudo credentials of msp-nik",
            "remove msp-nik from Administrators",
            "rotate the password of msp-nik to version 2"
        ]
    );
    let sentences = msp.audit_shows(&setup.tenant_id, |s| {
        s == "agent of W11-L-PASSWORD verified: msp-nik was removed from Administrators"
    });
    for expected in [
        "agent of W11-L-PASSWORD verified: account msp-nik exists",
        "agent of W11-L-PASSWORD verified: the password of msp-nik was rotated to version 1",
        "agent of W11-L-PASSWORD verified: msp-nik was added to Administrators",
        "agent of W11-L-PASSWORD verified: the password of msp-nik was rotated to version 2",
        "nik@nikpot.com logged into the Desktop W11-L-PASSWORD with account msp-nik",
    ] {
        assert!(
            sentences.iter().any(|s| s == expected),
            "{expected:?} not in {sentences:#?}"
        );
    }
    // The inventory: the agent reported the admin group, and the stranger shows as drift.
    msp.audit_shows(&setup.tenant_id, |s| {
        s.starts_with("agent of W11-L-PASSWORD reported the members of Administrators:")
            && s.contains("intruder")
    });
    wait_for(
        "the inventory to show the unmanaged admin",
        || agent.log(),
        || {
            let drift = msp.ok(
                "GET",
                &format!("/v1/tenants/{}/drift", setup.tenant_id),
                &msp.admin,
                None,
            );
            drift["drift"]
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["member"] == "intruder" && d["managed"] == false)
        },
    );
}

#[test]
fn shared_mode_survives_server_restarts_while_the_agent_is_connected() {
    let mut msp = Msp::start();
    let setup = msp.setup("shared");
    let shared = setup.shared_account.clone().expect("a shared account");
    let mut agent = Agent::new("W10-local");
    agent.enroll_and_run(&msp, &setup);

    let (session, account) = msp.check_out(&setup, &agent);
    assert_eq!(account, shared);
    // The agent holds its event feed: the server goes away and comes back on the same data.
    msp.stop_server();
    msp.start_server();
    let password = msp.reveal(&setup, &session);
    assert!(agent.has_account(&shared));
    assert!(agent.is_admin(&shared));
    assert!(agent.password_is(&shared, &password));

    let granted_hash = agent.shadow_hash(&shared).unwrap();
    msp.check_in(&setup, &session);
    // And again right away, while the agent may be carrying out the check-in.
    msp.stop_server();
    msp.start_server();
    wait_for(
        "the shared account to leave the admin group and get a new password",
        || format!("{}\n{}", agent.log(), msp.server_log()),
        || !agent.is_admin(&shared) && agent.shadow_hash(&shared).unwrap() != granted_hash,
    );
    assert!(agent.has_account(&shared), "the shared account is kept");
    assert!(!agent.password_is(&shared, &password));
    settle(&msp, &agent);
    let applied = agent.assert_exactly_once();
    // Grant (3), check-in: out of the group, the password, the post-session actions.
    assert_eq!(applied.len(), 6, "{applied:#?}");

    msp.audit_shows(&setup.tenant_id, |s| {
        s == format!("nik@nikpot.com accessed workstation W10-local with account {shared}")
    });
    msp.audit_shows(&setup.tenant_id, |s| {
        s == format!("agent of W10-local verified: {shared} was removed from Administrators")
    });
}

#[test]
fn ephemeral_accounts_are_applied_exactly_once_through_agent_crashes() {
    let msp = Msp::start();
    let setup = msp.setup("ephemeral");
    msp.set_policy(&setup.tenant_id, |p| {
        p["on_check_in"] = json!("delete_account");
        p["reuse_existing_account"] = json!(false);
    });
    let mut agent = Agent::new("W11-EPHEMERAL");
    // The worst moment: request 2 (the first password) applied, the agent gone before it
    // could report it.
    agent.run_flags = vec!["--crash-before-reporting".into(), "2".into()];
    agent.enroll_and_run(&msp, &setup);
    let (session, account) = msp.request_check_out(&setup, &agent.computer_id());
    assert!(account.starts_with("nik_"), "{account}");
    assert_eq!(agent.wait_exit(), None, "the agent died of a signal");
    assert_eq!(agent.steps("applied").get(&(2, 1)), Some(&1));
    assert_eq!(agent.steps("reported").get(&(2, 1)), None);
    let hash = agent.shadow_hash(&account).expect("the password was set");
    agent.run_flags.clear();
    agent.run();
    msp.wait_active(&setup, &agent, &session);
    let password = msp.reveal(&setup, &session);
    assert!(agent.password_is(&account, &password));
    assert_eq!(
        agent.shadow_hash(&account).unwrap(),
        hash,
        "the password was not set again after the restart (a new salt would show)"
    );
    assert!(agent.is_admin(&account));

    // SIGKILL right after asking for the check-in, and again during the next check-out.
    msp.check_in(&setup, &session);
    agent.kill();
    agent.run();
    wait_for(
        "the ephemeral account to be deleted",
        || agent.log(),
        || agent.is_gone(&account),
    );

    let (second, again) = msp.request_check_out(&setup, &agent.computer_id());
    assert_ne!(again, account, "a fresh account every time");
    std::thread::sleep(std::time::Duration::from_millis(150));
    agent.kill();
    agent.run();
    msp.wait_active(&setup, &agent, &second);
    assert!(agent.is_admin(&again));
    assert!(agent.password_is(&again, &msp.reveal(&setup, &second)));
    msp.check_in(&setup, &second);
    wait_for(
        "the second account to be deleted",
        || agent.log(),
        || agent.is_gone(&again),
    );
    settle(&msp, &agent);

    let applied = agent.assert_exactly_once();
    let requests: Vec<u64> = agent.steps("applying").keys().map(|k| k.0).collect();
    let last = *requests.last().unwrap();
    assert_eq!(
        requests,
        (1..=last).collect::<Vec<_>>(),
        "every request applied, none twice: {applied:#?}"
    );
    assert_eq!(
        applied
            .iter()
            .filter(|op| op.starts_with("delete account"))
            .count(),
        2
    );
    msp.audit_shows(&setup.tenant_id, |s| {
        s == format!("agent of W11-EPHEMERAL verified: account {again} was deleted")
    });
}

/// The base32 secret in an `otpauth://` URI.
fn secret_of(uri: &str) -> String {
    uri.split(['?', '&'])
        .find_map(|part| part.strip_prefix("secret="))
        .expect("a secret in the URI")
        .to_owned()
}

fn code_now(secret: &str) -> String {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .unwrap();
    let totp = totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        6,
        1,
        30,
        bytes,
        None,
        "test".into(),
    )
    .unwrap();
    totp.generate_current().unwrap()
}

/// nik's computer `hostname`, enrolled with its agent running, after one session of nik's
/// that left the agent with nik's offline secret: the setup, the agent, nik's account and
/// the secret (base32).
fn offline_ready(msp: &Msp, hostname: &str) -> (support::Setup, Agent, String, String) {
    let setup = msp.setup("named");
    let mut agent = Agent::new(hostname);
    agent.enroll_and_run(msp, &setup);
    let (session, account) = msp.check_out(&setup, &agent);
    let offline = msp.ok(
        "POST",
        &format!(
            "/v1/tenants/{}/computers/{}/offline-secret",
            setup.tenant_id,
            agent.computer_id()
        ),
        &setup.nik_token,
        Some(json!({})),
    );
    let secret = secret_of(offline["otpauth_uri"].as_str().unwrap());
    msp.check_in(&setup, &session);
    wait_for(
        "the check-in to be carried out",
        || agent.log(),
        || !agent.is_admin(&account),
    );
    settle(msp, &agent);
    wait_for(
        "the agent to keep the offline secret",
        || agent.log(),
        || {
            std::fs::read_to_string(agent.state().join("offline-secrets.json"))
                .is_ok_and(|text| text.contains(&secret))
        },
    );
    (setup, agent, account, secret)
}

/// `latchkey-agent offline-login --technician nik --code CODE` on `agent`'s state and root.
fn offline_login(agent: &Agent, code: &str) -> std::process::Output {
    let state = agent.state();
    let root = agent.root();
    agent.command(&[
        "offline-login",
        "--technician",
        "nik",
        "--code",
        code,
        "--state",
        state.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ])
}

/// A code that is not `code`.
fn wrong(code: &str) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
}

#[test]
fn offline_login_works_without_the_server_once_per_code_and_is_uploaded_later() {
    let mut msp = Msp::start();
    let (setup, mut agent, account, secret) = offline_ready(&msp, "W11-OFFLINE");

    msp.stop_server();
    let login = |code: &str| offline_login(&agent, code);
    let code = code_now(&secret);
    let refused = login(&wrong(&code));
    assert_eq!(
        refused.status.code(),
        Some(1),
        "{}",
        support::said(&refused)
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("--code: the code is not valid for technician nik"),
        "{said}"
    );
    assert!(!agent.is_admin(&account));

    let granted = login(&code);
    assert!(granted.status.success(), "{}", support::said(&granted));
    let stdout = String::from_utf8_lossy(&granted.stdout);
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("the password is printed")
        .to_owned();
    assert!(agent.is_admin(&account), "granted: in /etc/group");
    assert!(
        agent.password_is(&account, &password),
        "the printed password opens it"
    );

    let reused = login(&code);
    assert_eq!(reused.status.code(), Some(1), "{}", support::said(&reused));
    let said = String::from_utf8_lossy(&reused.stderr);
    assert!(
        said.contains("this code was already used for msp-nik"),
        "{said}"
    );
    let outbox_dir = agent.state().join("outbox");
    let outbox = || std::fs::read_dir(&outbox_dir).unwrap().count();
    assert_eq!(outbox(), 1, "the login is buffered");

    // An agent restart while offline loses nothing.
    agent.kill();
    agent.run();

    // The tenant's maximum session length passes while still offline (made to have passed,
    // under the agent's state lock): the daemon takes the account back out of the admin
    // group, and the printed password no longer opens it.
    {
        let lock = std::fs::File::open(agent.state().join("state.lock")).unwrap();
        lock.lock().unwrap();
        let path = agent.state().join("offline.json");
        let mut offline: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let until = &mut offline["grants"][0]["until"];
        assert!(until.is_string(), "{offline}");
        *until = json!("2020-01-01T00:00:00Z");
        std::fs::write(path.with_extension("tmp"), offline.to_string()).unwrap();
        std::fs::rename(path.with_extension("tmp"), &path).unwrap();
    }
    wait_for(
        "the expired offline access to be taken back, the printed password with it",
        || agent.log(),
        || !agent.is_admin(&account) && !agent.password_is(&account, &password),
    );

    msp.start_server();
    msp.audit_shows(&setup.tenant_id, |s| {
        s.starts_with("nik@nikpot.com logged in offline to W11-OFFLINE with account msp-nik at")
    });
    wait_for("the outbox to be emptied", || agent.log(), || outbox() == 0);
    // The login as uploaded runs for the tenant's maximum session length: the server ends
    // it explicitly rather than leave it running with a password nobody knows (issue 12).
    msp.audit_shows(&setup.tenant_id, |s| {
        s.starts_with("the offline login to W11-OFFLINE with account msp-nik (granted until")
            && s.contains("ends now, as W11-OFFLINE is back online")
    });
    settle(&msp, &agent);
    assert!(!agent.is_admin(&account));
    agent.assert_exactly_once();
}

/// Issue 12, item 5: an offline login uploaded while it runs is ended by the server, with an
/// event that says so: out of the admin group, a new password, its logons ended.
#[test]
fn an_offline_login_uploaded_while_it_runs_is_ended_explicitly() {
    let mut msp = Msp::start();
    let (setup, agent, account, secret) = offline_ready(&msp, "W11-BACK");
    msp.stop_server();
    let granted = offline_login(&agent, &code_now(&secret));
    assert!(granted.status.success(), "{}", support::said(&granted));
    let stdout = String::from_utf8_lossy(&granted.stdout);
    let password = stdout
        .lines()
        .find_map(|l| l.strip_prefix("password: "))
        .expect("the password is printed")
        .to_owned();
    assert!(agent.is_admin(&account));
    msp.start_server();
    msp.audit_shows(&setup.tenant_id, |s| {
        s.contains("ends now, as W11-BACK is back online: Latchkey takes the account out of the admin group")
    });
    wait_for(
        "the server to take the offline access back",
        || agent.log(),
        || !agent.is_admin(&account) && !agent.password_is(&account, &password),
    );
    msp.audit_shows(&setup.tenant_id, |s| {
        s == "agent of W11-BACK verified: the logons of msp-nik were ended (processes left: 0) \
              and its cached sudo credentials cleared"
    });
    settle(&msp, &agent);
    let offline: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(agent.state().join("offline.json")).unwrap())
            .unwrap();
    assert_eq!(
        offline["grants"],
        json!([]),
        "the agent has nothing left to take back"
    );
    agent.assert_exactly_once();
}

#[test]
fn wrong_offline_codes_lock_the_account_across_runs_and_the_lockout_is_audited() {
    let mut msp = Msp::start();
    let (setup, agent, account, secret) = offline_ready(&msp, "W11-LOCKOUT");
    msp.stop_server();

    // Each try is a new run of the command: the count is in the state directory.
    for left in (1..=4).rev() {
        let refused = offline_login(&agent, &wrong(&code_now(&secret)));
        assert_eq!(
            refused.status.code(),
            Some(1),
            "{}",
            support::said(&refused)
        );
        let said = String::from_utf8_lossy(&refused.stderr);
        let plural = if left == 1 { "" } else { "s" };
        assert!(
            said.contains(&format!(
                "{left} more wrong code{plural} lock offline login for msp-nik for 15 minutes"
            )),
            "{said}"
        );
    }
    let locked = offline_login(&agent, &wrong(&code_now(&secret)));
    assert_eq!(locked.status.code(), Some(4), "{}", support::said(&locked));
    let said = String::from_utf8_lossy(&locked.stderr);
    assert!(
        said.contains(
            "that was 5 wrong codes within 15 minutes: offline login for msp-nik is \
                       locked until"
        ),
        "{said}"
    );
    // The right code is refused too, in a later run, and nothing is granted.
    let refused = offline_login(&agent, &code_now(&secret));
    assert_eq!(
        refused.status.code(),
        Some(4),
        "{}",
        support::said(&refused)
    );
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("offline login for msp-nik is locked until")
            && said.contains("no code is checked until then"),
        "{said}"
    );
    assert!(!agent.is_admin(&account));
    let lockouts_dir = agent.state().join("outbox-lockouts");
    let lockouts = || std::fs::read_dir(&lockouts_dir).unwrap().count();
    assert_eq!(lockouts(), 1, "the lockout is buffered once");
    use std::os::unix::fs::PermissionsExt;
    let attempts = agent.state().join("offline-attempts.json");
    let mode = std::fs::metadata(&attempts).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // Back online, the daemon uploads it and the audit trail says so.
    msp.start_server();
    msp.audit_shows(&setup.tenant_id, |s| {
        s.starts_with(
            "agent of W11-LOCKOUT locked offline login to account msp-nik (of nik@nikpot.com) \
             after 5 wrong TOTP codes at",
        )
    });
    wait_for(
        "the lockout outbox to be emptied",
        || agent.log(),
        || lockouts() == 0,
    );
    let sentences = msp.audit_sentences(&setup.tenant_id);
    let recorded = sentences
        .iter()
        .filter(|s| s.contains("locked offline login"))
        .count();
    assert_eq!(recorded, 1, "recorded once: {sentences:#?}");
}

#[test]
fn an_account_latchkey_did_not_create_is_never_touched() {
    let msp = Msp::start();
    let setup = msp.setup("named");
    let mut agent = Agent::new("W11-HANDMADE");
    // Someone made a local msp-nik by hand (through the backend, but outside the agent's
    // state: its UID record is elsewhere).
    let elsewhere = tempfile::tempdir().unwrap();
    let backend = latchkey_agent::os::linux::LinuxShadow::new(
        agent.root(),
        elsewhere.path().join("uids.json"),
    );
    latchkey_agent::os::AccountBackend::ensure_account(&backend, "msp-nik").unwrap();
    let before = agent.shadow_hash("msp-nik");
    agent.enroll_and_run(&msp, &setup);

    let (session, _) = msp.request_check_out(&setup, &agent.computer_id());
    wait_for(
        "the check-out to fail",
        || agent.log(),
        || msp.session(&setup.nik_token, &session)["status"] == "failed",
    );
    assert!(!agent.is_admin("msp-nik"));
    assert_eq!(
        agent.shadow_hash("msp-nik"),
        before,
        "its password untouched"
    );
    msp.audit_shows(&setup.tenant_id, |s| {
        s.starts_with("agent of W11-HANDMADE could not make sure account msp-nik exists")
            && s.ends_with(
                "account msp-nik exists and was not created by Latchkey; refusing to manage it",
            )
    });
}

#[test]
fn a_request_that_fails_on_the_machine_is_reported_with_the_reason() {
    let msp = Msp::start();
    let setup = msp.setup("named");
    msp.set_policy(&setup.tenant_id, |p| {
        p["admin_group"] = json!("lk-no-such-group");
    });
    let mut agent = Agent::new("W11-NOGROUP");
    agent.enroll_and_run(&msp, &setup);

    let (session, account) = msp.request_check_out(&setup, &agent.computer_id());
    wait_for(
        "the check-out to fail",
        || agent.log(),
        || msp.session(&setup.nik_token, &session)["status"] == "failed",
    );
    msp.audit_shows(&setup.tenant_id, |s| {
        s.starts_with("agent of W11-NOGROUP could not add msp-nik to lk-no-such-group")
            && s.contains("group lk-no-such-group does not exist on this machine")
    });
    assert_eq!(agent.steps("failed").len(), 1, "{:#?}", agent.journal());
    // The account the failed grant created (with a password nobody was shown) goes again.
    wait_for(
        "the account the failed grant made to be deleted",
        || agent.log(),
        || !agent.has_account(&account),
    );
    msp.audit_shows(&setup.tenant_id, |s| {
        s == "agent of W11-NOGROUP verified: account msp-nik was deleted"
    });
}

/// A Linux machine enrolled without naming its admin group: the agent finds `wheel` in its
/// group file, and a tenant whose policy names no group (the default) uses it.
#[test]
fn a_tenant_policy_without_an_admin_group_uses_the_one_the_agent_found() {
    let msp = Msp::start();
    let setup = msp.setup("named");
    let tenant = msp.ok(
        "GET",
        &format!("/v1/tenants/{}", setup.tenant_id),
        &msp.admin,
        None,
    );
    assert_eq!(tenant["policy"]["admin_group"], json!(null), "the default");
    let mut agent = Agent::new("RHEL-9");
    // A Fedora-like group file: `wheel`, neither `sudo` nor `admin`.
    let root = agent.root();
    let group_file = root.join("etc/group");
    let groups: String = std::fs::read_to_string(&group_file)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("sudo:") && !l.starts_with("admin:") && !l.starts_with("wheel:"))
        .map(|l| format!("{l}\n"))
        .chain(["wheel:x:10:\n".to_owned()])
        .collect();
    std::fs::write(&group_file, groups).unwrap();
    let enrolled = agent.enroll_with(
        &msp.url(),
        &setup.enrollment_token,
        &["--root", root.to_str().unwrap()],
    );
    assert!(enrolled.status.success(), "{enrolled:?}");
    agent.run();
    let (session, account) = msp.request_check_out(&setup, &agent.computer_id());
    wait_for(
        "the session to be active",
        || agent.log(),
        || msp.session(&setup.nik_token, &session)["status"] == "active",
    );
    assert_eq!(agent.members("wheel"), vec![account]);
}
