//! The whole check-out / check-in flow through the command path and the process-manager
//! runner, on the in-memory store, with a simulated agent answering provisioning requests.

use latchkey_app::commands::{execute, load, Envelope};
use latchkey_app::runner::ProcessRunner;
use latchkey_app::scheduler::Scheduler;
use latchkey_domain::computer::{
    AccountObservation, Computer, ComputerCommand, GrantStage, Operation, OsKind,
};
use latchkey_domain::ids::{AgentKeyId, ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{
    AccountName, Email, EphemeralDigits, GroupName, Hostname, SharedAccountDigits, TenantName,
    Username,
};
use latchkey_domain::policy::{JitPolicy, LoginMode};
use latchkey_domain::session::{CheckInReason, CheckOut, Session, SessionCommand, SessionStatus};
use latchkey_domain::technician::{Technician, TechnicianCommand};
use latchkey_domain::tenant::{Tenant, TenantCommand};
use latchkey_domain::Actor;
use latchkey_projections::ReadModels;
use latchkey_store::{EventStore, MemoryStore, StreamName};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

const TENANT: TenantId = TenantId(Uuid::from_u128(1));
const NIK: TechnicianId = TechnicianId(Uuid::from_u128(10));
const PC: ComputerId = ComputerId(Uuid::from_u128(100));
const SESSION: SessionId = SessionId(Uuid::from_u128(1000));

fn envelope() -> Envelope {
    Envelope {
        actor: "user:admin@msp.example".into(),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
    }
}

fn admin() -> Actor {
    Actor::User {
        email: Email::parse("admin@msp.example").unwrap(),
    }
}

fn stream(name: String) -> StreamName {
    StreamName::new(name).unwrap()
}

async fn run<A: latchkey_app::commands::Stored>(
    store: &dyn EventStore,
    name: String,
    command: A::Command,
) where
    A::Command: Clone,
{
    execute::<A, _>(store, &stream(name), &envelope(), |_| command.clone())
        .await
        .unwrap();
}

/// The machine's accounts as a simulated agent keeps them: groups and password version.
type Machine = BTreeMap<AccountName, (BTreeSet<GroupName>, Option<u32>)>;

/// The agent answers every open request of the computer, in order, verifying as it goes.
async fn agent_answers(store: &dyn EventStore, machine: &mut Machine) -> usize {
    let computer = load::<Computer>(store, &stream(PC.stream_name()))
        .await
        .unwrap()
        .state;
    let mut answered = 0;
    for (id, request) in &computer.open_requests {
        let name = request.operation.account().clone();
        match &request.operation {
            Operation::EnsureAccount { .. } => {
                machine.entry(name.clone()).or_default();
            }
            Operation::RotatePassword { version, .. } => {
                machine.get_mut(&name).unwrap().1 = Some(*version);
            }
            Operation::AddToGroup { group, .. } => {
                machine.get_mut(&name).unwrap().0.insert(group.clone());
            }
            Operation::RemoveFromGroup { group, .. } => {
                machine.get_mut(&name).unwrap().0.remove(group);
            }
            Operation::DeleteAccount { .. } => {
                machine.remove(&name);
            }
            // Nobody is logged in on this machine.
            Operation::PostSession { .. } => {}
        }
        let ended = matches!(request.operation, Operation::PostSession { .. });
        let verified = AccountObservation {
            processes: ended.then_some(0),
            sudo_cached: ended.then_some(false),
            ..match machine.get(&name) {
                Some((groups, version)) => AccountObservation {
                    present: true,
                    groups: groups.clone(),
                    password_version: *version,
                    ..AccountObservation::default()
                },
                None => AccountObservation::default(),
            }
        };
        let command = ComputerCommand::ReportSucceeded {
            request_id: *id,
            verified,
            at: chrono::Utc::now(),
        };
        run::<Computer>(store, PC.stream_name(), command).await;
        answered += 1;
    }
    answered
}

/// Runs the process managers and the agent until neither has anything left to do.
async fn settle(store: &dyn EventStore, runner: &ProcessRunner, machine: &mut Machine) {
    for _ in 0..20 {
        let handled = runner.run_until_idle().await.unwrap();
        let answered = agent_answers(store, machine).await;
        if handled == 0 && answered == 0 {
            return;
        }
    }
    panic!("the flow did not settle");
}

/// Tenant customer-1 (named mode), nik in it, W11-L-PASSWORD enrolled, and nik checked out
/// (session `SESSION`, not yet provisioned).
async fn set_up_and_check_out(s: &dyn EventStore, now: chrono::DateTime<chrono::Utc>) {
    run::<Tenant>(
        s,
        TENANT.stream_name(),
        TenantCommand::Register {
            tenant_id: TENANT,
            name: TenantName::parse("customer-1").unwrap(),
            login_mode: LoginMode::Named,
            policy: JitPolicy::default(),
            shared_account_digits: SharedAccountDigits::parse("2356").unwrap(),
            by: admin(),
            at: now,
        },
    )
    .await;
    run::<Technician>(
        s,
        NIK.stream_name(),
        TechnicianCommand::Register {
            technician_id: NIK,
            username: Username::parse("nik").unwrap(),
            email: Email::parse("nik@nikpot.com").unwrap(),
            by: admin(),
            at: now,
        },
    )
    .await;
    run::<Technician>(
        s,
        NIK.stream_name(),
        TechnicianCommand::JoinTenant {
            tenant_id: TENANT,
            by: admin(),
            at: now,
        },
    )
    .await;
    run::<Computer>(
        s,
        PC.stream_name(),
        ComputerCommand::Enroll {
            computer_id: PC,
            tenant_id: TENANT,
            hostname: Hostname::parse("W11-L-PASSWORD").unwrap(),
            os: OsKind::Windows,
            agent_key_id: AgentKeyId(Uuid::from_u128(5)),
            admin_group: None,
            by: admin(),
            at: now,
        },
    )
    .await;

    let tenant = load::<Tenant>(s, &stream(TENANT.stream_name()))
        .await
        .unwrap()
        .state;
    let technician = load::<Technician>(s, &stream(NIK.stream_name()))
        .await
        .unwrap()
        .state;
    let computer = load::<Computer>(s, &stream(PC.stream_name()))
        .await
        .unwrap()
        .state;
    let check_out = CheckOut {
        session_id: SESSION,
        tenant: tenant.state().unwrap().clone(),
        technician: technician.state().unwrap().clone(),
        computer,
        reason: None,
        ticket: None,
        duration: None,
        ephemeral_digits: EphemeralDigits::parse("000000000001").unwrap(),
        by: admin(),
        at: now,
    };
    run::<Session>(
        s,
        SESSION.stream_name(),
        SessionCommand::CheckOut(Box::new(check_out)),
    )
    .await;
}

#[tokio::test]
async fn a_named_session_is_provisioned_activated_and_revoked_through_the_runner() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let s = store.as_ref();
    let models = Arc::new(Mutex::new(ReadModels::in_memory().unwrap()));
    let runner = ProcessRunner::new(store.clone(), models);
    set_up_and_check_out(s, chrono::Utc::now()).await;
    let mut machine = Machine::new();
    settle(s, &runner, &mut machine).await;
    let session = load::<Session>(s, &stream(SESSION.stream_name()))
        .await
        .unwrap()
        .state;
    assert_eq!(session.state().unwrap().status, SessionStatus::Active);
    let msp_nik = AccountName::parse("msp-nik").unwrap();
    let admins = GroupName::parse("Administrators").unwrap();
    assert_eq!(
        machine[&msp_nik],
        (BTreeSet::from([admins.clone()]), Some(1))
    );
    let computer = load::<Computer>(s, &stream(PC.stream_name()))
        .await
        .unwrap()
        .state;
    assert_eq!(computer.grants[&SESSION].stage, GrantStage::Granted);

    run::<Session>(
        s,
        SESSION.stream_name(),
        SessionCommand::CheckIn {
            reason: CheckInReason::Manual,
            by: admin(),
            at: chrono::Utc::now(),
        },
    )
    .await;
    settle(s, &runner, &mut machine).await;
    assert_eq!(
        machine[&msp_nik],
        (BTreeSet::new(), Some(2)),
        "out of the admin group, password rotated again, account kept (named mode)"
    );
    let computer = load::<Computer>(s, &stream(PC.stream_name()))
        .await
        .unwrap()
        .state;
    assert!(computer.open_requests.is_empty());
    assert_eq!(
        runner.run_until_idle().await.unwrap(),
        0,
        "the checkpoint is at the end"
    );
}

async fn status(s: &dyn EventStore) -> SessionStatus {
    load::<Session>(s, &stream(SESSION.stream_name()))
        .await
        .unwrap()
        .state
        .state()
        .unwrap()
        .status
        .clone()
}

#[tokio::test]
async fn an_expired_session_is_checked_in_and_revoked_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("embedded:{}", dir.path().join("events.db").display());
    let models_path = dir.path().join("read-models.db");
    let now = chrono::Utc::now();
    let mut machine = Machine::new();
    {
        let store = latchkey_store::open_url(&url).await.unwrap();
        let models = Arc::new(Mutex::new(ReadModels::open(&models_path).unwrap()));
        let runner = ProcessRunner::new(store.clone(), models);
        set_up_and_check_out(store.as_ref(), now).await;
        settle(store.as_ref(), &runner, &mut machine).await;
        assert_eq!(status(store.as_ref()).await, SessionStatus::Active);
    }
    // The server restarts: everything is opened afresh from the files.
    let store = latchkey_store::open_url(&url).await.unwrap();
    let models = Arc::new(Mutex::new(ReadModels::open(&models_path).unwrap()));
    let runner = ProcessRunner::new(store.clone(), models.clone());
    let scheduler = Scheduler::new(store.clone(), models);
    assert_eq!(
        scheduler
            .expire_due(now + chrono::Duration::minutes(5))
            .await
            .unwrap(),
        0,
        "not before its time"
    );
    let later = now + chrono::Duration::days(8);
    assert_eq!(scheduler.expire_due(later).await.unwrap(), 1);
    assert_eq!(
        status(store.as_ref()).await,
        SessionStatus::CheckedIn(CheckInReason::Expired)
    );
    settle(store.as_ref(), &runner, &mut machine).await;
    let msp_nik = AccountName::parse("msp-nik").unwrap();
    assert!(
        machine[&msp_nik].0.is_empty(),
        "the expired session's admin membership was revoked on the computer"
    );
    assert_eq!(scheduler.expire_due(later).await.unwrap(), 0, "once only");
}

#[tokio::test]
async fn a_failed_revocation_is_retried_after_its_back_off_until_it_succeeds() {
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let s = store.as_ref();
    let models = Arc::new(Mutex::new(ReadModels::in_memory().unwrap()));
    let runner = ProcessRunner::new(store.clone(), models.clone());
    let scheduler = Scheduler::new(store.clone(), models);
    let now = chrono::Utc::now();
    set_up_and_check_out(s, now).await;
    let mut machine = Machine::new();
    settle(s, &runner, &mut machine).await;
    run::<Session>(
        s,
        SESSION.stream_name(),
        SessionCommand::CheckIn {
            reason: CheckInReason::Manual,
            by: admin(),
            at: now,
        },
    )
    .await;
    runner.run_until_idle().await.unwrap();
    // The agent fails every request it has now (the removal from the group among them).
    let computer = load::<Computer>(s, &stream(PC.stream_name()))
        .await
        .unwrap()
        .state;
    let failed_at = chrono::Utc::now();
    for id in computer.open_requests.keys() {
        let command = ComputerCommand::ReportFailed {
            request_id: *id,
            reason: latchkey_domain::names::FailureReason::parse("msp-nik is logged in").unwrap(),
            at: failed_at,
        };
        run::<Computer>(s, PC.stream_name(), command).await;
    }
    runner.run_until_idle().await.unwrap();
    assert_eq!(
        scheduler.retry_due(failed_at).await.unwrap(),
        0,
        "no retry before the back-off"
    );
    let retried = scheduler
        .retry_due(failed_at + latchkey_app::scheduler::back_off(1))
        .await
        .unwrap();
    assert!(
        retried >= 1,
        "the removal is retried once its back-off passed"
    );
    settle(s, &runner, &mut machine).await;
    let msp_nik = AccountName::parse("msp-nik").unwrap();
    assert!(machine[&msp_nik].0.is_empty(), "retried until done");
    let computer = load::<Computer>(s, &stream(PC.stream_name()))
        .await
        .unwrap()
        .state;
    assert!(computer.open_requests.is_empty());
}

#[test]
fn back_off_doubles_up_to_ten_minutes() {
    use latchkey_app::scheduler::back_off;
    assert_eq!(back_off(1), chrono::Duration::seconds(5));
    assert_eq!(back_off(2), chrono::Duration::seconds(10));
    assert_eq!(back_off(4), chrono::Duration::seconds(40));
    assert_eq!(back_off(30), chrono::Duration::minutes(10));
}

/// The agent feed answers from the computer's stream, not the read models: the read models
/// are frozen here (no runner) after the first requests were projected, yet a reported
/// request is not handed out again and the next one appears at once. With several servers
/// the read models of the server an agent asks can lag behind its own report.
#[actix_web::test]
async fn the_agent_feed_is_current_even_when_the_read_models_lag() {
    use actix_web::test as web_test;
    use latchkey_api::http::{self, Services};
    use latchkey_server_stores::idempotency::IdempotencyStore;
    use latchkey_server_stores::secrets::{Key, SecretStore};
    use latchkey_server_stores::tokens::{Role, TokenStore};

    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let s = store.as_ref();
    let path = dir.path().join("read-models.db");
    let models = Arc::new(Mutex::new(ReadModels::open(&path).unwrap()));
    let runner = ProcessRunner::new(store.clone(), models.clone());
    set_up_and_check_out(s, chrono::Utc::now()).await;
    runner.run_until_idle().await.unwrap();
    let requested = |computer: &Computer| -> Vec<u64> {
        computer.open_requests.keys().map(|id| id.0).collect()
    };
    let computer = load::<Computer>(s, &stream(PC.stream_name()))
        .await
        .unwrap()
        .state;
    assert_eq!(requested(&computer), [1, 2], "ensure the account, rotate");

    let tokens = TokenStore::open(dir.path().join("tokens.db")).unwrap();
    let agent = tokens
        .issue(Role::Agent { computer_id: PC }, "agent of W11-L-PASSWORD")
        .unwrap();
    let services = actix_web::web::Data::new(Services {
        store: store.clone(),
        tokens: Arc::new(tokens),
        view: Arc::new(latchkey_projections::ReadView::open(&path).unwrap()),
        secrets: SecretStore::open(dir.path().join("secrets.db"), &Key::generate()).unwrap(),
        idempotency: IdempotencyStore::open(dir.path().join("idempotency.db")).unwrap(),
        progress: runner.progress(),
        wakeups: Arc::new(latchkey_app::wakeups::StreamWakeups::new()),
        cache: Arc::new(latchkey_app::commands::StateCache::new(100)),
        health: Default::default(),
        limiter: latchkey_api::ratelimit::AuthLimiter::default(),
    });
    let app = web_test::init_service(
        actix_web::App::new()
            .app_data(services)
            .configure(http::configure),
    )
    .await;
    let feed = || {
        web_test::TestRequest::get()
            .uri("/v1/agent/commands")
            .insert_header(("Authorization", format!("Bearer {agent}")))
            .to_request()
    };
    let ids = |body: serde_json::Value| -> Vec<u64> {
        body["commands"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["request_id"].as_u64().unwrap())
            .collect()
    };
    let first: serde_json::Value = web_test::call_and_read_body_json(&app, feed()).await;
    assert_eq!(ids(first), [1, 2]);

    let report = web_test::TestRequest::post()
        .uri("/v1/agent/results")
        .insert_header(("Authorization", format!("Bearer {agent}")))
        .set_json(serde_json::json!({
            "request_id": 1,
            "outcome": "succeeded",
            "verified": { "present": true, "groups": [], "password_version": null },
        }))
        .to_request();
    let answer = web_test::call_service(&app, report).await;
    assert_eq!(answer.status(), 200);
    let pending_in_read_models = models
        .lock()
        .unwrap()
        .queries()
        .pending_requests(PC)
        .unwrap()
        .len();
    assert_eq!(pending_in_read_models, 2, "the read models have not moved");
    let after: serde_json::Value = web_test::call_and_read_body_json(&app, feed()).await;
    assert_eq!(
        ids(after),
        [2],
        "request 1 is done, whatever the read models say"
    );
}

/// A registration cut short after its names were claimed (the server stopped between the two
/// appends) is completed by the process manager reacting to the claim.
#[tokio::test]
async fn a_registration_cut_short_after_claiming_the_names_is_completed_by_the_runner() {
    use latchkey_domain::technician_names::{
        self, NameHolder, TechnicianNames, TechnicianNamesCommand,
    };
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let s = store.as_ref();
    let models = Arc::new(Mutex::new(ReadModels::in_memory().unwrap()));
    let runner = ProcessRunner::new(store.clone(), models);
    let holder = NameHolder {
        technician_id: NIK,
        username: Username::parse("nik").unwrap(),
        email: Email::parse("nik@nikpot.com").unwrap(),
    };
    run::<TechnicianNames>(
        s,
        technician_names::STREAM.to_owned(),
        TechnicianNamesCommand::Claim {
            holder,
            existing: vec![],
            by: admin(),
            at: chrono::Utc::now(),
        },
    )
    .await;
    let before = load::<Technician>(s, &stream(NIK.stream_name()))
        .await
        .unwrap();
    assert!(before.state.state().is_none(), "not registered yet");
    runner.run_until_idle().await.unwrap();
    let after = load::<Technician>(s, &stream(NIK.stream_name()))
        .await
        .unwrap();
    let nik = after.state.state().expect("registered by the runner");
    assert_eq!(nik.username.as_str(), "nik");
    assert_eq!(nik.email.as_str(), "nik@nikpot.com");
    // Handled again (a crash before the checkpoint): nothing more.
    let models = Arc::new(Mutex::new(ReadModels::in_memory().unwrap()));
    ProcessRunner::new(store.clone(), models)
        .run_until_idle()
        .await
        .unwrap();
    let again = load::<Technician>(s, &stream(NIK.stream_name()))
        .await
        .unwrap();
    assert_eq!(again.revision, after.revision);
}
