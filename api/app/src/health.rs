//! What the server can do right now, for `/healthz` and `/metrics`: the process managers
//! (and the scheduler) run, wait to lead, or are failing and being restarted with back-off.
//! A failure there (a database restart, a full disk, a lost leadership) no longer stops the
//! server: HTTP keeps serving what it can, and the supervisor in `main` restarts them.

use chrono::{DateTime, Utc};
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The process managers' state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "process_managers", rename_all = "snake_case")]
pub enum ProcessManagers {
    /// Starting, or (several servers) waiting to lead: another server runs them.
    Waiting,
    /// Running here.
    Running,
    /// Failed; restarted after `retry_at`. `reason` is the last error (never a secret).
    Failing {
        reason: String,
        since: DateTime<Utc>,
        retry_at: DateTime<Utc>,
    },
}

#[derive(Debug)]
pub struct Health {
    state: Mutex<ProcessManagers>,
    restarts: AtomicU64,
    /// Since when writes find the storage full (a 507 was answered), until a write succeeds.
    storage_full_since: Mutex<Option<DateTime<Utc>>>,
}

impl Default for Health {
    fn default() -> Self {
        Self {
            state: Mutex::new(ProcessManagers::Waiting),
            restarts: AtomicU64::new(0),
            storage_full_since: Mutex::new(None),
        }
    }
}

impl Health {
    pub fn process_managers(&self) -> ProcessManagers {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, state: ProcessManagers) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = state;
    }

    /// Records a failure: degraded until the next run proves steady. Keeps the first
    /// failure's time while failures repeat.
    pub fn failed(&self, reason: String, retry_at: DateTime<Utc>) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let since = match &*state {
            ProcessManagers::Failing { since, .. } => *since,
            _ => Utc::now(),
        };
        *state = ProcessManagers::Failing {
            reason,
            since,
            retry_at,
        };
    }

    /// How many times the process managers failed and were restarted since start-up.
    pub fn restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    pub fn is_degraded(&self) -> bool {
        matches!(self.process_managers(), ProcessManagers::Failing { .. })
    }

    /// A write found the storage full (keeps the first time while it stays full).
    pub fn storage_full(&self) {
        self.storage_full_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(Utc::now);
    }

    /// A write succeeded: the storage has room (again).
    pub fn storage_has_room(&self) {
        *self
            .storage_full_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Since when writes have found the storage full, if the last one did.
    pub fn storage_full_since(&self) -> Option<DateTime<Utc>> {
        *self
            .storage_full_since
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_failures_keep_the_first_time_and_count_every_restart() {
        let health = Health::default();
        assert!(!health.is_degraded());
        let later = Utc::now() + chrono::Duration::seconds(1);
        health.failed("57P01".into(), later);
        let ProcessManagers::Failing { since: first, .. } = health.process_managers() else {
            panic!()
        };
        health.failed("connection refused".into(), later);
        let ProcessManagers::Failing { since, reason, .. } = health.process_managers() else {
            panic!()
        };
        assert_eq!((since, reason.as_str()), (first, "connection refused"));
        assert_eq!(health.restarts(), 2);
        health.set(ProcessManagers::Running);
        assert!(!health.is_degraded());
    }

    #[test]
    fn storage_stays_full_from_the_first_refused_write_until_a_write_succeeds() {
        let health = Health::default();
        assert_eq!(health.storage_full_since(), None);
        health.storage_full();
        let since = health.storage_full_since().expect("full");
        health.storage_full();
        assert_eq!(health.storage_full_since(), Some(since));
        health.storage_has_room();
        assert_eq!(health.storage_full_since(), None);
    }
}
