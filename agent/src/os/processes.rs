//! An account's processes on this machine, read from `/proc`, and ending them: what makes
//! "access ends" true for a technician who stays logged in, and what keeps a busy account
//! from being deleted (its processes would live on under a UID nobody owns).
//!
//! A process belongs to the account if any of its user ids (real, effective, saved,
//! file-system) is the account's UID, or if its login UID (`/proc/PID/loginuid`, set by
//! `pam_loginuid` at login and kept through `sudo`/`su`) is: a root shell opened with `sudo`
//! during the session is the account's too. It must never signal the agent itself, and never
//! a process of another UID that did not log in as the account.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long processes get to end after `SIGTERM` before they are sent `SIGKILL`.
const TERM_GRACE: Duration = Duration::from_secs(2);
/// How long the agent waits for `SIGKILL`ed processes to be gone before it says some remain.
const KILL_WAIT: Duration = Duration::from_secs(3);
/// How often `/proc` is read again while waiting.
const POLL: Duration = Duration::from_millis(50);

/// The "no login UID" value of `/proc/PID/loginuid`.
const NO_LOGINUID: u32 = u32::MAX;

/// The pids of the live (not zombie) processes that belong to `uid`, in ascending order,
/// never the agent's own. A process that ends while `/proc` is read is skipped.
pub fn of_uid(uid: u32) -> io::Result<Vec<u32>> {
    let own = std::process::id();
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(entry) = entry else { continue };
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == own {
            continue;
        }
        if belongs_to(&entry.path(), uid) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// Whether the process described by `/proc/PID` (`dir`) is `uid`'s and still runs.
fn belongs_to(dir: &Path, uid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
        return false;
    };
    if status_is_zombie(&status) {
        return false;
    }
    if status_uids(&status).contains(&uid) {
        return true;
    }
    std::fs::read_to_string(dir.join("loginuid"))
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .is_some_and(|login| login != NO_LOGINUID && login == uid)
}

/// The four uids of a `/proc/PID/status` text's `Uid:` line.
fn status_uids(status: &str) -> Vec<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .map(|ids| {
            ids.split_whitespace()
                .filter_map(|id| id.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// A zombie has ended; only its parent's `wait` is missing. It runs nothing and holds no
/// file, so it does not count.
fn status_is_zombie(status: &str) -> bool {
    status
        .lines()
        .find_map(|line| line.strip_prefix("State:"))
        .is_some_and(|state| state.trim_start().starts_with('Z'))
}

/// Ends every process of `uid`: first through systemd-logind (`loginctl terminate-user`)
/// when `logind` is true, then `SIGTERM` to what is left, and after [`TERM_GRACE`]
/// `SIGKILL`. Returns how many processes remain when it gives up (0 when all ended); new
/// processes that appear meanwhile (a fork) are signalled too.
pub fn end(uid: u32, account: &str, logind: bool) -> io::Result<usize> {
    if logind && !of_uid(uid)?.is_empty() {
        // Ends the account's sessions cleanly (their scopes, their PAM sessions); a failure
        // here is not fatal: the signals below end the processes anyway.
        let ran = Command::new("loginctl")
            .args(["terminate-user", account])
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !ran.is_ok_and(|status| status.success()) {
            tracing::debug!(
                account,
                "loginctl terminate-user did not succeed; signalling"
            );
        }
    }
    for (signal, wait) in [(libc::SIGTERM, TERM_GRACE), (libc::SIGKILL, KILL_WAIT)] {
        let deadline = Instant::now() + wait;
        loop {
            let pids = of_uid(uid)?;
            if pids.is_empty() {
                return Ok(0);
            }
            if Instant::now() >= deadline {
                break;
            }
            for pid in pids {
                send(pid, signal);
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(of_uid(uid)?.len())
}

/// Sends `signal` to `pid`; a process that is already gone is no error.
fn send(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 1 {
        return; // never init, never "every process" (-1) or a process group (0)
    }
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Whether systemd-logind manages logins under `root` (`/run/systemd/seats` exists only while
/// it runs, as `sd_booted`-style checks use).
pub fn logind_runs(root: &Path) -> bool {
    root.join("run/systemd/seats").is_dir() && Path::new("/run/systemd/seats").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_uid_line_gives_every_id_and_zombies_are_told_apart() {
        let status = "Name:\tbash\nState:\tS (sleeping)\nUid:\t1001\t0\t0\t0\nGid:\t1001\t1001\t1001\t1001\n";
        assert_eq!(status_uids(status), vec![1001, 0, 0, 0]);
        assert!(!status_is_zombie(status));
        assert!(status_is_zombie(
            "Name:\tx\nState:\tZ (zombie)\nUid:\t5\t5\t5\t5\n"
        ));
        assert!(status_uids("Name:\tx\n").is_empty());
    }

    #[test]
    fn the_agent_itself_is_never_one_of_an_accounts_processes() {
        let own = std::fs::read_to_string("/proc/self/status").unwrap();
        let uid = status_uids(&own)[0];
        assert!(!of_uid(uid).unwrap().contains(&std::process::id()));
    }
}
