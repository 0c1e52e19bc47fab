//! `latchkey-agent`: the endpoint agent (DESIGN.md §5).
//!
//! UNFINISHED (issue 4): enrollment, the command subscription, the shadow-utils backend and
//! offline login are not built yet. Every subcommand says so and exits with status 2.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "latchkey-agent", version, about = "Latchkey endpoint agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enroll this computer with a one-time token (not built yet).
    Enroll,
    /// Run the agent daemon (not built yet).
    Run,
    /// Grant access offline with a technician's TOTP code (not built yet).
    OfflineLogin,
}

fn main() -> std::process::ExitCode {
    let name = match Cli::parse().command {
        Command::Enroll => "enroll",
        Command::Run => "run",
        Command::OfflineLogin => "offline-login",
    };
    eprintln!("latchkey-agent {name}: not implemented yet (the agent is planned work)");
    std::process::ExitCode::from(2)
}
