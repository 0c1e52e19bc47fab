//! The machine's local accounts, behind one trait so the daemon's logic is the same on every
//! OS. The Linux backend (`linux`) drives the real shadow-utils (with `--root` for another
//! root) and ends an account's processes (`processes`); the in-memory one (`memory`) is an
//! extra fast backend for unit tests only.
//!
//! Every operation is an idempotent "ensure": creating an account that exists, adding a
//! member already in the group, removing one who is not, deleting an absent account all
//! succeed without change. What the agent reports is read back from the account files
//! afterwards ([`AccountBackend::observe`]), never inferred from a tool's exit code.

pub mod linux;
pub mod memory;
pub mod processes;

#[cfg(test)]
mod tests {
    #[test]
    fn the_admin_group_is_the_first_known_one_in_the_group_file() {
        let dir = tempfile::tempdir().unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("group"), "root:x:0:\nwheel:x:10:\nadmin:x:11:\n").unwrap();
        assert_eq!(
            super::detect_admin_group(dir.path()).as_deref(),
            Some("wheel")
        );
        std::fs::write(etc.join("group"), "root:x:0:\nsudo:x:27:nik\nwheel:x:10:\n").unwrap();
        assert_eq!(
            super::detect_admin_group(dir.path()).as_deref(),
            Some("sudo")
        );
        std::fs::write(etc.join("group"), "root:x:0:\nsudoers:x:5:\n").unwrap();
        assert_eq!(
            super::detect_admin_group(dir.path()),
            None,
            "whole names only"
        );
        assert_eq!(super::detect_admin_group(&dir.path().join("none")), None);
    }
}

/// What the machine's files say about one account.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Observed {
    pub present: bool,
    /// Supplementary groups the account is a member of (from the group file), sorted.
    pub groups: Vec<String>,
    /// The password hash in the shadow file (`None` if absent, locked `!`/`*` kept as is).
    pub password_hash: Option<String>,
    /// How many processes run as the account (or logged in as it: a `sudo` root shell of
    /// its login counts); 0 for an absent account.
    pub processes: usize,
    /// sudo holds a cached credential (a timestamp file) for the account.
    pub sudo_cached: bool,
}

/// Why an operation failed on the machine: a clear, secret-free reason for the server.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OsError {
    /// The tool is not installed or could not be started.
    #[error("{tool} could not be run: {reason}")]
    ToolMissing { tool: String, reason: String },
    /// The tool ran and failed (its exit status and stderr, which never holds a secret here
    /// because secrets are passed on stdin as hashes).
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: String,
        stderr: String,
    },
    #[error("group {group} does not exist on this machine")]
    GroupMissing { group: String },
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    /// The account still has processes, so it was not deleted (or its logons not ended).
    #[error("account {account} still has {processes} process(es) (pid {pids}): {why}")]
    Busy {
        account: String,
        processes: usize,
        /// The first few, comma-separated.
        pids: String,
        why: String,
    },
}

/// The machine's accounts. Names are already validated by the server (`AccountName`,
/// `GroupName`); implementations must still pass them as separate arguments, never through
/// a shell.
pub trait AccountBackend: Send + Sync {
    /// Ensures the account exists (no password usable yet, no groups of its own beyond the
    /// defaults), with a UID no Latchkey account had before and a private home directory.
    fn ensure_account(&self, account: &str) -> Result<(), OsError>;
    /// Sets the account's password to this crypt(3) hash (SHA-512 `$6$…`).
    fn set_password_hash(&self, account: &str, hash: &str) -> Result<(), OsError>;
    fn add_to_group(&self, account: &str, group: &str) -> Result<(), OsError>;
    fn remove_from_group(&self, account: &str, group: &str) -> Result<(), OsError>;
    /// Ensures the account is gone (its home directory too, if it has one). An account that
    /// still has processes is never deleted: with `end_logons` they are ended first, and if
    /// any remain (or `end_logons` is false) the result is [`OsError::Busy`].
    fn delete_account(&self, account: &str, end_logons: bool) -> Result<(), OsError>;
    /// Ends the account's logons and processes; [`OsError::Busy`] if some survive. An absent
    /// account has none.
    fn end_logons(&self, account: &str) -> Result<(), OsError>;
    /// Removes sudo's cached credentials for the account, so `sudo` asks for the password
    /// again (which has been rotated).
    fn clear_sudo(&self, account: &str) -> Result<(), OsError>;
    /// Reads the account back from the account files.
    fn observe(&self, account: &str) -> Result<Observed, OsError>;
    /// The members of a group, from the group file (for the admin-group inventory).
    fn group_members(&self, group: &str) -> Result<Vec<String>, OsError>;
}

/// The groups that grant admin rights on Linux distributions, in the order they are looked
/// for: Debian and Ubuntu (`sudo`), Fedora, RHEL and Arch (`wheel`), older Ubuntu (`admin`).
pub const LINUX_ADMIN_GROUPS: [&str; 3] = ["sudo", "wheel", "admin"];

/// This machine's admin group: the first of [`LINUX_ADMIN_GROUPS`] in `root`'s
/// `/etc/group`; `None` if none is there (or the file cannot be read: the server then needs
/// the tenant's policy to name one).
pub fn detect_admin_group(root: &std::path::Path) -> Option<String> {
    let groups = std::fs::read_to_string(root.join("etc/group")).ok()?;
    let names: Vec<&str> = groups
        .lines()
        .filter_map(|line| line.split(':').next())
        .collect();
    LINUX_ADMIN_GROUPS
        .iter()
        .find(|wanted| names.contains(wanted))
        .map(|found| (*found).to_owned())
}

/// Hashes a password for the shadow file: SHA-512 crypt (`$6$`) with a fresh random salt.
pub fn hash_password(password: &str) -> String {
    linux::hash_password(password)
}

/// Whether `password` matches a crypt(3) hash from the shadow file.
pub fn password_matches(password: &str, hash: &str) -> bool {
    linux::password_matches(password, hash)
}
