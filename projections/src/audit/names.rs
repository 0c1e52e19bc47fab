//! The names and facts the sentences are built from: tenants' names, technicians' e-mail
//! addresses, computers' hostnames, sessions and provisioning requests as they were made, and
//! whose each account is. They come from the directory and the two side tables this module
//! writes, and the writer remembers them in a [`NameCache`].

use super::text::{agent, purpose_name, SYSTEM};
use crate::recent::Recent;
use latchkey_domain::computer::{AccountOwner, ComputerEvent};
use latchkey_domain::ids::{ComputerId, RequestId};
use latchkey_domain::names::AccountName;
use latchkey_domain::Actor;
use latchkey_sql::{params, OptionalExtension, Sql};
use latchkey_store::RecordedEvent;
use std::cell::RefCell;
use uuid::Uuid;

/// What later events of a computer need to know about its provisioning requests and accounts,
/// which their own payloads do not repeat.
pub(super) fn remember(
    tx: &dyn Sql,
    cache: &NameCache,
    event: &ComputerEvent,
) -> latchkey_sql::Result<()> {
    match event {
        ComputerEvent::ProvisioningRequested(e) => {
            let computer = e.computer_id.to_string();
            let facts = RequestFacts {
                session: e.session_id.map(|s| s.to_string()),
                purpose: purpose_name(e.purpose).to_owned(),
                account: e.operation.account().as_str().to_owned(),
                operation: e.operation.to_string(),
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

/// Whose `account` on `computer` is, from the latest check-out or access request that names
/// it: later results of the agent about the account name no session, only the account.
pub(super) fn remember_owner(
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
    pub(super) session: Option<String>,
    /// [`purpose_name`]'s word for it.
    pub(super) purpose: String,
    pub(super) account: String,
    /// the operation's own words (its `Display`).
    pub(super) operation: String,
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
pub(super) struct Names<'c> {
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

impl<'c> Names<'c> {
    /// Names read in `db`, the transaction the event is applied in, and kept in `cache`.
    pub(super) fn new(db: &'c dyn Sql, cache: &'c NameCache) -> Self {
        Self { db, cache }
    }

    fn text(&self, sql: &str, id: &str) -> latchkey_sql::Result<Option<String>> {
        self.db
            .prepare_cached(sql)?
            .query_row([id], |row| row.get(0))
            .optional()
    }

    pub(super) fn tenant(&self, id: &str) -> latchkey_sql::Result<String> {
        let name = remembered(&self.cache.tenants, id.to_owned(), || {
            self.text("SELECT name FROM tenants WHERE id = ?1", id)
        })?;
        Ok(name.unwrap_or_else(|| format!("tenant {id}")))
    }

    pub(super) fn email(&self, technician: &str) -> latchkey_sql::Result<String> {
        let email = remembered(&self.cache.emails, technician.to_owned(), || {
            self.text("SELECT email FROM technicians WHERE id = ?1", technician)
        })?;
        Ok(email.unwrap_or_else(|| format!("technician {technician}")))
    }

    pub(super) fn computer(&self, id: ComputerId) -> latchkey_sql::Result<ComputerName> {
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

    pub(super) fn session(&self, id: &str) -> latchkey_sql::Result<Option<SessionFacts>> {
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

    pub(super) fn request(
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
    pub(super) fn technician_of(
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
    pub(super) fn actor(&self, actor: &Actor) -> latchkey_sql::Result<String> {
        Ok(match actor {
            Actor::User { email } => email.to_string(),
            Actor::Agent { computer_id } => agent(&self.computer(*computer_id)?.hostname),
            Actor::System => SYSTEM.to_owned(),
        })
    }

    /// The human-readable actor of an event that does not name it, from its metadata
    /// (`user:<e-mail>`, `agent:<computer id>`, `system`).
    pub(super) fn recorded_actor(&self, recorded: &RecordedEvent) -> latchkey_sql::Result<String> {
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
