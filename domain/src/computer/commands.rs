//! What can be asked of a computer: by an admin (enrol, decommission, override the policy),
//! by the process managers (grant and release a session's access, retire accounts) and by
//! its agent (results, offline logins and lockouts, inventory). A command carries the time
//! and everything else `decide` needs; nothing is looked up from inside the domain.

use super::{AccountObservation, AccountOwner, OsKind, RetireReason};
use crate::event::{Actor, Timestamp};
use crate::ids::{AgentKeyId, ComputerId, RequestId, SessionId, TechnicianId, TenantId};
use crate::names::{AccountName, ClaimedName, FailureReason, GroupName, Hostname};
use crate::policy::{CheckInAction, JitPolicy, PostSessionActions};
use std::collections::BTreeSet;
use uuid::Uuid;

/// What a session checked out with, as the computer needs it to grant access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessGrant {
    pub session_id: SessionId,
    pub technician_id: TechnicianId,
    pub account: AccountName,
    pub owner: AccountOwner,
    pub admin_group: GroupName,
    pub on_check_in: CheckInAction,
    pub rotate_on_check_in: bool,
    /// What the agent does to the account's live logons when the access ends.
    pub post_session: PostSessionActions,
    /// JIT provisioning is on: create the account if it does not exist.
    pub create_account: bool,
}

#[derive(Debug, Clone)]
pub enum ComputerCommand {
    Enroll {
        computer_id: ComputerId,
        tenant_id: TenantId,
        hostname: Hostname,
        os: OsKind,
        agent_key_id: AgentKeyId,
        /// The machine's admin group, as the agent found it.
        admin_group: Option<GroupName>,
        by: Actor,
        at: Timestamp,
    },
    Decommission {
        by: Actor,
        at: Timestamp,
    },
    /// Sets (`Some`) or clears (`None`) this computer's own JIT policy.
    OverrideJitPolicy {
        policy: Option<JitPolicy>,
        by: Actor,
        at: Timestamp,
    },
    /// From the process manager, after a check-out.
    GrantAccess {
        grant: AccessGrant,
        at: Timestamp,
    },
    /// From the process manager, after a check-in or a failed check-out.
    ReleaseAccess {
        session_id: SessionId,
        at: Timestamp,
    },
    /// From the process manager, after a login-mode change or a technician's removal.
    RetireAccounts {
        reason: RetireReason,
        at: Timestamp,
    },
    /// The agent carried out a request and verified the result.
    ReportSucceeded {
        request_id: RequestId,
        verified: AccountObservation,
        at: Timestamp,
    },
    ReportFailed {
        request_id: RequestId,
        reason: FailureReason,
        at: Timestamp,
    },
    /// Re-issue a failed revocation or clean-up (the caller decides when: back-off).
    RetryRequest {
        request_id: RequestId,
        at: Timestamp,
    },
    /// The agent granted access offline after checking a technician's TOTP code, and
    /// uploaded the record once it could reach the server. Latchkey then rotates the
    /// account's password once more (the one the agent printed must not outlive the visit).
    RecordOfflineLogin {
        login_id: Uuid,
        account: AccountName,
        technician_id: Option<TechnicianId>,
        /// The name given at a shared-account login.
        claimed_by: Option<ClaimedName>,
        generation: u32,
        /// The group the agent added the account to (`None` from agents before 0.1 that
        /// did not say).
        admin_group: Option<GroupName>,
        used_at: Timestamp,
        until: Timestamp,
        at: Timestamp,
    },
    /// The agent refused offline logins for an account after too many wrong TOTP codes,
    /// and uploaded the lockout once it could reach the server. Recorded once per
    /// `lockout_id`; the codes themselves are never sent.
    RecordOfflineLockout {
        lockout_id: Uuid,
        account: AccountName,
        technician_id: Option<TechnicianId>,
        failures: u32,
        locked_at: Timestamp,
        locked_until: Timestamp,
        at: Timestamp,
    },
    /// The agent's periodic report of who is in the admin group on the machine.
    ReportInventory {
        group: GroupName,
        members: BTreeSet<String>,
        at: Timestamp,
    },
    /// A technician asks for their offline TOTP secret on this computer (their named account's,
    /// or the shared account's). The caller checks that they work for the computer's tenant.
    DiscloseOfflineSecret {
        technician_id: TechnicianId,
        by: Actor,
        at: Timestamp,
    },
}
