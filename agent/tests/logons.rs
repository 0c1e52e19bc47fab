//! Issue 12: access ends for real for a technician who stays logged in. A real OpenSSH server
//! (with PAM), the real `latchkey serve` and the real agent without `--root` (so on `/`),
//! all inside a private mount namespace whose `/etc`, `/home` and `/run` are copies: the
//! host's account files must be byte for byte the same afterwards.
//!
//! Covered: a logged-in session loses `sudo` at check-in (`sudo -n id -u` fails in it) when
//! the policy clears sudo's cached credentials; with the default post-session actions its
//! processes end, a root shell opened with `sudo` included; delete-on-check-in waits for a busy
//! account (a stuck request says why) and deletes it once the logon is gone; the next account
//! never gets the retired UID; homes are 0700.
//!
//! Where namespaces, `sshd`, `sshpass` or `sudo` are not available the test prints SKIPPED
//! and passes, unless `LATCHKEY_REQUIRE_LOGON_TEST` is set (CI sets it: `.ci/run`).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use support::*;

/// Set in the copy of the test that runs inside the namespace.
const INSIDE: &str = "LATCHKEY_LOGON_TEST_INSIDE";
/// Makes a missing prerequisite a failure instead of a skip.
const REQUIRED: &str = "LATCHKEY_REQUIRE_LOGON_TEST";
const TEST: &str = "a_technician_who_stays_logged_in_loses_access_at_check_in";
/// The admin group of Debian's sudoers (`%sudo ALL=(ALL:ALL) ALL`).
const SUDO: &str = "sudo";
/// The name the root process of the probe runs under, to find it.
const ROOT_PROBE: &str = "latchkey-root-probe";
/// Long enough for the revocation retries' back-off (5 s, then 10 s, ...).
const LONG: Duration = Duration::from_secs(60);

#[test]
fn a_technician_who_stays_logged_in_loses_access_at_check_in() {
    if std::env::var_os(INSIDE).is_some() {
        inside_the_namespace();
        return;
    }
    if let Some(missing) = missing_prerequisite() {
        if std::env::var_os(REQUIRED).is_some() {
            panic!("{REQUIRED} is set but {missing}");
        }
        println!("SKIPPED: {missing}");
        return;
    }
    let before = host_fingerprint();
    let run = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--"])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(INSIDE, "1")
        .output()
        .unwrap();
    let said = format!(
        "{}\n{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "inside the namespace: {said}");
    assert!(said.contains("1 passed"), "the test ran inside: {said}");
    for line in said.lines().filter_map(|l| l.split_once("logons: ")) {
        println!("logons: {}", line.1);
    }
    assert_eq!(
        host_fingerprint(),
        before,
        "the host's account files changed"
    );
}

/// Why the test cannot run here, if it cannot.
fn missing_prerequisite() -> Option<String> {
    let namespaces = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .stderr(Stdio::null())
        .status();
    if !namespaces.is_ok_and(|s| s.success()) {
        return Some("no permission for a private mount namespace (unshare --mount)".into());
    }
    for tool in [
        "/usr/sbin/sshd",
        "/usr/bin/sshpass",
        "/usr/bin/ssh",
        "/usr/bin/sudo",
    ] {
        if !Path::new(tool).exists() {
            return Some(format!(
                "{tool} is not installed (apt-get install openssh-server sshpass sudo)"
            ));
        }
    }
    None
}

/// The host's account files and homes, as they must stay.
fn host_fingerprint() -> Vec<(String, Vec<u8>)> {
    let mut seen: Vec<(String, Vec<u8>)> = ["passwd", "shadow", "group", "gshadow"]
        .iter()
        .map(|f| {
            let path = format!("/etc/{f}");
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path, bytes)
        })
        .collect();
    let mut homes: Vec<String> = std::fs::read_dir("/home")
        .map(|dir| {
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    homes.sort();
    seen.push(("/home".into(), homes.join("\n").into_bytes()));
    seen
}

/// Copies of `/etc` over `/etc`, an empty `/home` and `/run`: the tools, sshd and sudo
/// work on these, and they vanish with the namespace.
fn private_machine(scratch: &Path) {
    let etc = scratch.join("etc");
    sh("cp", &["-a", "/etc", etc.to_str().unwrap()]);
    sh("mount", &["--bind", etc.to_str().unwrap(), "/etc"]);
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/home"],
    );
    sh(
        "mount",
        &["-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"],
    );
    std::fs::create_dir_all("/run/sshd").unwrap();
    std::fs::create_dir_all("/run/lock").unwrap();
}

fn sh(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
}

/// sshd on a free loopback port, with PAM and passwords.
struct Sshd {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    fn start(scratch: &Path) -> Sshd {
        let key = scratch.join("host_key");
        sh(
            "ssh-keygen",
            &["-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()],
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = scratch.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\nUsePAM yes\n\
                 PasswordAuthentication yes\nKbdInteractiveAuthentication no\n\
                 PubkeyAuthentication no\nPermitRootLogin no\nLogLevel VERBOSE\n",
                key.display(),
                scratch.join("sshd.pid").display()
            ),
        )
        .unwrap();
        let log = scratch.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "sshd: {}",
                read(&log)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Sshd { child, port, log }
    }

    /// A logon of `account`: runs the probe script, with the password on its stdin (never
    /// on a command line); what it prints goes to `out`.
    fn log_on(&self, account: &str, password: &str, out: &Path) -> Child {
        let script = format!(
            "read -r pw; \
             printf '%s\\n' \"$pw\" | sudo -S -p '' -v 2>/dev/null && echo SUDO-CACHED; \
             printf '%s\\n' \"$pw\" | sudo -S -p '' bash -c 'exec -a {ROOT_PROBE} sleep 600' & \
             while :; do if sudo -n id -u >/dev/null 2>&1; then echo ROOT; else echo DENIED; fi; \
             sleep 0.2; done"
        );
        let mut child = Command::new("sshpass")
            .arg("-e")
            .args([
                "ssh",
                "-p",
                &self.port.to_string(),
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
                "-o",
                "PreferredAuthentications=password",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{account}@127.0.0.1"))
            .arg(script)
            .env("SSHPASS", password)
            .stdin(Stdio::piped())
            .stdout(std::fs::File::create(out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        writeln!(stdin, "{password}").unwrap();
        // Kept open (leaked on purpose): the logon lasts until it is ended.
        std::mem::forget(stdin);
        child
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn wait_long(what: &str, context: impl Fn() -> String, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < LONG,
            "timed out waiting for {what}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The account's UID in the (private) `/etc/passwd`.
fn uid_of(account: &str) -> Option<u32> {
    read(Path::new("/etc/passwd")).lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        (fields.first() == Some(&account))
            .then(|| fields.get(2).and_then(|u| u.parse().ok()))
            .flatten()
    })
}

/// Live processes whose uids or login uid are `uid`, and those named `name`.
fn processes(uid: u32, name: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let dir = entry.path();
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        if status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
        {
            continue;
        }
        let uids = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .unwrap_or_default()
            .split_whitespace()
            .any(|u| u == uid.to_string());
        let login = read(&dir.join("loginuid")).trim() == uid.to_string();
        let cmdline = read(&dir.join("cmdline")).replace('\0', " ");
        if uids || login || cmdline.starts_with(name) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

fn set_policy(msp: &Msp, setup: &Setup, fields: Value) {
    msp.set_policy(&setup.tenant_id, |policy| {
        for (key, value) in fields.as_object().unwrap() {
            policy[key] = value.clone();
        }
    });
}

fn inside_the_namespace() {
    let scratch = tempfile::tempdir().unwrap();
    private_machine(scratch.path());
    let sshd = Sshd::start(scratch.path());
    let msp = Msp::start();
    let setup = msp.setup("named");
    let mut agent = Agent::new("LINUX-SSH");
    agent.root_dir = Some(PathBuf::from("/"));
    let enrolled = agent.enroll_with(
        &msp.url(),
        &setup.enrollment_token,
        &["--admin-group", SUDO],
    );
    assert!(enrolled.status.success(), "{enrolled:?}");
    agent.run();
    let context = |agent: &Agent| {
        format!(
            "agent log:\n{}\nsshd log:\n{}",
            agent.log(),
            read(&sshd.log)
        )
    };

    // 1. Only sudo's cached credentials are cleared: the logon lives on, without sudo.
    set_policy(
        &msp,
        &setup,
        json!({"admin_group": SUDO, "post_session_actions":
            {"end_logons": false, "clear_sudo_credentials": true}}),
    );
    let (session, account) = msp.check_out(&setup, &agent);
    assert_eq!(account, "msp-nik");
    let home = Path::new("/home").join(&account);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&home).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o700, "the home is private: {mode:o}");
    let first_uid = uid_of(&account).unwrap();
    let probe = scratch.path().join("probe-1");
    let mut first = sshd.log_on(&account, &msp.reveal(&setup, &session), &probe);
    wait_long(
        "sudo to work in the logon",
        || format!("{}\n{}", read(&probe), context(&agent)),
        || read(&probe).contains("ROOT"),
    );
    assert!(!processes(first_uid, ROOT_PROBE).is_empty());
    msp.check_in(&setup, &session);
    let checked_in = read(&probe).len();
    wait_long(
        "sudo -n id -u to fail in the logon",
        || format!("{}\n{}", read(&probe), context(&agent)),
        || read(&probe)[checked_in..].contains("DENIED"),
    );
    assert!(
        first.try_wait().unwrap().is_none(),
        "the policy keeps the logon"
    );
    let cleared = msp.audit_shows(&setup.tenant_id, |s| {
        s.contains("cached sudo credentials of msp-nik were cleared")
    });
    assert!(!cleared.is_empty());

    // 2. The default post-session actions: every logon of the account ends, the root shell
    //    its sudo opened too.
    set_policy(&msp, &setup, json!({"post_session_actions": null}));
    let (session, _) = msp.check_out(&setup, &agent);
    let probe = scratch.path().join("probe-2");
    let mut second = sshd.log_on(&account, &msp.reveal(&setup, &session), &probe);
    wait_long(
        "sudo to work in the second logon",
        || format!("{}\n{}", read(&probe), context(&agent)),
        || read(&probe).contains("ROOT"),
    );
    msp.check_in(&setup, &session);
    wait_long(
        "the account's processes to end",
        || {
            format!(
                "{:?}\n{}",
                processes(first_uid, ROOT_PROBE),
                context(&agent)
            )
        },
        || processes(first_uid, ROOT_PROBE).is_empty(),
    );
    wait_long(
        "both ssh clients to exit",
        || context(&agent),
        || first.try_wait().unwrap().is_some() && second.try_wait().unwrap().is_some(),
    );
    let ended = msp.audit_shows(&setup.tenant_id, |s| {
        s.contains("the logons of msp-nik were ended (processes left: 0)")
    });
    assert!(!ended.is_empty());

    // 3. Delete at check-in, no post-session actions: the busy account is not deleted; a stuck
    //    request says why, and once the technician has logged out the retry deletes it.
    set_policy(
        &msp,
        &setup,
        json!({"on_check_in": "delete_account", "post_session_actions":
            {"end_logons": false, "clear_sudo_credentials": false}}),
    );
    let (session, _) = msp.check_out(&setup, &agent);
    let busy_uid = uid_of(&account).unwrap();
    let probe = scratch.path().join("probe-3");
    let mut third = sshd.log_on(&account, &msp.reveal(&setup, &session), &probe);
    wait_long(
        "the third logon",
        || read(&probe),
        || read(&probe).contains("ROOT"),
    );
    msp.check_in(&setup, &session);
    let stuck = |msp: &Msp| {
        msp.ok(
            "GET",
            &format!("/v1/tenants/{}/stuck-requests", setup.tenant_id),
            &msp.admin,
            None,
        )
    };
    wait_long(
        "the deletion to be stuck on the busy account",
        || context(&agent),
        || {
            stuck(&msp)["stuck_requests"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| {
                    r["reason"]
                        .as_str()
                        .unwrap_or_default()
                        .contains("still has")
                })
        },
    );
    assert_eq!(
        uid_of(&account),
        Some(busy_uid),
        "not deleted under its logon"
    );
    assert!(
        !processes(busy_uid, ROOT_PROBE).is_empty(),
        "its processes untouched"
    );
    // The technician logs out.
    let _ = third.kill();
    let _ = third.wait();
    for pid in processes(busy_uid, ROOT_PROBE) {
        let pid = pid.split(':').next().unwrap().to_owned();
        let _ = Command::new("kill").arg(&pid).status();
    }
    wait_long(
        "the retry to delete the account",
        || {
            format!(
                "{}\n{}",
                serde_json::to_string(&stuck(&msp)).unwrap(),
                context(&agent)
            )
        },
        || uid_of(&account).is_none(),
    );
    assert!(!home.exists(), "the home went with the account");

    // 4. The next account never gets a retired UID.
    set_policy(&msp, &setup, json!({"on_check_in": "remove_from_group"}));
    let (session, _) = msp.check_out(&setup, &agent);
    let new_uid = uid_of(&account).unwrap();
    assert!(new_uid != first_uid && new_uid != busy_uid, "{new_uid}");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&home).unwrap().permissions());
    assert_eq!(mode & 0o7777, 0o700);
    msp.check_in(&setup, &session);
    println!("logons: uids {first_uid}, {busy_uid}, then {new_uid}");
}
