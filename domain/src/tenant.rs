//! The customer tenant: its login mode (named / shared / ephemeral), its JIT policy and its
//! shared account, assigned once and kept for the tenant's life. It must never hold a secret.

use crate::event::{domain_events, Actor, Timestamp};
use crate::ids::TenantId;
use crate::names::{AccountName, SharedAccountDigits, TenantName};
use crate::policy::{JitPolicy, LoginMode};
use crate::{Aggregate, DomainError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A registered tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantState {
    pub tenant_id: TenantId,
    pub name: TenantName,
    pub login_mode: LoginMode,
    pub policy: JitPolicy,
    /// `msp-NNNN`, assigned the first time the tenant uses shared mode, then kept.
    pub shared_account: Option<AccountName>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Tenant {
    #[default]
    Unregistered,
    Registered(TenantState),
}

impl Tenant {
    pub fn state(&self) -> Option<&TenantState> {
        match self {
            Tenant::Unregistered => None,
            Tenant::Registered(state) => Some(state),
        }
    }
}

#[derive(Debug, Clone)]
pub enum TenantCommand {
    Register {
        tenant_id: TenantId,
        name: TenantName,
        login_mode: LoginMode,
        policy: JitPolicy,
        /// Random digits for the shared account, used only if shared mode needs one.
        shared_account_digits: SharedAccountDigits,
        by: Actor,
        at: Timestamp,
    },
    ChangeLoginMode {
        login_mode: LoginMode,
        shared_account_digits: SharedAccountDigits,
        by: Actor,
        at: Timestamp,
    },
    ChangeJitPolicy {
        policy: JitPolicy,
        by: Actor,
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRegistered {
    pub tenant_id: TenantId,
    pub name: TenantName,
    pub login_mode: LoginMode,
    pub policy: JitPolicy,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SharedAccountAssigned {
    pub tenant_id: TenantId,
    pub account: AccountName,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginModeChanged {
    pub tenant_id: TenantId,
    pub from: LoginMode,
    pub to: LoginMode,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JitPolicyChanged {
    pub tenant_id: TenantId,
    pub policy: JitPolicy,
    pub by: Actor,
    pub at: Timestamp,
}

domain_events!(
    /// Everything that happens to a tenant.
    TenantEvent {
        TenantRegistered = "TenantRegistered" v 1,
        SharedAccountAssigned = "SharedAccountAssigned" v 1,
        LoginModeChanged = "LoginModeChanged" v 1,
        JitPolicyChanged = "JitPolicyChanged" v 1,
    }
);

fn shared_account(digits: &SharedAccountDigits) -> AccountName {
    AccountName::parse(format!("msp-{digits}")).expect("msp- and 4 digits is an account name")
}

impl Aggregate for Tenant {
    type Command = TenantCommand;
    type Event = TenantEvent;
    const CATEGORY: &'static str = TenantId::CATEGORY;

    fn decide(state: &Self, command: TenantCommand) -> Result<Vec<TenantEvent>, DomainError> {
        match (state, command) {
            (
                Tenant::Unregistered,
                TenantCommand::Register {
                    tenant_id,
                    name,
                    login_mode,
                    policy,
                    shared_account_digits,
                    by,
                    at,
                },
            ) => {
                let mut events = vec![TenantEvent::from(TenantRegistered {
                    tenant_id,
                    name,
                    login_mode,
                    policy,
                    by,
                    at,
                })];
                if login_mode == LoginMode::Shared {
                    events.push(
                        SharedAccountAssigned {
                            tenant_id,
                            account: shared_account(&shared_account_digits),
                            at,
                        }
                        .into(),
                    );
                }
                Ok(events)
            }
            (Tenant::Registered(_), TenantCommand::Register { .. }) => {
                Err(DomainError::TenantAlreadyRegistered)
            }
            (Tenant::Unregistered, _) => Err(DomainError::TenantNotRegistered),
            (
                Tenant::Registered(tenant),
                TenantCommand::ChangeLoginMode {
                    login_mode,
                    shared_account_digits,
                    by,
                    at,
                },
            ) => {
                if tenant.login_mode == login_mode {
                    return Ok(vec![]);
                }
                let mut events = vec![TenantEvent::from(LoginModeChanged {
                    tenant_id: tenant.tenant_id,
                    from: tenant.login_mode,
                    to: login_mode,
                    by,
                    at,
                })];
                if login_mode == LoginMode::Shared && tenant.shared_account.is_none() {
                    events.push(
                        SharedAccountAssigned {
                            tenant_id: tenant.tenant_id,
                            account: shared_account(&shared_account_digits),
                            at,
                        }
                        .into(),
                    );
                }
                Ok(events)
            }
            (Tenant::Registered(tenant), TenantCommand::ChangeJitPolicy { policy, by, at }) => {
                if tenant.policy == policy {
                    return Ok(vec![]);
                }
                Ok(vec![JitPolicyChanged {
                    tenant_id: tenant.tenant_id,
                    policy,
                    by,
                    at,
                }
                .into()])
            }
        }
    }

    fn evolve(state: Self, event: &TenantEvent) -> Self {
        match (state, event) {
            (_, TenantEvent::TenantRegistered(e)) => Tenant::Registered(TenantState {
                tenant_id: e.tenant_id,
                name: e.name.clone(),
                login_mode: e.login_mode,
                policy: e.policy.clone(),
                shared_account: None,
            }),
            (Tenant::Registered(mut t), TenantEvent::SharedAccountAssigned(e)) => {
                t.shared_account = Some(e.account.clone());
                Tenant::Registered(t)
            }
            (Tenant::Registered(mut t), TenantEvent::LoginModeChanged(e)) => {
                t.login_mode = e.to;
                Tenant::Registered(t)
            }
            (Tenant::Registered(mut t), TenantEvent::JitPolicyChanged(e)) => {
                t.policy = e.policy.clone();
                Tenant::Registered(t)
            }
            // An event before registration cannot be in a stream decide wrote.
            (state, _) => state,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::policy::CheckInAction;
    use crate::testing::{admin, given, t, tenant_id};

    pub fn digits(d: &str) -> SharedAccountDigits {
        SharedAccountDigits::parse(d).unwrap()
    }

    pub fn registered(mode: LoginMode) -> TenantEvent {
        TenantRegistered {
            tenant_id: tenant_id(),
            name: TenantName::parse("customer-1").unwrap(),
            login_mode: mode,
            policy: JitPolicy::default(),
            by: admin(),
            at: t(0),
        }
        .into()
    }

    fn assigned(d: &str, minute: u32) -> TenantEvent {
        SharedAccountAssigned {
            tenant_id: tenant_id(),
            account: AccountName::parse(format!("msp-{d}")).unwrap(),
            at: t(minute),
        }
        .into()
    }

    fn register(mode: LoginMode) -> TenantCommand {
        TenantCommand::Register {
            tenant_id: tenant_id(),
            name: TenantName::parse("customer-1").unwrap(),
            login_mode: mode,
            policy: JitPolicy::default(),
            shared_account_digits: digits("2356"),
            by: admin(),
            at: t(0),
        }
    }

    fn change_mode(mode: LoginMode, d: &str, minute: u32) -> TenantCommand {
        TenantCommand::ChangeLoginMode {
            login_mode: mode,
            shared_account_digits: digits(d),
            by: admin(),
            at: t(minute),
        }
    }

    #[test]
    fn registering_a_tenant_in_named_mode() {
        given::<Tenant>([])
            .when(register(LoginMode::Named))
            .then_expect([registered(LoginMode::Named)]);
    }

    #[test]
    fn registering_a_shared_mode_tenant_assigns_its_shared_account() {
        given::<Tenant>([])
            .when(register(LoginMode::Shared))
            .then_expect([registered(LoginMode::Shared), assigned("2356", 0)]);
    }

    #[test]
    fn a_tenant_is_registered_once() {
        given::<Tenant>([registered(LoginMode::Named)])
            .when(register(LoginMode::Named))
            .then_expect_error(DomainError::TenantAlreadyRegistered);
    }

    #[test]
    fn an_unregistered_tenant_takes_no_settings() {
        given::<Tenant>([])
            .when(change_mode(LoginMode::Shared, "1111", 1))
            .then_expect_error(DomainError::TenantNotRegistered);
    }

    #[test]
    fn changing_the_login_mode_records_who_changed_it_from_what_to_what() {
        given::<Tenant>([registered(LoginMode::Named)])
            .when(change_mode(LoginMode::Ephemeral, "1111", 5))
            .then_expect([LoginModeChanged {
                tenant_id: tenant_id(),
                from: LoginMode::Named,
                to: LoginMode::Ephemeral,
                by: admin(),
                at: t(5),
            }
            .into()]);
    }

    #[test]
    fn the_shared_account_is_assigned_once_per_tenant() {
        // First switch to shared assigns msp-4565; a later switch back keeps it.
        let first = given::<Tenant>([registered(LoginMode::Named)])
            .when(change_mode(LoginMode::Shared, "4565", 1))
            .events();
        assert_eq!(first.len(), 2);
        assert_eq!(first[1], assigned("4565", 1));
        let mut history = vec![registered(LoginMode::Named)];
        history.extend(first);
        history.push(
            LoginModeChanged {
                tenant_id: tenant_id(),
                from: LoginMode::Shared,
                to: LoginMode::Named,
                by: admin(),
                at: t(2),
            }
            .into(),
        );
        let again = given::<Tenant>(history.clone())
            .when(change_mode(LoginMode::Shared, "9999", 3))
            .events();
        assert_eq!(again.len(), 1, "no second shared account: {again:?}");
        let state = Tenant::replay(history.iter().chain(&again));
        assert_eq!(
            state
                .state()
                .unwrap()
                .shared_account
                .as_ref()
                .unwrap()
                .as_str(),
            "msp-4565"
        );
    }

    #[test]
    fn setting_the_same_login_mode_changes_nothing() {
        given::<Tenant>([registered(LoginMode::Named)])
            .when(change_mode(LoginMode::Named, "1111", 1))
            .then_expect_nothing();
    }

    #[test]
    fn changing_the_jit_policy_by_an_admin() {
        let mut fields = JitPolicy::default().fields().clone();
        fields.on_check_in = CheckInAction::DeleteAccount;
        let policy = JitPolicy::new(fields).unwrap();
        given::<Tenant>([registered(LoginMode::Ephemeral)])
            .when(TenantCommand::ChangeJitPolicy {
                policy: policy.clone(),
                by: admin(),
                at: t(7),
            })
            .then_expect([JitPolicyChanged {
                tenant_id: tenant_id(),
                policy,
                by: admin(),
                at: t(7),
            }
            .into()]);
        given::<Tenant>([registered(LoginMode::Ephemeral)])
            .when(TenantCommand::ChangeJitPolicy {
                policy: JitPolicy::default(),
                by: admin(),
                at: t(7),
            })
            .then_expect_nothing();
    }
}
