//! What auditors (and admins within their scope) call: raw events as NDJSON, hash-chain
//! verification, and who was an admin on a computer at a given time.

use crate::rows::AdminAsOf;
use chrono::{DateTime, Utc};
use latchkey_domain::ids::ComputerId;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// 64 lowercase hex digits.
pub const HASH_PATTERN: &str = "^[0-9a-f]{64}$";

/// One stored event as an NDJSON line: everything an auditor needs to re-verify it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EventLine {
    /// `<commit>.<prepare>`
    #[schemars(extend("pattern" = "^[0-9]+\\.[0-9]+$"))]
    pub position: String,
    pub stream: String,
    pub revision: u64,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub recorded_at: DateTime<Utc>,
    pub metadata: EventLineMetadata,
    /// The event as stored; its schema is `schemas/events/<event_type>.v<schema_version>.json`.
    pub payload: serde_json::Value,
    /// Hex SHA-256 of the stream's previous event (`null` for the first).
    #[schemars(extend("pattern" = HASH_PATTERN))]
    pub prev_hash: Option<String>,
    #[schemars(extend("pattern" = HASH_PATTERN))]
    pub hash: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct EventLineMetadata {
    pub actor: String,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
}

/// The verdict on a hash chain: one stream's (`stream` named), or the whole log's.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema, Default)]
pub struct Verification {
    /// The stream verified, or the one where the chain breaks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    pub intact: bool,
    /// Broken: the first revision of `stream` that does not chain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// Broken: what is wrong there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Intact: how many events were checked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<u64>,
    /// The whole log, intact: how many streams.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub streams: Option<usize>,
    /// One stream, intact: the hash of its last event.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(extend("pattern" = HASH_PATTERN))]
    pub last_hash: Option<String>,
}

/// Who was in the computer's admin group at `at`, and through which session.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AdminsAt {
    pub computer_id: ComputerId,
    pub at: DateTime<Utc>,
    pub admins: Vec<AdminAsOf>,
}
