//! Latchkey's domain: the rules of just-in-time admin access (DESIGN.md §2) as pure
//! aggregates — `decide(&state, command) -> events` and `evolve(state, &event) -> state` —
//! and the process managers that connect them. No I/O, no clock, no randomness: time and
//! random values arrive inside commands, so every rule is a given/when/then test.

pub mod computer;
mod error;
pub mod event;
pub mod ids;
pub mod names;
pub mod policy;
pub mod process;
pub mod session;
pub mod technician;
pub mod technician_names;
pub mod tenant;

#[cfg(test)]
mod sim;
#[cfg(test)]
mod testing;

pub use error::{DomainError, ErrorKind};
pub use event::{Actor, DecodeError, Event, EventDescriptor, Timestamp};

/// One consistency boundary, stored as one stream `<CATEGORY>-<id>`.
pub trait Aggregate: Default + Clone + std::fmt::Debug {
    type Command;
    type Event: Event;
    /// The stream category, e.g. `tenant`.
    const CATEGORY: &'static str;

    /// What the command means given the state: the events to append, or why not.
    /// An empty list means the command is already satisfied (commands are idempotent).
    fn decide(state: &Self, command: Self::Command) -> Result<Vec<Self::Event>, DomainError>;

    /// The state after one more event. Never fails: events are facts.
    fn evolve(state: Self, event: &Self::Event) -> Self;

    /// Folds a stream's events into its state.
    fn replay<'a>(events: impl IntoIterator<Item = &'a Self::Event>) -> Self
    where
        Self::Event: 'a,
    {
        events.into_iter().fold(Self::default(), Self::evolve)
    }
}

/// Any event of any aggregate, for readers of the whole log (projections, process managers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnyEvent {
    Tenant(tenant::TenantEvent),
    Technician(technician::TechnicianEvent),
    Computer(computer::ComputerEvent),
    Session(session::SessionEvent),
    TechnicianNames(technician_names::TechnicianNamesEvent),
}

impl AnyEvent {
    pub fn event_type(&self) -> &'static str {
        match self {
            AnyEvent::Tenant(e) => e.event_type(),
            AnyEvent::Technician(e) => e.event_type(),
            AnyEvent::Computer(e) => e.event_type(),
            AnyEvent::Session(e) => e.event_type(),
            AnyEvent::TechnicianNames(e) => e.event_type(),
        }
    }

    pub fn schema_version(&self) -> u32 {
        match self {
            AnyEvent::Tenant(e) => e.schema_version(),
            AnyEvent::Technician(e) => e.schema_version(),
            AnyEvent::Computer(e) => e.schema_version(),
            AnyEvent::Session(e) => e.schema_version(),
            AnyEvent::TechnicianNames(e) => e.schema_version(),
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        match self {
            AnyEvent::Tenant(e) => e.to_json(),
            AnyEvent::Technician(e) => e.to_json(),
            AnyEvent::Computer(e) => e.to_json(),
            AnyEvent::Session(e) => e.to_json(),
            AnyEvent::TechnicianNames(e) => e.to_json(),
        }
    }

    /// Decodes a stored event of any type.
    pub fn from_json(
        event_type: &str,
        version: u32,
        payload: serde_json::Value,
    ) -> Result<Self, DecodeError> {
        fn decode<E: Event>(t: &str, v: u32, p: serde_json::Value) -> Result<E, DecodeError> {
            E::from_json(t, v, p)?.ok_or_else(|| DecodeError::UnknownType(t.to_owned()))
        }
        let (t, v, p) = (event_type, version, payload);
        if tenant::TenantEvent::handles(t) {
            decode(t, v, p).map(AnyEvent::Tenant)
        } else if technician::TechnicianEvent::handles(t) {
            decode(t, v, p).map(AnyEvent::Technician)
        } else if computer::ComputerEvent::handles(t) {
            decode(t, v, p).map(AnyEvent::Computer)
        } else if session::SessionEvent::handles(t) {
            decode(t, v, p).map(AnyEvent::Session)
        } else if technician_names::TechnicianNamesEvent::handles(t) {
            decode(t, v, p).map(AnyEvent::TechnicianNames)
        } else {
            Err(DecodeError::UnknownType(t.to_owned()))
        }
    }

    /// Every event type of the domain, at its current version.
    pub fn descriptors() -> Vec<EventDescriptor> {
        let mut all = tenant::TenantEvent::descriptors();
        all.extend(technician::TechnicianEvent::descriptors());
        all.extend(computer::ComputerEvent::descriptors());
        all.extend(session::SessionEvent::descriptors());
        all.extend(technician_names::TechnicianNamesEvent::descriptors());
        all
    }
}
