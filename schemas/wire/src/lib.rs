//! The JSON request and response bodies of Latchkey's REST API (`/v1`), declared once for
//! the server that parses and answers them, the `latchkey` CLI and the agent that send and
//! read them. The server's `/openapi.json` is generated from these types (schemars), so the
//! document, the server and its clients cannot disagree.
//!
//! The bodies re-use the domain's value types (`latchkey_domain`: ids, names, policies,
//! operations), whose constructors are the rules the server applies, and they know no HTTP
//! framework, database or event store.
//!
//! - [`tenants`]: tenants, technicians, computers, sessions and the account-state views an
//!   admin calls;
//! - [`tokens`]: API tokens and enrollment tokens, and the roles tokens carry;
//! - [`technician`]: what a technician checks out, reveals and checks in;
//! - [`agent`]: enrollment, the request feed and the agent's reports;
//! - [`auditor`]: raw events, hash-chain verification and "who was an admin at time T";
//! - [`rows`]: the read models' rows, as the lists and the audit trail answer them.

pub mod agent;
pub mod auditor;
pub mod rows;
pub mod technician;
pub mod tenants;
pub mod tokens;

pub use agent::*;
pub use auditor::*;
pub use rows::*;
pub use technician::*;
pub use tenants::*;
pub use tokens::*;
