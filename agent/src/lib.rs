//! The Latchkey endpoint agent (DESIGN.md §5): enrollment, the daemon that carries out its
//! computer's provisioning requests exactly once and reports what it verified, offline login
//! with a technician's TOTP code, and the local-account backends (`os`).

pub mod client;
pub mod daemon;
pub mod enroll;
pub mod executor;
pub mod journal;
pub mod offline;
pub mod os;
pub mod state;
