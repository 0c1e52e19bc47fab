//! The account backends' contract, run against the real shadow-utils on a throw-away root
//! (never the host's `/etc`) and against the in-memory backend, so both keep the same
//! promises; then what only the Linux backend can show (the files, the tools, the hashes).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use latchkey_agent::os::linux::{throwaway_root, LinuxShadow};
use latchkey_agent::os::memory::MemoryAccounts;
use latchkey_agent::os::{hash_password, password_matches, AccountBackend, OsError};

/// A group every throw-away root and memory backend has ("sudo" on Debian).
const ADMIN: &str = "sudo";
/// A group added by `throwaway_root`, as Windows names it: Linux has none such.
const EXTRA: &str = "Administrators";
/// A group no backend has.
const MISSING: &str = "no-such-group";
const ACCOUNT: &str = "lk-test-ada";

/// The promises every backend keeps, whatever it runs on.
fn keeps_the_contract(backend: &dyn AccountBackend) {
    // ensure_account: created once, then a no-op; no password opens it yet.
    assert!(!backend.observe(ACCOUNT).unwrap().present);
    backend.ensure_account(ACCOUNT).unwrap();
    let created = backend.observe(ACCOUNT).unwrap();
    assert!(created.present);
    assert!(created.groups.is_empty(), "{created:?}");
    let locked = created.password_hash.clone().unwrap_or_default();
    assert!(
        !locked.starts_with('$'),
        "a new account has no usable hash: {locked}"
    );
    backend.ensure_account(ACCOUNT).unwrap();
    assert_eq!(backend.observe(ACCOUNT).unwrap(), created);

    // set_password_hash: the hash is stored as given, and only that password matches it.
    let hash = hash_password("correct horse battery staple");
    backend.set_password_hash(ACCOUNT, &hash).unwrap();
    backend.set_password_hash(ACCOUNT, &hash).unwrap();
    let stored = backend.observe(ACCOUNT).unwrap().password_hash.unwrap();
    assert_eq!(stored, hash);
    assert!(password_matches("correct horse battery staple", &stored));
    assert!(!password_matches("correct horse battery stapler", &stored));

    // add_to_group: listed once, however often it is asked.
    backend.add_to_group(ACCOUNT, ADMIN).unwrap();
    backend.add_to_group(ACCOUNT, ADMIN).unwrap();
    backend.add_to_group(ACCOUNT, EXTRA).unwrap();
    let mut both = vec![ADMIN.to_string(), EXTRA.to_string()];
    both.sort();
    assert_eq!(backend.observe(ACCOUNT).unwrap().groups, both);
    let members = backend.group_members(ADMIN).unwrap();
    assert_eq!(
        members.iter().filter(|m| *m == ACCOUNT).count(),
        1,
        "{members:?}"
    );

    // A group the machine lacks is said so, for adding and listing; removing from it is Ok.
    let missing = OsError::GroupMissing {
        group: MISSING.to_string(),
    };
    assert_eq!(backend.add_to_group(ACCOUNT, MISSING), Err(missing.clone()));
    assert_eq!(backend.group_members(MISSING), Err(missing));
    backend.remove_from_group(ACCOUNT, MISSING).unwrap();

    // remove_from_group: gone, and removing again is Ok.
    backend.remove_from_group(ACCOUNT, EXTRA).unwrap();
    backend.remove_from_group(ACCOUNT, EXTRA).unwrap();
    assert_eq!(
        backend.observe(ACCOUNT).unwrap().groups,
        vec![ADMIN.to_string()]
    );
    assert!(!backend
        .group_members(EXTRA)
        .unwrap()
        .contains(&ACCOUNT.to_string()));

    // An account that does not exist can neither get a password nor join a group.
    assert!(backend.set_password_hash("lk-test-nobody", &hash).is_err());
    assert!(backend.add_to_group("lk-test-nobody", ADMIN).is_err());
    assert!(!backend.observe("lk-test-nobody").unwrap().present);

    // Names a tool could read as an option or that would break a file are refused, unrun.
    for name in ["-rf", "a:b", "a\nb", ""] {
        assert!(backend.ensure_account(name).is_err(), "{name:?}");
        assert!(backend.add_to_group(ACCOUNT, name).is_err(), "{name:?}");
    }
    assert!(backend
        .set_password_hash(ACCOUNT, &format!("{hash}\nroot:{hash}"))
        .is_err());
    assert_eq!(backend.observe(ACCOUNT).unwrap().password_hash, Some(hash));

    // delete_account: absent, out of every group, and deleting again is Ok.
    backend.delete_account(ACCOUNT, false).unwrap();
    let deleted = backend.observe(ACCOUNT).unwrap();
    assert!(!deleted.present);
    assert!(deleted.groups.is_empty(), "{deleted:?}");
    assert_eq!(deleted.password_hash, None);
    assert!(!backend
        .group_members(ADMIN)
        .unwrap()
        .contains(&ACCOUNT.to_string()));
    backend.delete_account(ACCOUNT, false).unwrap();
}

/// A throw-away root in a fresh temp directory, with the test groups.
fn linux_root() -> (tempfile::TempDir, LinuxShadow) {
    assert!(
        running_as_root(),
        "these tests drive shadow-utils with --root, which chroots: run them as root"
    );
    let dir = tempfile::tempdir().unwrap();
    throwaway_root(dir.path(), &[ADMIN, EXTRA]).unwrap();
    let backend = LinuxShadow::new(dir.path(), dir.path().join("uids.json"));
    (dir, backend)
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|status| {
            status
                .lines()
                .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn read(root: &Path, file: &str) -> String {
    std::fs::read_to_string(root.join("etc").join(file)).unwrap()
}

fn line_of<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find(|line| line.split(':').next() == Some(name))
}

#[test]
fn the_memory_backend_keeps_the_contract() {
    keeps_the_contract(&MemoryAccounts::new(&[ADMIN, EXTRA]));
}

#[test]
fn the_linux_backend_keeps_the_contract() {
    let (_dir, backend) = linux_root();
    keeps_the_contract(&backend);
}

#[test]
fn the_linux_backend_changes_the_files_under_its_root_and_never_the_hosts() {
    let host_files: Vec<String> = ["passwd", "group", "shadow", "gshadow"]
        .iter()
        .map(|f| std::fs::read_to_string(Path::new("/etc").join(f)).unwrap_or_default())
        .collect();
    let (dir, backend) = linux_root();
    let root = dir.path();

    backend.ensure_account(ACCOUNT).unwrap();
    let passwd_line = line_of(&read(root, "passwd"), ACCOUNT).unwrap().to_string();
    assert!(passwd_line.ends_with(":/bin/bash"), "{passwd_line}");
    assert!(
        root.join("home").join(ACCOUNT).is_dir(),
        "useradd -m makes a home"
    );

    let hash = hash_password("s3cret-enough");
    backend.set_password_hash(ACCOUNT, &hash).unwrap();
    let shadow_line = line_of(&read(root, "shadow"), ACCOUNT).unwrap().to_string();
    assert_eq!(shadow_line.split(':').nth(1), Some(hash.as_str()));
    assert!(password_matches(
        "s3cret-enough",
        shadow_line.split(':').nth(1).unwrap()
    ));

    backend.add_to_group(ACCOUNT, ADMIN).unwrap();
    let group_line = line_of(&read(root, "group"), ADMIN).unwrap().to_string();
    let members: Vec<&str> = group_line.rsplit(':').next().unwrap().split(',').collect();
    assert!(members.contains(&ACCOUNT), "{group_line}");
    assert!(line_of(&read(root, "gshadow"), ADMIN)
        .unwrap()
        .ends_with(ACCOUNT));

    // The account's own (primary) group is not reported as a membership.
    assert!(
        line_of(&read(root, "group"), ACCOUNT).is_some(),
        "a private group"
    );
    assert_eq!(
        backend.observe(ACCOUNT).unwrap().groups,
        vec![ADMIN.to_string()]
    );

    backend.delete_account(ACCOUNT, false).unwrap();
    assert!(line_of(&read(root, "passwd"), ACCOUNT).is_none());
    assert!(line_of(&read(root, "shadow"), ACCOUNT).is_none());
    assert!(
        !root.join("home").join(ACCOUNT).exists(),
        "userdel -r takes the home"
    );

    for (file, before) in ["passwd", "group", "shadow", "gshadow"]
        .iter()
        .zip(&host_files)
    {
        let now = std::fs::read_to_string(Path::new("/etc").join(file)).unwrap_or_default();
        assert_eq!(&now, before, "the host's /etc/{file} changed");
        assert!(
            line_of(&now, ACCOUNT).is_none(),
            "/etc/{file} has {ACCOUNT}"
        );
    }
}

#[test]
fn without_a_shadow_file_the_hash_is_read_from_the_passwd_file() {
    let (dir, backend) = linux_root();
    std::fs::remove_file(dir.path().join("etc/shadow")).unwrap();
    backend.ensure_account(ACCOUNT).unwrap();
    let hash = hash_password("no shadow here");
    backend.set_password_hash(ACCOUNT, &hash).unwrap();
    let passwd_line = line_of(&read(dir.path(), "passwd"), ACCOUNT)
        .unwrap()
        .to_string();
    assert_eq!(passwd_line.split(':').nth(1), Some(hash.as_str()));
    assert_eq!(backend.observe(ACCOUNT).unwrap().password_hash, Some(hash));
}

#[test]
fn group_members_lists_who_the_group_file_lists() {
    let (dir, backend) = linux_root();
    for account in ["lk-test-bo", "lk-test-al"] {
        backend.ensure_account(account).unwrap();
        backend.add_to_group(account, EXTRA).unwrap();
    }
    assert_eq!(
        backend.group_members(EXTRA).unwrap(),
        vec!["lk-test-al".to_string(), "lk-test-bo".to_string()]
    );
    assert!(line_of(&read(dir.path(), "group"), EXTRA)
        .unwrap()
        .ends_with(":lk-test-bo,lk-test-al"));
}

#[test]
fn a_missing_tool_is_reported_as_missing_and_changes_nothing() {
    let (dir, _) = linux_root();
    let no_tools = tempfile::tempdir().unwrap();
    let backend =
        LinuxShadow::with_tool_dir(dir.path(), dir.path().join("uids.json"), no_tools.path());
    let passwd = read(dir.path(), "passwd");

    match backend.ensure_account(ACCOUNT) {
        Err(OsError::ToolMissing { tool, reason }) => {
            assert_eq!(tool, "useradd");
            assert!(
                reason.contains(&no_tools.path().display().to_string()),
                "{reason}"
            );
        }
        other => panic!("expected ToolMissing, got {other:?}"),
    }
    assert_eq!(read(dir.path(), "passwd"), passwd);
    // Nothing to do needs no tool: idempotent checks read the files first.
    backend.delete_account(ACCOUNT, false).unwrap();
    assert!(!backend.observe(ACCOUNT).unwrap().present);
}

#[test]
fn a_failing_tool_is_reported_with_its_status_and_stderr() {
    let (_dir, backend) = linux_root();
    match backend.add_to_group("lk-test-nobody", ADMIN) {
        Err(OsError::ToolFailed {
            tool,
            status,
            stderr,
        }) => {
            assert_eq!(tool, "gpasswd");
            assert!(status.contains("exit status"), "{status}");
            assert!(stderr.contains("lk-test-nobody"), "{stderr}");
            assert_eq!(stderr, stderr.trim());
        }
        other => panic!("expected ToolFailed, got {other:?}"),
    }
}

#[test]
fn an_unreadable_root_is_reported_not_mistaken_for_an_empty_machine() {
    let dir = tempfile::tempdir().unwrap();
    let backend = LinuxShadow::new(dir.path(), dir.path().join("uids.json"));
    assert!(matches!(
        backend.observe(ACCOUNT),
        Err(OsError::Unreadable { .. })
    ));
}

#[test]
fn throwaway_root_copies_the_hosts_files_without_their_secrets_and_adds_the_groups() {
    let dir = tempfile::tempdir().unwrap();
    throwaway_root(dir.path(), &[ADMIN, EXTRA, "wheel"]).unwrap();
    let root = dir.path();
    let group = read(root, "group");
    for name in [ADMIN, EXTRA, "wheel"] {
        assert_eq!(
            group
                .lines()
                .filter(|l| l.starts_with(&format!("{name}:")))
                .count(),
            1
        );
        assert!(
            line_of(&read(root, "gshadow"), name).is_some(),
            "{name} in gshadow"
        );
    }
    for file in ["shadow", "gshadow"] {
        for line in read(root, file).lines() {
            let hash = line.split(':').nth(1).unwrap_or_default();
            assert!(hash == "*" || hash == "!", "{file}: {line}");
        }
    }
    assert!(line_of(&read(root, "passwd"), "root").is_some());
    // Again on the same directory: the groups are still there once.
    throwaway_root(dir.path(), &[EXTRA]).unwrap();
    assert_eq!(
        read(root, "group").matches(&format!("\n{EXTRA}:")).count(),
        1
    );
}

#[test]
fn hash_password_makes_salted_sha512_crypt() {
    let first = hash_password("same password");
    let second = hash_password("same password");
    assert_ne!(first, second, "a fresh salt each time");
    let fields: Vec<&str> = first.split('$').collect();
    assert_eq!(fields[1], "6", "{first}");
    let salt = fields.iter().rev().nth(1).unwrap();
    assert_eq!(salt.len(), 16, "{first}");
    assert!(password_matches("same password", &first));
    assert!(password_matches("same password", &second));
}

#[test]
fn password_matches_hashes_made_by_the_systems_crypt() {
    // Made with libxcrypt's crypt(3): perl -e 'print crypt("correct horse", SETTING)'.
    let sha512 = "$6$saltsaltsaltsalt$GkzgkzVbauGAKXpOTbypQEKy/9yJWVjcvXvDw7CxoJjnJ1.w.g1rV8bhCVTpHrRrO/h6b3DAwPN3y5qmHXZ1R1";
    let sha512_rounds = "$6$rounds=5000$saltsaltsaltsalt$GkzgkzVbauGAKXpOTbypQEKy/9yJWVjcvXvDw7CxoJjnJ1.w.g1rV8bhCVTpHrRrO/h6b3DAwPN3y5qmHXZ1R1";
    let yescrypt = "$y$j9T$F5Jx5fExrKuPp53xLKQ..1$zwtVrjrUCmXcyLTs6oxLTQlzifSUkF8RHJ./tK5KU79";
    for hash in [sha512, sha512_rounds, yescrypt] {
        assert!(password_matches("correct horse", hash), "{hash}");
        assert!(!password_matches("correct horsE", hash), "{hash}");
    }
    for unusable in [
        "!",
        "*",
        "",
        "!$6$saltsaltsaltsalt$GkzgkzVbauGAKXpOTbypQEKy",
        "$1$abc$def",
    ] {
        assert!(!password_matches("correct horse", unusable), "{unusable}");
    }
}

/// The UID of `account` in the root's passwd file.
fn uid_in(root: &Path, account: &str) -> u32 {
    line_of(&read(root, "passwd"), account)
        .and_then(|line| line.split(':').nth(2))
        .and_then(|uid| uid.parse().ok())
        .unwrap_or_else(|| panic!("{account} has no uid"))
}

/// Gives the root's accounts UIDs from `min` up: throw-away roots run side by side copy the
/// host's passwd file, so they would hand out the same UIDs, and a process started as one
/// root's account would count as another root's.
fn own_uid_range(root: &Path, min: u32) {
    let path = root.join("etc/login.defs");
    let mut defs: String = std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .filter(|line| !line.starts_with("UID_MIN") && !line.starts_with("UID_MAX"))
        .map(|line| format!("{line}\n"))
        .collect();
    defs.push_str(&format!("UID_MIN {min}\nUID_MAX {}\n", min + 999));
    std::fs::write(path, defs).unwrap();
}

/// A real process running as `uid`, as a technician's logon would be.
fn process_as(uid: u32) -> Child {
    Command::new("sleep")
        .arg("300")
        .uid(uid)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Issue 12: a deleted account's processes kept running under its UID. An account with a
/// process is never deleted; ending its logons ends the process, and only then it goes.
#[test]
fn a_busy_account_is_never_deleted_unless_its_processes_are_ended_first() {
    let (dir, backend) = linux_root();
    own_uid_range(dir.path(), 43000);
    backend.ensure_account(ACCOUNT).unwrap();
    let uid = uid_in(dir.path(), ACCOUNT);
    let mut logon = process_as(uid);
    assert_eq!(backend.observe(ACCOUNT).unwrap().processes, 1);

    match backend.delete_account(ACCOUNT, false) {
        Err(OsError::Busy {
            processes, pids, ..
        }) => {
            assert_eq!(processes, 1);
            assert_eq!(pids, logon.id().to_string());
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(backend.observe(ACCOUNT).unwrap().present, "not deleted");
    assert!(
        logon.try_wait().unwrap().is_none(),
        "and its process untouched"
    );

    backend.end_logons(ACCOUNT).unwrap();
    let ended = logon.wait().unwrap();
    assert!(!ended.success(), "ended by a signal: {ended:?}");
    assert_eq!(backend.observe(ACCOUNT).unwrap().processes, 0);
    backend.delete_account(ACCOUNT, false).unwrap();
    assert!(!backend.observe(ACCOUNT).unwrap().present);

    // With end_logons, the deletion ends them itself.
    backend.ensure_account(ACCOUNT).unwrap();
    let mut logon = process_as(uid_in(dir.path(), ACCOUNT));
    let reaper = std::thread::spawn(move || logon.wait().unwrap());
    backend.delete_account(ACCOUNT, true).unwrap();
    assert!(!reaper.join().unwrap().success());
    assert!(!backend.observe(ACCOUNT).unwrap().present);
}

/// Issue 12: `useradd` gave a deleted Latchkey account's UID to the next one.
#[test]
fn a_uid_once_given_to_a_latchkey_account_is_never_given_again() {
    let (dir, backend) = linux_root();
    let root = dir.path();
    backend.ensure_account("lk-test-one").unwrap();
    let first = uid_in(root, "lk-test-one");
    backend.delete_account("lk-test-one", false).unwrap();
    backend.ensure_account("lk-test-two").unwrap();
    let second = uid_in(root, "lk-test-two");
    assert!(second > first, "{second} after {first}");
    // A restarted agent (a new backend on the same record), the same name again.
    let again = LinuxShadow::new(root, root.join("uids.json"));
    again.ensure_account("lk-test-one").unwrap();
    let third = uid_in(root, "lk-test-one");
    assert!(third != first && third != second, "{third}");
    let record = std::fs::read_to_string(root.join("uids.json")).unwrap();
    for uid in [first, second, third] {
        assert!(record.contains(&format!("\"{uid}\"")), "{uid} in {record}");
    }
    let mode = std::fs::metadata(root.join("uids.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// Issue 12: homes were 0755, readable by every local user.
#[test]
fn a_home_directory_is_private_and_goes_with_the_account() {
    let (dir, backend) = linux_root();
    backend.ensure_account(ACCOUNT).unwrap();
    let home = dir.path().join("home").join(ACCOUNT);
    let mode = std::fs::metadata(&home).unwrap().permissions().mode();
    assert_eq!(mode & 0o7777, 0o700, "{mode:o}");
    backend.delete_account(ACCOUNT, false).unwrap();
    assert!(!home.exists());
}

#[test]
fn clearing_sudo_removes_the_accounts_cached_credentials_only() {
    let (dir, backend) = linux_root();
    backend.ensure_account(ACCOUNT).unwrap();
    let ts = dir.path().join("run/sudo/ts");
    std::fs::create_dir_all(&ts).unwrap();
    std::fs::write(ts.join(ACCOUNT), b"timestamp").unwrap();
    std::fs::write(ts.join("root"), b"timestamp").unwrap();
    assert!(backend.observe(ACCOUNT).unwrap().sudo_cached);
    backend.clear_sudo(ACCOUNT).unwrap();
    backend.clear_sudo(ACCOUNT).unwrap();
    assert!(!backend.observe(ACCOUNT).unwrap().sudo_cached);
    assert!(ts.join("root").exists(), "another user's is kept");
}
