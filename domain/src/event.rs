//! How domain events become stored records and back. Every event type has a stable name and
//! a schema version chosen here, never derived from a Rust path, so renaming a type does not
//! change what is in the log. Old versions stay decodable forever (upcast on read).

use crate::ids::ComputerId;
use crate::names::Email;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Time as it arrives in a command; the domain never reads a clock.
pub type Timestamp = chrono::DateTime<chrono::Utc>;

/// Who caused an event (also in the store metadata; here because it is part of the fact).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Actor {
    /// A person (MSP admin, tenant admin, technician, auditor), by e-mail address.
    User { email: Email },
    /// The endpoint agent of a computer.
    Agent { computer_id: ComputerId },
    /// Latchkey itself (session expiry, process managers).
    System,
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User { email } => write!(f, "{email}"),
            Actor::Agent { computer_id } => write!(f, "the agent of computer {computer_id}"),
            Actor::System => f.write_str("Latchkey"),
        }
    }
}

/// Name, version and JSON Schema of one event type, for `schemas/` and for validation.
#[derive(Clone, Copy)]
pub struct EventDescriptor {
    pub event_type: &'static str,
    pub version: u32,
    pub schema: fn() -> schemars::Schema,
}

impl EventDescriptor {
    /// The file name of this event's schema in `schemas/events/`.
    pub fn file_name(&self) -> String {
        format!("{}.v{}.json", self.event_type, self.version)
    }
}

impl fmt::Debug for EventDescriptor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} v{}", self.event_type, self.version)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("unknown event type {0}")]
    UnknownType(String),
    #[error("event type {event_type} has no schema version {version}")]
    UnknownVersion { event_type: String, version: u32 },
    #[error("event {event_type} v{version} does not match its schema: {reason}")]
    Invalid {
        event_type: String,
        version: u32,
        reason: String,
    },
}

/// An aggregate's event enum: its variants' names, versions and JSON bodies.
pub trait Event: Sized + Clone + fmt::Debug + PartialEq {
    fn event_type(&self) -> &'static str;
    fn schema_version(&self) -> u32;
    /// The event body as stored (the type and version travel beside it).
    fn to_json(&self) -> serde_json::Value;
    /// Decodes a stored body; `Ok(None)` if the type belongs to another aggregate.
    fn from_json(
        event_type: &str,
        version: u32,
        payload: serde_json::Value,
    ) -> Result<Option<Self>, DecodeError>;
    /// Whether `event_type` is one of this enum's types.
    fn handles(event_type: &str) -> bool;
    /// Every event type of this enum, at its current version.
    fn descriptors() -> Vec<EventDescriptor>;
}

/// Declares an aggregate's event enum from its event structs, each with its stored name and
/// current schema version: `TenantEvent { TenantRegistered = "TenantRegistered" v1, … }`.
macro_rules! domain_events {
    ($(#[$doc:meta])* $enum:ident { $($ty:ident = $name:literal v $version:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub enum $enum {
            $($ty($ty)),+
        }

        $(
            impl From<$ty> for $enum {
                fn from(event: $ty) -> Self {
                    $enum::$ty(event)
                }
            }
        )+

        impl $crate::event::Event for $enum {
            fn event_type(&self) -> &'static str {
                match self {
                    $($enum::$ty(_) => $name),+
                }
            }

            fn schema_version(&self) -> u32 {
                match self {
                    $($enum::$ty(_) => $version),+
                }
            }

            fn to_json(&self) -> serde_json::Value {
                let encoded = match self {
                    $($enum::$ty(event) => serde_json::to_value(event)),+
                };
                // Event bodies are plain structs of strings, numbers and string-keyed maps.
                encoded.expect("domain events always serialise")
            }

            fn from_json(
                event_type: &str,
                version: u32,
                payload: serde_json::Value,
            ) -> Result<Option<Self>, $crate::event::DecodeError> {
                match event_type {
                    $(
                        $name => {
                            if version != $version {
                                return Err($crate::event::DecodeError::UnknownVersion {
                                    event_type: event_type.to_owned(),
                                    version,
                                });
                            }
                            serde_json::from_value::<$ty>(payload)
                                .map(|event| Some($enum::$ty(event)))
                                .map_err(|e| $crate::event::DecodeError::Invalid {
                                    event_type: event_type.to_owned(),
                                    version,
                                    reason: e.to_string(),
                                })
                        }
                    )+
                    _ => Ok(None),
                }
            }

            fn handles(event_type: &str) -> bool {
                matches!(event_type, $($name)|+)
            }

            fn descriptors() -> Vec<$crate::event::EventDescriptor> {
                vec![$(
                    $crate::event::EventDescriptor {
                        event_type: $name,
                        version: $version,
                        schema: || schemars::schema_for!($ty),
                    }
                ),+]
            }
        }
    };
}
pub(crate) use domain_events;
