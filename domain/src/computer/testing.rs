//! Helpers for the computer's given/when/then tests (and the session's, which need an
//! enrolled computer): a stream built up command by command, grants, and what the agent saw.

use super::*;
use crate::ids::TechnicianId;
use crate::policy::{CheckInAction, PostSessionActions};
use crate::testing::{admin, computer_id, given, nik_id, t, tenant_id};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

pub(crate) fn enrolled(hostname: &str) -> ComputerEvent {
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

pub(crate) fn acct(name: &str) -> AccountName {
    AccountName::parse(name).unwrap()
}

pub(crate) fn admins() -> GroupName {
    GroupName::parse("Administrators").unwrap()
}

pub(crate) fn sid(n: u128) -> SessionId {
    SessionId(Uuid::from_u128(1000 + n))
}

pub(crate) fn named_grant(session: u128) -> AccessGrant {
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
        post_session: PostSessionActions::NONE,
        create_account: true,
    }
}

pub(crate) fn shared_grant(session: u128, technician_id: TechnicianId) -> AccessGrant {
    AccessGrant {
        technician_id,
        account: acct("msp-1234"),
        owner: AccountOwner::Shared,
        ..named_grant(session)
    }
}

pub(crate) fn seen(present: bool, groups: &[&str], version: Option<u32>) -> AccountObservation {
    AccountObservation {
        present,
        groups: groups
            .iter()
            .map(|g| GroupName::parse(*g).unwrap())
            .collect(),
        password_version: version,
        processes: None,
        sudo_cached: None,
    }
}

/// What the agent reports after carrying out post-session actions: no process left, no
/// cached sudo credential.
pub(crate) fn seen_ended(
    present: bool,
    groups: &[&str],
    version: Option<u32>,
) -> AccountObservation {
    AccountObservation {
        processes: Some(0),
        sudo_cached: Some(false),
        ..seen(present, groups, version)
    }
}

/// A computer's stream as a test builds it up: each command goes through the harness.
pub(crate) struct Timeline(pub(crate) Vec<ComputerEvent>);

impl Timeline {
    pub(crate) fn enrolled() -> Self {
        Timeline(vec![enrolled("W11-L-PASSWORD")])
    }
    pub(crate) fn run(&mut self, command: ComputerCommand) -> Vec<ComputerEvent> {
        let events = given::<Computer>(self.0.clone()).when(command).events();
        self.0.extend(events.clone());
        events
    }
    pub(crate) fn state(&self) -> Computer {
        Computer::replay(&self.0)
    }
    pub(crate) fn grant(&mut self, grant: AccessGrant) -> Vec<ComputerEvent> {
        self.run(ComputerCommand::GrantAccess { grant, at: t(1) })
    }
    pub(crate) fn succeed(
        &mut self,
        request: u64,
        verified: AccountObservation,
    ) -> Vec<ComputerEvent> {
        self.run(ComputerCommand::ReportSucceeded {
            request_id: RequestId(request),
            verified,
            at: t(2),
        })
    }
    pub(crate) fn fail(&mut self, request: u64, why: &str) -> Vec<ComputerEvent> {
        self.run(ComputerCommand::ReportFailed {
            request_id: RequestId(request),
            reason: FailureReason::parse(why).unwrap(),
            at: t(2),
        })
    }
    pub(crate) fn release(&mut self, session: u128) -> Vec<ComputerEvent> {
        self.run(ComputerCommand::ReleaseAccess {
            session_id: sid(session),
            at: t(30),
        })
    }
    /// Grants a session whose account already exists with password `version - 1`, with
    /// the agent confirming each step; returns the next free request number.
    pub(crate) fn grant_fully(
        &mut self,
        grant: AccessGrant,
        first_request: u64,
        version: u32,
    ) -> u64 {
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

pub(crate) fn requested(events: &[ComputerEvent]) -> Vec<(u64, Purpose, Operation)> {
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

pub(crate) fn rotate(account: &str, version: u32) -> Operation {
    Operation::RotatePassword {
        account: acct(account),
        version,
    }
}
pub(crate) fn add(account: &str) -> Operation {
    Operation::AddToGroup {
        account: acct(account),
        group: admins(),
    }
}
pub(crate) fn remove(account: &str) -> Operation {
    Operation::RemoveFromGroup {
        account: acct(account),
        group: admins(),
    }
}
pub(crate) fn delete(account: &str) -> Operation {
    Operation::DeleteAccount {
        account: acct(account),
        end_logons: false,
    }
}
pub(crate) fn post_session(account: &str) -> Operation {
    Operation::PostSession {
        account: acct(account),
        actions: PostSessionActions::ALL,
    }
}

/// Drives a computer through `sessions` full check-out/check-in cycles with an agent that
/// does everything asked; `grant` makes session n's grant. Folds the state directly (not
/// through the test harness, which replays the whole stream per command).
pub(crate) fn cycle_sessions(
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
                    Operation::PostSession { .. } => {}
                }
                let verified = match machine.get(&name) {
                    Some((groups, version)) => {
                        let groups: Vec<&str> = groups.iter().map(String::as_str).collect();
                        seen_ended(true, &groups, *version)
                    }
                    None => seen_ended(false, &[], None),
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
