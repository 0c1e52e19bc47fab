//! The accounts read model: every Latchkey-managed account on every computer as its agent last
//! verified it, the history of admin-group memberships (standing privilege, "who was an admin
//! here at time T") and each agent's provisioning requests. It is a fold of the log and
//! nothing else: no clock, no randomness, so a replay rebuilds the very same rows.

use crate::directory::time;
use crate::{ProjectionError, Queries};
use chrono::{DateTime, Utc};
use latchkey_domain::computer::{
    AccountObservation, AccountOwner, ComputerEvent, Operation, Purpose,
};
use latchkey_domain::ids::{ComputerId, RequestId, SessionId, TechnicianId, TenantId};
use latchkey_domain::names::{AccountName, FailureReason, GroupName, Hostname};
use latchkey_domain::policy::LoginMode;
use latchkey_domain::{AnyEvent, Timestamp};
use latchkey_sql::{params, Dialect, Row, Sql, SqlError};
use latchkey_store::RecordedEvent;
pub use latchkey_wire::{
    AdminAsOf, AdminDrift, FailedRequest, ManagedAccountRow, MembershipRemovalRequest,
    OfflineLoginRef, ProvisioningStatus, StandingPrivilege,
};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// `managed_accounts`: one row per (computer, account) Latchkey ever asked for; the
/// observation columns hold what the agent last verified, not what Latchkey wants.
/// `admin_memberships`: one row per interval of an account being in an admin group, opened
/// by a verified join and closed by a verified removal, deletion or an observation that the
/// account is no longer in the group (`left_*` null while open). Positions are the log's.
/// `offline_logins`: one row per login the agent granted offline with a TOTP code, from
/// `used_at` until the agent takes it back at `until`; `ended_at` is set when an observation
/// (a verified report on the account, or the admin-group inventory) shows the account out of
/// the group after the login. `admin_group` is the agent's, or for uploads that did not say
/// it, the group of the agent's inventory.
/// `provisioning_requests`: `status` is pending | failed | done | superseded; `open` mirrors
/// the computer aggregate's open requests (a failed grant is closed, a failed revocation or
/// clean-up stays open until it is retried, superseded or done).
pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS admin_inventory (
    computer_id TEXT NOT NULL, admin_group TEXT NOT NULL, member TEXT NOT NULL,
    reported_at TEXT NOT NULL, PRIMARY KEY (computer_id, member)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS managed_accounts (
    computer_id TEXT NOT NULL, account TEXT NOT NULL, tenant_id TEXT,
    owner TEXT NOT NULL, technician_id TEXT,
    present INTEGER NOT NULL DEFAULT 0, groups TEXT NOT NULL DEFAULT '[]',
    password_version INTEGER, last_rotated_at TEXT,
    retiring INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
    offline_secret_generation INTEGER,
    PRIMARY KEY (computer_id, account)
);
CREATE TABLE IF NOT EXISTS admin_memberships (
    computer_id TEXT NOT NULL, account TEXT NOT NULL, admin_group TEXT NOT NULL,
    session_id TEXT,
    joined_at TEXT NOT NULL, joined_request INTEGER NOT NULL,
    joined_commit INTEGER NOT NULL, joined_prepare INTEGER NOT NULL,
    left_at TEXT, left_request INTEGER, left_event TEXT,
    left_commit INTEGER, left_prepare INTEGER,
    PRIMARY KEY (computer_id, account, admin_group, joined_commit, joined_prepare)
);
CREATE INDEX IF NOT EXISTS admin_memberships_by_computer
    ON admin_memberships (computer_id, account, joined_at);
CREATE INDEX IF NOT EXISTS admin_memberships_open ON admin_memberships (left_at, computer_id);
CREATE INDEX IF NOT EXISTS admin_memberships_open_by_account
    ON admin_memberships (computer_id, account, admin_group) WHERE left_at IS NULL;
CREATE TABLE IF NOT EXISTS offline_logins (
    computer_id TEXT NOT NULL, login_id TEXT NOT NULL, account TEXT NOT NULL,
    technician_id TEXT, admin_group TEXT, used_at TEXT NOT NULL, until TEXT NOT NULL,
    ended_at TEXT,
    PRIMARY KEY (computer_id, login_id)
);
CREATE INDEX IF NOT EXISTS offline_logins_open
    ON offline_logins (computer_id, account) WHERE ended_at IS NULL;
CREATE TABLE IF NOT EXISTS provisioning_requests (
    computer_id TEXT NOT NULL, request_id INTEGER NOT NULL, session_id TEXT,
    purpose TEXT NOT NULL, account TEXT NOT NULL, operation TEXT NOT NULL,
    status TEXT NOT NULL, open INTEGER NOT NULL, attempt INTEGER NOT NULL,
    reason TEXT, failed_at TEXT, requested_at TEXT NOT NULL, updated_at TEXT NOT NULL,
    PRIMARY KEY (computer_id, request_id)
);
CREATE INDEX IF NOT EXISTS provisioning_requests_by_status
    ON provisioning_requests (status, computer_id, request_id);
CREATE INDEX IF NOT EXISTS provisioning_requests_by_account
    ON provisioning_requests (computer_id, account, open);
";

/// A request the agent has to carry out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct PendingRequest {
    pub request_id: u64,
    pub attempt: u32,
    pub session_id: Option<SessionId>,
    pub purpose: Purpose,
    pub operation: Operation,
    pub requested_at: DateTime<Utc>,
}

/// The agent-verified result events, seen alike.
enum Change<'a> {
    Provisioned,
    Rotated,
    Added(&'a GroupName),
    Removed(&'a GroupName),
    /// Post-session actions: the account's logons ended, its sudo credentials cleared.
    LogonsEnded,
    Deleted,
}

struct Verified<'a> {
    computer_id: ComputerId,
    request_id: RequestId,
    account: &'a AccountName,
    verified: &'a AccountObservation,
    at: &'a Timestamp,
    change: Change<'a>,
}

pub(crate) fn apply(
    tx: &dyn Sql,
    recorded: &RecordedEvent,
    event: &AnyEvent,
) -> latchkey_sql::Result<()> {
    use ComputerEvent as E;
    let AnyEvent::Computer(event) = event else {
        return Ok(());
    };
    macro_rules! verified {
        ($e:expr, $change:expr) => {
            verified_result(
                tx,
                recorded,
                Verified {
                    computer_id: $e.computer_id,
                    request_id: $e.request_id,
                    account: &$e.account,
                    verified: &$e.verified,
                    at: &$e.at,
                    change: $change,
                },
            )?
        };
    }
    match event {
        E::SessionAccessRequested(e) => {
            // The aggregate keeps an account's first owner; a new session un-retires it.
            crate::exec_later(tx,
                "INSERT INTO managed_accounts (computer_id, account, tenant_id, owner, technician_id)
                 VALUES (?1, ?2, (SELECT tenant_id FROM computers WHERE id = ?1), ?3, ?4)
                 ON CONFLICT (computer_id, account) DO UPDATE SET retiring = 0",
                params![
                    e.computer_id.to_string(),
                    e.account.as_str(),
                    e.owner.login_mode().as_str(),
                    e.owner.technician().map(|t| t.to_string()),
                ],
            )?;
        }
        E::ProvisioningRequested(e) => {
            crate::exec_later(
                tx,
                "INSERT INTO provisioning_requests
                     (computer_id, request_id, session_id, purpose, account, operation, status,
                      open, attempt, requested_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 1, 1, ?7, ?7)
                 ON CONFLICT (computer_id, request_id) DO NOTHING",
                params![
                    e.computer_id.to_string(),
                    e.request_id.0 as i64,
                    e.session_id.map(|s| s.to_string()),
                    purpose_text(e.purpose),
                    e.operation.account().as_str(),
                    operation_json(&e.operation),
                    time(&e.at),
                ],
            )?;
        }
        E::ProvisioningRetried(e) => {
            crate::exec_later(
                tx,
                "UPDATE provisioning_requests SET status = 'pending', attempt = ?3, updated_at = ?4
                 WHERE computer_id = ?1 AND request_id = ?2 AND open = 1",
                params![
                    e.computer_id.to_string(),
                    e.request_id.0 as i64,
                    e.attempt,
                    time(&e.at),
                ],
            )?;
        }
        E::ProvisioningSuperseded(e) => {
            crate::exec_later(
                tx,
                "UPDATE provisioning_requests SET status = 'superseded', open = 0, updated_at = ?3
                 WHERE computer_id = ?1 AND request_id = ?2 AND open = 1",
                params![
                    e.computer_id.to_string(),
                    e.request_id.0 as i64,
                    time(&e.at)
                ],
            )?;
        }
        E::ProvisioningFailed(e) => {
            // A grant is never retried (its session fails instead), so it closes here.
            crate::exec_later(
                tx,
                "UPDATE provisioning_requests
                 SET status = 'failed', open = CASE WHEN purpose = 'grant' THEN 0 ELSE 1 END,
                     attempt = ?3, reason = ?4, failed_at = ?5, updated_at = ?5
                 WHERE computer_id = ?1 AND request_id = ?2 AND open = 1",
                params![
                    e.computer_id.to_string(),
                    e.request_id.0 as i64,
                    e.attempt,
                    e.reason.as_str(),
                    time(&e.at),
                ],
            )?;
        }
        E::AccountProvisioned(e) => verified!(e, Change::Provisioned),
        E::PasswordRotated(e) => verified!(e, Change::Rotated),
        E::AddedToAdminGroup(e) => verified!(e, Change::Added(&e.group)),
        E::RemovedFromAdminGroup(e) => verified!(e, Change::Removed(&e.group)),
        E::PostSessionActionsTaken(e) => verified!(e, Change::LogonsEnded),
        E::AccountDeleted(e) => verified!(e, Change::Deleted),
        E::AccountRetirementStarted(e) => {
            crate::exec_later(
                tx,
                "UPDATE managed_accounts SET retiring = 1 WHERE computer_id = ?1 AND account = ?2",
                params![e.computer_id.to_string(), e.account.as_str()],
            )?;
        }
        E::OfflineSecretIssued(e) => {
            crate::exec_later(
                tx,
                "UPDATE managed_accounts SET offline_secret_generation = ?3
                 WHERE computer_id = ?1 AND account = ?2",
                params![e.computer_id.to_string(), e.account.as_str(), e.generation],
            )?;
        }
        E::OfflineSecretRevoked(e) => {
            crate::exec_later(
                tx,
                "UPDATE managed_accounts SET offline_secret_generation = NULL
                 WHERE computer_id = ?1 AND account = ?2",
                params![e.computer_id.to_string(), e.account.as_str()],
            )?;
        }
        E::ComputerEnrolled(_)
        | E::ComputerDecommissioned(_)
        | E::ComputerJitPolicyOverridden(_)
        | E::SessionAccessGranted(_)
        | E::SessionAccessFailed(_)
        | E::SessionAccessReleased(_)
        | E::OfflineSecretDisclosed(_)
        | E::OfflineLoginLockedOut(_) => {}
        E::OfflineLoginEnded(e) => {
            // Ended before the end the agent gave it: it explains the membership no longer.
            crate::exec_later(
                tx,
                "UPDATE offline_logins SET until = ?3
                 WHERE computer_id = ?1 AND login_id = ?2 AND until > ?3",
                params![
                    e.computer_id.to_string(),
                    e.login_id.to_string(),
                    time(&e.at)
                ],
            )?;
        }
        E::OfflineLoginRecorded(e) => {
            let computer = e.computer_id.to_string();
            crate::exec(
                tx,
                "INSERT INTO offline_logins
                     (computer_id, login_id, account, technician_id, admin_group, used_at, until)
                 VALUES (?1, ?2, ?3, ?4,
                         COALESCE(CAST(?5 AS TEXT),
                                  (SELECT MIN(admin_group) FROM admin_inventory
                                   WHERE computer_id = ?1)),
                         ?6, ?7)
                 ON CONFLICT (computer_id, login_id) DO NOTHING",
                params![
                    computer,
                    e.login_id.to_string(),
                    e.account.as_str(),
                    e.technician_id.map(|t| t.to_string()),
                    e.admin_group.as_ref().map(|g| g.as_str()),
                    time(&e.used_at),
                    time(&e.until),
                ],
            )?;
            // Uploaded after its end, the login may already be over by the agent's latest
            // inventory: reported after `until` without the account.
            crate::exec(
                tx,
                "UPDATE offline_logins
                 SET ended_at = (SELECT MAX(reported_at) FROM admin_inventory
                                 WHERE computer_id = ?1)
                 WHERE computer_id = ?1 AND login_id = ?2 AND ended_at IS NULL
                   AND EXISTS (SELECT 1 FROM admin_inventory i
                               WHERE i.computer_id = ?1 AND i.reported_at >= offline_logins.until)
                   AND NOT EXISTS (SELECT 1 FROM admin_inventory i
                                   WHERE i.computer_id = ?1 AND i.member = offline_logins.account)",
                params![computer, e.login_id.to_string()],
            )?;
        }
        E::AdminGroupInventoried(e) => {
            let computer = e.computer_id.to_string();
            crate::exec_later(
                tx,
                "DELETE FROM admin_inventory WHERE computer_id = ?1",
                [&computer],
            )?;
            for member in &e.members {
                crate::exec_later(
                    tx,
                    "INSERT INTO admin_inventory (computer_id, admin_group, member, reported_at)
                     VALUES (?1, ?2, ?3, ?4)",
                    params![computer, e.group.as_str(), member, time(&e.at)],
                )?;
            }
            // The inventory is an observation of the machine: an offline login whose
            // account it no longer shows in the group has ended.
            crate::exec(
                tx,
                "UPDATE offline_logins SET admin_group = ?2
                 WHERE computer_id = ?1 AND admin_group IS NULL",
                params![computer, e.group.as_str()],
            )?;
            let open = open_offline_logins(tx, &computer, None)?;
            for (login, account, group, used_at) in open {
                let gone =
                    group.as_deref() == Some(e.group.as_str()) && !e.members.contains(&account);
                if gone && used_at <= time(&e.at) {
                    end_offline_login(tx, &computer, &login, &time(&e.at))?;
                }
            }
        }
    }
    Ok(())
}

fn verified_result(
    tx: &dyn Sql,
    recorded: &RecordedEvent,
    r: Verified<'_>,
) -> latchkey_sql::Result<()> {
    let computer = r.computer_id.to_string();
    let account = r.account.as_str();
    let request = r.request_id.0 as i64;
    let at = time(r.at);
    crate::exec_later(
        tx,
        "UPDATE provisioning_requests SET status = 'done', open = 0, updated_at = ?3
         WHERE computer_id = ?1 AND request_id = ?2 AND open = 1",
        params![computer, request, at],
    )?;
    let groups = serde_json::to_string(&r.verified.groups).expect("group names serialise");
    let rotated = matches!(r.change, Change::Rotated);
    let deleted = match r.change {
        Change::Provisioned => Some(false),
        Change::Deleted => Some(true),
        Change::Rotated | Change::Added(_) | Change::Removed(_) | Change::LogonsEnded => None,
    };
    crate::exec_later(
        tx,
        "UPDATE managed_accounts
         SET present = ?3, groups = ?4, password_version = ?5,
             last_rotated_at = CASE WHEN ?6 THEN ?7 ELSE last_rotated_at END,
             deleted = COALESCE(?8, deleted)
         WHERE computer_id = ?1 AND account = ?2",
        params![
            computer,
            account,
            r.verified.present,
            groups,
            r.verified.password_version,
            rotated,
            at,
            deleted,
        ],
    )?;
    if let Change::Added(group) = r.change {
        crate::exec_later(
            tx,
            "INSERT INTO admin_memberships
                 (computer_id, account, admin_group, session_id, joined_at, joined_request,
                  joined_commit, joined_prepare)
             SELECT CAST(?1 AS TEXT), CAST(?2 AS TEXT), CAST(?3 AS TEXT),
                    (SELECT session_id FROM provisioning_requests
                     WHERE computer_id = ?1 AND request_id = ?5),
                    CAST(?4 AS TEXT), CAST(?5 AS BIGINT), CAST(?6 AS BIGINT), CAST(?7 AS BIGINT)
             WHERE NOT EXISTS (SELECT 1 FROM admin_memberships
                               WHERE computer_id = ?1 AND account = ?2 AND admin_group = ?3
                                 AND left_at IS NULL)",
            params![
                computer,
                account,
                group.as_str(),
                at,
                request,
                recorded.position.commit as i64,
                recorded.position.prepare as i64,
            ],
        )?;
    }
    // Every verified observation is the truth about the machine: a membership it no longer
    // shows has ended, whichever request revealed it. One statement, which the caller need
    // not wait for: the groups the account is still verified in are passed as a JSON list.
    let still_in: Vec<&str> = if r.verified.present && !matches!(r.change, Change::Deleted) {
        r.verified
            .groups
            .iter()
            .map(|g| g.as_str())
            .filter(|g| !matches!(r.change, Change::Removed(removed) if removed.as_str() == *g))
            .collect()
    } else {
        Vec::new()
    };
    let still_in = serde_json::to_string(&still_in).expect("group names serialise");
    // The groups of that list, from parameter `n`.
    let groups = |n: usize| match tx.dialect() {
        Dialect::Sqlite => format!("SELECT value FROM json_each(?{n})"),
        Dialect::Postgres => {
            format!("SELECT jsonb_array_elements_text(CAST(CAST(?{n} AS TEXT) AS jsonb))")
        }
    };
    // An offline login ends with the first verified observation at or after its use that
    // shows the account out of the login's group (or, for a login that names none, gone).
    crate::exec_later(
        tx,
        &format!(
            "UPDATE offline_logins SET ended_at = ?3
             WHERE computer_id = ?1 AND account = ?2 AND ended_at IS NULL AND used_at <= ?3
               AND CASE WHEN admin_group IS NULL THEN CAST(?4 AS BIGINT) <> 0
                        ELSE admin_group NOT IN ({}) END",
            groups(5)
        ),
        params![
            computer,
            account,
            at,
            !r.verified.present || matches!(r.change, Change::Deleted),
            still_in,
        ],
    )?;
    crate::exec_later(
        tx,
        &format!(
            "UPDATE admin_memberships
             SET left_at = ?3, left_request = ?4, left_event = ?5, left_commit = ?6,
                 left_prepare = ?7
             WHERE computer_id = ?1 AND account = ?2 AND left_at IS NULL
               AND admin_group NOT IN ({})",
            groups(8)
        ),
        params![
            computer,
            account,
            at,
            request,
            recorded.event_type,
            recorded.position.commit as i64,
            recorded.position.prepare as i64,
            still_in,
        ],
    )?;
    Ok(())
}

/// An offline login not yet seen to have ended: (login id, account, admin group, used at).
type OpenOfflineLogin = (String, String, Option<String>, String);

/// The offline logins on a computer (for one account, or all) not yet seen to have ended.
fn open_offline_logins(
    tx: &dyn Sql,
    computer: &str,
    account: Option<&str>,
) -> latchkey_sql::Result<Vec<OpenOfflineLogin>> {
    let mut statement = tx.prepare_cached(
        "SELECT login_id, account, admin_group, used_at FROM offline_logins
         WHERE computer_id = ?1 AND ended_at IS NULL
           AND (CAST(?2 AS TEXT) IS NULL OR account = ?2)",
    )?;
    let rows = statement.query_map(params![computer, account], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?))
    })?;
    rows.collect()
}

fn end_offline_login(
    tx: &dyn Sql,
    computer: &str,
    login: &str,
    at: &str,
) -> latchkey_sql::Result<()> {
    crate::exec(
        tx,
        "UPDATE offline_logins SET ended_at = ?3
         WHERE computer_id = ?1 AND login_id = ?2 AND ended_at IS NULL",
        params![computer, login, at],
    )?;
    Ok(())
}

fn purpose_text(purpose: Purpose) -> &'static str {
    match purpose {
        Purpose::Grant => "grant",
        Purpose::Revoke => "revoke",
        Purpose::Cleanup => "cleanup",
    }
}

fn parse_purpose(text: String) -> Result<Purpose, String> {
    [Purpose::Grant, Purpose::Revoke, Purpose::Cleanup]
        .into_iter()
        .find(|p| purpose_text(*p) == text)
        .ok_or_else(|| format!("unknown purpose '{text}'"))
}

fn operation_json(operation: &Operation) -> String {
    serde_json::to_string(operation).expect("an operation serialises")
}

/// A column this module wrote from a domain value that no longer parses: the file was
/// tampered with or written by another version. Reported, never guessed at.
/// An [`OfflineLoginRef`] from columns `at`.. (login id, technician id, used at, until).
fn offline_login_at(row: &Row, at: usize) -> latchkey_sql::Result<OfflineLoginRef> {
    Ok(OfflineLoginRef {
        login_id: parsed(row, at, uuid)?,
        technician_id: parsed_opt(row, at + 1, uuid)?.map(TechnicianId),
        used_at: parsed(row, at + 2, instant)?,
        until: parsed(row, at + 3, instant)?,
    })
}

fn bad_column(column: usize, error: impl std::fmt::Display) -> SqlError {
    SqlError::column(column, error)
}

fn parsed<T, E: std::fmt::Display>(
    row: &Row,
    column: usize,
    parse: impl FnOnce(String) -> Result<T, E>,
) -> latchkey_sql::Result<T> {
    let text: String = row.get(column)?;
    parse(text).map_err(|e| bad_column(column, e))
}

fn parsed_opt<T, E: std::fmt::Display>(
    row: &Row,
    column: usize,
    parse: impl FnOnce(String) -> Result<T, E>,
) -> latchkey_sql::Result<Option<T>> {
    let text: Option<String> = row.get(column)?;
    text.map(parse)
        .transpose()
        .map_err(|e| bad_column(column, e))
}

fn uuid(text: String) -> Result<Uuid, uuid::Error> {
    Uuid::parse_str(&text)
}

fn instant(text: String) -> Result<DateTime<Utc>, chrono::ParseError> {
    DateTime::parse_from_rfc3339(&text).map(|t| t.with_timezone(&Utc))
}

fn operation(text: String) -> Result<Operation, serde_json::Error> {
    serde_json::from_str(&text)
}

fn u64_at(row: &Row, column: usize) -> latchkey_sql::Result<u64> {
    let value: i64 = row.get(column)?;
    u64::try_from(value).map_err(|e| bad_column(column, e))
}

fn owner_at(row: &Row, kind: usize, technician: usize) -> latchkey_sql::Result<AccountOwner> {
    let mode = parsed(row, kind, |t| t.parse::<LoginMode>())?;
    let technician_id = parsed_opt(row, technician, uuid)?.map(TechnicianId);
    match (mode, technician_id) {
        (LoginMode::Shared, _) => Ok(AccountOwner::Shared),
        (LoginMode::Named, Some(technician_id)) => Ok(AccountOwner::Named { technician_id }),
        (LoginMode::Ephemeral, Some(technician_id)) => {
            Ok(AccountOwner::Ephemeral { technician_id })
        }
        (mode, None) => Err(bad_column(
            technician,
            format!("a {mode} account needs a technician"),
        )),
    }
}

impl Queries<'_> {
    /// Every managed account on the tenant's computers, with the open sessions using it,
    /// ordered by hostname then account. Deleted accounts are included (`deleted`).
    pub fn managed_accounts(
        &self,
        tenant: TenantId,
    ) -> Result<Vec<ManagedAccountRow>, ProjectionError> {
        let tenant = tenant.to_string();
        let mut sessions: BTreeMap<(String, String), Vec<SessionId>> = BTreeMap::new();
        {
            let mut statement = self.conn().prepare_cached(
                "SELECT s.computer_id, s.account, s.id
                 FROM sessions s JOIN computers c ON c.id = s.computer_id
                 WHERE c.tenant_id = ?1 AND s.open = 1
                 ORDER BY s.id",
            )?;
            let rows = statement.query_map([&tenant], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    SessionId(parsed(row, 2, uuid)?),
                ))
            })?;
            for row in rows {
                let (computer, account, session) = row?;
                sessions
                    .entry((computer, account))
                    .or_default()
                    .push(session);
            }
        }
        let mut statement = self.conn().prepare_cached(
            "SELECT a.computer_id, c.hostname, c.tenant_id, a.account, a.owner, a.technician_id,
                    a.present, a.groups, a.password_version, a.last_rotated_at, a.retiring,
                    a.deleted, a.offline_secret_generation
             FROM managed_accounts a JOIN computers c ON c.id = a.computer_id
             WHERE c.tenant_id = ?1
             ORDER BY c.hostname, a.computer_id, a.account",
        )?;
        let rows = statement.query_map([&tenant], |row| {
            let key = (row.get::<_, String>(0)?, row.get::<_, String>(3)?);
            Ok(ManagedAccountRow {
                computer_id: ComputerId(parsed(row, 0, uuid)?),
                hostname: parsed(row, 1, Hostname::parse)?,
                tenant_id: TenantId(parsed(row, 2, uuid)?),
                account: parsed(row, 3, AccountName::parse)?,
                owner: owner_at(row, 4, 5)?,
                present: row.get(6)?,
                groups: parsed(row, 7, |t| serde_json::from_str(&t))?,
                password_version: row.get(8)?,
                last_rotated_at: parsed_opt(row, 9, instant)?,
                retiring: row.get(10)?,
                deleted: row.get(11)?,
                offline_secret_generation: row.get(12)?,
                open_sessions: sessions.get(&key).cloned().unwrap_or_default(),
            })
        })?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }

    /// Admin-group memberships in force that no open session on their computer uses: the
    /// list DESIGN.md §4 wants empty. A membership lingering after its last session closed
    /// (removal pending or stuck) is listed until the agent verifies it gone. An offline
    /// login explains its account's membership until its end time (`now` decides: the
    /// read models have no clock); past it, until an observation shows the account out of
    /// the group, it is listed with the offline login named.
    pub fn standing_privilege(
        &self,
        tenant: Option<TenantId>,
        now: DateTime<Utc>,
    ) -> Result<Vec<StandingPrivilege>, ProjectionError> {
        // The operation column holds JSON; each database has its own way into it.
        let (op, group) = match self.dialect() {
            Dialect::Sqlite => (
                "json_extract(q.operation, '$.op')",
                "json_extract(q.operation, '$.group')",
            ),
            Dialect::Postgres => (
                "(CAST(q.operation AS jsonb) ->> 'op')",
                "(CAST(q.operation AS jsonb) ->> 'group')",
            ),
        };
        let sql = format!(
            "SELECT m.computer_id, c.tenant_id, c.hostname, m.account, m.admin_group,
                    m.joined_at, m.session_id,
                    (SELECT MAX(s.closed_at) FROM sessions s
                     WHERE s.computer_id = m.computer_id AND s.account = m.account),
                    r.request_id, r.operation, r.status, r.attempt
             FROM admin_memberships m
             JOIN computers c ON c.id = m.computer_id
             LEFT JOIN provisioning_requests r
               ON r.computer_id = m.computer_id AND r.account = m.account
              AND r.request_id = (
                  SELECT MIN(q.request_id) FROM provisioning_requests q
                  WHERE q.computer_id = m.computer_id AND q.account = m.account AND q.open = 1
                    AND ({op} = 'delete_account'
                         OR ({op} = 'remove_from_group' AND {group} = m.admin_group)))
             WHERE m.left_at IS NULL
               AND (CAST(?1 AS TEXT) IS NULL OR c.tenant_id = ?1)
               AND NOT EXISTS (SELECT 1 FROM sessions s
                               WHERE s.computer_id = m.computer_id AND s.account = m.account
                                 AND s.open = 1)
               AND NOT EXISTS (SELECT 1 FROM offline_logins o
                               WHERE o.computer_id = m.computer_id AND o.account = m.account
                                 AND o.ended_at IS NULL AND o.until > ?2)
             ORDER BY c.tenant_id, c.hostname, m.computer_id, m.account, m.admin_group"
        );
        let tenant = tenant.map(|t| t.to_string());
        let now = time(&now);
        let mut statement = self.conn().prepare_cached(&sql)?;
        let rows = statement.query_map(params![tenant, now], |row| {
            let removal = match row.get::<_, Option<i64>>(8)? {
                None => None,
                Some(_) => Some(MembershipRemovalRequest {
                    request_id: u64_at(row, 8)?,
                    operation: parsed(row, 9, operation)?,
                    status: parsed(row, 10, ProvisioningStatus::parse)?,
                    attempt: row.get(11)?,
                }),
            };
            Ok(StandingPrivilege {
                computer_id: ComputerId(parsed(row, 0, uuid)?),
                tenant_id: TenantId(parsed(row, 1, uuid)?),
                hostname: parsed(row, 2, Hostname::parse)?,
                account: parsed(row, 3, AccountName::parse)?,
                admin_group: parsed(row, 4, GroupName::parse)?,
                joined_at: parsed(row, 5, instant)?,
                granted_for: parsed_opt(row, 6, uuid)?.map(SessionId),
                last_session_closed_at: parsed_opt(row, 7, instant)?,
                removal,
                offline_login: None,
            })
        })?;
        let mut out: Vec<StandingPrivilege> = rows.collect::<latchkey_sql::Result<_>>()?;
        // Offline logins past their end that no observation has shown over, and that no
        // membership above or open session already accounts for.
        let mut statement = self.conn().prepare_cached(
            "SELECT o.computer_id, c.tenant_id, c.hostname, o.account, o.admin_group,
                    o.used_at, o.login_id, o.technician_id, o.until,
                    (SELECT MAX(s.closed_at) FROM sessions s
                     WHERE s.computer_id = o.computer_id AND s.account = o.account)
             FROM offline_logins o JOIN computers c ON c.id = o.computer_id
             WHERE o.ended_at IS NULL AND o.until <= ?2 AND o.admin_group IS NOT NULL
               AND (CAST(?1 AS TEXT) IS NULL OR c.tenant_id = ?1)
               AND NOT EXISTS (SELECT 1 FROM sessions s
                               WHERE s.computer_id = o.computer_id AND s.account = o.account
                                 AND s.open = 1)
               AND NOT EXISTS (SELECT 1 FROM admin_memberships m
                               WHERE m.computer_id = o.computer_id AND m.account = o.account
                                 AND m.admin_group = o.admin_group AND m.left_at IS NULL)
               AND NOT EXISTS (SELECT 1 FROM offline_logins later
                               WHERE later.computer_id = o.computer_id
                                 AND later.account = o.account AND later.ended_at IS NULL
                                 AND (later.until > ?2 OR later.used_at > o.used_at
                                      OR (later.used_at = o.used_at
                                          AND later.login_id > o.login_id)))",
        )?;
        let rows = statement.query_map(params![tenant, now], |row| {
            Ok(StandingPrivilege {
                computer_id: ComputerId(parsed(row, 0, uuid)?),
                tenant_id: TenantId(parsed(row, 1, uuid)?),
                hostname: parsed(row, 2, Hostname::parse)?,
                account: parsed(row, 3, AccountName::parse)?,
                admin_group: parsed(row, 4, GroupName::parse)?,
                joined_at: parsed(row, 5, instant)?,
                granted_for: None,
                last_session_closed_at: parsed_opt(row, 9, instant)?,
                removal: None,
                offline_login: Some(offline_login_at(row, 6)?),
            })
        })?;
        out.extend(rows.collect::<latchkey_sql::Result<Vec<_>>>()?);
        out.sort_by(|a, b| {
            let key = |p: &StandingPrivilege| {
                (
                    p.tenant_id.to_string(),
                    p.hostname.as_str().to_owned(),
                    p.computer_id.to_string(),
                    p.account.clone(),
                    p.admin_group.as_str().to_owned(),
                )
            };
            key(a).cmp(&key(b))
        });
        Ok(out)
    }

    /// Which accounts were in an admin group on `computer` at `at` (joined at or before it,
    /// not yet left), each with the sessions on that computer and account whose lifetime
    /// covers `at`. Ordered by account, group and join time.
    pub fn admins_as_of(
        &self,
        computer: ComputerId,
        at: DateTime<Utc>,
    ) -> Result<Vec<AdminAsOf>, ProjectionError> {
        let (computer, at) = (computer.to_string(), time(&at));
        let mut memberships = self.conn().prepare_cached(
            "SELECT account, admin_group, joined_at, left_at FROM admin_memberships
             WHERE computer_id = ?1 AND joined_at <= ?2 AND (left_at IS NULL OR left_at > ?2)
             ORDER BY account, admin_group, joined_at",
        )?;
        let rows = memberships.query_map(params![computer, at], |row| {
            Ok(AdminAsOf {
                account: parsed(row, 0, AccountName::parse)?,
                admin_group: parsed(row, 1, GroupName::parse)?,
                joined_at: parsed(row, 2, instant)?,
                left_at: parsed_opt(row, 3, instant)?,
                sessions: Vec::new(),
                offline_logins: Vec::new(),
            })
        })?;
        let mut out: Vec<AdminAsOf> = rows.collect::<latchkey_sql::Result<_>>()?;
        // Offline logins in force then: they explain a membership the log knows, or are one
        // of their own (the agent added the account without a request of ours).
        let mut offline = self.conn().prepare_cached(
            "SELECT account, admin_group, used_at, ended_at, login_id, technician_id, used_at,
                    until
             FROM offline_logins
             WHERE computer_id = ?1 AND admin_group IS NOT NULL AND used_at <= ?2
               AND (ended_at IS NULL OR ended_at > ?2)
             ORDER BY used_at, login_id",
        )?;
        let rows = offline.query_map(params![computer, at], |row| {
            Ok((
                parsed(row, 0, AccountName::parse)?,
                parsed(row, 1, GroupName::parse)?,
                parsed(row, 2, instant)?,
                parsed_opt(row, 3, instant)?,
                offline_login_at(row, 4)?,
            ))
        })?;
        for row in rows {
            let (account, admin_group, used_at, ended_at, login) = row?;
            match out
                .iter_mut()
                .find(|a| a.account == account && a.admin_group == admin_group)
            {
                Some(admin) => admin.offline_logins.push(login),
                None => out.push(AdminAsOf {
                    account,
                    admin_group,
                    joined_at: used_at,
                    left_at: ended_at,
                    sessions: Vec::new(),
                    offline_logins: vec![login],
                }),
            }
        }
        out.sort_by(|a, b| {
            (&a.account, a.admin_group.as_str(), a.joined_at).cmp(&(
                &b.account,
                b.admin_group.as_str(),
                b.joined_at,
            ))
        });
        let mut sessions = self.conn().prepare_cached(
            "SELECT id FROM sessions
             WHERE computer_id = ?1 AND account = ?2 AND checked_out_at <= ?3
               AND (closed_at IS NULL OR closed_at > ?3)
             ORDER BY checked_out_at, id",
        )?;
        for admin in &mut out {
            let ids = sessions.query_map(params![computer, admin.account.as_str(), at], |row| {
                Ok(SessionId(parsed(row, 0, uuid)?))
            })?;
            admin.sessions = ids.collect::<latchkey_sql::Result<_>>()?;
        }
        Ok(out)
    }

    /// The requests the computer's agent has to carry out, in request order.
    pub fn pending_requests(
        &self,
        computer: ComputerId,
    ) -> Result<Vec<PendingRequest>, ProjectionError> {
        let mut statement = self.conn().prepare_cached(
            "SELECT request_id, attempt, session_id, purpose, operation, requested_at
             FROM provisioning_requests
             WHERE computer_id = ?1 AND status = 'pending' AND open = 1
             ORDER BY request_id",
        )?;
        let rows = statement.query_map([computer.to_string()], |row| {
            Ok(PendingRequest {
                request_id: u64_at(row, 0)?,
                attempt: row.get(1)?,
                session_id: parsed_opt(row, 2, uuid)?.map(SessionId),
                purpose: parsed(row, 3, parse_purpose)?,
                operation: parsed(row, 4, operation)?,
                requested_at: parsed(row, 5, instant)?,
            })
        })?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }

    /// Revocations and clean-ups that failed and wait for a retry, oldest failure first,
    /// across all tenants or one.
    pub fn failed_requests(
        &self,
        tenant: Option<TenantId>,
    ) -> Result<Vec<FailedRequest>, ProjectionError> {
        let mut statement = self.conn().prepare_cached(
            "SELECT r.computer_id, c.tenant_id, c.hostname, r.request_id, r.session_id,
                    r.purpose, r.attempt, r.reason, r.failed_at, r.operation
             FROM provisioning_requests r JOIN computers c ON c.id = r.computer_id
             WHERE r.status = 'failed' AND r.open = 1 AND (CAST(?1 AS TEXT) IS NULL OR c.tenant_id = ?1)
             ORDER BY r.failed_at, r.computer_id, r.request_id",
        )?;
        let rows = statement.query_map([tenant.map(|t| t.to_string())], |row| {
            Ok(FailedRequest {
                computer_id: ComputerId(parsed(row, 0, uuid)?),
                tenant_id: TenantId(parsed(row, 1, uuid)?),
                hostname: parsed(row, 2, Hostname::parse)?,
                request_id: u64_at(row, 3)?,
                session_id: parsed_opt(row, 4, uuid)?.map(SessionId),
                purpose: parsed(row, 5, parse_purpose)?,
                attempt: row.get(6)?,
                reason: parsed(row, 7, FailureReason::parse)?,
                failed_at: parsed(row, 8, instant)?,
                operation: parsed(row, 9, operation)?,
            })
        })?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }
}

impl Queries<'_> {
    /// Admin-group members that no open session on the computer explains, per the agents'
    /// latest inventories. An offline login explains its account until its end time
    /// (`now`; the read models have no clock).
    pub fn admin_drift(
        &self,
        tenant: TenantId,
        now: DateTime<Utc>,
    ) -> Result<Vec<AdminDrift>, ProjectionError> {
        let mut statement = self.conn().prepare_cached(
            "SELECT i.computer_id, c.hostname, i.admin_group, i.member, i.reported_at,
                    EXISTS (SELECT 1 FROM managed_accounts m
                            WHERE m.computer_id = i.computer_id AND m.account = i.member
                              AND m.deleted = 0)
             FROM admin_inventory i JOIN computers c ON c.id = i.computer_id
             WHERE c.tenant_id = ?1
               AND NOT EXISTS (SELECT 1 FROM sessions s
                               WHERE s.computer_id = i.computer_id AND s.account = i.member
                                 AND s.open = 1)
               AND NOT EXISTS (SELECT 1 FROM offline_logins o
                               WHERE o.computer_id = i.computer_id AND o.account = i.member
                                 AND o.ended_at IS NULL AND o.until > ?2)
             ORDER BY c.hostname, i.member",
        )?;
        let rows = statement.query_map(params![tenant.to_string(), time(&now)], |row| {
            let computer: String = row.get(0)?;
            Ok(AdminDrift {
                computer_id: ComputerId(
                    Uuid::parse_str(&computer).map_err(|e| SqlError::column(0, e))?,
                ),
                hostname: row.get(1)?,
                admin_group: row.get(2)?,
                member: row.get(3)?,
                reported_at: row.get(4)?,
                managed: row.get(5)?,
            })
        })?;
        Ok(rows.collect::<latchkey_sql::Result<_>>()?)
    }
}
