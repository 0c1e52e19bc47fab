//! A customer computer: its enrollment, the local accounts Latchkey manages on it (group
//! membership, password versions, offline secrets) and the provisioning requests its agent
//! carries out, in stream order. Requests are idempotent "ensure" operations; the agent
//! reports what it verified. Passwords and TOTP secrets are never here: a rotation names a
//! password version, and the secret store keeps the password under (computer, account,
//! version). Revocations are never dropped: a failed one waits for a retry until it succeeds
//! or a later change makes it unnecessary ("superseded").
//!
//! This file holds the state, the small decisions about the computer itself (enrolment,
//! policy override, inventory) and the `decide`/`evolve` dispatch; each other concern has a
//! file of its own, with its decisions and how its events change the state:
//!
//! | file | what it holds |
//! |---|---|
//! | `events.rs` | every event of a `computer-<id>` stream, with its stored name and version |
//! | `commands.rs` | [`ComputerCommand`]: what admins, process managers and the agent ask |
//! | `accounts.rs` | the managed accounts: whose each is, what Latchkey wants of it |
//! | `requests.rs` | provisioning requests: results, failures, retries and supersession |
//! | `grant.rs` | a session's access: the grant state machine (its transition table) and release |
//! | `retirement.rs` | accounts the settings no longer want; decommissioning |
//! | `offline.rs` | offline TOTP secrets, offline logins and lockouts |

mod accounts;
mod commands;
mod events;
mod grant;
mod offline;
mod requests;
mod retirement;
#[cfg(test)]
pub(crate) mod testing;

pub use accounts::{AccountOwner, AccountStatus, ManagedAccount};
pub use commands::{AccessGrant, ComputerCommand};
pub use events::*;
pub use grant::{Grant, GrantStage, RecentlyReleased, ReleaseOutcome, RELEASED_KEPT};
pub use requests::{AccountObservation, OpenRequest, Operation, Purpose, RequestStatus};
pub use retirement::RetireReason;

use crate::event::Timestamp;
use crate::ids::{AgentKeyId, ComputerId, RequestId, SessionId, TenantId};
use crate::names::{AccountName, FailureReason, GroupName, Hostname};
use crate::policy::JitPolicy;
use crate::{Aggregate, DomainError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OsKind {
    Windows,
    Linux,
    Macos,
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

/// Where the computer is in its life: nothing can be decided for it before its enrolment
/// (`ComputerEnrolled`, refused a second time), and once decommissioned
/// (`ComputerDecommissioned`) it gives no new access and only lets go of its accounts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enrolment {
    #[default]
    NotEnrolled,
    Enrolled(ComputerProfile),
    Decommissioned(ComputerProfile),
}

/// The form of [`Computer`] kept in snapshots (see the server's command path): bump it
/// whenever the state's fields or their meaning change, so older snapshots are ignored and the
/// state is folded from the events again.
pub const SNAPSHOT_VERSION: u32 = 5;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Computer {
    pub enrolment: Enrolment,
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
    /// What the agent told at enrolment; `None` until enrolled.
    pub fn profile(&self) -> Option<&ComputerProfile> {
        match &self.enrolment {
            Enrolment::NotEnrolled => None,
            Enrolment::Enrolled(profile) | Enrolment::Decommissioned(profile) => Some(profile),
        }
    }

    pub fn is_decommissioned(&self) -> bool {
        matches!(self.enrolment, Enrolment::Decommissioned(_))
    }

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
        let profile = self.profile().ok_or(DomainError::ComputerNotEnrolled)?;
        match (&profile.admin_group, profile.os) {
            (Some(group), _) => Ok(group.clone()),
            (None, OsKind::Windows) => {
                Ok(GroupName::parse("Administrators").expect("a valid group name"))
            }
            (None, _) => Err(DomainError::AdminGroupUnknown),
        }
    }

    fn computer_id(&self) -> Result<ComputerId, DomainError> {
        self.profile()
            .map(|p| p.computer_id)
            .ok_or(DomainError::ComputerNotEnrolled)
    }
}

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
                if state.profile().is_some() {
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
            ComputerCommand::Decommission { by, at } => state.decommission(by, at),
            ComputerCommand::OverrideJitPolicy { policy, by, at } => {
                let computer_id = state.computer_id()?;
                if state.is_decommissioned() {
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
                claimed_by,
                generation,
                admin_group,
                used_at,
                until,
                at,
            } => {
                let login = offline::OfflineLogin {
                    login_id,
                    account,
                    technician_id,
                    claimed_by,
                    generation,
                    admin_group,
                    used_at,
                    until,
                };
                state.record_offline_login(login, at)
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
                state.record_offline_lockout(OfflineLoginLockedOut {
                    computer_id,
                    lockout_id,
                    account,
                    technician_id,
                    failures,
                    locked_at,
                    locked_until,
                    at,
                })
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
            } => state.disclose_offline_secret(technician_id, by, at),
        }
    }

    fn evolve(mut state: Self, event: &ComputerEvent) -> Self {
        use ComputerEvent as E;
        match event {
            E::ComputerEnrolled(e) => {
                state.enrolment = Enrolment::Enrolled(ComputerProfile {
                    computer_id: e.computer_id,
                    tenant_id: e.tenant_id,
                    hostname: e.hostname.clone(),
                    os: e.os,
                    agent_key_id: e.agent_key_id,
                    admin_group: e.admin_group.clone(),
                });
            }
            E::ComputerDecommissioned(_) => {
                state.enrolment = match std::mem::take(&mut state.enrolment) {
                    Enrolment::Enrolled(profile) => Enrolment::Decommissioned(profile),
                    other => other,
                };
            }
            E::ComputerJitPolicyOverridden(e) => state.policy_override = e.policy.clone(),
            E::SessionAccessRequested(e) => state.on_session_access_requested(e),
            E::ProvisioningRequested(e) => state.on_provisioning_requested(e),
            E::ProvisioningRetried(e) => state.on_provisioning_retried(e),
            E::ProvisioningSuperseded(e) => state.on_provisioning_superseded(e),
            E::ProvisioningFailed(e) => state.on_provisioning_failed(e),
            E::AccountProvisioned(e) => {
                state.on_request_verified(&e.request_id, &e.account, &e.verified)
            }
            E::PasswordRotated(e) => {
                state.on_request_verified(&e.request_id, &e.account, &e.verified)
            }
            E::AddedToAdminGroup(e) => {
                state.on_request_verified(&e.request_id, &e.account, &e.verified)
            }
            E::RemovedFromAdminGroup(e) => {
                state.on_request_verified(&e.request_id, &e.account, &e.verified)
            }
            E::PostSessionActionsTaken(e) => {
                state.on_request_verified(&e.request_id, &e.account, &e.verified)
            }
            E::AccountDeleted(e) => {
                state.on_request_verified(&e.request_id, &e.account, &e.verified);
                state.forget_if_gone(&e.account);
            }
            E::SessionAccessGranted(e) => state.on_session_access_granted(e),
            E::SessionAccessFailed(e) => state.on_session_access_failed(e),
            E::SessionAccessReleased(e) => state.on_session_access_released(e),
            E::AccountRetirementStarted(e) => state.on_account_retirement_started(e),
            E::OfflineSecretIssued(e) => state.on_offline_secret_issued(e),
            E::OfflineSecretRevoked(e) => state.on_offline_secret_revoked(e),
            E::OfflineSecretDisclosed(_) => {}
            E::OfflineLoginRecorded(e) => state.on_offline_login_recorded(e),
            E::OfflineLoginEnded(_) => {}
            E::OfflineLoginLockedOut(e) => state.on_offline_login_locked_out(e),
            E::AdminGroupInventoried(e) => {
                state.inventory = Some((e.group.clone(), e.members.clone()));
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::computer::testing::*;
    use crate::policy::JitPolicy;
    use crate::testing::{admin, ann_id, computer_id, given, nik_id, t, tenant_id};

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

    /// A computer's tenant, hostname and agent key are set once, by its enrolment: a second
    /// `Enroll` on its stream must not move it to another tenant or key, not even once the
    /// computer is decommissioned.
    #[test]
    fn a_computer_is_enrolled_only_once_even_after_decommissioning() {
        let enroll_again = || ComputerCommand::Enroll {
            computer_id: computer_id(),
            tenant_id: TenantId(Uuid::from_u128(2)),
            hostname: Hostname::parse("W11-STOLEN").unwrap(),
            os: OsKind::Linux,
            agent_key_id: AgentKeyId(Uuid::from_u128(501)),
            admin_group: None,
            by: admin(),
            at: t(5),
        };
        given::<Computer>([enrolled("W11-L-PASSWORD")])
            .when(enroll_again())
            .then_expect_error(DomainError::ComputerAlreadyEnrolled);
        let decommissioned = ComputerDecommissioned {
            computer_id: computer_id(),
            by: admin(),
            at: t(3),
        };
        given::<Computer>([enrolled("W11-L-PASSWORD"), decommissioned.into()])
            .when(enroll_again())
            .then_expect_error(DomainError::ComputerAlreadyEnrolled);
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
