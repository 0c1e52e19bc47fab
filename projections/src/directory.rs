//! The directory read model: which tenants, technicians, computers and sessions exist, and
//! which sessions are open. Process managers look up their fan-out here.

use latchkey_domain::computer::ComputerEvent;
use latchkey_domain::session::SessionEvent;
use latchkey_domain::technician::TechnicianEvent;
use latchkey_domain::tenant::TenantEvent;
use latchkey_domain::AnyEvent;
use rusqlite::{params, Transaction};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, login_mode TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS technicians (
    id TEXT PRIMARY KEY, username TEXT NOT NULL, email TEXT NOT NULL,
    offboarded INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS memberships (
    technician_id TEXT NOT NULL, tenant_id TEXT NOT NULL, PRIMARY KEY (technician_id, tenant_id)
);
CREATE TABLE IF NOT EXISTS computers (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, hostname TEXT NOT NULL,
    decommissioned INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS computers_by_tenant ON computers (tenant_id);
CREATE TABLE IF NOT EXISTS sessions (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, technician_id TEXT NOT NULL,
    computer_id TEXT NOT NULL, account TEXT NOT NULL, login_mode TEXT NOT NULL,
    status TEXT NOT NULL, open INTEGER NOT NULL,
    checked_out_at TEXT NOT NULL, activated_at TEXT, closed_at TEXT, expires_at TEXT NOT NULL,
    reason TEXT, ticket TEXT, check_in_reason TEXT, failure TEXT
);
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions (open, expires_at);
CREATE INDEX IF NOT EXISTS sessions_by_technician ON sessions (technician_id, open);
CREATE INDEX IF NOT EXISTS sessions_by_computer ON sessions (computer_id, open);
CREATE INDEX IF NOT EXISTS sessions_by_tenant ON sessions (tenant_id, open);
";

/// Times are stored as RFC 3339 with microseconds and `Z`, so text order is time order.
pub(crate) fn time(at: &chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn close_session(
    tx: &Transaction,
    id: String,
    status: &str,
    at: &chrono::DateTime<chrono::Utc>,
    check_in_reason: Option<&str>,
    failure: Option<&str>,
) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE sessions SET status = ?2, open = 0, closed_at = ?3, check_in_reason = ?4,
             failure = ?5
         WHERE id = ?1 AND open = 1",
        params![id, status, time(at), check_in_reason, failure],
    )
}

pub(crate) fn apply(tx: &Transaction, event: &AnyEvent) -> rusqlite::Result<()> {
    match event {
        AnyEvent::Tenant(TenantEvent::TenantRegistered(e)) => {
            tx.execute(
                "INSERT OR REPLACE INTO tenants (id, name, login_mode) VALUES (?1, ?2, ?3)",
                params![
                    e.tenant_id.to_string(),
                    e.name.as_str(),
                    e.login_mode.as_str()
                ],
            )?;
        }
        AnyEvent::Tenant(TenantEvent::LoginModeChanged(e)) => {
            tx.execute(
                "UPDATE tenants SET login_mode = ?2 WHERE id = ?1",
                params![e.tenant_id.to_string(), e.to.as_str()],
            )?;
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianRegistered(e)) => {
            tx.execute(
                "INSERT OR REPLACE INTO technicians (id, username, email) VALUES (?1, ?2, ?3)",
                params![
                    e.technician_id.to_string(),
                    e.username.as_str(),
                    e.email.as_str()
                ],
            )?;
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianJoinedTenant(e)) => {
            tx.execute(
                "INSERT OR IGNORE INTO memberships (technician_id, tenant_id) VALUES (?1, ?2)",
                params![e.technician_id.to_string(), e.tenant_id.to_string()],
            )?;
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianLeftTenant(e)) => {
            tx.execute(
                "DELETE FROM memberships WHERE technician_id = ?1 AND tenant_id = ?2",
                params![e.technician_id.to_string(), e.tenant_id.to_string()],
            )?;
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianOffboarded(e)) => {
            let id = e.technician_id.to_string();
            tx.execute("UPDATE technicians SET offboarded = 1 WHERE id = ?1", [&id])?;
            tx.execute("DELETE FROM memberships WHERE technician_id = ?1", [&id])?;
        }
        AnyEvent::Computer(ComputerEvent::ComputerEnrolled(e)) => {
            tx.execute(
                "INSERT OR REPLACE INTO computers (id, tenant_id, hostname) VALUES (?1, ?2, ?3)",
                params![
                    e.computer_id.to_string(),
                    e.tenant_id.to_string(),
                    e.hostname.as_str()
                ],
            )?;
        }
        AnyEvent::Computer(ComputerEvent::ComputerDecommissioned(e)) => {
            tx.execute(
                "UPDATE computers SET decommissioned = 1 WHERE id = ?1",
                [e.computer_id.to_string()],
            )?;
        }
        AnyEvent::Session(SessionEvent::SessionCheckedOut(e)) => {
            tx.execute(
                "INSERT OR REPLACE INTO sessions
                     (id, tenant_id, technician_id, computer_id, account, login_mode, status,
                      open, checked_out_at, expires_at, reason, ticket)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'provisioning', 1, ?7, ?8, ?9, ?10)",
                params![
                    e.session_id.to_string(),
                    e.tenant_id.to_string(),
                    e.technician_id.to_string(),
                    e.computer_id.to_string(),
                    e.account.as_str(),
                    e.login_mode.as_str(),
                    time(&e.at),
                    time(&e.expires_at),
                    e.reason.as_ref().map(|r| r.as_str()),
                    e.ticket.as_ref().map(|t| t.as_str()),
                ],
            )?;
        }
        AnyEvent::Session(SessionEvent::SessionActivated(e)) => {
            tx.execute(
                "UPDATE sessions SET status = 'active', activated_at = ?2
                 WHERE id = ?1 AND open = 1",
                params![e.session_id.to_string(), time(&e.at)],
            )?;
        }
        AnyEvent::Session(SessionEvent::SessionProvisioningFailed(e)) => {
            close_session(
                tx,
                e.session_id.to_string(),
                "failed",
                &e.at,
                None,
                Some(e.reason.as_str()),
            )?;
        }
        AnyEvent::Session(SessionEvent::SessionCheckedIn(e)) => {
            let reason = serde_json::to_value(e.reason).expect("an enum serialises");
            close_session(
                tx,
                e.session_id.to_string(),
                "checked_in",
                &e.at,
                reason.as_str(),
                None,
            )?;
        }
        _ => {}
    }
    Ok(())
}
