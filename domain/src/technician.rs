//! An MSP technician: one identity across the tenants they work in. Joining gives access to a
//! tenant's computers; leaving a tenant or being offboarded takes it away, and the process
//! managers then revoke their sessions and remove their accounts on every computer.

use crate::event::{domain_events, Actor, Timestamp};
use crate::ids::{TechnicianId, TenantId};
use crate::names::{Email, Username};
use crate::{Aggregate, DomainError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TechnicianState {
    pub technician_id: TechnicianId,
    pub username: Username,
    pub email: Email,
    pub tenants: BTreeSet<TenantId>,
    pub offboarded: bool,
}

impl TechnicianState {
    /// May this technician check out computers of `tenant`?
    pub fn may_work_in(&self, tenant: TenantId) -> Result<(), DomainError> {
        if self.offboarded {
            Err(DomainError::TechnicianOffboarded)
        } else if !self.tenants.contains(&tenant) {
            Err(DomainError::TechnicianNotInTenant { tenant_id: tenant })
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Technician {
    #[default]
    Unregistered,
    Registered(TechnicianState),
}

impl Technician {
    pub fn state(&self) -> Option<&TechnicianState> {
        match self {
            Technician::Unregistered => None,
            Technician::Registered(state) => Some(state),
        }
    }
}

#[derive(Debug, Clone)]
pub enum TechnicianCommand {
    Register {
        technician_id: TechnicianId,
        username: Username,
        email: Email,
        by: Actor,
        at: Timestamp,
    },
    /// The caller checks that the tenant exists.
    JoinTenant {
        tenant_id: TenantId,
        by: Actor,
        at: Timestamp,
    },
    LeaveTenant {
        tenant_id: TenantId,
        by: Actor,
        at: Timestamp,
    },
    Offboard {
        by: Actor,
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TechnicianRegistered {
    pub technician_id: TechnicianId,
    pub username: Username,
    pub email: Email,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TechnicianJoinedTenant {
    pub technician_id: TechnicianId,
    pub tenant_id: TenantId,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TechnicianLeftTenant {
    pub technician_id: TechnicianId,
    pub tenant_id: TenantId,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TechnicianOffboarded {
    pub technician_id: TechnicianId,
    /// The tenants they were in, whose computers must lose their accounts.
    pub tenants: Vec<TenantId>,
    pub by: Actor,
    pub at: Timestamp,
}

domain_events!(
    /// Everything that happens to a technician.
    TechnicianEvent {
        TechnicianRegistered = "TechnicianRegistered" v 1,
        TechnicianJoinedTenant = "TechnicianJoinedTenant" v 1,
        TechnicianLeftTenant = "TechnicianLeftTenant" v 1,
        TechnicianOffboarded = "TechnicianOffboarded" v 1,
    }
);

impl Aggregate for Technician {
    type Command = TechnicianCommand;
    type Event = TechnicianEvent;
    const CATEGORY: &'static str = TechnicianId::CATEGORY;

    fn decide(
        state: &Self,
        command: TechnicianCommand,
    ) -> Result<Vec<TechnicianEvent>, DomainError> {
        match (state, command) {
            (
                Technician::Unregistered,
                TechnicianCommand::Register {
                    technician_id,
                    username,
                    email,
                    by,
                    at,
                },
            ) => Ok(vec![TechnicianRegistered {
                technician_id,
                username,
                email,
                by,
                at,
            }
            .into()]),
            // The same registration again (the HTTP handler and the process manager that
            // completes a claim of names both send it): already done.
            (
                Technician::Registered(tech),
                TechnicianCommand::Register {
                    technician_id,
                    username,
                    email,
                    ..
                },
            ) if tech.technician_id == technician_id
                && tech.username == username
                && tech.email == email =>
            {
                Ok(vec![])
            }
            (Technician::Registered(_), TechnicianCommand::Register { .. }) => {
                Err(DomainError::TechnicianAlreadyRegistered)
            }
            (Technician::Unregistered, _) => Err(DomainError::TechnicianNotRegistered),
            (Technician::Registered(tech), TechnicianCommand::Offboard { by, at }) => {
                if tech.offboarded {
                    return Ok(vec![]);
                }
                Ok(vec![TechnicianOffboarded {
                    technician_id: tech.technician_id,
                    tenants: tech.tenants.iter().copied().collect(),
                    by,
                    at,
                }
                .into()])
            }
            (Technician::Registered(tech), _) if tech.offboarded => {
                Err(DomainError::TechnicianOffboarded)
            }
            (Technician::Registered(tech), TechnicianCommand::JoinTenant { tenant_id, by, at }) => {
                if tech.tenants.contains(&tenant_id) {
                    return Ok(vec![]);
                }
                Ok(vec![TechnicianJoinedTenant {
                    technician_id: tech.technician_id,
                    tenant_id,
                    by,
                    at,
                }
                .into()])
            }
            (
                Technician::Registered(tech),
                TechnicianCommand::LeaveTenant { tenant_id, by, at },
            ) => {
                if !tech.tenants.contains(&tenant_id) {
                    return Ok(vec![]);
                }
                Ok(vec![TechnicianLeftTenant {
                    technician_id: tech.technician_id,
                    tenant_id,
                    by,
                    at,
                }
                .into()])
            }
        }
    }

    fn evolve(state: Self, event: &TechnicianEvent) -> Self {
        match (state, event) {
            (_, TechnicianEvent::TechnicianRegistered(e)) => {
                Technician::Registered(TechnicianState {
                    technician_id: e.technician_id,
                    username: e.username.clone(),
                    email: e.email.clone(),
                    tenants: BTreeSet::new(),
                    offboarded: false,
                })
            }
            (Technician::Registered(mut t), TechnicianEvent::TechnicianJoinedTenant(e)) => {
                t.tenants.insert(e.tenant_id);
                Technician::Registered(t)
            }
            (Technician::Registered(mut t), TechnicianEvent::TechnicianLeftTenant(e)) => {
                t.tenants.remove(&e.tenant_id);
                Technician::Registered(t)
            }
            (Technician::Registered(mut t), TechnicianEvent::TechnicianOffboarded(_)) => {
                t.offboarded = true;
                t.tenants.clear();
                Technician::Registered(t)
            }
            (state, _) => state,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{admin, given, nik_id, t, tenant_id};

    pub fn registered(id: TechnicianId, username: &str) -> TechnicianEvent {
        TechnicianRegistered {
            technician_id: id,
            username: Username::parse(username).unwrap(),
            email: Email::parse(format!("{username}@nikpot.com")).unwrap(),
            by: admin(),
            at: t(0),
        }
        .into()
    }

    pub fn joined(id: TechnicianId, tenant: TenantId) -> TechnicianEvent {
        TechnicianJoinedTenant {
            technician_id: id,
            tenant_id: tenant,
            by: admin(),
            at: t(0),
        }
        .into()
    }

    #[test]
    fn a_technician_registers_and_joins_a_tenant() {
        given::<Technician>([])
            .when(TechnicianCommand::Register {
                technician_id: nik_id(),
                username: Username::parse("nik").unwrap(),
                email: Email::parse("nik@nikpot.com").unwrap(),
                by: admin(),
                at: t(0),
            })
            .then_expect([registered(nik_id(), "nik")]);
        given::<Technician>([registered(nik_id(), "nik")])
            .when(TechnicianCommand::JoinTenant {
                tenant_id: tenant_id(),
                by: admin(),
                at: t(0),
            })
            .then_expect([joined(nik_id(), tenant_id())]);
    }

    #[test]
    fn registering_again_changes_nothing_but_another_registration_is_refused() {
        let register = |username: &str| TechnicianCommand::Register {
            technician_id: nik_id(),
            username: Username::parse(username).unwrap(),
            email: Email::parse("nik@nikpot.com").unwrap(),
            by: admin(),
            at: t(5),
        };
        given::<Technician>([registered(nik_id(), "nik")])
            .when(register("nik"))
            .then_expect_nothing();
        given::<Technician>([registered(nik_id(), "nik")])
            .when(register("nikolai"))
            .then_expect_error(DomainError::TechnicianAlreadyRegistered);
    }

    #[test]
    fn joining_twice_changes_nothing() {
        given::<Technician>([registered(nik_id(), "nik"), joined(nik_id(), tenant_id())])
            .when(TechnicianCommand::JoinTenant {
                tenant_id: tenant_id(),
                by: admin(),
                at: t(1),
            })
            .then_expect_nothing();
    }

    #[test]
    fn a_technician_works_in_the_tenants_they_joined_only() {
        let other = TenantId(uuid::Uuid::from_u128(99));
        let tech =
            Technician::replay(&[registered(nik_id(), "nik"), joined(nik_id(), tenant_id())]);
        let state = tech.state().unwrap();
        assert_eq!(state.may_work_in(tenant_id()), Ok(()));
        assert_eq!(
            state.may_work_in(other),
            Err(DomainError::TechnicianNotInTenant { tenant_id: other })
        );
    }

    #[test]
    fn offboarding_names_every_tenant_whose_computers_must_be_cleaned() {
        let other = TenantId(uuid::Uuid::from_u128(99));
        given::<Technician>([
            registered(nik_id(), "nik"),
            joined(nik_id(), tenant_id()),
            joined(nik_id(), other),
        ])
        .when(TechnicianCommand::Offboard {
            by: admin(),
            at: t(9),
        })
        .then_expect([TechnicianOffboarded {
            technician_id: nik_id(),
            tenants: vec![tenant_id(), other],
            by: admin(),
            at: t(9),
        }
        .into()]);
    }

    #[test]
    fn an_offboarded_technician_cannot_join_or_work_and_offboarding_twice_is_a_no_op() {
        let history = [
            registered(nik_id(), "nik"),
            joined(nik_id(), tenant_id()),
            TechnicianOffboarded {
                technician_id: nik_id(),
                tenants: vec![tenant_id()],
                by: admin(),
                at: t(9),
            }
            .into(),
        ];
        given::<Technician>(history.clone())
            .when(TechnicianCommand::JoinTenant {
                tenant_id: tenant_id(),
                by: admin(),
                at: t(10),
            })
            .then_expect_error(DomainError::TechnicianOffboarded);
        given::<Technician>(history.clone())
            .when(TechnicianCommand::Offboard {
                by: admin(),
                at: t(10),
            })
            .then_expect_nothing();
        let state = Technician::replay(&history);
        assert_eq!(
            state.state().unwrap().may_work_in(tenant_id()),
            Err(DomainError::TechnicianOffboarded)
        );
    }

    #[test]
    fn leaving_a_tenant() {
        given::<Technician>([registered(nik_id(), "nik"), joined(nik_id(), tenant_id())])
            .when(TechnicianCommand::LeaveTenant {
                tenant_id: tenant_id(),
                by: admin(),
                at: t(3),
            })
            .then_expect([TechnicianLeftTenant {
                technician_id: nik_id(),
                tenant_id: tenant_id(),
                by: admin(),
                at: t(3),
            }
            .into()]);
    }

    #[test]
    fn an_unregistered_technician_cannot_be_offboarded() {
        given::<Technician>([])
            .when(TechnicianCommand::Offboard {
                by: admin(),
                at: t(1),
            })
            .then_expect_error(DomainError::TechnicianNotRegistered);
    }
}
