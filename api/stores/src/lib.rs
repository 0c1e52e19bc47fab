//! The Latchkey server's own stores: what the server keeps besides the event log and the read
//! models, each table in its own SQLite file of the data directory or in the shared
//! PostgreSQL database (a `latchkey_sql::Place` the start-up gets from
//! `latchkey_store::Backend`). No HTTP and no async runtime here: callers run these on a
//! blocking thread.
//!
//! - `tokens`: API and enrollment tokens, stored hashed; the roles they grant and the
//!   permission checks of a [`tokens::Principal`];
//! - `secrets`: passwords and TOTP secrets, generated with a CSPRNG and stored encrypted;
//! - `snapshots`: stored states of long streams, so a restart does not fold years of events;
//! - `idempotency`: `Idempotency-Key` claims and the answers replayed to retries.

pub mod idempotency;
pub mod secrets;
pub mod snapshots;
pub mod tokens;
