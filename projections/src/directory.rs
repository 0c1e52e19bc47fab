//! The directory read model: which tenants, technicians, computers and sessions exist, and
//! which sessions are open. Process managers look up their fan-out here.

use crate::audit::{ComputerName, NameCache, SessionFacts};
use crate::{ProjectionError, Queries};
use latchkey_domain::computer::ComputerEvent;
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_domain::session::SessionEvent;
use latchkey_domain::technician::TechnicianEvent;
use latchkey_domain::tenant::TenantEvent;
use latchkey_domain::AnyEvent;
use latchkey_sql::{params, OptionalExtension, Row, Sql, SqlError};
pub use latchkey_wire::{ComputerRow, SessionRow, TechnicianRow, TenantRow};
use uuid::Uuid;

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
    tx: &dyn Sql,
    id: String,
    status: &str,
    at: &chrono::DateTime<chrono::Utc>,
    check_in_reason: Option<&str>,
    failure: Option<&str>,
) -> latchkey_sql::Result<()> {
    crate::exec_later(
        tx,
        "UPDATE sessions SET status = ?2, open = 0, closed_at = ?3, check_in_reason = ?4,
             failure = ?5
         WHERE id = ?1 AND open = 1",
        params![id, status, time(at), check_in_reason, failure],
    )
}

/// Applies `event`, telling `names` the names and session facts it writes.
pub(crate) fn apply(tx: &dyn Sql, names: &NameCache, event: &AnyEvent) -> latchkey_sql::Result<()> {
    match event {
        AnyEvent::Tenant(TenantEvent::TenantRegistered(e)) => {
            let (id, name) = (e.tenant_id.to_string(), e.name.as_str().to_owned());
            crate::exec_later(
                tx,
                "INSERT INTO tenants (id, name, login_mode) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
                params![id, name, e.login_mode.as_str()],
            )?;
            names.tenant_registered(id, name);
        }
        AnyEvent::Tenant(TenantEvent::LoginModeChanged(e)) => {
            crate::exec_later(
                tx,
                "UPDATE tenants SET login_mode = ?2 WHERE id = ?1",
                params![e.tenant_id.to_string(), e.to.as_str()],
            )?;
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianRegistered(e)) => {
            let (id, email) = (e.technician_id.to_string(), e.email.as_str().to_owned());
            crate::exec_later(
                tx,
                "INSERT INTO technicians (id, username, email) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
                params![id, e.username.as_str(), email],
            )?;
            names.technician_registered(id, email);
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianJoinedTenant(e)) => {
            crate::exec_later(
                tx,
                "INSERT INTO memberships (technician_id, tenant_id) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
                params![e.technician_id.to_string(), e.tenant_id.to_string()],
            )?;
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianLeftTenant(e)) => {
            crate::exec_later(
                tx,
                "DELETE FROM memberships WHERE technician_id = ?1 AND tenant_id = ?2",
                params![e.technician_id.to_string(), e.tenant_id.to_string()],
            )?;
        }
        AnyEvent::Technician(TechnicianEvent::TechnicianOffboarded(e)) => {
            let id = e.technician_id.to_string();
            crate::exec_later(
                tx,
                "UPDATE technicians SET offboarded = 1 WHERE id = ?1",
                [&id],
            )?;
            crate::exec_later(
                tx,
                "DELETE FROM memberships WHERE technician_id = ?1",
                [&id],
            )?;
        }
        AnyEvent::Computer(ComputerEvent::ComputerEnrolled(e)) => {
            let id = e.computer_id.to_string();
            let computer = ComputerName {
                hostname: e.hostname.as_str().to_owned(),
                tenant: Some(e.tenant_id.to_string()),
            };
            crate::exec_later(
                tx,
                "INSERT INTO computers (id, tenant_id, hostname) VALUES (?1, ?2, ?3) ON CONFLICT (id) DO NOTHING",
                params![id, computer.tenant, computer.hostname],
            )?;
            names.computer_enrolled(id, computer);
        }
        AnyEvent::Computer(ComputerEvent::ComputerDecommissioned(e)) => {
            crate::exec_later(
                tx,
                "UPDATE computers SET decommissioned = 1 WHERE id = ?1",
                [e.computer_id.to_string()],
            )?;
        }
        AnyEvent::Session(SessionEvent::SessionCheckedOut(e)) => {
            let id = e.session_id.to_string();
            let facts = SessionFacts {
                tenant: e.tenant_id.to_string(),
                technician: e.technician_id.to_string(),
                computer: e.computer_id.to_string(),
                account: e.account.as_str().to_owned(),
                login_mode: e.login_mode.as_str().to_owned(),
            };
            crate::exec_later(
                tx,
                "INSERT INTO sessions
                     (id, tenant_id, technician_id, computer_id, account, login_mode, status,
                      open, checked_out_at, expires_at, reason, ticket)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'provisioning', 1, ?7, ?8, ?9, ?10)
                 ON CONFLICT (id) DO NOTHING",
                params![
                    id,
                    facts.tenant,
                    facts.technician,
                    facts.computer,
                    facts.account,
                    facts.login_mode,
                    time(&e.at),
                    time(&e.expires_at),
                    e.reason.as_ref().map(|r| r.as_str()),
                    e.ticket.as_ref().map(|t| t.as_str()),
                ],
            )?;
            names.session_checked_out(id, facts);
        }
        AnyEvent::Session(SessionEvent::SessionActivated(e)) => {
            crate::exec_later(
                tx,
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

/// Which sessions to list; every field narrows the list.
#[derive(Debug, Clone, Default)]
pub struct SessionFilter {
    pub tenant: Option<TenantId>,
    pub technician: Option<TechnicianId>,
    pub computer: Option<ComputerId>,
    pub open_only: bool,
    pub limit: u32,
}

fn uuid_at(row: &Row, i: usize) -> latchkey_sql::Result<Uuid> {
    let text: String = row.get(i)?;
    Uuid::parse_str(&text).map_err(|e| SqlError::column(i, e))
}

const SESSION_COLUMNS: &str = "id, tenant_id, technician_id, computer_id, account, login_mode,
    status, open, checked_out_at, activated_at, closed_at, expires_at, reason, ticket,
    check_in_reason, failure";

fn session_row(row: &Row) -> latchkey_sql::Result<SessionRow> {
    Ok(SessionRow {
        session_id: SessionId(uuid_at(row, 0)?),
        tenant_id: TenantId(uuid_at(row, 1)?),
        technician_id: TechnicianId(uuid_at(row, 2)?),
        computer_id: ComputerId(uuid_at(row, 3)?),
        account: row.get(4)?,
        login_mode: row.get(5)?,
        status: row.get(6)?,
        open: row.get(7)?,
        checked_out_at: row.get(8)?,
        activated_at: row.get(9)?,
        closed_at: row.get(10)?,
        expires_at: row.get(11)?,
        reason: row.get(12)?,
        ticket: row.get(13)?,
        check_in_reason: row.get(14)?,
        failure: row.get(15)?,
    })
}

impl Queries<'_> {
    pub fn tenants(&self) -> Result<Vec<TenantRow>, ProjectionError> {
        let mut statement = self
            .conn()
            .prepare_cached("SELECT id, name, login_mode FROM tenants ORDER BY name, id")?;
        let rows = statement.query_map(params![], |row| {
            Ok(TenantRow {
                tenant_id: TenantId(uuid_at(row, 0)?),
                name: row.get(1)?,
                login_mode: row.get(2)?,
            })
        })?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }

    pub fn tenant_exists(&self, tenant: TenantId) -> Result<bool, ProjectionError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT 1 FROM tenants WHERE id = ?1")?
            .exists([tenant.to_string()])?)
    }

    pub fn technician(
        &self,
        technician: TechnicianId,
    ) -> Result<Option<TechnicianRow>, ProjectionError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT id, username, email, offboarded FROM technicians WHERE id = ?1",
            )?
            .query_row([technician.to_string()], technician_row)
            .optional()?)
    }

    /// Technicians, all (`None`) or the current members of one tenant.
    pub fn technicians(
        &self,
        tenant: Option<TenantId>,
    ) -> Result<Vec<TechnicianRow>, ProjectionError> {
        let mut statement = self.conn().prepare_cached(
            "SELECT id, username, email, offboarded FROM technicians t
             WHERE CAST(?1 AS TEXT) IS NULL OR EXISTS (SELECT 1 FROM memberships m
                                         WHERE m.technician_id = t.id AND m.tenant_id = ?1)
             ORDER BY username, id",
        )?;
        let rows = statement.query_map([tenant.map(|t| t.to_string())], technician_row)?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }

    /// Is the technician currently a member of the tenant?
    pub fn is_member(
        &self,
        technician: TechnicianId,
        tenant: TenantId,
    ) -> Result<bool, ProjectionError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT 1 FROM memberships WHERE technician_id = ?1 AND tenant_id = ?2",
            )?
            .exists(params![technician.to_string(), tenant.to_string()])?)
    }

    pub fn computers(&self, tenant: TenantId) -> Result<Vec<ComputerRow>, ProjectionError> {
        let mut statement = self.conn().prepare_cached(
            "SELECT id, tenant_id, hostname, decommissioned FROM computers
             WHERE tenant_id = ?1 ORDER BY hostname, id",
        )?;
        let rows = statement.query_map([tenant.to_string()], computer_row)?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }

    pub fn computer(&self, computer: ComputerId) -> Result<Option<ComputerRow>, ProjectionError> {
        Ok(self
            .conn()
            .prepare_cached(
                "SELECT id, tenant_id, hostname, decommissioned FROM computers WHERE id = ?1",
            )?
            .query_row([computer.to_string()], computer_row)
            .optional()?)
    }

    pub fn sessions(&self, filter: &SessionFilter) -> Result<Vec<SessionRow>, ProjectionError> {
        let sql = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions
             WHERE (CAST(?1 AS TEXT) IS NULL OR tenant_id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR technician_id = ?2)
               AND (CAST(?3 AS TEXT) IS NULL OR computer_id = ?3) AND (?4 = 0 OR open = 1)
             ORDER BY checked_out_at DESC, id LIMIT (SELECT CAST(?5 AS BIGINT))"
        );
        let mut statement = self.conn().prepare_cached(&sql)?;
        let rows = statement.query_map(
            params![
                filter.tenant.map(|t| t.to_string()),
                filter.technician.map(|t| t.to_string()),
                filter.computer.map(|c| c.to_string()),
                filter.open_only,
                filter.limit.clamp(1, 1000),
            ],
            session_row,
        )?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }

    pub fn session(&self, session: SessionId) -> Result<Option<SessionRow>, ProjectionError> {
        let sql = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = ?1");
        Ok(self
            .conn()
            .prepare_cached(&sql)?
            .query_row([session.to_string()], session_row)
            .optional()?)
    }

    /// How many sessions are open (provisioning or active).
    pub fn open_session_count(&self) -> Result<u64, ProjectionError> {
        Ok(self
            .conn()
            .prepare_cached("SELECT COUNT(*) FROM sessions WHERE open = 1")?
            .query_row(params![], |row| row.get::<_, i64>(0))? as u64)
    }

    /// Open sessions whose maximum length has run out at `now`: the expiry loop checks them in.
    pub fn expired_sessions(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<SessionId>, ProjectionError> {
        let mut statement = self.conn().prepare_cached(
            "SELECT id FROM sessions WHERE open = 1 AND expires_at <= ?1 ORDER BY expires_at",
        )?;
        let rows = statement.query_map([time(&now)], |row| uuid_at(row, 0).map(SessionId))?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }
}

fn technician_row(row: &Row) -> latchkey_sql::Result<TechnicianRow> {
    Ok(TechnicianRow {
        technician_id: TechnicianId(uuid_at(row, 0)?),
        username: row.get(1)?,
        email: row.get(2)?,
        offboarded: row.get(3)?,
    })
}

fn computer_row(row: &Row) -> latchkey_sql::Result<ComputerRow> {
    Ok(ComputerRow {
        computer_id: ComputerId(uuid_at(row, 0)?),
        tenant_id: TenantId(uuid_at(row, 1)?),
        hostname: row.get(2)?,
        decommissioned: row.get(3)?,
    })
}
