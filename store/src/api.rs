//! The types and the trait every backend implements. Revisions are 0-based per stream,
//! like KurrentDB; positions order the whole log (`$all`).

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A stream name such as `tenant-<uuid>`. Non-empty, at most 256 bytes, no control
/// characters, and not starting with `$` (reserved for system streams like `$all`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StreamName(String);

/// What the writer expects the stream to look like before its append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedState {
    /// Append whatever the stream's state.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (have at least one event).
    StreamExists,
    /// The stream's last event must have exactly this revision.
    Exact(u64),
}

/// A place in the global order. KurrentDB has a commit and a prepare position; PostgreSQL
/// orders by (transaction id, sequence); the embedded store has one writer, so both parts are
/// the same sequence number there. Ordered lexicographically (commit, then prepare).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub struct Position {
    pub commit: u64,
    pub prepare: u64,
}

/// Who and why, carried by every event (DESIGN.md §3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Who caused the event, e.g. `user:admin@msp.example`, `agent:<computer id>`, `system`.
    pub actor: String,
    /// The id shared by every event of one user request or flow.
    pub correlation_id: Uuid,
    /// The id of the event or command that directly caused this one.
    pub causation_id: Option<Uuid>,
}

/// An event to append. `payload` is the JSON encoding of the event body, stored verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
    pub metadata: EventMetadata,
}

/// A SHA-256 link of a stream's hash chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Hash(pub [u8; 32]);

/// An event as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub stream: StreamName,
    pub revision: u64,
    pub position: Position,
    pub event_type: String,
    pub schema_version: u32,
    pub payload: Vec<u8>,
    pub metadata: EventMetadata,
    /// Assigned by the store when the event was appended (microsecond precision).
    pub recorded_at: DateTime<Utc>,
    /// The hash of the previous event of the same stream; `None` for revision 0.
    pub prev_hash: Option<Hash>,
    /// `hash_chain::link(prev_hash, this event)`.
    pub hash: Hash,
}

/// What a successful append returns (KurrentDB's `WriteResult`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The revision of the last event now in the stream.
    pub next_expected_revision: u64,
    /// The global position of the last event of this append.
    pub position: Position,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("stream {stream} was expected to be {expected:?} but its last revision is {actual:?}")]
    WrongExpectedState {
        stream: StreamName,
        expected: ExpectedState,
        actual: Option<u64>,
    },
    #[error("event id {id} was already appended with different content or to another place")]
    DuplicateEventId { id: Uuid },
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    #[error("invalid stream name: {0}")]
    InvalidStreamName(String),
    #[error("the event store is unavailable: {0}")]
    Unavailable(String),
    /// The disk (or the database server's) is full: nothing of the append was written, and
    /// appends succeed again once space is freed, without a restart. Reads go on.
    #[error("the event store's storage is full, so nothing was written: {0}")]
    Full(String),
    #[error("the event store is corrupt: {0}")]
    Corrupt(String),
}

#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` atomically (all or none) if the stream is in the `expected` state.
    /// Idempotent by event id: re-appending a batch whose ids were all already appended, in
    /// the same order and to the same stream, succeeds without writing and returns the
    /// original result, whatever the `expected` state now says. A batch that only partly
    /// matches earlier ids fails with `DuplicateEventId`. Returns once the events are durable.
    /// An empty batch, or one naming the same event id twice, fails with `InvalidAppend`
    /// (an empty append has no last event whose position it could report).
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError>;

    /// Up to `max_count` events of `stream` with revision >= `from_revision`, in revision
    /// order. A stream that does not exist reads as empty.
    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Up to `max_count` events of `$all` strictly after `after` (`None`: from the start),
    /// in global order. Never returns an event while an event with a lower position may still
    /// commit (no gaps for catch-up readers).
    async fn read_all(
        &self,
        after: Option<Position>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError>;

    /// Resolves when events after `after` may be readable: at once if some already are,
    /// otherwise on the next commit or after a backend-chosen poll interval. Spurious wake-ups
    /// are allowed; subscriptions re-read with `read_all`.
    async fn wait_for_events_after(&self, after: Option<Position>);
}

/// The longest stream name accepted, in bytes.
pub const MAX_STREAM_NAME_LEN: usize = 256;

impl StreamName {
    /// Parses a stream name, rejecting the values the type's documentation rules out.
    pub fn new(name: impl Into<String>) -> Result<Self, StoreError> {
        let name = name.into();
        match stream_name_problem(&name) {
            None => Ok(Self(name)),
            Some(problem) => Err(StoreError::InvalidStreamName(format!(
                "{problem} (got {})",
                quoted_prefix(&name)
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn stream_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("a stream name must not be empty")
    } else if name.len() > MAX_STREAM_NAME_LEN {
        Some("a stream name must be at most 256 bytes long")
    } else if name.starts_with('$') {
        Some("a stream name must not start with '$', which is reserved for system streams")
    } else if name.chars().any(char::is_control) {
        Some("a stream name must not contain control characters")
    } else {
        None
    }
}

/// Echoes a rejected value safely: escaped (so control characters cannot forge log lines)
/// and cut short (so a huge value cannot flood an error message).
fn quoted_prefix(value: &str) -> String {
    const SHOWN: usize = 64;
    match value.char_indices().nth(SHOWN) {
        Some((cut, _)) => format!("{:?}…", &value[..cut]),
        None => format!("{value:?}"),
    }
}

impl TryFrom<String> for StreamName {
    type Error = StoreError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl TryFrom<&str> for StreamName {
    type Error = StoreError;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl std::str::FromStr for StreamName {
    type Err = StoreError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl From<StreamName> for String {
    fn from(name: StreamName) -> Self {
        name.0
    }
}

impl AsRef<str> for StreamName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

// Lets maps keyed by `StreamName` be queried with a `&str`; `String` and `str` hash alike.
impl std::borrow::Borrow<str> for StreamName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for StreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ExpectedState {
    /// Whether a stream whose last revision is `actual` (`None`: no stream) satisfies this
    /// expectation.
    pub fn is_satisfied_by(self, actual: Option<u64>) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => actual.is_none(),
            Self::StreamExists => actual.is_some(),
            Self::Exact(revision) => actual == Some(revision),
        }
    }
}

impl Position {
    pub const fn new(commit: u64, prepare: u64) -> Self {
        Self { commit, prepare }
    }
}

/// KurrentDB's notation, so positions read the same whichever backend printed them.
impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "C:{}/P:{}", self.commit, self.prepare)
    }
}

impl Hash {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Display for Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_follow_the_documented_rules() {
        assert!(StreamName::new("tenant-3f2a").is_ok());
        assert!(StreamName::new("x".repeat(MAX_STREAM_NAME_LEN)).is_ok());
        for bad in ["", "$all", "tenant\n-1", "a\u{7f}b"] {
            assert!(
                matches!(StreamName::new(bad), Err(StoreError::InvalidStreamName(_))),
                "{bad:?} should be rejected"
            );
        }
        assert!(StreamName::new("x".repeat(MAX_STREAM_NAME_LEN + 1)).is_err());
    }

    #[test]
    fn a_rejected_stream_name_is_echoed_escaped_and_short() {
        let long = format!("evil\n{}", "y".repeat(1000));
        let message = StreamName::new(long).map(|_| ()).unwrap_err().to_string();
        assert!(message.contains("evil\\n"), "{message}");
        assert!(message.len() < 300, "{message}");
    }

    #[test]
    fn stream_names_round_trip_through_serde_and_reject_bad_input() {
        let name = StreamName::new("session-1").expect("valid");
        let json = serde_json::to_string(&name).expect("serializes");
        assert_eq!(json, "\"session-1\"");
        let back: StreamName = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, name);
        assert!(serde_json::from_str::<StreamName>("\"$all\"").is_err());
    }

    #[test]
    fn expected_states_match_the_stream_they_describe() {
        assert!(ExpectedState::Any.is_satisfied_by(None));
        assert!(ExpectedState::Any.is_satisfied_by(Some(3)));
        assert!(ExpectedState::NoStream.is_satisfied_by(None));
        assert!(!ExpectedState::NoStream.is_satisfied_by(Some(0)));
        assert!(!ExpectedState::StreamExists.is_satisfied_by(None));
        assert!(ExpectedState::StreamExists.is_satisfied_by(Some(0)));
        assert!(ExpectedState::Exact(2).is_satisfied_by(Some(2)));
        assert!(!ExpectedState::Exact(2).is_satisfied_by(Some(1)));
        assert!(!ExpectedState::Exact(0).is_satisfied_by(None));
    }

    #[test]
    fn positions_order_by_commit_then_prepare_and_print_like_kurrentdb() {
        assert!(Position::new(1, 9) < Position::new(2, 0));
        assert!(Position::new(2, 1) < Position::new(2, 2));
        assert_eq!(Position::new(7, 7).to_string(), "C:7/P:7");
    }
}
