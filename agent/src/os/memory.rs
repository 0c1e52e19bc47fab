//! An in-memory account backend for fast unit tests of the daemon's logic. It keeps the same
//! contract as the Linux backend (idempotent ensures, `GroupMissing`, refused names), which
//! `tests/linux_backend.rs` holds both to; it must never be used on a real machine.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::linux::{check_hash, check_name};
use super::{AccountBackend, Observed, OsError};

/// What `useradd` leaves in the shadow file: an account no password opens yet.
const LOCKED: &str = "!";

/// Accounts and groups held in maps. Only the groups given to [`MemoryAccounts::new`] exist;
/// accounts get no private group (a membership is only what a group lists, as on Linux).
pub struct MemoryAccounts {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Account → its password hash (`!` until one is set).
    accounts: BTreeMap<String, String>,
    /// Group → its listed members.
    groups: BTreeMap<String, BTreeSet<String>>,
    /// Account → how many processes run as it.
    processes: BTreeMap<String, usize>,
    /// Accounts sudo holds a cached credential for.
    sudo_cached: BTreeSet<String>,
    /// Accounts whose processes survive being ended (a test's stubborn process).
    unkillable: BTreeSet<String>,
}

impl MemoryAccounts {
    /// A machine with no accounts and these (empty) groups.
    pub fn new(groups: &[&str]) -> Self {
        let state = State {
            groups: groups
                .iter()
                .map(|g| (g.to_string(), BTreeSet::new()))
                .collect(),
            ..State::default()
        };
        Self {
            state: Mutex::new(state),
        }
    }

    /// The account logs in: one more process, and sudo caches its credential.
    pub fn log_in(&self, account: &str) {
        let mut state = self.state();
        *state.processes.entry(account.to_string()).or_default() += 1;
        state.sudo_cached.insert(account.to_string());
    }

    /// The account's processes will survive being ended.
    pub fn make_unkillable(&self, account: &str) {
        self.state().unkillable.insert(account.to_string());
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Every operation leaves the maps consistent before it can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The failure a real tool gives for an account that does not exist.
fn no_such_account(tool: &str, account: &str) -> OsError {
    OsError::ToolFailed {
        tool: tool.to_string(),
        status: "exit status: 1".to_string(),
        stderr: format!("user '{account}' does not exist"),
    }
}

impl AccountBackend for MemoryAccounts {
    fn ensure_account(&self, account: &str) -> Result<(), OsError> {
        check_name("useradd", "account", account)?;
        self.state()
            .accounts
            .entry(account.to_string())
            .or_insert_with(|| LOCKED.to_string());
        Ok(())
    }

    fn set_password_hash(&self, account: &str, hash: &str) -> Result<(), OsError> {
        check_name("chpasswd", "account", account)?;
        check_hash(hash)?;
        match self.state().accounts.get_mut(account) {
            Some(stored) => {
                *stored = hash.to_string();
                Ok(())
            }
            None => Err(no_such_account("chpasswd", account)),
        }
    }

    fn add_to_group(&self, account: &str, group: &str) -> Result<(), OsError> {
        check_name("gpasswd", "account", account)?;
        check_name("gpasswd", "group", group)?;
        let mut state = self.state();
        if !state.groups.contains_key(group) {
            return Err(OsError::GroupMissing {
                group: group.to_string(),
            });
        }
        if !state.accounts.contains_key(account) {
            return Err(no_such_account("gpasswd", account));
        }
        if let Some(members) = state.groups.get_mut(group) {
            members.insert(account.to_string());
        }
        Ok(())
    }

    /// As on Linux, removing from a group that does not exist is `Ok`.
    fn remove_from_group(&self, account: &str, group: &str) -> Result<(), OsError> {
        check_name("gpasswd", "account", account)?;
        check_name("gpasswd", "group", group)?;
        if let Some(members) = self.state().groups.get_mut(group) {
            members.remove(account);
        }
        Ok(())
    }

    fn delete_account(&self, account: &str, end_logons: bool) -> Result<(), OsError> {
        check_name("userdel", "account", account)?;
        if end_logons {
            self.end_logons(account)?;
        }
        let mut state = self.state();
        let running = state.processes.get(account).copied().unwrap_or(0);
        if running > 0 && state.accounts.contains_key(account) {
            return Err(OsError::Busy {
                account: account.to_string(),
                processes: running,
                pids: "in memory".to_string(),
                why: "the JIT policy does not end its logons; retried until they have ended"
                    .to_string(),
            });
        }
        if state.accounts.remove(account).is_some() {
            for members in state.groups.values_mut() {
                members.remove(account);
            }
        }
        Ok(())
    }

    fn end_logons(&self, account: &str) -> Result<(), OsError> {
        check_name("kill", "account", account)?;
        let mut state = self.state();
        let running = state.processes.get(account).copied().unwrap_or(0);
        if running > 0 && state.unkillable.contains(account) {
            return Err(OsError::Busy {
                account: account.to_string(),
                processes: running,
                pids: "in memory".to_string(),
                why: "they survived SIGTERM and SIGKILL".to_string(),
            });
        }
        state.processes.remove(account);
        Ok(())
    }

    fn clear_sudo(&self, account: &str) -> Result<(), OsError> {
        check_name("sudo", "account", account)?;
        self.state().sudo_cached.remove(account);
        Ok(())
    }

    fn observe(&self, account: &str) -> Result<Observed, OsError> {
        let state = self.state();
        let present = state.accounts.contains_key(account);
        Ok(Observed {
            present,
            groups: state
                .groups
                .iter()
                .filter(|(_, members)| members.contains(account))
                .map(|(group, _)| group.clone())
                .collect(),
            password_hash: state.accounts.get(account).cloned(),
            processes: if present {
                state.processes.get(account).copied().unwrap_or(0)
            } else {
                0
            },
            sudo_cached: state.sudo_cached.contains(account),
        })
    }

    fn group_members(&self, group: &str) -> Result<Vec<String>, OsError> {
        self.state()
            .groups
            .get(group)
            .map(|members| members.iter().cloned().collect())
            .ok_or_else(|| OsError::GroupMissing {
                group: group.to_string(),
            })
    }
}
