//! The Latchkey endpoint agent: its local-account backends (`os`).
//!
//! UNFINISHED (issue 4): enrollment, the request feed, the state journal and offline login
//! are being built.

pub mod os;
