//! The command journal (`journal.jsonl` in the state directory): what the agent did with
//! each provisioning request, one fsynced JSON line per step, so that every (request,
//! attempt) is applied at most once whatever crashes or restarts happen. It doubles as the
//! applied log: exactly one `applying` line per (request, attempt) that reached the machine.
//!
//! The protocol, per (request_id, attempt):
//! 1. `applying` is written (and fsynced) before any tool runs;
//! 2. `applied` or `failed` (with the reason) once the machine was read back;
//! 3. `reported` once the server answered 200 to the result.
//!
//! A request seen again after `applied`/`failed` is re-observed and re-reported, never
//! re-applied; one seen again after only `applying` (a crash while applying) is finished:
//! the machine is read first and a tool runs only if the change is not there yet. The
//! journal is append-only; it must never be rewritten in place.

use std::collections::HashMap;
use std::io;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::state::{StateDir, StateError, JOURNAL};

/// One delivery of a provisioning request: the server re-issues a failed revocation as a new
/// attempt of the same request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CommandKey {
    pub request_id: u64,
    pub attempt: u32,
}

impl std::fmt::Display for CommandKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request {} attempt {}", self.request_id, self.attempt)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Applying,
    Applied,
    Failed,
    Reported,
}

/// One line of the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub request_id: u64,
    pub attempt: u32,
    pub step: Step,
    /// With `applying`: the operation, as the server sent it (never a password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    /// With `failed`: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

impl Record {
    pub fn key(&self) -> CommandKey {
        CommandKey {
            request_id: self.request_id,
            attempt: self.attempt,
        }
    }
}

/// How a (request, attempt) ended on the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Applied,
    Failed(String),
}

/// Where a (request, attempt) stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Never seen: check, then apply.
    New,
    /// `applying` without an ending: the agent stopped while applying.
    Interrupted,
    /// Applied or failed; `reported` says whether the server has the result.
    Ended { ending: Ending, reported: bool },
}

/// The journal, loaded into memory and appended to.
pub struct Journal {
    state: StateDir,
    status: HashMap<CommandKey, Status>,
}

impl Journal {
    /// Reads the journal of a state directory. A torn last line (a crash while appending) is
    /// ignored; its step had not happened as far as anyone was told.
    pub fn open(state: &StateDir) -> Result<Self, StateError> {
        let mut journal = Self {
            state: state.clone(),
            status: HashMap::new(),
        };
        for record in read(state)? {
            journal.remember(&record);
        }
        Ok(journal)
    }

    pub fn status(&self, key: CommandKey) -> Status {
        self.status.get(&key).cloned().unwrap_or(Status::New)
    }

    /// Appends a step durably; returns only once it is on disk.
    pub fn record(
        &mut self,
        key: CommandKey,
        step: Step,
        detail: Option<String>,
    ) -> Result<(), StateError> {
        let (operation, reason) = match step {
            Step::Applying => (detail, None),
            Step::Failed => (None, detail),
            Step::Applied | Step::Reported => (None, None),
        };
        let record = Record {
            request_id: key.request_id,
            attempt: key.attempt,
            step,
            operation,
            reason,
            at: Utc::now(),
        };
        let line = serde_json::to_string(&record).map_err(|e| StateError::Corrupt {
            path: self.state.file(JOURNAL).display().to_string(),
            reason: e.to_string(),
        })?;
        self.state.append_line(JOURNAL, &line)?;
        self.remember(&record);
        Ok(())
    }

    fn remember(&mut self, record: &Record) {
        let key = record.key();
        let next = match (record.step, self.status(key)) {
            (Step::Applying, Status::New) => Status::Interrupted,
            (Step::Applying, other) => other,
            (Step::Applied, _) => Status::Ended {
                ending: Ending::Applied,
                reported: false,
            },
            (Step::Failed, _) => Status::Ended {
                ending: Ending::Failed(record.reason.clone().unwrap_or_default()),
                reported: false,
            },
            (Step::Reported, Status::Ended { ending, .. }) => Status::Ended {
                ending,
                reported: true,
            },
            (Step::Reported, other) => other,
        };
        self.status.insert(key, next);
    }
}

/// Every readable record of a state directory's journal, in order (for the daemon and for
/// anyone auditing exactly-once).
pub fn read(state: &StateDir) -> Result<Vec<Record>, StateError> {
    let path = state.file(JOURNAL);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StateError::Io {
                path: path.display().to_string(),
                action: "read",
                source: e,
            })
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut records = Vec::with_capacity(lines.len());
    for (number, line) in lines.iter().enumerate() {
        match serde_json::from_str::<Record>(line) {
            Ok(record) => records.push(record),
            Err(_) if number + 1 == lines.len() && !text.ends_with('\n') => {
                tracing::warn!(path = %path.display(), "ignoring a torn last journal line");
            }
            Err(e) => {
                return Err(StateError::Corrupt {
                    path: path.display().to_string(),
                    reason: format!("line {}: {e}", number + 1),
                })
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: CommandKey = CommandKey {
        request_id: 7,
        attempt: 1,
    };

    #[test]
    fn a_request_moves_from_applying_to_ended_to_reported_and_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let mut journal = Journal::open(&state).unwrap();
        assert_eq!(journal.status(KEY), Status::New);
        journal
            .record(
                KEY,
                Step::Applying,
                Some("make sure account a exists".into()),
            )
            .unwrap();
        assert_eq!(
            Journal::open(&state).unwrap().status(KEY),
            Status::Interrupted
        );
        journal.record(KEY, Step::Applied, None).unwrap();
        journal.record(KEY, Step::Reported, None).unwrap();
        let reopened = Journal::open(&state).unwrap();
        assert_eq!(
            reopened.status(KEY),
            Status::Ended {
                ending: Ending::Applied,
                reported: true
            }
        );
        let next = CommandKey { attempt: 2, ..KEY };
        assert_eq!(reopened.status(next), Status::New, "a new attempt is new");
    }

    #[test]
    fn a_failure_keeps_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let mut journal = Journal::open(&state).unwrap();
        journal
            .record(KEY, Step::Failed, Some("group wheel does not exist".into()))
            .unwrap();
        assert_eq!(
            Journal::open(&state).unwrap().status(KEY),
            Status::Ended {
                ending: Ending::Failed("group wheel does not exist".into()),
                reported: false
            }
        );
    }

    #[test]
    fn a_torn_last_line_is_ignored_but_a_corrupt_middle_line_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let mut journal = Journal::open(&state).unwrap();
        journal.record(KEY, Step::Applying, None).unwrap();
        let path = state.file(JOURNAL);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("{\"request_id\":7,\"att");
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            Journal::open(&state).unwrap().status(KEY),
            Status::Interrupted
        );
        text.push_str("\n{}\n");
        std::fs::write(&path, &text).unwrap();
        assert!(Journal::open(&state).is_err());
    }
}
