//! Carries out one provisioning request on the machine, exactly once (through the journal),
//! and says what the machine shows afterwards, read back from the account files.
//!
//! It must never touch an account Latchkey did not create: the managed-accounts record
//! (`accounts.json`) lists what the agent created, and a request for any other existing
//! account is refused and reported as failed.

use latchkey_domain::computer::{AccountObservation, Operation};
use latchkey_domain::names::GroupName;

use crate::client::{DeliveredCommand, Outcome};
use crate::journal::{CommandKey, Ending, Journal, Status, Step};
use crate::offline;
use crate::os::{self, AccountBackend, Observed};
use crate::state::{ManagedAccount, ManagedAccounts, SetPassword, StateDir};

/// The server takes a failure reason of up to 1000 characters; ours stay well below.
const MAX_REASON_CHARS: usize = 190;

/// What carrying out a request came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Carried {
    pub outcome: Outcome,
    /// The request was applied (or refused) just now, as opposed to re-observed after an
    /// earlier run had applied it.
    pub applied_now: bool,
}

pub struct Executor<'a> {
    backend: &'a dyn AccountBackend,
    state: &'a StateDir,
}

impl<'a> Executor<'a> {
    pub fn new(backend: &'a dyn AccountBackend, state: &'a StateDir) -> Self {
        Self { backend, state }
    }

    /// Carries out `command` unless the journal says it was already; in every case returns
    /// the result to report. Holds the state lock throughout, so an offline login never
    /// interleaves with it.
    pub fn carry_out(&self, journal: &mut Journal, command: &DeliveredCommand) -> Carried {
        let key = CommandKey {
            request_id: command.request_id.0,
            attempt: command.attempt,
        };
        let status = journal.status(key);
        let operation = match serde_json::from_value::<Operation>(command.operation.clone()) {
            Ok(operation) => operation,
            Err(e) => {
                let why = format!("this agent does not understand the operation: {e}");
                return self.end(journal, key, &status, Err(why));
            }
        };
        let _lock = match self.state.lock() {
            Ok(lock) => lock,
            Err(e) => {
                // Nothing was applied: say so without journaling, so a later delivery tries.
                return Carried {
                    outcome: Outcome::Failed {
                        reason: reason(&format!("the agent cannot lock its state: {e}")),
                    },
                    applied_now: false,
                };
            }
        };
        let resuming = match &status {
            Status::Ended {
                ending: Ending::Applied,
                ..
            } => {
                let outcome = match self.observe_for(&operation) {
                    Ok(verified) => Outcome::Succeeded { verified },
                    Err(why) => Outcome::Failed {
                        reason: reason(&why),
                    },
                };
                return Carried {
                    outcome,
                    applied_now: false,
                };
            }
            Status::Ended {
                ending: Ending::Failed(why),
                ..
            } => {
                return Carried {
                    outcome: Outcome::Failed {
                        reason: why.clone(),
                    },
                    applied_now: false,
                }
            }
            Status::Interrupted => true,
            Status::New => {
                if let Err(refusal) = self.admit(&operation, command.password.as_deref()) {
                    return self.end(journal, key, &status, Err(refusal));
                }
                if let Err(e) = journal.record(key, Step::Applying, Some(operation.to_string())) {
                    self.forget_if_never_created(&operation);
                    return Carried {
                        outcome: Outcome::Failed {
                            reason: reason(&format!("not applied: cannot write the journal: {e}")),
                        },
                        applied_now: false,
                    };
                }
                false
            }
        };
        let result = self.apply(&operation, command.password.as_deref(), resuming);
        self.end(journal, key, &status, result)
    }

    /// Checks a new request against the managed-accounts record; for `ensure_account`,
    /// records the account as Latchkey's before it is created, so that a crash in between
    /// never leaves an account of ours that we would refuse to manage.
    fn admit(&self, operation: &Operation, password: Option<&str>) -> Result<(), String> {
        let account = operation.account().as_str();
        let seen = self.backend.observe(account).map_err(|e| e.to_string())?;
        let mut managed = self.state.accounts().map_err(|e| e.to_string())?;
        if seen.present && !managed.manages(account) {
            let refusing = match operation {
                Operation::EnsureAccount { .. } => "manage it".to_owned(),
                Operation::RotatePassword { .. } => "change its password".to_owned(),
                Operation::AddToGroup { group, .. } => format!("add it to {group}"),
                Operation::RemoveFromGroup { group, .. } => format!("remove it from {group}"),
                Operation::PostSession { .. } => "end its logons".to_owned(),
                Operation::DeleteAccount { .. } => "delete it".to_owned(),
            };
            return Err(format!(
                "account {account} exists and was not created by Latchkey; refusing to {refusing}"
            ));
        }
        match operation {
            Operation::EnsureAccount { .. } if !managed.manages(account) => {
                managed
                    .accounts
                    .insert(account.to_owned(), ManagedAccount::default());
                self.state
                    .save_accounts(&managed)
                    .map_err(|e| format!("not applied: {e}"))?;
            }
            Operation::RotatePassword { .. } if password.is_none_or(str::is_empty) => {
                return Err(format!(
                    "the request to rotate the password of {account} carried no password"
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Runs the tools (unless, when resuming, the change is already on the machine), reads the
    /// machine back and keeps the records in step with it.
    fn apply(
        &self,
        operation: &Operation,
        password: Option<&str>,
        resuming: bool,
    ) -> Result<AccountObservation, String> {
        let account = operation.account().as_str();
        let password = password.unwrap_or_default();
        if matches!(operation, Operation::RotatePassword { .. }) && password.is_empty() {
            return Err(format!(
                "the request to rotate the password of {account} carried no password"
            ));
        }
        let before = self.backend.observe(account).map_err(|e| e.to_string())?;
        if !(resuming && in_effect(operation, password, &before)) {
            let ran = match operation {
                Operation::EnsureAccount { .. } => self.backend.ensure_account(account),
                Operation::RotatePassword { .. } => self
                    .backend
                    .set_password_hash(account, &os::hash_password(password)),
                Operation::AddToGroup { group, .. } => {
                    self.backend.add_to_group(account, group.as_str())
                }
                Operation::RemoveFromGroup { group, .. } => {
                    self.backend.remove_from_group(account, group.as_str())
                }
                Operation::PostSession { actions, .. } => {
                    // Logons first: a process still running could use sudo again.
                    let ended = if actions.end_logons {
                        self.backend.end_logons(account)
                    } else {
                        Ok(())
                    };
                    ended.and_then(|()| {
                        if actions.clear_sudo_credentials {
                            self.backend.clear_sudo(account)
                        } else {
                            Ok(())
                        }
                    })
                }
                Operation::DeleteAccount { end_logons, .. } => {
                    if let Some(until) =
                        offline::grant_in_force(self.state, account).map_err(|e| e.to_string())?
                    {
                        return Err(format!(
                            "account {account} has an offline login in force until {}; it is                              deleted once that ends",
                            until.format("%Y-%m-%d %H:%M:%S UTC")
                        ));
                    }
                    self.backend.delete_account(account, *end_logons)
                }
            };
            if let Err(e) = ran {
                self.forget_if_never_created(operation);
                return Err(e.to_string());
            }
        }
        let seen = self.backend.observe(account).map_err(|e| e.to_string())?;
        if !in_effect(operation, password, &seen) {
            self.forget_if_never_created(operation);
            return Err(format!(
                "after '{operation}' the machine shows {}",
                observation_for(
                    operation,
                    &seen,
                    &self.state.accounts().unwrap_or_default(),
                    account
                )
            ));
        }
        let mut managed = self.state.accounts().map_err(|e| e.to_string())?;
        match operation {
            Operation::RotatePassword { version, .. } => {
                let hash = seen.password_hash.clone().unwrap_or_default();
                managed
                    .accounts
                    .entry(account.to_owned())
                    .or_default()
                    .password = Some(SetPassword {
                    version: Some(*version),
                    hash,
                });
            }
            Operation::DeleteAccount { .. } => {
                managed.accounts.remove(account);
            }
            _ => {}
        }
        self.state
            .save_accounts(&managed)
            .map_err(|e| format!("applied, but {e}"))?;
        // The server now decides this account's admin membership: an offline grant of it no
        // longer needs taking back by the agent.
        let settled = match operation {
            Operation::AddToGroup { group, .. } | Operation::RemoveFromGroup { group, .. } => {
                Some(Some(group.as_str()))
            }
            Operation::DeleteAccount { .. } => Some(None),
            _ => None,
        };
        if let Some(group) = settled {
            if let Err(e) = offline::drop_grants(self.state, account, group) {
                tracing::warn!(account, error = %e, "cannot update the offline grants");
            }
        }
        Ok(observation_for(operation, &seen, &managed, account))
    }

    /// An `ensure_account` that failed leaves no account: it is not ours to remember.
    fn forget_if_never_created(&self, operation: &Operation) {
        let Operation::EnsureAccount { account } = operation else {
            return;
        };
        let account = account.as_str();
        if self
            .backend
            .observe(account)
            .is_ok_and(|seen| !seen.present)
        {
            if let Ok(mut managed) = self.state.accounts() {
                if managed.accounts.remove(account).is_some() {
                    let _ = self.state.save_accounts(&managed);
                }
            }
        }
    }

    /// What the machine shows about `account` now, as the server takes it.
    pub fn observe(&self, account: &str) -> Result<AccountObservation, String> {
        let seen = self.backend.observe(account).map_err(|e| e.to_string())?;
        let managed = self.state.accounts().map_err(|e| e.to_string())?;
        Ok(observation(&seen, &managed, account))
    }

    /// What the machine shows now about the account of `operation`, as its report says it.
    fn observe_for(&self, operation: &Operation) -> Result<AccountObservation, String> {
        let account = operation.account().as_str();
        let seen = self.backend.observe(account).map_err(|e| e.to_string())?;
        let managed = self.state.accounts().map_err(|e| e.to_string())?;
        Ok(observation_for(operation, &seen, &managed, account))
    }

    /// Journals how the request ended (unless it had ended before) and makes the report.
    fn end(
        &self,
        journal: &mut Journal,
        key: CommandKey,
        status: &Status,
        result: Result<AccountObservation, String>,
    ) -> Carried {
        let (step, detail, outcome) = match result {
            Ok(verified) => (Step::Applied, None, Outcome::Succeeded { verified }),
            Err(why) => {
                let why = reason(&why);
                (
                    Step::Failed,
                    Some(why.clone()),
                    Outcome::Failed { reason: why },
                )
            }
        };
        if matches!(status, Status::New | Status::Interrupted) {
            // If this cannot be written the report still goes out; a later delivery of the
            // same request then resumes from `applying` and re-observes before running any tool.
            if let Err(e) = journal.record(key, step, detail) {
                tracing::warn!(%key, error = %e, "cannot journal how the request ended");
            }
        }
        Carried {
            outcome,
            applied_now: matches!(status, Status::New | Status::Interrupted),
        }
    }
}

/// Whether the machine already shows `operation` done.
fn in_effect(operation: &Operation, password: &str, seen: &Observed) -> bool {
    let in_group = |group: &GroupName| seen.groups.iter().any(|g| g == group.as_str());
    match operation {
        Operation::EnsureAccount { .. } => seen.present,
        Operation::RotatePassword { .. } => {
            seen.present
                && seen
                    .password_hash
                    .as_deref()
                    .is_some_and(|hash| os::password_matches(password, hash))
        }
        Operation::AddToGroup { group, .. } => seen.present && in_group(group),
        Operation::RemoveFromGroup { group, .. } => !seen.present || !in_group(group),
        Operation::PostSession { actions, .. } => {
            (!actions.end_logons || seen.processes == 0)
                && (!actions.clear_sudo_credentials || !seen.sudo_cached)
        }
        Operation::DeleteAccount { .. } => !seen.present,
    }
}

/// The observation reported for `operation`: after post-session actions it also says how many
/// processes of the account are left and whether sudo still holds a credential for it.
pub fn observation_for(
    operation: &Operation,
    seen: &Observed,
    managed: &ManagedAccounts,
    account: &str,
) -> AccountObservation {
    let mut reported = observation(seen, managed, account);
    if matches!(operation, Operation::PostSession { .. }) {
        reported.processes = Some(u32::try_from(seen.processes).unwrap_or(u32::MAX));
        reported.sudo_cached = Some(seen.sudo_cached);
    }
    reported
}

/// The observation the server gets: an account counts as present only if it is one of ours;
/// its password version only if the shadow file still holds the hash the agent set for it.
pub fn observation(
    seen: &Observed,
    managed: &ManagedAccounts,
    account: &str,
) -> AccountObservation {
    let Some(record) = managed.accounts.get(account).filter(|_| seen.present) else {
        return AccountObservation::default();
    };
    AccountObservation {
        present: true,
        groups: seen
            .groups
            .iter()
            .filter_map(|g| GroupName::parse(g.as_str()).ok())
            .collect(),
        password_version: record
            .password
            .as_ref()
            .filter(|set| seen.password_hash.as_deref() == Some(set.hash.as_str()))
            .and_then(|set| set.version),
        processes: None,
        sudo_cached: None,
    }
}

/// A failure reason the server accepts: one line, trimmed, short.
pub fn reason(text: &str) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let mut short: String = one_line.chars().take(MAX_REASON_CHARS).collect();
    if short.len() < one_line.len() {
        short.push('…');
    }
    if short.is_empty() {
        short.push_str("failed without a reason");
    }
    short
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::os::memory::MemoryAccounts;
    use crate::os::OsError;

    /// The memory backend, counting the changes it was asked to make.
    struct Counting {
        inner: MemoryAccounts,
        changes: AtomicUsize,
    }

    impl Counting {
        fn new() -> Self {
            Self {
                inner: MemoryAccounts::new(&["Administrators"]),
                changes: AtomicUsize::new(0),
            }
        }
        fn changes(&self) -> usize {
            self.changes.load(Ordering::SeqCst)
        }
        fn count(&self) {
            self.changes.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl AccountBackend for Counting {
        fn ensure_account(&self, account: &str) -> Result<(), OsError> {
            self.count();
            self.inner.ensure_account(account)
        }
        fn set_password_hash(&self, account: &str, hash: &str) -> Result<(), OsError> {
            self.count();
            self.inner.set_password_hash(account, hash)
        }
        fn add_to_group(&self, account: &str, group: &str) -> Result<(), OsError> {
            self.count();
            self.inner.add_to_group(account, group)
        }
        fn remove_from_group(&self, account: &str, group: &str) -> Result<(), OsError> {
            self.count();
            self.inner.remove_from_group(account, group)
        }
        fn delete_account(&self, account: &str, end_logons: bool) -> Result<(), OsError> {
            self.count();
            self.inner.delete_account(account, end_logons)
        }
        fn end_logons(&self, account: &str) -> Result<(), OsError> {
            self.count();
            self.inner.end_logons(account)
        }
        fn clear_sudo(&self, account: &str) -> Result<(), OsError> {
            self.count();
            self.inner.clear_sudo(account)
        }
        fn observe(&self, account: &str) -> Result<Observed, OsError> {
            self.inner.observe(account)
        }
        fn group_members(&self, group: &str) -> Result<Vec<String>, OsError> {
            self.inner.group_members(group)
        }
    }

    fn command(request_id: u64, operation: serde_json::Value) -> DeliveredCommand {
        DeliveredCommand {
            request_id: latchkey_domain::ids::RequestId(request_id),
            attempt: 1,
            operation,
            password: None,
        }
    }

    fn ensure(request_id: u64, account: &str) -> DeliveredCommand {
        command(
            request_id,
            serde_json::json!({"op": "ensure_account", "account": account}),
        )
    }

    fn rotate(request_id: u64, account: &str, version: u32, password: &str) -> DeliveredCommand {
        DeliveredCommand {
            password: Some(password.into()),
            ..command(
                request_id,
                serde_json::json!({"op": "rotate_password", "account": account, "version": version}),
            )
        }
    }

    fn add(request_id: u64, account: &str) -> DeliveredCommand {
        command(
            request_id,
            serde_json::json!({"op": "add_to_group", "account": account, "group": "Administrators"}),
        )
    }

    fn verified(carried: &Carried) -> &AccountObservation {
        match &carried.outcome {
            Outcome::Succeeded { verified } => verified,
            Outcome::Failed { reason } => panic!("failed: {reason}"),
        }
    }

    fn failure(carried: &Carried) -> &str {
        match &carried.outcome {
            Outcome::Failed { reason } => reason,
            Outcome::Succeeded { verified } => panic!("succeeded: {verified}"),
        }
    }

    struct Machine {
        _dir: tempfile::TempDir,
        state: StateDir,
        backend: Counting,
    }

    fn machine() -> Machine {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        Machine {
            _dir: dir,
            state,
            backend: Counting::new(),
        }
    }

    #[test]
    fn a_grant_is_verified_step_by_step_with_the_password_version_read_back() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        let created = executor.carry_out(&mut journal, &ensure(1, "msp-nik"));
        assert!(created.applied_now);
        assert_eq!(
            verified(&created).to_string(),
            "the account present in groups [] with no password set by Latchkey"
        );
        let rotated = executor.carry_out(&mut journal, &rotate(2, "msp-nik", 1, "pw-one"));
        assert_eq!(verified(&rotated).password_version, Some(1));
        let added = executor.carry_out(&mut journal, &add(3, "msp-nik"));
        let seen = verified(&added);
        assert!(seen.groups.iter().any(|g| g.as_str() == "Administrators"));
        assert_eq!(seen.password_version, Some(1));
        let hash = m.backend.observe("msp-nik").unwrap().password_hash.unwrap();
        assert!(os::password_matches("pw-one", &hash));
    }

    #[test]
    fn a_request_seen_again_is_re_observed_not_re_applied() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        executor.carry_out(&mut journal, &ensure(1, "msp-nik"));
        executor.carry_out(&mut journal, &rotate(2, "msp-nik", 1, "pw-one"));
        let changes = m.backend.changes();
        // A restart: the journal is read again, the server delivers request 2 again.
        let mut journal = Journal::open(&m.state).unwrap();
        let again = executor.carry_out(&mut journal, &rotate(2, "msp-nik", 1, "pw-one"));
        assert!(!again.applied_now);
        assert_eq!(verified(&again).password_version, Some(1));
        assert_eq!(m.backend.changes(), changes, "no tool ran again");
    }

    #[test]
    fn an_interrupted_request_runs_no_tool_if_the_machine_already_shows_it_done() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        executor.carry_out(&mut journal, &ensure(1, "msp-nik"));
        // The agent died after the tool ran, before it journaled the ending.
        let key = CommandKey {
            request_id: 2,
            attempt: 1,
        };
        journal.record(key, Step::Applying, None).unwrap();
        m.backend
            .inner
            .add_to_group("msp-nik", "Administrators")
            .unwrap();
        let changes = m.backend.changes();
        let mut journal = Journal::open(&m.state).unwrap();
        let resumed = executor.carry_out(&mut journal, &add(2, "msp-nik"));
        assert!(verified(&resumed)
            .groups
            .iter()
            .any(|g| g.as_str() == "Administrators"));
        assert_eq!(m.backend.changes(), changes);
        // And one that died before the tool ran is finished.
        let key = CommandKey {
            request_id: 3,
            attempt: 1,
        };
        journal.record(key, Step::Applying, None).unwrap();
        let resumed = executor.carry_out(&mut journal, &rotate(3, "msp-nik", 1, "pw"));
        assert_eq!(verified(&resumed).password_version, Some(1));
        assert_eq!(m.backend.changes(), changes + 1);
        let applying = crate::journal::read(&m.state)
            .unwrap()
            .iter()
            .filter(|r| r.request_id == 3 && r.step == Step::Applying)
            .count();
        assert_eq!(applying, 1, "resuming writes no second applying line");
    }

    #[test]
    fn an_account_latchkey_did_not_create_is_never_touched() {
        let m = machine();
        m.backend.inner.ensure_account("alice").unwrap();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        let refused = executor.carry_out(&mut journal, &ensure(1, "alice"));
        assert_eq!(
            failure(&refused),
            "account alice exists and was not created by Latchkey; refusing to manage it"
        );
        let refused = executor.carry_out(&mut journal, &add(2, "alice"));
        assert_eq!(
            failure(&refused),
            "account alice exists and was not created by Latchkey; refusing to add it to Administrators"
        );
        let delete = command(
            3,
            serde_json::json!({"op": "delete_account", "account": "alice"}),
        );
        assert!(
            failure(&executor.carry_out(&mut journal, &delete)).contains("refusing to delete it")
        );
        assert_eq!(m.backend.changes(), 0);
        assert!(m.backend.observe("alice").unwrap().present);
        assert!(!m.state.accounts().unwrap().manages("alice"));
    }

    #[test]
    fn a_failure_on_the_machine_is_reported_with_its_reason_and_not_retried_for_the_same_attempt() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        executor.carry_out(&mut journal, &ensure(1, "msp-nik"));
        let wheel = command(
            2,
            serde_json::json!({"op": "add_to_group", "account": "msp-nik", "group": "wheel"}),
        );
        let failed = executor.carry_out(&mut journal, &wheel);
        assert_eq!(
            failure(&failed),
            "group wheel does not exist on this machine"
        );
        let again = executor.carry_out(&mut journal, &wheel);
        assert_eq!(
            failure(&again),
            "group wheel does not exist on this machine"
        );
        assert!(!again.applied_now);
        let unknown = command(
            3,
            serde_json::json!({"op": "format_disk", "account": "msp-nik"}),
        );
        assert!(failure(&executor.carry_out(&mut journal, &unknown))
            .starts_with("this agent does not understand the operation"));
    }

    #[test]
    fn deleting_forgets_the_account_and_a_later_password_is_no_version() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        executor.carry_out(&mut journal, &ensure(1, "nik_1"));
        executor.carry_out(&mut journal, &rotate(2, "nik_1", 1, "pw"));
        // Someone changes the password behind Latchkey's back: no version is claimed.
        m.backend
            .inner
            .set_password_hash("nik_1", &os::hash_password("other"))
            .unwrap();
        assert_eq!(executor.observe("nik_1").unwrap().password_version, None);
        let delete = command(
            3,
            serde_json::json!({"op": "delete_account", "account": "nik_1"}),
        );
        let deleted = executor.carry_out(&mut journal, &delete);
        assert!(!verified(&deleted).present);
        assert!(!m.state.accounts().unwrap().manages("nik_1"));
    }

    fn post_session(request_id: u64, account: &str) -> DeliveredCommand {
        command(
            request_id,
            serde_json::json!({"op": "post_session", "account": account,
                "actions": {"end_logons": true, "clear_sudo_credentials": true}}),
        )
    }

    fn delete(request_id: u64, account: &str, end_logons: bool) -> DeliveredCommand {
        command(
            request_id,
            serde_json::json!({"op": "delete_account", "account": account, "end_logons": end_logons}),
        )
    }

    #[test]
    fn post_session_actions_end_the_logons_and_report_none_left() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        executor.carry_out(&mut journal, &ensure(1, "msp-nik"));
        m.backend.inner.log_in("msp-nik");
        m.backend.inner.log_in("msp-nik");
        let ended = executor.carry_out(&mut journal, &post_session(2, "msp-nik"));
        let seen = verified(&ended);
        assert_eq!((seen.processes, seen.sudo_cached), (Some(0), Some(false)));
        assert_eq!(m.backend.observe("msp-nik").unwrap().processes, 0);
        // Reported again after a restart: observed again, with the counts.
        let mut journal = Journal::open(&m.state).unwrap();
        let again = executor.carry_out(&mut journal, &post_session(2, "msp-nik"));
        assert_eq!(verified(&again).processes, Some(0));
    }

    #[test]
    fn processes_that_survive_fail_the_post_session_step_with_the_reason() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        executor.carry_out(&mut journal, &ensure(1, "msp-nik"));
        m.backend.inner.log_in("msp-nik");
        m.backend.inner.make_unkillable("msp-nik");
        let failed = executor.carry_out(&mut journal, &post_session(2, "msp-nik"));
        assert!(
            failure(&failed).starts_with("account msp-nik still has 1 process(es)"),
            "{}",
            failure(&failed)
        );
    }

    #[test]
    fn a_busy_account_is_deleted_only_when_its_logons_may_be_ended() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        executor.carry_out(&mut journal, &ensure(1, "nik_1"));
        m.backend.inner.log_in("nik_1");
        let refused = executor.carry_out(&mut journal, &delete(2, "nik_1", false));
        assert!(
            failure(&refused).contains("still has 1 process(es)")
                && failure(&refused).contains("the JIT policy does not end its logons"),
            "{}",
            failure(&refused)
        );
        assert!(m.backend.observe("nik_1").unwrap().present);
        let deleted = executor.carry_out(&mut journal, &delete(3, "nik_1", true));
        assert!(!verified(&deleted).present);
    }

    #[test]
    fn an_account_is_not_deleted_while_its_offline_login_is_in_force() {
        let m = machine();
        let executor = Executor::new(&m.backend, &m.state);
        let mut journal = Journal::open(&m.state).unwrap();
        executor.carry_out(&mut journal, &ensure(1, "msp-1234"));
        let mut offline = offline::OfflineState::default();
        offline.grants.push(offline::Grant {
            login_id: uuid::Uuid::from_u128(1),
            account: "msp-1234".into(),
            group: "Administrators".into(),
            until: chrono::DateTime::from_timestamp(4_000_000_000, 0).unwrap(),
            already_member: false,
            hash: "!".into(),
        });
        m.state
            .write_json(crate::state::OFFLINE_STATE, &offline)
            .unwrap();
        let refused = executor.carry_out(&mut journal, &delete(2, "msp-1234", true));
        assert!(
            failure(&refused).contains("has an offline login in force until 2096-10-02"),
            "{}",
            failure(&refused)
        );
        assert!(m.backend.observe("msp-1234").unwrap().present);
    }

    #[test]
    fn reasons_are_one_short_line() {
        assert_eq!(
            reason("useradd failed\n  line two\t"),
            "useradd failed line two"
        );
        let long = reason(&"x".repeat(500));
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 1);
        assert_eq!(reason(" \n"), "failed without a reason");
    }
}
