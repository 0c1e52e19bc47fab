//! UNFINISHED: being written.

use latchkey_domain::AnyEvent;
use latchkey_store::RecordedEvent;
use rusqlite::Transaction;

pub(crate) const SCHEMA: &str = "";

pub(crate) fn apply(
    _tx: &Transaction,
    _recorded: &RecordedEvent,
    _event: &AnyEvent,
) -> rusqlite::Result<()> {
    Ok(())
}
