//! What a person sees when something is wrong: one line naming the flag or cause and what to
//! do, and a non-zero exit, for a bad server URL, an unknown or used enrollment token, a
//! revoked agent credential and a computer that was never enrolled. (Wrong and reused TOTP
//! codes are shown in `end_to_end.rs`, on the real flow.)

mod support;

use support::{said, wait_for, Agent, Msp};

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_server_url_is_named_with_its_flag() {
    let agent = Agent::new("W11-NOWHERE");
    let not_a_url = agent.enroll("latchkey.example.com", "lk_whatever");
    assert_eq!(not_a_url.status.code(), Some(1), "{}", said(&not_a_url));
    let message = stderr(&not_a_url);
    assert!(
        message
            .contains("latchkey-agent enroll: error: --server \"latchkey.example.com\": not a URL"),
        "{message}"
    );

    // A URL nothing listens on (port 9 on loopback is discard, closed here).
    let unreachable = agent.enroll("http://127.0.0.1:9", "lk_whatever");
    assert_eq!(unreachable.status.code(), Some(1), "{}", said(&unreachable));
    let message = stderr(&unreachable);
    assert!(
        message.contains("--server http://127.0.0.1:9: cannot reach the server"),
        "{message}"
    );
    assert!(
        !agent.state().join("credential.json").exists(),
        "nothing was enrolled"
    );
}

#[test]
fn an_unknown_or_used_enrollment_token_is_refused_clearly() {
    let msp = Msp::start();
    let setup = msp.setup("named");
    let first = Agent::new("W11-FIRST");
    let enrolled = first.enroll(&msp.url(), &setup.enrollment_token);
    assert!(enrolled.status.success(), "{}", said(&enrolled));
    assert!(
        String::from_utf8_lossy(&enrolled.stdout).starts_with("enrolled W11-FIRST as computer ")
    );
    let mode = |p: &std::path::Path| {
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(p).unwrap().permissions())
            & 0o777
    };
    assert_eq!(mode(&first.state()), 0o700);
    assert_eq!(mode(&first.state().join("credential.json")), 0o600);

    let second = Agent::new("W11-SECOND");
    let used = second.enroll(&msp.url(), &setup.enrollment_token);
    assert_eq!(used.status.code(), Some(1), "{}", said(&used));
    let message = stderr(&used);
    assert!(
        message.contains("--token: the enrollment token was already used or has expired"),
        "{message}"
    );
    assert!(!second.state().join("credential.json").exists());

    let unknown = second.enroll(&msp.url(), &support::admin_token());
    assert_eq!(unknown.status.code(), Some(1), "{}", said(&unknown));
    let message = stderr(&unknown);
    assert!(
        message.contains("--token: the server does not know this enrollment token"),
        "{message}"
    );

    // The first computer cannot be enrolled over by accident.
    let again = first.enroll(&msp.url(), &msp.enrollment_token(&setup.tenant_id));
    assert_eq!(again.status.code(), Some(1), "{}", said(&again));
    assert!(
        stderr(&again).contains("this computer is already enrolled"),
        "{}",
        stderr(&again)
    );
}

#[test]
fn a_revoked_credential_stops_the_daemon_with_a_message_to_re_enroll() {
    let msp = Msp::start();
    let setup = msp.setup("named");
    let mut agent = Agent::new("W11-REVOKED");
    agent.enroll_and_run(&msp, &setup);
    wait_for(
        "the daemon to be connected (its first inventory)",
        || agent.log(),
        || {
            msp.audit_sentences(&setup.tenant_id)
                .iter()
                .any(|s| s.starts_with("agent of W11-REVOKED reported the members of"))
        },
    );
    // One daemon per state directory.
    let state = agent.state();
    let root = agent.root();
    let second = agent.command(&[
        "run",
        "--state",
        state.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert_eq!(second.status.code(), Some(1), "{}", said(&second));
    assert!(
        stderr(&second)
            .contains("another latchkey-agent daemon is running with this state directory"),
        "{}",
        stderr(&second)
    );

    // The token id is the 32 hex digits after `lk_`.
    let token = agent.token();
    let token_id = &token[3..35];
    msp.ok(
        "DELETE",
        &format!("/v1/tokens/{token_id}"),
        &msp.admin,
        None,
    );
    assert_eq!(agent.wait_exit(), Some(3), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("latchkey-agent run: error: the server at ")
            && log.contains("refused this agent's credential")
            && log.contains("Re-enroll this computer with a new enrollment token"),
        "{log}"
    );
    assert!(!log.contains(&token), "the credential is never printed");

    // Started again, it says the same at once.
    agent.run();
    assert_eq!(agent.wait_exit(), Some(3), "{}", agent.log());
}

#[test]
fn a_computer_that_was_never_enrolled_is_told_to_enroll_and_has_no_offline_secrets() {
    let mut agent = Agent::new("W11-NEW");
    agent.run();
    assert_eq!(agent.wait_exit(), Some(1));
    let log = agent.log();
    assert!(
        log.contains("this computer is not enrolled")
            && log.contains("latchkey-agent enroll --server URL"),
        "{log}"
    );

    let state = agent.state();
    let root = agent.root();
    let login = agent.command(&[
        "offline-login",
        "--shared",
        "--name",
        "Nik Potter",
        "--code",
        "123456",
        "--state",
        state.to_str().unwrap(),
        "--root",
        root.to_str().unwrap(),
    ]);
    assert_eq!(login.status.code(), Some(1), "{}", said(&login));
    assert!(
        stderr(&login).contains("this computer has no offline secrets yet"),
        "{}",
        stderr(&login)
    );
    // The shared account needs a name for the audit trail; a name that is no name is refused.
    for (name, says) in [
        (None, "--name: the shared account needs your name"),
        (Some(" "), "--name claimed_by must be 1-100 characters"),
        (
            Some("two\nlines"),
            "--name claimed_by must be 1-100 characters",
        ),
    ] {
        let mut args = vec!["offline-login", "--shared", "--code", "123456"];
        if let Some(name) = name {
            args.extend_from_slice(&["--name", name]);
        }
        args.extend_from_slice(&["--state", state.to_str().unwrap()]);
        args.extend_from_slice(&["--root", root.to_str().unwrap()]);
        let refused = agent.command(&args);
        assert_eq!(refused.status.code(), Some(2), "{}", said(&refused));
        assert!(stderr(&refused).contains(says), "{}", stderr(&refused));
    }
    let malformed = agent.command(&[
        "offline-login",
        "--technician",
        "nik",
        "--code",
        "12ab",
        "--state",
        state.to_str().unwrap(),
    ]);
    assert_eq!(malformed.status.code(), Some(1));
    assert!(
        stderr(&malformed).contains("--code must be the 6 digits the authenticator app shows"),
        "{}",
        stderr(&malformed)
    );
    let neither = agent.command(&["offline-login", "--code", "123456"]);
    assert_eq!(
        neither.status.code(),
        Some(2),
        "clap says --technician or --shared"
    );
}
