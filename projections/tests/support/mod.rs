//! The event log the read-model tests project, written as the server writes it: one cast of
//! fixed ids, minutes of one morning, the people who act, and domain events appended to a
//! `MemoryStore` with the metadata of whoever caused them.

use chrono::TimeZone;
use latchkey_domain::computer::{AccountOwner, ComputerCommand, OsKind};
use latchkey_domain::ids::{AgentKeyId, ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{AccountName, Email, GroupName, Hostname, TenantName, Username};
use latchkey_domain::policy::{CheckInAction, JitPolicy, LoginMode};
use latchkey_domain::session::SessionCheckedOut;
use latchkey_domain::technician::{TechnicianJoinedTenant, TechnicianRegistered};
use latchkey_domain::tenant::TenantRegistered;
use latchkey_domain::{Actor, AnyEvent, Timestamp};
use latchkey_store::{
    EventMetadata, EventStore, ExpectedState, MemoryStore, NewEvent, RecordedEvent, StreamName,
};
use uuid::Uuid;

/// customer-1.
pub const CUSTOMER_1: TenantId = TenantId(Uuid::from_u128(1));
/// customer-2.
#[allow(dead_code)] // writer.rs has one tenant
pub const CUSTOMER_2: TenantId = TenantId(Uuid::from_u128(2));
/// nik@nikpot.com.
pub const NIK: TechnicianId = TechnicianId(Uuid::from_u128(10));
/// ana@msp.example.
#[allow(dead_code)] // directory.rs's story has one technician
pub const ANA: TechnicianId = TechnicianId(Uuid::from_u128(11));
/// W11-L-PASSWORD, in customer-1.
pub const W11: ComputerId = ComputerId(Uuid::from_u128(100));
/// W10-local, in customer-2.
#[allow(dead_code)] // directory.rs's story has one computer
pub const W10: ComputerId = ComputerId(Uuid::from_u128(101));

pub const ADMIN: &str = "admin@msp.example";

/// Minute `minute` of the morning the stories happen in.
pub fn at(minute: i64) -> Timestamp {
    chrono::Utc.with_ymd_and_hms(2026, 11, 23, 9, 0, 0).unwrap() + chrono::Duration::minutes(minute)
}

pub fn user(email: &str) -> Actor {
    Actor::User {
        email: Email::parse(email).unwrap(),
    }
}

/// The MSP admin.
pub fn admin() -> Actor {
    user(ADMIN)
}

pub fn account(name: &str) -> AccountName {
    AccountName::parse(name).unwrap()
}

pub fn administrators() -> GroupName {
    GroupName::parse("Administrators").unwrap()
}

/// `by` checks `technician` out of `computer` in `tenant` for an hour, with account `name` in
/// `login_mode`: the account joins Administrators, and at check-in leaves it and gets a new
/// password.
pub fn checked_out(
    session_id: SessionId,
    (tenant_id, technician_id, computer_id): (TenantId, TechnicianId, ComputerId),
    login_mode: LoginMode,
    name: &str,
    by: Actor,
    at: Timestamp,
) -> SessionCheckedOut {
    let account_owner = match login_mode {
        LoginMode::Named => AccountOwner::Named { technician_id },
        LoginMode::Shared => AccountOwner::Shared,
        LoginMode::Ephemeral => AccountOwner::Ephemeral { technician_id },
    };
    SessionCheckedOut {
        session_id,
        tenant_id,
        technician_id,
        computer_id,
        login_mode,
        account: account(name),
        account_owner,
        admin_group: administrators(),
        on_check_in: CheckInAction::RemoveFromGroup,
        rotate_on_check_in: true,
        post_session: None,
        create_account: true,
        reason: None,
        ticket: None,
        expires_at: at + chrono::Duration::hours(1),
        by,
        at,
    }
}

/// The admin checks nik out of W11 in customer-1 with his named account msp-nik.
pub fn nik_on_w11(session_id: SessionId, at: Timestamp) -> SessionCheckedOut {
    let cast = (CUSTOMER_1, NIK, W11);
    checked_out(session_id, cast, LoginMode::Named, "msp-nik", admin(), at)
}

/// The admin enrolls Windows computer `id` in `tenant`.
pub fn enroll(id: ComputerId, tenant: TenantId, hostname: &str, minute: i64) -> ComputerCommand {
    ComputerCommand::Enroll {
        computer_id: id,
        tenant_id: tenant,
        hostname: Hostname::parse(hostname).unwrap(),
        os: OsKind::Windows,
        agent_key_id: AgentKeyId(Uuid::from_u128(id.0.as_u128() + 5)),
        admin_group: None,
        by: admin(),
        at: at(minute),
    }
}

/// Appends `events` to `stream` in one batch, with the metadata the server writes for `by`.
pub async fn append(store: &MemoryStore, stream: String, by: &Actor, events: Vec<AnyEvent>) {
    let actor = match by {
        Actor::User { email } => format!("user:{email}"),
        Actor::Agent { computer_id } => format!("agent:{computer_id}"),
        Actor::System => "system".to_owned(),
    };
    let batch = events
        .iter()
        .map(|event| NewEvent {
            id: Uuid::now_v7(),
            event_type: event.event_type().into(),
            schema_version: event.schema_version(),
            payload: serde_json::to_vec(&event.to_json()).unwrap(),
            metadata: EventMetadata {
                actor: actor.clone(),
                correlation_id: Uuid::now_v7(),
                causation_id: None,
            },
        })
        .collect();
    store
        .append(&StreamName::new(stream).unwrap(), ExpectedState::Any, batch)
        .await
        .unwrap();
}

/// The whole log, in order.
pub async fn all_events(store: &MemoryStore) -> Vec<RecordedEvent> {
    store.read_all(None, 10_000).await.unwrap()
}

/// The admin registers tenant `id`.
#[allow(dead_code)] // accounts.rs's story registers no one
pub async fn register_tenant(
    store: &MemoryStore,
    id: TenantId,
    name: &str,
    mode: LoginMode,
    minute: i64,
) {
    let registered = TenantRegistered {
        tenant_id: id,
        name: TenantName::parse(name).unwrap(),
        login_mode: mode,
        policy: JitPolicy::default(),
        by: admin(),
        at: at(minute),
    };
    let event = AnyEvent::Tenant(registered.into());
    append(store, id.stream_name(), &admin(), vec![event]).await;
}

/// The admin registers technician `id` and adds them to `tenants`.
#[allow(dead_code)] // accounts.rs's story registers no one
pub async fn register_technician(
    store: &MemoryStore,
    id: TechnicianId,
    username: &str,
    email: &str,
    tenants: &[TenantId],
    minute: i64,
) {
    let registered = TechnicianRegistered {
        technician_id: id,
        username: Username::parse(username).unwrap(),
        email: Email::parse(email).unwrap(),
        by: admin(),
        at: at(minute),
    };
    let event = AnyEvent::Technician(registered.into());
    append(store, id.stream_name(), &admin(), vec![event]).await;
    for tenant in tenants {
        let joined = TechnicianJoinedTenant {
            technician_id: id,
            tenant_id: *tenant,
            by: admin(),
            at: at(minute),
        };
        let event = AnyEvent::Technician(joined.into());
        append(store, id.stream_name(), &admin(), vec![event]).await;
    }
}
