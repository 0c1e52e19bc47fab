//! The daemon (`latchkey-agent run`): holds its computer's event feed (one quiet connection
//! the server pushes the requests not yet reported on through), carries out each request
//! exactly once through the journal and reports what the machine shows; keeps the offline
//! secrets fresh, uploads buffered offline logins, takes back expired offline access and
//! reports the admin group's members, each on its timer. A server without the event feed
//! (an older one answers 404) is long-polled instead.
//!
//! It resumes by construction: a request stays in the server's feed until its result is
//! recorded, so after a disconnect or restart the daemon simply connects again. It never
//! exits for an unreachable server (it backs off and retries), only for a refused credential.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::client::{Client, ClientError, DeliveredCommand, Feed, FeedNews, ServerUrl, TrustedCas};
use crate::executor::Executor;
use crate::journal::{CommandKey, Journal, Status, Step};
use crate::offline;
use crate::os::linux::LinuxShadow;
use crate::os::{AccountBackend, OsError};
use crate::state::{StateDir, StateError, CREDENTIAL};

/// What `run` was told, validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub state: PathBuf,
    /// The root the shadow-utils work on (`/` on a real machine).
    pub root: PathBuf,
    /// The longest the daemon waits for requests before a round of its own (1-60 s): one
    /// long poll's wait on a server without the event feed; on the feed, how often it looks
    /// for buffered offline logins to upload.
    pub poll_seconds: u64,
    pub inventory_every: Duration,
    pub secrets_every: Duration,
    /// The longest pause between retries while the server cannot be reached.
    pub max_backoff: Duration,
    /// A test seam: abort the process right after applying this request, before reporting
    /// it (a crash at the worst moment, on purpose).
    pub crash_before_reporting: Option<u64>,
    /// CA certificates to trust for the server's certificate (`--ca-file`); `None`: the
    /// file recorded at enrollment, if any.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(
        "--state {dir}: this computer is not enrolled ({dir}/{CREDENTIAL} is missing); run \
         `latchkey-agent enroll --server URL --token TOKEN --state {dir}` first"
    )]
    NotEnrolled { dir: String },
    #[error("--state {dir}: another latchkey-agent daemon is running with this state directory")]
    AlreadyRunning { dir: String },
    #[error("{dir}/{CREDENTIAL}: the server URL {server:?} is not usable: {reason}")]
    BadCredential {
        dir: String,
        server: String,
        reason: String,
    },
    #[error(
        "the server at {server} refused this agent's credential ({detail}): it was revoked or \
         the computer was removed. Re-enroll this computer with a new enrollment token: remove \
         {dir}/{CREDENTIAL}, then run `latchkey-agent enroll --server {server} --token TOKEN \
         --state {dir}`"
    )]
    Revoked {
        server: String,
        detail: String,
        dir: String,
    },
    /// The CA file (`--ca-file`, or the one recorded at enrollment) cannot be used.
    #[error("{0}")]
    BadCaFile(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Runs until the credential is refused (or a state file cannot be used).
pub fn run(config: &RunConfig) -> Result<(), RunError> {
    let backend = LinuxShadow::new(&config.root, config.state.join(crate::state::UIDS));
    run_with(config, &backend)
}

/// The daemon on any account backend.
pub fn run_with(config: &RunConfig, backend: &dyn AccountBackend) -> Result<(), RunError> {
    let dir = config.state.display().to_string();
    let state = StateDir::open(&config.state)?;
    let credential = state
        .credential()?
        .ok_or_else(|| RunError::NotEnrolled { dir: dir.clone() })?;
    let _running = state
        .try_lock_daemon()?
        .ok_or_else(|| RunError::AlreadyRunning { dir: dir.clone() })?;
    let server =
        ServerUrl::parse(&credential.server).map_err(|reason| RunError::BadCredential {
            dir: dir.clone(),
            server: credential.server.clone(),
            reason,
        })?;
    let cas = match config.ca_file.as_ref().or(credential.ca_file.as_ref()) {
        Some(path) => TrustedCas::load(path).map_err(RunError::BadCaFile)?,
        None => TrustedCas::default(),
    };
    let client = Client::new(server, Some(credential.agent_token.clone()), cas).map_err(|e| {
        RunError::BadCredential {
            dir: dir.clone(),
            server: credential.server.clone(),
            reason: e.to_string(),
        }
    })?;
    let mut daemon = Daemon {
        config,
        state: &state,
        client,
        backend,
        journal: Journal::open(&state)?,
        next_secrets: Instant::now(),
        next_inventory: Instant::now(),
        feed: None,
        polling_until: None,
    };
    tracing::info!(
        computer_id = %credential.computer_id,
        hostname = %credential.hostname,
        server = %credential.server,
        root = %config.root.display(),
        "latchkey-agent running"
    );
    let mut backoff = Duration::from_secs(1);
    loop {
        daemon.expire_offline_grants();
        match daemon.round() {
            Ok(()) => backoff = Duration::from_secs(1),
            Err(ClientError::Unauthorized { detail }) => {
                return Err(RunError::Revoked {
                    server: credential.server.clone(),
                    detail,
                    dir,
                })
            }
            Err(e) => {
                daemon.feed = None;
                tracing::warn!(error = %e, retry_in = ?backoff, "the server cannot be used right now");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(config.max_backoff);
            }
        }
    }
}

struct Daemon<'a> {
    config: &'a RunConfig,
    state: &'a StateDir,
    client: Client,
    backend: &'a dyn AccountBackend,
    journal: Journal,
    next_secrets: Instant,
    next_inventory: Instant,
    /// The event feed while it is open: what it brings, read by a thread of its own.
    feed: Option<Receiver<Heard>>,
    /// The server answered 404 for the event feed: long-poll instead until then, and try the
    /// feed again (the server may have been upgraded).
    polling_until: Option<Instant>,
}

/// What the event feed brought, or why it is over.
type Heard = Result<FeedNews, ClientError>;

/// How long the daemon long-polls a server without the event feed before trying it again.
const FEED_RETRY: Duration = Duration::from_secs(600);

impl Daemon<'_> {
    /// One round: the periodic chores that are due, then the requests that came within
    /// [`Daemon::wait`] (on the event feed, or in one long poll), carried out and reported. An
    /// `Err` is the server being unreachable (retry later) or refusing the credential (stop);
    /// other refusals are logged and the round goes on. The caller closes the feed on `Err`.
    fn round(&mut self) -> Result<(), ClientError> {
        if Instant::now() >= self.next_secrets {
            tolerate(self.refresh_secrets(), "fetching the offline secrets")?;
            self.next_secrets = Instant::now() + self.config.secrets_every;
        }
        tolerate(self.upload_offline_logins(), "uploading offline logins")?;
        if Instant::now() >= self.next_inventory {
            tolerate(self.report_inventory(), "reporting the admin group")?;
            self.next_inventory = Instant::now() + self.config.inventory_every;
        }
        let wait = self.wait();
        if self
            .polling_until
            .is_some_and(|until| Instant::now() < until)
        {
            let commands = self.client.commands(wait.as_secs())?;
            return self.carry_out(&commands);
        }
        self.polling_until = None;
        if self.feed.is_none() {
            let Some(feed) = self.client.feed()? else {
                tracing::info!(
                    poll_seconds = self.config.poll_seconds,
                    retry_in = ?FEED_RETRY,
                    "the server has no event feed (an older server): long-polling instead"
                );
                self.polling_until = Some(Instant::now() + FEED_RETRY);
                return Ok(());
            };
            tracing::info!(server = feed.server(), "holding the event feed");
            self.feed = Some(listen(feed)?);
        }
        let feed = self.feed.as_ref().expect("the feed is open");
        let until = Instant::now() + wait;
        loop {
            match feed.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(Ok(FeedNews::Commands(commands))) => return self.carry_out(&commands),
                Ok(Ok(FeedNews::KeepAlive)) => {}
                Ok(Err(e)) => return Err(e),
                Err(RecvTimeoutError::Timeout) => return Ok(()), // time for a chore
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(ClientError::Unreachable {
                        url: self.client.server().as_str(),
                        reason: "the event feed's reader stopped".into(),
                    })
                }
            }
        }
    }

    /// Carries out and reports each request in order, except those the journal says were
    /// reported already: a feed event lists every request not yet reported on when the
    /// server sent it, so it may name some the agent has reported since (and a reported
    /// request is never handed out again, so nothing is lost by passing over it).
    fn carry_out(&mut self, commands: &[DeliveredCommand]) -> Result<(), ClientError> {
        let mut carried_any = false;
        for command in commands {
            let key = CommandKey {
                request_id: command.request_id.0,
                attempt: command.attempt,
            };
            if let Status::Ended { reported: true, .. } = self.journal.status(key) {
                tracing::debug!(%key, "passing over a request already reported");
                continue;
            }
            carried_any = true;
            let carried =
                Executor::new(self.backend, self.state).carry_out(&mut self.journal, command);
            tracing::info!(%key, operation = %command.operation, outcome = %carried.outcome, applied_now = carried.applied_now, "request carried out");
            if carried.applied_now
                && self.config.crash_before_reporting == Some(command.request_id.0)
            {
                tracing::error!(%key, "crashing before reporting, as asked (--crash-before-reporting)");
                std::process::abort();
            }
            self.client.report(command.request_id.0, &carried.outcome)?;
            if let Err(e) = self.journal.record(key, Step::Reported, None) {
                // Harmless: a request seen again after its report is a no-op on the server.
                tracing::warn!(%key, error = %e, "cannot journal the report");
            }
        }
        if carried_any {
            // Accounts may have come or gone: their offline secrets too.
            self.next_secrets = Instant::now();
        }
        Ok(())
    }

    /// How long to wait for requests: no longer than `--poll-seconds` and than until the next
    /// chore is due, at least one second.
    fn wait(&self) -> Duration {
        let now = Instant::now();
        let mut wait = Duration::from_secs(self.config.poll_seconds);
        for due in [self.next_secrets, self.next_inventory] {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if let Ok(Some(until)) = offline::next_expiry(self.state) {
            let left = (until - Utc::now()).to_std().unwrap_or_default();
            wait = wait.min(left);
        }
        Duration::from_secs(wait.as_secs().max(1))
    }

    fn refresh_secrets(&self) -> Result<(), ClientError> {
        let secrets = self.client.offline_secrets()?;
        if let Err(e) = offline::store_secrets(self.state, secrets, Utc::now()) {
            tracing::warn!(error = %e, "cannot keep the offline secrets");
        }
        Ok(())
    }

    /// Uploads each buffered offline login, then each buffered lockout of offline login; a
    /// file goes only after the server's 200.
    fn upload_offline_logins(&self) -> Result<(), ClientError> {
        let logins = offline::pending(self.state);
        upload(self.state, "offline login", logins, |login| {
            self.client.offline_login(login)?;
            tracing::info!(login_id = %login.login_id, account = %login.account, "offline login uploaded");
            Ok(())
        })?;
        let lockouts = offline::pending_lockouts(self.state);
        upload(self.state, "offline lockout", lockouts, |lockout| {
            self.client.offline_lockout(lockout)?;
            tracing::info!(lockout_id = %lockout.lockout_id, account = %lockout.account, "offline lockout uploaded");
            Ok(())
        })
    }

    fn report_inventory(&self) -> Result<(), ClientError> {
        let group = match offline::load_secrets(self.state) {
            Ok(Some(stored)) => stored.secrets.admin_group,
            Ok(None) => return Ok(()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the admin group from the offline secrets");
                return Ok(());
            }
        };
        match self.backend.group_members(group.as_str()) {
            Ok(members) => self.client.inventory(&group, &members),
            Err(OsError::GroupMissing { .. }) => {
                tracing::warn!(%group, "the admin group does not exist on this machine");
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%group, error = %e, "cannot read the admin group");
                Ok(())
            }
        }
    }

    fn expire_offline_grants(&self) {
        match offline::expire(self.state, self.backend, Utc::now()) {
            Ok(taken) => {
                for grant in taken {
                    tracing::info!(account = %grant.account, group = %grant.group, login_id = %grant.login_id, "offline access expired and taken back");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the offline grants"),
        }
    }
}

/// Reads the event feed on a thread of its own, so that the daemon keeps its timers while the
/// feed is quiet. The thread ends after passing on the error that ends the feed, or once the
/// daemon has let go of the receiver, at the next event or keep-alive (so a feed the daemon
/// gave up on is closed within a heartbeat).
fn listen(mut feed: Feed) -> Result<Receiver<Heard>, ClientError> {
    // One list at a time: the daemon carries out one before it reads the next.
    let (sender, heard) = mpsc::sync_channel(1);
    let server = feed.server().to_owned();
    std::thread::Builder::new()
        .name("event-feed".into())
        .spawn(move || loop {
            let next = feed.next_news();
            let over = next.is_err();
            if sender.send(next).is_err() || over {
                return;
            }
        })
        .map_err(|e| ClientError::Unreachable {
            url: server,
            reason: format!("cannot start a thread to read the event feed: {e}"),
        })?;
    Ok(heard)
}

/// A chore's refusal by the server is logged, not fatal; unreachable and unauthorized are
/// passed on.
/// Sends each buffered item of an outbox and removes its file once the server has it. One
/// item the server refuses stays buffered (and is logged each round) without holding up the
/// others; an unreachable server stops the round.
fn upload<T>(
    state: &StateDir,
    what: &str,
    pending: Result<Vec<(PathBuf, T)>, StateError>,
    send: impl Fn(&T) -> Result<(), ClientError>,
) -> Result<(), ClientError> {
    let pending = match pending {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the buffered {what}s");
            return Ok(());
        }
    };
    for (path, item) in pending {
        match send(&item) {
            Ok(()) => {}
            Err(e @ (ClientError::Refused { .. } | ClientError::BadAnswer { .. })) => {
                tracing::warn!(file = %path.display(), error = %e, "the server refused a buffered {what}; it is kept");
                continue;
            }
            Err(e) => return Err(e),
        }
        if let Err(e) = state.remove(&path) {
            tracing::warn!(error = %e, "cannot remove an uploaded {what} (it will be sent again, harmlessly)");
        }
    }
    Ok(())
}

fn tolerate(result: Result<(), ClientError>, chore: &str) -> Result<(), ClientError> {
    match result {
        Err(e @ (ClientError::Refused { .. } | ClientError::BadAnswer { .. })) => {
            tracing::warn!(error = %e, "{chore} failed");
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::journal;
    use crate::os::memory::MemoryAccounts;
    use crate::state::Credential;

    /// A request as the stub server saw it.
    #[derive(Debug, Clone)]
    struct Seen {
        method: String,
        /// The path and query.
        target: String,
        body: String,
    }

    /// How the stub answers one request.
    enum Reply {
        /// The whole response; the connection is closed after it.
        Whole(String),
        /// The response's head and first events, then a keep-alive every 50 ms until the
        /// client closes the connection, which sets the flag.
        KeepingAlive(String, Arc<AtomicBool>),
    }

    /// A server on loopback that answers each request with `answer(request, everything seen
    /// before it)`, each connection on a thread of its own; returns its URL and what it saw.
    fn stub(
        answer: impl Fn(&Seen, &[Seen]) -> Reply + Send + Sync + 'static,
    ) -> (String, Arc<Mutex<Vec<Seen>>>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let answer = Arc::new(answer);
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let (mut stream, answer, log) = (stream.unwrap(), answer.clone(), log.clone());
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    let mut words = line.split_whitespace();
                    let (method, target) = (
                        words.next().unwrap_or_default().to_owned(),
                        words.next().unwrap_or_default().to_owned(),
                    );
                    let mut length = 0;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap() == 0 || header.trim().is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap();
                            }
                        }
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    let request = Seen {
                        method,
                        target,
                        body: String::from_utf8(body).unwrap(),
                    };
                    let reply = {
                        let mut log = log.lock().unwrap();
                        let reply = answer(&request, &log);
                        log.push(request);
                        reply
                    };
                    match reply {
                        Reply::Whole(text) => {
                            let _ = stream.write_all(text.as_bytes());
                        }
                        Reply::KeepingAlive(text, closed) => {
                            let mut sent = stream.write_all(text.as_bytes());
                            let start = Instant::now();
                            while sent.is_ok() && start.elapsed() < Duration::from_secs(60) {
                                std::thread::sleep(Duration::from_millis(50));
                                sent = stream.write_all(b": keep-alive\n\n");
                            }
                            closed.store(sent.is_err(), Ordering::SeqCst);
                        }
                    }
                });
            }
        });
        (url, seen)
    }

    fn json(status: &str, body: &str) -> Reply {
        Reply::Whole(format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ))
    }

    const EVENT_STREAM: &str =
        "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

    fn events(body: &str) -> Reply {
        Reply::Whole(format!("{EVENT_STREAM}{body}"))
    }

    fn commands_event(commands: &[serde_json::Value]) -> String {
        format!(
            "event: commands\ndata: {}\n\n",
            serde_json::json!({ "commands": commands })
        )
    }

    fn ensure(request_id: u64) -> serde_json::Value {
        serde_json::json!({"request_id": request_id, "attempt": 1,
            "operation": {"op": "ensure_account", "account": "msp-nik"}})
    }

    fn add(request_id: u64) -> serde_json::Value {
        serde_json::json!({"request_id": request_id, "attempt": 1,
            "operation": {"op": "add_to_group", "account": "msp-nik", "group": "Administrators"}})
    }

    /// Answers the chores' requests the way a server without offline secrets would.
    fn chore(request: &Seen) -> Option<Reply> {
        match (request.method.as_str(), request.target.as_str()) {
            ("GET", "/v1/agent/offline-secrets") => {
                Some(json("404 Not Found", r#"{"detail":"none"}"#))
            }
            ("POST", "/v1/agent/results") => Some(json("200 OK", r#"{"recorded":1}"#)),
            _ => None,
        }
    }

    /// A daemon enrolled with the server at `url`, on the memory backend, run until it stops.
    fn run_daemon(url: &str) -> (Result<(), RunError>, MemoryAccounts, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        state
            .write_json(
                CREDENTIAL,
                &Credential {
                    server: url.to_owned(),
                    computer_id: uuid::Uuid::new_v4(),
                    tenant_id: uuid::Uuid::new_v4(),
                    hostname: "W11-STUB".into(),
                    agent_token: "lk_test".into(),
                    enrolled_at: Utc::now(),
                    ca_file: None,
                },
            )
            .unwrap();
        let config = RunConfig {
            state: state.path().to_owned(),
            root: dir.path().join("root"),
            poll_seconds: 7,
            inventory_every: Duration::from_secs(3600),
            secrets_every: Duration::from_secs(3600),
            max_backoff: Duration::from_secs(1),
            crash_before_reporting: None,
            ca_file: None,
        };
        let backend = MemoryAccounts::new(&["Administrators"]);
        let ended = run_with(&config, &backend);
        (ended, backend, dir)
    }

    fn reported(seen: &[Seen]) -> Vec<(u64, String)> {
        seen.iter()
            .filter(|r| r.target == "/v1/agent/results")
            .map(|r| {
                let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
                (
                    body["request_id"].as_u64().unwrap(),
                    body["outcome"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    }

    /// Each `applying` line of the journal, as (request id, how many times).
    fn applied(dir: &tempfile::TempDir) -> Vec<(u64, usize)> {
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let mut counts = std::collections::BTreeMap::new();
        for record in journal::read(&state).unwrap() {
            if record.step == Step::Applying {
                *counts.entry(record.request_id).or_insert(0) += 1;
            }
        }
        counts.into_iter().collect()
    }

    #[test]
    fn on_the_event_feed_each_request_is_carried_out_and_reported_once_whatever_the_lists_repeat() {
        let (url, seen) = stub(|request, before| {
            if let Some(reply) = chore(request) {
                return reply;
            }
            assert_eq!(request.target, "/v1/agent/feed", "{request:?}");
            let opened = before
                .iter()
                .filter(|r| r.target == "/v1/agent/feed")
                .count();
            match opened {
                // Each list as the server sends it: the second and third were current before
                // the agent's reports reached it. Then the server fails and closes.
                0 => events(&format!(
                    ": keep-alive\n\n{}{}{}event: end\ndata: {{\"reason\":\"server error; reconnect\"}}\n\n",
                    commands_event(&[ensure(1), add(2)]),
                    commands_event(&[add(2)]),
                    commands_event(&[]),
                )),
                _ => events(&format!(
                    "{}event: end\ndata: {{\"reason\":\"the agent's credential was revoked\"}}\n\n",
                    commands_event(&[]),
                )),
            }
        });
        let (ended, backend, dir) = run_daemon(&url);
        match ended {
            Err(RunError::Revoked { detail, .. }) => {
                assert_eq!(detail, "the agent's credential was revoked")
            }
            other => panic!("{other:?}"),
        }
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            reported(&seen),
            [(1, "succeeded".to_owned()), (2, "succeeded".to_owned())],
            "each reported once: {seen:#?}"
        );
        assert_eq!(applied(&dir), [(1, 1), (2, 1)]);
        assert_eq!(
            backend.group_members("Administrators").unwrap(),
            ["msp-nik"]
        );
        assert_eq!(
            seen.iter().filter(|r| r.target == "/v1/agent/feed").count(),
            2,
            "the feed is opened again after the server ended it"
        );
        assert!(
            !seen
                .iter()
                .any(|r| r.target.starts_with("/v1/agent/commands")),
            "no long poll: {seen:#?}"
        );
    }

    #[test]
    fn a_server_without_the_event_feed_is_long_polled_with_the_poll_seconds() {
        let (url, seen) = stub(|request, before| {
            if let Some(reply) = chore(request) {
                return reply;
            }
            if request.target == "/v1/agent/feed" {
                return json("404 Not Found", r#"{"detail":"no such route"}"#);
            }
            assert!(
                request.target.starts_with("/v1/agent/commands?"),
                "{request:?}"
            );
            match before.iter().any(|r| r.target == "/v1/agent/results") {
                false => json(
                    "200 OK",
                    &serde_json::json!({"commands": [ensure(1)]}).to_string(),
                ),
                // Once the result is in, the credential is revoked: the daemon stops.
                true => json("401 Unauthorized", r#"{"detail":"revoked"}"#),
            }
        });
        let (ended, _backend, dir) = run_daemon(&url);
        assert!(
            matches!(&ended, Err(RunError::Revoked { detail, .. }) if detail == "revoked"),
            "{ended:?}"
        );
        let seen = seen.lock().unwrap().clone();
        assert_eq!(reported(&seen), [(1, "succeeded".to_owned())]);
        assert_eq!(applied(&dir), [(1, 1)]);
        let polls: Vec<&str> = seen
            .iter()
            .filter(|r| r.target.starts_with("/v1/agent/commands"))
            .map(|r| r.target.as_str())
            .collect();
        assert_eq!(polls, ["/v1/agent/commands?wait=7"; 2], "{seen:#?}");
        assert_eq!(
            seen.iter().filter(|r| r.target == "/v1/agent/feed").count(),
            1,
            "the feed is asked for once, not before every poll"
        );
    }

    #[test]
    fn a_feed_the_daemon_lets_go_of_is_closed_at_its_next_keep_alive() {
        let closed = Arc::new(AtomicBool::new(false));
        let flag = closed.clone();
        let (url, _seen) = stub(move |_, _| {
            Reply::KeepingAlive(
                format!("{EVENT_STREAM}{}", commands_event(&[])),
                flag.clone(),
            )
        });
        let client = Client::with_token(ServerUrl::parse(&url).unwrap(), "lk_test".into()).unwrap();
        let heard = listen(client.feed().unwrap().expect("a feed")).unwrap();
        let first = heard.recv().unwrap();
        assert!(
            matches!(&first, Ok(FeedNews::Commands(c)) if c.is_empty()),
            "{first:?}"
        );
        // The daemon gives up on the feed (say, a report failed): its reader thread must not
        // keep the connection open.
        drop(heard);
        let start = Instant::now();
        while !closed.load(Ordering::SeqCst) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the feed is still open"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
