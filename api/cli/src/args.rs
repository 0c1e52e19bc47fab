//! The client commands and their flags, as clap parses them. Flag values that the domain
//! or the wire types declare are parsed into those types ([`Words`] for their words).

use crate::values::{self, Words};
use crate::DEFAULT_SERVER;
use clap::{Args, Subcommand};
use latchkey_domain::policy::{CheckInAction, LoginMode};
use latchkey_wire::RoleKind;
use std::path::PathBuf;
use uuid::Uuid;

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
    pub server: String,
    /// The API token to act with (required; sent only as a bearer token, never printed).
    #[arg(
        long,
        value_name = "TOKEN",
        env = "LATCHKEY_TOKEN",
        hide_env_values = true,
        global = true,
        help_heading = "Server"
    )]
    pub token: Option<String>,
    /// A PEM file of CA certificates to trust for the server's HTTPS certificate, besides the
    /// system's (for a server whose certificate comes from a private CA).
    #[arg(
        long,
        value_name = "FILE",
        env = "LATCHKEY_CA_FILE",
        global = true,
        help_heading = "Server"
    )]
    pub ca_file: Option<PathBuf>,
    /// Print the server's JSON instead of the readable form.
    #[arg(long, global = true, help_heading = "Server")]
    pub json: bool,
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
        #[arg(long, value_name = "POS", value_parser = values::position)]
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
        #[arg(long, value_parser = Words::<LoginMode>::all())]
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
        #[arg(long, value_parser = Words::<LoginMode>::all())]
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
    pub tenant: Uuid,
    #[command(flatten)]
    pub changes: PolicyChanges,
}

/// What to change; at least one is needed.
#[derive(Args)]
#[group(required = true, multiple = true)]
pub struct PolicyChanges {
    /// A JSON file with the whole policy, as `policy show --json` prints it.
    #[arg(long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// The group that grants admin rights, e.g. `Administrators` or `sudo`.
    #[arg(long, value_name = "GROUP")]
    pub admin_group: Option<String>,
    /// What happens to the account when its last session is checked in.
    #[arg(long, value_parser = Words::<CheckInAction>::all())]
    pub on_check_in: Option<CheckInAction>,
    /// Sessions are checked in automatically after this many minutes (1 to 10080).
    #[arg(long, value_name = "MINUTES", value_parser = clap::value_parser!(u32).range(1..=10_080))]
    pub max_session_minutes: Option<u32>,
    /// Ephemeral mode: reuse the technician's previous account (needs
    /// `--on-check-in remove_from_group`).
    #[arg(long, value_name = "true|false")]
    pub reuse_existing_account: Option<bool>,
    /// Create accounts on the computer at check-out.
    #[arg(long, value_name = "true|false")]
    pub provisioning: Option<bool>,
    /// Rotate the password again when a session is checked in.
    #[arg(long, value_name = "true|false")]
    pub rotate_on_check_in: Option<bool>,
    /// Named mode: the account name template, containing `{username}` once.
    #[arg(long, value_name = "TEMPLATE")]
    pub named_account_template: Option<String>,
    /// Length of generated passwords (12 to 128).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(12..=128))]
    pub password_length: Option<u16>,
    /// When a session's access ends: end the account's logons and processes.
    #[arg(long, value_name = "true|false")]
    pub end_logons: Option<bool>,
    /// When a session's access ends: clear the account's cached sudo credentials.
    #[arg(long, value_name = "true|false")]
    pub clear_sudo_credentials: Option<bool>,
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
        #[arg(long, value_parser = Words::<RoleKind>::except(&[RoleKind::Agent]))]
        role: RoleKind,
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
        #[arg(long, value_name = "DURATION", value_parser = values::duration_seconds)]
        expires_in: Option<u64>,
    },
    /// List API tokens (holder, role, scope, created, last used, expires; never a secret).
    List {
        /// Only tokens of this role.
        #[arg(long, value_parser = Words::<RoleKind>::all())]
        role: Option<RoleKind>,
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
        #[arg(long, value_name = "DURATION", value_parser = values::duration_seconds)]
        expires_in: Option<u64>,
    },
    /// Revoke an API token.
    Revoke {
        /// The token's id: the 32 hex digits after `lk_` in the token.
        #[arg(value_name = "TOKEN_ID")]
        id: Uuid,
    },
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
    pub connection: Connection,
    #[command(subcommand)]
    pub command: Option<AuditCommand>,
    /// Only this tenant.
    #[arg(long, value_name = "TENANT_ID")]
    pub tenant: Option<Uuid>,
    /// Only this computer.
    #[arg(long, value_name = "COMPUTER_ID")]
    pub computer: Option<Uuid>,
    /// Only this technician.
    #[arg(long, value_name = "TECHNICIAN_ID")]
    pub technician: Option<Uuid>,
    /// Only this account name, e.g. `msp-nik`.
    #[arg(long, value_name = "NAME")]
    pub account: Option<String>,
    /// From this time on: RFC 3339 (2026-11-23T09:00:00Z) or a date (UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = values::time)]
    pub from: Option<String>,
    /// Up to this time: RFC 3339 or a date (UTC midnight).
    #[arg(long, value_name = "TIME", value_parser = values::time)]
    pub to: Option<String>,
    /// Print at most this many lines.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub limit: Option<u64>,
}

impl AuditArgs {
    pub fn has_filter(&self) -> bool {
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
        #[arg(long, value_name = "POS", value_parser = values::position)]
        after: Option<String>,
    },
}
