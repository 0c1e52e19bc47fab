//! Process managers: the cross-aggregate flows (DESIGN.md §3). Each reaction maps one event
//! to the commands it causes on other aggregates. Pure: what they need to know about other
//! aggregates comes through [`Lookup`] (a read model in the server, a scan in tests), and
//! every command they issue is idempotent, so a runner may replay them after a crash.

use crate::computer::{ComputerCommand, ComputerEvent, RetireReason};
use crate::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use crate::session::{CheckInReason, SessionCommand, SessionEvent};
use crate::technician::{TechnicianCommand, TechnicianEvent};
use crate::technician_names::TechnicianNamesEvent;
use crate::tenant::TenantEvent;
use crate::{Actor, AnyEvent, Timestamp};

/// A command a process manager addresses to one aggregate instance.
#[derive(Debug, Clone)]
pub enum Command {
    Computer {
        computer_id: ComputerId,
        command: ComputerCommand,
    },
    Session {
        session_id: SessionId,
        command: SessionCommand,
    },
    Technician {
        technician_id: TechnicianId,
        command: TechnicianCommand,
    },
}

/// What the process managers need to know beyond the event itself.
pub trait Lookup {
    /// Why a look-up could not be answered (a read model that cannot be read).
    type Error;
    /// Every enrolled computer of the tenant, decommissioned ones included.
    fn computers_of_tenant(&self, tenant: TenantId) -> Result<Vec<ComputerId>, Self::Error>;
    /// The technician's sessions that are provisioning or active (in one tenant, or all).
    fn open_sessions_of_technician(
        &self,
        technician: TechnicianId,
        tenant: Option<TenantId>,
    ) -> Result<Vec<SessionId>, Self::Error>;
    /// The sessions on the computer that are provisioning or active.
    fn open_sessions_on_computer(
        &self,
        computer: ComputerId,
    ) -> Result<Vec<SessionId>, Self::Error>;
}

fn revoke(sessions: Vec<SessionId>, at: Timestamp) -> impl Iterator<Item = Command> {
    sessions
        .into_iter()
        .map(move |session_id| Command::Session {
            session_id,
            command: SessionCommand::CheckIn {
                reason: CheckInReason::Revoked,
                by: Actor::System,
                at,
            },
        })
}

fn retire(
    computers: Vec<ComputerId>,
    reason: RetireReason,
    at: Timestamp,
) -> impl Iterator<Item = Command> {
    computers
        .into_iter()
        .map(move |computer_id| Command::Computer {
            computer_id,
            command: ComputerCommand::RetireAccounts { reason, at },
        })
}

/// The commands `event` causes. `at` is the runner's clock when it handles the event.
pub fn react<L: Lookup>(
    event: &AnyEvent,
    at: Timestamp,
    lookup: &L,
) -> Result<Vec<Command>, L::Error> {
    Ok(match event {
        // A check-out asks the computer for access; the computer's answer drives the session.
        AnyEvent::Session(SessionEvent::SessionCheckedOut(e)) => vec![Command::Computer {
            computer_id: e.computer_id,
            command: ComputerCommand::GrantAccess {
                grant: e.access_grant(),
                at,
            },
        }],
        AnyEvent::Computer(ComputerEvent::SessionAccessGranted(e)) => vec![Command::Session {
            session_id: e.session_id,
            command: SessionCommand::Activate { at },
        }],
        AnyEvent::Computer(ComputerEvent::SessionAccessFailed(e)) => vec![Command::Session {
            session_id: e.session_id,
            command: SessionCommand::FailProvisioning {
                reason: e.reason.clone(),
                at,
            },
        }],
        // However a session ends, its access on the computer is taken away.
        AnyEvent::Session(SessionEvent::SessionCheckedIn(e)) => {
            vec![release(e.computer_id, e.session_id, at)]
        }
        AnyEvent::Session(SessionEvent::SessionProvisioningFailed(e)) => {
            vec![release(e.computer_id, e.session_id, at)]
        }
        // The old mode's accounts go from every computer of the tenant.
        AnyEvent::Tenant(TenantEvent::LoginModeChanged(e)) => retire(
            lookup.computers_of_tenant(e.tenant_id)?,
            RetireReason::LoginModeChanged { from: e.from },
            at,
        )
        .collect(),
        // A technician who leaves loses their sessions and their accounts.
        AnyEvent::Technician(TechnicianEvent::TechnicianOffboarded(e)) => {
            let reason = RetireReason::TechnicianRemoved {
                technician_id: e.technician_id,
            };
            let mut computers = Vec::new();
            for tenant in &e.tenants {
                computers.extend(lookup.computers_of_tenant(*tenant)?);
            }
            revoke(
                lookup.open_sessions_of_technician(e.technician_id, None)?,
                at,
            )
            .chain(retire(computers, reason, at))
            .collect()
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianLeftTenant(e)) => {
            let reason = RetireReason::TechnicianRemoved {
                technician_id: e.technician_id,
            };
            let sessions =
                lookup.open_sessions_of_technician(e.technician_id, Some(e.tenant_id))?;
            revoke(sessions, at)
                .chain(retire(lookup.computers_of_tenant(e.tenant_id)?, reason, at))
                .collect()
        }
        // Names claimed for a technician are followed by their registration; if the server
        // stopped in between, this completes it (a registration already made is no change).
        AnyEvent::TechnicianNames(TechnicianNamesEvent::TechnicianNamesClaimed(e)) => {
            vec![Command::Technician {
                technician_id: e.technician_id,
                command: TechnicianCommand::Register {
                    technician_id: e.technician_id,
                    username: e.username.clone(),
                    email: e.email.clone(),
                    by: e.by.clone(),
                    at: e.at,
                },
            }]
        }
        AnyEvent::Computer(ComputerEvent::ComputerDecommissioned(e)) => {
            revoke(lookup.open_sessions_on_computer(e.computer_id)?, at).collect()
        }
        _ => vec![],
    })
}

fn release(computer_id: ComputerId, session_id: SessionId, at: Timestamp) -> Command {
    Command::Computer {
        computer_id,
        command: ComputerCommand::ReleaseAccess { session_id, at },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::LoginMode;
    use crate::technician::TechnicianOffboarded;
    use crate::tenant::LoginModeChanged;
    use crate::testing::{admin, nik_id, t, tenant_id};
    use uuid::Uuid;

    /// Two computers in the tenant, one open session of nik on the first.
    struct Fixed;

    fn pc(n: u128) -> ComputerId {
        ComputerId(Uuid::from_u128(100 + n))
    }

    fn session() -> SessionId {
        SessionId(Uuid::from_u128(7))
    }

    impl Lookup for Fixed {
        type Error = std::convert::Infallible;

        fn computers_of_tenant(&self, tenant: TenantId) -> Result<Vec<ComputerId>, Self::Error> {
            Ok(if tenant == tenant_id() {
                vec![pc(1), pc(2)]
            } else {
                vec![]
            })
        }

        fn open_sessions_of_technician(
            &self,
            tech: TechnicianId,
            _: Option<TenantId>,
        ) -> Result<Vec<SessionId>, Self::Error> {
            Ok(if tech == nik_id() {
                vec![session()]
            } else {
                vec![]
            })
        }

        fn open_sessions_on_computer(
            &self,
            computer: ComputerId,
        ) -> Result<Vec<SessionId>, Self::Error> {
            Ok(if computer == pc(1) {
                vec![session()]
            } else {
                vec![]
            })
        }
    }

    fn retirements(commands: &[Command]) -> Vec<(ComputerId, RetireReason)> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Computer {
                    computer_id,
                    command: ComputerCommand::RetireAccounts { reason, .. },
                } => Some((*computer_id, *reason)),
                _ => None,
            })
            .collect()
    }

    fn revocations(commands: &[Command]) -> Vec<SessionId> {
        commands
            .iter()
            .filter_map(|c| match c {
                Command::Session {
                    session_id,
                    command:
                        SessionCommand::CheckIn {
                            reason: CheckInReason::Revoked,
                            ..
                        },
                } => Some(*session_id),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn offboarding_revokes_the_sessions_and_asks_every_computer_to_remove_the_accounts() {
        let event = AnyEvent::Technician(
            TechnicianOffboarded {
                technician_id: nik_id(),
                tenants: vec![tenant_id()],
                by: admin(),
                at: t(1),
            }
            .into(),
        );
        let Ok(commands) = react(&event, t(2), &Fixed);
        assert_eq!(revocations(&commands), vec![session()]);
        let reason = RetireReason::TechnicianRemoved {
            technician_id: nik_id(),
        };
        assert_eq!(
            retirements(&commands),
            vec![(pc(1), reason), (pc(2), reason)]
        );
    }

    #[test]
    fn claimed_names_lead_to_the_technicians_registration() {
        use crate::names::{Email, Username};
        use crate::technician_names::TechnicianNamesClaimed;
        let (username, email) = (
            Username::parse("nik").unwrap(),
            Email::parse("nik@nikpot.com").unwrap(),
        );
        let event = AnyEvent::TechnicianNames(
            TechnicianNamesClaimed {
                technician_id: nik_id(),
                username: username.clone(),
                email: email.clone(),
                by: admin(),
                at: t(1),
            }
            .into(),
        );
        let Ok(commands) = react(&event, t(2), &Fixed);
        let [Command::Technician {
            technician_id,
            command:
                TechnicianCommand::Register {
                    technician_id: registered,
                    username: u,
                    email: e,
                    at,
                    ..
                },
        }] = commands.as_slice()
        else {
            panic!("expected one registration, got {commands:?}");
        };
        assert_eq!((*technician_id, *registered), (nik_id(), nik_id()));
        assert_eq!((u, e, *at), (&username, &email, t(1)));
    }

    #[test]
    fn a_login_mode_change_asks_every_computer_of_the_tenant_to_clean_up_the_old_mode() {
        let event = AnyEvent::Tenant(
            LoginModeChanged {
                tenant_id: tenant_id(),
                from: LoginMode::Named,
                to: LoginMode::Shared,
                by: admin(),
                at: t(1),
            }
            .into(),
        );
        let Ok(commands) = react(&event, t(2), &Fixed);
        let reason = RetireReason::LoginModeChanged {
            from: LoginMode::Named,
        };
        assert_eq!(
            retirements(&commands),
            vec![(pc(1), reason), (pc(2), reason)]
        );
        assert!(
            revocations(&commands).is_empty(),
            "sessions end on their own; accounts go then"
        );
    }
}
