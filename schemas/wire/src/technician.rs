//! What a technician calls: check out a computer, follow the session, reveal its credential,
//! get the offline TOTP secret, check in.

use chrono::{DateTime, Utc};
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{AccountName, Reason, TicketRef};
use latchkey_domain::policy::LoginMode;
use latchkey_domain::session::CheckInReason;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SessionView {
    pub session_id: SessionId,
    pub tenant_id: TenantId,
    pub technician_id: TechnicianId,
    pub computer_id: ComputerId,
    pub login_mode: LoginMode,
    pub account: AccountName,
    /// `provisioning`, `active`, `checked_in` or `failed`.
    #[schemars(extend("enum" = ["provisioning", "active", "checked_in", "failed"]))]
    pub status: String,
    pub check_in_reason: Option<CheckInReason>,
    pub failure: Option<String>,
    pub checked_out_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckOutRequest {
    pub reason: Option<Reason>,
    pub ticket: Option<TicketRef>,
    /// Shorter than the computer's maximum session length if wanted; a longer wish is
    /// refused (422 naming `duration_minutes`), never quietly shortened.
    #[schemars(range(min = 1, max = 10080))]
    pub duration_minutes: Option<u32>,
}

/// A revealed password.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct Credential {
    pub session_id: SessionId,
    pub account: AccountName,
    pub password: String,
    pub password_version: u32,
    /// When the session ends (and the password is rotated again).
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("session_id", &self.session_id)
            .field("account", &self.account)
            .field("password", &"<redacted>")
            .field("password_version", &self.password_version)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// A technician's offline TOTP secret on one computer.
#[derive(Clone, Serialize, Deserialize, JsonSchema)]
pub struct OfflineSecret {
    pub computer_id: ComputerId,
    /// The account the secret logs into.
    pub account: AccountName,
    pub generation: u32,
    /// For an authenticator app (SHA1, 6 digits, 30 s).
    #[schemars(extend("pattern" = "^otpauth://totp/"))]
    pub otpauth_uri: String,
    /// The same URI as a QR code (SVG).
    pub qr_svg: String,
}

impl std::fmt::Debug for OfflineSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineSecret")
            .field("computer_id", &self.computer_id)
            .field("account", &self.account)
            .field("generation", &self.generation)
            .field("otpauth_uri", &"<redacted>")
            .finish_non_exhaustive()
    }
}
