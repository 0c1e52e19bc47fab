//! End-to-end test support (issue 3 onwards).
