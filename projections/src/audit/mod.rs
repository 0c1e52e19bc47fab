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
//!
//! Where things are: this file holds the tables, the dispatch of each event to the sentences
//! of its aggregate and the storing of the lines; [`query`] reads them back a page at a time.
//! The sentences themselves are in one file per aggregate ([`tenant`], [`technician`],
//! [`computer`], [`session`]), worded with the helpers of [`text`] and the names that
//! [`names`] looks up.

mod computer;
mod names;
mod query;
mod session;
mod technician;
mod tenant;
mod text;

pub(crate) use names::{ComputerName, NameCache, SessionFacts};
pub use query::{AuditCursor, AuditEntry, AuditFilter, AuditPage};

use latchkey_domain::ids::{ComputerId, TechnicianId};
use latchkey_domain::session::SessionEvent;
use latchkey_domain::{AnyEvent, Timestamp};
use latchkey_sql::{params, Dialect, Sql, SqlError};
use latchkey_store::RecordedEvent;
use names::Names;
use serde::Serialize;

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

/// Adds the lines of one event to `rows`, first remembering what later events need and will
/// not repeat (a provisioning request, an account's owner). The directory already includes
/// the event, so the sentences can name what it introduces.
pub(crate) fn apply(
    tx: &dyn Sql,
    cache: &NameCache,
    rows: &mut Rows,
    recorded: &RecordedEvent,
    event: &AnyEvent,
) -> latchkey_sql::Result<()> {
    let names = Names::new(tx, cache);
    let lines = match event {
        AnyEvent::Tenant(e) => vec![tenant::line(&names, recorded, e)?],
        AnyEvent::Technician(e) => technician::lines(&names, e)?,
        // The registration that follows says it in the technician's own words.
        AnyEvent::TechnicianNames(_) => vec![],
        AnyEvent::Computer(e) => {
            names::remember(tx, cache, e)?;
            vec![computer::line(&names, recorded, e)?]
        }
        AnyEvent::Session(e) => {
            if let SessionEvent::SessionCheckedOut(e) = e {
                names::remember_owner(tx, cache, e.computer_id, &e.account, &e.account_owner)?;
            }
            vec![session::line(&names, recorded, e)?]
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

/// A time as the trail stores it: the directory's format, which sorts as text.
fn time(at: &Timestamp) -> String {
    crate::directory::time(at)
}

/// One audit line before it is stored: its time, actor and sentence, and the ids it is
/// filed under (the filters of [`AuditFilter`]), set by the builder methods below.
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
    /// Files the line under technician `id` if the event names one; otherwise it keeps the
    /// one it has (the account's owner, if known).
    fn technician_if_named(self, id: Option<TechnicianId>) -> Self {
        match id {
            Some(id) => self.technician(id),
            None => self,
        }
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
