//! The `latchkey` CLI's client commands: admin and auditor tasks against a running server.
//!
//! Every command talks to the REST API under `/v1` of `--server` (`LATCHKEY_SERVER`) with the
//! API token from `--token` (`LATCHKEY_TOKEN`). The token only ever travels in the
//! `Authorization` header: it is never printed, logged or shown in `--help`. Output is meant
//! for people; `--json` prints the server's JSON instead, for scripts. Errors come back as
//! one clear sentence: the server unreachable, the token refused, or the `detail` (and
//! `field`) of the server's problem document.

use clap::{Args, Subcommand, ValueEnum};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde_json::{json, Map, Value};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

/// Where the server listens unless told otherwise (`latchkey serve`'s default).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Said when the server answers 401.
pub const TOKEN_REFUSED: &str = "the server refused the token (LATCHKEY_TOKEN / --token)";

/// How long an ordinary request may take, connection included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one page of an export may take.
const EXPORT_PAGE_TIMEOUT: Duration = Duration::from_secs(600);
/// Events asked for per export page (the server's maximum).
const EXPORT_PAGE: u32 = 10_000;
/// Audit lines asked for per page (the server's maximum).
const AUDIT_PAGE: u64 = 1000;

/// How to reach the server; accepted by every client command, before or after its
/// subcommand. Deliberately not `Debug`: it holds the token.
#[derive(Args, Clone)]
pub struct Connection {
    /// The server's base URL.
    #[arg(
        long,
        value_name = "URL",
        env = "LATCHKEY_SERVER",
        default_value = DEFAULT_SERVER,
        global = true,
        help_heading = "Server"
    )]
    server: String,
    /// The API token to act with (required; sent only as a bearer token, never printed).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LATCHKEY_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Server"
    )]
    token: Option<String>,
    /// A PEM file of CA certificates to trust for the server's HTTPS certificate, besides the
    /// system's (for a server whose certificate comes from a private CA).
    #[arg(
        long,
        value_name = "FILE",
        env = "LATCHKEY_CA_FILE",
        global = true,
        help_heading = "Server"
    )]
    ca_file: Option<PathBuf>,
    /// Print the server's JSON instead of the readable form.
    #[arg(long, global = true, help_heading = "Server")]
    json: bool,
}

/// The commands that talk to a running server.
#[derive(Subcommand)]
pub enum ClientCommand {
    /// List, create and show tenants (the MSP's customers).
    Tenants {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: TenantsCommand,
    },
    /// Change a tenant's technician login mode (named, shared or ephemeral).
    Mode {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: ModeCommand,
    },
    /// Show or change a tenant's just-in-time access policy.
    Policy {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Register, list and offboard technicians, and manage their tenant memberships.
    Technicians {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: TechniciansCommand,
    },
    /// Issue, list, rotate and revoke API tokens.
    Tokens {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Create a one-time token that enrolls an agent's computer into a tenant (shown once).
    EnrollmentToken {
        #[command(flatten)]
        connection: Connection,
        /// The tenant the computer joins.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
        /// Minutes until the token expires (1 to 10080) [server default: 60].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_080))]
        expires_in_minutes: Option<u32>,
    },
    /// List a tenant's computers, or show one with its managed accounts.
    Computers {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: ComputersCommand,
    },
    /// List a tenant's sessions, or revoke one.
    Sessions {
        #[command(flatten)]
        connection: Connection,
        #[command(subcommand)]
        command: SessionsCommand,
    },
    /// The Latchkey accounts on a tenant's computers, as their agents last verified them.
    Accounts {
        #[command(flatten)]
        connection: Connection,
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
    },
    /// Admin-group memberships on a tenant's computers that no open session accounts for.
    StandingPrivilege {
        #[command(flatten)]
        connection: Connection,
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
    },
    /// Revocations and clean-ups the agent failed to carry out, waiting for a retry.
    Stuck {
        #[command(flatten)]
        connection: Connection,
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
    },
    /// Print the audit trail as `<time>  <sentence>` lines (all pages; `--json`: one entry a
    /// line), or follow the event log live with `audit tail`.
    Audit(AuditArgs),
    /// Verify the hash chains of the event log; exits non-zero if one is broken.
    Verify {
        #[command(flatten)]
        connection: Connection,
        /// Verify only this stream, e.g. `tenant-<id>` (tenant-scoped readers must name one).
        #[arg(long, value_name = "NAME")]
        stream: Option<String>,
    },
    /// Export the raw events, one JSON object a line (NDJSON), with their hashes.
    Export {
        #[command(flatten)]
        connection: Connection,
        /// Start after this log position (`<commit>.<prepare>`), e.g. the last one exported.
        #[arg(long, value_name = "POS", value_parser = parse_position)]
        after: Option<String>,
        /// Write to this file instead of standard output (written whole, then renamed).
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// List the tenants you can see.
    List,
    /// Create a tenant with the default (secure) JIT policy.
    Create {
        /// Short name: a-z, 0-9 and '-', e.g. `customer-1`.
        #[arg(long)]
        name: String,
        /// How technicians log into its computers.
        #[arg(long, value_enum)]
        mode: LoginMode,
    },
    /// Show a tenant: login mode, shared account and JIT policy.
    Show {
        /// The tenant's id.
        #[arg(value_name = "TENANT_ID")]
        id: Uuid,
    },
}

#[derive(Subcommand)]
pub enum ModeCommand {
    /// Set the technician login mode of a tenant.
    Set {
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
        /// The new login mode.
        #[arg(long, value_enum)]
        mode: LoginMode,
    },
}

#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Show a tenant's JIT policy (`--json` prints it in the form `policy set --file` takes).
    Show {
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
    },
    /// Change a tenant's JIT policy: from a JSON file, from flags for single fields, or
    /// both (the flags win). Fields not given keep their current value.
    Set(PolicySetArgs),
}

#[derive(Args)]
pub struct PolicySetArgs {
    /// The tenant.
    #[arg(long, value_name = "TENANT_ID")]
    tenant: Uuid,
    #[command(flatten)]
    changes: PolicyChanges,
}

/// What to change; at least one is needed.
#[derive(Args)]
#[group(required = true, multiple = true)]
pub struct PolicyChanges {
    /// A JSON file with the whole policy, as `policy show --json` prints it.
    #[arg(long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// The group that grants admin rights, e.g. `Administrators` or `sudo`.
    #[arg(long, value_name = "GROUP")]
    admin_group: Option<String>,
    /// What happens to the account when its last session is checked in.
    #[arg(long, value_enum)]
    on_check_in: Option<CheckInAction>,
    /// Sessions are checked in automatically after this many minutes (1 to 10080).
    #[arg(long, value_name = "MINUTES", value_parser = clap::value_parser!(u32).range(1..=10_080))]
    max_session_minutes: Option<u32>,
    /// Ephemeral mode: reuse the technician's previous account (needs
    /// `--on-check-in remove_from_group`).
    #[arg(long, value_name = "true|false")]
    reuse_existing_account: Option<bool>,
    /// Create accounts on the computer at check-out.
    #[arg(long, value_name = "true|false")]
    provisioning: Option<bool>,
    /// Rotate the password again when a session is checked in.
    #[arg(long, value_name = "true|false")]
    rotate_on_check_in: Option<bool>,
    /// Named mode: the account name template, containing `{username}` once.
    #[arg(long, value_name = "TEMPLATE")]
    named_account_template: Option<String>,
    /// Length of generated passwords (12 to 128).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(12..=128))]
    password_length: Option<u16>,
}

#[derive(Subcommand)]
pub enum TechniciansCommand {
    /// List technicians: all of them, or the members of one tenant.
    List {
        /// Only the members of this tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<Uuid>,
    },
    /// Register a technician (MSP staff).
    Create {
        /// 1-19 characters of a-z, 0-9, '.', '_' and '-', starting with a letter.
        #[arg(long)]
        username: String,
        /// The technician's e-mail address.
        #[arg(long)]
        email: String,
    },
    /// Show a technician and their tenants.
    Show {
        /// The technician's id.
        #[arg(value_name = "TECHNICIAN_ID")]
        id: Uuid,
    },
    /// Make a technician a member of a tenant.
    Add {
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
        /// The technician.
        #[arg(long, value_name = "TECHNICIAN_ID")]
        technician: Uuid,
    },
    /// Take a technician out of a tenant.
    Remove {
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
        /// The technician.
        #[arg(long, value_name = "TECHNICIAN_ID")]
        technician: Uuid,
    },
    /// Offboard a technician: every session of theirs is revoked and they can no longer log in.
    Offboard {
        /// The technician's id.
        #[arg(value_name = "TECHNICIAN_ID")]
        id: Uuid,
    },
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Issue an API token (printed once; the server keeps only its hash).
    Issue {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: TokenRole,
        /// The tenant (required for tenant_admin; optional for auditor, else all tenants).
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Option<Uuid>,
        /// The technician (required for technician).
        #[arg(long, value_name = "TECHNICIAN_ID")]
        technician: Option<Uuid>,
        /// The e-mail address of who will hold it (not needed for a technician token).
        #[arg(long, value_name = "EMAIL")]
        name: Option<String>,
        /// How long it lives, e.g. 30d, 12h, 3600s [server default; at most the server's
        /// maximum].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        expires_in: Option<u64>,
    },
    /// List API tokens (holder, role, scope, created, last used, expires; never a secret).
    List {
        /// Only tokens of this role.
        #[arg(long, value_enum)]
        role: Option<ListedRole>,
        /// Only this technician's tokens.
        #[arg(long, value_name = "TECHNICIAN_ID")]
        technician: Option<Uuid>,
        /// Revoked tokens too.
        #[arg(long)]
        revoked: bool,
    },
    /// Rotate an API token: a new secret (printed once) and a new expiry; the old secret
    /// stops working at once.
    Rotate {
        /// The token's id: the 32 hex digits after `lk_` in the token.
        #[arg(value_name = "TOKEN_ID")]
        id: Uuid,
        /// How long the rotated token lives, e.g. 30d [server default].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        expires_in: Option<u64>,
    },
    /// Revoke an API token.
    Revoke {
        /// The token's id: the 32 hex digits after `lk_` in the token.
        #[arg(value_name = "TOKEN_ID")]
        id: Uuid,
    },
}

/// A role to list tokens of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ListedRole {
    MspAdmin,
    TenantAdmin,
    Technician,
    Auditor,
    Agent,
}

impl ListedRole {
    fn as_str(self) -> &'static str {
        match self {
            ListedRole::MspAdmin => "msp_admin",
            ListedRole::TenantAdmin => "tenant_admin",
            ListedRole::Technician => "technician",
            ListedRole::Auditor => "auditor",
            ListedRole::Agent => "agent",
        }
    }
}

/// `--expires-in`: a duration (`30d`, `12h`, `3600s`, `3600`) as seconds.
fn parse_duration_arg(text: &str) -> Result<u64, String> {
    crate::config::parse_duration(text).map(|d| d.as_secs())
}

#[derive(Subcommand)]
pub enum ComputersCommand {
    /// List a tenant's computers.
    List {
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
    },
    /// Show a computer, its policy override and its managed accounts.
    Show {
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
        /// The computer.
        #[arg(long, value_name = "COMPUTER_ID")]
        computer: Uuid,
    },
}

#[derive(Subcommand)]
pub enum SessionsCommand {
    /// List a tenant's sessions, newest first.
    List {
        /// The tenant.
        #[arg(long, value_name = "TENANT_ID")]
        tenant: Uuid,
        /// Only open sessions (provisioning or active).
        #[arg(long)]
        open: bool,
        /// Only sessions on this computer.
        #[arg(long, value_name = "COMPUTER_ID")]
        computer: Option<Uuid>,
        /// Only sessions of this technician.
        #[arg(long, value_name = "TECHNICIAN_ID")]
        technician: Option<Uuid>,
        /// At most this many (1 to 1000) [server default: 100].
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
    },
    /// Revoke a session: its access is taken away now.
    Revoke {
        /// The session's id.
        #[arg(value_name = "SESSION_ID")]
        id: Uuid,
    },
}

/// `audit` with filters prints the audit trail; `audit tail` follows the event log (which
/// takes no filters).
#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    connection: Connection,
    #[command(subcommand)]
    command: Option<AuditCommand>,
    /// Only this tenant.
    #[arg(long, value_name = "TENANT_ID")]
    tenant: Option<Uuid>,
    /// Only this computer.
    #[arg(long, value_name = "COMPUTER_ID")]
    computer: Option<Uuid>,
    /// Only this technician.
    #[arg(long, value_name = "TECHNICIAN_ID")]
    technician: Option<Uuid>,
    /// Only this account name, e.g. `msp-nik`.
    #[arg(long, value_name = "NAME")]
    account: Option<String>,
    /// From this time on: RFC 3339 (2026-11-23T09:00:00Z) or a date (UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    from: Option<String>,
    /// Up to this time: RFC 3339 or a date (UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    to: Option<String>,
    /// Print at most this many lines.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    limit: Option<u64>,
}

impl AuditArgs {
    fn has_filter(&self) -> bool {
        self.tenant.is_some()
            || self.computer.is_some()
            || self.technician.is_some()
            || self.account.is_some()
            || self.from.is_some()
            || self.to.is_some()
            || self.limit.is_some()
    }
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Follow the event log live and print each event as it is committed (Ctrl-C to stop);
    /// `--json` prints the raw NDJSON lines.
    Tail {
        /// Start after this log position (`<commit>.<prepare>`) [default: the beginning].
        #[arg(long, value_name = "POS", value_parser = parse_position)]
        after: Option<String>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LoginMode {
    /// One account per technician, `msp-<username>`.
    Named,
    /// One account per tenant, shared by its technicians.
    Shared,
    /// A new account per session.
    Ephemeral,
}

impl LoginMode {
    fn as_str(self) -> &'static str {
        match self {
            LoginMode::Named => "named",
            LoginMode::Shared => "shared",
            LoginMode::Ephemeral => "ephemeral",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum CheckInAction {
    /// Take the account out of the admin group and keep it.
    #[value(name = "remove_from_group", alias = "remove-from-group")]
    RemoveFromGroup,
    /// Delete the account.
    #[value(name = "delete_account", alias = "delete-account")]
    DeleteAccount,
}

impl CheckInAction {
    fn as_str(self) -> &'static str {
        match self {
            CheckInAction::RemoveFromGroup => "remove_from_group",
            CheckInAction::DeleteAccount => "delete_account",
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
pub enum TokenRole {
    /// Everything, across all tenants.
    #[value(name = "msp_admin", alias = "msp-admin")]
    MspAdmin,
    /// Administers one tenant.
    #[value(name = "tenant_admin", alias = "tenant-admin")]
    TenantAdmin,
    /// Checks out access to the computers of their tenants.
    Technician,
    /// Reads the audit trail and events: of one tenant, or of all.
    Auditor,
}

impl TokenRole {
    fn as_str(self) -> &'static str {
        match self {
            TokenRole::MspAdmin => "msp_admin",
            TokenRole::TenantAdmin => "tenant_admin",
            TokenRole::Technician => "technician",
            TokenRole::Auditor => "auditor",
        }
    }
}

/// A log position `<commit>.<prepare>` or `<commit>`.
fn parse_position(text: &str) -> Result<String, String> {
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    let ok = match text.split_once('.') {
        Some((commit, prepare)) => digits(commit) && digits(prepare),
        None => digits(text),
    };
    if ok {
        Ok(text.to_owned())
    } else {
        Err("expected a log position like 42.42 (commit.prepare)".into())
    }
}

/// An RFC 3339 time or a date, as the RFC 3339 UTC text the server takes.
fn parse_time(text: &str) -> Result<String, String> {
    use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time
            .with_timezone(&Utc)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date
            .and_hms_opt(0, 0, 0)
            .expect("midnight exists")
            .and_utc();
        return Ok(midnight.to_rfc3339_opts(SecondsFormat::Secs, true));
    }
    Err("expected an RFC 3339 time like 2026-11-23T09:00:00Z, or a date like 2026-11-23".into())
}

/// Runs one client command.
pub async fn run(command: ClientCommand) -> Result<(), String> {
    match command {
        ClientCommand::Tenants {
            connection,
            command,
        } => tenants(&Api::new(connection)?, command).await,
        ClientCommand::Mode {
            connection,
            command: ModeCommand::Set { tenant, mode },
        } => set_mode(&Api::new(connection)?, tenant, mode).await,
        ClientCommand::Policy {
            connection,
            command,
        } => policy(&Api::new(connection)?, command).await,
        ClientCommand::Technicians {
            connection,
            command,
        } => technicians(&Api::new(connection)?, command).await,
        ClientCommand::Tokens {
            connection,
            command,
        } => tokens(&Api::new(connection)?, command).await,
        ClientCommand::EnrollmentToken {
            connection,
            tenant,
            expires_in_minutes,
        } => enrollment_token(&Api::new(connection)?, tenant, expires_in_minutes).await,
        ClientCommand::Computers {
            connection,
            command,
        } => computers(&Api::new(connection)?, command).await,
        ClientCommand::Sessions {
            connection,
            command,
        } => sessions(&Api::new(connection)?, command).await,
        ClientCommand::Accounts { connection, tenant } => {
            accounts(&Api::new(connection)?, tenant).await
        }
        ClientCommand::StandingPrivilege { connection, tenant } => {
            standing_privilege(&Api::new(connection)?, tenant).await
        }
        ClientCommand::Stuck { connection, tenant } => stuck(&Api::new(connection)?, tenant).await,
        ClientCommand::Audit(args) => match &args.command {
            Some(AuditCommand::Tail { .. }) if args.has_filter() => Err(
                "`audit tail` follows every event you may see and takes no filters (--tenant, \
                 --computer, --technician, --account, --from, --to, --limit); give them to \
                 `audit` without `tail`"
                    .into(),
            ),
            Some(AuditCommand::Tail { after }) => {
                tail(&Api::new(args.connection.clone())?, after.clone()).await
            }
            None => audit(&Api::new(args.connection.clone())?, &args).await,
        },
        ClientCommand::Verify { connection, stream } => {
            verify(&Api::new(connection)?, stream).await
        }
        ClientCommand::Export {
            connection,
            after,
            output,
        } => export(&Api::new(connection)?, after, output.as_deref()).await,
    }
}

// ---------------------------------------------------------------------------------------
// Talking to the server

/// A connection to the server with a token.
struct Api {
    client: reqwest::Client,
    /// The base URL, ending in `/`, that `v1/...` paths are joined to.
    base: Url,
    /// The server as given, for messages.
    shown: String,
    token: String,
    json: bool,
}

impl Api {
    fn new(connection: Connection) -> Result<Api, String> {
        let token = connection
            .token
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .ok_or("no API token: pass --token TOKEN or set LATCHKEY_TOKEN")?;
        let shown = connection.server.trim().trim_end_matches('/').to_owned();
        let mut base = Url::parse(&shown).map_err(|e| {
            format!("--server {shown}: not a valid URL ({e}); expected e.g. {DEFAULT_SERVER}")
        })?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(format!(
                "--server {shown}: use an http:// or https:// URL, e.g. {DEFAULT_SERVER}"
            ));
        }
        base.set_query(None);
        base.set_fragment(None);
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("latchkey-cli/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &connection.ca_file {
            builder = builder.tls_certs_merge(trusted_cas(path)?);
        }
        let client = builder
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", root_cause(&e)))?;
        Ok(Api {
            client,
            base,
            shown,
            token,
            json: connection.json,
        })
    }

    /// A request to `path` (relative to the server's base, e.g. `v1/tenants`).
    fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, String> {
        let url = self
            .base
            .join(path)
            .map_err(|e| format!("cannot build the URL for {path}: {e}"))?;
        Ok(self.client.request(method, url).bearer_auth(&self.token))
    }

    /// Sends a request; any answer but a success is turned into the clear error it stands for.
    async fn send(&self, request: RequestBuilder) -> Result<Response, String> {
        let response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        if status == StatusCode::UNAUTHORIZED {
            // An expired token is told apart: the fix is a new token, not a typo hunt.
            let body = response.text().await.unwrap_or_default();
            let expired = serde_json::from_str::<Value>(&body)
                .ok()
                .filter(|p| p["type"] == "urn:latchkey:problem:token-expired")
                .and_then(|p| p["detail"].as_str().map(str::to_owned));
            return Err(match expired {
                Some(detail) => format!("{TOKEN_REFUSED}: {detail}"),
                None => TOKEN_REFUSED.to_owned(),
            });
        }
        let body = response.text().await.unwrap_or_default();
        Err(problem_message(status, &body))
    }

    fn transport_error(&self, e: &reqwest::Error) -> String {
        let cause = root_cause(e);
        if e.is_connect() && cause.contains("certificate") {
            format!(
                "cannot reach the server at {}: its certificate is not trusted ({cause}); if \
                 it comes from a private CA, pass that CA with --ca-file FILE (LATCHKEY_CA_FILE)",
                self.shown
            )
        } else if e.is_connect() {
            format!("cannot reach the server at {}: {cause}", self.shown)
        } else if e.is_timeout() {
            format!("the server at {} did not answer in time", self.shown)
        } else if e.is_builder() {
            format!("cannot build the request: {cause}")
        } else {
            format!("talking to the server at {} failed: {cause}", self.shown)
        }
    }

    /// Sends a request and reads the JSON answer (`null` for an empty one).
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut request = self.request(method, path)?.timeout(REQUEST_TIMEOUT);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = self.send(request).await?;
        let text = response
            .text()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).map_err(|e| {
            format!(
                "the server at {} answered something that is not JSON ({e}); is it a latchkey server?",
                self.shown
            )
        })
    }

    async fn get(&self, path: &str) -> Result<Value, String> {
        self.call(Method::GET, path, None).await
    }

    async fn get_query(&self, path: &str, query: &[(&str, String)]) -> Result<Value, String> {
        let request = self
            .request(Method::GET, path)?
            .query(query)
            .timeout(REQUEST_TIMEOUT);
        let response = self.send(request).await?;
        response.json().await.map_err(|e| {
            format!(
                "the server at {} answered something that is not JSON ({}); is it a latchkey server?",
                self.shown,
                root_cause(&e)
            )
        })
    }

    /// Prints `value` as JSON under `--json`, else the readable form `human` makes of it.
    fn show(&self, value: &Value, human: impl FnOnce(&Value) -> String) -> Result<(), String> {
        if self.json {
            emit(&serde_json::to_string_pretty(value).map_err(|e| e.to_string())?)
        } else {
            let text = human(value);
            if text.trim().is_empty() {
                return Ok(());
            }
            emit(text.trim_end())
        }
    }
}

/// The innermost cause of an error, which is the one that says what happened
/// ("Connection refused (os error 111)").
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// The message for an error answer: the problem document's `detail` and `field`, or else
/// the status and the start of the body.
fn problem_message(status: StatusCode, body: &str) -> String {
    let problem: Option<Value> = serde_json::from_str(body).ok();
    let detail = problem
        .as_ref()
        .and_then(|p| p.get("detail"))
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty());
    match detail {
        Some(detail) => {
            let field = problem
                .as_ref()
                .and_then(|p| p.get("field"))
                .and_then(Value::as_str)
                .filter(|f| !f.is_empty());
            match field {
                Some(field) => format!("{detail} (field: {field})"),
                None => detail.to_owned(),
            }
        }
        None => {
            let snippet: String = body.trim().chars().take(200).collect();
            if snippet.is_empty() {
                format!("the server answered {status}")
            } else {
                format!("the server answered {status}: {snippet}")
            }
        }
    }
}

/// Writes one block of text and a newline to standard output. A closed pipe (`| head`)
/// ends the program quietly, as it does for other command-line tools.
fn emit(text: &str) -> Result<(), String> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(format!("cannot write to standard output: {e}")),
    }
}

// ---------------------------------------------------------------------------------------
// Formatting

/// A JSON value as text: strings bare, `null` as `-`.
fn text(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        Value::Bool(true) => "yes".to_owned(),
        Value::Bool(false) => "no".to_owned(),
        Value::Array(items) if items.is_empty() => "-".to_owned(),
        Value::Array(items) => items.iter().map(text).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// A time from the server, to the second.
fn time(value: &Value) -> String {
    value
        .as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|| text(value))
}

/// Rows under a header, in columns wide enough for their widest cell.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The rows of a list answer `{"<key>": [...]}`, or a note when there are none.
fn listing(
    value: &Value,
    key: &str,
    none: &str,
    header: &[&str],
    row: impl Fn(&Value) -> Vec<String>,
) -> String {
    let items = value[key].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        return none.to_owned();
    }
    let rows: Vec<Vec<String>> = items.iter().map(row).collect();
    table(header, &rows)
}

/// `key  value` lines, aligned.
fn fields(pairs: &[(&str, String)]) -> String {
    let width = pairs.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (key, value) in pairs {
        let _ = writeln!(out, "{key:<width$}  {value}");
    }
    out
}

fn policy_text(policy: &Value) -> String {
    let password = &policy["password"];
    let alphabet = ["lowercase", "uppercase", "digits", "symbols"]
        .into_iter()
        .filter(|class| password["alphabet"][class].as_bool() == Some(true))
        .collect::<Vec<_>>()
        .join(", ");
    fields(&[
        ("provisioning", text(&policy["provisioning_enabled"])),
        ("admin group", text(&policy["admin_group"])),
        ("on check-in", text(&policy["on_check_in"])),
        (
            "reuse existing account",
            text(&policy["reuse_existing_account"]),
        ),
        (
            "max session",
            format!("{} minutes", text(&policy["max_session_minutes"])),
        ),
        (
            "password",
            format!("{} characters ({alphabet})", text(&password["length"])),
        ),
        ("rotate on check-in", text(&policy["rotate_on_check_in"])),
        (
            "named account template",
            text(&policy["named_account_template"]),
        ),
    ])
}

fn tenant_text(tenant: &Value) -> String {
    let mut mode = text(&tenant["login_mode"]);
    if let Some(account) = tenant["shared_account"].as_str() {
        let _ = write!(mode, " (shared account {account})");
    }
    let mut out = fields(&[
        ("tenant", text(&tenant["name"])),
        ("id", text(&tenant["tenant_id"])),
        ("login mode", mode),
    ]);
    out.push_str("JIT policy:\n");
    for line in policy_text(&tenant["policy"]).lines() {
        let _ = writeln!(out, "  {line}");
    }
    out
}

fn technician_text(technician: &Value) -> String {
    fields(&[
        ("technician", text(&technician["username"])),
        ("id", text(&technician["technician_id"])),
        ("email", text(&technician["email"])),
        ("tenants", text(&technician["tenants"])),
        ("offboarded", text(&technician["offboarded"])),
    ])
}

/// An agent operation `{"op": "add_to_group", "account": …, "group": …}` as one phrase.
fn operation(op: &Value) -> String {
    let account = text(&op["account"]);
    match op["op"].as_str() {
        Some("add_to_group") => format!("add {account} to {}", text(&op["group"])),
        Some("remove_from_group") => format!("remove {account} from {}", text(&op["group"])),
        Some("rotate_password") => {
            format!(
                "rotate the password of {account} (v{})",
                text(&op["version"])
            )
        }
        Some("ensure_account") => format!("create {account}"),
        Some("delete_account") => format!("delete {account}"),
        _ => op.to_string(),
    }
}

/// An account owner `{"kind": "named", "technician_id": …}` in a few words.
fn owner(owner: &Value) -> String {
    match (owner["kind"].as_str(), owner["technician_id"].as_str()) {
        (Some(kind), Some(technician)) => format!("{kind} ({technician})"),
        (Some(kind), None) => kind.to_owned(),
        _ => text(owner),
    }
}

fn session_text(session: &Value) -> String {
    let mut status = text(&session["status"]);
    if let Some(reason) = session["check_in_reason"].as_str() {
        let _ = write!(status, " ({reason})");
    }
    if let Some(failure) = session["failure"].as_str() {
        let _ = write!(status, ": {failure}");
    }
    fields(&[
        ("session", text(&session["session_id"])),
        ("status", status),
        ("account", text(&session["account"])),
        ("computer", text(&session["computer_id"])),
        ("technician", text(&session["technician_id"])),
        ("checked out", time(&session["checked_out_at"])),
        ("expires", time(&session["expires_at"])),
    ])
}

// ---------------------------------------------------------------------------------------
// The commands

async fn tenants(api: &Api, command: TenantsCommand) -> Result<(), String> {
    match command {
        TenantsCommand::List => {
            let answer = api.get("v1/tenants").await?;
            api.show(&answer, |v| {
                listing(
                    v,
                    "tenants",
                    "no tenants yet (create one with `latchkey tenants create`)",
                    &["TENANT_ID", "NAME", "LOGIN_MODE"],
                    |t| {
                        vec![
                            text(&t["tenant_id"]),
                            text(&t["name"]),
                            text(&t["login_mode"]),
                        ]
                    },
                )
            })
        }
        TenantsCommand::Create { name, mode } => {
            let body = json!({ "name": name, "login_mode": mode.as_str() });
            let tenant = api.call(Method::POST, "v1/tenants", Some(body)).await?;
            api.show(&tenant, |t| format!("created\n{}", tenant_text(t)))
        }
        TenantsCommand::Show { id } => {
            let tenant = api.get(&format!("v1/tenants/{id}")).await?;
            api.show(&tenant, tenant_text)
        }
    }
}

async fn set_mode(api: &Api, tenant: Uuid, mode: LoginMode) -> Result<(), String> {
    let body = json!({ "login_mode": mode.as_str() });
    let answer = api
        .call(
            Method::PUT,
            &format!("v1/tenants/{tenant}/login-mode"),
            Some(body),
        )
        .await?;
    api.show(&answer, |t| {
        let mut line = format!(
            "the technician login mode of {} is now {}",
            text(&t["name"]),
            text(&t["login_mode"])
        );
        if let Some(account) = t["shared_account"].as_str() {
            let _ = write!(line, " (shared account {account})");
        }
        line
    })
}

async fn policy(api: &Api, command: PolicyCommand) -> Result<(), String> {
    match command {
        PolicyCommand::Show { tenant } => {
            let answer = api.get(&format!("v1/tenants/{tenant}")).await?;
            api.show(&answer["policy"], policy_text)
        }
        PolicyCommand::Set(args) => set_policy(api, args).await,
    }
}

async fn set_policy(api: &Api, args: PolicySetArgs) -> Result<(), String> {
    let changes = args.changes;
    let mut policy = match &changes.file {
        Some(path) => read_policy_file(path)?,
        None => {
            let tenant = api.get(&format!("v1/tenants/{}", args.tenant)).await?;
            match tenant.get("policy") {
                Some(Value::Object(policy)) => policy.clone(),
                _ => return Err("the server's tenant has no policy object to change".into()),
            }
        }
    };
    let mut set = |key: &str, value: Value| {
        policy.insert(key.to_owned(), value);
    };
    if let Some(group) = changes.admin_group {
        set("admin_group", json!(group));
    }
    if let Some(action) = changes.on_check_in {
        set("on_check_in", json!(action.as_str()));
    }
    if let Some(minutes) = changes.max_session_minutes {
        set("max_session_minutes", json!(minutes));
    }
    if let Some(reuse) = changes.reuse_existing_account {
        set("reuse_existing_account", json!(reuse));
    }
    if let Some(on) = changes.provisioning {
        set("provisioning_enabled", json!(on));
    }
    if let Some(on) = changes.rotate_on_check_in {
        set("rotate_on_check_in", json!(on));
    }
    if let Some(template) = changes.named_account_template {
        set("named_account_template", json!(template));
    }
    if let Some(length) = changes.password_length {
        let password = policy
            .entry("password")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or("the policy's `password` is not an object")?;
        password.insert("length".into(), json!(length));
    }
    let answer = api
        .call(
            Method::PUT,
            &format!("v1/tenants/{}/policy", args.tenant),
            Some(Value::Object(policy)),
        )
        .await?;
    if api.json {
        return api.show(&answer["policy"], |_| String::new());
    }
    emit(&format!(
        "updated the JIT policy of {}:\n{}",
        text(&answer["name"]),
        policy_text(&answer["policy"]).trim_end()
    ))
}

/// A policy from a file: the policy object itself, or a whole tenant as `tenants show
/// --json` prints it.
fn read_policy_file(path: &Path) -> Result<Map<String, Value>, String> {
    let shown = path.display();
    let content = std::fs::read_to_string(path)
        .map_err(|e| format!("--file {shown}: cannot read it: {e}"))?;
    let value: Value = serde_json::from_str(&content)
        .map_err(|e| format!("--file {shown}: not valid JSON: {e}"))?;
    match value {
        Value::Object(mut object) => match object.remove("policy") {
            Some(Value::Object(policy)) if object.contains_key("tenant_id") => Ok(policy),
            Some(other) => {
                object.insert("policy".into(), other);
                Ok(object)
            }
            None => Ok(object),
        },
        _ => Err(format!(
            "--file {shown}: expected a JSON object (the policy)"
        )),
    }
}

async fn technicians(api: &Api, command: TechniciansCommand) -> Result<(), String> {
    match command {
        TechniciansCommand::List { tenant } => {
            let path = match tenant {
                Some(tenant) => format!("v1/tenants/{tenant}/technicians"),
                None => "v1/technicians".to_owned(),
            };
            let answer = api.get(&path).await?;
            api.show(&answer, |v| {
                listing(
                    v,
                    "technicians",
                    "no technicians",
                    &["TECHNICIAN_ID", "USERNAME", "EMAIL", "OFFBOARDED"],
                    |t| {
                        vec![
                            text(&t["technician_id"]),
                            text(&t["username"]),
                            text(&t["email"]),
                            text(&t["offboarded"]),
                        ]
                    },
                )
            })
        }
        TechniciansCommand::Create { username, email } => {
            let body = json!({ "username": username, "email": email });
            let answer = api.call(Method::POST, "v1/technicians", Some(body)).await?;
            api.show(&answer, |t| format!("registered\n{}", technician_text(t)))
        }
        TechniciansCommand::Show { id } => {
            let answer = api.get(&format!("v1/technicians/{id}")).await?;
            api.show(&answer, technician_text)
        }
        TechniciansCommand::Add { tenant, technician } => {
            let path = format!("v1/tenants/{tenant}/technicians/{technician}");
            let answer = api.call(Method::PUT, &path, None).await?;
            api.show(&answer, |t| {
                format!(
                    "{} is now a member of tenant {tenant}\n{}",
                    text(&t["username"]),
                    technician_text(t)
                )
            })
        }
        TechniciansCommand::Remove { tenant, technician } => {
            let path = format!("v1/tenants/{tenant}/technicians/{technician}");
            let answer = api.call(Method::DELETE, &path, None).await?;
            api.show(&answer, |t| {
                format!(
                    "{} is no longer a member of tenant {tenant}\n{}",
                    text(&t["username"]),
                    technician_text(t)
                )
            })
        }
        TechniciansCommand::Offboard { id } => {
            let path = format!("v1/technicians/{id}/offboard");
            let answer = api.call(Method::POST, &path, None).await?;
            api.show(&answer, |t| {
                format!(
                    "offboarded {}; their sessions are being revoked\n{}",
                    text(&t["username"]),
                    technician_text(t)
                )
            })
        }
    }
}

async fn tokens(api: &Api, command: TokensCommand) -> Result<(), String> {
    match command {
        TokensCommand::Issue {
            role,
            tenant,
            technician,
            name,
            expires_in,
        } => {
            let mut body = Map::new();
            body.insert("role".into(), json!(role.as_str()));
            if let Some(tenant) = tenant {
                body.insert("tenant_id".into(), json!(tenant));
            }
            if let Some(technician) = technician {
                body.insert("technician_id".into(), json!(technician));
            }
            if let Some(name) = name {
                body.insert("name".into(), json!(name));
            }
            if let Some(seconds) = expires_in {
                body.insert("expires_in".into(), json!(seconds));
            }
            let answer = api
                .call(Method::POST, "v1/tokens", Some(Value::Object(body)))
                .await?;
            api.show(&answer, |t| {
                format!(
                    "API token {} for {} {}, valid until {} (shown once; the server keeps only \
                     its hash):\n{}",
                    text(&t["token_id"]),
                    text(&t["role"]),
                    text(&t["name"]),
                    time(&t["expires_at"]),
                    text(&t["token"])
                )
            })
        }
        TokensCommand::List {
            role,
            technician,
            revoked,
        } => {
            let mut query = vec![("limit", "1000".to_owned())];
            if let Some(role) = role {
                query.push(("role", role.as_str().to_owned()));
            }
            if let Some(technician) = technician {
                query.push(("technician_id", technician.to_string()));
            }
            if revoked {
                query.push(("revoked", "true".to_owned()));
            }
            let answer = api.get_query("v1/tokens", &query).await?;
            api.show(&answer, |v| {
                listing(
                    v,
                    "tokens",
                    "no tokens",
                    &[
                        "TOKEN_ID",
                        "HOLDER",
                        "ROLE",
                        "SCOPE",
                        "STATUS",
                        "CREATED",
                        "LAST_USED",
                        "EXPIRES",
                    ],
                    |t| {
                        let scope = t["scope"]
                            .as_object()
                            .and_then(|s| s.values().next())
                            .map(text)
                            .unwrap_or_else(|| "all tenants".to_owned());
                        vec![
                            text(&t["token_id"]),
                            text(&t["holder"]),
                            text(&t["role"]),
                            scope,
                            text(&t["status"]),
                            time(&t["created_at"]),
                            time(&t["last_used_at"]),
                            time(&t["expires_at"]),
                        ]
                    },
                )
            })
        }
        TokensCommand::Rotate { id, expires_in } => {
            let body = match expires_in {
                Some(seconds) => json!({ "expires_in": seconds }),
                None => json!({}),
            };
            let path = format!("v1/tokens/{}/rotate", id.simple());
            let answer = api.call(Method::POST, &path, Some(body)).await?;
            api.show(&answer, |t| {
                format!(
                    "rotated API token {} of {}, valid until {}; the old secret no longer works \
                     (shown once):\n{}",
                    text(&t["token_id"]),
                    text(&t["name"]),
                    time(&t["expires_at"]),
                    text(&t["token"])
                )
            })
        }
        TokensCommand::Revoke { id } => {
            let answer = api
                .call(Method::DELETE, &format!("v1/tokens/{}", id.simple()), None)
                .await?;
            let answer = if answer.is_null() {
                json!({ "token_id": id, "revoked": true })
            } else {
                answer
            };
            api.show(&answer, |_| format!("revoked token {}", id.simple()))
        }
    }
}

async fn enrollment_token(api: &Api, tenant: Uuid, minutes: Option<u32>) -> Result<(), String> {
    let body = match minutes {
        Some(minutes) => json!({ "expires_in_minutes": minutes }),
        None => json!({}),
    };
    let path = format!("v1/tenants/{tenant}/enrollment-tokens");
    let answer = api.call(Method::POST, &path, Some(body)).await?;
    api.show(&answer, |t| {
        format!(
            "enrollment token for tenant {}, valid until {} (shown once):\n{}\n{}",
            text(&t["tenant_id"]),
            time(&t["expires_at"]),
            text(&t["token"]),
            text(&t["note"])
        )
    })
}

async fn computers(api: &Api, command: ComputersCommand) -> Result<(), String> {
    match command {
        ComputersCommand::List { tenant } => {
            let answer = api.get(&format!("v1/tenants/{tenant}/computers")).await?;
            api.show(&answer, |v| {
                listing(
                    v,
                    "computers",
                    "no computers enrolled (see `latchkey enrollment-token`)",
                    &["COMPUTER_ID", "HOSTNAME", "STATE"],
                    |c| {
                        let state = if c["decommissioned"].as_bool() == Some(true) {
                            "decommissioned"
                        } else {
                            "enrolled"
                        };
                        vec![
                            text(&c["computer_id"]),
                            text(&c["hostname"]),
                            state.to_owned(),
                        ]
                    },
                )
            })
        }
        ComputersCommand::Show { tenant, computer } => {
            let path = format!("v1/tenants/{tenant}/computers/{computer}");
            let answer = api.get(&path).await?;
            api.show(&answer, computer_text)
        }
    }
}

fn computer_text(c: &Value) -> String {
    let policy = if c["policy_override"].is_null() {
        "the tenant's".to_owned()
    } else {
        "its own (override)".to_owned()
    };
    let mut out = fields(&[
        ("computer", text(&c["hostname"])),
        ("id", text(&c["computer_id"])),
        ("tenant", text(&c["tenant_id"])),
        ("os", text(&c["os"])),
        ("decommissioned", text(&c["decommissioned"])),
        ("policy", policy),
    ]);
    if !c["policy_override"].is_null() {
        for line in policy_text(&c["policy_override"]).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push('\n');
    out.push_str(&listing(
        c,
        "accounts",
        "no managed accounts",
        &[
            "ACCOUNT",
            "OWNER",
            "WANTED",
            "RETIRING",
            "PASSWORD_V",
            "SESSIONS",
            "VERIFIED",
        ],
        |a| {
            let verified = &a["verified"];
            let seen = if verified.is_null() {
                "not yet".to_owned()
            } else if verified["present"].as_bool() == Some(true) {
                format!(
                    "present; groups: {}; password v{}",
                    text(&verified["groups"]),
                    text(&verified["password_version"])
                )
            } else {
                "absent".to_owned()
            };
            vec![
                text(&a["account"]),
                owner(&a["owner"]),
                text(&a["wanted"]),
                text(&a["retiring"]),
                text(&a["password_version"]),
                text(&a["sessions"]),
                seen,
            ]
        },
    ));
    out
}

async fn sessions(api: &Api, command: SessionsCommand) -> Result<(), String> {
    match command {
        SessionsCommand::List {
            tenant,
            open,
            computer,
            technician,
            limit,
        } => {
            let mut query: Vec<(&str, String)> = Vec::new();
            if open {
                query.push(("open", "true".into()));
            }
            if let Some(computer) = computer {
                query.push(("computer_id", computer.to_string()));
            }
            if let Some(technician) = technician {
                query.push(("technician_id", technician.to_string()));
            }
            if let Some(limit) = limit {
                query.push(("limit", limit.to_string()));
            }
            let path = format!("v1/tenants/{tenant}/sessions");
            let answer = api.get_query(&path, &query).await?;
            let none = if open {
                "no open sessions"
            } else {
                "no sessions"
            };
            api.show(&answer, |v| {
                listing(
                    v,
                    "sessions",
                    none,
                    &[
                        "SESSION_ID",
                        "STATUS",
                        "ACCOUNT",
                        "COMPUTER_ID",
                        "TECHNICIAN_ID",
                        "CHECKED_OUT",
                        "ENDS",
                    ],
                    |s| {
                        let mut status = text(&s["status"]);
                        if let Some(reason) = s["check_in_reason"].as_str() {
                            let _ = write!(status, " ({reason})");
                        }
                        let ends = if s["closed_at"].is_null() {
                            format!("expires {}", time(&s["expires_at"]))
                        } else {
                            format!("closed {}", time(&s["closed_at"]))
                        };
                        vec![
                            text(&s["session_id"]),
                            status,
                            text(&s["account"]),
                            text(&s["computer_id"]),
                            text(&s["technician_id"]),
                            time(&s["checked_out_at"]),
                            ends,
                        ]
                    },
                )
            })
        }
        SessionsCommand::Revoke { id } => {
            let path = format!("v1/sessions/{id}/revoke");
            let answer = api.call(Method::POST, &path, None).await?;
            api.show(&answer, |s| {
                format!("revoked; access is being taken away\n{}", session_text(s))
            })
        }
    }
}

async fn accounts(api: &Api, tenant: Uuid) -> Result<(), String> {
    let answer = api.get(&format!("v1/tenants/{tenant}/accounts")).await?;
    api.show(&answer, |v| {
        listing(
            v,
            "accounts",
            "no managed accounts",
            &[
                "HOSTNAME",
                "ACCOUNT",
                "OWNER",
                "PRESENT",
                "GROUPS",
                "PASSWORD_V",
                "LAST_ROTATED",
                "OPEN_SESSIONS",
            ],
            |a| {
                let mut present = text(&a["present"]);
                if a["deleted"].as_bool() == Some(true) {
                    present = "deleted".into();
                } else if a["retiring"].as_bool() == Some(true) {
                    present.push_str(" (retiring)");
                }
                vec![
                    text(&a["hostname"]),
                    text(&a["account"]),
                    owner(&a["owner"]),
                    present,
                    text(&a["groups"]),
                    text(&a["password_version"]),
                    time(&a["last_rotated_at"]),
                    text(&a["open_sessions"]),
                ]
            },
        )
    })
}

async fn standing_privilege(api: &Api, tenant: Uuid) -> Result<(), String> {
    let answer = api
        .get(&format!("v1/tenants/{tenant}/standing-privilege"))
        .await?;
    api.show(&answer, |v| {
        listing(
            v,
            "standing_privilege",
            "no standing privilege: every admin-group membership belongs to an open session",
            &[
                "HOSTNAME",
                "ACCOUNT",
                "GROUP",
                "SINCE",
                "LAST_SESSION_CLOSED",
                "REMOVAL",
            ],
            |p| {
                let removal = &p["removal"];
                let offline = &p["offline_login"];
                let removal = if !offline.is_null() {
                    format!(
                        "offline login {} ended {} by the agent's clock; not seen over yet",
                        text(&offline["login_id"]),
                        text(&offline["until"])
                    )
                } else if removal.is_null() {
                    "none under way".to_owned()
                } else {
                    format!(
                        "request {} {} (attempt {}): {}",
                        text(&removal["request_id"]),
                        text(&removal["status"]),
                        text(&removal["attempt"]),
                        operation(&removal["operation"])
                    )
                };
                vec![
                    text(&p["hostname"]),
                    text(&p["account"]),
                    text(&p["admin_group"]),
                    time(&p["joined_at"]),
                    time(&p["last_session_closed_at"]),
                    removal,
                ]
            },
        )
    })
}

async fn stuck(api: &Api, tenant: Uuid) -> Result<(), String> {
    let answer = api
        .get(&format!("v1/tenants/{tenant}/stuck-requests"))
        .await?;
    api.show(&answer, |v| {
        listing(
            v,
            "stuck_requests",
            "no stuck requests",
            &[
                "HOSTNAME",
                "REQUEST",
                "PURPOSE",
                "OPERATION",
                "ATTEMPT",
                "FAILED_AT",
                "REASON",
            ],
            |r| {
                vec![
                    text(&r["hostname"]),
                    text(&r["request_id"]),
                    text(&r["purpose"]),
                    operation(&r["operation"]),
                    text(&r["attempt"]),
                    time(&r["failed_at"]),
                    text(&r["reason"]),
                ]
            },
        )
    })
}

async fn audit(api: &Api, args: &AuditArgs) -> Result<(), String> {
    let mut filter: Vec<(&str, String)> = Vec::new();
    if let Some(tenant) = args.tenant {
        filter.push(("tenant_id", tenant.to_string()));
    }
    if let Some(computer) = args.computer {
        filter.push(("computer_id", computer.to_string()));
    }
    if let Some(technician) = args.technician {
        filter.push(("technician_id", technician.to_string()));
    }
    if let Some(account) = &args.account {
        filter.push(("account", account.clone()));
    }
    if let Some(from) = &args.from {
        filter.push(("from", from.clone()));
    }
    if let Some(to) = &args.to {
        filter.push(("to", to.clone()));
    }
    let mut cursor: Option<String> = None;
    let mut printed = 0u64;
    let mut any = false;
    loop {
        let remaining = args.limit.map_or(u64::MAX, |limit| limit - printed);
        let mut query = filter.clone();
        query.push(("limit", remaining.min(AUDIT_PAGE).to_string()));
        if let Some(cursor) = &cursor {
            query.push(("cursor", cursor.clone()));
        }
        let page = api.get_query("v1/audit", &query).await?;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        for entry in &entries {
            any = true;
            if api.json {
                emit(&entry.to_string())?;
            } else {
                emit(&format!(
                    "{}  {}",
                    time(&entry["at"]),
                    text(&entry["sentence"])
                ))?;
            }
            printed += 1;
        }
        let next = page["next_cursor"].as_str().map(str::to_owned);
        let done = entries.is_empty()
            || next.is_none()
            || next == cursor
            || args.limit.is_some_and(|limit| printed >= limit);
        if done {
            break;
        }
        cursor = next;
    }
    if !any && !api.json {
        eprintln!("latchkey: no audit entries match (the audit trail may lag a moment behind)");
    }
    Ok(())
}

/// One NDJSON event line in a few words.
fn event_summary(event: &Value) -> String {
    format!(
        "{}  {}  {} #{}  {}  by {}",
        time(&event["recorded_at"]),
        text(&event["position"]),
        text(&event["stream"]),
        text(&event["revision"]),
        text(&event["event_type"]),
        text(&event["metadata"]["actor"]),
    )
}

async fn tail(api: &Api, after: Option<String>) -> Result<(), String> {
    let mut query: Vec<(&str, String)> = vec![("follow", "true".into())];
    if let Some(after) = &after {
        query.push(("after", after.clone()));
    }
    // No timeout: the answer stays open for as long as the tail runs.
    let request = api.request(Method::GET, "v1/events")?.query(&query);
    let mut response = api.send(request).await?;
    let mut buffer: Vec<u8> = Vec::new();
    let mut last = after;
    loop {
        let chunk = match response.chunk().await {
            Ok(Some(chunk)) => chunk,
            Ok(None) => break,
            Err(e) => {
                return Err(format!(
                    "the live tail from {} broke off: {}{}",
                    api.shown,
                    root_cause(&e),
                    resume_hint(&last)
                ))
            }
        };
        buffer.extend_from_slice(&chunk);
        while let Some(end) = buffer.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let event: Option<Value> = serde_json::from_str(line).ok();
            if let Some(position) = event.as_ref().and_then(|e| e["position"].as_str()) {
                last = Some(position.to_owned());
            }
            match (&event, api.json) {
                (Some(event), false) => emit(&event_summary(event))?,
                _ => emit(line)?,
            }
        }
    }
    Err(format!(
        "the server at {} ended the live tail (did it stop?){}",
        api.shown,
        resume_hint(&last)
    ))
}

fn resume_hint(last: &Option<String>) -> String {
    match last {
        Some(position) => format!("; resume with `latchkey audit tail --after {position}`"),
        None => String::new(),
    }
}

async fn verify(api: &Api, stream: Option<String>) -> Result<(), String> {
    let query: Vec<(&str, String)> = stream.into_iter().map(|s| ("stream", s)).collect();
    let answer = api.get_query("v1/verify", &query).await?;
    let intact = answer["intact"].as_bool();
    api.show(&answer, |v| match (intact, v["stream"].as_str()) {
        (Some(true), Some(stream)) => format!(
            "intact: stream {stream} has {} events, chained to the last hash {}",
            text(&v["events"]),
            text(&v["last_hash"])
        ),
        (Some(true), None) => format!(
            "intact: {} events in {} streams, every hash chain verified",
            text(&v["events"]),
            text(&v["streams"])
        ),
        _ => String::new(),
    })?;
    match intact {
        Some(true) => Ok(()),
        Some(false) => Err(format!(
            "the hash chain is BROKEN: stream {} at revision {}: {}",
            text(&answer["stream"]),
            text(&answer["revision"]),
            text(&answer["problem"])
        )),
        None => Err(format!(
            "the server at {} gave no verification result; is it a latchkey server?",
            api.shown
        )),
    }
}

async fn export(api: &Api, after: Option<String>, output: Option<&Path>) -> Result<(), String> {
    /// Where the events go: a file being written (renamed into place at the end) or stdout.
    enum Sink {
        File {
            partial: PathBuf,
            file: std::io::BufWriter<std::fs::File>,
        },
        Stdout,
    }
    let mut sink = match output {
        Some(path) => {
            let partial = partial_path(path);
            let file = std::fs::File::create(&partial).map_err(|e| {
                format!(
                    "--output {}: cannot create {}: {e}",
                    path.display(),
                    partial.display()
                )
            })?;
            Sink::File {
                partial,
                file: std::io::BufWriter::new(file),
            }
        }
        None => Sink::Stdout,
    };
    let mut after = after;
    let mut count = 0u64;
    loop {
        let mut query: Vec<(&str, String)> = vec![("limit", EXPORT_PAGE.to_string())];
        if let Some(after) = &after {
            query.push(("after", after.clone()));
        }
        let request = api
            .request(Method::GET, "v1/events")?
            .query(&query)
            .timeout(EXPORT_PAGE_TIMEOUT);
        let response = api.send(request).await?;
        let next = response
            .headers()
            .get("Latchkey-Next-After")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = response
            .bytes()
            .await
            .map_err(|e| api.transport_error(&e))?;
        if body.is_empty() {
            break;
        }
        count += body.iter().filter(|b| **b == b'\n').count() as u64;
        match &mut sink {
            Sink::File { partial, file } => file
                .write_all(&body)
                .map_err(|e| format!("cannot write {}: {e}", partial.display()))?,
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                match out.write_all(&body).and_then(|()| out.flush()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
                    Err(e) => return Err(format!("cannot write to standard output: {e}")),
                }
            }
        }
        match next {
            Some(next) if Some(&next) != after.as_ref() => after = Some(next),
            _ => break,
        }
    }
    if let (Sink::File { partial, file }, Some(path)) = (sink, output) {
        let file = file
            .into_inner()
            .map_err(|e| format!("cannot write {}: {}", partial.display(), e.error()))?;
        file.sync_all()
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        std::fs::rename(&partial, path).map_err(|e| {
            format!(
                "--output {}: cannot move {} into place: {e}",
                path.display(),
                partial.display()
            )
        })?;
        let mut line = format!("exported {count} events to {}", path.display());
        if let Some(after) = &after {
            let _ = write!(line, "; continue later with --after {after}");
        }
        emit(&line)?;
    }
    Ok(())
}

/// The CA certificates of `--ca-file`, to trust besides the system's.
fn trusted_cas(path: &Path) -> Result<Vec<reqwest::Certificate>, String> {
    let shown = path.display();
    let pem = std::fs::read(path).map_err(|e| format!("--ca-file {shown}: cannot read it: {e}"))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("--ca-file {shown}: not a PEM certificate bundle: {e}"))?;
    if certificates.is_empty() {
        return Err(format!(
            "--ca-file {shown}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    Ok(certificates)
}

/// `<file>.partial` beside the file.
fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_and_times_are_checked() {
        assert_eq!(parse_position("42.41").unwrap(), "42.41");
        assert_eq!(parse_position("7").unwrap(), "7");
        assert!(parse_position("4x").is_err());
        assert!(parse_position(".3").is_err());
        assert_eq!(parse_time("2026-11-23").unwrap(), "2026-11-23T00:00:00Z");
        assert_eq!(
            parse_time("2026-11-23T10:00:00+01:00").unwrap(),
            "2026-11-23T09:00:00Z"
        );
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn a_problem_names_its_field() {
        let body = r#"{"type":"urn:latchkey:problem:invalid-value","title":"Unprocessable Entity","status":422,"detail":"name must be short","field":"name"}"#;
        assert_eq!(
            problem_message(StatusCode::UNPROCESSABLE_ENTITY, body),
            "name must be short (field: name)"
        );
        assert_eq!(
            problem_message(StatusCode::BAD_GATEWAY, ""),
            "the server answered 502 Bad Gateway"
        );
    }

    #[test]
    fn tables_line_up() {
        let rows = vec![vec!["a".to_owned(), "bbb".to_owned(), "c".to_owned()]];
        assert_eq!(table(&["X", "Y", "Z"], &rows), "X  Y    Z\na  bbb  c\n");
    }

    #[test]
    fn the_server_url_is_checked_and_the_token_required() {
        let connection = |server: &str, token: Option<&str>| Connection {
            server: server.to_owned(),
            token: token.map(str::to_owned),
            ca_file: None,
            json: false,
        };
        let err = |c| Api::new(c).err().unwrap();
        assert!(err(connection("http://x", None)).contains("LATCHKEY_TOKEN"));
        assert!(err(connection("ftp://x", Some("t"))).starts_with("--server ftp://x"));
        assert!(err(connection("not a url", Some("t"))).starts_with("--server"));
        let api = Api::new(connection("https://h.example/latchkey/", Some("t"))).unwrap();
        assert_eq!(
            api.base.join("v1/tenants").unwrap().as_str(),
            "https://h.example/latchkey/v1/tenants"
        );
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let with_ca = |path: &Path| {
            Api::new(Connection {
                server: "https://h.example".into(),
                token: Some("t".into()),
                ca_file: Some(path.to_owned()),
                json: false,
            })
        };
        let missing = dir.path().join("missing.pem");
        let err = with_ca(&missing).err().unwrap();
        assert!(
            err.starts_with(&format!("--ca-file {}: cannot read it", missing.display())),
            "{err}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = with_ca(&empty).err().unwrap();
        assert!(err.contains("no certificate in it"), "{err}");
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.pem()).unwrap();
        assert!(with_ca(&good).is_ok());
    }
}
