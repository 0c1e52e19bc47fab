//! The Latchkey server's HTTP side and start-up, shared by the `latchkey` binary and its tests.
//! What the server does is in the application layer, `latchkey-app` (`api/app`); what it keeps
//! besides the event log and the read models is in its own stores, `latchkey-server-stores`
//! (`api/stores`). This crate turns requests into calls of the one and answers of the other.
//!
//! - `http`: the REST API (thin handlers, the bearer-token extractor `http::Caller`), its
//!   OpenAPI document and `Idempotency-Key`;
//! - `problem`: RFC 9457 errors; `metrics`: Prometheus;
//! - `ratelimit`: failed authentications counted per client and token id, 429 past the limit;
//! - `tls`: HTTPS with a certificate read again when its files change;
//! - `config`: settings and the config file; `datadir`: the data directory, private to the
//!   server's user;
//! - `cli`: the admin and auditor client commands the binary also runs (crate `latchkey-cli`).

pub mod cli;
pub mod config;
pub mod datadir;
pub mod http;
pub mod metrics;
pub mod problem;
pub mod ratelimit;
pub mod tls;
