//! Crashes on purpose at a named point, for the tests that show a crash there loses nothing
//! and leaves nothing unsafe behind: `LATCHKEY_TEST_CRASH_AT=<point>` makes the server abort
//! (as `kill -9` would) when it gets there. Unset in production; read once.
//!
//! - `before-answer-stored`: a keyed request's events are durable, its answer not yet stored;
//! - `offboard-before-event`: an offboarding has revoked the technician's tokens, and not
//!   yet recorded the offboarding;
//! - `offboard-after-event`: an offboarding has recorded the offboarding, and not yet revoked
//!   the tokens issued meanwhile (its second revocation).

use std::sync::OnceLock;

pub const VARIABLE: &str = "LATCHKEY_TEST_CRASH_AT";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Point {
    BeforeAnswerStored,
    OffboardBeforeEvent,
    OffboardAfterEvent,
}

fn armed() -> Option<Point> {
    static ARMED: OnceLock<Option<Point>> = OnceLock::new();
    *ARMED.get_or_init(|| match std::env::var(VARIABLE).as_deref() {
        Ok("before-answer-stored") => Some(Point::BeforeAnswerStored),
        Ok("offboard-before-event") => Some(Point::OffboardBeforeEvent),
        Ok("offboard-after-event") => Some(Point::OffboardAfterEvent),
        _ => None,
    })
}

pub fn maybe_crash(point: Point) {
    if armed() == Some(point) {
        tracing::warn!(?point, "{VARIABLE}: aborting on purpose");
        std::process::abort();
    }
}
