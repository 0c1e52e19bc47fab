//! Identifiers of aggregates and the streams they live in. Ids are chosen by the caller
//! (the API generates them), never inside the domain, so `decide` stays deterministic.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! aggregate_id {
    ($(#[$doc:meta])* $name:ident, $category:literal) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            JsonSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// The stream category, e.g. `tenant` for `tenant-<id>`.
            pub const CATEGORY: &'static str = $category;

            /// The name of this aggregate's stream, `<category>-<uuid>`.
            pub fn stream_name(&self) -> String {
                format!("{}-{}", $category, self.0)
            }

            /// Parses `<category>-<uuid>` back into an id.
            pub fn from_stream_name(stream: &str) -> Option<Self> {
                let rest = stream.strip_prefix($category)?.strip_prefix('-')?;
                Uuid::parse_str(rest).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }
    };
}

aggregate_id!(
    /// A customer tenant of the MSP.
    TenantId,
    "tenant"
);
aggregate_id!(
    /// An MSP technician (one across all the tenants they work in).
    TechnicianId,
    "technician"
);
aggregate_id!(
    /// An enrolled customer computer.
    ComputerId,
    "computer"
);
aggregate_id!(
    /// One just-in-time access session.
    SessionId,
    "session"
);

/// A provisioning request on one computer: its sequence number in that computer's stream of
/// requests (1, 2, 3, …). Deterministic, so process managers need no randomness to make one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The id of an agent's credential; the credential itself is never in an event.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct AgentKeyId(pub Uuid);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_names_round_trip_and_reject_other_categories() {
        let id = TenantId(Uuid::from_u128(7));
        let stream = id.stream_name();
        assert_eq!(stream, "tenant-00000000-0000-0000-0000-000000000007");
        assert_eq!(TenantId::from_stream_name(&stream), Some(id));
        assert_eq!(ComputerId::from_stream_name(&stream), None);
        assert_eq!(TenantId::from_stream_name("tenant-nope"), None);
    }
}
