//! The Latchkey server's application layer, shared by the `latchkey` binary and its tests.
//!
//! UNFINISHED (issue 3): built so far are the command path (`commands`), the process-manager
//! runner over the directory read model (`runner`) and the encrypted secret store with
//! password and TOTP generation (`secrets`). Not yet: the HTTP API and its authorization,
//! the audit trail and account-state read models, `replay`, the expiry scheduler, the CLI's
//! admin commands, and wiring the runner and secret store into `latchkey serve`.

pub mod commands;
pub mod runner;
pub mod secrets;
