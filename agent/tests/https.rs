//! The real agent talks HTTPS to the real `latchkey serve`, whose certificate comes from a
//! throw-away CA: it trusts that CA only when given it with `--ca-file` (recorded at
//! enrollment, so `run` needs no flag), and refuses a server whose certificate it cannot
//! check, before it sends the enrollment token.

mod support;

use support::ca::Ca;
use support::{wait_for, Agent, Msp};

#[test]
fn the_agent_enrolls_and_runs_over_https_trusting_the_ca_file() {
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::new(certs.path(), "msp");
    let issued = ca.issue(certs.path(), "latchkey-one", 1);
    let msp = Msp::start_https(&ca, &issued);
    assert!(msp.url().starts_with("https://127.0.0.1:"), "{}", msp.url());
    let setup = msp.setup("named");
    let mut agent = Agent::new("W11-TLS");

    // Not trusting the server's CA (the system's roots only, or another CA): refused, and
    // the enrollment token is still unused.
    let other = Ca::new(certs.path(), "other");
    for flags in [vec![], vec!["--ca-file", other.file.to_str().unwrap()]] {
        let refused = agent.enroll_with(&msp.url(), &setup.enrollment_token, &flags);
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert_eq!(refused.status.code(), Some(1), "{flags:?}: {stderr}");
        assert!(stderr.contains("certificate"), "{stderr}");
        assert!(stderr.contains("--ca-file"), "{stderr}");
        assert!(!stderr.contains(&setup.enrollment_token), "{stderr}");
        assert!(!agent.state().join("credential.json").exists());
    }
    // A CA file that holds no certificate is said so.
    let not_pem = certs.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let refused = agent.enroll_with(
        &msp.url(),
        &setup.enrollment_token,
        &["--ca-file", not_pem.to_str().unwrap()],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "--ca-file {}: no certificate in it",
            not_pem.display()
        )),
        "{stderr}"
    );

    // With the CA, given through the environment this time.
    let enrolled = agent.command_with_env(
        &[
            "enroll",
            "--server",
            &msp.url(),
            "--token",
            &setup.enrollment_token,
            "--state",
            agent.state().to_str().unwrap(),
            "--hostname",
            &agent.hostname,
            // As `enroll_with` does: the throw-away root's group, not this host's `sudo`.
            "--admin-group",
            support::ADMIN_GROUP,
        ],
        &[("LATCHKEY_CA_FILE", ca.file.to_str().unwrap())],
    );
    assert!(enrolled.status.success(), "{enrolled:?}");
    assert_eq!(
        agent.credential()["ca_file"].as_str(),
        ca.file.to_str(),
        "the CA file is recorded for run"
    );

    // The daemon holds its feed over HTTPS with the recorded CA: a check-out is granted and
    // a check-in taken back.
    agent.run();
    let (session, account) = msp.check_out(&setup, &agent);
    assert!(agent.is_admin(&account), "{}", agent.log());
    msp.check_in(&setup, &session);
    wait_for(
        "the access to be taken back",
        || agent.log(),
        || !agent.is_admin(&account),
    );
    wait_for(
        "the agent's feed to be empty",
        || agent.log(),
        || msp.feed_is_empty(&agent),
    );
    agent.assert_exactly_once();
}
