//! Read models built from the global event order (DESIGN.md §4).
//!
//! UNFINISHED: the projections themselves (account state, audit trail, sessions, pending
//! agent commands) are issue 3's work; this crate only fixes the place in the layout and
//! the dependency direction (projections → store → domain).
