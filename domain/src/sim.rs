//! A whole Latchkey world in memory for property tests: the four aggregates, the process
//! managers run to quiescence after every command, and a simulated agent per computer that
//! applies provisioning requests in stream order to a model of the machine's accounts and
//! reports what it verified (or fails, when the test says so). Pure and deterministic.

use crate::computer::{
    AccountObservation, Computer, ComputerCommand, ComputerEvent, Operation, OsKind, Purpose,
};
use crate::ids::{AgentKeyId, ComputerId, RequestId, SessionId, TechnicianId, TenantId};
use crate::names::{
    AccountName, Email, EphemeralDigits, FailureReason, GroupName, Hostname, SharedAccountDigits,
    TenantName, Username,
};
use crate::policy::{CheckInAction, JitPolicy, JitPolicyFields, LoginMode};
use crate::process::{react, Command, Lookup};
use crate::session::{CheckInReason, CheckOut, Session, SessionCommand, SessionStatus};
use crate::technician::{Technician, TechnicianCommand};
use crate::tenant::{Tenant, TenantCommand};
use crate::testing::{admin, check_contract, t};
use crate::{Actor, Aggregate, AnyEvent, DomainError, Event, Timestamp};
use std::collections::{BTreeMap, BTreeSet};
use uuid::Uuid;

#[derive(Debug, Default, Clone)]
struct MachineAccount {
    groups: BTreeSet<GroupName>,
    password_version: Option<u32>,
}

/// One request as the agent sees it in its computer's stream.
#[derive(Debug, Clone)]
struct Issued {
    request_id: RequestId,
    session_id: Option<SessionId>,
    purpose: Purpose,
    operation: Operation,
}

#[derive(Default)]
struct World {
    tenant: Tenant,
    technicians: BTreeMap<TechnicianId, Technician>,
    computers: BTreeMap<ComputerId, Computer>,
    sessions: BTreeMap<SessionId, Session>,
    log: Vec<AnyEvent>,
    handled: usize,
    issued: BTreeMap<ComputerId, Vec<Issued>>,
    applied: BTreeMap<ComputerId, usize>,
    machines: BTreeMap<ComputerId, BTreeMap<AccountName, MachineAccount>>,
    minute: u32,
    counter: u128,
}

const TENANT: TenantId = TenantId(Uuid::from_u128(1));

fn tech_id(i: usize) -> TechnicianId {
    TechnicianId(Uuid::from_u128(10 + i as u128))
}

fn computer_id(i: usize) -> ComputerId {
    ComputerId(Uuid::from_u128(100 + i as u128))
}

impl World {
    fn now(&self) -> Timestamp {
        t(self.minute)
    }

    fn record<E: Event>(&mut self, events: &[E], wrap: impl Fn(E) -> AnyEvent) {
        for event in events {
            check_contract(event);
            let any = wrap(event.clone());
            if let AnyEvent::Computer(ComputerEvent::ProvisioningRequested(r)) = &any {
                self.issued.entry(r.computer_id).or_default().push(Issued {
                    request_id: r.request_id,
                    session_id: r.session_id,
                    purpose: r.purpose,
                    operation: r.operation.clone(),
                });
            }
            if let AnyEvent::Computer(ComputerEvent::ProvisioningRetried(r)) = &any {
                let original = self.issued[&r.computer_id]
                    .iter()
                    .find(|i| i.request_id == r.request_id)
                    .cloned()
                    .expect("a retried request was issued before");
                self.issued.entry(r.computer_id).or_default().push(original);
            }
            self.log.push(any);
        }
    }

    fn tenant(&mut self, command: TenantCommand) -> Result<(), DomainError> {
        let events = Tenant::decide(&self.tenant, command)?;
        self.tenant = events.iter().fold(self.tenant.clone(), Tenant::evolve);
        self.record(&events, AnyEvent::Tenant);
        self.settle();
        Ok(())
    }

    fn technician(
        &mut self,
        id: TechnicianId,
        command: TechnicianCommand,
    ) -> Result<(), DomainError> {
        self.technician_quiet(id, command)?;
        self.settle();
        Ok(())
    }

    fn technician_quiet(
        &mut self,
        id: TechnicianId,
        command: TechnicianCommand,
    ) -> Result<(), DomainError> {
        let state = self.technicians.get(&id).cloned().unwrap_or_default();
        let events = Technician::decide(&state, command)?;
        self.technicians
            .insert(id, events.iter().fold(state, Technician::evolve));
        self.record(&events, AnyEvent::Technician);
        Ok(())
    }

    fn computer(&mut self, id: ComputerId, command: ComputerCommand) -> Result<(), DomainError> {
        self.computer_quiet(id, command)?;
        self.settle();
        Ok(())
    }

    fn computer_quiet(
        &mut self,
        id: ComputerId,
        command: ComputerCommand,
    ) -> Result<(), DomainError> {
        let state = self.computers.get(&id).cloned().unwrap_or_default();
        let events = Computer::decide(&state, command)?;
        self.computers
            .insert(id, events.iter().fold(state, Computer::evolve));
        self.record(&events, AnyEvent::Computer);
        Ok(())
    }

    fn session(&mut self, id: SessionId, command: SessionCommand) -> Result<(), DomainError> {
        self.session_quiet(id, command)?;
        self.settle();
        Ok(())
    }

    fn session_quiet(&mut self, id: SessionId, command: SessionCommand) -> Result<(), DomainError> {
        let state = self.sessions.get(&id).cloned().unwrap_or_default();
        let events = Session::decide(&state, command)?;
        self.sessions
            .insert(id, events.iter().fold(state, Session::evolve));
        self.record(&events, AnyEvent::Session);
        Ok(())
    }

    /// Runs the process managers over every event not yet handled. Their commands must
    /// never be refused: they are idempotent reactions to facts.
    fn settle(&mut self) {
        while self.handled < self.log.len() {
            let event = self.log[self.handled].clone();
            self.handled += 1;
            let Ok(commands) = react(&event, self.now(), &*self);
            for command in commands {
                let result = match command {
                    Command::Computer {
                        computer_id,
                        command,
                    } => self.computer_quiet(computer_id, command),
                    Command::Session {
                        session_id,
                        command,
                    } => self.session_quiet(session_id, command),
                    Command::Technician {
                        technician_id,
                        command,
                    } => self.technician_quiet(technician_id, command),
                };
                if let Err(e) = result {
                    panic!("a process manager's command after {event:?} was refused: {e}");
                }
            }
        }
    }

    fn setup(mode: LoginMode) -> Self {
        let mut w = World::default();
        w.tenant(TenantCommand::Register {
            tenant_id: TENANT,
            name: TenantName::parse("customer-1").unwrap(),
            login_mode: mode,
            policy: JitPolicy::default(),
            shared_account_digits: SharedAccountDigits::parse("2356").unwrap(),
            by: admin(),
            at: t(0),
        })
        .unwrap();
        for (i, name) in ["nik", "ann"].into_iter().enumerate() {
            let id = tech_id(i);
            w.technician(
                id,
                TechnicianCommand::Register {
                    technician_id: id,
                    username: Username::parse(name).unwrap(),
                    email: Email::parse(format!("{name}@nikpot.com")).unwrap(),
                    by: admin(),
                    at: t(0),
                },
            )
            .unwrap();
            w.technician(
                id,
                TechnicianCommand::JoinTenant {
                    tenant_id: TENANT,
                    by: admin(),
                    at: t(0),
                },
            )
            .unwrap();
        }
        for i in 0..2 {
            let id = computer_id(i);
            w.computer(
                id,
                ComputerCommand::Enroll {
                    computer_id: id,
                    tenant_id: TENANT,
                    hostname: Hostname::parse(format!("W11-{i}")).unwrap(),
                    os: OsKind::Windows,
                    agent_key_id: AgentKeyId(Uuid::from_u128(500 + i as u128)),
                    admin_group: None,
                    by: admin(),
                    at: t(0),
                },
            )
            .unwrap();
            w.machines.insert(id, BTreeMap::new());
        }
        w
    }

    fn open_sessions(&self) -> Vec<SessionId> {
        self.sessions
            .iter()
            .filter(|(_, s)| s.state().is_some_and(|s| s.is_open()))
            .map(|(id, _)| *id)
            .collect()
    }

    fn check_out(&mut self, tech: usize, computer: usize) {
        self.counter += 1;
        let session_id = SessionId(Uuid::from_u128(10_000 + self.counter));
        let Some(technician) = self.technicians[&tech_id(tech)].state().cloned() else {
            return;
        };
        let command = CheckOut {
            session_id,
            tenant: self.tenant.state().unwrap().clone(),
            technician,
            computer: self.computers[&computer_id(computer)].clone(),
            reason: None,
            ticket: None,
            duration: None,
            ephemeral_digits: EphemeralDigits::parse(format!("{:012}", self.counter)).unwrap(),
            by: admin(),
            at: self.now(),
        };
        match self.session(session_id, SessionCommand::CheckOut(Box::new(command))) {
            Ok(()) => {}
            // What the other actions lead to (a technician offboarded or gone from the
            // tenant, a computer decommissioned) refuses a check-out: rules tested elsewhere,
            // here they simply mean no session. Any other refusal is a finding.
            Err(
                DomainError::TechnicianOffboarded
                | DomainError::TechnicianNotInTenant { .. }
                | DomainError::ComputerDecommissioned,
            ) => {}
            Err(e) => panic!("technician {tech} could not check out computer {computer}: {e}"),
        }
    }

    fn check_in(&mut self, pick: usize, reason: CheckInReason) {
        let open = self.open_sessions();
        if open.is_empty() {
            return;
        }
        self.check_in_session(open[pick % open.len()], reason);
    }

    fn check_in_session(&mut self, id: SessionId, reason: CheckInReason) {
        if reason == CheckInReason::Expired {
            let expires = self.sessions[&id].state().unwrap().expires_at;
            while self.now() < expires {
                self.minute += 1;
            }
        }
        self.session(
            id,
            SessionCommand::CheckIn {
                reason,
                by: Actor::System,
                at: self.now(),
            },
        )
        .expect("an open session can be checked in");
    }

    /// The computer, account and admin group of an open session's access.
    fn access_of(&self, session: SessionId) -> (ComputerId, AccountName, GroupName) {
        let state = self.sessions[&session]
            .state()
            .expect("a checked-out session");
        let grant = &self.computers[&state.computer_id].grants[&session];
        (
            state.computer_id,
            grant.account.clone(),
            grant.admin_group.clone(),
        )
    }

    /// Every open session's account is in its admin group on its machine.
    fn every_open_session_has_its_membership(&self) -> bool {
        self.open_sessions().into_iter().all(|id| {
            let (computer, account, group) = self.access_of(id);
            self.machines[&computer]
                .get(&account)
                .is_some_and(|a| a.groups.contains(&group))
        })
    }

    /// The agent of `computer` takes its next request; returns false if it had none.
    fn agent_step(&mut self, computer: usize, fail: bool) -> bool {
        let id = computer_id(computer);
        let cursor = self.applied.get(&id).copied().unwrap_or(0);
        let Some(request) = self.issued.get(&id).and_then(|r| r.get(cursor)).cloned() else {
            return false;
        };
        self.applied.insert(id, cursor + 1);
        let command = if fail {
            ComputerCommand::ReportFailed {
                request_id: request.request_id,
                reason: FailureReason::parse("simulated failure").unwrap(),
                at: self.now(),
            }
        } else {
            let verified = self.apply(id, &request);
            ComputerCommand::ReportSucceeded {
                request_id: request.request_id,
                verified,
                at: self.now(),
            }
        };
        self.computer(id, command)
            .expect("agent reports are accepted");
        true
    }

    /// Applies a request to the machine model, checking the rotation-before-access rule.
    fn apply(&mut self, computer: ComputerId, request: &Issued) -> AccountObservation {
        if let (Operation::AddToGroup { .. }, Some(session)) =
            (&request.operation, request.session_id)
        {
            let rotated = self.issued[&computer]
                .iter()
                .find_map(|i| match &i.operation {
                    Operation::RotatePassword { version, .. }
                        if i.session_id == Some(session) && i.purpose == Purpose::Grant =>
                    {
                        Some(*version)
                    }
                    _ => None,
                });
            let current = self.machines[&computer]
                .get(request.operation.account())
                .and_then(|a| a.password_version);
            assert!(
                rotated.is_some() && current >= rotated,
                "{} joins the admin group before its password was rotated for {session}",
                request.operation.account()
            );
        }
        let machine = self.machines.get_mut(&computer).unwrap();
        let name = request.operation.account().clone();
        match &request.operation {
            Operation::EnsureAccount { .. } => {
                machine.entry(name.clone()).or_default();
            }
            Operation::RotatePassword { version, .. } => {
                if let Some(a) = machine.get_mut(&name) {
                    a.password_version = Some(*version);
                }
            }
            Operation::AddToGroup { group, .. } => {
                if let Some(a) = machine.get_mut(&name) {
                    a.groups.insert(group.clone());
                }
            }
            Operation::RemoveFromGroup { group, .. } => {
                if let Some(a) = machine.get_mut(&name) {
                    a.groups.remove(group);
                }
            }
            Operation::DeleteAccount { .. } => {
                machine.remove(&name);
            }
            Operation::PostSession { .. } => {}
        }
        // This machine has no logons: post-session actions always find none left.
        let ended = matches!(request.operation, Operation::PostSession { .. });
        let (processes, sudo_cached) = if ended {
            (Some(0), Some(false))
        } else {
            (None, None)
        };
        match machine.get(&name) {
            Some(a) => AccountObservation {
                present: true,
                groups: a.groups.clone(),
                password_version: a.password_version,
                processes,
                sudo_cached,
            },
            None => AccountObservation {
                processes,
                sudo_cached,
                ..AccountObservation::default()
            },
        }
    }

    fn retry_failed(&mut self, computer: usize) {
        let id = computer_id(computer);
        let failed: Vec<(RequestId, Purpose)> = self.computers[&id]
            .failed_requests()
            .map(|r| (r.request_id, r.purpose))
            .collect();
        for (request_id, purpose) in failed {
            if purpose != Purpose::Grant {
                self.computer(
                    id,
                    ComputerCommand::RetryRequest {
                        request_id,
                        at: self.now(),
                    },
                )
                .expect("a failed revocation can be retried");
            }
        }
    }

    /// Every session checked in, every agent caught up without failures, every failed
    /// revocation retried until done.
    fn drain(&mut self) {
        for id in self.open_sessions() {
            self.session(
                id,
                SessionCommand::CheckIn {
                    reason: CheckInReason::Manual,
                    by: admin(),
                    at: self.now(),
                },
            )
            .unwrap();
        }
        self.catch_up();
    }

    /// Every agent caught up without failures, every failed revocation retried until done.
    fn catch_up(&mut self) {
        for _round in 0..100 {
            let mut progress = false;
            for c in 0..2 {
                while self.agent_step(c, false) {
                    progress = true;
                }
                let before = self.log.len();
                self.retry_failed(c);
                progress |= self.log.len() > before;
            }
            if !progress {
                return;
            }
        }
        panic!("the world did not settle");
    }
}

impl Lookup for World {
    type Error = std::convert::Infallible;

    fn computers_of_tenant(&self, tenant: TenantId) -> Result<Vec<ComputerId>, Self::Error> {
        Ok(self
            .computers
            .iter()
            .filter(|(_, c)| c.profile().is_some_and(|p| p.tenant_id == tenant))
            .map(|(id, _)| *id)
            .collect())
    }

    fn open_sessions_of_technician(
        &self,
        technician: TechnicianId,
        tenant: Option<TenantId>,
    ) -> Result<Vec<SessionId>, Self::Error> {
        Ok(self
            .sessions
            .iter()
            .filter_map(|(id, s)| s.state().map(|s| (id, s)))
            .filter(|(_, s)| s.is_open() && s.technician_id == technician)
            .filter(|(_, s)| tenant.is_none_or(|t| s.tenant_id == t))
            .map(|(id, _)| *id)
            .collect())
    }

    fn open_sessions_on_computer(
        &self,
        computer: ComputerId,
    ) -> Result<Vec<SessionId>, Self::Error> {
        Ok(self
            .sessions
            .iter()
            .filter_map(|(id, s)| s.state().map(|s| (id, s)))
            .filter(|(_, s)| s.is_open() && s.computer_id == computer)
            .map(|(id, _)| *id)
            .collect())
    }
}

#[derive(Debug, Clone)]
enum Action {
    CheckOut {
        tech: usize,
        computer: usize,
    },
    CheckIn {
        pick: usize,
    },
    Expire {
        pick: usize,
    },
    Revoke {
        pick: usize,
    },
    ChangeMode(LoginMode),
    ChangePolicy {
        delete: bool,
        reuse: bool,
        rotate: bool,
        sudo: bool,
    },
    Override {
        computer: usize,
        sudo: bool,
        delete: bool,
    },
    Offboard {
        tech: usize,
    },
    LeaveTenant {
        tech: usize,
    },
    Decommission {
        computer: usize,
    },
    Agent {
        computer: usize,
        fail: bool,
    },
    Retry {
        computer: usize,
    },
}

fn policy(delete: bool, reuse: bool, rotate: bool, sudo: bool) -> JitPolicy {
    let group = if sudo { "sudo" } else { "Administrators" };
    let fields = JitPolicyFields {
        on_check_in: if delete {
            CheckInAction::DeleteAccount
        } else {
            CheckInAction::RemoveFromGroup
        },
        reuse_existing_account: reuse && !delete,
        rotate_on_check_in: rotate,
        ..JitPolicy::default_for(Some(GroupName::parse(group).unwrap()))
            .fields()
            .clone()
    };
    JitPolicy::new(fields).unwrap()
}

impl World {
    fn act(&mut self, action: Action) {
        let at = self.now();
        match action {
            Action::CheckOut { tech, computer } => self.check_out(tech, computer),
            Action::CheckIn { pick } => self.check_in(pick, CheckInReason::Manual),
            Action::Expire { pick } => self.check_in(pick, CheckInReason::Expired),
            Action::Revoke { pick } => self.check_in(pick, CheckInReason::Revoked),
            Action::ChangeMode(mode) => self
                .tenant(TenantCommand::ChangeLoginMode {
                    login_mode: mode,
                    shared_account_digits: SharedAccountDigits::parse("4565").unwrap(),
                    by: admin(),
                    at,
                })
                .unwrap(),
            Action::ChangePolicy {
                delete,
                reuse,
                rotate,
                sudo,
            } => self
                .tenant(TenantCommand::ChangeJitPolicy {
                    policy: policy(delete, reuse, rotate, sudo),
                    by: admin(),
                    at,
                })
                .unwrap(),
            Action::Override {
                computer,
                sudo,
                delete,
            } => {
                let id = computer_id(computer);
                let command = ComputerCommand::OverrideJitPolicy {
                    policy: sudo.then(|| policy(delete, false, true, true)),
                    by: admin(),
                    at,
                };
                match self.computer(id, command) {
                    Ok(()) => {}
                    Err(DomainError::ComputerDecommissioned)
                        if self.computers[&id].is_decommissioned() => {}
                    Err(e) => panic!("the policy override of {id} was refused: {e}"),
                }
            }
            Action::Offboard { tech } => self
                .technician(
                    tech_id(tech),
                    TechnicianCommand::Offboard { by: admin(), at },
                )
                .unwrap(),
            Action::LeaveTenant { tech } => {
                let id = tech_id(tech);
                let command = TechnicianCommand::LeaveTenant {
                    tenant_id: TENANT,
                    by: admin(),
                    at,
                };
                match self.technician(id, command) {
                    Ok(()) => {}
                    Err(DomainError::TechnicianOffboarded)
                        if self.technicians[&id].state().is_some_and(|t| t.offboarded) => {}
                    Err(e) => panic!("technician {tech} could not leave the tenant: {e}"),
                }
            }
            Action::Decommission { computer } => self
                .computer(
                    computer_id(computer),
                    ComputerCommand::Decommission { by: admin(), at },
                )
                .unwrap(),
            Action::Agent { computer, fail } => {
                self.agent_step(computer, fail);
            }
            Action::Retry { computer } => self.retry_failed(computer),
        }
        self.minute += 1;
    }
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    fn mode() -> impl Strategy<Value = LoginMode> {
        prop_oneof![
            Just(LoginMode::Named),
            Just(LoginMode::Shared),
            Just(LoginMode::Ephemeral)
        ]
    }

    /// Any action; an agent's step fails with probability `failure`.
    fn action(failure: f64) -> impl Strategy<Value = Action> {
        prop_oneof![
            6 => (0..2usize, 0..2usize).prop_map(|(tech, computer)| Action::CheckOut { tech, computer }),
            3 => any::<usize>().prop_map(|pick| Action::CheckIn { pick }),
            1 => any::<usize>().prop_map(|pick| Action::Expire { pick }),
            1 => any::<usize>().prop_map(|pick| Action::Revoke { pick }),
            1 => mode().prop_map(Action::ChangeMode),
            1 => (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>())
                .prop_map(|(delete, reuse, rotate, sudo)| Action::ChangePolicy { delete, reuse, rotate, sudo }),
            1 => (0..2usize, any::<bool>(), any::<bool>())
                .prop_map(|(computer, sudo, delete)| Action::Override { computer, sudo, delete }),
            1 => (0..2usize).prop_map(|tech| Action::Offboard { tech }),
            1 => (0..2usize).prop_map(|tech| Action::LeaveTenant { tech }),
            1 => (0..2usize).prop_map(|computer| Action::Decommission { computer }),
            12 => (0..2usize, prop::bool::weighted(failure)).prop_map(|(computer, fail)| Action::Agent { computer, fail }),
            2 => (0..2usize).prop_map(|computer| Action::Retry { computer }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// After every session is checked in and every agent result is in, no account is in
        /// an admin group on any machine, nothing is left pending, and only accounts the
        /// current settings still want exist.
        #[test]
        fn no_admin_membership_outlives_its_sessions(start in mode(), actions in prop::collection::vec(action(0.2), 1..80)) {
            let mut world = World::setup(start);
            for action in actions {
                world.act(action);
            }
            world.drain();
            let tenant = world.tenant.state().unwrap().clone();
            for (id, machine) in &world.machines {
                let computer = &world.computers[id];
                for (name, account) in machine {
                    prop_assert!(account.groups.is_empty(),
                        "{name} on {id} is still in {:?} with no session", account.groups);
                    let owner = computer.accounts[name].owner;
                    prop_assert!(!computer.is_decommissioned(), "{name} left on decommissioned {id}");
                    prop_assert_eq!(owner.login_mode(), tenant.login_mode,
                        "{} of an old login mode left on {}", name, id);
                    if let Some(tech) = owner.technician() {
                        let state = world.technicians[&tech].state().unwrap();
                        prop_assert!(state.may_work_in(TENANT).is_ok(),
                            "{name} of a removed technician left on {id}");
                    }
                }
                prop_assert_eq!(computer.open_requests.len(), 0, "requests left open on {}", id);
                prop_assert_eq!(computer.open_sessions().count(), 0);
            }
        }

        /// Liveness, which the property above does not check (a Latchkey that never grants
        /// access would pass it): on machines whose agents never fail, every session checked
        /// out is active once the agents have caught up (none failed, none stuck), and each
        /// check-in then takes its account out of its admin group, unless another open
        /// session on the computer holds that group through the same account, and takes no
        /// other session's access.
        #[test]
        fn on_healthy_machines_every_check_out_becomes_active_and_every_check_in_ends_its_membership(
            start in mode(),
            actions in prop::collection::vec(action(0.0), 1..80),
        ) {
            let mut world = World::setup(start);
            for action in actions {
                world.act(action);
            }
            world.catch_up();
            for (id, session) in &world.sessions {
                let status = &session.state().unwrap().status;
                prop_assert!(
                    matches!(status, SessionStatus::Active | SessionStatus::CheckedIn(_)),
                    "session {id} is {status:?} although its agent did everything asked"
                );
            }
            prop_assert!(
                world.every_open_session_has_its_membership(),
                "an active session has no membership"
            );
            for id in world.open_sessions() {
                let access = world.access_of(id);
                world.check_in_session(id, CheckInReason::Manual);
                world.catch_up();
                let (computer, account, group) = &access;
                let kept = world
                    .open_sessions()
                    .into_iter()
                    .any(|other| world.access_of(other) == access);
                let member = world.machines[computer]
                    .get(account)
                    .is_some_and(|a| a.groups.contains(group));
                prop_assert!(
                    kept || !member,
                    "{account} is still in {group} on {computer} after {id} was checked in"
                );
                prop_assert!(
                    world.every_open_session_has_its_membership(),
                    "checking in {id} took another session's access"
                );
            }
        }
    }
}
