//! Why `decide` said no. Each variant is one rule; `kind` tells the API which status to use.

use crate::ids::{RequestId, SessionId, TenantId};
use crate::names::{AccountName, Email, InvalidValue, Username};
use crate::Timestamp;

/// How a caller should treat a [`DomainError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The thing the command is about does not exist (HTTP 404).
    NotFound,
    /// The command conflicts with the current state (HTTP 409).
    Conflict,
    /// The command is well-formed but a rule forbids it (HTTP 422).
    Rejected,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("the tenant is not registered")]
    TenantNotRegistered,
    #[error("the tenant is already registered")]
    TenantAlreadyRegistered,
    #[error("the technician is not registered")]
    TechnicianNotRegistered,
    #[error("the technician is already registered")]
    TechnicianAlreadyRegistered,
    #[error(
        "username {username} is already taken: a username is never given to a second \
         technician, not even after the first was offboarded"
    )]
    UsernameTaken { username: Username },
    #[error(
        "e-mail address {email} is already taken (compared without regard to case): an \
         address is never given to a second technician, not even after the first was \
         offboarded"
    )]
    EmailTaken { email: Email },
    #[error("the technician has been offboarded")]
    TechnicianOffboarded,
    #[error("the technician is not a member of tenant {tenant_id}")]
    TechnicianNotInTenant { tenant_id: TenantId },
    #[error("the computer is not enrolled")]
    ComputerNotEnrolled,
    #[error("the computer is already enrolled")]
    ComputerAlreadyEnrolled,
    #[error("the computer has been decommissioned")]
    ComputerDecommissioned,
    #[error("the computer belongs to another tenant")]
    ComputerOfOtherTenant,
    #[error("the session already exists")]
    SessionAlreadyExists,
    #[error("the session does not exist")]
    SessionNotFound,
    #[error("the session is not active: credentials are shown only while it is")]
    SessionNotActive,
    #[error("there is no offline secret for you on this computer yet; check out once online")]
    NoOfflineSecret,
    #[error(
        "duration_minutes {wanted} is longer than this computer's maximum session of \
         {max_minutes} minutes"
    )]
    SessionLongerThanAllowed { wanted: u32, max_minutes: u32 },
    #[error(
        "this computer's agent did not report its admin group and the policy names none: set \
         admin_group in the tenant's or the computer's policy"
    )]
    AdminGroupUnknown,
    #[error("the session does not expire before {expires_at}")]
    ExpiryNotReached { expires_at: Timestamp },
    #[error(
        "JIT provisioning is disabled for this computer and account {account} does not exist \
         on it; enable provisioning or let an earlier session create the account"
    )]
    AccountNotProvisioned { account: AccountName },
    #[error("the tenant is in shared mode but has no shared account")]
    SharedAccountMissing,
    #[error("account {account} already exists on this computer; check out again")]
    AccountNameTaken { account: AccountName },
    #[error("account {account} on this computer belongs to someone else")]
    AccountOwnedByOther { account: AccountName },
    #[error("there is no provisioning request {request_id} on this computer")]
    UnknownRequest { request_id: RequestId },
    #[error("session {session_id} is not known on this computer")]
    UnknownSession { session_id: SessionId },
    #[error("account {account} is not a Latchkey account on this computer")]
    UnknownAccount { account: AccountName },
    #[error(transparent)]
    Invalid(#[from] InvalidValue),
}

impl DomainError {
    pub fn kind(&self) -> ErrorKind {
        use DomainError::*;
        match self {
            TenantNotRegistered
            | TechnicianNotRegistered
            | ComputerNotEnrolled
            | SessionNotFound
            | UnknownRequest { .. }
            | UnknownSession { .. }
            | UnknownAccount { .. } => ErrorKind::NotFound,
            TenantAlreadyRegistered
            | TechnicianAlreadyRegistered
            | ComputerAlreadyEnrolled
            | SessionAlreadyExists
            | UsernameTaken { .. }
            | EmailTaken { .. }
            | AccountNameTaken { .. } => ErrorKind::Conflict,
            TechnicianOffboarded
            | TechnicianNotInTenant { .. }
            | ComputerDecommissioned
            | ComputerOfOtherTenant
            | ExpiryNotReached { .. }
            | SessionLongerThanAllowed { .. }
            | AdminGroupUnknown
            | SessionNotActive
            | NoOfflineSecret
            | AccountNotProvisioned { .. }
            | AccountOwnedByOther { .. }
            | SharedAccountMissing
            | Invalid(_) => ErrorKind::Rejected,
        }
    }

    /// The request field the refusal is about, where it is about one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            DomainError::SessionLongerThanAllowed { .. } => Some("duration_minutes"),
            DomainError::AdminGroupUnknown => Some("admin_group"),
            DomainError::UsernameTaken { .. } => Some(Username::FIELD),
            DomainError::EmailTaken { .. } => Some(Email::FIELD),
            DomainError::Invalid(invalid) => Some(invalid.field),
            _ => None,
        }
    }
}
