//! The computer a simulated agent manages: local accounts with their groups and the password
//! (and its version) last set. [`Machine::report`] applies one request of the agent feed
//! (`GET /v1/agent/commands`) as `latchkey-agent` does and gives the result to send to
//! `POST /v1/agent/results`, with the account as the machine now shows it.
//!
//! No transport here: the tests drive it with their own HTTP clients, and the benchmarks
//! include this file on its own (`#[path]`, from `benches/support`), so it uses nothing else
//! of `support`.

#![allow(dead_code)] // each test file and the benchmarks use part of it

use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A local account on the machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Account {
    pub groups: BTreeSet<String>,
    /// The password version and the password last set.
    pub password: Option<(u32, String)>,
}

#[derive(Debug, Default)]
pub struct Machine {
    pub accounts: BTreeMap<String, Account>,
    /// Every operation applied (a failed one too), as `op account`.
    pub log: Vec<String>,
    /// What the server asked that no consistent server would ask: an operation the machine
    /// cannot do (on an account that does not exist, unknown, incomplete), a rotation without
    /// a password, a request delivered again with another password.
    pub problems: Vec<String>,
    /// The password each rotation request was first delivered with.
    delivered: BTreeMap<u64, String>,
}

impl Machine {
    /// Applies one request of the feed (`{"request_id", "operation", "password"}`); returns
    /// the result to report: `succeeded` with what the machine now shows of the account, or
    /// `failed` with the reason (also kept in [`Machine::problems`]).
    pub fn report(&mut self, command: &Value) -> Value {
        let id = &command["request_id"];
        match self.apply(command) {
            Ok(verified) => json!({"request_id": id, "outcome": "succeeded", "verified": verified}),
            Err(reason) => json!({"request_id": id, "outcome": "failed", "reason": reason}),
        }
    }

    /// [`Machine::report`], panicking at a request no consistent server would send (see
    /// [`Machine::problems`]).
    pub fn answer(&mut self, command: &Value) -> Value {
        let report = self.report(command);
        assert!(self.problems.is_empty(), "{:#?}", self.problems);
        report
    }

    /// Applies one request of the feed; returns what the machine then shows of the account
    /// (the report's `verified`), or why it could not be done.
    pub fn apply(&mut self, command: &Value) -> Result<Value, String> {
        let id = &command["request_id"];
        let op = &command["operation"];
        let kind = op["op"].as_str().unwrap_or_default().to_owned();
        let account = op["account"].as_str().unwrap_or_default().to_owned();
        if kind == "rotate_password" {
            self.check_password(id, &account, command["password"].as_str());
        }
        let done = self.change(&kind, &account, op, command["password"].as_str());
        self.log.push(format!("{kind} {account}"));
        match done {
            // Nobody logs in on this machine: the post-session actions find nothing left.
            Ok(()) if kind == "post_session" => {
                let mut seen = self.observation(&account);
                seen["processes"] = json!(0);
                seen["sudo_cached"] = json!(false);
                Ok(seen)
            }
            Ok(()) => Ok(self.observation(&account)),
            Err(why) => {
                self.problems
                    .push(format!("request {id} ({kind} {account}): {why}"));
                Err(why)
            }
        }
    }

    /// Records a rotation without a password, or delivered again with another one.
    fn check_password(&mut self, id: &Value, account: &str, password: Option<&str>) {
        let password = password.unwrap_or_default();
        if password.is_empty() {
            self.problems.push(format!("request {id}: no password"));
        }
        let Some(number) = id.as_u64() else { return };
        match self.delivered.get(&number) {
            Some(first) if first != password => self.problems.push(format!(
                "request {id} (rotate_password {account}) came again with another password"
            )),
            Some(_) => {}
            None => {
                self.delivered.insert(number, password.to_owned());
            }
        }
    }

    fn change(
        &mut self,
        kind: &str,
        account: &str,
        op: &Value,
        password: Option<&str>,
    ) -> Result<(), String> {
        let missing = || format!("account {account} does not exist");
        match kind {
            "ensure_account" => {
                self.accounts.entry(account.to_owned()).or_default();
            }
            "rotate_password" => {
                let version = op["version"].as_u64().ok_or("no password version")? as u32;
                let password = password.unwrap_or_default().to_owned();
                self.accounts.get_mut(account).ok_or_else(missing)?.password =
                    Some((version, password));
            }
            "add_to_group" => {
                let group = op["group"].as_str().ok_or("no group")?;
                let groups = &mut self.accounts.get_mut(account).ok_or_else(missing)?.groups;
                groups.insert(group.to_owned());
            }
            "remove_from_group" => {
                let group = op["group"].as_str().ok_or("no group")?;
                // Gone already is out of the group too.
                if let Some(a) = self.accounts.get_mut(account) {
                    a.groups.remove(group);
                }
            }
            "delete_account" => {
                self.accounts.remove(account);
            }
            "post_session" => {}
            other => return Err(format!("unknown operation {other}")),
        }
        Ok(())
    }

    /// The account as the agent reads it back (`verified` in a report).
    pub fn observation(&self, account: &str) -> Value {
        match self.accounts.get(account) {
            Some(a) => json!({
                "present": true,
                "groups": a.groups,
                "password_version": a.password.as_ref().map(|p| p.0),
            }),
            None => json!({"present": false, "groups": [], "password_version": null}),
        }
    }

    pub fn has(&self, account: &str) -> bool {
        self.accounts.contains_key(account)
    }

    /// The password last set on `account`, while it exists.
    pub fn password(&self, account: &str) -> Option<&str> {
        self.accounts
            .get(account)?
            .password
            .as_ref()
            .map(|p| p.1.as_str())
    }

    pub fn groups(&self, account: &str) -> Option<&BTreeSet<String>> {
        self.accounts.get(account).map(|a| &a.groups)
    }

    pub fn in_group(&self, account: &str, group: &str) -> bool {
        self.groups(account).is_some_and(|g| g.contains(group))
    }

    /// The accounts in `group`.
    pub fn members(&self, group: &str) -> BTreeSet<String> {
        self.accounts
            .iter()
            .filter(|(_, a)| a.groups.contains(group))
            .map(|(name, _)| name.clone())
            .collect()
    }
}
