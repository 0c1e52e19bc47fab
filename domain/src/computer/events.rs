//! The facts of a `computer-<id>` stream. Each event's stored name and schema version are
//! fixed in the `domain_events!` list at the end, never derived from a Rust path; the JSON
//! Schemas in `schemas/events/` are generated from these structs (doc comments included), so
//! a change here is a change of the contract that agents and auditors rely on.

use super::{
    AccountObservation, AccountOwner, Operation, OsKind, Purpose, ReleaseOutcome, RetireReason,
};
use crate::event::{domain_events, Actor, Timestamp};
use crate::ids::{AgentKeyId, ComputerId, RequestId, SessionId, TechnicianId, TenantId};
use crate::names::{AccountName, ClaimedName, FailureReason, GroupName, Hostname};
use crate::policy::{CheckInAction, JitPolicy, PostSessionActions};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComputerEnrolled {
    pub computer_id: ComputerId,
    pub tenant_id: TenantId,
    pub hostname: Hostname,
    pub os: OsKind,
    pub agent_key_id: AgentKeyId,
    /// The machine's admin group as the agent found it (absent from agents that did not
    /// say, and before agents reported it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_group: Option<GroupName>,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComputerDecommissioned {
    pub computer_id: ComputerId,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ComputerJitPolicyOverridden {
    pub computer_id: ComputerId,
    /// `None`: the override was removed and the tenant's policy applies again.
    pub policy: Option<JitPolicy>,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAccessRequested {
    pub computer_id: ComputerId,
    pub session_id: SessionId,
    pub technician_id: TechnicianId,
    pub account: AccountName,
    pub owner: AccountOwner,
    pub admin_group: GroupName,
    pub on_check_in: CheckInAction,
    pub rotate_on_check_in: bool,
    /// What the agent does to the account's live logons when this session's access ends;
    /// absent for sessions requested before post-session actions existed (none then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_session: Option<PostSessionActions>,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningRequested {
    pub computer_id: ComputerId,
    pub request_id: RequestId,
    pub session_id: Option<SessionId>,
    pub purpose: Purpose,
    pub operation: Operation,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningRetried {
    pub computer_id: ComputerId,
    pub request_id: RequestId,
    pub attempt: u32,
    pub operation: Operation,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningSuperseded {
    pub computer_id: ComputerId,
    pub request_id: RequestId,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningFailed {
    pub computer_id: ComputerId,
    pub request_id: RequestId,
    pub attempt: u32,
    pub operation: Operation,
    pub reason: FailureReason,
    pub at: Timestamp,
}

/// Declares the agent-verified result events, one per kind of operation.
macro_rules! verified_results {
    ($($(#[$doc:meta])* $name:ident { $($field:ident: $ty:ty),* })+) => {$(
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct $name {
            pub computer_id: ComputerId,
            pub request_id: RequestId,
            pub account: AccountName,
            $(pub $field: $ty,)*
            pub verified: AccountObservation,
            pub at: Timestamp,
        }
    )+};
}

verified_results! {
    /// The agent created (or found) the account.
    AccountProvisioned {}
    /// The agent set password `version`; the password itself is only in the secret store.
    PasswordRotated { version: u32 }
    AddedToAdminGroup { group: GroupName }
    RemovedFromAdminGroup { group: GroupName }
    /// The agent carried out the post-session actions and verified them: `verified` says
    /// how many processes of the account were left and whether sudo still held a credential.
    PostSessionActionsTaken { actions: PostSessionActions }
    AccountDeleted {}
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAccessGranted {
    pub computer_id: ComputerId,
    pub session_id: SessionId,
    pub account: AccountName,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAccessFailed {
    pub computer_id: ComputerId,
    pub session_id: SessionId,
    pub reason: FailureReason,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionAccessReleased {
    pub computer_id: ComputerId,
    pub session_id: SessionId,
    pub account: Option<AccountName>,
    pub outcome: ReleaseOutcome,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountRetirementStarted {
    pub computer_id: ComputerId,
    pub account: AccountName,
    pub reason: RetireReason,
    pub at: Timestamp,
}

/// An offline TOTP secret now exists for the account on this computer: per (computer,
/// technician) for a named account, per computer for the shared account. The secret itself
/// is in the secret store under (computer, account, generation).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineSecretIssued {
    pub computer_id: ComputerId,
    pub account: AccountName,
    pub technician_id: Option<TechnicianId>,
    pub generation: u32,
    pub at: Timestamp,
}

/// The agent let someone in offline with the account's TOTP code, until `until`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineLoginRecorded {
    pub computer_id: ComputerId,
    /// The agent's id for this login (uploads are idempotent by it).
    pub login_id: Uuid,
    pub account: AccountName,
    /// The named account's technician; `None` for the shared account.
    pub technician_id: Option<TechnicianId>,
    /// The name the person gave at a shared-account login (a claim: the code proves only
    /// possession of the computer's shared secret); absent from older agents' uploads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claimed_by: Option<ClaimedName>,
    pub generation: u32,
    /// The admin group the agent added the account to for the login; absent in uploads
    /// from agents that did not say (read models then take the group the agent last
    /// reported in its inventory).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_group: Option<GroupName>,
    pub used_at: Timestamp,
    pub until: Timestamp,
    pub at: Timestamp,
}

/// An uploaded offline login whose end had not come yet is ended now, explicitly, instead
/// of running on with a password nobody knows after the follow-up rotation: the computer is
/// back online, and the technician checks out as usual. What follows is requested with it:
/// the account out of the admin group (unless an online session holds it), the password
/// rotated, the logons ended and sudo's cached credentials cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineLoginEnded {
    pub computer_id: ComputerId,
    pub login_id: Uuid,
    pub account: AccountName,
    /// The end the agent gave the login, which it does not reach.
    pub until: Timestamp,
    /// An online session holds the account's admin group: the membership stays for it,
    /// and its logons are left alone.
    pub kept_for_session: bool,
    pub at: Timestamp,
}

/// The agent locked offline login for an account after `failures` wrong TOTP codes within
/// its window: until `locked_until` it refused every code for it, right or wrong (the
/// agent's clock, like `locked_at`). No code is in the event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineLoginLockedOut {
    pub computer_id: ComputerId,
    /// The agent's id for this lockout (uploads are idempotent by it).
    pub lockout_id: Uuid,
    pub account: AccountName,
    /// The named account's technician; `None` for the shared account.
    pub technician_id: Option<TechnicianId>,
    pub failures: u32,
    pub locked_at: Timestamp,
    pub locked_until: Timestamp,
    pub at: Timestamp,
}

/// The members of the admin group on the machine, as the agent read them (recorded when
/// they change). Members no open session explains are drift.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminGroupInventoried {
    pub computer_id: ComputerId,
    pub group: GroupName,
    pub members: BTreeSet<String>,
    pub at: Timestamp,
}

/// A technician was shown an offline TOTP secret (as an `otpauth://` URI); the secret itself
/// is never in an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineSecretDisclosed {
    pub computer_id: ComputerId,
    pub account: AccountName,
    pub technician_id: TechnicianId,
    pub generation: u32,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineSecretRevoked {
    pub computer_id: ComputerId,
    pub account: AccountName,
    pub generation: u32,
    pub at: Timestamp,
}

domain_events!(
    /// Everything that happens on a computer.
    ComputerEvent {
        ComputerEnrolled = "ComputerEnrolled" v 1,
        ComputerDecommissioned = "ComputerDecommissioned" v 1,
        ComputerJitPolicyOverridden = "ComputerJitPolicyOverridden" v 1,
        SessionAccessRequested = "SessionAccessRequested" v 1,
        ProvisioningRequested = "ProvisioningRequested" v 1,
        ProvisioningRetried = "ProvisioningRetried" v 1,
        ProvisioningSuperseded = "ProvisioningSuperseded" v 1,
        ProvisioningFailed = "ProvisioningFailed" v 1,
        AccountProvisioned = "AccountProvisioned" v 1,
        PasswordRotated = "PasswordRotated" v 1,
        AddedToAdminGroup = "AddedToAdminGroup" v 1,
        RemovedFromAdminGroup = "RemovedFromAdminGroup" v 1,
        AccountDeleted = "AccountDeleted" v 1,
        PostSessionActionsTaken = "PostSessionActionsTaken" v 1,
        SessionAccessGranted = "SessionAccessGranted" v 1,
        SessionAccessFailed = "SessionAccessFailed" v 1,
        SessionAccessReleased = "SessionAccessReleased" v 1,
        AccountRetirementStarted = "AccountRetirementStarted" v 1,
        OfflineSecretIssued = "OfflineSecretIssued" v 1,
        OfflineSecretRevoked = "OfflineSecretRevoked" v 1,
        OfflineSecretDisclosed = "OfflineSecretDisclosed" v 1,
        OfflineLoginRecorded = "OfflineLoginRecorded" v 1,
        OfflineLoginEnded = "OfflineLoginEnded" v 1,
        OfflineLoginLockedOut = "OfflineLoginLockedOut" v 1,
        AdminGroupInventoried = "AdminGroupInventoried" v 1,
    }
);
