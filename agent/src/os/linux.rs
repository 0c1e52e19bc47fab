//! The Linux account backend: drives the real shadow-utils (`useradd`, `chpasswd -e`,
//! `gpasswd`, `userdel`), with `--root DIR` for another root and without it for `/` (so the
//! tools keep their own safety checks, such as `userdel`'s "user is currently used by
//! process"), and reads the account files under that root itself to decide what is already
//! true and what a tool really did.
//!
//! It must never go through a shell (names are separate arguments), never handle a password
//! (only a crypt(3) hash, passed to `chpasswd -e` on stdin), never delete an account whose
//! processes still run, and never give a new account a UID a Latchkey account had before.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Mutex, PoisonError};

use sha_crypt::password_hash::{self, PasswordHasher, PasswordVerifier};
use sha_crypt::ShaCrypt;
use yescrypt::Yescrypt;

use super::processes;
use super::{AccountBackend, Observed, OsError};
use crate::state;

/// The login shell of the accounts the agent creates.
const SHELL: &str = "/bin/bash";

/// The mode of the home directories the agent creates: the technician's files are theirs
/// alone (Debian's `useradd` makes them 0755, readable by every local user).
pub const HOME_MODE: u32 = 0o700;

/// Where sudo keeps its cached credentials (one file per user), under the root: sudo 1.8.10
/// and later use `/run/sudo/ts`, older ones and other systems the others.
const SUDO_TIMESTAMP_DIRS: [&str; 4] = [
    "run/sudo/ts",
    "var/run/sudo/ts",
    "var/lib/sudo/ts",
    "var/db/sudo/ts",
];

/// The UID range `useradd` uses when `login.defs` does not say (its own defaults).
const DEFAULT_UID_RANGE: (u32, u32) = (1000, 60000);

/// Where the tools are looked for after `PATH`: a daemon started with a bare `PATH` (no
/// `sbin`) must still find `useradd`.
const SYSTEM_TOOL_DIRS: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

/// 12 random bytes are 16 characters of crypt base64, the longest salt SHA-crypt uses (glibc
/// and libxcrypt silently cut a longer one).
const SALT_BYTES: usize = 12;

/// The machine's accounts as the shadow-utils see them under `root` (`/` on a real machine,
/// a throw-away directory in tests: see [`throwaway_root`]).
///
/// Every operation is an idempotent ensure: it reads the files first and runs a tool only if
/// something has to change, then reads them again. Success is what the files say afterwards,
/// not the tool's exit status (`userdel` exits 12 when it keeps a home directory the account
/// does not own, yet the account is gone).
pub struct LinuxShadow {
    root: PathBuf,
    /// `root` is this machine's `/`: the tools run without `--root`.
    on_host: bool,
    /// Every UID a Latchkey account ever had here (see [`UidRecord`]).
    uid_record: PathBuf,
    /// Searched in order for each tool.
    tool_dirs: Vec<PathBuf>,
    /// Serializes our own check-then-run sequences; the tools lock the files against others.
    busy: Mutex<()>,
}

impl LinuxShadow {
    /// The accounts under `root`, with the tools found on `PATH`, then in `/usr/sbin`,
    /// `/sbin`, `/usr/bin` and `/bin`. `uid_record` is the file (in the agent's state
    /// directory) that remembers every UID a Latchkey account had, so none is given twice.
    pub fn new(root: impl Into<PathBuf>, uid_record: impl Into<PathBuf>) -> Self {
        let mut tool_dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|path| std::env::split_paths(&path).collect())
            .unwrap_or_default();
        tool_dirs.extend(SYSTEM_TOOL_DIRS.iter().map(PathBuf::from));
        Self::with_tool_dirs(root, uid_record, tool_dirs)
    }

    /// The accounts under `root`, with the tools looked for in `tool_dir` only (a seam for
    /// tests: an empty directory makes every tool missing).
    pub fn with_tool_dir(
        root: impl Into<PathBuf>,
        uid_record: impl Into<PathBuf>,
        tool_dir: impl Into<PathBuf>,
    ) -> Self {
        Self::with_tool_dirs(root, uid_record, vec![tool_dir.into()])
    }

    fn with_tool_dirs(
        root: impl Into<PathBuf>,
        uid_record: impl Into<PathBuf>,
        tool_dirs: Vec<PathBuf>,
    ) -> Self {
        let root = root.into();
        // `/`, `//`, `/.`, or a link to `/`: all are the host.
        let on_host = std::fs::canonicalize(&root).is_ok_and(|real| real == Path::new("/"));
        Self {
            root,
            on_host,
            uid_record: uid_record.into(),
            tool_dirs,
            busy: Mutex::new(()),
        }
    }

    /// The root the tools work on.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `--root ROOT` for another root; nothing for `/`, so that the tools keep the checks
    /// they skip under `--root` (`userdel` refuses an account that has processes).
    fn root_args(&self) -> Vec<&OsStr> {
        if self.on_host {
            Vec::new()
        } else {
            vec![OsStr::new("--root"), self.root.as_os_str()]
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic elsewhere leaves no half-done state of ours behind: the files are the state.
        self.busy.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn etc(&self, file: &str) -> PathBuf {
        self.root.join("etc").join(file)
    }

    /// An account file that must exist (`passwd`, `group`).
    fn read_required(&self, file: &str) -> Result<String, OsError> {
        let path = self.etc(file);
        std::fs::read_to_string(&path).map_err(|e| unreadable(&path, &e))
    }

    /// An account file that may be absent (`shadow`): `None` then.
    fn read_optional(&self, file: &str) -> Result<Option<String>, OsError> {
        let path = self.etc(file);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(unreadable(&path, &e)),
        }
    }

    fn is_present(&self, account: &str) -> Result<bool, OsError> {
        Ok(passwd_password_field(&self.read_required("passwd")?, account).is_some())
    }

    /// The group's listed members, or `None` if the group does not exist.
    fn members(&self, group: &str) -> Result<Option<Vec<String>>, OsError> {
        Ok(group_members_in(&self.read_required("group")?, group))
    }

    fn is_member(&self, account: &str, group: &str) -> Result<Option<bool>, OsError> {
        Ok(self
            .members(group)?
            .map(|members| members.iter().any(|m| m == account)))
    }

    fn locate(&self, tool: &str) -> Result<PathBuf, OsError> {
        self.tool_dirs
            .iter()
            .map(|dir| dir.join(tool))
            .find(|path| is_executable(path))
            .ok_or_else(|| OsError::ToolMissing {
                tool: tool.to_string(),
                reason: format!(
                    "not found in {} (install the passwd package)",
                    self.tool_dirs
                        .iter()
                        .map(|d| d.display().to_string())
                        .collect::<Vec<_>>()
                        .join(":")
                ),
            })
    }

    /// Runs `tool --root ROOT ARGS…` (without `--root` when the root is `/`: with it, the
    /// tools skip checks such as `userdel`'s for running processes), feeding `stdin` if
    /// given. An `Err` only if it could not be run; its exit status is for the caller to judge
    /// against the files.
    fn run(&self, tool: &str, args: &[&OsStr], stdin: Option<&[u8]>) -> Result<Ran, OsError> {
        let program = self.locate(tool)?;
        let missing = |e: io::Error| OsError::ToolMissing {
            tool: tool.to_string(),
            reason: format!("cannot start {}: {e}", program.display()),
        };
        let mut child = Command::new(&program)
            .args(self.root_args())
            .args(args)
            // Messages in English whatever the machine's locale, for the server's operators.
            .env("LC_ALL", "C")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(missing)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that exits before reading breaks the pipe; its status then says why.
            let _ = pipe.write_all(input);
        }
        let output = child.wait_with_output().map_err(missing)?;
        Ok(Ran {
            tool: tool.to_string(),
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// What a tool did: judged afterwards against the files.
struct Ran {
    tool: String,
    status: ExitStatus,
    stderr: String,
}

impl Ran {
    /// `Ok` if the files show the wanted state, else the tool's failure (with `unmet` said
    /// too when it exited 0 yet the files disagree).
    fn judged(self, reached: bool, unmet: impl FnOnce() -> String) -> Result<(), OsError> {
        if reached {
            return Ok(());
        }
        let stderr = match (self.status.success(), self.stderr.is_empty()) {
            (false, _) => self.stderr,
            (true, true) => unmet(),
            (true, false) => format!("{}; {}", self.stderr, unmet()),
        };
        Err(OsError::ToolFailed {
            tool: self.tool,
            status: self.status.to_string(),
            stderr,
        })
    }
}

impl AccountBackend for LinuxShadow {
    fn ensure_account(&self, account: &str) -> Result<(), OsError> {
        check_name("useradd", "account", account)?;
        let _busy = self.lock();
        if self.is_present(account)? {
            return self.make_home_private(account);
        }
        // The UID is chosen and recorded (durably) before useradd runs, so a crash in
        // between can only waste a UID, never hand one out twice.
        let uid = self.next_uid(account)?;
        let uid_text = uid.to_string();
        // `-m`: a technician who logs in needs a home; `userdel -r` takes it away again.
        let ran = self.run(
            "useradd",
            &[
                OsStr::new("-m"),
                OsStr::new("-u"),
                OsStr::new(&uid_text),
                OsStr::new("-s"),
                OsStr::new(SHELL),
                OsStr::new(account),
            ],
            None,
        )?;
        let present = self.uid_of(account)? == Some(uid);
        ran.judged(present, || {
            format!(
                "{account} with uid {uid} is not in {}",
                self.etc("passwd").display()
            )
        })?;
        self.make_home_private(account)
    }

    fn set_password_hash(&self, account: &str, hash: &str) -> Result<(), OsError> {
        check_name("chpasswd", "account", account)?;
        check_hash(hash)?;
        let _busy = self.lock();
        if self.observe_unlocked(account)?.password_hash.as_deref() == Some(hash) {
            return Ok(());
        }
        let line = format!("{account}:{hash}\n");
        let ran = self.run("chpasswd", &[OsStr::new("-e")], Some(line.as_bytes()))?;
        let set = self.observe_unlocked(account)?.password_hash.as_deref() == Some(hash);
        ran.judged(set, || {
            format!(
                "the hash of {account} in {} is not the one given",
                self.etc("shadow").display()
            )
        })
    }

    fn add_to_group(&self, account: &str, group: &str) -> Result<(), OsError> {
        check_name("gpasswd", "account", account)?;
        check_name("gpasswd", "group", group)?;
        let _busy = self.lock();
        match self.is_member(account, group)? {
            None => return Err(group_missing(group)),
            Some(true) => return Ok(()),
            Some(false) => {}
        }
        let ran = self.run(
            "gpasswd",
            &[OsStr::new("-a"), OsStr::new(account), OsStr::new(group)],
            None,
        )?;
        let member = self.is_member(account, group)? == Some(true);
        ran.judged(member, || {
            format!(
                "{account} is not listed in {group} in {}",
                self.etc("group").display()
            )
        })
    }

    /// A group that does not exist has no members: removing from it is `Ok`, so a check-in
    /// is never blocked by a group someone deleted.
    fn remove_from_group(&self, account: &str, group: &str) -> Result<(), OsError> {
        check_name("gpasswd", "account", account)?;
        check_name("gpasswd", "group", group)?;
        let _busy = self.lock();
        if self.is_member(account, group)? != Some(true) {
            return Ok(());
        }
        let ran = self.run(
            "gpasswd",
            &[OsStr::new("-d"), OsStr::new(account), OsStr::new(group)],
            None,
        )?;
        let gone = self.is_member(account, group)? != Some(true);
        ran.judged(gone, || {
            format!(
                "{account} is still listed in {group} in {}",
                self.etc("group").display()
            )
        })
    }

    fn delete_account(&self, account: &str, end_logons: bool) -> Result<(), OsError> {
        check_name("userdel", "account", account)?;
        let _busy = self.lock();
        let Some(uid) = self.uid_of(account)? else {
            return Ok(());
        };
        // An account created before UIDs were recorded is recorded now, before it goes.
        self.record_uid(uid, account)?;
        self.end_or_refuse(account, uid, end_logons)?;
        // `-r` removes the home and mail spool; userdel keeps a home the account does not own.
        let ran = self.run("userdel", &[OsStr::new("-r"), OsStr::new(account)], None)?;
        let absent = !self.is_present(account)?;
        ran.judged(absent, || {
            format!("{account} is still in {}", self.etc("passwd").display())
        })
    }

    fn end_logons(&self, account: &str) -> Result<(), OsError> {
        check_name("kill", "account", account)?;
        let _busy = self.lock();
        match self.uid_of(account)? {
            Some(uid) => self.end_or_refuse(account, uid, true),
            None => Ok(()),
        }
    }

    fn clear_sudo(&self, account: &str) -> Result<(), OsError> {
        check_name("sudo", "account", account)?;
        for file in self.sudo_timestamps(account) {
            match std::fs::remove_file(&file) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(unreadable(&file, &e)),
            }
        }
        Ok(())
    }

    fn observe(&self, account: &str) -> Result<Observed, OsError> {
        let _busy = self.lock();
        self.observe_unlocked(account)
    }

    fn group_members(&self, group: &str) -> Result<Vec<String>, OsError> {
        self.members(group)?.ok_or_else(|| group_missing(group))
    }
}

impl LinuxShadow {
    fn observe_unlocked(&self, account: &str) -> Result<Observed, OsError> {
        let passwd = self.read_required("passwd")?;
        let groups = groups_of(&self.read_required("group")?, account);
        let password_field = passwd_password_field(&passwd, account);
        let password_hash = match password_field {
            None => None,
            // `x`: the hash is in the shadow file (`None` if that file or line is missing).
            Some("x") => self
                .read_optional("shadow")?
                .and_then(|shadow| shadow_hash(&shadow, account)),
            // Without a shadow file the tools keep the hash in the passwd file itself.
            Some(field) => Some(field.to_string()),
        };
        let processes = match passwd_uid(&passwd, account) {
            Some(uid) => processes::of_uid(uid)
                .map_err(|e| unreadable(Path::new("/proc"), &e))?
                .len(),
            None => 0,
        };
        Ok(Observed {
            present: password_field.is_some(),
            groups,
            password_hash,
            processes,
            sudo_cached: !self.sudo_timestamps(account).is_empty(),
        })
    }

    /// The account's UID from the passwd file, `None` if it does not exist.
    fn uid_of(&self, account: &str) -> Result<Option<u32>, OsError> {
        Ok(passwd_uid(&self.read_required("passwd")?, account))
    }

    /// Ends the account's processes if `end` says so; refuses (with how many remain and
    /// why) while any still run, so that no account is deleted under its processes.
    fn end_or_refuse(&self, account: &str, uid: u32, end: bool) -> Result<(), OsError> {
        let on_proc = |e: io::Error| unreadable(Path::new("/proc"), &e);
        let left = if end {
            let logind = self.on_host && processes::logind_runs(&self.root);
            processes::end(uid, account, logind).map_err(on_proc)?
        } else {
            processes::of_uid(uid).map_err(on_proc)?.len()
        };
        if left == 0 {
            return Ok(());
        }
        let pids = processes::of_uid(uid).map_err(on_proc)?;
        Err(OsError::Busy {
            account: account.to_string(),
            processes: left,
            pids: pids
                .iter()
                .take(5)
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", "),
            why: if end {
                "they survived SIGTERM and SIGKILL".to_string()
            } else {
                "the JIT policy does not end its logons; retried until they have ended".to_string()
            },
        })
    }

    /// The account's sudo timestamp files that exist under the root.
    fn sudo_timestamps(&self, account: &str) -> Vec<PathBuf> {
        SUDO_TIMESTAMP_DIRS
            .iter()
            .map(|dir| self.root.join(dir).join(account))
            .filter(|file| file.symlink_metadata().is_ok())
            .collect()
    }

    /// Makes the account's home directory [`HOME_MODE`] (whatever `useradd`'s `HOME_MODE` or
    /// `UMASK` said); a home outside the root's `/home`-like tree that does not exist is left.
    fn make_home_private(&self, account: &str) -> Result<(), OsError> {
        let passwd = self.read_required("passwd")?;
        let Some(home) = record(&passwd, account).and_then(|f| f.get(5).map(|h| h.to_string()))
        else {
            return Ok(());
        };
        let home = self.root.join(home.trim_start_matches('/'));
        match std::fs::symlink_metadata(&home) {
            Ok(meta) if meta.is_dir() => {
                if meta.permissions().mode() & 0o7777 != HOME_MODE {
                    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(HOME_MODE))
                        .map_err(|e| unreadable(&home, &e))?;
                }
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(unreadable(&home, &e)),
        }
    }

    /// The UID for a new Latchkey account: above every UID in the passwd file's range and
    /// every UID a Latchkey account ever had here, and not one any running process uses.
    /// It is recorded before it is returned.
    fn next_uid(&self, account: &str) -> Result<u32, OsError> {
        let (min, max) = uid_range(&self.read_optional("login.defs")?.unwrap_or_default());
        let passwd = self.read_required("passwd")?;
        let taken: std::collections::BTreeSet<u32> = records(&passwd)
            .filter_map(|fields| fields.get(2).and_then(|uid| uid.parse().ok()))
            .collect();
        let record = self.uid_record()?;
        let highest = taken
            .iter()
            .copied()
            .filter(|uid| (min..=max).contains(uid))
            .chain(record.uids.keys().copied())
            .max();
        let mut uid = highest.map_or(min, |h| h.saturating_add(1)).max(min);
        while taken.contains(&uid)
            || record.uids.contains_key(&uid)
            || !processes::of_uid(uid)
                .map_err(|e| unreadable(Path::new("/proc"), &e))?
                .is_empty()
        {
            uid = uid.saturating_add(1);
            if uid > max {
                break;
            }
        }
        if uid > max {
            return Err(refused(
                "useradd",
                format!(
                    "no UID left for {account}: every UID up to UID_MAX {max} is taken or was                      a Latchkey account's"
                ),
            ));
        }
        self.record_uid(uid, account)?;
        Ok(uid)
    }

    fn uid_record(&self) -> Result<UidRecord, OsError> {
        state::read_json::<UidRecord>(&self.uid_record)
            .map(Option::unwrap_or_default)
            .map_err(|e| OsError::Unreadable {
                path: self.uid_record.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Adds `uid` (of `account`) to the record, durably, unless it is there.
    fn record_uid(&self, uid: u32, account: &str) -> Result<(), OsError> {
        let mut record = self.uid_record()?;
        if record.uids.contains_key(&uid) {
            return Ok(());
        }
        record.uids.insert(uid, account.to_string());
        state::write_json(&self.uid_record, &record).map_err(|e| OsError::Unreadable {
            path: self.uid_record.display().to_string(),
            reason: e.to_string(),
        })
    }
}

/// Every UID a Latchkey account had on this machine, with the account's name: kept for good
/// in the agent's state directory, so no later account gets one of them (a process of a
/// deleted account, or a file it owned, must never become a new technician's).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UidRecord {
    pub uids: std::collections::BTreeMap<u32, String>,
}

/// `UID_MIN` and `UID_MAX` from a `login.defs` text, else `useradd`'s defaults.
fn uid_range(login_defs: &str) -> (u32, u32) {
    let value = |key: &str| {
        login_defs.lines().find_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some(key))
                .then(|| words.next().and_then(|v| v.parse::<u32>().ok()))
                .flatten()
        })
    };
    let (min, max) = (
        value("UID_MIN").unwrap_or(DEFAULT_UID_RANGE.0),
        value("UID_MAX").unwrap_or(DEFAULT_UID_RANGE.1),
    );
    if min <= max {
        (min, max)
    } else {
        DEFAULT_UID_RANGE
    }
}

/// Hashes a password for the shadow file: SHA-512 crypt (`$6$rounds=5000$SALT$…`, SALT being
/// 16 random characters), which every glibc and libxcrypt verifies.
pub fn hash_password(password: &str) -> String {
    // The operating system's random source failing is not something the agent can go on
    // without; no input can cause it.
    let salt = password_hash::try_generate_salt().expect("the OS random source failed");
    ShaCrypt::SHA512
        .hash_password_with_salt(password.as_bytes(), &salt[..SALT_BYTES])
        .expect("SHA-512 crypt accepts any password and a 12-byte salt")
        .to_string()
}

/// Whether `password` matches a crypt(3) hash: SHA-512 (`$6$`), SHA-256 (`$5$`) or yescrypt
/// (`$y$`, what Debian and Ubuntu write by default). A locked (`!…`), empty or other hash
/// matches nothing.
pub fn password_matches(password: &str, hash: &str) -> bool {
    let password = password.as_bytes();
    if hash.starts_with("$6$") || hash.starts_with("$5$") {
        ShaCrypt::default().verify_password(password, hash).is_ok()
    } else if hash.starts_with("$y$") {
        Yescrypt::default().verify_password(password, hash).is_ok()
    } else {
        false
    }
}

/// Fills `dir` with a throw-away root the shadow-utils accept as `--root`, for tests: never
/// point a test at the host's `/etc`.
///
/// Writes `dir/etc/` with copies of the host's `passwd`, `group`, `shadow`, `gshadow` and
/// `login.defs` (so `useradd` behaves as on this machine: a private group per user, aging
/// fields, the next free uid). Every password hash in the copied `shadow` and `gshadow` is
/// replaced by `*`, so no host secret is copied. A host file that is missing is replaced by a
/// minimal one (`root` only; no `login.defs`: the tools then use their defaults). Nothing else
/// is needed: `useradd -m` creates `dir/home/NAME` itself and `chpasswd -e` needs no PAM.
///
/// Each name in `groups` is then made a group if it is not one yet (a line `NAME:x:GID:` in
/// `group` and `NAME:!::` in `gshadow`, with a free system gid below 1000): "sudo" exists on
/// Debian, "wheel" or "Administrators" usually do not. Calling it again on the same `dir`
/// starts over from the host's files.
///
/// The tools `chroot` into `dir`, so using the root needs root privileges.
pub fn throwaway_root(dir: &Path, groups: &[&str]) -> io::Result<()> {
    let etc = dir.join("etc");
    std::fs::create_dir_all(&etc)?;
    let host = Path::new("/etc");
    copy_or(
        &host.join("passwd"),
        &etc.join("passwd"),
        "root:x:0:0:root:/root:/bin/bash\n",
        0o644,
        None,
    )?;
    copy_or(
        &host.join("group"),
        &etc.join("group"),
        "root:x:0:\n",
        0o644,
        None,
    )?;
    copy_or(
        &host.join("shadow"),
        &etc.join("shadow"),
        "root:*:19000:0:99999:7:::\n",
        0o640,
        Some(1),
    )?;
    copy_or(
        &host.join("gshadow"),
        &etc.join("gshadow"),
        "root:*::\n",
        0o640,
        Some(1),
    )?;
    match std::fs::copy(host.join("login.defs"), etc.join("login.defs")) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    for group in groups {
        let group_file = std::fs::read_to_string(etc.join("group"))?;
        if group_members_in(&group_file, group).is_some() {
            continue;
        }
        let used: Vec<u32> = records(&group_file)
            .filter_map(|fields| fields.get(2).and_then(|gid| gid.parse().ok()))
            .collect();
        let gid = (100..1000)
            .rev()
            .find(|gid| !used.contains(gid))
            .or_else(|| used.iter().max().map(|max| max + 1))
            .unwrap_or(1000);
        append_line(&etc.join("group"), &format!("{group}:x:{gid}:"))?;
        append_line(&etc.join("gshadow"), &format!("{group}:!::"))?;
    }
    Ok(())
}

/// Copies `from` to `to`, or writes `fallback` if `from` does not exist; with `scrub`, the
/// field at that index (the password hash) of every line becomes `*`.
fn copy_or(
    from: &Path,
    to: &Path,
    fallback: &str,
    mode: u32,
    scrub: Option<usize>,
) -> io::Result<()> {
    let text = match std::fs::read_to_string(from) {
        Ok(text) => text,
        Err(e) if e.kind() == io::ErrorKind::NotFound => fallback.to_string(),
        Err(e) => return Err(e),
    };
    let text = match scrub {
        None => text,
        Some(index) => text
            .lines()
            .map(|line| {
                let mut fields: Vec<&str> = line.split(':').collect();
                if let Some(field) = fields.get_mut(index) {
                    *field = "*";
                }
                fields.join(":") + "\n"
            })
            .collect(),
    };
    std::fs::write(to, text)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(mode))
}

fn append_line(path: &Path, line: &str) -> io::Result<()> {
    let mut text = std::fs::read_to_string(path)?;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(line);
    text.push('\n');
    std::fs::write(path, text)
}

/// Refuses a name a tool could take for an option or that would break a colon-separated
/// file, before anything runs. The server already validates names; this is the last guard
/// before a root-run tool. (Reported as `ToolFailed` with status "not run".)
pub(crate) fn check_name(tool: &str, kind: &str, name: &str) -> Result<(), OsError> {
    let bad = name.is_empty()
        || name.starts_with('-')
        || name.len() > 256
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, ':' | ',' | '/' | '\\'));
    if bad {
        return Err(refused(
            tool,
            format!(
                "refusing {kind} name {name:?}: it must be non-empty, not start with '-' and hold no \
                 whitespace, ':', ',', '/' or '\\'"
            ),
        ));
    }
    Ok(())
}

/// A hash goes on a `NAME:HASH` line: a colon or line break would let it say something else.
pub(crate) fn check_hash(hash: &str) -> Result<(), OsError> {
    if hash.is_empty() || hash.chars().any(|c| c == ':' || c.is_control()) {
        return Err(refused(
            "chpasswd",
            "refusing a password hash that is empty or holds ':' or a control character".into(),
        ));
    }
    Ok(())
}

fn refused(tool: &str, why: String) -> OsError {
    OsError::ToolFailed {
        tool: tool.to_string(),
        status: "not run".to_string(),
        stderr: why,
    }
}

fn group_missing(group: &str) -> OsError {
    OsError::GroupMissing {
        group: group.to_string(),
    }
}

fn unreadable(path: &Path, e: &io::Error) -> OsError {
    OsError::Unreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The colon-separated records of an account file, skipping blank lines, comments and NIS
/// `+`/`-` entries, which name no local account.
fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.is_empty() && !line.starts_with(['#', '+', '-']))
        .map(|line| line.split(':').collect())
}

/// The record whose first field is `name`.
fn record<'a>(text: &'a str, name: &str) -> Option<Vec<&'a str>> {
    records(text).find(|fields| fields.first() == Some(&name))
}

/// The password field of `account`'s passwd line (`x` when the hash is in shadow), or `None`
/// if the account does not exist.
fn passwd_password_field<'a>(passwd: &'a str, account: &str) -> Option<&'a str> {
    record(passwd, account).map(|fields| fields.get(1).copied().unwrap_or(""))
}

/// The UID of `account`'s passwd line.
fn passwd_uid(passwd: &str, account: &str) -> Option<u32> {
    record(passwd, account).and_then(|fields| fields.get(2).and_then(|uid| uid.parse().ok()))
}

/// The hash field of `account`'s shadow line, kept as is (`!`, `*`, `!$6$…`).
fn shadow_hash(shadow: &str, account: &str) -> Option<String> {
    record(shadow, account).and_then(|fields| fields.get(1).map(|hash| hash.to_string()))
}

/// The members listed on `group`'s line, sorted, or `None` if there is no such group. An
/// account whose primary group this is but who is not listed is not a member here.
fn group_members_in(group_file: &str, group: &str) -> Option<Vec<String>> {
    record(group_file, group).map(|fields| {
        let mut members: Vec<String> = fields
            .get(3)
            .map(|list| {
                list.split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        members.sort();
        members.dedup();
        members
    })
}

/// The groups whose member list holds `account`, sorted.
fn groups_of(group_file: &str, account: &str) -> Vec<String> {
    let mut groups: Vec<String> = records(group_file)
        .filter(|fields| {
            fields
                .get(3)
                .is_some_and(|list| list.split(',').any(|m| m == account))
        })
        .filter_map(|fields| fields.first().map(|name| name.to_string()))
        .collect();
    groups.sort();
    groups.dedup();
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    const GROUP: &str = "root:x:0:\n# a comment\n\nsudo:x:27:ada,bob\nada:x:1001:\n+nis\ndocker:x:998:bob\nstaff:x:50:ada\r\n";

    #[test]
    fn a_group_lists_its_members_but_not_those_whose_primary_group_it_is() {
        assert_eq!(
            group_members_in(GROUP, "sudo"),
            Some(vec!["ada".into(), "bob".into()])
        );
        assert_eq!(group_members_in(GROUP, "ada"), Some(vec![]));
        assert_eq!(group_members_in(GROUP, "wheel"), None);
        assert_eq!(group_members_in(GROUP, "+nis"), None);
    }

    #[test]
    fn an_account_is_in_the_groups_that_list_it_sorted() {
        assert_eq!(groups_of(GROUP, "ada"), vec!["staff", "sudo"]);
        assert_eq!(groups_of(GROUP, "bob"), vec!["docker", "sudo"]);
        assert_eq!(groups_of(GROUP, "ad"), Vec::<String>::new());
    }

    #[test]
    fn a_name_is_a_whole_first_field() {
        let passwd = "ada:x:1001:1001::/home/ada:/bin/bash\nadam:!:1002:1002::/home/adam:/bin/sh\n";
        assert_eq!(passwd_password_field(passwd, "ada"), Some("x"));
        assert_eq!(passwd_password_field(passwd, "adam"), Some("!"));
        assert_eq!(passwd_password_field(passwd, "ad"), None);
        assert_eq!(
            shadow_hash("ada:!$6$x$y:20000:0:99999:7:::\n", "ada").as_deref(),
            Some("!$6$x$y")
        );
    }

    #[test]
    fn the_tools_get_root_only_for_another_root_never_for_slash() {
        let record = std::env::temp_dir().join("latchkey-test-uids.json");
        for host in ["/", "//", "/.", "/usr/.."] {
            assert!(
                LinuxShadow::new(host, &record).root_args().is_empty(),
                "{host}"
            );
        }
        let other = tempfile::tempdir().unwrap();
        let backend = LinuxShadow::new(other.path(), &record);
        assert_eq!(
            backend.root_args(),
            vec![OsStr::new("--root"), other.path().as_os_str()]
        );
    }

    #[test]
    fn the_uid_range_is_login_defs_or_the_tools_defaults() {
        assert_eq!(uid_range(""), (1000, 60000));
        assert_eq!(
            uid_range("# UID_MIN 5\nUID_MIN\t\t 2000\nUID_MAX 3000\n"),
            (2000, 3000)
        );
        assert_eq!(uid_range("UID_MIN 9\nUID_MAX 3\n"), (1000, 60000));
    }

    #[test]
    fn names_that_a_tool_could_misread_are_refused() {
        for name in ["", "-rf", "a:b", "a,b", "a b", "a\nb", "../x", "a\\b"] {
            assert!(check_name("useradd", "account", name).is_err(), "{name:?}");
        }
        for name in ["ada", "lk-ada.1", "Administrators", "ada$"] {
            assert!(check_name("useradd", "account", name).is_ok(), "{name:?}");
        }
        assert!(check_hash("$6$salt$hash").is_ok());
        assert!(check_hash("$6$x\nroot:$6$y").is_err());
        assert!(check_hash("a:b").is_err());
        assert!(check_hash("").is_err());
    }
}
