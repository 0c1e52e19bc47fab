//! The Latchkey server's application layer, shared by the `latchkey` binary and its tests.
//!
//! - `commands`: the one command path (load with a state cache, decide, append, retry);
//! - `http`: the REST API, its OpenAPI document and idempotency keys;
//! - `runner`: the process managers over the read models; `scheduler`: expiry and retries;
//! - `secrets`: the encrypted secret store; `auth`: hashed API and enrollment tokens;
//! - `snapshots`: stored states of long streams, so a restart does not fold years of events;
//! - `ratelimit`: failed authentications counted per client and token id, 429 past the limit;
//! - `problem`: RFC 9457 errors; `metrics`: Prometheus; `replay`: read-model rebuilds;
//! - `cli`: the admin and auditor client commands (crate `latchkey-cli`); `config`: settings
//!   and the config file;
//! - `datadir`: the data directory, private to the server's user;
//! - `fault`: crashes on purpose at named points, for the tests (`LATCHKEY_TEST_CRASH_AT`);
//! - `storage`: where the token, secret and idempotency tables live (SQLite or PostgreSQL);
//! - `tls`: HTTPS with a certificate read again when its files change;
//! - `technicians`: registering (unique names) and offboarding (tokens revoked) technicians;
//! - `wakeups`: long polls wait on their own stream and are woken by its events only.

pub mod auth;
pub mod cli;
pub mod commands;
pub mod config;
pub mod datadir;
pub mod fault;
pub mod health;
pub mod http;
pub mod metrics;
pub mod problem;
pub mod ratelimit;
pub mod replay;
pub mod runner;
pub mod scheduler;
pub mod secrets;
pub mod snapshots;
pub mod technicians;
pub mod tls;
pub mod wakeups;
