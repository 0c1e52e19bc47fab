//! The agent's state directory (`--state`): its credential, the accounts it manages, the
//! command journal, the offline secrets, the wrong offline codes and the buffered offline
//! logins and lockouts. The directory is
//! 0700 and every file 0600, owned by whoever runs the agent (root on a real machine).
//!
//! Everything is written durably before anyone relies on it: whole files are replaced
//! atomically (write a temporary file, fsync, rename, fsync the directory) and journal lines
//! are appended and fsynced. Nothing here ever holds a password in clear.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where the agent keeps its state unless told otherwise.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/latchkey-agent";

/// The agent's credential and the server it belongs to.
pub const CREDENTIAL: &str = "credential.json";
/// The accounts the agent created and manages ([`ManagedAccounts`]).
pub const ACCOUNTS: &str = "accounts.json";
/// Every UID a Latchkey account ever had on this machine (see `os::linux::UidRecord`).
pub const UIDS: &str = "uids.json";
/// The command journal, one JSON record a line (see `journal.rs`).
pub const JOURNAL: &str = "journal.jsonl";
/// The TOTP secrets last fetched from the server (see `offline.rs`).
pub const OFFLINE_SECRETS: &str = "offline-secrets.json";
/// Accepted TOTP steps and the offline grants in force (see `offline.rs`).
pub const OFFLINE_STATE: &str = "offline.json";
/// One file per offline login not yet uploaded to the server.
pub const OUTBOX: &str = "outbox";
/// Wrong offline-login codes per account and the lockouts in force (see `offline.rs`).
pub const OFFLINE_ATTEMPTS: &str = "offline-attempts.json";
/// One file per offline-login lockout not yet uploaded to the server.
pub const LOCKOUT_OUTBOX: &str = "outbox-lockouts";
/// Serializes changes to the state files between the daemon and `offline-login`.
const STATE_LOCK: &str = "state.lock";
/// Held by the one running daemon.
const DAEMON_LOCK: &str = "daemon.lock";

/// A state file or directory that could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}: cannot {action}: {source}")]
    Io {
        path: String,
        action: &'static str,
        source: io::Error,
    },
    #[error(
        "--state {path}: the directory may be read by other users (mode {mode:o}); make it \
         private (chmod 700 {path}) or choose a new directory"
    )]
    NotPrivate { path: String, mode: u32 },
    #[error("{path}: not a valid state file ({reason}); restore it from a backup or enroll again")]
    Corrupt { path: String, reason: String },
}

fn io_error<'a>(path: &'a Path, action: &'static str) -> impl FnOnce(io::Error) -> StateError + 'a {
    move |source| StateError::Io {
        path: path.display().to_string(),
        action,
        source,
    }
}

/// The state directory, created 0700 if missing.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// Opens the state directory, creating it 0700 if it is missing. An existing directory
    /// that others may read is refused rather than changed: `--state /tmp` must not make
    /// `/tmp` private, and a credential must not land where others can read it.
    pub fn open(path: &Path) -> Result<Self, StateError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io_error(path, "create the state directory"))?;
        let mode = std::fs::metadata(path)
            .map_err(io_error(path, "read the state directory's mode"))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(StateError::NotPrivate {
                path: path.display().to_string(),
                mode: mode & 0o777,
            });
        }
        for outbox in [OUTBOX, LOCKOUT_OUTBOX] {
            let outbox = path.join(outbox);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&outbox)
                .map_err(io_error(&outbox, "create the outbox"))?;
        }
        Ok(Self {
            root: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Reads a JSON state file; `None` if it does not exist.
    pub fn read_json<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>, StateError> {
        read_json(&self.file(name))
    }

    /// Replaces a JSON state file atomically and durably, mode 0600.
    pub fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        write_json(&self.file(name), value)
    }

    /// Appends one line to a file (mode 0600) and fsyncs it before returning.
    pub fn append_line(&self, name: &str, line: &str) -> Result<(), StateError> {
        let path = self.file(name);
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path, "open for appending"))?;
        // One write call for the whole line, so a crash leaves at most a torn last line.
        let mut bytes = line.as_bytes().to_vec();
        bytes.push(b'\n');
        file.write_all(&bytes)
            .map_err(io_error(&path, "append to"))?;
        file.sync_all().map_err(io_error(&path, "fsync"))
    }

    /// Waits for the exclusive lock on the state files; released when dropped. The daemon
    /// holds it while it changes accounts, `offline-login` for its whole run.
    pub fn lock(&self) -> Result<Lock, StateError> {
        let file = self.lock_file(STATE_LOCK)?;
        file.lock()
            .map_err(io_error(&self.file(STATE_LOCK), "lock"))?;
        Ok(Lock { _file: file })
    }

    /// The daemon's own lock, so two daemons never share a state directory: `None` if
    /// another process holds it.
    pub fn try_lock_daemon(&self) -> Result<Option<Lock>, StateError> {
        let file = self.lock_file(DAEMON_LOCK)?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Lock { _file: file })),
            Err(std::fs::TryLockError::WouldBlock) => Ok(None),
            Err(std::fs::TryLockError::Error(e)) => {
                Err(io_error(&self.file(DAEMON_LOCK), "lock")(e))
            }
        }
    }

    fn lock_file(&self, name: &str) -> Result<File, StateError> {
        let path = self.file(name);
        OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_error(&path, "open the lock file"))
    }

    /// The credential, or `None` if this computer was never enrolled.
    pub fn credential(&self) -> Result<Option<Credential>, StateError> {
        self.read_json(CREDENTIAL)
    }

    /// The managed-accounts record (empty if there is none yet).
    pub fn accounts(&self) -> Result<ManagedAccounts, StateError> {
        Ok(self.read_json(ACCOUNTS)?.unwrap_or_default())
    }

    pub fn save_accounts(&self, accounts: &ManagedAccounts) -> Result<(), StateError> {
        self.write_json(ACCOUNTS, accounts)
    }

    /// Removes a file durably (a missing file is fine).
    pub fn remove(&self, path: &Path) -> Result<(), StateError> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_error(path, "remove")(e)),
        }
        sync_parent(path)
    }
}

/// Held until dropped; the operating system releases it if the process dies.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, StateError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(path, "read")(e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| StateError::Corrupt {
            path: path.display().to_string(),
            reason: e.to_string(),
        })
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| StateError::Corrupt {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    text.push('\n');
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    {
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .map_err(io_error(&temporary, "create"))?;
        // An existing temporary file keeps its old mode: make sure.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io_error(&temporary, "make private (0600)"))?;
        file.write_all(text.as_bytes())
            .map_err(io_error(&temporary, "write"))?;
        file.sync_all().map_err(io_error(&temporary, "fsync"))?;
    }
    std::fs::rename(&temporary, path).map_err(io_error(path, "replace"))?;
    sync_parent(path)
}

/// Makes a rename or removal in `path`'s directory durable.
fn sync_parent(path: &Path) -> Result<(), StateError> {
    let parent = path.parent().unwrap_or(Path::new("."));
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error(parent, "fsync the directory"))
}

/// What `enroll` received: the agent's identity and credential.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// The server's base URL, without a trailing slash.
    pub server: String,
    pub computer_id: Uuid,
    pub tenant_id: Uuid,
    pub hostname: String,
    pub agent_token: String,
    pub enrolled_at: chrono::DateTime<chrono::Utc>,
    /// The `--ca-file` given at enrollment (absolute), trusted for the server's certificate
    /// besides the system's; `run --ca-file` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("server", &self.server)
            .field("computer_id", &self.computer_id)
            .field("tenant_id", &self.tenant_id)
            .field("hostname", &self.hostname)
            .field("agent_token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// The accounts Latchkey created on this machine: the only ones the agent changes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedAccounts {
    pub accounts: BTreeMap<String, ManagedAccount>,
}

impl ManagedAccounts {
    pub fn manages(&self, account: &str) -> bool {
        self.accounts.contains_key(account)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ManagedAccount {
    /// The password the agent last set, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<SetPassword>,
}

/// A password the agent set: the server's version of it (none for one set at an offline
/// login) and the hash written to the shadow file, so that a later reading of that file tells
/// whether it still holds this version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetPassword {
    pub version: Option<u32>,
    pub hash: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_directory_is_0700_and_files_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let state = StateDir::open(&path).unwrap();
        state.write_json("x.json", &vec![1, 2]).unwrap();
        state.append_line("x.log", "one").unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o700);
        assert_eq!(mode(&state.file("x.json")), 0o600);
        assert_eq!(mode(&state.file("x.log")), 0o600);
        assert_eq!(mode(&state.file(OUTBOX)), 0o700);
        assert_eq!(mode(&state.file(LOCKOUT_OUTBOX)), 0o700);
        assert_eq!(
            state.read_json::<Vec<i32>>("x.json").unwrap(),
            Some(vec![1, 2])
        );
        assert_eq!(state.read_json::<Vec<i32>>("none.json").unwrap(), None);
    }

    #[test]
    fn an_existing_directory_others_can_read_is_refused_not_changed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = StateDir::open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("mode 755") && err.contains("chmod 700"),
            "{err}"
        );
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn a_corrupt_file_is_named_not_taken_for_empty() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        std::fs::write(state.file(ACCOUNTS), "{not json").unwrap();
        let err = state.accounts().unwrap_err().to_string();
        assert!(err.contains("accounts.json"), "{err}");
    }

    #[test]
    fn the_credential_never_shows_its_token_in_debug_output() {
        let credential = Credential {
            server: "http://127.0.0.1:1".into(),
            computer_id: Uuid::nil(),
            tenant_id: Uuid::nil(),
            hostname: "h".into(),
            agent_token: "lk_secret".into(),
            enrolled_at: chrono::Utc::now(),
            ca_file: None,
        };
        assert!(!format!("{credential:?}").contains("lk_secret"));
    }
}
