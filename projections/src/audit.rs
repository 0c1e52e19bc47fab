//! The audit trail (DESIGN.md §4): one human-readable line per event of the log, e.g.
//! `nik@nikpot.com logged into the Desktop W11-L-PASSWORD with account msp-nik`, filterable by
//! tenant, computer, technician, account and time, paged in global order by an opaque cursor.
//! A line is built from the event, its metadata and the directory as of that event, never from
//! a clock or random value, so a rebuilt trail equals the live one. It never holds a secret.
//!
//! Every event gets one line, except `TechnicianOffboarded`, which gets one line per tenant the
//! technician was in (so each tenant's auditors see it), or a single tenant-less line if there
//! were none. Lines are therefore keyed by (commit, prepare, line), `line` counting from 0.
//! Two side tables remember what later computer events do not repeat: each provisioning
//! request's session and operation (`audit_requests`) and whose each account is
//! (`audit_account_owners`), so an agent's result is filed under its session and technician.
//! The writer keeps what it looks up in a [`NameCache`], so a line usually costs no read.

use crate::recent::Recent;
use crate::{ProjectionError, Queries};
use chrono::{DateTime, Utc};
use latchkey_domain::computer::{
    AccountOwner, ComputerEvent, Operation, OsKind, Purpose, ReleaseOutcome, RetireReason,
};
use latchkey_domain::ids::{ComputerId, RequestId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::AccountName;
use latchkey_domain::policy::{CheckInAction, JitPolicy, LoginMode};
use latchkey_domain::session::{CheckInReason, SessionEvent};
use latchkey_domain::technician::TechnicianEvent;
use latchkey_domain::tenant::TenantEvent;
use latchkey_domain::{Actor, AnyEvent, Timestamp};
use latchkey_sql::{params, Dialect, OptionalExtension, Row, Sql, SqlError, Value};
use latchkey_store::{Position, RecordedEvent};
use serde::Serialize;
use std::cell::RefCell;
use std::fmt;
use std::str::FromStr;
use uuid::Uuid;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS audit_trail (
    commit_position INTEGER NOT NULL,
    prepare_position INTEGER NOT NULL,
    line INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    stream TEXT NOT NULL,
    revision INTEGER NOT NULL,
    event_type TEXT NOT NULL,
    at TEXT NOT NULL,
    tenant_id TEXT,
    computer_id TEXT,
    technician_id TEXT,
    session_id TEXT,
    account TEXT,
    actor TEXT NOT NULL,
    sentence TEXT NOT NULL,
    PRIMARY KEY (commit_position, prepare_position, line)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS audit_trail_by_tenant
    ON audit_trail (tenant_id, commit_position, prepare_position, line);
CREATE INDEX IF NOT EXISTS audit_trail_by_computer
    ON audit_trail (computer_id, commit_position, prepare_position, line);
CREATE INDEX IF NOT EXISTS audit_trail_by_technician
    ON audit_trail (technician_id, commit_position, prepare_position, line);
CREATE INDEX IF NOT EXISTS audit_trail_by_account
    ON audit_trail (account, commit_position, prepare_position, line);
CREATE INDEX IF NOT EXISTS audit_trail_by_time ON audit_trail (at);
CREATE TABLE IF NOT EXISTS audit_requests (
    computer_id TEXT NOT NULL, request_id INTEGER NOT NULL, session_id TEXT,
    purpose TEXT NOT NULL, account TEXT NOT NULL, operation TEXT NOT NULL,
    PRIMARY KEY (computer_id, request_id)
);
CREATE TABLE IF NOT EXISTS audit_account_owners (
    computer_id TEXT NOT NULL, account TEXT NOT NULL, technician_id TEXT,
    PRIMARY KEY (computer_id, account)
);
";

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

/// One line of the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AuditEntry {
    pub position: Position,
    pub event_id: Uuid,
    pub stream: String,
    pub revision: u64,
    pub event_type: String,
    /// When it happened (the event's own time, not when it was stored).
    pub at: DateTime<Utc>,
    pub tenant_id: Option<TenantId>,
    pub computer_id: Option<ComputerId>,
    pub technician_id: Option<TechnicianId>,
    pub session_id: Option<SessionId>,
    pub account: Option<String>,
    /// Who caused it: an e-mail address, `agent of <hostname>`, or `latchkey`.
    pub actor: String,
    pub sentence: String,
}

/// One page of the audit trail, in global order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct AuditPage {
    pub entries: Vec<AuditEntry>,
    /// Pass it back as [`AuditFilter::cursor`] for the next page; `None` on the last page.
    pub next_cursor: Option<String>,
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
        position,
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

pub(crate) fn apply(
    tx: &dyn Sql,
    cache: &NameCache,
    rows: &mut Rows,
    recorded: &RecordedEvent,
    event: &AnyEvent,
) -> latchkey_sql::Result<()> {
    let names = Names { db: tx, cache };
    let lines = match event {
        AnyEvent::Tenant(e) => vec![tenant_line(&names, recorded, e)?],
        AnyEvent::Technician(e) => technician_lines(&names, e)?,
        // The registration that follows says it in the technician's own words.
        AnyEvent::TechnicianNames(_) => vec![],
        AnyEvent::Computer(e) => {
            remember(tx, cache, e)?;
            vec![computer_line(&names, recorded, e)?]
        }
        AnyEvent::Session(e) => {
            if let SessionEvent::SessionCheckedOut(e) = e {
                remember_owner(tx, cache, e.computer_id, &e.account, &e.account_owner)?;
            }
            vec![session_line(&names, recorded, e)?]
        }
    };
    for (number, line) in lines.into_iter().enumerate() {
        rows.0.push(StoredLine {
            commit_position: recorded.position.commit as i64,
            prepare_position: recorded.position.prepare as i64,
            line: number as i64,
            event_id: recorded.id.to_string(),
            stream: recorded.stream.as_str().to_owned(),
            revision: recorded.revision as i64,
            event_type: event.event_type().to_owned(),
            at: time(&line.at),
            tenant_id: line.tenant,
            computer_id: line.computer,
            technician_id: line.technician,
            session_id: line.session,
            account: line.account,
            actor: line.actor,
            sentence: line.sentence,
        });
    }
    Ok(())
}

/// The lines of a write transaction's events, written together at its end
/// ([`Rows::write`]): nothing the transaction reads in between looks at the audit trail.
#[derive(Default)]
pub(crate) struct Rows(Vec<StoredLine>);

/// One line of the audit trail, as stored.
#[derive(Serialize)]
struct StoredLine {
    commit_position: i64,
    prepare_position: i64,
    line: i64,
    event_id: String,
    stream: String,
    revision: i64,
    event_type: String,
    at: String,
    tenant_id: Option<String>,
    computer_id: Option<String>,
    technician_id: Option<String>,
    session_id: Option<String>,
    account: Option<String>,
    actor: String,
    sentence: String,
}

impl Rows {
    /// Writes the lines. A line already written stays as it was: it was built from the
    /// directory as of its event, which is what a rebuild from the log reproduces. On
    /// PostgreSQL all of them go in one statement (every statement costs the server as much
    /// again as a line's own work); on SQLite one statement each, from the statement cache.
    pub(crate) fn write(self, tx: &dyn Sql) -> latchkey_sql::Result<()> {
        if self.0.is_empty() {
            return Ok(());
        }
        match tx.dialect() {
            Dialect::Postgres => {
                let json = serde_json::to_string(&self.0)
                    .map_err(|e| SqlError::Driver(format!("audit lines as JSON: {e}")))?;
                crate::exec_later(
                    tx,
                    "INSERT INTO audit_trail
                         (commit_position, prepare_position, line, event_id, stream, revision,
                          event_type, at, tenant_id, computer_id, technician_id, session_id,
                          account, actor, sentence)
                     SELECT commit_position, prepare_position, line, event_id, stream, revision,
                            event_type, at, tenant_id, computer_id, technician_id, session_id,
                            account, actor, sentence
                       FROM jsonb_to_recordset(CAST(CAST(?1 AS TEXT) AS jsonb)) AS r(
                            commit_position bigint, prepare_position bigint, line bigint,
                            event_id text, stream text, revision bigint, event_type text,
                            at text, tenant_id text, computer_id text, technician_id text,
                            session_id text, account text, actor text, sentence text)
                     ON CONFLICT DO NOTHING",
                    params![json],
                )
            }
            Dialect::Sqlite => {
                for row in self.0 {
                    crate::exec_later(
                        tx,
                        "INSERT INTO audit_trail
                             (commit_position, prepare_position, line, event_id, stream,
                              revision, event_type, at, tenant_id, computer_id, technician_id,
                              session_id, account, actor, sentence)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14,
                                 ?15)
                         ON CONFLICT DO NOTHING",
                        params![
                            row.commit_position,
                            row.prepare_position,
                            row.line,
                            row.event_id,
                            row.stream,
                            row.revision,
                            row.event_type,
                            row.at,
                            row.tenant_id,
                            row.computer_id,
                            row.technician_id,
                            row.session_id,
                            row.account,
                            row.actor,
                            row.sentence,
                        ],
                    )?;
                }
                Ok(())
            }
        }
    }
}

fn time(at: &Timestamp) -> String {
    crate::directory::time(at)
}

/// What later events of a computer need to know about its provisioning requests and accounts,
/// which their own payloads do not repeat.
fn remember(tx: &dyn Sql, cache: &NameCache, event: &ComputerEvent) -> latchkey_sql::Result<()> {
    match event {
        ComputerEvent::ProvisioningRequested(e) => {
            let computer = e.computer_id.to_string();
            let facts = RequestFacts {
                session: e.session_id.map(|s| s.to_string()),
                purpose: purpose_name(e.purpose).to_owned(),
                account: e.operation.account().as_str().to_owned(),
                operation: operation_text(&e.operation),
            };
            crate::exec_later(
                tx,
                "INSERT INTO audit_requests
                     (computer_id, request_id, session_id, purpose, account, operation)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT DO NOTHING",
                params![
                    computer,
                    e.request_id.0 as i64,
                    facts.session,
                    facts.purpose,
                    facts.account,
                    facts.operation,
                ],
            )?;
            cache
                .requests
                .borrow_mut()
                .insert_new((computer, e.request_id.0 as i64), facts);
        }
        ComputerEvent::SessionAccessRequested(e) => {
            remember_owner(tx, cache, e.computer_id, &e.account, &e.owner)?;
        }
        _ => {}
    }
    Ok(())
}

fn remember_owner(
    tx: &dyn Sql,
    cache: &NameCache,
    computer: ComputerId,
    account: &AccountName,
    owner: &AccountOwner,
) -> latchkey_sql::Result<()> {
    let (computer, account) = (computer.to_string(), account.as_str().to_owned());
    let technician = owner.technician().map(|t| t.to_string());
    crate::exec_later(
        tx,
        "INSERT INTO audit_account_owners (computer_id, account, technician_id)
         VALUES (?1, ?2, ?3)
                 ON CONFLICT (computer_id, account) DO UPDATE SET technician_id = excluded.technician_id",
        params![computer, account, technician],
    )?;
    cache
        .owners
        .borrow_mut()
        .insert((computer, account), technician);
    Ok(())
}

/// One audit line before it is stored.
struct Line {
    at: Timestamp,
    actor: String,
    sentence: String,
    tenant: Option<String>,
    computer: Option<String>,
    technician: Option<String>,
    session: Option<String>,
    account: Option<String>,
}

impl Line {
    fn new(at: Timestamp, actor: String, sentence: String) -> Self {
        Self {
            at,
            actor,
            sentence,
            tenant: None,
            computer: None,
            technician: None,
            session: None,
            account: None,
        }
    }
    fn tenant(mut self, id: impl ToString) -> Self {
        self.tenant = Some(id.to_string());
        self
    }
    fn tenant_opt(mut self, id: Option<String>) -> Self {
        self.tenant = id;
        self
    }
    fn computer(mut self, id: ComputerId) -> Self {
        self.computer = Some(id.to_string());
        self
    }
    fn technician(mut self, id: impl ToString) -> Self {
        self.technician = Some(id.to_string());
        self
    }
    fn technician_opt(mut self, id: Option<String>) -> Self {
        self.technician = id;
        self
    }
    fn session(mut self, id: impl ToString) -> Self {
        self.session = Some(id.to_string());
        self
    }
    fn session_opt(mut self, id: Option<String>) -> Self {
        self.session = id;
        self
    }
    fn account(mut self, account: impl ToString) -> Self {
        self.account = Some(account.to_string());
        self
    }
}

/// A computer as the audit trail names it.
#[derive(Clone)]
pub(crate) struct ComputerName {
    pub(crate) hostname: String,
    pub(crate) tenant: Option<String>,
}

/// A session as the directory knows it.
#[derive(Clone)]
pub(crate) struct SessionFacts {
    pub(crate) tenant: String,
    pub(crate) technician: String,
    pub(crate) computer: String,
    pub(crate) account: String,
    pub(crate) login_mode: String,
}

/// A provisioning request as it was made.
#[derive(Clone)]
pub(crate) struct RequestFacts {
    session: Option<String>,
    purpose: String,
    account: String,
    operation: String,
}

/// Entries each kind of name the writer remembers holds at most.
const REMEMBERED: usize = 16_384;

/// What the read models' writer remembers of the rows the audit sentences are built from: the
/// names of tenants, technicians and computers, the facts of sessions and provisioning
/// requests, and the owners of accounts. None of them changes once written (an owner is
/// replaced, never edited), so each is learnt from the event that writes the row, in the
/// same transaction, or read from the database once; a line then costs no look-up.
///
/// It is only right while nobody else writes the read models: [`crate::ReadModels`] forgets
/// it all when the checkpoint in the database is not the one it left there (another server
/// applied events, or `latchkey replay` rebuilt them) and when a transaction of its own fails.
pub(crate) struct NameCache {
    tenants: RefCell<Recent<String, String>>,
    emails: RefCell<Recent<String, String>>,
    computers: RefCell<Recent<String, ComputerName>>,
    sessions: RefCell<Recent<String, SessionFacts>>,
    requests: RefCell<Recent<(String, i64), RequestFacts>>,
    /// `None`: the account has no owning technician (the shared account).
    owners: RefCell<Recent<(String, String), Option<String>>>,
}

impl Default for NameCache {
    fn default() -> Self {
        Self {
            tenants: RefCell::new(Recent::new(REMEMBERED)),
            emails: RefCell::new(Recent::new(REMEMBERED)),
            computers: RefCell::new(Recent::new(REMEMBERED)),
            sessions: RefCell::new(Recent::new(REMEMBERED)),
            requests: RefCell::new(Recent::new(REMEMBERED)),
            owners: RefCell::new(Recent::new(REMEMBERED)),
        }
    }
}

impl NameCache {
    pub(crate) fn forget(&self) {
        self.tenants.borrow_mut().clear();
        self.emails.borrow_mut().clear();
        self.computers.borrow_mut().clear();
        self.sessions.borrow_mut().clear();
        self.requests.borrow_mut().clear();
        self.owners.borrow_mut().clear();
    }

    // What the directory writes, as it writes it. The directory keeps the first row for an
    // id (`ON CONFLICT DO NOTHING`), and so does the cache.

    pub(crate) fn tenant_registered(&self, id: String, name: String) {
        self.tenants.borrow_mut().insert_new(id, name);
    }

    pub(crate) fn technician_registered(&self, id: String, email: String) {
        self.emails.borrow_mut().insert_new(id, email);
    }

    pub(crate) fn computer_enrolled(&self, id: String, computer: ComputerName) {
        self.computers.borrow_mut().insert_new(id, computer);
    }

    pub(crate) fn session_checked_out(&self, id: String, facts: SessionFacts) {
        self.sessions.borrow_mut().insert_new(id, facts);
    }
}

/// Names for ids, from the directory (which already includes the event being described),
/// remembered in the writer's [`NameCache`]. Each falls back to the id itself if the
/// directory does not know it.
struct Names<'c> {
    db: &'c dyn Sql,
    cache: &'c NameCache,
}

/// The remembered value for `key`, else the one `read` finds in the database (remembered).
fn remembered<K: std::hash::Hash + Eq, V: Clone>(
    cache: &RefCell<Recent<K, V>>,
    key: K,
    read: impl FnOnce() -> latchkey_sql::Result<Option<V>>,
) -> latchkey_sql::Result<Option<V>> {
    if let Some(value) = cache.borrow_mut().get(&key) {
        return Ok(Some(value));
    }
    let found = read()?;
    if let Some(value) = &found {
        cache.borrow_mut().insert_new(key, value.clone());
    }
    Ok(found)
}

impl Names<'_> {
    fn text(&self, sql: &str, id: &str) -> latchkey_sql::Result<Option<String>> {
        self.db
            .prepare_cached(sql)?
            .query_row([id], |row| row.get(0))
            .optional()
    }

    fn tenant(&self, id: &str) -> latchkey_sql::Result<String> {
        let name = remembered(&self.cache.tenants, id.to_owned(), || {
            self.text("SELECT name FROM tenants WHERE id = ?1", id)
        })?;
        Ok(name.unwrap_or_else(|| format!("tenant {id}")))
    }

    fn email(&self, technician: &str) -> latchkey_sql::Result<String> {
        let email = remembered(&self.cache.emails, technician.to_owned(), || {
            self.text("SELECT email FROM technicians WHERE id = ?1", technician)
        })?;
        Ok(email.unwrap_or_else(|| format!("technician {technician}")))
    }

    fn computer(&self, id: ComputerId) -> latchkey_sql::Result<ComputerName> {
        let id = id.to_string();
        let found = remembered(&self.cache.computers, id.clone(), || {
            self.db
                .prepare_cached("SELECT hostname, tenant_id FROM computers WHERE id = ?1")?
                .query_row([&id], |row| {
                    Ok(ComputerName {
                        hostname: row.get(0)?,
                        tenant: row.get(1)?,
                    })
                })
                .optional()
        })?;
        Ok(found.unwrap_or(ComputerName {
            hostname: format!("computer {id}"),
            tenant: None,
        }))
    }

    fn session(&self, id: &str) -> latchkey_sql::Result<Option<SessionFacts>> {
        remembered(&self.cache.sessions, id.to_owned(), || {
            self.db
                .prepare_cached(
                    "SELECT tenant_id, technician_id, computer_id, account, login_mode
                     FROM sessions WHERE id = ?1",
                )?
                .query_row([id], |row| {
                    Ok(SessionFacts {
                        tenant: row.get(0)?,
                        technician: row.get(1)?,
                        computer: row.get(2)?,
                        account: row.get(3)?,
                        login_mode: row.get(4)?,
                    })
                })
                .optional()
        })
    }

    fn request(
        &self,
        computer: ComputerId,
        request: RequestId,
    ) -> latchkey_sql::Result<Option<RequestFacts>> {
        let computer = computer.to_string();
        remembered(
            &self.cache.requests,
            (computer.clone(), request.0 as i64),
            || {
                self.db
                    .prepare_cached(
                        "SELECT session_id, purpose, account, operation FROM audit_requests
                         WHERE computer_id = ?1 AND request_id = ?2",
                    )?
                    .query_row(params![computer, request.0 as i64], |row| {
                        Ok(RequestFacts {
                            session: row.get(0)?,
                            purpose: row.get(1)?,
                            account: row.get(2)?,
                            operation: row.get(3)?,
                        })
                    })
                    .optional()
            },
        )
    }

    /// The technician a computer's account belongs to: the session's, or the account's owner
    /// (none for the shared account).
    fn technician_of(
        &self,
        computer: ComputerId,
        session: Option<&str>,
        account: &str,
    ) -> latchkey_sql::Result<Option<String>> {
        if let Some(facts) = session.map(|s| self.session(s)).transpose()?.flatten() {
            return Ok(Some(facts.technician));
        }
        let computer = computer.to_string();
        let owner = remembered(
            &self.cache.owners,
            (computer.clone(), account.to_owned()),
            || {
                self.db
                    .prepare_cached(
                        "SELECT technician_id FROM audit_account_owners
                         WHERE computer_id = ?1 AND account = ?2",
                    )?
                    .query_row(params![computer, account], |row| {
                        row.get::<_, Option<String>>(0)
                    })
                    .optional()
            },
        )?;
        Ok(owner.flatten())
    }

    /// The human-readable actor of an event that names it.
    fn actor(&self, actor: &Actor) -> latchkey_sql::Result<String> {
        Ok(match actor {
            Actor::User { email } => email.to_string(),
            Actor::Agent { computer_id } => agent(&self.computer(*computer_id)?.hostname),
            Actor::System => SYSTEM.to_owned(),
        })
    }

    /// The human-readable actor of an event that does not name it, from its metadata
    /// (`user:<e-mail>`, `agent:<computer id>`, `system`).
    fn recorded_actor(&self, recorded: &RecordedEvent) -> latchkey_sql::Result<String> {
        let raw = recorded.metadata.actor.as_str();
        if let Some(user) = raw.strip_prefix("user:") {
            return Ok(user.to_owned());
        }
        if let Some(computer) = raw
            .strip_prefix("agent:")
            .and_then(|id| Uuid::parse_str(id).ok())
        {
            return Ok(agent(&self.computer(ComputerId(computer))?.hostname));
        }
        Ok(if raw == "system" {
            SYSTEM.to_owned()
        } else {
            raw.to_owned()
        })
    }
}

const SYSTEM: &str = "latchkey";

fn agent(hostname: &str) -> String {
    format!("agent of {hostname}")
}

/// Whether `actor` is the technician with e-mail `email` acting for themselves.
fn is_self(actor: &Actor, email: &str) -> bool {
    matches!(actor, Actor::User { email: e } if e.as_str() == email)
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// `a`, `a and b`, `a, b and c`.
fn listing(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
    }
}

fn policy_text(policy: &JitPolicy) -> String {
    let password = policy.password();
    let alphabet = password.alphabet();
    let classes: Vec<&str> = [
        (alphabet.lowercase, "lowercase"),
        (alphabet.uppercase, "uppercase"),
        (alphabet.digits, "digits"),
        (alphabet.symbols, "symbols"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let check_in = match policy.on_check_in() {
        CheckInAction::RemoveFromGroup => "remove the account from the admin group",
        CheckInAction::DeleteAccount => "delete the account",
    };
    format!(
        "provisioning {}, admin group {}, at check-in {check_in}, account reuse {}, \
         sessions of at most {} minutes, {}-character passwords of {}, password rotation at \
         check-in {}, named accounts {}",
        on_off(policy.provisioning_enabled()),
        policy
            .admin_group()
            .map_or("each computer's own".to_owned(), |g| g.to_string()),
        on_off(policy.reuse_existing_account()),
        policy.max_session().as_minutes(),
        password.length(),
        listing(&classes),
        on_off(policy.rotate_on_check_in()),
        policy.named_account_template().as_str(),
    )
}

fn os_name(os: OsKind) -> &'static str {
    match os {
        OsKind::Windows => "Windows",
        OsKind::Linux => "Linux",
        OsKind::Macos => "macOS",
    }
}

fn purpose_name(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Grant => "grant",
        Purpose::Revoke => "revoke",
        Purpose::Cleanup => "cleanup",
    }
}

/// An operation as the object of "was asked to …" / "could not …".
fn operation_text(operation: &Operation) -> String {
    match operation {
        Operation::EnsureAccount { account } => format!("make sure account {account} exists"),
        Operation::RotatePassword { account, version } => {
            format!("rotate the password of {account} to version {version}")
        }
        Operation::AddToGroup { account, group } => format!("add {account} to {group}"),
        Operation::RemoveFromGroup { account, group } => format!("remove {account} from {group}"),
        Operation::DeleteAccount { account } => format!("delete account {account}"),
    }
}

fn tenant_line(
    names: &Names<'_>,
    recorded: &RecordedEvent,
    event: &TenantEvent,
) -> latchkey_sql::Result<Line> {
    Ok(match event {
        TenantEvent::TenantRegistered(e) => {
            let actor = names.actor(&e.by)?;
            let sentence = format!(
                "{actor} registered the customer tenant {} with technician login mode {}; \
                 JIT policy: {}",
                e.name,
                e.login_mode,
                policy_text(&e.policy)
            );
            Line::new(e.at, actor, sentence).tenant(e.tenant_id)
        }
        TenantEvent::SharedAccountAssigned(e) => {
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!(
                "{tenant} was given the shared technician account {}",
                e.account
            );
            Line::new(e.at, names.recorded_actor(recorded)?, sentence)
                .tenant(e.tenant_id)
                .account(&e.account)
        }
        TenantEvent::LoginModeChanged(e) => {
            let actor = names.actor(&e.by)?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!(
                "{actor} changed the technician login mode of {tenant} from {} to {}",
                e.from, e.to
            );
            Line::new(e.at, actor, sentence).tenant(e.tenant_id)
        }
        TenantEvent::JitPolicyChanged(e) => {
            let actor = names.actor(&e.by)?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!(
                "{actor} changed the JIT policy of {tenant} to: {}",
                policy_text(&e.policy)
            );
            Line::new(e.at, actor, sentence).tenant(e.tenant_id)
        }
    })
}

fn technician_lines(names: &Names<'_>, event: &TechnicianEvent) -> latchkey_sql::Result<Vec<Line>> {
    Ok(match event {
        TechnicianEvent::TechnicianRegistered(e) => {
            let actor = names.actor(&e.by)?;
            let sentence = format!(
                "{actor} registered technician {} (username {})",
                e.email, e.username
            );
            vec![Line::new(e.at, actor, sentence).technician(e.technician_id)]
        }
        TechnicianEvent::TechnicianJoinedTenant(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!("{actor} added technician {email} to {tenant}");
            vec![Line::new(e.at, actor, sentence)
                .tenant(e.tenant_id)
                .technician(e.technician_id)]
        }
        TechnicianEvent::TechnicianLeftTenant(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!("{actor} removed technician {email} from {tenant}");
            vec![Line::new(e.at, actor, sentence)
                .tenant(e.tenant_id)
                .technician(e.technician_id)]
        }
        TechnicianEvent::TechnicianOffboarded(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            if e.tenants.is_empty() {
                let sentence = format!("{actor} offboarded technician {email}");
                return Ok(vec![
                    Line::new(e.at, actor, sentence).technician(e.technician_id)
                ]);
            }
            let mut lines = Vec::with_capacity(e.tenants.len());
            for tenant_id in &e.tenants {
                let tenant = names.tenant(&tenant_id.to_string())?;
                let sentence =
                    format!("{actor} offboarded technician {email}, removing them from {tenant}");
                lines.push(
                    Line::new(e.at, actor.clone(), sentence)
                        .tenant(tenant_id)
                        .technician(e.technician_id),
                );
            }
            lines
        }
    })
}

fn computer_line(
    names: &Names<'_>,
    recorded: &RecordedEvent,
    event: &ComputerEvent,
) -> latchkey_sql::Result<Line> {
    // Every computer event names its computer; the directory names it and its tenant.
    let (computer_id, at) = match event {
        ComputerEvent::ComputerEnrolled(e) => (e.computer_id, e.at),
        ComputerEvent::ComputerDecommissioned(e) => (e.computer_id, e.at),
        ComputerEvent::ComputerJitPolicyOverridden(e) => (e.computer_id, e.at),
        ComputerEvent::SessionAccessRequested(e) => (e.computer_id, e.at),
        ComputerEvent::ProvisioningRequested(e) => (e.computer_id, e.at),
        ComputerEvent::ProvisioningRetried(e) => (e.computer_id, e.at),
        ComputerEvent::ProvisioningSuperseded(e) => (e.computer_id, e.at),
        ComputerEvent::ProvisioningFailed(e) => (e.computer_id, e.at),
        ComputerEvent::AccountProvisioned(e) => (e.computer_id, e.at),
        ComputerEvent::PasswordRotated(e) => (e.computer_id, e.at),
        ComputerEvent::AddedToAdminGroup(e) => (e.computer_id, e.at),
        ComputerEvent::RemovedFromAdminGroup(e) => (e.computer_id, e.at),
        ComputerEvent::AccountDeleted(e) => (e.computer_id, e.at),
        ComputerEvent::SessionAccessGranted(e) => (e.computer_id, e.at),
        ComputerEvent::SessionAccessFailed(e) => (e.computer_id, e.at),
        ComputerEvent::SessionAccessReleased(e) => (e.computer_id, e.at),
        ComputerEvent::AccountRetirementStarted(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineSecretIssued(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineSecretRevoked(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineSecretDisclosed(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineLoginRecorded(e) => (e.computer_id, e.at),
        ComputerEvent::OfflineLoginLockedOut(e) => (e.computer_id, e.at),
        ComputerEvent::AdminGroupInventoried(e) => (e.computer_id, e.at),
    };
    let computer = names.computer(computer_id)?;
    let host = computer.hostname.as_str();
    let agent = agent(host);
    let recorded_actor = names.recorded_actor(recorded)?;
    let base = |actor: String, sentence: String| {
        Line::new(at, actor, sentence)
            .computer(computer_id)
            .tenant_opt(computer.tenant.clone())
    };
    let email_of = |technician: &Option<String>| -> latchkey_sql::Result<Option<String>> {
        technician.as_deref().map(|t| names.email(t)).transpose()
    };
    // A line about one account of the computer, with its session and technician if known.
    let about_account = |actor: String,
                         sentence: String,
                         session: Option<String>,
                         account: &str|
     -> latchkey_sql::Result<Line> {
        let technician = names.technician_of(computer_id, session.as_deref(), account)?;
        Ok(base(actor, sentence)
            .session_opt(session)
            .technician_opt(technician)
            .account(account))
    };
    let request = |id: RequestId| names.request(computer_id, id);

    Ok(match event {
        ComputerEvent::ComputerEnrolled(e) => {
            let actor = names.actor(&e.by)?;
            let tenant = names.tenant(&e.tenant_id.to_string())?;
            let sentence = format!(
                "{actor} enrolled the {} computer {host} in {tenant}",
                os_name(e.os)
            );
            base(actor, sentence).tenant(e.tenant_id)
        }
        ComputerEvent::ComputerDecommissioned(e) => {
            let actor = names.actor(&e.by)?;
            let sentence = format!("{actor} decommissioned the computer {host}");
            base(actor, sentence)
        }
        ComputerEvent::ComputerJitPolicyOverridden(e) => {
            let actor = names.actor(&e.by)?;
            let sentence = match &e.policy {
                Some(policy) => format!(
                    "{actor} set the JIT policy of {host} to: {}",
                    policy_text(policy)
                ),
                None => {
                    let tenant = match &computer.tenant {
                        Some(t) => names.tenant(t)?,
                        None => "its tenant".to_owned(),
                    };
                    format!(
                        "{actor} removed the JIT policy override of {host}; the JIT policy of \
                         {tenant} applies again"
                    )
                }
            };
            base(actor, sentence)
        }
        ComputerEvent::SessionAccessRequested(e) => {
            let email = names.email(&e.technician_id.to_string())?;
            let check_in = match e.on_check_in {
                CheckInAction::RemoveFromGroup => "removed from it",
                CheckInAction::DeleteAccount => "deleted",
            };
            let sentence = format!(
                "admin access for {email} was requested on {host}: account {} in {}, {check_in} \
                 at check-in",
                e.account, e.admin_group
            );
            base(recorded_actor, sentence)
                .session(e.session_id)
                .technician(e.technician_id)
                .account(&e.account)
        }
        ComputerEvent::ProvisioningRequested(e) => {
            let session = e.session_id.map(|s| s.to_string());
            let technician = session
                .as_deref()
                .map(|s| names.session(s))
                .transpose()?
                .flatten()
                .map(|s| s.technician);
            let why = match (e.purpose, email_of(&technician)?) {
                (Purpose::Grant, Some(email)) => format!("to give {email} access"),
                (Purpose::Grant, None) => "to give access".to_owned(),
                (Purpose::Revoke, Some(email)) => format!("to end the access of {email}"),
                (Purpose::Revoke, None) => "to end a session's access".to_owned(),
                (Purpose::Cleanup, _) => "to clean up".to_owned(),
            };
            let sentence = format!(
                "{agent} was asked to {}, {why} (request {})",
                operation_text(&e.operation),
                e.request_id
            );
            about_account(
                recorded_actor,
                sentence,
                session,
                e.operation.account().as_str(),
            )?
        }
        ComputerEvent::ProvisioningRetried(e) => {
            let session = request(e.request_id)?.and_then(|r| r.session);
            let sentence = format!(
                "{agent} was asked again to {} (request {}, attempt {})",
                operation_text(&e.operation),
                e.request_id,
                e.attempt
            );
            about_account(
                recorded_actor,
                sentence,
                session,
                e.operation.account().as_str(),
            )?
        }
        ComputerEvent::ProvisioningSuperseded(e) => match request(e.request_id)? {
            Some(r) => {
                let sentence = format!(
                    "{agent} no longer needs to {}: a later change made request {} unnecessary",
                    r.operation, e.request_id
                );
                about_account(recorded_actor, sentence, r.session, &r.account)?
            }
            None => {
                let sentence = format!(
                    "request {} to {agent} was made unnecessary by a later change",
                    e.request_id
                );
                base(recorded_actor, sentence)
            }
        },
        ComputerEvent::ProvisioningFailed(e) => {
            let made = request(e.request_id)?;
            let retried = made
                .as_ref()
                .is_some_and(|r| r.purpose != purpose_name(Purpose::Grant));
            let sentence = format!(
                "{agent} could not {} (request {}, attempt {}): {}{}",
                operation_text(&e.operation),
                e.request_id,
                e.attempt,
                e.reason,
                if retried { "; it will be retried" } else { "" }
            );
            about_account(
                recorded_actor,
                sentence,
                made.and_then(|r| r.session),
                e.operation.account().as_str(),
            )?
        }
        ComputerEvent::AccountProvisioned(e) => {
            let sentence = format!("{agent} verified: account {} exists", e.account);
            let session = request(e.request_id)?.and_then(|r| r.session);
            about_account(recorded_actor, sentence, session, e.account.as_str())?
        }
        ComputerEvent::PasswordRotated(e) => {
            let sentence = format!(
                "{agent} verified: the password of {} was rotated to version {}",
                e.account, e.version
            );
            let session = request(e.request_id)?.and_then(|r| r.session);
            about_account(recorded_actor, sentence, session, e.account.as_str())?
        }
        ComputerEvent::AddedToAdminGroup(e) => {
            let sentence = format!("{agent} verified: {} was added to {}", e.account, e.group);
            let session = request(e.request_id)?.and_then(|r| r.session);
            about_account(recorded_actor, sentence, session, e.account.as_str())?
        }
        ComputerEvent::RemovedFromAdminGroup(e) => {
            let sentence = format!(
                "{agent} verified: {} was removed from {}",
                e.account, e.group
            );
            let session = request(e.request_id)?.and_then(|r| r.session);
            about_account(recorded_actor, sentence, session, e.account.as_str())?
        }
        ComputerEvent::AccountDeleted(e) => {
            let sentence = format!("{agent} verified: account {} was deleted", e.account);
            let session = request(e.request_id)?.and_then(|r| r.session);
            about_account(recorded_actor, sentence, session, e.account.as_str())?
        }
        ComputerEvent::SessionAccessGranted(e) => {
            let session = e.session_id.to_string();
            let technician = names.session(&session)?.map(|s| s.technician);
            let email = email_of(&technician)?.unwrap_or_else(|| "the technician".to_owned());
            let sentence = format!(
                "admin access for {email} is in place on {host} with account {}",
                e.account
            );
            about_account(recorded_actor, sentence, Some(session), e.account.as_str())?
        }
        ComputerEvent::SessionAccessFailed(e) => {
            let session = e.session_id.to_string();
            let facts = names.session(&session)?;
            let email = match &facts {
                Some(f) => names.email(&f.technician)?,
                None => "the technician".to_owned(),
            };
            let sentence = format!(
                "admin access for {email} could not be given on {host}: {}",
                e.reason
            );
            match facts {
                Some(f) => about_account(recorded_actor, sentence, Some(session), &f.account)?,
                None => base(recorded_actor, sentence).session(session),
            }
        }
        ComputerEvent::SessionAccessReleased(e) => {
            let session = e.session_id.to_string();
            let facts = names.session(&session)?;
            let email = match &facts {
                Some(f) => names.email(&f.technician)?,
                None => "the technician".to_owned(),
            };
            let account = e
                .account
                .as_ref()
                .map(|a| a.to_string())
                .or_else(|| facts.as_ref().map(|f| f.account.clone()));
            let named = account.as_deref().unwrap_or("the account");
            let what = match e.outcome {
                ReleaseOutcome::KeptForOtherSessions => {
                    format!("{named} stays in the admin group for other open sessions")
                }
                ReleaseOutcome::RemovedFromGroup => {
                    format!("{named} is being removed from the admin group")
                }
                ReleaseOutcome::Deleted => format!("{named} is being deleted"),
                ReleaseOutcome::NothingGranted => "nothing had been granted yet".to_owned(),
            };
            let sentence = format!("{host} is releasing the admin access of {email}: {what}");
            match account {
                Some(a) => about_account(recorded_actor, sentence, Some(session), &a)?,
                None => base(recorded_actor, sentence)
                    .session(session)
                    .technician_opt(facts.map(|f| f.technician)),
            }
        }
        ComputerEvent::AccountRetirementStarted(e) => {
            let why = match &e.reason {
                RetireReason::LoginModeChanged { from } => {
                    let tenant = match &computer.tenant {
                        Some(t) => names.tenant(t)?,
                        None => "its tenant".to_owned(),
                    };
                    format!("the technician login mode of {tenant} is no longer {from}")
                }
                RetireReason::TechnicianRemoved { technician_id } => format!(
                    "technician {} no longer works for this customer",
                    names.email(&technician_id.to_string())?
                ),
                RetireReason::ComputerDecommissioned => {
                    "the computer was decommissioned".to_owned()
                }
            };
            let sentence = format!("{host} is retiring account {} because {why}", e.account);
            let line = about_account(recorded_actor, sentence, None, e.account.as_str())?;
            match e.reason {
                RetireReason::TechnicianRemoved { technician_id } => line.technician(technician_id),
                _ => line,
            }
        }
        ComputerEvent::OfflineSecretIssued(e) => {
            let whose = match e.technician_id {
                Some(t) => format!(
                    "account {} of {} on {host}",
                    e.account,
                    names.email(&t.to_string())?
                ),
                None => format!("the shared account {} on {host}", e.account),
            };
            let sentence = format!(
                "a new offline TOTP secret (generation {}) was issued for {whose}",
                e.generation
            );
            let line = about_account(recorded_actor, sentence, None, e.account.as_str())?;
            match e.technician_id {
                Some(t) => line.technician(t),
                None => line,
            }
        }
        ComputerEvent::OfflineSecretRevoked(e) => {
            let sentence = format!(
                "the offline TOTP secret (generation {}) of account {} on {host} was revoked",
                e.generation, e.account
            );
            about_account(recorded_actor, sentence, None, e.account.as_str())?
        }
        ComputerEvent::OfflineSecretDisclosed(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            let secret = format!(
                "the offline TOTP secret (generation {}) of account {} on {host}",
                e.generation, e.account
            );
            let sentence = if is_self(&e.by, &email) {
                format!("{email} was shown {secret}")
            } else {
                format!("{actor} disclosed {secret} to {email}")
            };
            about_account(actor, sentence, None, e.account.as_str())?.technician(e.technician_id)
        }
        ComputerEvent::OfflineLoginRecorded(e) => {
            let who = match e.technician_id {
                Some(t) => names.email(&t.to_string())?,
                None => "a technician".to_owned(),
            };
            let sentence = format!(
                "{who} logged in offline to {host} with account {} at {} using its offline \
                 TOTP code (generation {}), granted until {}; Latchkey rotates its password \
                 again",
                e.account,
                e.used_at.format("%Y-%m-%d %H:%M:%S UTC"),
                e.generation,
                e.until.format("%Y-%m-%d %H:%M:%S UTC"),
            );
            let line = about_account(recorded_actor, sentence, None, e.account.as_str())?;
            match e.technician_id {
                Some(t) => line.technician(t),
                None => line,
            }
        }
        ComputerEvent::OfflineLoginLockedOut(e) => {
            let whose = match e.technician_id {
                Some(t) => format!(" (of {})", names.email(&t.to_string())?),
                None => String::new(),
            };
            let sentence = format!(
                "{agent} locked offline login to account {}{whose} after {} wrong TOTP codes \
                 at {}, refusing every code for it until {}",
                e.account,
                e.failures,
                e.locked_at.format("%Y-%m-%d %H:%M:%S UTC"),
                e.locked_until.format("%Y-%m-%d %H:%M:%S UTC"),
            );
            let line = about_account(recorded_actor, sentence, None, e.account.as_str())?;
            match e.technician_id {
                Some(t) => line.technician(t),
                None => line,
            }
        }
        ComputerEvent::AdminGroupInventoried(e) => {
            let members: Vec<&str> = e.members.iter().map(String::as_str).collect();
            let sentence = format!(
                "agent of {host} reported the members of {}: {}",
                e.group,
                if members.is_empty() {
                    "none".to_owned()
                } else {
                    members.join(", ")
                }
            );
            base(recorded_actor, sentence)
        }
    })
}

fn session_line(
    names: &Names<'_>,
    recorded: &RecordedEvent,
    event: &SessionEvent,
) -> latchkey_sql::Result<Line> {
    Ok(match event {
        SessionEvent::SessionCheckedOut(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            let host = names.computer(e.computer_id)?.hostname;
            let who = if is_self(&e.by, &email) {
                email.clone()
            } else {
                format!("{actor}, for {email},")
            };
            let mut sentence = format!(
                "{who} checked out admin access to {host} with account {} until {}",
                e.account,
                e.expires_at.format("%Y-%m-%d %H:%M:%S UTC")
            );
            let details: Vec<String> = [
                e.reason.as_ref().map(|r| format!("reason: {r}")),
                e.ticket.as_ref().map(|t| format!("ticket: {t}")),
            ]
            .into_iter()
            .flatten()
            .collect();
            if !details.is_empty() {
                sentence.push_str(&format!(" ({})", details.join("; ")));
            }
            Line::new(e.at, actor, sentence)
                .tenant(e.tenant_id)
                .computer(e.computer_id)
                .technician(e.technician_id)
                .session(e.session_id)
                .account(&e.account)
        }
        SessionEvent::SessionActivated(e) => {
            let actor = names.recorded_actor(recorded)?;
            let session = e.session_id.to_string();
            match names.session(&session)? {
                Some(facts) => {
                    let email = names.email(&facts.technician)?;
                    let host = match Uuid::parse_str(&facts.computer) {
                        Ok(c) => names.computer(ComputerId(c))?.hostname,
                        Err(_) => format!("computer {}", facts.computer),
                    };
                    // The seed products' own wording for the two kinds of login.
                    let sentence = if facts.login_mode == LoginMode::Shared.as_str() {
                        format!(
                            "{email} accessed workstation {host} with account {}",
                            facts.account
                        )
                    } else {
                        format!(
                            "{email} logged into the Desktop {host} with account {}",
                            facts.account
                        )
                    };
                    facts_line(e.at, actor, sentence, &session, facts)
                }
                None => Line::new(e.at, actor, format!("session {session} became active"))
                    .session(session),
            }
        }
        SessionEvent::SessionProvisioningFailed(e) => {
            let actor = names.recorded_actor(recorded)?;
            let session = e.session_id.to_string();
            let host = names.computer(e.computer_id)?.hostname;
            match names.session(&session)? {
                Some(facts) => {
                    let email = names.email(&facts.technician)?;
                    let sentence = format!(
                        "{email} could not get admin access to {host} with account {}: {}",
                        facts.account, e.reason
                    );
                    facts_line(e.at, actor, sentence, &session, facts)
                }
                None => {
                    let sentence = format!(
                        "session {session} could not get admin access to {host}: {}",
                        e.reason
                    );
                    Line::new(e.at, actor, sentence)
                        .session(session)
                        .computer(e.computer_id)
                }
            }
        }
        SessionEvent::SessionCheckedIn(e) => {
            let actor = names.actor(&e.by)?;
            let session = e.session_id.to_string();
            let host = names.computer(e.computer_id)?.hostname;
            match names.session(&session)? {
                Some(facts) => {
                    let email = names.email(&facts.technician)?;
                    let on = format!("on {host} with account {}", facts.account);
                    let sentence = match e.reason {
                        CheckInReason::Manual if is_self(&e.by, &email) => {
                            format!("{email} checked in their session {on}")
                        }
                        CheckInReason::Manual => {
                            format!("{actor} checked in the session of {email} {on}")
                        }
                        CheckInReason::Expired => format!(
                            "the session of {email} {on} reached its maximum length and was \
                             checked in"
                        ),
                        CheckInReason::Revoked => {
                            format!("{actor} revoked the session of {email} {on}")
                        }
                    };
                    facts_line(e.at, actor, sentence, &session, facts)
                }
                None => {
                    let sentence = format!("{actor} checked in session {session} on {host}");
                    Line::new(e.at, actor, sentence)
                        .session(session)
                        .computer(e.computer_id)
                }
            }
        }
        SessionEvent::CredentialRevealed(e) => {
            let actor = names.actor(&e.by)?;
            let email = names.email(&e.technician_id.to_string())?;
            let host = names.computer(e.computer_id)?.hostname;
            let sentence = if is_self(&e.by, &email) {
                format!("{email} was shown the password of {} on {host}", e.account)
            } else {
                format!(
                    "{actor} was shown the password of {} on {host}, in the session of {email}",
                    e.account
                )
            };
            let session = e.session_id.to_string();
            let tenant = names.session(&session)?.map(|f| f.tenant);
            Line::new(e.at, actor, sentence)
                .tenant_opt(tenant)
                .computer(e.computer_id)
                .technician(e.technician_id)
                .session(session)
                .account(&e.account)
        }
    })
}

/// A line about a session, with what the directory knows of it.
fn facts_line(
    at: Timestamp,
    actor: String,
    sentence: String,
    session: &str,
    facts: SessionFacts,
) -> Line {
    let mut line = Line::new(at, actor, sentence)
        .tenant(facts.tenant)
        .technician(facts.technician)
        .session(session)
        .account(facts.account);
    line.computer = Some(facts.computer);
    line
}
