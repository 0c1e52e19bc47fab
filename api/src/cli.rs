//! The `latchkey` CLI's client commands: admin and auditor tasks against a running server.
//!
//! UNFINISHED: being written.

#[derive(clap::Subcommand)]
pub enum ClientCommand {}

pub async fn run(command: ClientCommand) -> Result<(), String> {
    match command {}
}
