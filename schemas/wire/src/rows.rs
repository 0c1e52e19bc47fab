//! The read models' rows, as the list endpoints and the audit trail answer them. The
//! projections (`latchkey-projections`) build them; they are declared here so the CLI reads
//! the very types the server writes.

use chrono::{DateTime, Utc};
use latchkey_domain::computer::{AccountOwner, Operation, Purpose};
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{AccountName, FailureReason, GroupName, Hostname};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

/// A tenant as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TenantRow {
    pub tenant_id: TenantId,
    pub name: String,
    #[schemars(extend("enum" = ["named", "shared", "ephemeral"]))]
    pub login_mode: String,
}

/// A technician as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TechnicianRow {
    pub technician_id: TechnicianId,
    pub username: String,
    pub email: String,
    pub offboarded: bool,
}

/// A computer as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ComputerRow {
    pub computer_id: ComputerId,
    pub tenant_id: TenantId,
    pub hostname: String,
    pub decommissioned: bool,
}

/// A session as listed (no credential: sessions never hold one).
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
pub struct SessionRow {
    pub session_id: SessionId,
    pub tenant_id: TenantId,
    pub technician_id: TechnicianId,
    pub computer_id: ComputerId,
    pub account: String,
    #[schemars(extend("enum" = ["named", "shared", "ephemeral"]))]
    pub login_mode: String,
    /// `provisioning`, `active`, `checked_in` or `failed`.
    #[schemars(extend("enum" = ["provisioning", "active", "checked_in", "failed"]))]
    pub status: String,
    pub open: bool,
    #[schemars(extend("format" = "date-time"))]
    pub checked_out_at: String,
    #[schemars(extend("format" = "date-time"))]
    pub activated_at: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub closed_at: Option<String>,
    #[schemars(extend("format" = "date-time"))]
    pub expires_at: String,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    pub check_in_reason: Option<String>,
    pub failure: Option<String>,
}

/// Where a provisioning request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProvisioningStatus {
    /// Waiting for the agent (first attempt or a retry).
    Pending,
    /// The agent reported a failure; a revocation or clean-up waits for a retry.
    Failed,
    /// The agent carried it out and verified the result.
    Done,
    /// A later change made it pointless; it will never be carried out.
    Superseded,
}

impl ProvisioningStatus {
    pub const ALL: [ProvisioningStatus; 4] = [
        ProvisioningStatus::Pending,
        ProvisioningStatus::Failed,
        ProvisioningStatus::Done,
        ProvisioningStatus::Superseded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProvisioningStatus::Pending => "pending",
            ProvisioningStatus::Failed => "failed",
            ProvisioningStatus::Done => "done",
            ProvisioningStatus::Superseded => "superseded",
        }
    }

    pub fn parse(text: String) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|s| s.as_str() == text)
            .ok_or_else(|| format!("unknown provisioning status '{text}'"))
    }
}

/// A managed account on one computer, as the agent last verified it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ManagedAccountRow {
    pub computer_id: ComputerId,
    pub hostname: Hostname,
    pub tenant_id: TenantId,
    pub account: AccountName,
    pub owner: AccountOwner,
    /// The agent last saw the account on the machine.
    pub present: bool,
    /// The account's local groups as last verified.
    pub groups: BTreeSet<GroupName>,
    /// The password version the agent last verified.
    pub password_version: Option<u32>,
    /// When the agent last verified a password rotation.
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// To be deleted as soon as no session uses it.
    pub retiring: bool,
    /// The agent verified its deletion and it has not been re-created since.
    pub deleted: bool,
    /// The generation of the offline TOTP secret in force, if any.
    pub offline_secret_generation: Option<u32>,
    /// The open sessions (provisioning or active) using this account on this computer.
    pub open_sessions: Vec<SessionId>,
}

/// The revocation or clean-up request that would end a standing membership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct MembershipRemovalRequest {
    pub request_id: u64,
    pub operation: Operation,
    pub status: ProvisioningStatus,
    pub attempt: u32,
}

/// An admin-group membership that no open session accounts for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StandingPrivilege {
    pub computer_id: ComputerId,
    pub tenant_id: TenantId,
    pub hostname: Hostname,
    pub account: AccountName,
    pub admin_group: GroupName,
    pub joined_at: DateTime<Utc>,
    /// The session the membership was granted for.
    pub granted_for: Option<SessionId>,
    /// When the last session using the account on this computer ended.
    pub last_session_closed_at: Option<DateTime<Utc>>,
    /// The oldest open request that would end the membership: pending (on its way) or
    /// failed (stuck, waiting for a retry). `None`: nothing is under way to end it.
    pub removal: Option<MembershipRemovalRequest>,
    /// The offline login the membership was granted for, when its end time has passed and
    /// no observation has shown the account out of the group yet (the agent takes offline
    /// access back itself; no server request is under way).
    pub offline_login: Option<OfflineLoginRef>,
}

/// A login the agent granted offline with a technician's TOTP code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct OfflineLoginRef {
    pub login_id: Uuid,
    /// `None` for the shared account.
    pub technician_id: Option<TechnicianId>,
    pub used_at: DateTime<Utc>,
    /// When the agent takes the access back.
    pub until: DateTime<Utc>,
}

/// An account that was in an admin group on a computer at a given time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AdminAsOf {
    pub account: AccountName,
    pub admin_group: GroupName,
    pub joined_at: DateTime<Utc>,
    pub left_at: Option<DateTime<Utc>>,
    /// The sessions on the computer with this account whose lifetime (check-out to close)
    /// covers the time asked about; empty if the membership was lingering then.
    pub sessions: Vec<SessionId>,
    /// The offline logins that held the account in the group at the time asked about.
    pub offline_logins: Vec<OfflineLoginRef>,
}

/// A revocation or clean-up the agent failed to carry out, waiting for a retry ("stuck").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct FailedRequest {
    pub computer_id: ComputerId,
    pub tenant_id: TenantId,
    pub hostname: Hostname,
    pub request_id: u64,
    pub session_id: Option<SessionId>,
    pub purpose: Purpose,
    /// The attempt that failed (1 for the first try).
    pub attempt: u32,
    pub reason: FailureReason,
    pub failed_at: DateTime<Utc>,
    pub operation: Operation,
}

/// A member of a computer's admin group, as the agent last reported it, that no open session
/// explains: a Latchkey account that should have left the group (`managed`), or an account
/// Latchkey does not manage (a built-in administrator, or one added by hand).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AdminDrift {
    pub computer_id: ComputerId,
    pub hostname: String,
    pub admin_group: String,
    pub member: String,
    pub managed: bool,
    pub reported_at: String,
}

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub position: Position,
    pub event_id: Uuid,
    pub stream: String,
    pub revision: u64,
    pub event_type: String,
    /// When it happened (the event's own time, not when it was stored).
    pub at: DateTime<Utc>,
    pub tenant_id: Option<TenantId>,
    pub computer_id: Option<ComputerId>,
    pub technician_id: Option<TechnicianId>,
    pub session_id: Option<SessionId>,
    pub account: Option<String>,
    /// Who caused it: an e-mail address, `agent of <hostname>`, or `latchkey`.
    pub actor: String,
    pub sentence: String,
}

/// One page of the audit trail, in global order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass it back as [`AuditFilter::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

// The event store's `latchkey_store::Position`, as an audit entry shows it: the wire types
// know no event store, so the projections copy the store's position into this one.
/// A place in the global order. KurrentDB has a commit and a prepare position; PostgreSQL
/// orders by (transaction id, sequence); the embedded store has one writer, so both parts are
/// the same sequence number there. Ordered lexicographically (commit, then prepare).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub struct Position {
    pub commit: u64,
    pub prepare: u64,
}

impl Position {
    pub const fn new(commit: u64, prepare: u64) -> Self {
        Self { commit, prepare }
    }
}
