//! Accounts the settings no longer want: the old login mode's after a change of mode, a
//! technician's after offboarding or leaving the tenant, and every account of a
//! decommissioned computer. An idle account is deleted at once; one in use is marked and
//! deleted when its last session is released (see `grant.rs`), never under a session.

use super::{AccountOwner, Decision, ManagedAccount, Operation, Purpose};
use super::{AccountRetirementStarted, Computer, ComputerDecommissioned, ComputerEvent};
use crate::event::{Actor, Timestamp};
use crate::ids::TechnicianId;
use crate::policy::LoginMode;
use crate::{Aggregate, DomainError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

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

impl Computer {
    pub(super) fn decommission(
        &self,
        by: Actor,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let computer_id = self.computer_id()?;
        if self.is_decommissioned() {
            return Ok(vec![]);
        }
        let mut events = vec![ComputerDecommissioned {
            computer_id,
            by,
            at,
        }
        .into()];
        let after = Computer::evolve(self.clone(), &events[0]);
        events.extend(after.retire_accounts(RetireReason::ComputerDecommissioned, at)?);
        Ok(events)
    }

    pub(super) fn retire_accounts(
        &self,
        why: RetireReason,
        at: Timestamp,
    ) -> Result<Vec<ComputerEvent>, DomainError> {
        let mut d = Decision::new(self, at)?;
        let selected: Vec<&ManagedAccount> = self
            .accounts
            .values()
            .filter(|a| a.status.is_usable() && why.selects(&a.owner))
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
                // Idle: no session's post-session actions apply. A logon found now is
                // someone outside any session: the deletion waits (and shows why) rather
                // than ending it.
                let op = Operation::DeleteAccount {
                    account: account.name.clone(),
                    end_logons: false,
                };
                d.request(None, Purpose::Cleanup, op);
            }
        }
        Ok(d.finish())
    }

    pub(super) fn on_account_retirement_started(&mut self, e: &AccountRetirementStarted) {
        if let Some(a) = self.accounts.get_mut(&e.account) {
            a.status = a.status.retired();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::computer::testing::*;
    use crate::computer::*;
    use crate::policy::LoginMode;
    use crate::testing::{admin, ann_id, nik_id, t};

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
        assert_eq!(
            c.state().accounts[&acct("msp-1234")].status,
            AccountStatus::Retiring
        );
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
        assert_eq!(
            c.state().accounts[&acct("msp-ann")].status,
            AccountStatus::Wanted
        );
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
}
