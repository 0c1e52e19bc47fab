//! A customer computer: its enrollment, the local accounts Latchkey manages on it (group
//! membership, password versions, offline secrets) and the provisioning requests its agent
//! carries out, in stream order. Requests are idempotent "ensure" operations; the agent
//! reports what it verified. Passwords and TOTP secrets are never here: a rotation names a
//! password version, and the secret store keeps the password under (computer, account,
//! version). Revocations are never dropped: a failed one waits for a retry until it succeeds
//! or a later change makes it unnecessary ("superseded").

use crate::event::{domain_events, Actor, Timestamp};
use crate::ids::{AgentKeyId, ComputerId, RequestId, SessionId, TechnicianId, TenantId};
use crate::names::{AccountName, FailureReason, GroupName, Hostname};
use crate::policy::{CheckInAction, JitPolicy, LoginMode};
use crate::{Aggregate, DomainError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OsKind {
    Windows,
    Linux,
    Macos,
}

/// Whose account it is; decides which login mode created it and who may use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AccountOwner {
    /// A technician's named account (`msp-nik`).
    Named { technician_id: TechnicianId },
    /// The tenant's shared account (`msp-2356`).
    Shared,
    /// A per-session account (`nik_566054625600`), possibly kept for reuse.
    Ephemeral { technician_id: TechnicianId },
}

impl AccountOwner {
    pub fn login_mode(&self) -> LoginMode {
        match self {
            AccountOwner::Named { .. } => LoginMode::Named,
            AccountOwner::Shared => LoginMode::Shared,
            AccountOwner::Ephemeral { .. } => LoginMode::Ephemeral,
        }
    }

    pub fn technician(&self) -> Option<TechnicianId> {
        match self {
            AccountOwner::Named { technician_id } | AccountOwner::Ephemeral { technician_id } => {
                Some(*technician_id)
            }
            AccountOwner::Shared => None,
        }
    }

    /// Named and shared accounts have an offline TOTP secret; ephemeral ones are online only.
    fn has_offline_secret(&self) -> bool {
        !matches!(self, AccountOwner::Ephemeral { .. })
    }
}

/// One idempotent change the agent makes on the computer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Operation {
    /// Ensure the account exists (created by Latchkey, with no group membership of its own).
    EnsureAccount { account: AccountName },
    /// Set the account's password to version `version` from the secret store.
    RotatePassword { account: AccountName, version: u32 },
    AddToGroup {
        account: AccountName,
        group: GroupName,
    },
    RemoveFromGroup {
        account: AccountName,
        group: GroupName,
    },
    /// Ensure the account is gone.
    DeleteAccount { account: AccountName },
}

impl Operation {
    pub fn account(&self) -> &AccountName {
        match self {
            Operation::EnsureAccount { account }
            | Operation::RotatePassword { account, .. }
            | Operation::AddToGroup { account, .. }
            | Operation::RemoveFromGroup { account, .. }
            | Operation::DeleteAccount { account } => account,
        }
    }

    /// Does what the agent verified on the machine show this operation done?
    pub fn verify(&self, seen: &AccountObservation) -> Result<(), String> {
        let ok = match self {
            Operation::EnsureAccount { .. } => seen.present,
            Operation::RotatePassword { version, .. } => {
                seen.present && seen.password_version == Some(*version)
            }
            Operation::AddToGroup { group, .. } => seen.present && seen.groups.contains(group),
            Operation::RemoveFromGroup { group, .. } => {
                !seen.present || !seen.groups.contains(group)
            }
            Operation::DeleteAccount { .. } => !seen.present,
        };
        if ok {
            Ok(())
        } else {
            Err(format!(
                "the agent reported success but verified {seen} after {self}"
            ))
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::EnsureAccount { account } => write!(f, "ensure account {account}"),
            Operation::RotatePassword { account, version } => {
                write!(f, "rotate the password of {account} to version {version}")
            }
            Operation::AddToGroup { account, group } => write!(f, "add {account} to {group}"),
            Operation::RemoveFromGroup { account, group } => {
                write!(f, "remove {account} from {group}")
            }
            Operation::DeleteAccount { account } => write!(f, "delete account {account}"),
        }
    }
}

/// Why a request exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    /// Part of giving a session access. Not retried: a failure fails the session.
    Grant,
    /// Taking a session's access away. Retried until done.
    Revoke,
    /// Removing an account the current settings no longer want. Retried until done.
    Cleanup,
}

/// What the agent read back from the machine about one managed account after a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountObservation {
    /// The Latchkey-managed account exists (an account of the same name that Latchkey did not
    /// create does not count, and is never touched).
    pub present: bool,
    /// The account's local groups.
    pub groups: BTreeSet<GroupName>,
    /// The password version the agent last set and verified, if any.
    pub password_version: Option<u32>,
}

impl fmt::Display for AccountObservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.present {
            return f.write_str("the account absent");
        }
        let groups: Vec<&str> = self.groups.iter().map(GroupName::as_str).collect();
        write!(f, "the account present in groups [{}]", groups.join(", "))?;
        match self.password_version {
            Some(v) => write!(f, " with password version {v}"),
            None => f.write_str(" with no password set by Latchkey"),
        }
    }
}

/// Why accounts are being retired (deleted because the settings no longer want them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RetireReason {
    /// The tenant left this login mode.
    LoginModeChanged { from: LoginMode },
    /// The technician was offboarded or left the tenant.
    TechnicianRemoved { technician_id: TechnicianId },
    /// The computer was decommissioned.
    ComputerDecommissioned,
}

impl RetireReason {
    fn selects(&self, owner: &AccountOwner) -> bool {
        match self {
            RetireReason::LoginModeChanged { from } => owner.login_mode() == *from,
            RetireReason::TechnicianRemoved { technician_id } => {
                owner.technician() == Some(*technician_id)
            }
            RetireReason::ComputerDecommissioned => true,
        }
    }
}

/// What releasing a session's access did to its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseOutcome {
    /// Another session still uses the account and its admin group: both are kept.
    KeptForOtherSessions,
    RemovedFromGroup,
    Deleted,
    /// The session never got as far as the admin group on this computer.
    NothingGranted,
}

/// How far a session's access on this computer has come.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum GrantStage {
    /// Account ensured and password rotated, waiting for the agent.
    Preparing {
        pending: BTreeSet<RequestId>,
    },
    /// Password verified; waiting for the admin group membership.
    Joining {
        request: RequestId,
    },
    Granted,
    Failed,
}

impl GrantStage {
    /// The session's account was (or is about to be) put in the admin group.
    fn holds_membership(&self) -> bool {
        matches!(self, GrantStage::Joining { .. } | GrantStage::Granted)
    }
}

/// A session's access on this computer, with the policy it was checked out under.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub session_id: SessionId,
    pub technician_id: TechnicianId,
    pub account: AccountName,
    pub admin_group: GroupName,
    pub on_check_in: CheckInAction,
    pub rotate_on_check_in: bool,
    pub stage: GrantStage,
    /// The account did not exist (as far as Latchkey wanted) before this grant: a grant
    /// that fails before the account joins the group deletes it again.
    #[serde(default)]
    pub created_account: bool,
}

/// A Latchkey account on this computer, as Latchkey wants it to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedAccount {
    pub name: AccountName,
    pub owner: AccountOwner,
    /// Latchkey wants the account to exist (it asked for it and has not asked to delete it).
    pub exists: bool,
    /// The sessions using the account, with the admin group each uses.
    pub sessions: BTreeMap<SessionId, GroupName>,
    /// The latest password version requested (versions never repeat, even across deletion).
    pub password_version: u32,
    /// Deleted as soon as no session uses it.
    pub retiring: bool,
    /// The generation of the account's offline TOTP secret, if one is in force.
    pub offline_secret: Option<u32>,
    pub offline_generations: u32,
    /// What the agent last verified.
    pub verified: Option<AccountObservation>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RequestStatus {
    Pending { attempt: u32 },
    Failed { attempt: u32, reason: FailureReason },
}

/// A request the agent has not yet completed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    pub request_id: RequestId,
    pub session_id: Option<SessionId>,
    pub purpose: Purpose,
    pub operation: Operation,
    pub status: RequestStatus,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputerProfile {
    pub computer_id: ComputerId,
    pub tenant_id: TenantId,
    pub hostname: Hostname,
    pub os: OsKind,
    pub agent_key_id: AgentKeyId,
    /// The machine's admin group as the agent reported it at enrolment (e.g. `sudo`,
    /// `wheel`); `None` if it did not say.
    #[serde(default)]
    pub admin_group: Option<GroupName>,
}

/// The form of [`Computer`] kept in snapshots (see the server's command path): bump it
/// whenever the state's fields or their meaning change, so older snapshots are ignored and the
/// state is folded from the events again.
pub const SNAPSHOT_VERSION: u32 = 3;

/// How many released sessions a computer remembers. A grant or release is repeated only when
/// the process-manager runner handles its last batch of events again after a crash, and a
/// batch (at most this many events) cannot release more sessions than it holds events; the
/// runner checks its batch size against this at compile time.
pub const RELEASED_KEPT: usize = 256;

/// The last [`RELEASED_KEPT`] sessions released, oldest first (a small, flat list: the state
/// is cloned for every command).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecentlyReleased(std::collections::VecDeque<SessionId>);

impl RecentlyReleased {
    pub fn contains(&self, session: SessionId) -> bool {
        self.0.contains(&session)
    }

    fn push(&mut self, session: SessionId) {
        if self.contains(session) {
            return;
        }
        if self.0.len() == RELEASED_KEPT {
            self.0.pop_front();
        }
        self.0.push_back(session);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computer {
    /// `None` until enrolled.
    pub profile: Option<ComputerProfile>,
    pub decommissioned: bool,
    pub policy_override: Option<JitPolicy>,
    pub accounts: BTreeMap<AccountName, ManagedAccount>,
    /// Sessions whose access is being set up or is in force here; a released session leaves
    /// this map (for [`Computer::released`]), so the state does not grow with the past.
    pub grants: BTreeMap<SessionId, Grant>,
    /// Requests pending or failed; completed and superseded ones leave this map.
    pub open_requests: BTreeMap<RequestId, OpenRequest>,
    pub last_request: u64,
    /// The sessions released most recently (also those released before their grant arrived):
    /// a repeated grant or release for one of them does nothing.
    pub released: RecentlyReleased,
    /// The highest password version and offline-secret generation of the accounts deleted
    /// and forgotten: an account created again under the same name continues after them, so
    /// no version or generation is ever used twice (the secret store keys on them).
    pub forgotten_versions: (u32, u32),
    /// Offline logins the agent has reported (by the agent's id for each), for idempotency.
    pub offline_logins: BTreeSet<Uuid>,
    /// Offline-login lockouts the agent has reported (by the agent's id for each).
    #[serde(default)]
    pub offline_lockouts: BTreeSet<Uuid>,
    /// The admin group's members as the agent last reported them.
    pub inventory: Option<(GroupName, BTreeSet<String>)>,
}

impl Computer {
    /// The computer's override if it has one, else the tenant's policy.
    pub fn effective_policy<'a>(&'a self, tenant_policy: &'a JitPolicy) -> &'a JitPolicy {
        self.policy_override.as_ref().unwrap_or(tenant_policy)
    }

    /// The admin group sessions on this computer use: the one the effective policy names,
    /// else the one the agent reported at enrolment, else `Administrators` on Windows.
    pub fn admin_group(&self, tenant_policy: &JitPolicy) -> Result<GroupName, DomainError> {
        if let Some(group) = self.effective_policy(tenant_policy).admin_group() {
            return Ok(group.clone());
        }
        let profile = self
            .profile
            .as_ref()
            .ok_or(DomainError::ComputerNotEnrolled)?;
        match (&profile.admin_group, profile.os) {
            (Some(group), _) => Ok(group.clone()),
            (None, OsKind::Windows) => {
                Ok(GroupName::parse("Administrators").expect("a valid group name"))
            }
            (None, _) => Err(DomainError::AdminGroupUnknown),
        }
    }

    /// A Latchkey account of this name exists (or is being created) and is not being retired.
    pub fn has_usable_account(&self, name: &AccountName) -> bool {
        self.accounts
            .get(name)
            .is_some_and(|a| a.exists && !a.retiring)
    }

    /// The technician's kept ephemeral account, for "reuse existing account".
    pub fn reusable_account(&self, technician: TechnicianId) -> Option<&AccountName> {
        self.accounts
            .values()
            .filter(|a| {
                a.owner
                    == AccountOwner::Ephemeral {
                        technician_id: technician,
                    }
            })
            .find(|a| a.exists && !a.retiring)
            .map(|a| &a.name)
    }

    /// The offline secret in force that `technician` may use here: their named account's, or
    /// else the shared account's (DESIGN.md §2). `(account, generation)`.
    pub fn offline_secret_for(&self, technician: TechnicianId) -> Option<(&AccountName, u32)> {
        let usable = |a: &&ManagedAccount| a.exists && !a.retiring && a.offline_secret.is_some();
        let named = self.accounts.values().filter(usable).find(|a| {
            a.owner
                == AccountOwner::Named {
                    technician_id: technician,
                }
        });
        let shared = || {
            self.accounts
                .values()
                .filter(usable)
                .find(|a| a.owner == AccountOwner::Shared)
        };
        named
            .or_else(shared)
            .and_then(|a| a.offline_secret.map(|g| (&a.name, g)))
    }

    /// Sessions whose access is being set up or is in force here.
    pub fn open_sessions(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// Revocation and clean-up requests that failed and wait for a retry (a failed grant
    /// request is closed at once: its session fails instead).
    pub fn failed_requests(&self) -> impl Iterator<Item = &OpenRequest> {
        self.open_requests
            .values()
            .filter(|r| matches!(r.status, RequestStatus::Failed { .. }))
    }

    /// Is `op` still what Latchkey wants? A failed revocation that a later change made
    /// pointless (the account re-joined the group for a new session, a newer password was
    /// set, the account was re-created) must not be replayed after that change.
    fn still_wanted(&self, op: &Operation) -> bool {
        let Some(account) = self.accounts.get(op.account()) else {
            return true;
        };
        match op {
            Operation::RemoveFromGroup { group, .. } => !self.group_needed(account, group, None),
            Operation::RotatePassword { version, .. } => {
                account.exists && account.password_version == *version
            }
            Operation::DeleteAccount { .. } => !account.exists,
            Operation::EnsureAccount { .. } | Operation::AddToGroup { .. } => true,
        }
    }

    /// Whether `account` is in `group` on the machine, or will be once the open requests have
    /// run: what the agent last verified, then each open request in order.
    fn may_be_member(&self, account: &ManagedAccount, group: &GroupName) -> bool {
        let verified = account
            .verified
            .as_ref()
            .is_some_and(|seen| seen.present && seen.groups.contains(group));
        self.open_requests
            .values()
            .filter(|r| r.operation.account() == &account.name)
            .fold(verified, |member, r| match &r.operation {
                Operation::AddToGroup { group: g, .. } if g == group => true,
                Operation::RemoveFromGroup { group: g, .. } if g == group => false,
                Operation::DeleteAccount { .. } => false,
                _ => member,
            })
    }

    /// Does a session other than `except` hold (or is about to hold) `group` through `account`?
    fn group_needed(
        &self,
        account: &ManagedAccount,
        group: &GroupName,
        except: Option<SessionId>,
    ) -> bool {
        account.sessions.iter().any(|(session, g)| {
            Some(*session) != except
                && g == group
                && self
                    .grants
                    .get(session)
                    .is_some_and(|grant| grant.stage.holds_membership())
        })
    }

    /// Forgets an account that is gone from the machine and that nothing refers to any more
    /// (no session, no open request, no offline secret), keeping its highest password version
    /// and secret generation so a later account of the same name continues after them. An
    /// ephemeral account per session would otherwise stay in the state for ever.
    fn forget_if_gone(&mut self, name: &AccountName) {
        let Some(account) = self.accounts.get(name) else {
            return;
        };
        let referred = self
            .open_requests
            .values()
            .any(|r| r.operation.account() == name);
        let gone = !account.exists
            && account.sessions.is_empty()
            && account.offline_secret.is_none()
            && account.verified.as_ref().is_some_and(|seen| !seen.present);
        if gone && !referred {
            let (versions, generations) = &mut self.forgotten_versions;
            *versions = (*versions).max(account.password_version);
            *generations = (*generations).max(account.offline_generations);
            self.accounts.remove(name);
        }
    }

    fn computer_id(&self) -> Result<ComputerId, DomainError> {
        self.profile
            .as_ref()
            .map(|p| p.computer_id)
            .ok_or(DomainError::ComputerNotEnrolled)
    }
}

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
        SessionAccessGranted = "SessionAccessGranted" v 1,
        SessionAccessFailed = "SessionAccessFailed" v 1,
        SessionAccessReleased = "SessionAccessReleased" v 1,
        AccountRetirementStarted = "AccountRetirementStarted" v 1,
        OfflineSecretIssued = "OfflineSecretIssued" v 1,
        OfflineSecretRevoked = "OfflineSecretRevoked" v 1,
        OfflineSecretDisclosed = "OfflineSecretDisclosed" v 1,
        OfflineLoginRecorded = "OfflineLoginRecorded" v 1,
        OfflineLoginLockedOut = "OfflineLoginLockedOut" v 1,
        AdminGroupInventoried = "AdminGroupInventoried" v 1,
    }
);

/// Builds a decision event by event on a scratch copy of the state, so each step sees the
/// effect of the previous ones (next request id, password version) exactly as replay will.
struct Decision {
    state: Computer,
    events: Vec<ComputerEvent>,
    computer_id: ComputerId,
    at: Timestamp,
}

impl Decision {
    fn new(state: &Computer, at: Timestamp) -> Result<Self, DomainError> {
        Ok(Self {
            computer_id: state.computer_id()?,
            state: state.clone(),
            events: Vec::new(),
            at,
        })
    }

    fn emit(&mut self, event: impl Into<ComputerEvent>) {
        let event = event.into();
        self.state = Computer::evolve(std::mem::take(&mut self.state), &event);
        self.events.push(event);
    }

    fn request(&mut self, session_id: Option<SessionId>, purpose: Purpose, operation: Operation) {
        let request_id = RequestId(self.state.last_request + 1);
        self.emit(ProvisioningRequested {
            computer_id: self.computer_id,
            request_id,
            session_id,
            purpose,
            operation,
            at: self.at,
        });
    }

    fn next_password_version(&self, account: &AccountName) -> u32 {
        self.state
            .accounts
            .get(account)
            .map_or(self.state.forgotten_versions.0, |a| a.password_version)
            + 1
    }

    fn rotate(&mut self, session_id: Option<SessionId>, purpose: Purpose, account: &AccountName) {
        let version = self.next_password_version(account);
        let operation = Operation::RotatePassword {
            account: account.clone(),
            version,
        };
        self.request(session_id, purpose, operation);
    }

    fn revoke_offline_secret(&mut self, account: &AccountName) {
        if let Some(generation) = self
            .state
            .accounts
            .get(account)
            .and_then(|a| a.offline_secret)
        {
            self.emit(OfflineSecretRevoked {
                computer_id: self.computer_id,
                account: account.clone(),
                generation,
                at: self.at,
            });
        }
    }

    fn access_failed(&mut self, session_id: SessionId, reason: FailureReason) {
        self.emit(SessionAccessFailed {
            computer_id: self.computer_id,
            session_id,
            reason,
            at: self.at,
        });
    }

    /// Supersedes failed revocations of `account` that the latest change made pointless.
    fn supersede_unwanted(&mut self, account: &AccountName) {
        let unwanted: Vec<RequestId> = self
            .state
            .failed_requests()
            .filter(|r| r.operation.account() == account && r.purpose != Purpose::Grant)
            .filter(|r| !self.state.still_wanted(&r.operation))
            .map(|r| r.request_id)
            .collect();
        for request_id in unwanted {
            self.emit(ProvisioningSuperseded {
                computer_id: self.computer_id,
                request_id,
                at: self.at,
            });
        }
    }

    fn finish(self) -> Vec<ComputerEvent> {
        self.events
    }
}

/// A reason text made by Latchkey itself (never from user input), cut to the allowed length.
fn reason(text: impl Into<String>) -> FailureReason {
    let text: String = text.into();
    let cut: String = text.chars().take(1000).collect();
    FailureReason::parse(cut.trim().to_owned())
        .unwrap_or_else(|_| FailureReason::parse("unspecified failure").expect("valid reason"))
}

impl Computer {
    fn grant_access(
        &self,
        grant: AccessGrant,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let mut d = Decision::new(self, at)?;
        if self.grants.contains_key(&grant.session_id) || self.released.contains(grant.session_id) {
            return Ok(vec![]);
        }
        let session_id = grant.session_id;
        let existing = self.accounts.get(&grant.account);
        let refusal = if self.decommissioned {
            Some("the computer has been decommissioned".to_owned())
        } else if existing.is_some_and(|a| a.owner != grant.owner) {
            Some(format!(
                "account {} on this computer belongs to someone else",
                grant.account
            ))
        } else if !grant.create_account && !self.has_usable_account(&grant.account) {
            Some(format!(
                "JIT provisioning is disabled and account {} does not exist on this computer",
                grant.account
            ))
        } else {
            None
        };
        d.emit(SessionAccessRequested {
            computer_id: d.computer_id,
            session_id,
            technician_id: grant.technician_id,
            account: grant.account.clone(),
            owner: grant.owner,
            admin_group: grant.admin_group.clone(),
            on_check_in: grant.on_check_in,
            rotate_on_check_in: grant.rotate_on_check_in,
            at,
        });
        if let Some(why) = refusal {
            d.access_failed(session_id, reason(why));
            return Ok(d.finish());
        }
        // The password is rotated before the account may join the admin group: the join is
        // only requested once the agent has verified both of these (see `report_succeeded`).
        if grant.create_account {
            let op = Operation::EnsureAccount {
                account: grant.account.clone(),
            };
            d.request(Some(session_id), Purpose::Grant, op);
        }
        d.rotate(Some(session_id), Purpose::Grant, &grant.account);
        let account = &d.state.accounts[&grant.account];
        if grant.owner.has_offline_secret() && account.offline_secret.is_none() {
            let generation = account.offline_generations + 1;
            d.emit(OfflineSecretIssued {
                computer_id: d.computer_id,
                account: grant.account.clone(),
                technician_id: match grant.owner {
                    AccountOwner::Named { technician_id } => Some(technician_id),
                    _ => None,
                },
                generation,
                at,
            });
        }
        d.supersede_unwanted(&grant.account);
        Ok(d.finish())
    }

    fn release_access(
        &self,
        session_id: SessionId,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let mut d = Decision::new(self, at)?;
        let Some(grant) = self.grants.get(&session_id) else {
            if self.released.contains(session_id) {
                return Ok(vec![]);
            }
            d.emit(SessionAccessReleased {
                computer_id: d.computer_id,
                session_id,
                account: None,
                outcome: ReleaseOutcome::NothingGranted,
                at,
            });
            return Ok(d.finish());
        };
        let account = &self.accounts[&grant.account];
        let others_remain = account.sessions.keys().any(|s| *s != session_id);
        let had_membership = grant.stage.holds_membership();
        // An account made for a grant that never reached the group (the join failed, e.g.
        // the group does not exist) goes again: it holds a password nobody was shown.
        let never_used = grant.created_account
            && !had_membership
            && !self.may_be_member(account, &grant.admin_group);
        let deleting = !others_remain
            && account.exists
            && (grant.on_check_in == CheckInAction::DeleteAccount
                || account.retiring
                || never_used);
        // Out of the group unless another session still needs it: also when this session
        // never got there but the account is (or is about to be) a member anyway, through a
        // join requested for a session released earlier while this one still needed it.
        let remove_from_group = !self.group_needed(account, &grant.admin_group, Some(session_id))
            && (had_membership || self.may_be_member(account, &grant.admin_group));
        // A session that never reached the group never saw a password: nothing to rotate.
        let rotate = had_membership && (grant.rotate_on_check_in || deleting);
        let outcome = if deleting {
            ReleaseOutcome::Deleted
        } else if remove_from_group {
            ReleaseOutcome::RemovedFromGroup
        } else if had_membership {
            ReleaseOutcome::KeptForOtherSessions
        } else {
            ReleaseOutcome::NothingGranted
        };
        let (name, group) = (grant.account.clone(), grant.admin_group.clone());
        d.emit(SessionAccessReleased {
            computer_id: d.computer_id,
            session_id,
            account: Some(name.clone()),
            outcome,
            at,
        });
        // Membership first, then the password, then the account: if deletion fails (the
        // technician is still logged in), the account is already powerless.
        if remove_from_group {
            let op = Operation::RemoveFromGroup {
                account: name.clone(),
                group,
            };
            d.request(Some(session_id), Purpose::Revoke, op);
        }
        if rotate {
            d.rotate(Some(session_id), Purpose::Revoke, &name);
        }
        if deleting {
            d.revoke_offline_secret(&name);
            let op = Operation::DeleteAccount { account: name };
            d.request(Some(session_id), Purpose::Revoke, op);
        }
        Ok(d.finish())
    }

    fn retire_accounts(
        &self,
        why: RetireReason,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let mut d = Decision::new(self, at)?;
        let selected: Vec<&ManagedAccount> = self
            .accounts
            .values()
            .filter(|a| a.exists && !a.retiring && why.selects(&a.owner))
            .collect();
        for account in selected {
            d.emit(AccountRetirementStarted {
                computer_id: d.computer_id,
                account: account.name.clone(),
                reason: why,
                at,
            });
            // In use: deleted when its last session is released (see `release_access`).
            if account.sessions.is_empty() {
                d.revoke_offline_secret(&account.name);
                let op = Operation::DeleteAccount {
                    account: account.name.clone(),
                };
                d.request(None, Purpose::Cleanup, op);
            }
        }
        Ok(d.finish())
    }

    fn report_succeeded(
        &self,
        request_id: RequestId,
        verified: AccountObservation,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let Some(request) = self.open_request(request_id)? else {
            return Ok(vec![]);
        };
        if let Err(why) = request.operation.verify(&verified) {
            return self.report_failed(request_id, reason(why), at);
        }
        let mut d = Decision::new(self, at)?;
        let (computer_id, account) = (d.computer_id, request.operation.account().clone());
        match request.operation.clone() {
            Operation::EnsureAccount { .. } => d.emit(AccountProvisioned {
                computer_id,
                request_id,
                account,
                verified,
                at,
            }),
            Operation::RotatePassword { version, .. } => d.emit(PasswordRotated {
                computer_id,
                request_id,
                account,
                version,
                verified,
                at,
            }),
            Operation::AddToGroup { group, .. } => d.emit(AddedToAdminGroup {
                computer_id,
                request_id,
                account,
                group,
                verified,
                at,
            }),
            Operation::RemoveFromGroup { group, .. } => d.emit(RemovedFromAdminGroup {
                computer_id,
                request_id,
                account,
                group,
                verified,
                at,
            }),
            Operation::DeleteAccount { .. } => d.emit(AccountDeleted {
                computer_id,
                request_id,
                account,
                verified,
                at,
            }),
        }
        if let (Purpose::Grant, Some(session_id)) = (request.purpose, request.session_id) {
            // A session released meanwhile has no grant left to move on.
            let Some(grant) = d.state.grants.get(&session_id) else {
                return Ok(d.finish());
            };
            match &grant.stage {
                GrantStage::Preparing { pending } if pending.is_empty() => {
                    let op = Operation::AddToGroup {
                        account: grant.account.clone(),
                        group: grant.admin_group.clone(),
                    };
                    d.request(Some(session_id), Purpose::Grant, op);
                }
                GrantStage::Joining { request } if *request == request_id => {
                    let account = grant.account.clone();
                    d.emit(SessionAccessGranted {
                        computer_id,
                        session_id,
                        account,
                        at,
                    });
                }
                _ => {}
            }
        }
        Ok(d.finish())
    }

    fn report_failed(
        &self,
        request_id: RequestId,
        why: FailureReason,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let Some(request) = self.open_request(request_id)? else {
            return Ok(vec![]);
        };
        let RequestStatus::Pending { attempt } = request.status else {
            return Ok(vec![]); // already reported as failed
        };
        let mut d = Decision::new(self, at)?;
        d.emit(ProvisioningFailed {
            computer_id: d.computer_id,
            request_id,
            attempt,
            operation: request.operation.clone(),
            reason: why.clone(),
            at,
        });
        if let (Purpose::Grant, Some(session_id)) = (request.purpose, request.session_id) {
            let stage = self.grants.get(&session_id).map(|g| &g.stage);
            if matches!(
                stage,
                Some(GrantStage::Preparing { .. } | GrantStage::Joining { .. })
            ) {
                d.access_failed(session_id, why);
            }
        }
        Ok(d.finish())
    }

    fn retry_request(
        &self,
        request_id: RequestId,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let Some(request) = self.open_request(request_id)? else {
            return Ok(vec![]);
        };
        let RequestStatus::Failed { attempt, .. } = request.status else {
            return Ok(vec![]); // still pending: the agent has it
        };
        let mut d = Decision::new(self, at)?;
        if self.still_wanted(&request.operation) {
            d.emit(ProvisioningRetried {
                computer_id: d.computer_id,
                request_id,
                attempt: attempt + 1,
                operation: request.operation.clone(),
                at,
            });
        } else {
            d.emit(ProvisioningSuperseded {
                computer_id: d.computer_id,
                request_id,
                at,
            });
        }
        Ok(d.finish())
    }

    /// The open request, `None` if it was already completed or superseded, an error if this
    /// computer never issued it.
    fn open_request(&self, request_id: RequestId) -> Result<Option<&OpenRequest>, DomainError> {
        self.computer_id()?;
        match self.open_requests.get(&request_id) {
            Some(request) => Ok(Some(request)),
            None if request_id.0 >= 1 && request_id.0 <= self.last_request => Ok(None),
            None => Err(DomainError::UnknownRequest { request_id }),
        }
    }
}

impl Aggregate for Computer {
    type Command = ComputerCommand;
    type Event = ComputerEvent;
    const CATEGORY: &'static str = ComputerId::CATEGORY;

    fn decide(state: &Self, command: ComputerCommand) -> Result<Vec<ComputerEvent>, DomainError> {
        match command {
            ComputerCommand::Enroll {
                computer_id,
                tenant_id,
                hostname,
                os,
                agent_key_id,
                admin_group,
                by,
                at,
            } => {
                if state.profile.is_some() {
                    return Err(DomainError::ComputerAlreadyEnrolled);
                }
                Ok(vec![ComputerEnrolled {
                    computer_id,
                    tenant_id,
                    hostname,
                    os,
                    agent_key_id,
                    admin_group,
                    by,
                    at,
                }
                .into()])
            }
            ComputerCommand::Decommission { by, at } => {
                let computer_id = state.computer_id()?;
                if state.decommissioned {
                    return Ok(vec![]);
                }
                let mut events = vec![ComputerDecommissioned {
                    computer_id,
                    by,
                    at,
                }
                .into()];
                let after = Computer::evolve(state.clone(), &events[0]);
                events.extend(after.retire_accounts(RetireReason::ComputerDecommissioned, at)?);
                Ok(events)
            }
            ComputerCommand::OverrideJitPolicy { policy, by, at } => {
                let computer_id = state.computer_id()?;
                if state.decommissioned {
                    return Err(DomainError::ComputerDecommissioned);
                }
                if state.policy_override == policy {
                    return Ok(vec![]);
                }
                Ok(vec![ComputerJitPolicyOverridden {
                    computer_id,
                    policy,
                    by,
                    at,
                }
                .into()])
            }
            ComputerCommand::GrantAccess { grant, at } => state.grant_access(grant, at),
            ComputerCommand::ReleaseAccess { session_id, at } => {
                state.release_access(session_id, at)
            }
            ComputerCommand::RetireAccounts { reason, at } => state.retire_accounts(reason, at),
            ComputerCommand::ReportSucceeded {
                request_id,
                verified,
                at,
            } => state.report_succeeded(request_id, verified, at),
            ComputerCommand::ReportFailed {
                request_id,
                reason,
                at,
            } => state.report_failed(request_id, reason, at),
            ComputerCommand::RetryRequest { request_id, at } => state.retry_request(request_id, at),
            ComputerCommand::RecordOfflineLogin {
                login_id,
                account,
                technician_id,
                generation,
                admin_group,
                used_at,
                until,
                at,
            } => {
                if state.offline_logins.contains(&login_id) {
                    return Ok(vec![]);
                }
                let managed = state
                    .accounts
                    .get(&account)
                    .ok_or(DomainError::UnknownAccount {
                        account: account.clone(),
                    })?;
                let exists = managed.exists;
                let mut d = Decision::new(state, at)?;
                d.emit(OfflineLoginRecorded {
                    computer_id: d.computer_id,
                    login_id,
                    account: account.clone(),
                    technician_id,
                    generation,
                    admin_group,
                    used_at,
                    until,
                    at,
                });
                if exists {
                    d.rotate(None, Purpose::Cleanup, &account);
                }
                Ok(d.finish())
            }
            ComputerCommand::RecordOfflineLockout {
                lockout_id,
                account,
                technician_id,
                failures,
                locked_at,
                locked_until,
                at,
            } => {
                let computer_id = state.computer_id()?;
                if state.offline_lockouts.contains(&lockout_id) {
                    return Ok(vec![]);
                }
                // Recorded even for an account this computer no longer has: someone tried
                // codes at the machine, and the audit trail must say so.
                Ok(vec![OfflineLoginLockedOut {
                    computer_id,
                    lockout_id,
                    account,
                    technician_id,
                    failures,
                    locked_at,
                    locked_until,
                    at,
                }
                .into()])
            }
            ComputerCommand::ReportInventory { group, members, at } => {
                let computer_id = state.computer_id()?;
                let unchanged = state
                    .inventory
                    .as_ref()
                    .is_some_and(|(g, m)| *g == group && *m == members);
                if unchanged {
                    return Ok(vec![]);
                }
                Ok(vec![AdminGroupInventoried {
                    computer_id,
                    group,
                    members,
                    at,
                }
                .into()])
            }
            ComputerCommand::DiscloseOfflineSecret {
                technician_id,
                by,
                at,
            } => {
                let computer_id = state.computer_id()?;
                let (account, generation) = state
                    .offline_secret_for(technician_id)
                    .ok_or(DomainError::NoOfflineSecret)?;
                Ok(vec![OfflineSecretDisclosed {
                    computer_id,
                    account: account.clone(),
                    technician_id,
                    generation,
                    by,
                    at,
                }
                .into()])
            }
        }
    }

    fn evolve(mut state: Self, event: &ComputerEvent) -> Self {
        use ComputerEvent as E;
        match event {
            E::ComputerEnrolled(e) => {
                state.profile = Some(ComputerProfile {
                    computer_id: e.computer_id,
                    tenant_id: e.tenant_id,
                    hostname: e.hostname.clone(),
                    os: e.os,
                    agent_key_id: e.agent_key_id,
                    admin_group: e.admin_group.clone(),
                });
            }
            E::ComputerDecommissioned(_) => state.decommissioned = true,
            E::ComputerJitPolicyOverridden(e) => state.policy_override = e.policy.clone(),
            E::SessionAccessRequested(e) => {
                let (versions, generations) = state.forgotten_versions;
                let created_account = !state.accounts.get(&e.account).is_some_and(|a| a.exists);
                let account =
                    state
                        .accounts
                        .entry(e.account.clone())
                        .or_insert_with(|| ManagedAccount {
                            name: e.account.clone(),
                            owner: e.owner,
                            exists: false,
                            sessions: BTreeMap::new(),
                            password_version: versions,
                            retiring: false,
                            offline_secret: None,
                            offline_generations: generations,
                            verified: None,
                        });
                account.sessions.insert(e.session_id, e.admin_group.clone());
                account.retiring = false;
                state.grants.insert(
                    e.session_id,
                    Grant {
                        session_id: e.session_id,
                        technician_id: e.technician_id,
                        account: e.account.clone(),
                        admin_group: e.admin_group.clone(),
                        on_check_in: e.on_check_in,
                        rotate_on_check_in: e.rotate_on_check_in,
                        stage: GrantStage::Preparing {
                            pending: BTreeSet::new(),
                        },
                        created_account,
                    },
                );
            }
            E::ProvisioningRequested(e) => {
                state.last_request = state.last_request.max(e.request_id.0);
                state.open_requests.insert(
                    e.request_id,
                    OpenRequest {
                        request_id: e.request_id,
                        session_id: e.session_id,
                        purpose: e.purpose,
                        operation: e.operation.clone(),
                        status: RequestStatus::Pending { attempt: 1 },
                    },
                );
                if let Some(account) = state.accounts.get_mut(e.operation.account()) {
                    match &e.operation {
                        Operation::EnsureAccount { .. } => account.exists = true,
                        Operation::RotatePassword { version, .. } => {
                            account.password_version = *version
                        }
                        Operation::DeleteAccount { .. } => account.exists = false,
                        Operation::AddToGroup { .. } | Operation::RemoveFromGroup { .. } => {}
                    }
                }
                if let (Purpose::Grant, Some(session)) = (e.purpose, e.session_id) {
                    if let Some(grant) = state.grants.get_mut(&session) {
                        match (&e.operation, &mut grant.stage) {
                            (Operation::AddToGroup { .. }, stage) => {
                                *stage = GrantStage::Joining {
                                    request: e.request_id,
                                }
                            }
                            (_, GrantStage::Preparing { pending }) => {
                                pending.insert(e.request_id);
                            }
                            _ => {}
                        }
                    }
                }
            }
            E::ProvisioningRetried(e) => {
                if let Some(request) = state.open_requests.get_mut(&e.request_id) {
                    request.status = RequestStatus::Pending { attempt: e.attempt };
                }
            }
            E::ProvisioningSuperseded(e) => {
                state.open_requests.remove(&e.request_id);
            }
            E::ProvisioningFailed(e) => {
                if let Some(request) = state.open_requests.get_mut(&e.request_id) {
                    if request.purpose == Purpose::Grant {
                        // Its session failed; a grant is never retried, so it is closed.
                        state.open_requests.remove(&e.request_id);
                    } else {
                        request.status = RequestStatus::Failed {
                            attempt: e.attempt,
                            reason: e.reason.clone(),
                        };
                    }
                }
            }
            E::AccountProvisioned(AccountProvisioned {
                request_id,
                account,
                verified,
                ..
            })
            | E::PasswordRotated(PasswordRotated {
                request_id,
                account,
                verified,
                ..
            })
            | E::AddedToAdminGroup(AddedToAdminGroup {
                request_id,
                account,
                verified,
                ..
            })
            | E::RemovedFromAdminGroup(RemovedFromAdminGroup {
                request_id,
                account,
                verified,
                ..
            })
            | E::AccountDeleted(AccountDeleted {
                request_id,
                account,
                verified,
                ..
            }) => {
                if let Some(request) = state.open_requests.remove(request_id) {
                    if let Some(session) = request.session_id {
                        if let Some(Grant {
                            stage: GrantStage::Preparing { pending },
                            ..
                        }) = state.grants.get_mut(&session)
                        {
                            pending.remove(request_id);
                        }
                    }
                }
                if let Some(a) = state.accounts.get_mut(account) {
                    a.verified = Some(verified.clone());
                }
                if matches!(event, E::AccountDeleted(_)) {
                    state.forget_if_gone(account);
                }
            }
            E::SessionAccessGranted(e) => {
                if let Some(grant) = state.grants.get_mut(&e.session_id) {
                    grant.stage = GrantStage::Granted;
                }
            }
            E::SessionAccessFailed(e) => {
                if let Some(grant) = state.grants.get_mut(&e.session_id) {
                    grant.stage = GrantStage::Failed;
                }
            }
            E::SessionAccessReleased(e) => {
                if let Some(a) = e.account.as_ref().and_then(|a| state.accounts.get_mut(a)) {
                    a.sessions.remove(&e.session_id);
                }
                state.grants.remove(&e.session_id);
                state.released.push(e.session_id);
            }
            E::AccountRetirementStarted(e) => {
                if let Some(a) = state.accounts.get_mut(&e.account) {
                    a.retiring = true;
                }
            }
            E::OfflineSecretIssued(e) => {
                if let Some(a) = state.accounts.get_mut(&e.account) {
                    a.offline_secret = Some(e.generation);
                    a.offline_generations = a.offline_generations.max(e.generation);
                }
            }
            E::OfflineSecretRevoked(e) => {
                if let Some(a) = state.accounts.get_mut(&e.account) {
                    a.offline_secret = None;
                }
            }
            E::OfflineSecretDisclosed(_) => {}
            E::OfflineLoginRecorded(e) => {
                state.offline_logins.insert(e.login_id);
            }
            E::OfflineLoginLockedOut(e) => {
                state.offline_lockouts.insert(e.lockout_id);
            }
            E::AdminGroupInventoried(e) => {
                state.inventory = Some((e.group.clone(), e.members.clone()));
            }
        }
        state
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{admin, ann_id, computer_id, given, nik_id, t, tenant_id};
    use uuid::Uuid;

    pub fn enrolled(hostname: &str) -> ComputerEvent {
        ComputerEnrolled {
            computer_id: computer_id(),
            tenant_id: tenant_id(),
            hostname: Hostname::parse(hostname).unwrap(),
            os: OsKind::Windows,
            agent_key_id: AgentKeyId(Uuid::from_u128(500)),
            admin_group: None,
            by: admin(),
            at: t(0),
        }
        .into()
    }

    fn acct(name: &str) -> AccountName {
        AccountName::parse(name).unwrap()
    }

    fn admins() -> GroupName {
        GroupName::parse("Administrators").unwrap()
    }

    fn sid(n: u128) -> SessionId {
        SessionId(Uuid::from_u128(1000 + n))
    }

    pub fn named_grant(session: u128) -> AccessGrant {
        AccessGrant {
            session_id: sid(session),
            technician_id: nik_id(),
            account: acct("msp-nik"),
            owner: AccountOwner::Named {
                technician_id: nik_id(),
            },
            admin_group: admins(),
            on_check_in: CheckInAction::RemoveFromGroup,
            rotate_on_check_in: true,
            create_account: true,
        }
    }

    fn shared_grant(session: u128, technician_id: TechnicianId) -> AccessGrant {
        AccessGrant {
            technician_id,
            account: acct("msp-1234"),
            owner: AccountOwner::Shared,
            ..named_grant(session)
        }
    }

    fn seen(present: bool, groups: &[&str], version: Option<u32>) -> AccountObservation {
        AccountObservation {
            present,
            groups: groups
                .iter()
                .map(|g| GroupName::parse(*g).unwrap())
                .collect(),
            password_version: version,
        }
    }

    /// A computer's stream as a test builds it up: each command goes through the harness.
    struct Timeline(Vec<ComputerEvent>);

    impl Timeline {
        fn enrolled() -> Self {
            Timeline(vec![enrolled("W11-L-PASSWORD")])
        }
        fn run(&mut self, command: ComputerCommand) -> Vec<ComputerEvent> {
            let events = given::<Computer>(self.0.clone()).when(command).events();
            self.0.extend(events.clone());
            events
        }
        fn state(&self) -> Computer {
            Computer::replay(&self.0)
        }
        fn grant(&mut self, grant: AccessGrant) -> Vec<ComputerEvent> {
            self.run(ComputerCommand::GrantAccess { grant, at: t(1) })
        }
        fn succeed(&mut self, request: u64, verified: AccountObservation) -> Vec<ComputerEvent> {
            self.run(ComputerCommand::ReportSucceeded {
                request_id: RequestId(request),
                verified,
                at: t(2),
            })
        }
        fn fail(&mut self, request: u64, why: &str) -> Vec<ComputerEvent> {
            self.run(ComputerCommand::ReportFailed {
                request_id: RequestId(request),
                reason: FailureReason::parse(why).unwrap(),
                at: t(2),
            })
        }
        fn release(&mut self, session: u128) -> Vec<ComputerEvent> {
            self.run(ComputerCommand::ReleaseAccess {
                session_id: sid(session),
                at: t(30),
            })
        }
        /// Grants a session whose account already exists with password `version - 1`, with
        /// the agent confirming each step; returns the next free request number.
        fn grant_fully(&mut self, grant: AccessGrant, first_request: u64, version: u32) -> u64 {
            let group = grant.admin_group.to_string();
            let mut r = first_request;
            self.grant(grant.clone());
            if grant.create_account {
                self.succeed(r, seen(true, &[], Some(version - 1).filter(|v| *v > 0)));
                r += 1;
            }
            self.succeed(r, seen(true, &[], Some(version)));
            self.succeed(r + 1, seen(true, &[&group], Some(version)));
            r + 2
        }
    }

    fn requested(events: &[ComputerEvent]) -> Vec<(u64, Purpose, Operation)> {
        events
            .iter()
            .filter_map(|e| match e {
                ComputerEvent::ProvisioningRequested(r) => {
                    Some((r.request_id.0, r.purpose, r.operation.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn rotate(account: &str, version: u32) -> Operation {
        Operation::RotatePassword {
            account: acct(account),
            version,
        }
    }
    fn add(account: &str) -> Operation {
        Operation::AddToGroup {
            account: acct(account),
            group: admins(),
        }
    }
    fn remove(account: &str) -> Operation {
        Operation::RemoveFromGroup {
            account: acct(account),
            group: admins(),
        }
    }
    fn delete(account: &str) -> Operation {
        Operation::DeleteAccount {
            account: acct(account),
        }
    }

    /// Found by the simulation's proptest: nik has two sessions on one computer, both waiting
    /// for the join. The second is checked in; the first still needs the group, so nothing is
    /// removed. Then the first's join fails. The second's join is still queued, and when it
    /// runs nik would be an admin with no session left, unless the first's release removes
    /// him after it.
    #[test]
    fn a_join_queued_for_a_released_session_is_undone_when_the_last_session_goes() {
        let mut c = Timeline::enrolled();
        c.grant(named_grant(1)); // requests 1 (ensure), 2 (rotate v1)
        c.succeed(1, seen(true, &[], None));
        c.grant(named_grant(2)); // requests 3 (ensure), 4 (rotate v2)
        let first_join = c.succeed(2, seen(true, &[], Some(1)));
        assert_eq!(
            requested(&first_join),
            [(5, Purpose::Grant, add("msp-nik"))]
        );
        c.succeed(3, seen(true, &[], Some(1)));
        let second_join = c.succeed(4, seen(true, &[], Some(2)));
        assert_eq!(
            requested(&second_join),
            [(6, Purpose::Grant, add("msp-nik"))]
        );

        let released = c.release(2);
        assert!(
            released
                .iter()
                .any(|e| matches!(e, ComputerEvent::SessionAccessReleased(r)
                if r.outcome == ReleaseOutcome::KeptForOtherSessions)),
            "session 1 still needs the group: {released:?}"
        );
        assert!(!requested(&released)
            .iter()
            .any(|(_, _, op)| *op == remove("msp-nik")));

        c.fail(5, "the group is locked");
        let last = c.release(1);
        assert_eq!(
            requested(&last),
            [(8, Purpose::Revoke, remove("msp-nik"))],
            "request 6 (session 2's join) may still run, so the account must leave after it"
        );
        // The agent runs the join, then the removal: no admin left.
        c.succeed(6, seen(true, &["Administrators"], Some(2)));
        c.succeed(7, seen(true, &["Administrators"], Some(3)));
        c.succeed(8, seen(true, &[], Some(3)));
        assert!(c.state().open_requests.is_empty());
    }

    #[test]
    fn a_session_that_never_joined_removes_nothing_when_no_join_is_queued() {
        let mut c = Timeline::enrolled();
        c.grant(named_grant(1));
        c.succeed(1, seen(true, &[], None));
        c.succeed(2, seen(true, &[], Some(1)));
        c.fail(3, "the group is locked");
        let released = c.release(1);
        assert!(
            !requested(&released)
                .iter()
                .any(|(_, _, op)| matches!(op, Operation::RemoveFromGroup { .. })),
            "{released:?}"
        );
    }

    #[test]
    fn enrolling_a_computer_once() {
        given::<Computer>([])
            .when(ComputerCommand::Enroll {
                computer_id: computer_id(),
                tenant_id: tenant_id(),
                hostname: Hostname::parse("W11-L-PASSWORD").unwrap(),
                os: OsKind::Windows,
                agent_key_id: AgentKeyId(Uuid::from_u128(500)),
                admin_group: None,
                by: admin(),
                at: t(0),
            })
            .then_expect([enrolled("W11-L-PASSWORD")]);
        given::<Computer>([enrolled("W11-L-PASSWORD")])
            .when(ComputerCommand::Decommission {
                by: admin(),
                at: t(0),
            })
            .events();
        given::<Computer>([])
            .when(ComputerCommand::Decommission {
                by: admin(),
                at: t(0),
            })
            .then_expect_error(DomainError::ComputerNotEnrolled);
    }

    #[test]
    fn the_password_is_rotated_before_the_account_joins_the_admin_group() {
        let mut c = Timeline::enrolled();
        let events = c.grant(named_grant(1));
        assert_eq!(
            requested(&events),
            vec![
                (
                    1,
                    Purpose::Grant,
                    Operation::EnsureAccount {
                        account: acct("msp-nik")
                    }
                ),
                (2, Purpose::Grant, rotate("msp-nik", 1)),
            ],
            "no group membership is requested before the rotation is verified"
        );
        assert!(c.succeed(1, seen(true, &[], None)).len() == 1);
        let after_rotation = c.succeed(2, seen(true, &[], Some(1)));
        assert_eq!(
            requested(&after_rotation),
            vec![(3, Purpose::Grant, add("msp-nik"))]
        );
        let joined = c.succeed(3, seen(true, &["Administrators"], Some(1)));
        assert!(matches!(
            joined.as_slice(),
            [ComputerEvent::AddedToAdminGroup(_), ComputerEvent::SessionAccessGranted(g)]
                if g.session_id == sid(1) && g.account == acct("msp-nik")
        ));
    }

    #[test]
    fn an_uploaded_offline_login_is_recorded_once_and_the_password_rotated_again() {
        let mut c = Timeline::enrolled();
        c.grant_fully(named_grant(1), 1, 1);
        let login = Uuid::from_u128(77);
        let record = || ComputerCommand::RecordOfflineLogin {
            login_id: login,
            account: acct("msp-nik"),
            technician_id: Some(nik_id()),
            generation: 1,
            admin_group: Some(GroupName::parse("Administrators").unwrap()),
            used_at: t(30),
            until: t(90),
            at: t(95),
        };
        let events = c.run(record());
        assert!(matches!(&events[0], ComputerEvent::OfflineLoginRecorded(e)
            if e.login_id == login && e.account == acct("msp-nik")));
        let rotations: Vec<_> = requested(&events)
            .into_iter()
            .filter(|(_, _, op)| matches!(op, Operation::RotatePassword { .. }))
            .collect();
        assert_eq!(
            rotations.len(),
            1,
            "the printed password is rotated away: {events:?}"
        );
        assert_eq!(c.run(record()), vec![], "a second upload changes nothing");
        let unknown = ComputerCommand::RecordOfflineLogin {
            login_id: Uuid::from_u128(78),
            account: acct("msp-ann"),
            technician_id: None,
            generation: 1,
            admin_group: Some(GroupName::parse("Administrators").unwrap()),
            used_at: t(30),
            until: t(90),
            at: t(95),
        };
        assert_eq!(
            Computer::decide(&c.state(), unknown),
            Err(DomainError::UnknownAccount {
                account: acct("msp-ann")
            })
        );
    }

    #[test]
    fn an_uploaded_offline_lockout_is_recorded_once_by_its_id() {
        let lockout_id = Uuid::from_u128(90);
        let record = |lockout_id| ComputerCommand::RecordOfflineLockout {
            lockout_id,
            account: acct("msp-nik"),
            technician_id: Some(nik_id()),
            failures: 5,
            locked_at: t(30),
            locked_until: t(45),
            at: t(60),
        };
        let locked_out = OfflineLoginLockedOut {
            computer_id: computer_id(),
            lockout_id,
            account: acct("msp-nik"),
            technician_id: Some(nik_id()),
            failures: 5,
            locked_at: t(30),
            locked_until: t(45),
            at: t(60),
        };
        given::<Computer>([enrolled("W11-L-PASSWORD")])
            .when(record(lockout_id))
            .then_expect([locked_out.clone().into()]);
        // The agent uploads again when it did not hear the answer: nothing new.
        given::<Computer>([enrolled("W11-L-PASSWORD"), locked_out.clone().into()])
            .when(record(lockout_id))
            .then_expect_nothing();
        // A later lockout of the same account is another fact.
        let later = given::<Computer>([enrolled("W11-L-PASSWORD"), locked_out.into()])
            .when(record(Uuid::from_u128(91)))
            .events();
        assert!(matches!(later.as_slice(),
            [ComputerEvent::OfflineLoginLockedOut(e)] if e.lockout_id == Uuid::from_u128(91)));
        given::<Computer>([])
            .when(record(lockout_id))
            .then_expect_error(DomainError::ComputerNotEnrolled);
    }

    #[test]
    fn the_admin_group_inventory_is_recorded_when_it_changes() {
        let mut c = Timeline::enrolled();
        let report = |members: &[&str]| ComputerCommand::ReportInventory {
            group: admins(),
            members: members.iter().map(|m| m.to_string()).collect(),
            at: t(5),
        };
        assert_eq!(c.run(report(&["Administrator"])).len(), 1);
        assert_eq!(
            c.run(report(&["Administrator"])),
            vec![],
            "unchanged: nothing new"
        );
        assert_eq!(c.run(report(&["Administrator", "intruder"])).len(), 1);
    }

    #[test]
    fn a_technician_is_shown_only_their_own_or_the_shared_offline_secret() {
        let disclose = |technician_id| ComputerCommand::DiscloseOfflineSecret {
            technician_id,
            by: admin(),
            at: t(9),
        };
        let mut c = Timeline::enrolled();
        assert_eq!(
            Computer::decide(&c.state(), disclose(nik_id())),
            Err(DomainError::NoOfflineSecret)
        );
        c.grant(named_grant(1));
        let shown = Computer::decide(&c.state(), disclose(nik_id())).unwrap();
        assert!(
            matches!(&shown[..], [ComputerEvent::OfflineSecretDisclosed(d)]
            if d.account == acct("msp-nik") && d.generation == 1 && d.technician_id == nik_id())
        );
        assert_eq!(
            Computer::decide(&c.state(), disclose(ann_id())),
            Err(DomainError::NoOfflineSecret),
            "ann may not see nik's named-account secret"
        );
        c.grant(shared_grant(2, nik_id()));
        let shared = Computer::decide(&c.state(), disclose(ann_id())).unwrap();
        assert!(
            matches!(&shared[..], [ComputerEvent::OfflineSecretDisclosed(d)]
            if d.account == acct("msp-1234") && d.technician_id == ann_id())
        );
    }

    #[test]
    fn a_named_account_gets_an_offline_secret_per_computer_and_technician_once() {
        let mut c = Timeline::enrolled();
        let first = c.grant(named_grant(1));
        let issued: Vec<_> = first
            .iter()
            .filter_map(|e| match e {
                ComputerEvent::OfflineSecretIssued(o) => Some(o.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(issued.len(), 1);
        assert_eq!(issued[0].technician_id, Some(nik_id()));
        assert_eq!(issued[0].generation, 1);
        c.succeed(1, seen(true, &[], None));
        c.succeed(2, seen(true, &[], Some(1)));
        c.succeed(3, seen(true, &["Administrators"], Some(1)));
        c.release(1);
        let second = c.grant(named_grant(2));
        assert!(!second
            .iter()
            .any(|e| matches!(e, ComputerEvent::OfflineSecretIssued(_))));
    }

    #[test]
    fn the_shared_account_has_one_offline_secret_shared_by_technicians() {
        let mut c = Timeline::enrolled();
        let first = c.grant(shared_grant(1, nik_id()));
        assert!(first.iter().any(|e| matches!(e,
            ComputerEvent::OfflineSecretIssued(o) if o.technician_id.is_none())));
        let second = c.grant(shared_grant(2, ann_id()));
        assert!(!second
            .iter()
            .any(|e| matches!(e, ComputerEvent::OfflineSecretIssued(_))));
    }

    #[test]
    fn an_ephemeral_account_has_no_offline_secret() {
        let mut c = Timeline::enrolled();
        let events = c.grant(AccessGrant {
            account: acct("nik_566054625600"),
            owner: AccountOwner::Ephemeral {
                technician_id: nik_id(),
            },
            ..named_grant(1)
        });
        assert!(!events
            .iter()
            .any(|e| matches!(e, ComputerEvent::OfflineSecretIssued(_))));
    }

    #[test]
    fn a_success_the_agent_did_not_verify_counts_as_a_failure() {
        let mut c = Timeline::enrolled();
        c.grant(named_grant(1));
        c.succeed(1, seen(true, &[], None));
        // The agent says "rotated" but the version it read back is not the one asked for.
        let events = c.succeed(2, seen(true, &[], Some(7)));
        match events.as_slice() {
            [ComputerEvent::ProvisioningFailed(f), ComputerEvent::SessionAccessFailed(s)] => {
                assert!(f.reason.as_str().contains("verified"), "{}", f.reason);
                assert_eq!(s.session_id, sid(1));
            }
            other => panic!("{other:#?}"),
        }
    }

    #[test]
    fn a_failed_grant_request_fails_the_session_and_is_not_retried() {
        let mut c = Timeline::enrolled();
        c.grant(named_grant(1));
        let events = c.fail(1, "useradd: cannot lock /etc/passwd");
        assert!(matches!(
            events.last(),
            Some(ComputerEvent::SessionAccessFailed(_))
        ));
        assert_eq!(
            c.state().failed_requests().count(),
            0,
            "a failed grant is closed"
        );
        given::<Computer>(c.0.clone())
            .when(ComputerCommand::RetryRequest {
                request_id: RequestId(1),
                at: t(3),
            })
            .then_expect_nothing();
        // The session never reached the group, and its grant made the account: releasing
        // it deletes the account again (it holds a password nobody was shown).
        let released = c.release(1);
        assert!(
            matches!(&released[0], ComputerEvent::SessionAccessReleased(r)
            if r.outcome == ReleaseOutcome::Deleted)
        );
        assert_eq!(
            requested(&released),
            [(
                3,
                Purpose::Revoke,
                Operation::DeleteAccount {
                    account: acct("msp-nik")
                }
            )],
            "{released:#?}"
        );
    }

    /// Linux has no `Administrators`: the join fails, and what the failed grant created goes.
    #[test]
    fn a_grant_whose_join_fails_deletes_the_account_it_created() {
        let mut c = Timeline::enrolled();
        c.grant(named_grant(1)); // 1 ensure, 2 rotate
        c.succeed(1, seen(true, &[], None));
        let join = c.succeed(2, seen(true, &[], Some(1)));
        assert_eq!(requested(&join), [(3, Purpose::Grant, add("msp-nik"))]);
        let failed = c.fail(3, "group Administrators does not exist");
        assert!(matches!(
            failed.last(),
            Some(ComputerEvent::SessionAccessFailed(_))
        ));
        let released = c.release(1);
        assert_eq!(
            requested(&released),
            [(
                4,
                Purpose::Revoke,
                Operation::DeleteAccount {
                    account: acct("msp-nik")
                }
            )],
            "{released:#?}"
        );
    }

    /// An account that existed before the grant is left as it was.
    #[test]
    fn a_failed_grant_of_an_existing_account_keeps_it() {
        let mut c = Timeline::enrolled();
        let next = c.grant_fully(named_grant(1), 1, 1);
        c.release(1); // next: remove from group, next + 1: rotate
        c.succeed(next, seen(true, &[], Some(1)));
        c.succeed(next + 1, seen(true, &[], Some(2)));
        c.grant(named_grant(2));
        let pending: Vec<u64> = c.state().open_requests.keys().map(|r| r.0).collect();
        c.fail(pending[0], "useradd: cannot lock /etc/passwd");
        let released = c.release(2);
        assert!(
            !requested(&released)
                .iter()
                .any(|(_, _, op)| matches!(op, Operation::DeleteAccount { .. })),
            "{released:#?}"
        );
    }

    #[test]
    fn check_in_removes_the_account_from_the_admin_group_and_rotates_again() {
        let mut c = Timeline::enrolled();
        let next = c.grant_fully(named_grant(1), 1, 1);
        let events = c.release(1);
        assert!(matches!(&events[0], ComputerEvent::SessionAccessReleased(r)
            if r.outcome == ReleaseOutcome::RemovedFromGroup));
        assert_eq!(
            requested(&events),
            vec![
                (next, Purpose::Revoke, remove("msp-nik")),
                (next + 1, Purpose::Revoke, rotate("msp-nik", 2)),
            ]
        );
        assert!(
            c.state().accounts[&acct("msp-nik")].exists,
            "named accounts are kept"
        );
    }

    #[test]
    fn check_in_with_delete_on_check_in_deletes_the_account_after_taking_its_rights() {
        let mut c = Timeline::enrolled();
        let grant = AccessGrant {
            account: acct("nik_566054625600"),
            owner: AccountOwner::Ephemeral {
                technician_id: nik_id(),
            },
            on_check_in: CheckInAction::DeleteAccount,
            rotate_on_check_in: false,
            ..named_grant(1)
        };
        let next = c.grant_fully(grant, 1, 1);
        let events = c.release(1);
        assert_eq!(
            requested(&events),
            vec![
                (next, Purpose::Revoke, remove("nik_566054625600")),
                (next + 1, Purpose::Revoke, rotate("nik_566054625600", 2)),
                (next + 2, Purpose::Revoke, delete("nik_566054625600")),
            ]
        );
        assert!(!c.state().accounts[&acct("nik_566054625600")].exists);
        assert_eq!(c.state().reusable_account(nik_id()), None);
    }

    #[test]
    fn an_account_created_again_after_being_forgotten_continues_its_password_versions() {
        let mut c = Timeline::enrolled();
        let ephemeral = |session| AccessGrant {
            account: acct("nik_566054625600"),
            owner: AccountOwner::Ephemeral {
                technician_id: nik_id(),
            },
            on_check_in: CheckInAction::DeleteAccount,
            ..named_grant(session)
        };
        let next = c.grant_fully(ephemeral(1), 1, 1);
        c.release(1);
        c.succeed(next, seen(true, &[], Some(1)));
        c.succeed(next + 1, seen(true, &[], Some(2)));
        c.succeed(next + 2, seen(false, &[], None));
        assert!(
            !c.state().accounts.contains_key(&acct("nik_566054625600")),
            "a deleted account nothing refers to is forgotten"
        );
        let events = c.grant(ephemeral(2));
        assert_eq!(
            requested(&events)[1].2,
            rotate("nik_566054625600", 3),
            "version 1 and 2 were this name's before: the secret store must not hand them out again"
        );
    }

    /// Drives a computer through `sessions` full check-out/check-in cycles with an agent that
    /// does everything asked; `grant` makes session n's grant. Folds the state directly (not
    /// through the test harness, which replays the whole stream per command).
    fn cycle_sessions(
        sessions: u128,
        grant: impl Fn(u128) -> AccessGrant,
        mut after_each: impl FnMut(u128, &Computer),
    ) -> Computer {
        let mut state = Computer::replay(&[enrolled("W11-L-PASSWORD")]);
        let mut machine: BTreeMap<AccountName, (BTreeSet<String>, Option<u32>)> = BTreeMap::new();
        let run = |state: &mut Computer, command| {
            for event in Computer::decide(state, command).unwrap() {
                *state = Computer::evolve(std::mem::take(state), &event);
            }
        };
        for n in 1..=sessions {
            run(
                &mut state,
                ComputerCommand::GrantAccess {
                    grant: grant(n),
                    at: t(1),
                },
            );
            let release = ComputerCommand::ReleaseAccess {
                session_id: sid(n),
                at: t(3),
            };
            for command in [None, Some(release)] {
                if let Some(command) = command {
                    run(&mut state, command);
                }
                while let Some(request) = state.open_requests.values().next().cloned() {
                    let name = request.operation.account().clone();
                    match &request.operation {
                        Operation::EnsureAccount { .. } => {
                            machine.entry(name.clone()).or_default();
                        }
                        Operation::RotatePassword { version, .. } => {
                            machine.get_mut(&name).unwrap().1 = Some(*version)
                        }
                        Operation::AddToGroup { group, .. } => {
                            machine.get_mut(&name).unwrap().0.insert(group.to_string());
                        }
                        Operation::RemoveFromGroup { group, .. } => {
                            machine.get_mut(&name).unwrap().0.remove(group.as_str());
                        }
                        Operation::DeleteAccount { .. } => {
                            machine.remove(&name);
                        }
                    }
                    let verified = match machine.get(&name) {
                        Some((groups, version)) => {
                            let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
                            seen(true, &groups, *version)
                        }
                        None => seen(false, &[], None),
                    };
                    let request_id = request.request_id;
                    run(
                        &mut state,
                        ComputerCommand::ReportSucceeded {
                            request_id,
                            verified,
                            at: t(2),
                        },
                    );
                }
            }
            after_each(n, &state);
        }
        state
    }

    #[test]
    fn a_computers_state_does_not_grow_with_its_past() {
        let shape = |c: &Computer| {
            (
                c.grants.len(),
                c.released.len(),
                c.accounts.len(),
                c.open_requests.len(),
            )
        };
        let mut at_kept = None;
        let named = cycle_sessions(RELEASED_KEPT as u128 + 100, named_grant, |n, c| {
            if n == RELEASED_KEPT as u128 {
                at_kept = Some(shape(c));
            }
        });
        assert_eq!(shape(&named), (0, RELEASED_KEPT, 1, 0));
        assert_eq!(
            at_kept,
            Some(shape(&named)),
            "the 100 sessions after the first 256 added nothing"
        );
        assert_eq!(
            named.accounts[&acct("msp-nik")].password_version,
            2 * (RELEASED_KEPT as u32 + 100)
        );

        let ephemeral = cycle_sessions(
            300,
            |n| AccessGrant {
                account: acct(&format!("nik_{n:012}")),
                owner: AccountOwner::Ephemeral {
                    technician_id: nik_id(),
                },
                on_check_in: CheckInAction::DeleteAccount,
                ..named_grant(n)
            },
            |_, c| {
                assert!(
                    c.accounts.is_empty(),
                    "each session's account is forgotten once deleted"
                )
            },
        );
        assert_eq!(shape(&ephemeral), (0, RELEASED_KEPT, 0, 0));
        assert_eq!(
            ephemeral.forgotten_versions,
            (600, 0),
            "each new account continued after the versions of those forgotten before it"
        );
    }

    /// The server keeps snapshots of this state as JSON: what is read back must be the state,
    /// with open grants, pending and failed requests, released sessions and accounts.
    #[test]
    fn the_state_reads_back_equal_from_its_snapshot_form() {
        let mut c = Timeline::enrolled();
        c.grant_fully(shared_grant(1, nik_id()), 1, 1);
        c.grant(shared_grant(2, ann_id()));
        c.release(1);
        let revocation = c
            .state()
            .open_requests
            .values()
            .find(|r| r.purpose == Purpose::Revoke)
            .map(|r| r.request_id.0)
            .unwrap();
        c.fail(revocation, "chpasswd failed");
        let state = c.state();
        assert!(!state.grants.is_empty() && !state.open_requests.is_empty());
        assert!(!state.released.is_empty() && state.failed_requests().count() == 1);
        let stored = serde_json::to_string(&state).unwrap();
        let read: Computer = serde_json::from_str(&stored).unwrap();
        assert_eq!(read, state);
    }

    #[test]
    fn a_grant_or_release_repeated_for_a_recently_released_session_does_nothing() {
        let state = cycle_sessions(RELEASED_KEPT as u128, named_grant, |_, _| {});
        let oldest_kept = 1;
        let again = Computer::decide(
            &state,
            ComputerCommand::GrantAccess {
                grant: named_grant(oldest_kept),
                at: t(9),
            },
        );
        assert_eq!(
            again.unwrap(),
            vec![],
            "no second grant for a released session"
        );
        let again = Computer::decide(
            &state,
            ComputerCommand::ReleaseAccess {
                session_id: sid(oldest_kept),
                at: t(9),
            },
        );
        assert_eq!(again.unwrap(), vec![], "no second release");
    }

    #[test]
    fn checking_in_one_shared_session_keeps_the_account_for_the_other() {
        let mut c = Timeline::enrolled();
        let next = c.grant_fully(shared_grant(1, nik_id()), 1, 1);
        let next = c.grant_fully(shared_grant(2, ann_id()), next, 2);
        let first_out = c.release(1);
        assert!(
            matches!(&first_out[0], ComputerEvent::SessionAccessReleased(r)
            if r.outcome == ReleaseOutcome::KeptForOtherSessions)
        );
        let ops: Vec<Operation> = requested(&first_out).into_iter().map(|r| r.2).collect();
        assert_eq!(
            ops,
            vec![rotate("msp-1234", 3)],
            "the leaving technician's password is rotated away, the membership stays"
        );
        let last_out = c.release(2);
        assert_eq!(
            requested(&last_out),
            vec![
                (next + 1, Purpose::Revoke, remove("msp-1234")),
                (next + 2, Purpose::Revoke, rotate("msp-1234", 4)),
            ]
        );
    }

    #[test]
    fn a_failed_revocation_is_retried_and_never_dropped() {
        let mut c = Timeline::enrolled();
        let next = c.grant_fully(named_grant(1), 1, 1);
        c.release(1);
        let failed = c.fail(next, "gpasswd: group 'Administrators' is locked");
        assert!(
            matches!(failed.as_slice(), [ComputerEvent::ProvisioningFailed(f)] if f.attempt == 1)
        );
        assert_eq!(c.state().failed_requests().count(), 1);
        for attempt in 2..=4 {
            let retried = c.run(ComputerCommand::RetryRequest {
                request_id: RequestId(next),
                at: t(40),
            });
            assert!(matches!(retried.as_slice(),
                [ComputerEvent::ProvisioningRetried(r)] if r.attempt == attempt && r.operation == remove("msp-nik")));
            c.fail(next, "still locked");
        }
        assert_eq!(
            c.state().failed_requests().count(),
            1,
            "still waiting, never dropped"
        );
        c.run(ComputerCommand::RetryRequest {
            request_id: RequestId(next),
            at: t(50),
        });
        c.succeed(next, seen(true, &[], Some(1)));
        assert_eq!(c.state().failed_requests().count(), 0);
    }

    #[test]
    fn a_failed_removal_is_not_replayed_after_a_new_session_joined_the_group() {
        let mut c = Timeline::enrolled();
        let next = c.grant_fully(named_grant(1), 1, 1);
        c.release(1);
        let removal = next;
        c.fail(removal, "locked");
        c.succeed(next + 1, seen(true, &["Administrators"], Some(2)));
        c.grant_fully(named_grant(2), next + 2, 3);
        // Replaying "remove from Administrators" now would take the new session's rights.
        let retried = c.run(ComputerCommand::RetryRequest {
            request_id: RequestId(removal),
            at: t(40),
        });
        assert!(
            matches!(
                retried.as_slice(),
                [ComputerEvent::ProvisioningSuperseded(_)]
            ),
            "{retried:#?}"
        );
    }

    #[test]
    fn duplicate_and_unknown_reports() {
        let mut c = Timeline::enrolled();
        c.grant(named_grant(1));
        c.succeed(1, seen(true, &[], None));
        given::<Computer>(c.0.clone())
            .when(ComputerCommand::ReportSucceeded {
                request_id: RequestId(1),
                verified: seen(true, &[], None),
                at: t(3),
            })
            .then_expect_nothing();
        given::<Computer>(c.0.clone())
            .when(ComputerCommand::ReportSucceeded {
                request_id: RequestId(99),
                verified: seen(true, &[], None),
                at: t(3),
            })
            .then_expect_error(DomainError::UnknownRequest {
                request_id: RequestId(99),
            });
    }

    #[test]
    fn a_login_mode_change_deletes_the_old_modes_idle_accounts_and_in_use_ones_at_check_in() {
        let mut c = Timeline::enrolled();
        let next = c.grant_fully(named_grant(1), 1, 1);
        c.release(1);
        c.succeed(next, seen(true, &[], Some(1)));
        c.succeed(next + 1, seen(true, &[], Some(2)));
        let next = next + 2;
        let next = c.grant_fully(shared_grant(2, ann_id()), next, 1);
        // Named → shared: msp-nik (idle) goes now.
        let retire = |from| ComputerCommand::RetireAccounts {
            reason: RetireReason::LoginModeChanged { from },
            at: t(45),
        };
        let events = c.run(retire(LoginMode::Named));
        assert_eq!(
            requested(&events),
            vec![(next, Purpose::Cleanup, delete("msp-nik"))]
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, ComputerEvent::OfflineSecretRevoked(_))));
        // Shared → ephemeral: msp-1234 is in use; it is deleted when its session ends.
        let events = c.run(retire(LoginMode::Shared));
        assert!(requested(&events).is_empty());
        assert!(c.state().accounts[&acct("msp-1234")].retiring);
        let released = c.release(2);
        let ops: Vec<Operation> = requested(&released).into_iter().map(|r| r.2).collect();
        assert_eq!(
            ops,
            vec![
                remove("msp-1234"),
                rotate("msp-1234", 2),
                delete("msp-1234")
            ]
        );
    }

    #[test]
    fn offboarding_retires_only_that_technicians_accounts() {
        let mut c = Timeline::enrolled();
        c.grant_fully(named_grant(1), 1, 1); // nik's account was used
        let ann = AccessGrant {
            technician_id: ann_id(),
            account: acct("msp-ann"),
            owner: AccountOwner::Named {
                technician_id: ann_id(),
            },
            ..named_grant(2)
        };
        c.grant(ann);
        c.release(1);
        let events = c.run(ComputerCommand::RetireAccounts {
            reason: RetireReason::TechnicianRemoved {
                technician_id: nik_id(),
            },
            at: t(50),
        });
        let ops: Vec<Operation> = requested(&events).into_iter().map(|r| r.2).collect();
        assert_eq!(ops, vec![delete("msp-nik")]);
        assert!(!c.state().accounts[&acct("msp-ann")].retiring);
    }

    #[test]
    fn a_session_released_before_its_grant_arrives_is_never_granted() {
        let mut c = Timeline::enrolled();
        let released = c.release(1);
        assert!(
            matches!(released.as_slice(), [ComputerEvent::SessionAccessReleased(r)]
            if r.outcome == ReleaseOutcome::NothingGranted)
        );
        given::<Computer>(c.0.clone())
            .when(ComputerCommand::GrantAccess {
                grant: named_grant(1),
                at: t(31),
            })
            .then_expect_nothing();
    }

    #[test]
    fn decommissioning_retires_every_account_and_refuses_new_access() {
        let mut c = Timeline::enrolled();
        let next = c.grant_fully(named_grant(1), 1, 1);
        c.release(1);
        let events = c.run(ComputerCommand::Decommission {
            by: admin(),
            at: t(60),
        });
        assert!(matches!(
            events[0],
            ComputerEvent::ComputerDecommissioned(_)
        ));
        assert_eq!(
            requested(&events),
            vec![(next + 2, Purpose::Cleanup, delete("msp-nik"))]
        );
        let refused = c.grant(named_grant(2));
        assert!(matches!(
            refused.last(),
            Some(ComputerEvent::SessionAccessFailed(_))
        ));
        assert!(requested(&refused).is_empty());
    }

    #[test]
    fn without_jit_provisioning_access_needs_an_existing_latchkey_account() {
        let mut c = Timeline::enrolled();
        let no_create = AccessGrant {
            create_account: false,
            ..named_grant(1)
        };
        let refused = c.grant(no_create.clone());
        assert!(matches!(
            refused.last(),
            Some(ComputerEvent::SessionAccessFailed(_))
        ));
        let mut c = Timeline::enrolled();
        c.grant_fully(named_grant(1), 1, 1);
        c.release(1);
        let events = c.grant(AccessGrant {
            session_id: sid(2),
            ..no_create
        });
        let ops: Vec<Operation> = requested(&events).into_iter().map(|r| r.2).collect();
        assert_eq!(
            ops,
            vec![rotate("msp-nik", 3)],
            "no account creation, only the rotation"
        );
    }

    #[test]
    fn an_account_of_another_owner_is_never_handed_out() {
        let mut c = Timeline::enrolled();
        c.grant(named_grant(1));
        let events = c.grant(AccessGrant {
            technician_id: ann_id(),
            owner: AccountOwner::Named {
                technician_id: ann_id(),
            },
            ..named_grant(2)
        });
        assert!(
            matches!(events.last(), Some(ComputerEvent::SessionAccessFailed(f))
            if f.reason.as_str().contains("belongs to someone else"))
        );
    }

    #[test]
    fn a_computer_policy_override_can_be_set_and_cleared() {
        let policy = JitPolicy::default_for(Some(GroupName::parse("sudo").unwrap()));
        let mut c = Timeline::enrolled();
        let set = c.run(ComputerCommand::OverrideJitPolicy {
            policy: Some(policy.clone()),
            by: admin(),
            at: t(1),
        });
        assert_eq!(set.len(), 1);
        let tenant_policy = JitPolicy::default();
        assert_eq!(c.state().effective_policy(&tenant_policy), &policy);
        c.run(ComputerCommand::OverrideJitPolicy {
            policy: None,
            by: admin(),
            at: t(2),
        });
        assert_eq!(c.state().effective_policy(&tenant_policy), &tenant_policy);
    }
}
