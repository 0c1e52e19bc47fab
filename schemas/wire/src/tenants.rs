//! What admins call: tenants and their PAM settings, technicians and their memberships,
//! computers, sessions, and the account-state views.

use crate::rows::{
    AdminDrift, ComputerRow, FailedRequest, ManagedAccountRow, SessionRow, StandingPrivilege,
    TechnicianRow, TenantRow,
};
use latchkey_domain::computer::{AccountObservation, AccountOwner, OsKind};
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{AccountName, Email, TenantName, Username};
use latchkey_domain::policy::{JitPolicy, LoginMode};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: TenantName,
    pub login_mode: LoginMode,
    /// The secure default (`JitPolicy::default()`) when absent.
    pub policy: Option<JitPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TenantView {
    pub tenant_id: TenantId,
    pub name: TenantName,
    pub login_mode: LoginMode,
    pub policy: JitPolicy,
    /// Shared mode: the tenant's shared account, `msp-NNNN`.
    pub shared_account: Option<AccountName>,
}

/// The tenants a caller may see.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewLoginMode {
    pub login_mode: LoginMode,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTechnician {
    pub username: Username,
    pub email: Email,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TechnicianView {
    pub technician_id: TechnicianId,
    pub username: Username,
    pub email: Email,
    /// The tenants they work for, as far as the caller may know: a tenant-scoped caller is
    /// shown its own tenant only.
    pub tenants: Vec<TenantId>,
    pub offboarded: bool,
}

/// Technicians as listed.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TechnicianList {
    pub technicians: Vec<TechnicianRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OffboardedView {
    #[serde(flatten)]
    pub technician: TechnicianView,
    /// How many of their API tokens this call revoked.
    pub tokens_revoked: usize,
}

/// The tenant's computers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ComputerList {
    pub computers: Vec<ComputerRow>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ComputerView {
    pub computer_id: ComputerId,
    pub tenant_id: TenantId,
    pub hostname: String,
    pub os: OsKind,
    pub decommissioned: bool,
    pub policy_override: Option<JitPolicy>,
    pub accounts: Vec<AccountView>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AccountView {
    pub account: String,
    pub owner: AccountOwner,
    pub wanted: bool,
    pub retiring: bool,
    pub password_version: u32,
    pub sessions: Vec<SessionId>,
    pub verified: Option<AccountObservation>,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyOverride {
    /// The computer's own policy, or `null` to follow the tenant's again.
    pub policy: Option<JitPolicy>,
}

/// The computer's own policy now (`null`: it follows the tenant's).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PolicyOverridden {
    pub computer_id: ComputerId,
    pub policy_override: Option<JitPolicy>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Decommissioned {
    pub computer_id: ComputerId,
    /// Always true.
    pub decommissioned: bool,
}

/// Sessions as listed, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionList {
    pub sessions: Vec<SessionRow>,
}

/// The tenant's managed accounts on every computer, as the agents verified them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ManagedAccounts {
    pub accounts: Vec<ManagedAccountRow>,
}

/// Admin-group memberships no open session explains.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StandingPrivileges {
    pub standing_privilege: Vec<StandingPrivilege>,
}

/// Admin-group members no open session explains, per the agents' inventories.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Drift {
    pub drift: Vec<AdminDrift>,
}

/// Failed revocations and clean-ups waiting for their next retry.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StuckRequests {
    pub stuck_requests: Vec<FailedRequest>,
}
