//! The directory read model answers the process managers' look-ups, and applies each event
//! exactly once across redelivery and reopening.

mod backend;

use chrono::TimeZone;
use latchkey_domain::computer::{ComputerEnrolled, OsKind};
use latchkey_domain::ids::{AgentKeyId, ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{AccountName, Email, GroupName, Hostname, TenantName, Username};
use latchkey_domain::policy::{CheckInAction, JitPolicy, LoginMode};
use latchkey_domain::process::Lookup;
use latchkey_domain::session::{CheckInReason, SessionCheckedIn, SessionCheckedOut};
use latchkey_domain::technician::{TechnicianJoinedTenant, TechnicianRegistered};
use latchkey_domain::tenant::TenantRegistered;
use latchkey_domain::{Actor, AnyEvent, Timestamp};
use latchkey_projections::ReadModels;
use latchkey_store::{
    EventMetadata, EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent, StreamName,
};
use uuid::Uuid;

const TENANT: TenantId = TenantId(Uuid::from_u128(1));
const NIK: TechnicianId = TechnicianId(Uuid::from_u128(10));
const PC: ComputerId = ComputerId(Uuid::from_u128(100));
const SESSION: SessionId = SessionId(Uuid::from_u128(1000));

fn at() -> Timestamp {
    chrono::Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap()
}

fn admin() -> Actor {
    Actor::User {
        email: Email::parse("admin@msp.example").unwrap(),
    }
}

async fn append(store: &MemoryStore, stream: String, event: AnyEvent) {
    let stream = StreamName::new(stream).unwrap();
    let new = NewEvent {
        id: Uuid::now_v7(),
        event_type: event.event_type().into(),
        schema_version: event.schema_version(),
        payload: serde_json::to_vec(&event.to_json()).unwrap(),
        metadata: EventMetadata {
            actor: "user:admin@msp.example".into(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
        },
    };
    store
        .append(&stream, ExpectedState::Any, vec![new])
        .await
        .unwrap();
}

async fn story(store: &MemoryStore) {
    append(
        store,
        TENANT.stream_name(),
        AnyEvent::Tenant(
            TenantRegistered {
                tenant_id: TENANT,
                name: TenantName::parse("customer-1").unwrap(),
                login_mode: LoginMode::Named,
                policy: JitPolicy::default(),
                by: admin(),
                at: at(),
            }
            .into(),
        ),
    )
    .await;
    append(
        store,
        NIK.stream_name(),
        AnyEvent::Technician(
            TechnicianRegistered {
                technician_id: NIK,
                username: Username::parse("nik").unwrap(),
                email: Email::parse("nik@nikpot.com").unwrap(),
                by: admin(),
                at: at(),
            }
            .into(),
        ),
    )
    .await;
    append(
        store,
        NIK.stream_name(),
        AnyEvent::Technician(
            TechnicianJoinedTenant {
                technician_id: NIK,
                tenant_id: TENANT,
                by: admin(),
                at: at(),
            }
            .into(),
        ),
    )
    .await;
    append(
        store,
        PC.stream_name(),
        AnyEvent::Computer(
            ComputerEnrolled {
                computer_id: PC,
                tenant_id: TENANT,
                hostname: Hostname::parse("W11-L-PASSWORD").unwrap(),
                os: OsKind::Windows,
                agent_key_id: AgentKeyId(Uuid::from_u128(5)),
                by: admin(),
                at: at(),
            }
            .into(),
        ),
    )
    .await;
    append(
        store,
        SESSION.stream_name(),
        AnyEvent::Session(
            SessionCheckedOut {
                session_id: SESSION,
                tenant_id: TENANT,
                technician_id: NIK,
                computer_id: PC,
                login_mode: LoginMode::Named,
                account: AccountName::parse("msp-nik").unwrap(),
                account_owner: latchkey_domain::computer::AccountOwner::Named {
                    technician_id: NIK,
                },
                admin_group: GroupName::parse("Administrators").unwrap(),
                on_check_in: CheckInAction::RemoveFromGroup,
                rotate_on_check_in: true,
                create_account: true,
                reason: None,
                ticket: None,
                expires_at: at() + chrono::Duration::hours(1),
                by: admin(),
                at: at(),
            }
            .into(),
        ),
    )
    .await;
}

async fn everything(store: &MemoryStore) -> Vec<RecordedEvent> {
    store.read_all(None, 1000).await.unwrap()
}

#[tokio::test]
async fn the_directory_answers_the_process_managers_lookups() {
    let store = MemoryStore::new();
    story(&store).await;
    let mut models = backend::fresh().await;
    assert_eq!(models.apply(&everything(&store).await).unwrap(), 5);
    assert_eq!(models.computers_of_tenant(TENANT).unwrap(), vec![PC]);
    assert_eq!(
        models.open_sessions_of_technician(NIK, None).unwrap(),
        vec![SESSION]
    );
    assert_eq!(
        models
            .open_sessions_of_technician(NIK, Some(TENANT))
            .unwrap(),
        vec![SESSION]
    );
    let elsewhere = TenantId(Uuid::from_u128(2));
    assert!(models
        .open_sessions_of_technician(NIK, Some(elsewhere))
        .unwrap()
        .is_empty());
    assert_eq!(models.open_sessions_on_computer(PC).unwrap(), vec![SESSION]);

    append(
        &store,
        SESSION.stream_name(),
        AnyEvent::Session(
            SessionCheckedIn {
                session_id: SESSION,
                computer_id: PC,
                reason: CheckInReason::Manual,
                by: admin(),
                at: at(),
            }
            .into(),
        ),
    )
    .await;
    assert_eq!(
        models.apply(&everything(&store).await).unwrap(),
        1,
        "only the new event"
    );
    assert!(models.open_sessions_on_computer(PC).unwrap().is_empty());
    assert!(models
        .open_sessions_of_technician(NIK, None)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn events_are_applied_once_across_redelivery_and_reopening() {
    let store = MemoryStore::new();
    story(&store).await;
    let events = everything(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read-models.db");
    {
        let mut models = ReadModels::open(&path).unwrap();
        assert_eq!(models.checkpoint().unwrap(), None);
        assert_eq!(models.apply(&events[..3]).unwrap(), 3);
        assert_eq!(models.checkpoint().unwrap(), Some(events[2].position));
    }
    let mut models = ReadModels::open(&path).unwrap();
    assert_eq!(models.checkpoint().unwrap(), Some(events[2].position));
    assert_eq!(
        models.apply(&events).unwrap(),
        2,
        "the first three were already applied"
    );
    assert_eq!(models.apply(&events).unwrap(), 0);
    assert_eq!(models.checkpoint().unwrap(), Some(events[4].position));
    assert_eq!(models.computers_of_tenant(TENANT).unwrap(), vec![PC]);
}

#[tokio::test]
async fn a_read_view_opens_at_most_its_connection_limit_and_serves_every_reader() {
    let store = MemoryStore::new();
    story(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read-models.db");
    ReadModels::open(&path)
        .unwrap()
        .apply(&everything(&store).await)
        .unwrap();
    let view = std::sync::Arc::new(latchkey_projections::ReadView::open(&path).unwrap());
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers: Vec<_> = (0..3 * latchkey_projections::VIEW_CONNECTIONS)
        .map(|_| {
            let (view, inside, most) = (view.clone(), inside.clone(), most.clone());
            std::thread::spawn(move || {
                view.with(|q| {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = inside.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let computers = q.computers_of_tenant(TENANT);
                    inside.fetch_sub(1, SeqCst);
                    computers
                })
                .unwrap()
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), vec![PC]);
    }
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most <= latchkey_projections::VIEW_CONNECTIONS,
        "{most} readers at once"
    );
    assert!(most > 1, "readers share the pool at once");
}
