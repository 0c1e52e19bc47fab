//! The local accounts Latchkey manages on a computer: whose each one is, and what Latchkey
//! wants of it. What Latchkey wants leads (it changes when a request is issued); what the
//! agent last verified on the machine is kept beside it. An account Latchkey did not create
//! is never here.

use super::{AccountObservation, Computer, Operation};
use crate::ids::{SessionId, TechnicianId};
use crate::names::{AccountName, GroupName};
use crate::policy::LoginMode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

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
    pub(super) fn has_offline_secret(&self) -> bool {
        !matches!(self, AccountOwner::Ephemeral { .. })
    }
}

/// What Latchkey wants of an account on the machine. It changes when Latchkey issues a
/// request, before the agent has run it (what the agent saw is [`ManagedAccount::verified`]),
/// so the next decision already builds on it. Two facts in one: whether the account is
/// wanted, and whether the settings gave it up (retirement):
///
/// | from | on | to |
/// |---|---|---|
/// | `Absent` | creation requested (a grant's ensure-account) | `Wanted` |
/// | `Wanted` | deletion requested (at check-in: by policy, or after a failed grant) | `Absent` |
/// | `Wanted` | `AccountRetirementStarted` | `Retiring` |
/// | `Retiring` | deletion requested (at once if idle, else at its last release) | `Retired` |
/// | `Retiring` | a new session asks for it (`SessionAccessRequested`) | `Wanted` |
/// | `Retired` | a new session asks for it | `Absent` (then its creation: `Wanted`) |
///
/// A session that asks for an account Latchkey does not know yet enters it as `Absent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AccountStatus {
    /// Latchkey does not want the account: not created yet, or its deletion was requested.
    Absent,
    /// Latchkey wants the account, and new sessions may use it.
    Wanted,
    /// Wanted by the sessions using it until the last one is released, then deleted: the
    /// settings no longer want it.
    Retiring,
    /// Deleted because the settings no longer wanted it.
    Retired,
}

impl AccountStatus {
    /// Latchkey wants the account to exist (it asked for it and has not asked to delete it).
    pub fn is_wanted(self) -> bool {
        matches!(self, AccountStatus::Wanted | AccountStatus::Retiring)
    }

    /// A new session may use the account: it is wanted and not being retired.
    pub fn is_usable(self) -> bool {
        self == AccountStatus::Wanted
    }

    /// The settings gave the account up: it is being retired, or was.
    pub fn is_retired(self) -> bool {
        matches!(self, AccountStatus::Retiring | AccountStatus::Retired)
    }

    fn created(self) -> Self {
        match self {
            AccountStatus::Absent => AccountStatus::Wanted,
            AccountStatus::Retired => AccountStatus::Retiring,
            wanted => wanted,
        }
    }

    fn deleted(self) -> Self {
        match self {
            AccountStatus::Wanted => AccountStatus::Absent,
            AccountStatus::Retiring => AccountStatus::Retired,
            absent => absent,
        }
    }

    pub(super) fn retired(self) -> Self {
        match self {
            AccountStatus::Wanted => AccountStatus::Retiring,
            AccountStatus::Absent => AccountStatus::Retired,
            retired => retired,
        }
    }

    pub(super) fn reclaimed(self) -> Self {
        match self {
            AccountStatus::Retiring => AccountStatus::Wanted,
            AccountStatus::Retired => AccountStatus::Absent,
            kept => kept,
        }
    }
}

/// A Latchkey account on this computer, as Latchkey wants it to be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagedAccount {
    pub name: AccountName,
    pub owner: AccountOwner,
    /// Whether Latchkey wants it on the machine, and for how long.
    pub status: AccountStatus,
    /// The sessions using the account, with the admin group each uses.
    pub sessions: BTreeMap<SessionId, GroupName>,
    /// The latest password version requested (versions never repeat, even across deletion).
    pub password_version: u32,
    /// The generation of the account's offline TOTP secret, if one is in force.
    pub offline_secret: Option<u32>,
    pub offline_generations: u32,
    /// What the agent last verified.
    pub verified: Option<AccountObservation>,
}

impl ManagedAccount {
    /// What issuing `operation` makes Latchkey want of the account (the agent has not run it
    /// yet: Latchkey's wish leads, so a second decision already sees it).
    pub(super) fn requested(&mut self, operation: &Operation) {
        match operation {
            Operation::EnsureAccount { .. } => self.status = self.status.created(),
            Operation::RotatePassword { version, .. } => self.password_version = *version,
            Operation::DeleteAccount { .. } => self.status = self.status.deleted(),
            Operation::AddToGroup { .. }
            | Operation::RemoveFromGroup { .. }
            | Operation::PostSession { .. } => {}
        }
    }
}

impl Computer {
    /// A Latchkey account of this name exists (or is being created) and is not being retired.
    pub fn has_usable_account(&self, name: &AccountName) -> bool {
        self.accounts
            .get(name)
            .is_some_and(|a| a.status.is_usable())
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
            .find(|a| a.status.is_usable())
            .map(|a| &a.name)
    }

    /// The account a session asks for, entered with its owner if Latchkey does not know it
    /// (yet, or any more): it continues after the password versions and secret generations
    /// of the accounts forgotten before it.
    pub(super) fn account_entry(
        &mut self,
        name: &AccountName,
        owner: AccountOwner,
    ) -> &mut ManagedAccount {
        let (versions, generations) = self.forgotten_versions;
        self.accounts
            .entry(name.clone())
            .or_insert_with(|| ManagedAccount {
                name: name.clone(),
                owner,
                status: AccountStatus::Absent,
                sessions: BTreeMap::new(),
                password_version: versions,
                offline_secret: None,
                offline_generations: generations,
                verified: None,
            })
    }

    /// Forgets an account that is gone from the machine and that nothing refers to any more
    /// (no session, no open request, no offline secret), keeping its highest password version
    /// and secret generation so a later account of the same name continues after them. An
    /// ephemeral account per session would otherwise stay in the state for ever.
    pub(super) fn forget_if_gone(&mut self, name: &AccountName) {
        let Some(account) = self.accounts.get(name) else {
            return;
        };
        let referred = self
            .open_requests
            .values()
            .any(|r| r.operation.account() == name);
        let gone = !account.status.is_wanted()
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
}

#[cfg(test)]
mod tests {
    use crate::computer::testing::*;
    use crate::computer::*;
    use crate::policy::CheckInAction;
    use crate::testing::nik_id;

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
}
