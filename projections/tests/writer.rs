//! The read models' writer keeps names and checkpoints in memory between its transactions (so
//! a batch costs few round trips to PostgreSQL). What it remembers must never make it write
//! what the database, and a rebuild from the log, would not: it forgets when another writer
//! moved the checkpoint or when a transaction of its own failed, and the process managers'
//! checkpoint it keeps is written with its next transaction, never moved back.

mod backend;
mod support;

use latchkey_domain::computer::{
    AccountOwner, Computer, ComputerEvent, OfflineSecretRevoked, SessionAccessRequested,
};
use latchkey_domain::ids::{SessionId, TechnicianId};
use latchkey_domain::names::TenantName;
use latchkey_domain::policy::{CheckInAction, JitPolicy, LoginMode};
use latchkey_domain::process::Lookup;
use latchkey_domain::tenant::{LoginModeChanged, TenantRegistered};
use latchkey_domain::{Aggregate, AnyEvent};
use latchkey_projections::{AuditEntry, AuditFilter, ProjectionError, ReadModels};
use latchkey_store::{MemoryStore, RecordedEvent};
use support::{
    account, admin, administrators, all_events, append, at, enroll, nik_on_w11,
    register_technician, register_tenant, ANA, CUSTOMER_1, NIK, W11,
};
use uuid::Uuid;

const FIRST: SessionId = SessionId(Uuid::from_u128(1000));
const SECOND: SessionId = SessionId(Uuid::from_u128(1001));

/// customer-1 with nik and ana, and W11 enrolled.
async fn office(store: &MemoryStore) {
    register_tenant(store, CUSTOMER_1, "customer-1", LoginMode::Named, 0).await;
    register_technician(store, NIK, "nik", "nik@nikpot.com", &[CUSTOMER_1], 0).await;
    register_technician(store, ANA, "ana", "ana@msp.example", &[CUSTOMER_1], 0).await;
    on_w11(store, enrolled()).await;
}

fn enrolled() -> Vec<ComputerEvent> {
    Computer::decide(
        &Computer::default(),
        enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 0),
    )
    .unwrap()
}

async fn on_w11(store: &MemoryStore, events: Vec<ComputerEvent>) {
    let events = events.into_iter().map(AnyEvent::Computer).collect();
    append(store, W11.stream_name(), &admin(), events).await;
}

/// A session of `technician` asks for account msp-team on W11, owned by them.
fn access(session: SessionId, technician: TechnicianId, minute: i64) -> ComputerEvent {
    SessionAccessRequested {
        computer_id: W11,
        session_id: session,
        technician_id: technician,
        account: account("msp-team"),
        owner: AccountOwner::Named {
            technician_id: technician,
        },
        admin_group: administrators(),
        on_check_in: CheckInAction::RemoveFromGroup,
        rotate_on_check_in: true,
        post_session: None,
        at: at(minute),
    }
    .into()
}

fn revoked(generation: u32, minute: i64) -> ComputerEvent {
    OfflineSecretRevoked {
        computer_id: W11,
        account: account("msp-team"),
        generation,
        at: at(minute),
    }
    .into()
}

fn audit(models: &ReadModels) -> Vec<AuditEntry> {
    let filter = AuditFilter {
        limit: AuditFilter::MAX_LIMIT,
        ..AuditFilter::default()
    };
    models.queries().audit_trail(&filter).unwrap().entries
}

fn rebuilt(events: &[RecordedEvent]) -> String {
    let mut models = ReadModels::in_memory().unwrap();
    models.apply(events).unwrap();
    models.dump().unwrap()
}

#[tokio::test]
async fn an_owner_another_writer_replaced_meanwhile_is_read_again() {
    let store = MemoryStore::new();
    office(&store).await;
    on_w11(&store, vec![access(FIRST, NIK, 1), revoked(1, 2)]).await;
    let (mut writer, open, _guard) = backend::shared().await;
    writer.apply(&all_events(&store).await).unwrap();
    let lines = audit(&writer);
    let first = lines.last().unwrap();
    assert_eq!(first.event_type, "OfflineSecretRevoked");
    assert_eq!(first.technician_id, Some(NIK), "{first:?}");

    // Another server leads for a while: the account changes hands.
    on_w11(&store, vec![access(SECOND, ANA, 3)]).await;
    assert_eq!(open().apply(&all_events(&store).await).unwrap(), 1);

    // Back to the first writer, which remembered nik as the owner.
    on_w11(&store, vec![revoked(2, 4)]).await;
    let events = all_events(&store).await;
    assert_eq!(writer.apply(&events).unwrap(), 1, "only the newest event");
    let lines = audit(&writer);
    let second = lines.last().unwrap();
    assert_eq!(second.event_type, "OfflineSecretRevoked");
    assert_eq!(
        second.technician_id,
        Some(ANA),
        "the owner the other writer recorded: {second:?}"
    );
    assert_eq!(writer.dump().unwrap(), rebuilt(&events));
}

#[tokio::test]
async fn names_learnt_in_a_transaction_that_failed_are_forgotten() {
    let store = MemoryStore::new();
    let registered = |name: &str| {
        let event = TenantRegistered {
            tenant_id: CUSTOMER_1,
            name: TenantName::parse(name).unwrap(),
            login_mode: LoginMode::Named,
            policy: JitPolicy::default(),
            by: admin(),
            at: at(0),
        };
        AnyEvent::Tenant(event.into())
    };
    let changed = LoginModeChanged {
        tenant_id: CUSTOMER_1,
        from: LoginMode::Named,
        to: LoginMode::Shared,
        by: admin(),
        at: at(1),
    };
    register_technician(&store, NIK, "nik", "nik@nikpot.com", &[], 0).await;
    let stream = CUSTOMER_1.stream_name();
    append(&store, stream.clone(), &admin(), vec![registered("draft")]).await;
    append(
        &store,
        stream.clone(),
        &admin(),
        vec![registered("customer-1")],
    )
    .await;
    append(
        &store,
        stream,
        &admin(),
        vec![AnyEvent::Tenant(changed.into())],
    )
    .await;
    let events = all_events(&store).await;

    let mut models = backend::fresh().await;
    models.apply(&events[..1]).unwrap();
    let refused = models.apply_with(&events[1..2], |_, _, _| -> Result<(), _> {
        Err(ProjectionError::BadInput {
            field: "test",
            reason: "the transaction fails after the tenant's name was written".into(),
        })
    });
    assert!(refused.is_err());
    let before = Some(events[0].position);
    assert_eq!(models.checkpoint().unwrap(), before, "rolled back");

    // The log goes on from the second registration: the tenant is named customer-1.
    models.apply(&events[2..]).unwrap();
    let lines = audit(&models);
    assert_eq!(
        lines.last().unwrap().sentence,
        "admin@msp.example changed the technician login mode of customer-1 from named to shared"
    );
}

#[tokio::test]
async fn the_process_managers_checkpoint_goes_with_the_next_transaction_and_never_back() {
    let store = MemoryStore::new();
    office(&store).await;
    let checked_out = |session, minute| AnyEvent::Session(nik_on_w11(session, at(minute)).into());
    append(
        &store,
        FIRST.stream_name(),
        &admin(),
        vec![checked_out(FIRST, 1)],
    )
    .await;
    append(
        &store,
        SECOND.stream_name(),
        &admin(),
        vec![checked_out(SECOND, 2)],
    )
    .await;
    let events = all_events(&store).await;
    let position = |i: usize| Some(events[i].position);
    let (mut writer, open, _guard) = backend::shared().await;
    let n = events.len();
    writer.apply(&events[..n - 2]).unwrap();

    writer.handled(events[1].position);
    assert_eq!(writer.process_checkpoint().unwrap(), position(1));
    assert_eq!(
        open().process_checkpoint().unwrap(),
        None,
        "not written yet"
    );
    writer.apply(&events[n - 2..n - 1]).unwrap();
    assert_eq!(open().process_checkpoint().unwrap(), position(1));

    // On its own when the process managers are idle.
    writer.handled(events[2].position);
    writer.write_handled().unwrap();
    assert_eq!(open().process_checkpoint().unwrap(), position(2));
    writer.write_handled().unwrap();

    // Another writer handled more meanwhile: the checkpoint stays where it put it.
    open()
        .set_process_checkpoint(events[n - 1].position)
        .unwrap();
    writer.handled(events[3].position);
    writer.apply(&events).unwrap();
    assert_eq!(open().process_checkpoint().unwrap(), position(n - 1));
    assert_eq!(writer.process_checkpoint().unwrap(), position(n - 1));
}

#[tokio::test]
async fn events_another_writer_applied_are_reacted_to_not_applied_again() {
    let store = MemoryStore::new();
    office(&store).await;
    for (session, minute) in [(FIRST, 1), (SECOND, 2)] {
        let event = AnyEvent::Session(nik_on_w11(session, at(minute)).into());
        append(&store, session.stream_name(), &admin(), vec![event]).await;
    }
    let events = all_events(&store).await;
    let n = events.len();
    let (mut writer, open, _guard) = backend::shared().await;
    writer.apply(&events[..n - 2]).unwrap();
    open().apply(&events[..n - 1]).unwrap();

    // The first check-out is in the read models already, the second is not.
    let seen = writer
        .apply_and_react(&events[n - 2..], |recorded, _, queries| {
            let open_sessions = queries.open_sessions_on_computer(W11)?;
            Ok::<_, ProjectionError>((recorded.position, open_sessions.len()))
        })
        .unwrap();
    assert_eq!(
        seen,
        [(events[n - 2].position, 1), (events[n - 1].position, 2)]
    );
    assert_eq!(writer.checkpoint().unwrap(), Some(events[n - 1].position));
    assert_eq!(
        writer.dump().unwrap(),
        rebuilt(&events),
        "each applied once"
    );
}

#[tokio::test]
async fn reactions_can_be_handed_out_before_the_transaction_commits() {
    let store = MemoryStore::new();
    office(&store).await;
    let events = all_events(&store).await;
    let (mut writer, open, _guard) = backend::shared().await;
    let other = open();
    let mut handed = None;
    writer
        .apply_and_react_early(
            &events,
            |recorded, _, _| Ok::<_, ProjectionError>(recorded.position),
            |positions| {
                assert_eq!(other.checkpoint().unwrap(), None, "not committed yet");
                handed = Some(positions);
            },
        )
        .unwrap();
    let positions: Vec<_> = events.iter().map(|e| e.position).collect();
    assert_eq!(handed, Some(positions));
    assert_eq!(
        other.checkpoint().unwrap(),
        events.last().map(|e| e.position)
    );
}
