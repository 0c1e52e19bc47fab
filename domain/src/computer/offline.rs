//! Offline access: the TOTP secrets with which an agent lets a technician in while it cannot
//! reach the server, and the records of those logins and lockouts it uploads afterwards. A
//! named account has a secret per (computer, technician), the shared account one per
//! computer, an ephemeral account none. Secrets live in the secret store under (computer,
//! account, generation); no event holds one, nor a TOTP code.

use super::{
    AccountOwner, ManagedAccount, OfflineLoginEnded, OfflineLoginLockedOut, OfflineLoginRecorded,
    OfflineSecretDisclosed, OfflineSecretIssued, OfflineSecretRevoked,
};
use super::{Computer, ComputerEvent, Decision, Operation, Purpose};
use crate::event::{Actor, Timestamp};
use crate::ids::TechnicianId;
use crate::names::{AccountName, ClaimedName, GroupName};
use crate::policy::PostSessionActions;
use crate::DomainError;
use uuid::Uuid;

/// An offline login as the agent uploaded it (the fields of
/// `ComputerCommand::RecordOfflineLogin`).
pub(super) struct OfflineLogin {
    pub login_id: Uuid,
    pub account: AccountName,
    pub technician_id: Option<TechnicianId>,
    pub claimed_by: Option<ClaimedName>,
    pub generation: u32,
    pub admin_group: Option<GroupName>,
    pub used_at: Timestamp,
    pub until: Timestamp,
}

impl Computer {
    /// The offline secret in force that `technician` may use here: their named account's, or
    /// else the shared account's (DESIGN.md §2). `(account, generation)`.
    pub fn offline_secret_for(&self, technician: TechnicianId) -> Option<(&AccountName, u32)> {
        let usable = |a: &&ManagedAccount| a.status.is_usable() && a.offline_secret.is_some();
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

    /// Records an uploaded offline login once, and rotates the account's password again: the
    /// one the agent printed must not outlive the visit. A login whose end has not come is
    /// ended now, explicitly ([`OfflineLoginEnded`]), rather than left running with a
    /// password nobody knows: out of the admin group (unless an online session holds it),
    /// the rotation, then its logons ended and sudo's cached credentials cleared (the agent's
    /// own end of an offline login does the same; the computer's policy is not known here).
    pub(super) fn record_offline_login(
        &self,
        login: OfflineLogin,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        if self.offline_logins.contains(&login.login_id) {
            return Ok(vec![]);
        }
        let managed = self
            .accounts
            .get(&login.account)
            .ok_or(DomainError::UnknownAccount {
                account: login.account.clone(),
            })?;
        let wanted = managed.status.is_wanted();
        let held_by_session = managed.sessions.keys().any(|s| {
            self.grants
                .get(s)
                .is_some_and(|g| g.stage != super::GrantStage::Failed)
        });
        let group = login
            .admin_group
            .clone()
            .or_else(|| self.inventory.as_ref().map(|(g, _)| g.clone()));
        let mut d = Decision::new(self, at)?;
        let account = login.account.clone();
        let (login_id, until) = (login.login_id, login.until);
        d.emit(OfflineLoginRecorded {
            computer_id: d.computer_id,
            login_id,
            account: login.account,
            technician_id: login.technician_id,
            claimed_by: login.claimed_by,
            generation: login.generation,
            admin_group: login.admin_group,
            used_at: login.used_at,
            until,
            at,
        });
        let running = wanted && until > at;
        if running {
            d.emit(OfflineLoginEnded {
                computer_id: d.computer_id,
                login_id,
                account: account.clone(),
                until,
                kept_for_session: held_by_session,
                at,
            });
            if let (false, Some(group)) = (held_by_session, group) {
                let op = Operation::RemoveFromGroup {
                    account: account.clone(),
                    group,
                };
                d.request(None, Purpose::Cleanup, op);
            }
        }
        if wanted {
            d.rotate(None, Purpose::Cleanup, &account);
        }
        if running && !held_by_session {
            let op = Operation::PostSession {
                account,
                actions: PostSessionActions::ALL,
            };
            d.request(None, Purpose::Cleanup, op);
        }
        Ok(d.finish())
    }

    /// Records an uploaded lockout once, by the agent's id for it; also for an account this
    /// computer no longer has: someone tried codes at the machine, and the audit trail must
    /// say so.
    pub(super) fn record_offline_lockout(
        &self,
        lockout: OfflineLoginLockedOut,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        if self.offline_lockouts.contains(&lockout.lockout_id) {
            return Ok(vec![]);
        }
        Ok(vec![lockout.into()])
    }

    /// Shows `technician` the offline secret they may use here (the caller checks that they
    /// work for the computer's tenant).
    pub(super) fn disclose_offline_secret(
        &self,
        technician_id: TechnicianId,
        by: Actor,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let computer_id = self.computer_id()?;
        let (account, generation) = self
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

impl Decision {
    /// Issues the account's offline secret if its owner has one and none is in force (a
    /// named or shared account keeps its secret from session to session).
    pub(super) fn issue_offline_secret(&mut self, account: &AccountName, owner: AccountOwner) {
        let Some(managed) = self.state.accounts.get(account) else {
            return;
        };
        if !owner.has_offline_secret() || managed.offline_secret.is_some() {
            return;
        }
        let generation = managed.offline_generations + 1;
        self.emit(OfflineSecretIssued {
            computer_id: self.computer_id,
            account: account.clone(),
            technician_id: match owner {
                AccountOwner::Named { technician_id } => Some(technician_id),
                _ => None,
            },
            generation,
            at: self.at,
        });
    }

    /// Revokes the account's offline secret, if one is in force, before it is deleted.
    pub(super) fn revoke_offline_secret(&mut self, account: &AccountName) {
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
}

/// How the offline events change the state.
impl Computer {
    pub(super) fn on_offline_secret_issued(&mut self, e: &OfflineSecretIssued) {
        if let Some(a) = self.accounts.get_mut(&e.account) {
            a.offline_secret = Some(e.generation);
            a.offline_generations = a.offline_generations.max(e.generation);
        }
    }

    pub(super) fn on_offline_secret_revoked(&mut self, e: &OfflineSecretRevoked) {
        if let Some(a) = self.accounts.get_mut(&e.account) {
            a.offline_secret = None;
        }
    }

    pub(super) fn on_offline_login_recorded(&mut self, e: &OfflineLoginRecorded) {
        self.offline_logins.insert(e.login_id);
    }

    pub(super) fn on_offline_login_locked_out(&mut self, e: &OfflineLoginLockedOut) {
        self.offline_lockouts.insert(e.lockout_id);
    }
}

#[cfg(test)]
mod tests {
    use crate::computer::testing::*;
    use crate::computer::*;

    use crate::testing::{admin, ann_id, computer_id, given, nik_id, t};
    use crate::{Aggregate, DomainError};

    use crate::names::GroupName;

    use uuid::Uuid;

    #[test]
    fn an_uploaded_offline_login_is_recorded_once_and_the_password_rotated_again() {
        let mut c = Timeline::enrolled();
        c.grant_fully(named_grant(1), 1, 1);
        let login = Uuid::from_u128(77);
        let record = || ComputerCommand::RecordOfflineLogin {
            login_id: login,
            account: acct("msp-nik"),
            technician_id: Some(nik_id()),
            claimed_by: None,
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
            claimed_by: None,
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

    /// Issue 12, item 5: after the follow-up rotation an offline login kept the account in
    /// the admin group until its end, with a password nobody knew. A login uploaded before
    /// its end is ended now, by an event that says so, and its rights are taken.
    #[test]
    fn an_offline_login_uploaded_before_its_end_is_ended_explicitly_and_its_rights_taken() {
        let mut c = Timeline::enrolled();
        let next = c.grant_fully(named_grant(1), 1, 1);
        c.release(1);
        c.succeed(next, seen(true, &[], Some(1)));
        c.succeed(next + 1, seen(true, &[], Some(2)));
        let events = c.run(ComputerCommand::RecordOfflineLogin {
            login_id: Uuid::from_u128(79),
            account: acct("msp-nik"),
            technician_id: Some(nik_id()),
            claimed_by: None,
            generation: 1,
            admin_group: Some(GroupName::parse("Administrators").unwrap()),
            used_at: t(40),
            until: t(100),
            at: t(50),
        });
        assert!(
            matches!(&events[1], ComputerEvent::OfflineLoginEnded(e)
                if e.until == t(100) && !e.kept_for_session),
            "{events:#?}"
        );
        let ops: Vec<Operation> = requested(&events)
            .into_iter()
            .map(|(_, _, op)| op)
            .collect();
        assert_eq!(
            ops,
            vec![
                remove("msp-nik"),
                rotate("msp-nik", 3),
                post_session("msp-nik")
            ]
        );
    }

    /// An online session holding the account keeps its membership and its logons.
    #[test]
    fn ending_an_offline_login_leaves_an_online_sessions_access_alone() {
        let mut c = Timeline::enrolled();
        c.grant_fully(named_grant(1), 1, 1);
        let events = c.run(ComputerCommand::RecordOfflineLogin {
            login_id: Uuid::from_u128(80),
            account: acct("msp-nik"),
            technician_id: Some(nik_id()),
            claimed_by: None,
            generation: 1,
            admin_group: Some(GroupName::parse("Administrators").unwrap()),
            used_at: t(1),
            until: t(100),
            at: t(5),
        });
        assert!(matches!(&events[1], ComputerEvent::OfflineLoginEnded(e) if e.kept_for_session));
        let ops: Vec<Operation> = requested(&events)
            .into_iter()
            .map(|(_, _, op)| op)
            .collect();
        assert_eq!(ops, vec![rotate("msp-nik", 2)]);
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
}
