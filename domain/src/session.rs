//! One just-in-time access session: checked out (provisioning) → active → checked in
//! (manually, at expiry, or revoked), or failed. Check-out decides which account the
//! technician gets under the tenant's login mode and the computer's effective JIT policy;
//! the computer then provisions it. A session never holds a credential.

use crate::computer::{AccessGrant, AccountOwner, Computer};
use crate::event::{domain_events, Actor, Timestamp};
use crate::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use crate::names::{AccountName, EphemeralDigits, FailureReason, GroupName, Reason, TicketRef};
use crate::policy::{CheckInAction, LoginMode, SessionLength};
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
        matches!(self.status, SessionStatus::Provisioning | SessionStatus::Active)
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
    Activate { at: Timestamp },
    /// From the process manager: the computer could not provide access.
    FailProvisioning { reason: FailureReason, at: Timestamp },
    CheckIn {
        reason: CheckInReason,
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

domain_events!(
    /// Everything that happens to a session.
    SessionEvent {
        SessionCheckedOut = "SessionCheckedOut" v 1,
        SessionActivated = "SessionActivated" v 1,
        SessionProvisioningFailed = "SessionProvisioningFailed" v 1,
        SessionCheckedIn = "SessionCheckedIn" v 1,
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
            if let Some(existing) = reuse.then(|| c.computer.reusable_account(technician_id)).flatten() {
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
    let profile = c.computer.profile.as_ref().ok_or(DomainError::ComputerNotEnrolled)?;
    if c.computer.decommissioned {
        return Err(DomainError::ComputerDecommissioned);
    }
    if profile.tenant_id != tenant_id {
        return Err(DomainError::ComputerOfOtherTenant);
    }
    let policy = c.computer.effective_policy(&c.tenant.policy);
    let (account, owner) = choose_account(&c)?;
    if let Some(existing) = c.computer.accounts.get(&account) {
        if existing.owner != owner {
            return Err(DomainError::AccountOwnedByOther { account });
        }
    }
    if !policy.provisioning_enabled() && !c.computer.has_usable_account(&account) {
        return Err(DomainError::AccountNotProvisioned { account });
    }
    let length = match c.duration {
        Some(wanted) => wanted.min(policy.max_session()),
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
        admin_group: policy.admin_group().clone(),
        on_check_in: policy.on_check_in(),
        rotate_on_check_in: policy.rotate_on_check_in(),
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
