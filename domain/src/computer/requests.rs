//! Provisioning requests: the idempotent "ensure" operations the agent carries out in stream
//! order, its verified results, and what happens to a request that fails. A grant request
//! that fails fails its session (see `grant.rs`); a revocation or clean-up that fails waits
//! for a retry, and is never dropped, unless a later change made it pointless: then it is
//! superseded instead of replayed (replaying "remove from the group" after a new session
//! joined would take that session's rights).

use super::ManagedAccount;
use super::{reason, Computer, ComputerEvent, Decision};
use super::{
    AccountDeleted, AccountProvisioned, AddedToAdminGroup, PasswordRotated,
    PostSessionActionsTaken, ProvisioningFailed, ProvisioningRequested, ProvisioningRetried,
    ProvisioningSuperseded, RemovedFromAdminGroup,
};
use crate::event::Timestamp;
use crate::ids::{RequestId, SessionId};
use crate::names::{AccountName, FailureReason, GroupName};
use crate::policy::PostSessionActions;
use crate::DomainError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fmt;

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
    /// The JIT policy's post-session actions, once the account has lost its rights: end its
    /// logons and processes, clear its cached sudo credentials. The agent reports how many
    /// processes are left and whether sudo still holds a credential.
    PostSession {
        account: AccountName,
        actions: PostSessionActions,
    },
    /// Ensure the account is gone. It is never deleted while processes of it run: with
    /// `end_logons` the agent ends them first, else the request fails until they are gone.
    DeleteAccount {
        account: AccountName,
        /// Absent in requests from before post-session actions: `false`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        end_logons: bool,
    },
}

impl Operation {
    pub fn account(&self) -> &AccountName {
        match self {
            Operation::EnsureAccount { account }
            | Operation::RotatePassword { account, .. }
            | Operation::AddToGroup { account, .. }
            | Operation::RemoveFromGroup { account, .. }
            | Operation::PostSession { account, .. }
            | Operation::DeleteAccount { account, .. } => account,
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
            Operation::PostSession { actions, .. } => {
                (!actions.end_logons || seen.processes == Some(0))
                    && (!actions.clear_sudo_credentials || seen.sudo_cached == Some(false))
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

/// An operation in words, as the object of "was asked to …" or "could not …": the one
/// rendering the audit trail, the agent's journal and error messages all use.
impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Operation::EnsureAccount { account } => write!(f, "make sure account {account} exists"),
            Operation::RotatePassword { account, version } => {
                write!(f, "rotate the password of {account} to version {version}")
            }
            Operation::AddToGroup { account, group } => write!(f, "add {account} to {group}"),
            Operation::RemoveFromGroup { account, group } => {
                write!(f, "remove {account} from {group}")
            }
            Operation::PostSession { account, actions } => {
                write!(f, "{} of {account}", post_session_words(*actions))
            }
            Operation::DeleteAccount {
                account,
                end_logons: false,
            } => write!(f, "delete account {account}"),
            Operation::DeleteAccount {
                account,
                end_logons: true,
            } => write!(f, "delete account {account}, ending its logons first"),
        }
    }
}

/// The post-session actions as a verb phrase whose object follows ("… of msp-nik").
fn post_session_words(actions: PostSessionActions) -> &'static str {
    match (actions.end_logons, actions.clear_sudo_credentials) {
        (true, true) => "end the logons and clear the cached sudo credentials",
        (true, false) => "end the logons",
        (false, true) => "clear the cached sudo credentials",
        (false, false) => "leave alone the logons",
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
    /// How many processes of the account were left running (counted for post-session
    /// actions only; absent otherwise and from older agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub processes: Option<u32>,
    /// Whether sudo still held a cached credential for the account (checked for post-session
    /// actions only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sudo_cached: Option<bool>,
}

impl fmt::Display for AccountObservation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.present {
            f.write_str("the account absent")?;
        } else {
            let groups: Vec<&str> = self.groups.iter().map(GroupName::as_str).collect();
            write!(f, "the account present in groups [{}]", groups.join(", "))?;
            match self.password_version {
                Some(v) => write!(f, " with password version {v}")?,
                None => f.write_str(" with no password set by Latchkey")?,
            }
        }
        if let Some(n) = self.processes {
            write!(f, ", processes left: {n}")?;
        }
        match self.sudo_cached {
            Some(true) => f.write_str(", a cached sudo credential left"),
            Some(false) => f.write_str(", no cached sudo credential"),
            None => Ok(()),
        }
    }
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

impl Computer {
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
    pub(super) fn still_wanted(&self, op: &Operation) -> bool {
        let Some(account) = self.accounts.get(op.account()) else {
            return true;
        };
        match op {
            Operation::RemoveFromGroup { group, .. } => !self.group_needed(account, group, None),
            Operation::RotatePassword { version, .. } => {
                account.status.is_wanted() && account.password_version == *version
            }
            Operation::DeleteAccount { .. } => !account.status.is_wanted(),
            // Ending logons after a new session began would end that session's.
            Operation::PostSession { .. } => account.sessions.is_empty(),
            Operation::EnsureAccount { .. } | Operation::AddToGroup { .. } => true,
        }
    }

    /// Whether `account` is in `group` on the machine, or will be once the open requests have
    /// run: what the agent last verified, then each open request in order.
    pub(super) fn may_be_member(&self, account: &ManagedAccount, group: &GroupName) -> bool {
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

    pub(super) fn report_succeeded(
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
            Operation::PostSession { actions, .. } => d.emit(PostSessionActionsTaken {
                computer_id,
                request_id,
                account,
                actions,
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
            d.grant_request_verified(session_id, request_id);
        }
        Ok(d.finish())
    }

    pub(super) fn report_failed(
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
            d.grant_request_failed(session_id, why);
        }
        Ok(d.finish())
    }

    pub(super) fn retry_request(
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
}

impl Decision {
    /// Issues the next request of this computer.
    pub(super) fn request(
        &mut self,
        session_id: Option<SessionId>,
        purpose: Purpose,
        operation: Operation,
    ) {
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

    /// Requests a new password version for `account`.
    pub(super) fn rotate(
        &mut self,
        session_id: Option<SessionId>,
        purpose: Purpose,
        account: &AccountName,
    ) {
        let version = self.next_password_version(account);
        let operation = Operation::RotatePassword {
            account: account.clone(),
            version,
        };
        self.request(session_id, purpose, operation);
    }

    /// Supersedes failed revocations of `account` that the latest change made pointless.
    pub(super) fn supersede_unwanted(&mut self, account: &AccountName) {
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
}

/// How the request events change the state.
impl Computer {
    pub(super) fn on_provisioning_requested(&mut self, e: &ProvisioningRequested) {
        self.last_request = self.last_request.max(e.request_id.0);
        self.open_requests.insert(
            e.request_id,
            OpenRequest {
                request_id: e.request_id,
                session_id: e.session_id,
                purpose: e.purpose,
                operation: e.operation.clone(),
                status: RequestStatus::Pending { attempt: 1 },
            },
        );
        if let Some(account) = self.accounts.get_mut(e.operation.account()) {
            account.requested(&e.operation);
        }
        if let (Purpose::Grant, Some(session)) = (e.purpose, e.session_id) {
            if let Some(grant) = self.grants.get_mut(&session) {
                grant.stage.issued(e.request_id, &e.operation);
            }
        }
    }

    pub(super) fn on_provisioning_retried(&mut self, e: &ProvisioningRetried) {
        if let Some(request) = self.open_requests.get_mut(&e.request_id) {
            request.status = RequestStatus::Pending { attempt: e.attempt };
        }
    }

    pub(super) fn on_provisioning_superseded(&mut self, e: &ProvisioningSuperseded) {
        self.open_requests.remove(&e.request_id);
    }

    pub(super) fn on_provisioning_failed(&mut self, e: &ProvisioningFailed) {
        if let Some(request) = self.open_requests.get_mut(&e.request_id) {
            if request.purpose == Purpose::Grant {
                // Its session failed; a grant is never retried, so it is closed.
                self.open_requests.remove(&e.request_id);
            } else {
                request.status = RequestStatus::Failed {
                    attempt: e.attempt,
                    reason: e.reason.clone(),
                };
            }
        }
    }

    /// The agent verified a request done (any of the five result events): the request
    /// closes, and the account's verified state is what the agent saw.
    pub(super) fn on_request_verified(
        &mut self,
        request_id: &RequestId,
        account: &AccountName,
        verified: &AccountObservation,
    ) {
        if let Some(request) = self.open_requests.remove(request_id) {
            if let Some(grant) = request.session_id.and_then(|s| self.grants.get_mut(&s)) {
                grant.stage.verified(*request_id);
            }
        }
        if let Some(a) = self.accounts.get_mut(account) {
            a.verified = Some(verified.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::computer::testing::*;
    use crate::computer::*;

    use crate::ids::RequestId;
    use crate::testing::{given, t};
    use crate::DomainError;

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
}
