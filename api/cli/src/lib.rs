//! The `latchkey` CLI's client commands: admin and auditor tasks against a running server,
//! as a typed client of its REST API.
//!
//! Every command talks to the REST API under `/v1` of `--server` (`LATCHKEY_SERVER`) with the
//! API token from `--token` (`LATCHKEY_TOKEN`). The token only ever travels in the
//! `Authorization` header: it is never printed, logged or shown in `--help`. Requests and
//! answers are the wire types the server itself uses (`latchkey-wire`), and the values in
//! them the domain's (`latchkey-domain`), so a value the server would refuse is refused here
//! with the same words before anything is sent. Output is meant for people; `--json` prints
//! the answer as JSON instead, for scripts. Errors ([`CliError`]) are one clear sentence:
//! the server unreachable, the token refused, or the `detail` (and `field`) of the server's
//! problem document.
//!
//! - [`args`]: the commands and their flags (clap);
//! - [`client`]: the connection and one typed method per endpoint;
//! - `commands`: what each command asks and prints; `show`: the readable forms and tables;
//! - [`values`]: flag values (positions, times, durations, the domain's words).

pub mod args;
pub mod client;
mod commands;
mod error;
mod show;
pub mod values;

pub use args::*;
pub use error::{CliError, TOKEN_REFUSED};
pub use values::parse_duration;

/// Where the server listens unless told otherwise (`latchkey serve`'s default).
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Runs one client command.
pub async fn run(command: ClientCommand) -> Result<(), CliError> {
    commands::run(command).await
}
