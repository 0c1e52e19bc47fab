//! The Latchkey server's application layer, shared by the `latchkey` binary and its tests.
//!
//! UNFINISHED (issue 3): built so far are the command path (`commands`), the process-manager
//! runner over the directory read model (`runner`), the encrypted secret store with password
//! and TOTP generation (`secrets`), hashed API tokens with roles (`auth`) and problem+json
//! errors (`problem`). Not yet: the HTTP endpoints and the bearer extractor, the admin-token
//! bootstrap in `serve`, the audit trail and account-state read models, `replay`, the expiry
//! scheduler and the CLI's admin commands.

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod http;
pub mod metrics;
pub mod problem;
pub mod replay;
pub mod runner;
pub mod scheduler;
pub mod secrets;
mod sqlite;
