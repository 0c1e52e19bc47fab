//! API tokens (issued, listed, rotated) and the one-time enrollment tokens of agents.

use chrono::{DateTime, Utc};
use latchkey_domain::ids::{ComputerId, TechnicianId, TenantId};
use latchkey_domain::names::Email;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// A token id as the token text and the listings write it: 32 lowercase hex digits.
pub const TOKEN_ID_PATTERN: &str = "^[0-9a-f]{32}$";

/// An API token's text: `lk_`, its id, `_`, and 43 base64url characters of secret.
pub const TOKEN_PATTERN: &str = "^lk_[0-9a-f]{32}_[A-Za-z0-9_-]{43}$";

/// The longest maximum token lifetime a server may be configured with: 100 years.
pub const LONGEST_TOKEN_LIFETIME_SECONDS: u64 = 100 * 365 * 86_400;

/// The kind of role a token carries, as the API names it (`msp_admin`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RoleKind {
    /// Everything, across all tenants.
    MspAdmin,
    /// Administers one tenant.
    TenantAdmin,
    /// Checks out access to the computers of their tenants.
    Technician,
    /// Reads the audit trail and events: of one tenant, or of all.
    Auditor,
    /// An enrolled agent: its own computer only (its token comes from enrolling).
    Agent,
}

impl RoleKind {
    pub const ALL: [RoleKind; 5] = [
        RoleKind::MspAdmin,
        RoleKind::TenantAdmin,
        RoleKind::Technician,
        RoleKind::Auditor,
        RoleKind::Agent,
    ];

    /// The names of [`RoleKind::ALL`], in order.
    pub const NAMES: [&'static str; 5] = [
        RoleKind::MspAdmin.as_str(),
        RoleKind::TenantAdmin.as_str(),
        RoleKind::Technician.as_str(),
        RoleKind::Auditor.as_str(),
        RoleKind::Agent.as_str(),
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            RoleKind::MspAdmin => "msp_admin",
            RoleKind::TenantAdmin => "tenant_admin",
            RoleKind::Technician => "technician",
            RoleKind::Auditor => "auditor",
            RoleKind::Agent => "agent",
        }
    }
}

impl fmt::Display for RoleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RoleKind {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        RoleKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == text)
            .ok_or_else(|| format!("role must be one of {}", RoleKind::NAMES.join(", ")))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// `msp_admin`, `tenant_admin`, `technician` or `auditor` (agents get theirs by enrolling).
    #[schemars(extend("enum" = ["msp_admin", "tenant_admin", "technician", "auditor"]))]
    pub role: String,
    pub tenant_id: Option<Uuid>,
    pub technician_id: Option<Uuid>,
    /// Who will hold it, an e-mail address, recorded as the actor of what they do. For a
    /// technician token it is the technician's own address and may be left out.
    pub name: Option<Email>,
    /// Seconds until the token expires: at most the server's maximum token lifetime; the
    /// server's default lifetime when absent.
    #[schemars(range(min = 1, max = LONGEST_TOKEN_LIFETIME_SECONDS))]
    pub expires_in: Option<u64>,
}

/// A new or rotated API token, its secret shown once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct IssuedToken {
    #[schemars(extend("pattern" = TOKEN_ID_PATTERN))]
    pub token_id: String,
    #[schemars(with = "String", extend("enum" = RoleKind::NAMES))]
    pub role: RoleKind,
    /// Who holds it, recorded as the actor of what they do.
    pub name: String,
    /// `Authorization: Bearer <token>`.
    #[schemars(extend("pattern" = TOKEN_PATTERN))]
    pub token: String,
    /// `null`: never.
    pub expires_at: Option<DateTime<Utc>>,
    pub note: String,
}

/// Lists API tokens: who holds each, its role and scope, when it was created, last used
/// (to the minute), rotated, revoked, and when it expires; never a secret or a hash. MSP
/// admins and all-tenant auditors see every token; tenant admins and tenant auditors their
/// tenant's tenant-admin and auditor tokens; technicians their own.
/// API tokens as listed; never a secret.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// Seconds until the rotated token expires (at most the server's maximum token
    /// lifetime); the server's default lifetime when absent.
    #[schemars(range(min = 1, max = LONGEST_TOKEN_LIFETIME_SECONDS))]
    pub expires_in: Option<u64>,
}

/// A token as listed: who holds it and what it may do, never its secret or hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TokenInfo {
    /// As in the token text (`lk_<token id>_…`): 32 lowercase hex digits.
    #[serde(serialize_with = "simple_id")]
    #[schemars(with = "String", extend("pattern" = TOKEN_ID_PATTERN))]
    pub token_id: Uuid,
    /// Who holds it (an e-mail address, or `agent:<computer id>`).
    pub holder: String,
    /// `msp_admin`, `tenant_admin`, `technician`, `auditor` or `agent`.
    #[schemars(with = "String", extend("enum" = RoleKind::NAMES))]
    pub role: RoleKind,
    /// The tenant, technician or computer it is confined to (`null`: all tenants).
    pub scope: Option<TokenScopeView>,
    /// `live`, `expired` or `revoked`.
    #[schemars(extend("enum" = ["live", "expired", "revoked"]))]
    pub status: String,
    pub created_at: Option<DateTime<Utc>>,
    /// To the minute at best: see [`LAST_USED_EVERY`].
    pub last_used_at: Option<DateTime<Utc>>,
    /// `null`: never (agents' credentials).
    pub expires_at: Option<DateTime<Utc>>,
    pub rotated_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn simple_id<S: serde::Serializer>(id: &Uuid, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(&id.simple())
}

/// The scope of a listed token, as `{"tenant_id": …}`, `{"technician_id": …}` or
/// `{"computer_id": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TokenScopeView {
    Tenant { tenant_id: TenantId },
    Technician { technician_id: TechnicianId },
    Computer { computer_id: ComputerId },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NewEnrollmentToken {
    /// Minutes until the token expires: 1 to 10080 (7 days); 60 when absent.
    #[schemars(range(min = 1, max = 10080))]
    pub expires_in_minutes: Option<u32>,
}

/// A one-time enrollment token, shown once.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EnrollmentTokenIssued {
    pub token_id: Uuid,
    pub tenant_id: TenantId,
    /// Give it to the computer's agent (`latchkey-agent enroll --token …`).
    #[schemars(extend("pattern" = TOKEN_PATTERN))]
    pub token: String,
    pub expires_at: DateTime<Utc>,
    pub note: String,
}
