//! The agents' long poll on the real `latchkey` binary: a waiting poll is woken by events on
//! its own computer's stream and by nothing else, and on several servers sharing PostgreSQL a
//! request written through one server reaches an agent waiting on another at once.

mod support;

use serde_json::Value;
use std::time::{Duration, Instant};
use support::agent;
use support::msp::{postgres_database, Msp};
use support::Server;

/// Waits (up to 20 s) until `metric` of `/metrics` reads `value`.
fn metric_reaches(msp: &Msp, metric: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let seen = msp.metric(metric);
        if seen == value {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metric} stayed at {seen}, expected {value}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn operations(commands: &[Value]) -> Vec<String> {
    commands
        .iter()
        .map(|c| c["operation"]["op"].as_str().unwrap().to_owned())
        .collect()
}

/// Four computers of one tenant: X and Z long-poll, Y's agent does not. A check-out on Y
/// (which writes Y's requests) must wake neither; a check-out on Z then wakes Z's poll, and
/// by then the server has read Y's events too: exactly one more wake-up was delivered, and X
/// is still waiting. A check-out on X wakes X with its requests, long before its 60 s are up.
/// W is a barrier first: once W's poll has been woken by W's check-out, the server has read
/// every earlier event (the enrollments, which may wake X's and Z's polls once).
#[test]
fn an_event_on_one_computer_wakes_no_poll_of_another() {
    let msp = Msp::start();
    let setup = msp.setup("named", "PC-X");
    let (tenant, nik) = (&setup.tenant_id, &setup.nik_token);
    let y = msp.enroll(tenant, "PC-Y");
    let z = msp.enroll(tenant, "PC-Z");
    let w = msp.enroll(tenant, "PC-W");
    let server = &msp.server;
    std::thread::scope(|scope| {
        let x_poll = scope.spawn(|| agent::feed(server, &setup.agent.token, 60));
        let z_poll = scope.spawn(|| agent::feed(server, &z.token, 60));
        let w_poll = scope.spawn(|| agent::feed(server, &w.token, 60));
        metric_reaches(&msp, "latchkey_agent_polls_waiting", 3.0);
        msp.start_check_out(nik, tenant, &w.computer_id);
        assert_eq!(w_poll.join().unwrap().len(), 2);
        metric_reaches(&msp, "latchkey_agent_polls_waiting", 2.0);
        let settled = msp.metric("latchkey_agent_poll_wakeups");

        msp.start_check_out(nik, tenant, &y.computer_id);
        let deadline = Instant::now() + Duration::from_secs(20);
        while agent::feed(server, &y.token, 0).len() < 2 {
            assert!(Instant::now() < deadline, "Y's requests never came");
            std::thread::sleep(Duration::from_millis(20));
        }

        msp.start_check_out(nik, tenant, &z.computer_id);
        let z_got = z_poll.join().unwrap();
        assert_eq!(operations(&z_got), ["ensure_account", "rotate_password"]);
        assert_eq!(
            msp.metric("latchkey_agent_poll_wakeups"),
            settled + 1.0,
            "only Z's poll was woken: Y's events woke nobody, X was not disturbed"
        );
        assert_eq!(msp.metric("latchkey_agent_polls_waiting"), 1.0);
        assert!(!x_poll.is_finished(), "X's poll is still waiting");

        msp.start_check_out(nik, tenant, &setup.agent.computer_id);
        let x_got = x_poll.join().unwrap();
        assert_eq!(operations(&x_got), ["ensure_account", "rotate_password"]);
        assert_eq!(msp.metric("latchkey_agent_poll_wakeups"), settled + 2.0);
        assert_eq!(msp.metric("latchkey_agent_polls_waiting"), 0.0);
    });
}

/// Two servers on one PostgreSQL database. The agent waits on A; the check-out goes through
/// B, and A's poll answers with the requests (it waits 60 s, so an answer with requests can
/// only come from a wake-up). The agent reports through B; its next poll on A holds only the
/// join that followed, never a request it already reported.
#[test]
fn an_agent_waiting_on_one_server_gets_a_request_written_through_another_at_once() {
    let database = postgres_database();
    let key = latchkey_server_stores::secrets::Key::generate()
        .to_base64()
        .expose()
        .to_owned();
    let shared = [
        ("LATCHKEY_STORE", database.url()),
        ("LATCHKEY_SECRET_KEY", key.as_str()),
    ];
    let a = Msp::start_with(&shared);
    let b_data = tempfile::tempdir().unwrap();
    let mut b_env = shared.to_vec();
    b_env.push(("LATCHKEY_ADMIN_TOKEN", a.admin.as_str()));
    let b = Server::start(b_data.path(), &b_env);
    let mut setup = a.setup("named", "PC-X");
    let check_out_through_b = || {
        let path = format!(
            "/v1/tenants/{}/computers/{}/checkout",
            setup.tenant_id, setup.agent.computer_id
        );
        let body = r#"{"reason":"printer driver"}"#;
        let (status, session) = b.json("POST", &path, Some(&setup.nik_token), Some(body));
        assert!((200..300).contains(&status), "{status} {session}");
    };
    let token = setup.agent.token.clone();
    let first = std::thread::scope(|scope| {
        let poll = scope.spawn(|| agent::feed(&a.server, &token, 60));
        metric_reaches(&a, "latchkey_agent_polls_waiting", 1.0);
        check_out_through_b();
        poll.join().unwrap()
    });
    assert_eq!(operations(&first), ["ensure_account", "rotate_password"]);
    setup.agent.report(&b, &first);
    let next = agent::feed(&a.server, &token, 60);
    assert_eq!(
        operations(&next),
        ["add_to_group"],
        "the join, and no request already reported through B"
    );
}

/// The event feed: the requests at once (none yet), then each change as it comes: the
/// check-out's ensure and rotate (with the password), the join once both are reported, and
/// nothing left once that is. After the agent's credential is revoked, the next change ends
/// the feed instead of sending requests (and passwords) to it.
#[test]
fn the_event_feed_pushes_every_change_and_ends_when_the_credential_is_revoked() {
    let msp = Msp::start();
    let mut setup = msp.setup("named", "PC-X");
    let mut feed = agent::EventFeed::open(&msp.server, &setup.agent.token);
    assert_eq!(feed.commands(), Vec::<Value>::new());
    metric_reaches(&msp, "latchkey_agent_polls_waiting", 1.0);

    msp.start_check_out(&setup.nik_token, &setup.tenant_id, &setup.agent.computer_id);
    let first = feed.commands();
    assert_eq!(operations(&first), ["ensure_account", "rotate_password"]);
    assert!(first[1]["password"].as_str().is_some_and(|p| !p.is_empty()));
    setup.agent.report(&msp.server, &first);
    // Reports come one by one: the feed may first show the rotation alone.
    let mut next = feed.commands();
    if operations(&next) == ["rotate_password"] {
        next = feed.commands();
    }
    assert_eq!(operations(&next), ["add_to_group"]);
    setup.agent.report(&msp.server, &next);
    assert_eq!(feed.commands(), Vec::<Value>::new());

    let token_id = &setup.agent.token[3..35];
    let (status, _) = msp.server.json(
        "DELETE",
        &format!("/v1/tokens/{token_id}"),
        Some(&msp.admin),
        None,
    );
    assert_eq!(status, 204);
    let session = msp.start_check_out(&setup.nik_token, &setup.tenant_id, &setup.agent.computer_id);
    assert!(session["session_id"].is_string());
    let (event, data) = feed.next().expect("an end event");
    assert_eq!(event, "end", "{data}");
    assert_eq!(data["reason"], "the agent's credential was revoked");
    assert_eq!(feed.next(), None, "the feed is closed");
}

/// A long poll that is still waiting when its agent's credential is revoked hands out no
/// requests (and no passwords) when the next change comes: its answer, started while it
/// waited, is cut off, and the agent's next poll is refused.
#[test]
fn a_long_poll_whose_credential_is_revoked_while_it_waits_carries_no_passwords() {
    let msp = Msp::start();
    let setup = msp.setup("named", "PC-X");
    let token = setup.agent.token.clone();
    let (status, body) = std::thread::scope(|scope| {
        let poll = scope.spawn(|| {
            let mut reader =
                msp.server
                    .send("GET", "/v1/agent/commands?wait=60", Some(&token), None);
            let head = support::read_head_full(&mut reader);
            let body = if head.chunked {
                support::read_chunked(&mut reader)
            } else {
                let mut body = String::new();
                std::io::Read::read_to_string(&mut reader, &mut body)
                    .map(|_| body)
                    .map_err(|e| e.to_string())
            };
            (head.status, body)
        });
        metric_reaches(&msp, "latchkey_agent_polls_waiting", 1.0);
        let token_id = &token[3..35];
        let path = format!("/v1/tokens/{token_id}");
        let (status, _) = msp.server.json("DELETE", &path, Some(&msp.admin), None);
        assert_eq!(status, 204);
        msp.start_check_out(&setup.nik_token, &setup.tenant_id, &setup.agent.computer_id);
        poll.join().unwrap()
    });
    assert_eq!(status, 200, "the answer had started before the revocation");
    let body = body.expect_err("the answer is cut off, not a whole list the agent would trust");
    assert!(
        !body.contains("password"),
        "no request, no password: {body}"
    );
    let (status, problem) = msp
        .server
        .json("GET", "/v1/agent/commands", Some(&token), None);
    assert_eq!(status, 401, "{problem}");
}
