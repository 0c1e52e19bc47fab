//! A session's access on this computer, from the process manager's `GrantAccess` after a
//! check-out to its `ReleaseAccess` after the check-in: the grant state machine. It must
//! never let an account into the admin group before its password was rotated for the
//! session, and never leave it there once no session needs it.
//!
//! Each open session has a [`Grant`] in `Computer::grants`. Its [`GrantStage`] is moved by
//! events only (in `evolve`); `decide` looks at the stage to choose what comes next:
//!
//! | stage | on | next stage |
//! |---|---|---|
//! | — | `GrantAccess` (1) | `Preparing { pending }` |
//! | — | `GrantAccess`, refused (2) | `Failed` |
//! | `Preparing { pending }` | `ReportSucceeded` of `r` in `pending` | `Preparing { pending − r }` |
//! | `Preparing { }` | that same command, once `pending` is empty (3) | `Joining { request: j }` |
//! | `Joining { request: j }` | `ReportSucceeded` of `j` (4) | `Granted` |
//! | `Preparing`, `Joining` | a grant request failed (5) | `Failed` |
//! | any | `ReleaseAccess` (6) | none: the session is in `released` |
//!
//! 1. `SessionAccessRequested`, then requests to ensure the account (with JIT provisioning)
//!    and to rotate its password: `pending` holds them.
//! 2. `SessionAccessRequested`, `SessionAccessFailed`: the computer is decommissioned, the
//!    account belongs to another owner, or JIT provisioning is off and the account does not
//!    exist.
//! 3. The join, request `j`, is issued only now that the agent verified the account and its
//!    new password.
//! 4. `AddedToAdminGroup`, `SessionAccessGranted`.
//! 5. `ReportFailed` of a grant request, or a `ReportSucceeded` that what the agent verified
//!    contradicts: `ProvisioningFailed`, `SessionAccessFailed`. A grant request is never
//!    retried; the session fails, and its check-in releases it.
//! 6. `SessionAccessReleased` and the revocation requests below; the grant leaves
//!    `Computer::grants` for `Computer::released`.
//!
//! Repeats do nothing: a `GrantAccess` for a session the computer has or released recently,
//! a `ReleaseAccess` for a session released recently. A `ReleaseAccess` that comes before
//! its grant releases the session with `NothingGranted`, so the late grant is ignored.
//!
//! Releasing takes back what the grant gave, in this order, so that an account whose
//! deletion fails (the technician is still logged in) is already powerless:
//! 1. out of the admin group, unless another session holds that group through the account;
//!    also when this session never joined but a join queued for a session released earlier
//!    may still make the account a member (found by the simulation's proptest);
//! 2. a new password, if the session held the membership (`Joining` or `Granted`) and the
//!    policy rotates at check-in or the account is being deleted;
//! 3. the account deleted, if no other session uses it and the policy deletes at check-in,
//!    or the account is being retired, or this grant created it and it never reached the
//!    group (it holds a password nobody was shown).

use super::{reason, AccessGrant, Computer, ComputerEvent, Decision, ManagedAccount};
use super::{Operation, Purpose};
use super::{
    SessionAccessFailed, SessionAccessGranted, SessionAccessReleased, SessionAccessRequested,
};
use crate::event::Timestamp;
use crate::ids::{RequestId, SessionId, TechnicianId};
use crate::names::{AccountName, FailureReason, GroupName};
use crate::policy::{CheckInAction, PostSessionActions};
use crate::DomainError;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

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

/// What a grant asks for after the agent verified one of its requests.
enum GrantStep {
    /// Everything before the membership is verified: the account may join the group.
    Join,
    /// The membership is verified: the session has its access.
    Grant,
}

impl GrantStage {
    /// The session's account was (or is about to be) put in the admin group.
    fn holds_membership(&self) -> bool {
        matches!(self, GrantStage::Joining { .. } | GrantStage::Granted)
    }

    /// A grant request of the session was issued: the join moves the grant to `Joining`,
    /// what comes before it is waited for while `Preparing`.
    pub(super) fn issued(&mut self, request: RequestId, operation: &Operation) {
        match (operation, self) {
            (Operation::AddToGroup { .. }, stage) => *stage = GrantStage::Joining { request },
            (_, GrantStage::Preparing { pending }) => {
                pending.insert(request);
            }
            _ => {}
        }
    }

    /// The agent verified one of the session's requests.
    pub(super) fn verified(&mut self, request: RequestId) {
        if let GrantStage::Preparing { pending } = self {
            pending.remove(&request);
        }
    }

    /// What comes next now that the agent verified `request` (already taken in by
    /// [`GrantStage::verified`]).
    fn next(&self, request: RequestId) -> Option<GrantStep> {
        match self {
            GrantStage::Preparing { pending } if pending.is_empty() => Some(GrantStep::Join),
            GrantStage::Joining { request: join } if *join == request => Some(GrantStep::Grant),
            _ => None,
        }
    }

    /// A failed grant request fails the session, unless it is over already.
    fn fails_with_its_requests(&self) -> bool {
        matches!(
            self,
            GrantStage::Preparing { .. } | GrantStage::Joining { .. }
        )
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
    /// What the agent does to the account's live logons when the access ends.
    #[serde(default)]
    pub post_session: PostSessionActions,
    pub stage: GrantStage,
    /// The account did not exist (as far as Latchkey wanted) before this grant: a grant
    /// that fails before the account joins the group deletes it again.
    #[serde(default)]
    pub created_account: bool,
}

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

impl Computer {
    /// Sessions whose access is being set up or is in force here.
    pub fn open_sessions(&self) -> impl Iterator<Item = &Grant> {
        self.grants.values()
    }

    /// Does a session other than `except` hold (or is about to hold) `group` through `account`?
    pub(super) fn group_needed(
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

    pub(super) fn grant_access(
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
        let refusal = if self.is_decommissioned() {
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
            post_session: Some(grant.post_session),
            at,
        });
        if let Some(why) = refusal {
            d.access_failed(session_id, reason(why));
            return Ok(d.finish());
        }
        // The password is rotated before the account may join the admin group: the join is
        // only requested once the agent has verified both of these (see `GrantStage::next`).
        if grant.create_account {
            let op = Operation::EnsureAccount {
                account: grant.account.clone(),
            };
            d.request(Some(session_id), Purpose::Grant, op);
        }
        d.rotate(Some(session_id), Purpose::Grant, &grant.account);
        d.issue_offline_secret(&grant.account, grant.owner);
        d.supersede_unwanted(&grant.account);
        Ok(d.finish())
    }

    pub(super) fn release_access(
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
            && account.status.is_wanted()
            && (grant.on_check_in == CheckInAction::DeleteAccount
                || account.status.is_retired()
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
        let post_session = grant.post_session;
        d.emit(SessionAccessReleased {
            computer_id: d.computer_id,
            session_id,
            account: Some(name.clone()),
            outcome,
            at,
        });
        // Membership first, then the password, then the live logons (a new logon with the
        // old password is impossible by then), then the account: if deletion fails (the
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
        if post_session.any() && had_membership && (remove_from_group || deleting) {
            let op = Operation::PostSession {
                account: name.clone(),
                actions: post_session,
            };
            d.request(Some(session_id), Purpose::Revoke, op);
        }
        if deleting {
            d.revoke_offline_secret(&name);
            let op = Operation::DeleteAccount {
                account: name,
                end_logons: post_session.end_logons,
            };
            d.request(Some(session_id), Purpose::Revoke, op);
        }
        Ok(d.finish())
    }
}

impl Decision {
    fn access_failed(&mut self, session_id: SessionId, reason: FailureReason) {
        self.emit(SessionAccessFailed {
            computer_id: self.computer_id,
            session_id,
            reason,
            at: self.at,
        });
    }

    /// The agent verified one of the session's grant requests (its result is emitted
    /// already): the grant moves on, to the join or to access granted.
    pub(super) fn grant_request_verified(&mut self, session_id: SessionId, request: RequestId) {
        // A session released meanwhile has no grant left to move on.
        let Some(grant) = self.state.grants.get(&session_id) else {
            return;
        };
        let (account, group) = (grant.account.clone(), grant.admin_group.clone());
        match grant.stage.next(request) {
            Some(GrantStep::Join) => {
                let op = Operation::AddToGroup { account, group };
                self.request(Some(session_id), Purpose::Grant, op);
            }
            Some(GrantStep::Grant) => {
                self.emit(SessionAccessGranted {
                    computer_id: self.computer_id,
                    session_id,
                    account,
                    at: self.at,
                });
            }
            None => {}
        }
    }

    /// One of the session's grant requests failed (its failure is emitted already).
    pub(super) fn grant_request_failed(&mut self, session_id: SessionId, why: FailureReason) {
        let failing = self
            .state
            .grants
            .get(&session_id)
            .is_some_and(|g| g.stage.fails_with_its_requests());
        if failing {
            self.access_failed(session_id, why);
        }
    }
}

/// How the grant events change the state.
impl Computer {
    pub(super) fn on_session_access_requested(&mut self, e: &SessionAccessRequested) {
        let created_account = !self
            .accounts
            .get(&e.account)
            .is_some_and(|a| a.status.is_wanted());
        let account = self.account_entry(&e.account, e.owner);
        account.sessions.insert(e.session_id, e.admin_group.clone());
        account.status = account.status.reclaimed();
        self.grants.insert(
            e.session_id,
            Grant {
                session_id: e.session_id,
                technician_id: e.technician_id,
                account: e.account.clone(),
                admin_group: e.admin_group.clone(),
                on_check_in: e.on_check_in,
                rotate_on_check_in: e.rotate_on_check_in,
                post_session: e.post_session.unwrap_or(PostSessionActions::NONE),
                stage: GrantStage::Preparing {
                    pending: BTreeSet::new(),
                },
                created_account,
            },
        );
    }

    pub(super) fn on_session_access_granted(&mut self, e: &SessionAccessGranted) {
        if let Some(grant) = self.grants.get_mut(&e.session_id) {
            grant.stage = GrantStage::Granted;
        }
    }

    pub(super) fn on_session_access_failed(&mut self, e: &SessionAccessFailed) {
        if let Some(grant) = self.grants.get_mut(&e.session_id) {
            grant.stage = GrantStage::Failed;
        }
    }

    pub(super) fn on_session_access_released(&mut self, e: &SessionAccessReleased) {
        if let Some(a) = e.account.as_ref().and_then(|a| self.accounts.get_mut(a)) {
            a.sessions.remove(&e.session_id);
        }
        self.grants.remove(&e.session_id);
        self.released.push(e.session_id);
    }
}

#[cfg(test)]
mod tests {
    use crate::computer::testing::*;
    use crate::computer::*;
    use crate::ids::RequestId;
    use crate::policy::{CheckInAction, PostSessionActions};
    use crate::testing::{ann_id, given, nik_id, t};
    use crate::Aggregate;

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
                    account: acct("msp-nik"),
                    end_logons: false,
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
                    account: acct("msp-nik"),
                    end_logons: false,
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
            c.state().accounts[&acct("msp-nik")].status == AccountStatus::Wanted,
            "named accounts are kept"
        );
    }

    /// DESIGN.md §2 "Access ends for real": after the membership and the password, the
    /// post-session actions end the account's live logons; the agent's report must show no
    /// process left, or the step fails and waits for a retry like any revocation.
    #[test]
    fn check_in_ends_the_live_logons_after_the_membership_and_the_password() {
        let mut c = Timeline::enrolled();
        let grant = AccessGrant {
            post_session: PostSessionActions::ALL,
            ..named_grant(1)
        };
        let next = c.grant_fully(grant, 1, 1);
        let events = c.release(1);
        assert_eq!(
            requested(&events),
            vec![
                (next, Purpose::Revoke, remove("msp-nik")),
                (next + 1, Purpose::Revoke, rotate("msp-nik", 2)),
                (next + 2, Purpose::Revoke, post_session("msp-nik")),
            ]
        );
        c.succeed(next, seen(true, &[], Some(1)));
        c.succeed(next + 1, seen(true, &[], Some(2)));
        // An agent that says a process is left has not done it.
        let left = AccountObservation {
            processes: Some(1),
            ..seen_ended(true, &[], Some(2))
        };
        let failed = c.succeed(next + 2, left);
        assert!(
            matches!(&failed[0], ComputerEvent::ProvisioningFailed(f)
                if f.reason.as_str().contains("processes left: 1")),
            "{failed:#?}"
        );
        assert_eq!(c.state().failed_requests().count(), 1);
        let retried = c.run(ComputerCommand::RetryRequest {
            request_id: RequestId(next + 2),
            at: t(40),
        });
        assert!(matches!(&retried[0], ComputerEvent::ProvisioningRetried(_)));
        let done = c.succeed(next + 2, seen_ended(true, &[], Some(2)));
        assert!(
            matches!(&done[0], ComputerEvent::PostSessionActionsTaken(e)
                if e.verified.processes == Some(0) && e.actions == PostSessionActions::ALL),
            "{done:#?}"
        );
        assert!(c.state().open_requests.is_empty());
    }

    #[test]
    fn checking_in_one_shared_session_leaves_the_other_technicians_logons_alone() {
        let mut c = Timeline::enrolled();
        let with_actions = |n, who| AccessGrant {
            post_session: PostSessionActions::ALL,
            ..shared_grant(n, who)
        };
        let next = c.grant_fully(with_actions(1, nik_id()), 1, 1);
        let next = c.grant_fully(with_actions(2, ann_id()), next, 2);
        let first = c.release(1);
        assert!(
            !requested(&first)
                .iter()
                .any(|(_, _, op)| matches!(op, Operation::PostSession { .. })),
            "{first:#?}"
        );
        let last = c.release(2);
        assert!(
            requested(&last)
                .iter()
                .any(|(_, _, op)| op == &post_session("msp-1234")),
            "{last:#?}"
        );
        let _ = next;
    }

    /// Events recorded before post-session actions existed still load: a session requested
    /// then (no `post_session` in its event) is released with none, as it was checked out,
    /// and an old deletion request (no `end_logons`) reads as one that ends none.
    #[test]
    fn events_from_before_post_session_actions_load_and_release_with_none() {
        let mut c = Timeline::enrolled();
        let grant = AccessGrant {
            post_session: PostSessionActions::ALL,
            ..named_grant(1)
        };
        c.grant(grant);
        for event in c.0.iter_mut() {
            if let ComputerEvent::SessionAccessRequested(e) = event {
                let mut json = serde_json::to_value(&*e).unwrap();
                json.as_object_mut().unwrap().remove("post_session");
                *e = serde_json::from_value(json).unwrap();
                assert_eq!(e.post_session, None);
            }
        }
        c.succeed(1, seen(true, &[], None));
        c.succeed(2, seen(true, &[], Some(1)));
        c.succeed(3, seen(true, &["Administrators"], Some(1)));
        let released = c.release(1);
        assert!(
            !requested(&released)
                .iter()
                .any(|(_, _, op)| matches!(op, Operation::PostSession { .. })),
            "{released:#?}"
        );
        let old: Operation = serde_json::from_value(
            serde_json::json!({"op": "delete_account", "account": "msp-nik"}),
        )
        .unwrap();
        assert_eq!(old, delete("msp-nik"));
        assert_eq!(
            serde_json::to_value(delete("msp-nik")).unwrap(),
            serde_json::json!({"op": "delete_account", "account": "msp-nik"}),
            "written as before when it ends no logons"
        );
    }

    /// A failed post-session step is not replayed once a new session uses the account: it
    /// would end that session's logons.
    #[test]
    fn a_failed_post_session_step_is_superseded_by_a_new_session() {
        let mut c = Timeline::enrolled();
        let grant = |n| AccessGrant {
            post_session: PostSessionActions::ALL,
            ..named_grant(n)
        };
        let next = c.grant_fully(grant(1), 1, 1);
        c.release(1);
        c.succeed(next, seen(true, &[], Some(1)));
        c.succeed(next + 1, seen(true, &[], Some(2)));
        c.fail(next + 2, "account msp-nik still has 1 process(es)");
        let granted = c.grant(grant(2));
        assert!(
            granted
                .iter()
                .any(|e| matches!(e, ComputerEvent::ProvisioningSuperseded(s)
                if s.request_id == RequestId(next + 2))),
            "{granted:#?}"
        );
        let retried = c.run(ComputerCommand::RetryRequest {
            request_id: RequestId(next + 2),
            at: t(40),
        });
        assert!(retried.is_empty(), "{retried:#?}");
    }

    /// With the policy ending logons, the deletion ends them too (a logon made between the
    /// post-session step and the deletion must not keep the account, nor be orphaned).
    #[test]
    fn delete_on_check_in_with_post_session_actions_ends_the_logons_before_deleting() {
        let mut c = Timeline::enrolled();
        let grant = AccessGrant {
            account: acct("nik_566054625600"),
            owner: AccountOwner::Ephemeral {
                technician_id: nik_id(),
            },
            on_check_in: CheckInAction::DeleteAccount,
            post_session: PostSessionActions::ALL,
            ..named_grant(1)
        };
        let next = c.grant_fully(grant, 1, 1);
        let events = c.release(1);
        assert_eq!(
            requested(&events),
            vec![
                (next, Purpose::Revoke, remove("nik_566054625600")),
                (next + 1, Purpose::Revoke, rotate("nik_566054625600", 2)),
                (next + 2, Purpose::Revoke, post_session("nik_566054625600")),
                (
                    next + 3,
                    Purpose::Revoke,
                    Operation::DeleteAccount {
                        account: acct("nik_566054625600"),
                        end_logons: true,
                    }
                ),
            ]
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
        assert_eq!(
            c.state().accounts[&acct("nik_566054625600")].status,
            AccountStatus::Absent
        );
        assert_eq!(c.state().reusable_account(nik_id()), None);
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
}
