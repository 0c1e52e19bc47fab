//! The real agent on the server's event feed (`GET /v1/agent/feed`): it holds one quiet
//! connection the server pushes its requests through, never long-polls, and stops with exit
//! code 3 when the server ends the feed because its credential was revoked. (The 404
//! fallback to the long poll, repeated lists and a silent feed are unit tests of `daemon` and
//! `client`, against stub servers.)

mod support;

use support::{wait_for, Agent, Msp};

/// Run flags that leave the server alone but for the feed: no long poll could answer in
/// time, and the chores are an hour apart.
fn quiet_flags() -> Vec<String> {
    [
        "--poll-seconds",
        "60",
        "--inventory-seconds",
        "3600",
        "--secrets-seconds",
        "3600",
    ]
    .map(String::from)
    .to_vec()
}

/// Requests the server answered on `route`, whatever their method and status.
fn requests(msp: &Msp, route: &str) -> f64 {
    msp.metric(
        "latchkey_http_requests_total",
        &[&format!("route=\"{route}\"")],
    )
}

#[test]
fn the_daemon_holds_one_event_feed_and_never_polls() {
    let msp = Msp::start();
    let setup = msp.setup("named");
    let mut agent = Agent::new("W11-FEED");
    agent.run_flags = quiet_flags();
    agent.enroll_and_run(&msp, &setup);
    wait_for(
        "the agent to hold the event feed",
        || format!("{}\n{}", agent.log(), msp.metrics()),
        || msp.metric("latchkey_agent_polls_waiting", &[]) == 1.0,
    );

    // Three requests, the last written only after the agent reported the first two: each
    // reaches the agent as the feed pushes it.
    let (session, account) = msp.check_out(&setup, &agent);
    assert!(agent.is_admin(&account));
    assert!(agent.password_is(&account, &msp.reveal(&setup, &session)));
    msp.check_in(&setup, &session);
    wait_for(
        "the access to be taken back",
        || agent.log(),
        || !agent.is_admin(&account),
    );
    // (Not `settle`: asking the long poll whether the feed is empty would count as a poll.)
    // Grant (3), check-in: out of the group, the password, the post-session actions.
    wait_for(
        "the six requests to be reported",
        || format!("{:#?}", agent.journal()),
        || agent.steps("reported").len() == 6,
    );
    let applied = agent.assert_exactly_once();
    assert_eq!(applied.len(), 6, "{applied:#?}");

    let metrics = msp.metrics();
    assert_eq!(
        requests(&msp, "/v1/agent/commands"),
        0.0,
        "the daemon never long-polled\n{metrics}"
    );
    assert_eq!(
        requests(&msp, "/v1/agent/feed"),
        1.0,
        "one feed, held throughout\n{metrics}"
    );
    assert_eq!(msp.metric("latchkey_agent_polls_waiting", &[]), 1.0);
    assert_eq!(
        agent.log().matches("holding the event feed").count(),
        1,
        "{}",
        agent.log()
    );
}

#[test]
fn the_end_of_the_feed_for_a_revoked_credential_stops_the_daemon_with_exit_code_3() {
    let msp = Msp::start();
    let setup = msp.setup("named");
    let mut agent = Agent::new("W11-FEED-REVOKED");
    agent.run_flags = quiet_flags();
    agent.enroll_and_run(&msp, &setup);
    wait_for(
        "the agent to hold the event feed",
        || agent.log(),
        || {
            agent.log().contains("holding the event feed")
                && msp.metric("latchkey_agent_polls_waiting", &[]) == 1.0
        },
    );

    let token = agent.token();
    msp.ok(
        "DELETE",
        &format!("/v1/tokens/{}", &token[3..35]),
        &msp.admin,
        None,
    );
    // A new request changes the feed: the server checks the credential before sending it,
    // and ends the feed instead. (The chores are an hour away, so only the feed can tell.)
    msp.request_check_out(&setup, &agent.computer_id());
    assert_eq!(agent.wait_exit(), Some(3), "{}", agent.log());
    let log = agent.log();
    assert!(
        log.contains("refused this agent's credential (the agent's credential was revoked)")
            && log.contains("Re-enroll this computer with a new enrollment token"),
        "{log}"
    );
    assert!(!log.contains(&token), "the credential is never printed");
    assert!(agent.journal().is_empty(), "nothing was carried out");
}
