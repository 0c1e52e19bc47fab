//! One just-in-time access session: checked out (provisioning) → active → checked in
//! (manually, at expiry, or revoked), or failed. Check-out decides which account the
//! technician gets under the tenant's login mode and the computer's effective JIT policy;
//! the computer then provisions it. A session never holds a credential.

use crate::computer::{AccessGrant, AccountOwner, Computer};
use crate::event::{domain_events, Actor, Timestamp};
use crate::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use crate::names::{AccountName, EphemeralDigits, FailureReason, GroupName, Reason, TicketRef};
use crate::policy::{CheckInAction, LoginMode, PostSessionActions, SessionLength};
use crate::technician::TechnicianState;
use crate::tenant::TenantState;
use crate::{Aggregate, DomainError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckInReason {
    /// The technician (or an admin on their behalf) checked in.
    Manual,
    /// The session reached its maximum length.
    Expired,
    /// Access was taken away: by an admin, offboarding, or decommissioning.
    Revoked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionStatus {
    Provisioning,
    Active,
    CheckedIn(CheckInReason),
    Failed(FailureReason),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionState {
    pub session_id: SessionId,
    pub tenant_id: TenantId,
    pub technician_id: TechnicianId,
    pub computer_id: ComputerId,
    pub login_mode: LoginMode,
    pub account: AccountName,
    pub checked_out_at: Timestamp,
    pub expires_at: Timestamp,
    pub status: SessionStatus,
}

impl SessionState {
    /// Provisioning or active: the session holds (or is getting) access.
    pub fn is_open(&self) -> bool {
        matches!(
            self.status,
            SessionStatus::Provisioning | SessionStatus::Active
        )
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Session {
    #[default]
    None,
    Exists(SessionState),
}

impl Session {
    pub fn state(&self) -> Option<&SessionState> {
        match self {
            Session::None => None,
            Session::Exists(state) => Some(state),
        }
    }
}

/// A technician asks for access to a computer. The caller loads the tenant, the technician
/// and the computer and puts their states in the command, with the time and the random
/// digits an ephemeral account would need.
#[derive(Debug, Clone)]
pub struct CheckOut {
    pub session_id: SessionId,
    pub tenant: TenantState,
    pub technician: TechnicianState,
    pub computer: Computer,
    pub reason: Option<Reason>,
    pub ticket: Option<TicketRef>,
    /// Shorter than the policy's maximum if the technician wants; never longer.
    pub duration: Option<SessionLength>,
    pub ephemeral_digits: EphemeralDigits,
    pub by: Actor,
    pub at: Timestamp,
}

#[derive(Debug, Clone)]
pub enum SessionCommand {
    CheckOut(Box<CheckOut>),
    /// From the process manager: the computer verified the account, password and group.
    Activate {
        at: Timestamp,
    },
    /// From the process manager: the computer could not provide access.
    FailProvisioning {
        reason: FailureReason,
        at: Timestamp,
    },
    CheckIn {
        reason: CheckInReason,
        by: Actor,
        at: Timestamp,
    },
    /// The technician asks to see the account's current password. Allowed only while the
    /// session is active; the caller reads the computer's current password version.
    RevealCredential {
        password_version: u32,
        by: Actor,
        at: Timestamp,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCheckedOut {
    pub session_id: SessionId,
    pub tenant_id: TenantId,
    pub technician_id: TechnicianId,
    pub computer_id: ComputerId,
    pub login_mode: LoginMode,
    pub account: AccountName,
    pub account_owner: AccountOwner,
    /// The effective JIT policy's settings this session runs under.
    pub admin_group: GroupName,
    pub on_check_in: CheckInAction,
    pub rotate_on_check_in: bool,
    /// What the agent does to the account's live logons when the access ends; absent for
    /// sessions checked out before post-session actions existed (none then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_session: Option<PostSessionActions>,
    pub create_account: bool,
    pub reason: Option<Reason>,
    pub ticket: Option<TicketRef>,
    pub expires_at: Timestamp,
    pub by: Actor,
    pub at: Timestamp,
}

impl SessionCheckedOut {
    /// What the computer needs to provide this session's access.
    pub fn access_grant(&self) -> AccessGrant {
        AccessGrant {
            session_id: self.session_id,
            technician_id: self.technician_id,
            account: self.account.clone(),
            owner: self.account_owner,
            admin_group: self.admin_group.clone(),
            on_check_in: self.on_check_in,
            rotate_on_check_in: self.rotate_on_check_in,
            post_session: self.post_session.unwrap_or(PostSessionActions::NONE),
            create_account: self.create_account,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionActivated {
    pub session_id: SessionId,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionProvisioningFailed {
    pub session_id: SessionId,
    pub computer_id: ComputerId,
    pub reason: FailureReason,
    pub at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionCheckedIn {
    pub session_id: SessionId,
    pub computer_id: ComputerId,
    pub reason: CheckInReason,
    pub by: Actor,
    pub at: Timestamp,
}

/// The technician was shown the session's password (version `password_version` of the
/// account on the computer). The password itself is never in an event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CredentialRevealed {
    pub session_id: SessionId,
    pub technician_id: TechnicianId,
    pub computer_id: ComputerId,
    pub account: AccountName,
    pub password_version: u32,
    pub by: Actor,
    pub at: Timestamp,
}

domain_events!(
    /// Everything that happens to a session.
    SessionEvent {
        SessionCheckedOut = "SessionCheckedOut" v 1,
        SessionActivated = "SessionActivated" v 1,
        SessionProvisioningFailed = "SessionProvisioningFailed" v 1,
        SessionCheckedIn = "SessionCheckedIn" v 1,
        CredentialRevealed = "CredentialRevealed" v 1,
    }
);

/// The account a check-out gets under the tenant's login mode (DESIGN.md §2).
fn choose_account(c: &CheckOut) -> Result<(AccountName, AccountOwner), DomainError> {
    let policy = c.computer.effective_policy(&c.tenant.policy);
    let technician_id = c.technician.technician_id;
    let username = &c.technician.username;
    match c.tenant.login_mode {
        LoginMode::Named => Ok((
            policy.named_account_template().account_for(username),
            AccountOwner::Named { technician_id },
        )),
        LoginMode::Shared => {
            let account = c
                .tenant
                .shared_account
                .clone()
                .ok_or(DomainError::SharedAccountMissing)?;
            Ok((account, AccountOwner::Shared))
        }
        LoginMode::Ephemeral => {
            let owner = AccountOwner::Ephemeral { technician_id };
            let reuse = policy.reuse_existing_account()
                && policy.on_check_in() == CheckInAction::RemoveFromGroup;
            if let Some(existing) = reuse
                .then(|| c.computer.reusable_account(technician_id))
                .flatten()
            {
                return Ok((existing.clone(), owner));
            }
            let fresh = AccountName::parse(format!("{username}_{}", c.ephemeral_digits))
                .expect("a 19-character username and 13 more characters make a valid account");
            if c.computer.accounts.contains_key(&fresh) {
                return Err(DomainError::AccountNameTaken { account: fresh });
            }
            Ok((fresh, owner))
        }
    }
}

fn check_out(c: CheckOut) -> Result<Vec<SessionEvent>, DomainError> {
    let tenant_id = c.tenant.tenant_id;
    c.technician.may_work_in(tenant_id)?;
    let profile = c
        .computer
        .profile()
        .ok_or(DomainError::ComputerNotEnrolled)?;
    if c.computer.is_decommissioned() {
        return Err(DomainError::ComputerDecommissioned);
    }
    if profile.tenant_id != tenant_id {
        return Err(DomainError::ComputerOfOtherTenant);
    }
    let policy = c.computer.effective_policy(&c.tenant.policy);
    let admin_group = c.computer.admin_group(&c.tenant.policy)?;
    let (account, owner) = choose_account(&c)?;
    if let Some(existing) = c.computer.accounts.get(&account) {
        if existing.owner != owner {
            return Err(DomainError::AccountOwnedByOther { account });
        }
    }
    if !policy.provisioning_enabled() && !c.computer.has_usable_account(&account) {
        return Err(DomainError::AccountNotProvisioned { account });
    }
    // A wish longer than the policy allows is refused, never quietly shortened: the
    // technician would plan work around an expiry they do not get.
    let length = match c.duration {
        Some(wanted) if wanted > policy.max_session() => {
            return Err(DomainError::SessionLongerThanAllowed {
                wanted: wanted.as_minutes(),
                max_minutes: policy.max_session().as_minutes(),
            })
        }
        Some(wanted) => wanted,
        None => policy.max_session(),
    };
    Ok(vec![SessionCheckedOut {
        session_id: c.session_id,
        tenant_id,
        technician_id: c.technician.technician_id,
        computer_id: profile.computer_id,
        login_mode: c.tenant.login_mode,
        account,
        account_owner: owner,
        admin_group,
        on_check_in: policy.on_check_in(),
        rotate_on_check_in: policy.rotate_on_check_in(),
        post_session: Some(policy.post_session_actions(c.tenant.login_mode)),
        create_account: policy.provisioning_enabled(),
        reason: c.reason,
        ticket: c.ticket,
        expires_at: c.at + length.as_duration(),
        by: c.by,
        at: c.at,
    }
    .into()])
}

impl Aggregate for Session {
    type Command = SessionCommand;
    type Event = SessionEvent;
    const CATEGORY: &'static str = SessionId::CATEGORY;

    fn decide(state: &Self, command: SessionCommand) -> Result<Vec<SessionEvent>, DomainError> {
        let s = match (state, command) {
            (Session::None, SessionCommand::CheckOut(c)) => return check_out(*c),
            (Session::Exists(_), SessionCommand::CheckOut(_)) => {
                return Err(DomainError::SessionAlreadyExists)
            }
            (Session::None, _) => return Err(DomainError::SessionNotFound),
            (Session::Exists(s), command) => (s, command),
        };
        let (s, command) = s;
        let session_id = s.session_id;
        // Commands on a closed session are already satisfied: nothing happens.
        Ok(match (&s.status, command) {
            (SessionStatus::Provisioning, SessionCommand::Activate { at }) => {
                vec![SessionActivated { session_id, at }.into()]
            }
            (SessionStatus::Provisioning, SessionCommand::FailProvisioning { reason, at }) => {
                vec![SessionProvisioningFailed {
                    session_id,
                    computer_id: s.computer_id,
                    reason,
                    at,
                }
                .into()]
            }
            (_, SessionCommand::CheckIn { reason, by, at }) if s.is_open() => {
                if reason == CheckInReason::Expired && at < s.expires_at {
                    return Err(DomainError::ExpiryNotReached {
                        expires_at: s.expires_at,
                    });
                }
                vec![SessionCheckedIn {
                    session_id,
                    computer_id: s.computer_id,
                    reason,
                    by,
                    at,
                }
                .into()]
            }
            (
                SessionStatus::Active,
                SessionCommand::RevealCredential {
                    password_version,
                    by,
                    at,
                },
            ) => vec![CredentialRevealed {
                session_id,
                technician_id: s.technician_id,
                computer_id: s.computer_id,
                account: s.account.clone(),
                password_version,
                by,
                at,
            }
            .into()],
            (_, SessionCommand::RevealCredential { .. }) => {
                return Err(DomainError::SessionNotActive)
            }
            _ => vec![],
        })
    }

    fn evolve(state: Self, event: &SessionEvent) -> Self {
        match (state, event) {
            (_, SessionEvent::SessionCheckedOut(e)) => Session::Exists(SessionState {
                session_id: e.session_id,
                tenant_id: e.tenant_id,
                technician_id: e.technician_id,
                computer_id: e.computer_id,
                login_mode: e.login_mode,
                account: e.account.clone(),
                checked_out_at: e.at,
                expires_at: e.expires_at,
                status: SessionStatus::Provisioning,
            }),
            (Session::Exists(mut s), SessionEvent::SessionActivated(_)) => {
                s.status = SessionStatus::Active;
                Session::Exists(s)
            }
            (Session::Exists(mut s), SessionEvent::SessionProvisioningFailed(e)) => {
                s.status = SessionStatus::Failed(e.reason.clone());
                Session::Exists(s)
            }
            (Session::Exists(mut s), SessionEvent::SessionCheckedIn(e)) => {
                s.status = SessionStatus::CheckedIn(e.reason);
                Session::Exists(s)
            }
            (state, _) => state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::computer::{ComputerCommand, ComputerDecommissioned, ComputerEvent, Enrolment};
    use crate::names::{Email, SharedAccountDigits, TenantName, Username};
    use crate::policy::{JitPolicy, JitPolicyFields};
    use crate::technician::{
        Technician, TechnicianEvent, TechnicianJoinedTenant, TechnicianRegistered,
    };
    use crate::tenant::{Tenant, TenantCommand};
    use crate::testing::{admin, computer_id, given, nik_id, t, tenant_id};
    use uuid::Uuid;

    fn tenant(mode: LoginMode, policy: JitPolicy) -> TenantState {
        let events = Tenant::decide(
            &Tenant::Unregistered,
            TenantCommand::Register {
                tenant_id: tenant_id(),
                name: TenantName::parse("customer-1").unwrap(),
                login_mode: mode,
                policy,
                shared_account_digits: SharedAccountDigits::parse("2356").unwrap(),
                by: admin(),
                at: t(0),
            },
        )
        .unwrap();
        Tenant::replay(&events).state().unwrap().clone()
    }

    fn nik() -> TechnicianState {
        let events: Vec<TechnicianEvent> = vec![
            TechnicianRegistered {
                technician_id: nik_id(),
                username: Username::parse("nik").unwrap(),
                email: Email::parse("nik@nikpot.com").unwrap(),
                by: admin(),
                at: t(0),
            }
            .into(),
            TechnicianJoinedTenant {
                technician_id: nik_id(),
                tenant_id: tenant_id(),
                by: admin(),
                at: t(0),
            }
            .into(),
        ];
        Technician::replay(&events).state().unwrap().clone()
    }

    fn computer() -> Computer {
        Computer::replay(&[crate::computer::testing::enrolled("W11-L-PASSWORD")])
    }

    fn sid() -> SessionId {
        SessionId(Uuid::from_u128(2000))
    }

    fn policy(edit: impl FnOnce(&mut JitPolicyFields)) -> JitPolicy {
        let mut fields = JitPolicy::default().fields().clone();
        edit(&mut fields);
        JitPolicy::new(fields).unwrap()
    }

    fn check_out(tenant: TenantState, computer: Computer) -> CheckOut {
        CheckOut {
            session_id: sid(),
            tenant,
            technician: nik(),
            computer,
            reason: Some(Reason::parse("printer driver").unwrap()),
            ticket: Some(TicketRef::parse("INC-4711").unwrap()),
            duration: None,
            ephemeral_digits: EphemeralDigits::parse("566054625600").unwrap(),
            by: Actor::User {
                email: Email::parse("nik@nikpot.com").unwrap(),
            },
            at: t(0),
        }
    }

    fn account_of(c: CheckOut) -> Result<String, DomainError> {
        let events = Session::decide(&Session::None, SessionCommand::CheckOut(Box::new(c)))?;
        events.iter().for_each(crate::testing::check_contract);
        match &events[..] {
            [SessionEvent::SessionCheckedOut(e)] => Ok(e.account.to_string()),
            other => panic!("{other:#?}"),
        }
    }

    fn checked_out(expires_minute: u32) -> SessionEvent {
        let mut c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer());
        c.duration = Some(SessionLength::minutes(expires_minute).unwrap());
        Session::decide(&Session::None, SessionCommand::CheckOut(Box::new(c)))
            .unwrap()
            .remove(0)
    }

    #[test]
    fn named_mode_gives_the_technician_their_named_account() {
        let c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer());
        assert_eq!(account_of(c).unwrap(), "msp-nik");
    }

    #[test]
    fn named_mode_uses_the_computer_override_template() {
        let mut computer = computer();
        computer.policy_override = Some(policy(|f| {
            f.named_account_template =
                crate::policy::AccountTemplate::parse("{username}-msp").unwrap()
        }));
        let c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer);
        assert_eq!(account_of(c).unwrap(), "nik-msp");
    }

    #[test]
    fn shared_mode_gives_the_tenants_shared_account() {
        let c = check_out(tenant(LoginMode::Shared, JitPolicy::default()), computer());
        assert_eq!(account_of(c).unwrap(), "msp-2356");
    }

    #[test]
    fn ephemeral_mode_creates_a_username_and_12_digit_account_per_session() {
        let c = check_out(
            tenant(LoginMode::Ephemeral, JitPolicy::default()),
            computer(),
        );
        assert_eq!(account_of(c).unwrap(), "nik_566054625600");
    }

    fn computer_with_kept_ephemeral_account() -> Computer {
        let mut events = vec![crate::computer::testing::enrolled("W11-L-PASSWORD")];
        let grant = crate::computer::AccessGrant {
            account: AccountName::parse("nik_111111111111").unwrap(),
            owner: AccountOwner::Ephemeral {
                technician_id: nik_id(),
            },
            ..crate::computer::testing::named_grant(1)
        };
        let state = Computer::replay(&events);
        events.extend(
            Computer::decide(&state, ComputerCommand::GrantAccess { grant, at: t(0) }).unwrap(),
        );
        assert!(events
            .iter()
            .any(|e| matches!(e, ComputerEvent::ProvisioningRequested(_))));
        Computer::replay(&events)
    }

    #[test]
    fn ephemeral_mode_with_reuse_existing_reuses_the_technicians_kept_account() {
        let reuse = policy(|f| f.reuse_existing_account = true);
        let c = check_out(
            tenant(LoginMode::Ephemeral, reuse),
            computer_with_kept_ephemeral_account(),
        );
        assert_eq!(account_of(c).unwrap(), "nik_111111111111");
    }

    #[test]
    fn ephemeral_mode_without_reuse_makes_a_new_account_even_if_one_is_kept() {
        let c = check_out(
            tenant(LoginMode::Ephemeral, JitPolicy::default()),
            computer_with_kept_ephemeral_account(),
        );
        assert_eq!(account_of(c).unwrap(), "nik_566054625600");
    }

    #[test]
    fn ephemeral_digits_that_collide_are_refused() {
        let mut c = check_out(
            tenant(LoginMode::Ephemeral, JitPolicy::default()),
            computer_with_kept_ephemeral_account(),
        );
        c.ephemeral_digits = EphemeralDigits::parse("111111111111").unwrap();
        assert!(matches!(
            account_of(c),
            Err(DomainError::AccountNameTaken { .. })
        ));
    }

    #[test]
    fn check_out_records_the_policy_the_session_runs_under_and_its_expiry() {
        let short = policy(|f| f.max_session_minutes = SessionLength::minutes(30).unwrap());
        let c = check_out(tenant(LoginMode::Named, short), computer());
        let events =
            Session::decide(&Session::None, SessionCommand::CheckOut(Box::new(c))).unwrap();
        let SessionEvent::SessionCheckedOut(e) = &events[0] else {
            panic!()
        };
        assert_eq!(e.expires_at, t(30), "no wish: the policy's maximum");
        assert_eq!(e.admin_group.as_str(), "Administrators");
        assert_eq!(e.computer_id, computer_id());
        assert_eq!(e.ticket.as_ref().unwrap().as_str(), "INC-4711");
        let mut c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer());
        c.duration = Some(SessionLength::minutes(15).unwrap());
        let events =
            Session::decide(&Session::None, SessionCommand::CheckOut(Box::new(c))).unwrap();
        let SessionEvent::SessionCheckedOut(e) = &events[0] else {
            panic!()
        };
        assert_eq!(e.expires_at, t(15), "a shorter wish is honoured");
    }

    /// A Linux computer as its agent enrolled it, reporting `group` as its admin group.
    fn linux(group: Option<&str>) -> Computer {
        use crate::computer::{ComputerEnrolled, OsKind};
        use crate::ids::AgentKeyId;
        use crate::names::{GroupName, Hostname};
        Computer::replay(&[ComputerEnrolled {
            computer_id: crate::testing::computer_id(),
            tenant_id: tenant_id(),
            hostname: Hostname::parse("deb-12").unwrap(),
            os: OsKind::Linux,
            agent_key_id: AgentKeyId(Uuid::from_u128(500)),
            admin_group: group.map(|g| GroupName::parse(g).unwrap()),
            by: admin(),
            at: t(0),
        }
        .into()])
    }

    fn group_of(c: CheckOut) -> Result<String, DomainError> {
        let events = Session::decide(&Session::None, SessionCommand::CheckOut(Box::new(c)))?;
        let SessionEvent::SessionCheckedOut(e) = &events[0] else {
            panic!()
        };
        Ok(e.admin_group.to_string())
    }

    #[test]
    fn the_admin_group_is_the_policys_else_the_computers_own() {
        let default = || tenant(LoginMode::Named, JitPolicy::default());
        assert_eq!(
            group_of(check_out(default(), linux(Some("sudo")))).unwrap(),
            "sudo",
            "the group the agent reported"
        );
        assert_eq!(
            group_of(check_out(default(), computer())).unwrap(),
            "Administrators",
            "Windows without a report"
        );
        let err = group_of(check_out(default(), linux(None))).unwrap_err();
        assert_eq!(err, DomainError::AdminGroupUnknown);
        assert_eq!(err.field(), Some("admin_group"));
        let wheel =
            policy(|f| f.admin_group = Some(crate::names::GroupName::parse("wheel").unwrap()));
        assert_eq!(
            group_of(check_out(
                tenant(LoginMode::Named, wheel),
                linux(Some("sudo"))
            ))
            .unwrap(),
            "wheel",
            "a policy that names a group wins"
        );
    }

    #[test]
    fn a_session_longer_than_the_policy_allows_is_refused_not_shortened() {
        let short = policy(|f| f.max_session_minutes = SessionLength::minutes(30).unwrap());
        let mut c = check_out(tenant(LoginMode::Named, short.clone()), computer());
        c.duration = Some(SessionLength::minutes(90).unwrap());
        let err =
            Session::decide(&Session::None, SessionCommand::CheckOut(Box::new(c))).unwrap_err();
        assert_eq!(
            err,
            DomainError::SessionLongerThanAllowed {
                wanted: 90,
                max_minutes: 30
            }
        );
        assert_eq!(err.field(), Some("duration_minutes"));
        let mut c = check_out(tenant(LoginMode::Named, short), computer());
        c.duration = Some(SessionLength::minutes(30).unwrap());
        assert!(
            Session::decide(&Session::None, SessionCommand::CheckOut(Box::new(c))).is_ok(),
            "exactly the maximum is allowed"
        );
    }

    #[test]
    fn only_members_of_the_tenant_who_are_not_offboarded_check_out() {
        let mut c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer());
        c.technician.tenants.clear();
        assert_eq!(
            account_of(c),
            Err(DomainError::TechnicianNotInTenant {
                tenant_id: tenant_id()
            })
        );
        let mut c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer());
        c.technician.offboarded = true;
        assert_eq!(account_of(c), Err(DomainError::TechnicianOffboarded));
    }

    #[test]
    fn only_enrolled_computers_of_the_tenant_are_checked_out() {
        let c = check_out(
            tenant(LoginMode::Named, JitPolicy::default()),
            Computer::default(),
        );
        assert_eq!(account_of(c), Err(DomainError::ComputerNotEnrolled));
        let decommissioned = ComputerDecommissioned {
            computer_id: computer_id(),
            by: admin(),
            at: t(0),
        };
        let computer = Computer::evolve(computer(), &decommissioned.into());
        let c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer);
        assert_eq!(account_of(c), Err(DomainError::ComputerDecommissioned));
        let mut computer = self::computer();
        let Enrolment::Enrolled(profile) = &mut computer.enrolment else {
            panic!("the test computer is enrolled");
        };
        profile.tenant_id = TenantId(Uuid::from_u128(77));
        let c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer);
        assert_eq!(account_of(c), Err(DomainError::ComputerOfOtherTenant));
    }

    #[test]
    fn without_provisioning_check_out_needs_an_existing_account() {
        let off = policy(|f| f.provisioning_enabled = false);
        let c = check_out(tenant(LoginMode::Named, off), computer());
        assert_eq!(
            account_of(c),
            Err(DomainError::AccountNotProvisioned {
                account: AccountName::parse("msp-nik").unwrap()
            })
        );
    }

    #[test]
    fn a_session_is_checked_out_once() {
        let c = check_out(tenant(LoginMode::Named, JitPolicy::default()), computer());
        given::<Session>([checked_out(60)])
            .when(SessionCommand::CheckOut(Box::new(c)))
            .then_expect_error(DomainError::SessionAlreadyExists);
    }

    #[test]
    fn a_session_becomes_active_when_the_computer_granted_access() {
        given::<Session>([checked_out(60)])
            .when(SessionCommand::Activate { at: t(1) })
            .then_expect([SessionActivated {
                session_id: sid(),
                at: t(1),
            }
            .into()]);
    }

    #[test]
    fn a_session_fails_when_the_computer_could_not_grant_access() {
        let reason = FailureReason::parse("useradd failed").unwrap();
        given::<Session>([checked_out(60)])
            .when(SessionCommand::FailProvisioning {
                reason: reason.clone(),
                at: t(1),
            })
            .then_expect([SessionProvisioningFailed {
                session_id: sid(),
                computer_id: computer_id(),
                reason,
                at: t(1),
            }
            .into()]);
    }

    #[test]
    fn checking_in_manually_while_active() {
        let by = Actor::User {
            email: Email::parse("nik@nikpot.com").unwrap(),
        };
        given::<Session>([
            checked_out(60),
            SessionActivated {
                session_id: sid(),
                at: t(1),
            }
            .into(),
        ])
        .when(SessionCommand::CheckIn {
            reason: CheckInReason::Manual,
            by: by.clone(),
            at: t(20),
        })
        .then_expect([SessionCheckedIn {
            session_id: sid(),
            computer_id: computer_id(),
            reason: CheckInReason::Manual,
            by,
            at: t(20),
        }
        .into()]);
    }

    #[test]
    fn the_credential_is_revealed_only_while_the_session_is_active() {
        let by = Actor::User {
            email: Email::parse("nik@nikpot.com").unwrap(),
        };
        let reveal = || SessionCommand::RevealCredential {
            password_version: 3,
            by: by.clone(),
            at: t(5),
        };
        let activated: SessionEvent = SessionActivated {
            session_id: sid(),
            at: t(1),
        }
        .into();
        given::<Session>([checked_out(60)])
            .when(reveal())
            .then_expect_error(DomainError::SessionNotActive);
        given::<Session>([checked_out(60), activated.clone()])
            .when(reveal())
            .then_expect([CredentialRevealed {
                session_id: sid(),
                technician_id: nik_id(),
                computer_id: computer_id(),
                account: AccountName::parse("msp-nik").unwrap(),
                password_version: 3,
                by: by.clone(),
                at: t(5),
            }
            .into()]);
        let checked_in: SessionEvent = SessionCheckedIn {
            session_id: sid(),
            computer_id: computer_id(),
            reason: CheckInReason::Manual,
            by: by.clone(),
            at: t(4),
        }
        .into();
        given::<Session>([checked_out(60), activated, checked_in])
            .when(reveal())
            .then_expect_error(DomainError::SessionNotActive);
    }

    #[test]
    fn a_session_expires_only_once_its_time_is_up() {
        let expire = |minute| SessionCommand::CheckIn {
            reason: CheckInReason::Expired,
            by: Actor::System,
            at: t(minute),
        };
        given::<Session>([checked_out(60)])
            .when(expire(59))
            .then_expect_error(DomainError::ExpiryNotReached { expires_at: t(60) });
        let events = given::<Session>([checked_out(60)])
            .when(expire(60))
            .events();
        assert!(
            matches!(&events[..], [SessionEvent::SessionCheckedIn(e)] if e.reason == CheckInReason::Expired)
        );
    }

    #[test]
    fn a_revoked_session_during_provisioning_is_checked_in() {
        let events = given::<Session>([checked_out(60)])
            .when(SessionCommand::CheckIn {
                reason: CheckInReason::Revoked,
                by: admin(),
                at: t(2),
            })
            .events();
        assert!(
            matches!(&events[..], [SessionEvent::SessionCheckedIn(e)] if e.reason == CheckInReason::Revoked)
        );
    }

    #[test]
    fn a_closed_session_ignores_late_commands() {
        let closed = [
            checked_out(60),
            SessionCheckedIn {
                session_id: sid(),
                computer_id: computer_id(),
                reason: CheckInReason::Manual,
                by: admin(),
                at: t(5),
            }
            .into(),
        ];
        given::<Session>(closed.clone())
            .when(SessionCommand::Activate { at: t(6) })
            .then_expect_nothing();
        given::<Session>(closed)
            .when(SessionCommand::CheckIn {
                reason: CheckInReason::Revoked,
                by: admin(),
                at: t(7),
            })
            .then_expect_nothing();
        given::<Session>([])
            .when(SessionCommand::Activate { at: t(6) })
            .then_expect_error(DomainError::SessionNotFound);
    }
}
