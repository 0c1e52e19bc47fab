//! The daemon (`latchkey-agent run`): holds its computer's command subscription (a long
//! poll), carries out each request exactly once through the journal and reports what the
//! machine shows; keeps the offline secrets fresh, uploads buffered offline logins, takes
//! back expired offline access and reports the admin group's members.
//!
//! It resumes by construction: a request stays in the server's feed until its result is
//! recorded, so after a disconnect or restart the daemon simply polls again. It never exits
//! for an unreachable server (it backs off and retries), only for a refused credential.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::client::{Client, ClientError, ServerUrl};
use crate::executor::Executor;
use crate::journal::{CommandKey, Journal, Step};
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
    /// The longest a command poll waits (1-60 s).
    pub poll_seconds: u64,
    pub inventory_every: Duration,
    pub secrets_every: Duration,
    /// The longest pause between retries while the server cannot be reached.
    pub max_backoff: Duration,
    /// A test seam: abort the process right after applying this request, before reporting
    /// it (a crash at the worst moment, on purpose).
    pub crash_before_reporting: Option<u64>,
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
    #[error(transparent)]
    State(#[from] StateError),
}

/// Runs until the credential is refused (or a state file cannot be used).
pub fn run(config: &RunConfig) -> Result<(), RunError> {
    let backend = LinuxShadow::new(&config.root);
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
    let client = Client::with_token(server, credential.agent_token.clone()).map_err(|e| {
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
}

impl Daemon<'_> {
    /// One round: the periodic chores that are due, then one long poll and its commands. An
    /// `Err` is the server being unreachable (retry later) or refusing the credential (stop);
    /// other refusals are logged and the round goes on.
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
        let commands = self.client.commands(self.wait_seconds())?;
        if commands.is_empty() {
            return Ok(());
        }
        for command in &commands {
            let key = CommandKey {
                request_id: command.request_id,
                attempt: command.attempt,
            };
            let carried =
                Executor::new(self.backend, self.state).carry_out(&mut self.journal, command);
            tracing::info!(%key, operation = %command.operation, outcome = %carried.outcome, applied_now = carried.applied_now, "request carried out");
            if carried.applied_now && self.config.crash_before_reporting == Some(command.request_id)
            {
                tracing::error!(%key, "crashing before reporting, as asked (--crash-before-reporting)");
                std::process::abort();
            }
            self.client.report(command.request_id, &carried.outcome)?;
            if let Err(e) = self.journal.record(key, Step::Reported, None) {
                // Harmless: a request seen again after its report is a no-op on the server.
                tracing::warn!(%key, error = %e, "cannot journal the report");
            }
        }
        // Accounts may have come or gone: their offline secrets too.
        self.next_secrets = Instant::now();
        Ok(())
    }

    /// The poll's wait: no longer than until the next chore is due, at least one second.
    fn wait_seconds(&self) -> u64 {
        let now = Instant::now();
        let mut wait = Duration::from_secs(self.config.poll_seconds);
        for due in [self.next_secrets, self.next_inventory] {
            wait = wait.min(due.saturating_duration_since(now));
        }
        if let Ok(Some(until)) = offline::next_expiry(self.state) {
            let left = (until - Utc::now()).to_std().unwrap_or_default();
            wait = wait.min(left);
        }
        wait.as_secs().max(1)
    }

    fn refresh_secrets(&self) -> Result<(), ClientError> {
        let secrets = self.client.offline_secrets()?;
        if let Err(e) = offline::store_secrets(self.state, secrets, Utc::now()) {
            tracing::warn!(error = %e, "cannot keep the offline secrets");
        }
        Ok(())
    }

    /// Uploads each buffered offline login; its file goes only after the server's 200.
    fn upload_offline_logins(&self) -> Result<(), ClientError> {
        let pending = match offline::pending(self.state) {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the buffered offline logins");
                return Ok(());
            }
        };
        for (path, login) in pending {
            match self.client.offline_login(&login) {
                Ok(()) => {}
                // One login the server refuses stays buffered (and is logged each round)
                // without holding up the others.
                Err(e @ (ClientError::Refused { .. } | ClientError::BadAnswer { .. })) => {
                    tracing::warn!(login_id = %login.login_id, error = %e, "the server refused a buffered offline login; it is kept");
                    continue;
                }
                Err(e) => return Err(e),
            }
            tracing::info!(login_id = %login.login_id, account = %login.account, "offline login uploaded");
            if let Err(e) = self.state.remove(&path) {
                tracing::warn!(error = %e, "cannot remove an uploaded offline login (it will be sent again, harmlessly)");
            }
        }
        Ok(())
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
        match self.backend.group_members(&group) {
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

/// A chore's refusal by the server is logged, not fatal; unreachable and unauthorized are
/// passed on.
fn tolerate(result: Result<(), ClientError>, chore: &str) -> Result<(), ClientError> {
    match result {
        Err(e @ (ClientError::Refused { .. } | ClientError::BadAnswer { .. })) => {
            tracing::warn!(error = %e, "{chore} failed");
            Ok(())
        }
        other => other,
    }
}
