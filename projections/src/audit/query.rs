//! Reading the audit trail back: the filter, the entries and pages it answers with, and the
//! opaque cursor between pages.

use super::time;
use crate::{ProjectionError, Queries};
use chrono::{DateTime, Utc};
use latchkey_domain::ids::{ComputerId, SessionId, TechnicianId, TenantId};
use latchkey_sql::{Row, SqlError, Value};
use latchkey_store::Position;
pub use latchkey_wire::{AuditEntry, AuditPage};
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

/// What to read from the audit trail. `from` is inclusive, `to` exclusive; `limit` is clamped
/// to 1..=[`AuditFilter::MAX_LIMIT`]. With `tenant` set, lines that belong to no tenant (a
/// technician's registration) are left out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    pub tenant: Option<TenantId>,
    pub computer: Option<ComputerId>,
    pub technician: Option<TechnicianId>,
    pub account: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// The `next_cursor` of the previous page; `None` for the first page.
    pub cursor: Option<String>,
    pub limit: u32,
}

impl AuditFilter {
    pub const DEFAULT_LIMIT: u32 = 100;
    pub const MAX_LIMIT: u32 = 1000;
}

impl Default for AuditFilter {
    fn default() -> Self {
        Self {
            tenant: None,
            computer: None,
            technician: None,
            account: None,
            from: None,
            to: None,
            cursor: None,
            limit: Self::DEFAULT_LIMIT,
        }
    }
}

/// Where a page ends: the line after which the next page starts. Shown to callers as
/// `<commit>.<prepare>.<line>` in base 10, which they should treat as opaque.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct AuditCursor {
    pub position: Position,
    pub line: u32,
}

impl fmt::Display for AuditCursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}.{}.{}",
            self.position.commit, self.position.prepare, self.line
        )
    }
}

impl FromStr for AuditCursor {
    type Err = ProjectionError;

    fn from_str(s: &str) -> Result<Self, ProjectionError> {
        let bad = || ProjectionError::BadInput {
            field: "cursor",
            reason: format!(
                "must be the next_cursor of a previous page (got '{}')",
                s.chars().take(80).collect::<String>()
            ),
        };
        // Plain digits only: `u64::from_str` would also take a leading '+'.
        let number = |part: &str| -> Result<u64, ProjectionError> {
            if part.is_empty() || part.len() > 19 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            // Positions are stored as SQLite integers, which are signed.
            part.parse::<u64>()
                .ok()
                .filter(|n| i64::try_from(*n).is_ok())
                .ok_or_else(bad)
        };
        let mut parts = s.split('.');
        let (Some(commit), Some(prepare), Some(line), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        Ok(Self {
            position: Position::new(number(commit)?, number(prepare)?),
            line: u32::try_from(number(line)?).map_err(|_| bad())?,
        })
    }
}

impl Queries<'_> {
    /// The audit trail lines matching `filter`, in global order, one page at a time.
    pub fn audit_trail(&self, filter: &AuditFilter) -> Result<AuditPage, ProjectionError> {
        let after = filter
            .cursor
            .as_deref()
            .map(AuditCursor::from_str)
            .transpose()?;
        if let (Some(from), Some(to)) = (filter.from, filter.to) {
            if to <= from {
                return Err(ProjectionError::BadInput {
                    field: "to",
                    reason: format!(
                        "must be later than from (got from {} and to {})",
                        time(&from),
                        time(&to)
                    ),
                });
            }
        }
        let limit = filter.limit.clamp(1, AuditFilter::MAX_LIMIT);

        let mut sql = String::from(
            "SELECT commit_position, prepare_position, line, event_id, stream, revision,
                    event_type, at, tenant_id, computer_id, technician_id, session_id, account,
                    actor, sentence
             FROM audit_trail WHERE 1 = 1",
        );
        let mut values: Vec<Value> = Vec::new();
        let mut condition = |sql_part: &str, value: Value| {
            values.push(value);
            sql.push_str(&format!(" AND {sql_part} ?{}", values.len()));
        };
        if let Some(tenant) = filter.tenant {
            condition("tenant_id =", Value::Text(tenant.to_string()));
        }
        if let Some(computer) = filter.computer {
            condition("computer_id =", Value::Text(computer.to_string()));
        }
        if let Some(technician) = filter.technician {
            condition("technician_id =", Value::Text(technician.to_string()));
        }
        if let Some(account) = &filter.account {
            condition("account =", Value::Text(account.clone()));
        }
        if let Some(from) = &filter.from {
            condition("at >=", Value::Text(time(from)));
        }
        if let Some(to) = &filter.to {
            condition("at <", Value::Text(time(to)));
        }
        if let Some(after) = after {
            values.push(Value::Int(after.position.commit as i64));
            values.push(Value::Int(after.position.prepare as i64));
            values.push(Value::Int(i64::from(after.line)));
            let n = values.len();
            sql.push_str(&format!(
                " AND (commit_position, prepare_position, line) > (?{}, ?{}, ?{n})",
                n - 2,
                n - 1
            ));
        }
        // One more than asked for tells whether there is a next page. `(SELECT …)` keeps
        // SQLite on its cached plan (a bound LIMIT makes it plan again); the CAST gives
        // PostgreSQL the parameter's type.
        values.push(Value::Int(i64::from(limit) + 1));
        sql.push_str(&format!(
            " ORDER BY commit_position, prepare_position, line LIMIT (SELECT CAST(?{} AS BIGINT))",
            values.len()
        ));

        // Not cached: each combination of filters is its own statement.
        let mut statement = self.conn().prepare(&sql)?;
        let rows = statement.query_map(values, read_entry)?;
        let mut entries = Vec::new();
        let mut last = None;
        for row in rows {
            let (cursor, entry) = row?;
            if entries.len() == limit as usize {
                return Ok(AuditPage {
                    entries,
                    next_cursor: last.map(|c: AuditCursor| c.to_string()),
                });
            }
            last = Some(cursor);
            entries.push(entry);
        }
        Ok(AuditPage {
            entries,
            next_cursor: None,
        })
    }
}

fn read_entry(row: &Row) -> latchkey_sql::Result<(AuditCursor, AuditEntry)> {
    fn conversion(column: usize, e: impl std::error::Error + Send + Sync + 'static) -> SqlError {
        SqlError::column(column, e)
    }
    // Only `apply` writes these columns, always from a Uuid.
    let uuid = |column: usize| -> latchkey_sql::Result<Uuid> {
        Uuid::parse_str(&row.get::<_, String>(column)?).map_err(|e| conversion(column, e))
    };
    let optional_uuid = |column: usize| -> latchkey_sql::Result<Option<Uuid>> {
        row.get::<_, Option<String>>(column)?
            .map(|text| Uuid::parse_str(&text).map_err(|e| conversion(column, e)))
            .transpose()
    };
    let position = Position::new(row.get::<_, i64>(0)? as u64, row.get::<_, i64>(1)? as u64);
    let line = row.get::<_, i64>(2)? as u32;
    let at = DateTime::parse_from_rfc3339(&row.get::<_, String>(7)?)
        .map_err(|e| conversion(7, e))?
        .with_timezone(&Utc);
    let entry = AuditEntry {
        position: latchkey_wire::Position::new(position.commit, position.prepare),
        event_id: uuid(3)?,
        stream: row.get(4)?,
        revision: row.get::<_, i64>(5)? as u64,
        event_type: row.get(6)?,
        at,
        tenant_id: optional_uuid(8)?.map(TenantId),
        computer_id: optional_uuid(9)?.map(ComputerId),
        technician_id: optional_uuid(10)?.map(TechnicianId),
        session_id: optional_uuid(11)?.map(SessionId),
        account: row.get(12)?,
        actor: row.get(13)?,
        sentence: row.get(14)?,
    };
    Ok((AuditCursor { position, line }, entry))
}
