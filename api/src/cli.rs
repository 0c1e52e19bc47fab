//! The `latchkey` CLI's client commands (admin and auditor tasks against a running server)
//! are a crate of their own, `latchkey-cli` (`api/cli`): a typed client of the REST API.
//! The `latchkey` binary parses them with its own commands and runs them here.

pub use latchkey_cli::{
    AuditArgs, AuditCommand, ClientCommand, ComputersCommand, Connection, ModeCommand,
    PolicyChanges, PolicyCommand, PolicySetArgs, SessionsCommand, TechniciansCommand,
    TenantsCommand, TokensCommand, DEFAULT_SERVER, TOKEN_REFUSED,
};

/// Runs one client command; the error is the sentence to print after `latchkey: `.
pub async fn run(command: ClientCommand) -> Result<(), String> {
    latchkey_cli::run(command).await.map_err(|e| e.to_string())
}
