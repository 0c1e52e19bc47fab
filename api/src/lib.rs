//! The Latchkey server's application layer, shared by the `latchkey` binary and its tests.
//!
//! UNFINISHED (issue 3): only the command path exists so far; the HTTP API, projections,
//! process-manager runner, secrets and expiry scheduler are still to come.

pub mod commands;
