//! The given/when/then harness for aggregate tests (after cqrs-es's test framework).
//! Every event a test feeds in or gets out is round-tripped through its stored JSON and
//! validated against its committed schema in `schemas/events/`, so a domain test also proves
//! the contract that agents and auditors in other languages rely on.

use crate::event::Event;
use crate::ids::{ComputerId, TechnicianId, TenantId};
use crate::names::Email;
use crate::{Actor, Aggregate, DomainError, Timestamp};
use chrono::TimeZone;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

pub struct Given<A: Aggregate> {
    state: A,
}

pub struct Outcome<A: Aggregate> {
    result: Result<Vec<A::Event>, DomainError>,
}

/// Starts a test from the events already in the aggregate's stream.
pub fn given<A: Aggregate>(events: impl IntoIterator<Item = A::Event>) -> Given<A> {
    let events: Vec<A::Event> = events.into_iter().collect();
    events.iter().for_each(check_contract);
    Given {
        state: A::replay(&events),
    }
}

impl<A: Aggregate> Given<A> {
    pub fn when(self, command: A::Command) -> Outcome<A> {
        let result = A::decide(&self.state, command);
        if let Ok(events) = &result {
            events.iter().for_each(check_contract);
        }
        Outcome { result }
    }
}

impl<A: Aggregate> Outcome<A> {
    #[track_caller]
    pub fn then_expect(self, expected: impl IntoIterator<Item = A::Event>) {
        let expected: Vec<A::Event> = expected.into_iter().collect();
        match self.result {
            Ok(events) => assert_eq!(events, expected),
            Err(e) => panic!("expected events {expected:#?}, got error: {e}"),
        }
    }

    #[track_caller]
    pub fn then_expect_nothing(self) {
        self.then_expect([]);
    }

    #[track_caller]
    pub fn then_expect_error(self, expected: DomainError) {
        match self.result {
            Ok(events) => panic!("expected error {expected}, got events {events:#?}"),
            Err(e) => assert_eq!(e, expected),
        }
    }

    /// The produced events, for tests that look at them piece by piece.
    #[track_caller]
    pub fn events(self) -> Vec<A::Event> {
        match self.result {
            Ok(events) => events,
            Err(e) => panic!("expected events, got error: {e}"),
        }
    }
}

fn schema_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../schemas/events")
}

type Validators = Mutex<HashMap<String, std::sync::Arc<jsonschema::Validator>>>;

fn validator(file: &str) -> std::sync::Arc<jsonschema::Validator> {
    static CACHE: OnceLock<Validators> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut cache = cache
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    cache
        .entry(file.to_owned())
        .or_insert_with(|| {
            let path = schema_dir().join(file);
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
                panic!(
                    "no committed schema {} ({e}); regenerate the schemas with \
                     `UPDATE_SCHEMAS=1 cargo test -p latchkey-schemas`",
                    path.display()
                )
            });
            let schema: serde_json::Value = serde_json::from_str(&text).expect("schema is JSON");
            std::sync::Arc::new(jsonschema::validator_for(&schema).expect("schema compiles"))
        })
        .clone()
}

/// The stored form of `event` decodes back to it and matches its committed JSON Schema.
#[track_caller]
pub fn check_contract<E: Event>(event: &E) {
    let json = event.to_json();
    let decoded = E::from_json(event.event_type(), event.schema_version(), json.clone())
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", event.event_type()))
        .expect("the enum handles its own types");
    assert_eq!(&decoded, event, "stored form does not round-trip");
    let file = format!("{}.v{}.json", event.event_type(), event.schema_version());
    let validator = validator(&file);
    let errors: Vec<String> = validator
        .iter_errors(&json)
        .map(|e| e.to_string())
        .collect();
    assert!(
        errors.is_empty(),
        "{file} rejects {json}: {errors:?} (schemas drifted? run \
         `UPDATE_SCHEMAS=1 cargo test -p latchkey-schemas`)"
    );
}

/// 2026-11-23 09:00 plus `minute` minutes.
pub fn t(minute: u32) -> Timestamp {
    chrono::Utc
        .with_ymd_and_hms(2026, 11, 23, 9, 0, 0)
        .single()
        .expect("a valid time")
        + chrono::Duration::minutes(i64::from(minute))
}

pub fn admin() -> Actor {
    Actor::User {
        email: Email::parse("admin@msp.example").expect("valid e-mail"),
    }
}

pub fn tenant_id() -> TenantId {
    TenantId(uuid::Uuid::from_u128(1))
}

pub fn nik_id() -> TechnicianId {
    TechnicianId(uuid::Uuid::from_u128(10))
}

pub fn ann_id() -> TechnicianId {
    TechnicianId(uuid::Uuid::from_u128(11))
}

pub fn computer_id() -> ComputerId {
    ComputerId(uuid::Uuid::from_u128(100))
}
