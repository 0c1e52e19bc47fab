//! The Latchkey server's application layer: everything the server does between a request (or
//! an event) and the event log, with no HTTP in it. The HTTP server (`latchkey-api`) and the
//! start-up call it; it never names a backend, an HTTP framework or a client.
//!
//! - `commands`: the one command path (load with a state cache, decide, append, retry);
//! - `runner`: the process managers over the read models, and the log follower;
//! - `scheduler`: expiry of sessions and retries of failed revocations;
//! - `replay`: read-model rebuilds;
//! - `technicians`: registering (unique names) and offboarding (tokens revoked) technicians;
//! - `wakeups`: long polls wait on their own stream and are woken by its events only;
//! - `health`: whether the process managers run, for `/healthz` and `/metrics`;
//! - `fault`: crashes on purpose at named points, for the tests (`LATCHKEY_TEST_CRASH_AT`).

pub mod commands;
pub mod fault;
pub mod health;
pub mod replay;
pub mod runner;
pub mod scheduler;
pub mod technicians;
pub mod wakeups;
