//! The `latchkey` CLI's client commands against the real server binary: an admin sets up a
//! tenant, an auditor reads the story, verifies and exports the log; and every kind of
//! failure (wrong token, no server, bad flag, refused value, broken chain) is said clearly.

mod support;

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use support::Server;

const ADMIN_EMAIL: &str = "admin@msp.example";

/// What one run of the CLI did.
struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts it succeeded and returns its standard output.
    fn ok(self) -> String {
        assert_eq!(
            self.code,
            Some(0),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self.stdout
    }

    fn json(self) -> Value {
        let out = self.ok();
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    /// Asserts it failed with `code` and returns its standard error.
    fn fails(self, code: i32) -> String {
        assert_eq!(
            self.code,
            Some(code),
            "stdout: {}\nstderr: {}",
            self.stdout,
            self.stderr
        );
        self.stderr
    }
}

/// The CLI with the server and token given through the environment, as a script would.
fn command(server: &str, token: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_latchkey"));
    command
        .env("LATCHKEY_SERVER", server)
        .env("LATCHKEY_TOKEN", token)
        .env("RUST_LOG", "off");
    for proxy in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"] {
        command.env_remove(proxy);
    }
    command.env_remove("ALL_PROXY").env_remove("all_proxy");
    command
}

fn latchkey(server: &str, token: &str, args: &[&str]) -> Run {
    let output = command(server, token)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the CLI runs");
    let run = Run {
        code: output.status.code(),
        stdout: String::from_utf8(output.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(output.stderr).expect("UTF-8 stderr"),
    };
    // Whatever happens, the token the CLI acts with is never shown.
    assert!(
        !run.stdout.contains(token) && !run.stderr.contains(token),
        "{args:?} printed the token"
    );
    run
}

/// A well-formed token the server has never issued.
fn unknown_token() -> String {
    latchkey_server_stores::tokens::generate_token().1
}

/// An address where nothing listens.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

struct Msp {
    /// Kept for its lifetime: dropping it stops the server.
    _server: Server,
    url: String,
    admin: String,
    data: tempfile::TempDir,
}

impl Msp {
    fn start() -> Msp {
        let data = tempfile::tempdir().unwrap();
        let admin = latchkey_server_stores::tokens::generate_token().1;
        let server = Server::start(
            data.path(),
            &[
                ("LATCHKEY_ADMIN_TOKEN", &admin),
                ("LATCHKEY_ADMIN_EMAIL", ADMIN_EMAIL),
            ],
        );
        let url = format!("http://{}", server.addr);
        Msp {
            _server: server,
            url,
            admin,
            data,
        }
    }

    fn cli(&self, args: &[&str]) -> Run {
        latchkey(&self.url, &self.admin, args)
    }

    /// Creates a tenant through the CLI and returns its id.
    fn tenant(&self, name: &str, mode: &str) -> String {
        let tenant = self
            .cli(&[
                "tenants", "create", "--name", name, "--mode", mode, "--json",
            ])
            .json();
        assert_eq!(tenant["name"], name);
        assert_eq!(tenant["login_mode"], mode);
        tenant["tenant_id"].as_str().expect("an id").to_owned()
    }

    /// The audit trail's text, once it contains `wanted` (it is a read model, so it may lag).
    fn audit_until(&self, args: &[&str], wanted: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut all = vec!["audit"];
            all.extend_from_slice(args);
            let out = self.cli(&all).ok();
            if out.contains(wanted) {
                return out;
            }
            assert!(
                Instant::now() < deadline,
                "the audit trail never said {wanted:?}; it said:\n{out}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn an_admin_sets_up_a_tenant_and_sees_it_in_the_list() {
    let msp = Msp::start();
    let id = msp.tenant("customer-1", "named");
    let list = msp.cli(&["tenants", "list"]).ok();
    let row = list
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("tenant {id} not listed:\n{list}"));
    assert!(row.contains("customer-1") && row.contains("named"), "{row}");
    assert!(list.starts_with("TENANT_ID"), "a header first:\n{list}");
    let listed = msp.cli(&["tenants", "list", "--json"]).json();
    assert_eq!(listed["tenants"][0]["tenant_id"], id.as_str());
    let shown = msp.cli(&["tenants", "show", &id]).ok();
    assert!(shown.contains("login mode  named"), "{shown}");
    assert!(shown.contains("max session"), "{shown}");
}

#[test]
fn the_mode_and_the_policy_change_and_the_audit_trail_says_so() {
    let msp = Msp::start();
    let id = msp.tenant("customer-1", "named");

    let said = msp
        .cli(&["mode", "set", "--tenant", &id, "--mode", "shared"])
        .ok();
    assert!(
        said.starts_with(
            "the technician login mode of customer-1 is now shared (shared account msp-"
        ),
        "{said}"
    );
    let tenant = msp.cli(&["tenants", "show", &id, "--json"]).json();
    assert_eq!(tenant["login_mode"], "shared");

    // Single fields by flag: the rest of the policy stays as it was.
    let said = msp
        .cli(&[
            "policy",
            "set",
            "--tenant",
            &id,
            "--max-session-minutes",
            "30",
            "--admin-group",
            "sudo",
        ])
        .ok();
    assert!(
        said.contains("max session             30 minutes"),
        "{said}"
    );
    let policy = msp
        .cli(&["policy", "show", "--tenant", &id, "--json"])
        .json();
    assert_eq!(policy["max_session_minutes"], 30);
    assert_eq!(policy["admin_group"], "sudo");
    assert_eq!(policy["rotate_on_check_in"], true);
    assert_eq!(
        policy["post_session_actions"],
        Value::Null,
        "the mode's default"
    );

    // One post-session action off: the other stays as the login mode's default had it.
    let said = msp
        .cli(&["policy", "set", "--tenant", &id, "--end-logons", "false"])
        .ok();
    assert!(
        said.contains("when access ends        clear its cached sudo credentials"),
        "{said}"
    );
    let policy = msp
        .cli(&["policy", "show", "--tenant", &id, "--json"])
        .json();
    assert_eq!(
        policy["post_session_actions"],
        serde_json::json!({"end_logons": false, "clear_sudo_credentials": true})
    );

    // A whole policy from a file, as `policy show --json` printed it, with a flag on top.
    let mut edited = policy.clone();
    edited["rotate_on_check_in"] = Value::Bool(false);
    let file = msp.data.path().join("policy.json");
    std::fs::write(&file, edited.to_string()).unwrap();
    msp.cli(&[
        "policy",
        "set",
        "--tenant",
        &id,
        "--file",
        file.to_str().unwrap(),
        "--provisioning",
        "false",
    ])
    .ok();
    let policy = msp
        .cli(&["policy", "show", "--tenant", &id, "--json"])
        .json();
    assert_eq!(policy["rotate_on_check_in"], false);
    assert_eq!(policy["provisioning_enabled"], false);
    assert_eq!(policy["max_session_minutes"], 30);

    let sentence = format!(
        "{ADMIN_EMAIL} changed the technician login mode of customer-1 from named to shared"
    );
    let trail = msp.audit_until(&[], &sentence);
    let line = trail.lines().find(|l| l.ends_with(&sentence)).unwrap();
    // "<time>  <sentence>", the time to the second in UTC.
    let (time, rest) = line.split_once("  ").unwrap();
    assert_eq!(rest, sentence);
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok() && time.ends_with('Z'),
        "{line}"
    );
    msp.audit_until(&[], "changed the JIT policy of customer-1");

    // Filters and the limit reach the server; every page is followed.
    let one = msp.cli(&["audit", "--tenant", &id, "--limit", "1"]).ok();
    assert_eq!(one.lines().count(), 1, "{one}");
    let future = msp.cli(&["audit", "--from", "2999-01-01"]);
    assert_eq!(future.code, Some(0));
    assert!(future.stdout.is_empty(), "{}", future.stdout);
    assert!(
        future.stderr.contains("no audit entries match"),
        "{}",
        future.stderr
    );
}

#[test]
fn verify_says_intact_and_export_writes_every_event_with_its_hash() {
    let msp = Msp::start();
    let id = msp.tenant("customer-1", "named");
    msp.cli(&["mode", "set", "--tenant", &id, "--mode", "ephemeral"])
        .ok();
    msp.cli(&[
        "technicians",
        "create",
        "--username",
        "nik",
        "--email",
        "nik@nikpot.com",
    ])
    .ok();

    let verified = msp.cli(&["verify"]).ok();
    assert!(verified.starts_with("intact: "), "{verified}");
    let verified = msp.cli(&["verify", "--json"]).json();
    assert_eq!(verified["intact"], true);
    let stream = format!("tenant-{id}");
    let one = msp.cli(&["verify", "--stream", &stream]).ok();
    assert!(
        one.starts_with(&format!("intact: stream {stream} has ")),
        "{one}"
    );

    let file = msp.data.path().join("export.ndjson");
    let said = msp
        .cli(&["export", "--output", file.to_str().unwrap()])
        .ok();
    let exported = std::fs::read_to_string(&file).unwrap();
    let events: Vec<Value> = exported
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(events.len() >= 3, "{exported}");
    assert!(
        said.starts_with(&format!("exported {} events to ", events.len())),
        "{said}"
    );
    for event in &events {
        let hash = event["hash"].as_str().expect("a hash");
        assert_eq!(hash.len(), 64, "{event}");
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()), "{event}");
    }
    let types: Vec<&str> = events
        .iter()
        .filter_map(|e| e["event_type"].as_str())
        .collect();
    assert!(types.contains(&"LoginModeChanged"), "{types:?}");
    assert!(types.contains(&"TechnicianRegistered"), "{types:?}");

    // To stdout, and resuming after a position gives the rest.
    let all = msp.cli(&["export"]).ok();
    assert_eq!(all, exported);
    let first = events[0]["position"].as_str().unwrap();
    let rest = msp.cli(&["export", "--after", first]).ok();
    assert_eq!(rest.lines().count(), events.len() - 1);
    assert_eq!(rest, exported.split_once('\n').unwrap().1);
}

#[test]
fn a_tampered_log_fails_verification() {
    let msp = Msp::start();
    let id = msp.tenant("customer-1", "named");
    assert!(msp.cli(&["verify"]).ok().starts_with("intact"));
    let db = rusqlite::Connection::open(msp.data.path().join("events.db")).unwrap();
    db.busy_timeout(Duration::from_secs(10)).unwrap();
    let changed = db
        .execute(
            "UPDATE events SET payload = CAST(replace(CAST(payload AS TEXT), 'customer-1', \
             'customer-9') AS BLOB) WHERE stream = ?1 AND revision = 0",
            [format!("tenant-{id}")],
        )
        .unwrap();
    assert_eq!(changed, 1);
    let stderr = msp.cli(&["verify"]).fails(1);
    assert!(
        stderr.starts_with(&format!(
            "latchkey: the hash chain is BROKEN: stream tenant-{id} at revision 0: "
        )),
        "{stderr}"
    );
}

#[test]
fn audit_tail_prints_events_as_they_happen() {
    let msp = Msp::start();
    msp.tenant("customer-1", "named");
    let mut child = command(&msp.url, &msp.admin)
        .args(["audit", "tail"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the tail starts");
    let stdout = child.stdout.take().unwrap();
    let (lines, received) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap_or_default()).is_err() {
                break;
            }
        }
    });
    let next = |what: &str| {
        received
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("no line for {what}"))
    };
    // The history first, then what happens while it runs.
    let first = next("the tenant's registration");
    assert!(first.contains("TenantRegistered"), "{first}");
    assert!(first.contains(&format!("by user:{ADMIN_EMAIL}")), "{first}");
    msp.cli(&[
        "technicians",
        "create",
        "--username",
        "nik",
        "--email",
        "nik@nikpot.com",
    ])
    .ok();
    // The username and e-mail address are claimed first, then the technician registered.
    let second = next("the claim of the technician's names");
    assert!(second.contains("TechnicianNamesClaimed"), "{second}");
    let third = next("the technician's registration");
    assert!(third.contains("TechnicianRegistered"), "{third}");
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn a_wrong_token_is_refused_clearly() {
    let msp = Msp::start();
    let token = unknown_token();
    let stderr = latchkey(&msp.url, &token, &["tenants", "list"]).fails(1);
    assert_eq!(
        stderr,
        "latchkey: the server refused the token (LATCHKEY_TOKEN / --token)\n"
    );
    // The flag works as well as the environment, and wins over it.
    let output = command(&msp.url, &token)
        .args(["tenants", "list", "--token", &msp.admin])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    // No token at all is said before anything is sent.
    let output = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["tenants", "list", "--server", &msp.url])
        .env_remove("LATCHKEY_TOKEN")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        "latchkey: no API token: pass --token TOKEN or set LATCHKEY_TOKEN\n"
    );
}

#[test]
fn an_unreachable_server_is_named() {
    let url = closed_port();
    let stderr = latchkey(&url, &unknown_token(), &["tenants", "list"]).fails(1);
    assert!(
        stderr.starts_with(&format!("latchkey: cannot reach the server at {url}: ")),
        "{stderr}"
    );
    let stderr = latchkey(&url, &unknown_token(), &["verify", "--server", "not a url"]).fails(1);
    assert!(
        stderr.starts_with("latchkey: --server not a url: "),
        "{stderr}"
    );
}

#[test]
fn a_bad_flag_value_is_refused_naming_the_flag() {
    let url = closed_port();
    let token = unknown_token();
    let cases: [(&[&str], &str); 5] = [
        (
            &["tenants", "create", "--name", "c", "--mode", "bogus"],
            "--mode",
        ),
        (&["tenants", "show", "not-a-uuid"], "<TENANT_ID>"),
        (&["audit", "--from", "yesterday"], "--from"),
        (&["export", "--after", "4x"], "--after"),
        (
            &[
                "policy",
                "set",
                "--tenant",
                "01a20887-aaf8-733e-bf6a-a8477769f5d0",
                "--max-session-minutes",
                "0",
            ],
            "--max-session-minutes",
        ),
    ];
    for (args, flag) in cases {
        let stderr = latchkey(&url, &token, args).fails(2);
        assert!(
            stderr.contains(&format!("for '{flag}")),
            "{args:?}: {stderr}"
        );
    }
    // Nothing to change is refused too, listing what could be changed.
    let stderr = latchkey(
        &url,
        &token,
        &[
            "policy",
            "set",
            "--tenant",
            "01a20887-aaf8-733e-bf6a-a8477769f5d0",
        ],
    )
    .fails(2);
    assert!(stderr.contains("--admin-group"), "{stderr}");
}

#[test]
fn a_value_the_server_refuses_is_explained_with_its_field() {
    let msp = Msp::start();
    let stderr = msp
        .cli(&[
            "tenants",
            "create",
            "--name",
            "Customer 1",
            "--mode",
            "named",
        ])
        .fails(1);
    assert!(stderr.starts_with("latchkey: name must be "), "{stderr}");
    assert!(stderr.trim_end().ends_with("(field: name)"), "{stderr}");
    let missing = uuid::Uuid::now_v7();
    let stderr = msp.cli(&["tenants", "show", &missing.to_string()]).fails(1);
    assert_eq!(stderr, "latchkey: the tenant does not exist\n");
    // Nothing was created by the refused request.
    let list = msp.cli(&["tenants", "list", "--json"]).json();
    assert_eq!(list["tenants"], Value::Array(vec![]));
}

#[test]
fn help_names_the_commands_and_never_shows_the_token() {
    let token = unknown_token();
    let run = latchkey(&closed_port(), &token, &["--help"]);
    let help = run.ok();
    for command in [
        "tenants",
        "mode",
        "policy",
        "technicians",
        "tokens",
        "enrollment-token",
        "computers",
        "sessions",
        "standing-privilege",
        "stuck",
        "audit",
        "verify",
        "export",
    ] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(command)),
            "{command} missing from:\n{help}"
        );
    }
    let help = latchkey(&closed_port(), &token, &["tenants", "list", "--help"]).ok();
    assert!(
        help.contains("LATCHKEY_TOKEN") && help.contains("--server"),
        "{help}"
    );
}

#[test]
fn tokens_are_issued_with_an_expiry_listed_rotated_and_an_expired_one_is_named() {
    let msp = Msp::start();
    let issued = msp
        .cli(&[
            "tokens",
            "issue",
            "--role",
            "auditor",
            "--name",
            "aud@msp.example",
            "--expires-in",
            "2h",
            "--json",
        ])
        .json();
    let (token, id) = (
        issued["token"].as_str().unwrap().to_owned(),
        issued["token_id"].as_str().unwrap().to_owned(),
    );
    let expires_at: chrono::DateTime<chrono::Utc> =
        issued["expires_at"].as_str().unwrap().parse().unwrap();
    let left = (expires_at - chrono::Utc::now()).num_seconds();
    assert!((7_100..=7_200).contains(&left), "{left} s left");

    let list = msp.cli(&["tokens", "list", "--role", "auditor"]).ok();
    assert!(list.starts_with("TOKEN_ID"), "{list}");
    let row = list
        .lines()
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("{list}"));
    assert!(
        row.contains("aud@msp.example") && row.contains("live"),
        "{row}"
    );
    assert!(!list.contains(&token[token.len() - 43..]));

    let rotated = msp.cli(&["tokens", "rotate", &id, "--json"]).json();
    let new = rotated["token"].as_str().unwrap();
    assert_eq!(rotated["token_id"], id.as_str());
    let stderr = latchkey(&msp.url, &token, &["audit"]).fails(1);
    assert!(stderr.contains("refused the token"), "{stderr}");
    latchkey(&msp.url, new, &["audit"]).ok();

    let stderr = msp
        .cli(&[
            "tokens",
            "issue",
            "--role",
            "auditor",
            "--name",
            "x@msp.example",
            "--expires-in",
            "9999d",
        ])
        .fails(1);
    assert!(stderr.contains("expires_in must be at most"), "{stderr}");
    let stderr = msp
        .cli(&[
            "tokens",
            "issue",
            "--role",
            "auditor",
            "--expires-in",
            "soon",
        ])
        .fails(2);
    assert!(stderr.contains("duration"), "{stderr}");

    // An expired token is said to be expired, not merely refused.
    let short = msp
        .cli(&[
            "tokens",
            "issue",
            "--role",
            "auditor",
            "--name",
            "y@msp.example",
            "--expires-in",
            "1s",
            "--json",
        ])
        .json();
    std::thread::sleep(Duration::from_millis(1_300));
    let stderr = latchkey(&msp.url, short["token"].as_str().unwrap(), &["audit"]).fails(1);
    assert!(stderr.contains("the API token expired at"), "{stderr}");
}
