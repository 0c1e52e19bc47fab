//! A database blip does not stop the server: when every connection to PostgreSQL is cut (as
//! `pg_ctl restart -m fast` cuts them: `57P01 terminating connection due to administrator
//! command`), the server keeps answering, reports the process managers' failure in
//! `/healthz` and `/metrics` while it lasts, restarts them with back-off (the leader waits
//! to lead again), and the next session runs through; nothing acknowledged is lost.

mod support;

use serde_json::{json, Value};
use std::time::{Duration, Instant};
use support::msp::{postgres_database, Msp};

/// Cuts every connection to the test database but this one, as a database restart would.
fn cut_every_connection(database: &latchkey_store::postgres::testing::TestDatabase) -> u64 {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = database.raw_connection().await;
        let row = client
            .query_one(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                 WHERE datname = current_database() AND pid <> pg_backend_pid()",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0) as u64
    })
}

fn health(msp: &Msp) -> (u16, Value) {
    msp.server.json("GET", "/healthz", None, None)
}

#[test]
fn the_server_stays_up_through_a_database_restart_and_resumes() {
    let database = postgres_database();
    let mut msp = Msp::start_with(&[("LATCHKEY_STORE", database.url())]);
    let mut setup = msp.setup("named", "W11-BLIP");
    let (before, _) = msp.check_out(&mut setup);
    msp.check_in(&mut setup, &before);
    support::eventually(
        "the process managers to run",
        Duration::from_secs(60),
        || (health(&msp).1["process_managers"] == "running").then_some(()),
    );

    let cut = cut_every_connection(&database);
    assert!(cut >= 2, "the server had connections to cut ({cut})");

    // Still up, and it says what is wrong while it is; then it recovers by itself.
    let mut saw_degraded = false;
    let mut last = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = health(&msp);
        assert!(msp.server.is_running(), "the server exited");
        saw_degraded |= body["status"] == "degraded";
        if status == 200 && body["status"] == "ok" && body["process_managers"] == "running" {
            break;
        }
        last = body;
        assert!(
            Instant::now() < deadline,
            "never healthy again: {last}\n{}",
            std::fs::read_to_string(msp.data.path().join("server.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = last;
    assert!(msp.server.is_running());
    let restarts = msp.metric("latchkey_process_manager_restarts");
    assert!(
        restarts >= 1.0 || saw_degraded,
        "the failure was noticed and the process managers restarted ({restarts})"
    );

    // A whole session after the blip: written, provisioned by the restarted process
    // managers, taken back.
    let (after, _) = msp.check_out(&mut setup);
    msp.check_in(&mut setup, &after);
    for session in [&before, &after] {
        let status = msp.session_status(&setup.nik_token, session);
        assert_eq!(status, "checked_in", "{session}");
    }
    let (_, tenant) = msp.call(
        "GET",
        &format!("/v1/tenants/{}", setup.tenant_id),
        &msp.admin,
        json!({}),
    );
    assert_eq!(tenant["name"], "customer-1");
}
