//! The real agent with two real servers on one PostgreSQL database: enrolled with both URLs,
//! it keeps working through the second when the first is killed (SIGKILL), and the second
//! takes over the process managers, so a check-in and a new check-out through it reach the
//! machine.

mod support;

use support::{wait_for, Agent, Msp};

#[test]
fn the_agent_moves_to_the_other_server_when_its_server_dies() {
    let database = latchkey_store::postgres::testing::TestDatabase::create_blocking();
    let (mut msp, other, _other_data) = Msp::start_pair(database.url());
    let setup = msp.setup("named");
    let mut agent = Agent::new("W11-FAILOVER");
    let both = format!("{},http://{}", msp.url(), other.addr);
    let enrolled = agent.enroll(&both, &setup.enrollment_token);
    assert!(enrolled.status.success(), "{enrolled:?}");
    assert_eq!(agent.credential()["server"], both.as_str());
    agent.run();

    let (first, account) = msp.check_out(&setup, &agent);
    assert_eq!(account, "msp-nik");
    assert!(agent.is_admin(&account));
    let password = msp.reveal(&setup, &first);
    assert!(agent.password_is(&account, &password));

    // The first server dies; the MSP and the agent go on with the second.
    msp.stop_server();
    msp.switch_to(other);
    msp.check_in(&setup, &first);
    wait_for(
        "the access to be taken back through the second server",
        || agent.log(),
        || !agent.is_admin(&account) && !agent.password_is(&account, &password),
    );
    let (second, again) = msp.check_out(&setup, &agent);
    assert_eq!(again, account);
    assert!(agent.is_admin(&account));
    assert!(agent.password_is(&account, &msp.reveal(&setup, &second)));
    assert!(
        agent.log().contains("moved to another server"),
        "the agent says it moved: {}",
        agent.log()
    );
    msp.check_in(&setup, &second);
    wait_for(
        "the second check-in to reach the machine",
        || agent.log(),
        || !agent.is_admin(&account),
    );
    wait_for(
        "the agent's feed to be empty",
        || agent.log(),
        || msp.feed_is_empty(&agent),
    );
    let applied = agent.assert_exactly_once();
    assert_eq!(
        applied
            .iter()
            .filter(|op| op.starts_with("add msp-nik"))
            .count(),
        2,
        "{applied:#?}"
    );
    msp.audit_shows(&setup.tenant_id, |s| {
        s == "agent of W11-FAILOVER verified: msp-nik was removed from Administrators"
    });
}
