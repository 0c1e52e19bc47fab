//! `latchkey-agent`: the endpoint agent (DESIGN.md §5). `enroll` once, then `run` as a
//! service; `offline-login` is for a technician at the machine when the server is away.
//!
//! Every error is one line naming the flag or cause and what to do, and a non-zero exit:
//! 1 in general, 3 when the server refused the agent's credential (re-enroll; a service
//! manager should not restart it), 4 when offline login for the account is locked after too
//! many wrong codes, 2 for bad usage (clap's).

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use latchkey_agent::daemon::{self, RunConfig, RunError};
use latchkey_agent::os::linux::LinuxShadow;
use latchkey_agent::state::{StateDir, DEFAULT_STATE_DIR};
use latchkey_agent::{enroll, offline};

/// Exit status when the credential was refused.
const EXIT_REVOKED: u8 = 3;
/// Exit status when offline login for the account is locked (too many wrong codes).
const EXIT_LOCKED_OUT: u8 = 4;

#[derive(Parser)]
#[command(name = "latchkey-agent", version, about = "Latchkey endpoint agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this computer with a one-time enrollment token.
    Enroll(EnrollArgs),
    /// Run the agent daemon: carry out this computer's provisioning requests.
    Run(RunArgs),
    /// Grant a technician admin access offline with their authenticator code.
    OfflineLogin(OfflineArgs),
}

#[derive(Args)]
struct StateArg {
    /// The agent's state directory (credential, journal, offline secrets); kept 0700.
    #[arg(long, env = "LATCHKEY_AGENT_STATE", default_value = DEFAULT_STATE_DIR)]
    state: PathBuf,
}

#[derive(Args)]
struct CaFileArg {
    /// A PEM file of CA certificates to trust for the server's HTTPS certificate, besides
    /// the system's (for a server whose certificate comes from a private CA). `enroll`
    /// records it in the credential; `run` uses that one unless given another.
    #[arg(long, env = "LATCHKEY_CA_FILE", value_name = "FILE")]
    ca_file: Option<PathBuf>,
}

#[derive(Args)]
struct RootArg {
    /// The root whose account files the shadow-utils change (`--root` of useradd and co).
    #[arg(long, env = "LATCHKEY_AGENT_ROOT", default_value = "/")]
    root: PathBuf,
}

#[derive(Args)]
struct EnrollArgs {
    /// The Latchkey server, e.g. https://latchkey.example.com. Servers sharing one
    /// database may be listed comma-separated: the agent moves to the next one when the one
    /// it uses cannot be reached.
    #[arg(long, env = "LATCHKEY_SERVER")]
    server: String,
    /// The one-time enrollment token from the MSP admin.
    #[arg(long, env = "LATCHKEY_ENROLLMENT_TOKEN", hide_env_values = true)]
    token: String,
    #[command(flatten)]
    state: StateArg,
    #[command(flatten)]
    ca: CaFileArg,
    /// This computer's name on the server (default: the kernel's hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// The group that grants admin rights here, used where the tenant's policy names none
    /// (default: the first of sudo, wheel, admin in the root's /etc/group).
    #[arg(long)]
    admin_group: Option<String>,
    #[command(flatten)]
    root: RootArg,
}

#[derive(Args)]
struct RunArgs {
    #[command(flatten)]
    state: StateArg,
    #[command(flatten)]
    root: RootArg,
    #[command(flatten)]
    ca: CaFileArg,
    /// The longest the daemon waits for requests before a round of its own, in seconds
    /// (1-60): a long poll's wait on a server without the event feed; on the event feed, how
    /// often it looks for buffered offline logins to upload.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..=60))]
    poll_seconds: u64,
    /// How often to report the admin group's members, in seconds.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    inventory_seconds: u64,
    /// How often to fetch the offline secrets, in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    secrets_seconds: u64,
    /// The longest pause between retries while the server cannot be reached, in seconds.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3_600))]
    max_backoff_seconds: u64,
    /// Test seam: abort right after applying this request id, before reporting it.
    #[arg(long, hide = true)]
    crash_before_reporting: Option<u64>,
}

#[derive(Args)]
#[group(id = "who", required = true, multiple = false)]
struct WhoArgs {
    /// Your MSP username (your named account on this computer).
    #[arg(long, group = "who")]
    technician: Option<String>,
    /// Use the customer's shared account (say who you are with --name).
    #[arg(long, group = "who")]
    shared: bool,
}

#[derive(Args)]
struct OfflineArgs {
    #[command(flatten)]
    who: WhoArgs,
    /// With --shared: your name, as the audit trail records it (the code proves only that
    /// you hold the shared secret, not who you are).
    #[arg(long, requires = "shared")]
    name: Option<String>,
    /// The 6-digit code your authenticator app shows for this computer.
    #[arg(long)]
    code: String,
    #[command(flatten)]
    state: StateArg,
    #[command(flatten)]
    root: RootArg,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LATCHKEY_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli.command {
        Command::Enroll(args) => run_enroll(args),
        Command::Run(args) => run_daemon(args),
        Command::OfflineLogin(args) => run_offline_login(args),
    }
}

fn fail(command: &str, error: &dyn std::fmt::Display, code: u8) -> ExitCode {
    eprintln!("latchkey-agent {command}: error: {error}");
    ExitCode::from(code)
}

fn run_enroll(args: EnrollArgs) -> ExitCode {
    match enroll::enroll(
        &args.state.state,
        &args.server,
        &args.token,
        args.hostname.as_deref(),
        args.admin_group
            .or_else(|| latchkey_agent::os::detect_admin_group(&args.root.root))
            .as_deref(),
        args.ca.ca_file.as_deref(),
    ) {
        Ok(credential) => {
            println!(
                "enrolled {} as computer {} of tenant {} with {}; the credential is in {} (0600)",
                credential.hostname,
                credential.computer_id,
                credential.tenant_id,
                credential.server,
                args.state
                    .state
                    .join(latchkey_agent::state::CREDENTIAL)
                    .display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("enroll", &e, 1),
    }
}

fn run_daemon(args: RunArgs) -> ExitCode {
    let config = RunConfig {
        state: args.state.state,
        root: args.root.root,
        poll_seconds: args.poll_seconds,
        inventory_every: Duration::from_secs(args.inventory_seconds),
        secrets_every: Duration::from_secs(args.secrets_seconds),
        max_backoff: Duration::from_secs(args.max_backoff_seconds),
        crash_before_reporting: args.crash_before_reporting,
        ca_file: args.ca.ca_file,
    };
    match daemon::run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e @ RunError::Revoked { .. }) => fail("run", &e, EXIT_REVOKED),
        Err(e) => fail("run", &e, 1),
    }
}

fn run_offline_login(args: OfflineArgs) -> ExitCode {
    let who = match (args.who.technician, args.name) {
        (Some(name), _) => offline::Who::Technician(name),
        (None, None) => {
            return fail(
                "offline-login",
                &"--name: the shared account needs your name for the audit trail \
                  (e.g. --shared --name \"Nik Potter\")",
                2,
            )
        }
        (None, Some(name)) => match latchkey_domain::names::ClaimedName::parse(name.trim()) {
            Ok(name) => offline::Who::Shared { name },
            Err(e) => return fail("offline-login", &format!("--name {e}"), 2),
        },
    };
    let state = match StateDir::open(&args.state.state) {
        Ok(state) => state,
        Err(e) => return fail("offline-login", &e, 1),
    };
    let backend = LinuxShadow::new(&args.root.root, state.file(latchkey_agent::state::UIDS));
    match offline::login(&state, &backend, &who, &args.code, chrono::Utc::now()) {
        Ok(granted) => {
            println!("offline access granted to {}", granted.account);
            println!("account: {}", granted.account);
            println!("password: {}", granted.password);
            println!(
                "admin until: {} (member of {})",
                granted.until.format("%Y-%m-%d %H:%M:%S UTC"),
                granted.group
            );
            println!(
                "The password is shown once. This login ({}) is recorded and reported to \
                 Latchkey when this computer is back online; the password is then rotated again.",
                granted.login_id
            );
            ExitCode::SUCCESS
        }
        Err(
            e @ (offline::OfflineError::LockedOut { .. }
            | offline::OfflineError::TooManyWrongCodes { .. }),
        ) => fail("offline-login", &e, EXIT_LOCKED_OUT),
        Err(e) => fail("offline-login", &e, 1),
    }
}
