//! What an agent calls: enroll with a one-time token, receive its computer's provisioning
//! requests (long poll or event feed), report what it verified, and the offline-login
//! secrets, logins, lockouts and admin-group inventory.

use crate::tokens::TOKEN_PATTERN;
use chrono::{DateTime, Utc};
use latchkey_domain::computer::{AccountObservation, Operation, OsKind};
use latchkey_domain::ids::{ComputerId, RequestId, TechnicianId, TenantId};
use latchkey_domain::names::{AccountName, ClaimedName, FailureReason, GroupName, Hostname};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use uuid::Uuid;

#[derive(Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Enrollment {
    /// The one-time enrollment token.
    #[schemars(extend("pattern" = TOKEN_PATTERN))]
    pub token: String,
    pub hostname: Hostname,
    pub os: OsKind,
    /// The machine's admin group (e.g. `sudo`, `wheel`), used where the tenant's policy
    /// names none. Optional: Windows defaults to `Administrators`.
    #[serde(default)]
    pub admin_group: Option<GroupName>,
}

impl std::fmt::Debug for Enrollment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrollment")
            .field("token", &"<redacted>")
            .field("hostname", &self.hostname)
            .field("os", &self.os)
            .field("admin_group", &self.admin_group)
            .finish()
    }
}

/// An enrolled computer and its agent's credential.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct Enrolled {
    pub computer_id: ComputerId,
    pub tenant_id: TenantId,
    /// `Authorization: Bearer <agent_token>` on every agent call.
    #[schemars(extend("pattern" = TOKEN_PATTERN))]
    pub agent_token: String,
    pub note: String,
}

impl std::fmt::Debug for Enrolled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enrolled")
            .field("computer_id", &self.computer_id)
            .field("tenant_id", &self.tenant_id)
            .field("agent_token", &"<redacted>")
            .finish_non_exhaustive()
    }
}

// `Op` is the operation's type: the server sends `Operation`s; an agent may read each as
// plain JSON, so one operation it does not know does not hide the others.
/// The provisioning requests the agent has not reported on yet.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "AgentCommands")]
pub struct AgentCommands<Op = Operation> {
    pub commands: Vec<AgentCommand<Op>>,
}

/// One provisioning request as the agent receives it.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "AgentCommand")]
pub struct AgentCommand<Op = Operation> {
    pub request_id: RequestId,
    pub attempt: u32,
    pub operation: Op,
    /// For `rotate_password`: the password to set (the agent hashes it itself).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

impl<Op: std::fmt::Debug> std::fmt::Debug for AgentCommand<Op> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCommand")
            .field("request_id", &self.request_id)
            .field("attempt", &self.attempt)
            .field("operation", &self.operation)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The data of a feed event: a `commands` event's (as the long poll answers), or an `end`
/// event's.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FeedData {
    Commands(AgentCommands),
    End(FeedEnded),
}

/// Why the feed ends.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FeedEnded {
    pub reason: String,
}

/// What the agent reports about one request: `outcome` `succeeded` with what it `verified`
/// on the machine, or `failed` with the `reason`. (A flat struct rather than a tagged enum,
/// so a bad field is named in the problem.)
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Report {
    #[schemars(range(min = 1))]
    pub request_id: u64,
    pub outcome: ReportOutcome,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified: Option<AccountObservation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<FailureReason>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReportOutcome {
    Succeeded,
    Failed,
}

/// A report taken: how many events it recorded (0 when it was known already).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Recorded {
    pub request_id: RequestId,
    pub recorded: usize,
}

/// What the agent needs for offline logins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AgentOfflineSecrets {
    /// The group an offline login adds the account to.
    pub admin_group: GroupName,
    /// How long an offline login lasts at most.
    pub max_session_minutes: u32,
    pub secrets: Vec<AgentOfflineSecret>,
}

/// One offline secret as the agent keeps it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AgentOfflineSecret {
    pub account: AccountName,
    /// The named account's technician (their username is what they type at the agent);
    /// `None` for the shared account.
    pub technician_id: Option<TechnicianId>,
    pub username: Option<String>,
    pub generation: u32,
    /// Base32, as in the technician's authenticator (SHA1, 6 digits, 30 s).
    pub secret: String,
}

impl std::fmt::Debug for AgentOfflineSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentOfflineSecret")
            .field("account", &self.account)
            .field("technician_id", &self.technician_id)
            .field("username", &self.username)
            .field("generation", &self.generation)
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineLogin {
    /// The agent's own id for this login; uploading it again changes nothing.
    pub login_id: Uuid,
    pub account: AccountName,
    pub technician_id: Option<Uuid>,
    /// The name the person gave at a shared-account login (older agents leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub claimed_by: Option<ClaimedName>,
    pub generation: u32,
    /// The group the agent added the account to (older agents leave it out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("default" = null))]
    pub admin_group: Option<GroupName>,
    pub used_at: DateTime<Utc>,
    pub until: DateTime<Utc>,
}

/// An offline login taken: how many events it recorded (0 when it was known already).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OfflineLoginRecorded {
    pub login_id: Uuid,
    pub recorded: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OfflineLockout {
    /// The agent's own id for this lockout; uploading it again changes nothing.
    pub lockout_id: Uuid,
    pub account: AccountName,
    pub technician_id: Option<Uuid>,
    /// Wrong codes that led to it (1 to 1000).
    #[schemars(range(min = 1, max = 1000))]
    pub failures: u32,
    pub locked_at: DateTime<Utc>,
    pub locked_until: DateTime<Utc>,
}

/// An offline lockout taken: how many events it recorded (0 when it was known already).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct OfflineLockoutRecorded {
    pub lockout_id: Uuid,
    pub recorded: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Inventory {
    pub group: GroupName,
    /// Local account names, at most 1000, each 1 to 64 characters.
    #[schemars(
        length(max = 1000),
        inner(
            length(min = 1, max = 64),
            regex(pattern = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$")
        )
    )]
    pub members: BTreeSet<String>,
}

/// Whether the inventory changed what the server knew.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InventoryTaken {
    pub changed: bool,
}
