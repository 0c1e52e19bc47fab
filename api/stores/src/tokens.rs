//! Authentication and authorization (issue 3, item 2): bearer API tokens, the roles they carry
//! and the permission checks the HTTP layer asks of a [`Principal`].
//! A token is shown once, when issued; this module must never store, log or put in an error a
//! token (or its secret part) in clear. Only its SHA-256 is stored, compared in constant time.
//! People's tokens expire ([`TokenLifetimes`]); when a token was last used is kept to the
//! minute, written in batches ([`TokenStore::flush_last_used`]), so checking a token never
//! writes.

use latchkey_sql::{Durable, Place};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use latchkey_domain::ids::{ComputerId, TechnicianId, TenantId};
use latchkey_sql::{params, Dialect, OptionalExtension, Sql, SqlError, SqlExt, Value};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The environment variable that may supply the first MSP admin token (for scripts).
pub const ADMIN_TOKEN_VARIABLE: &str = "LATCHKEY_ADMIN_TOKEN";

/// Every token starts with this prefix (it makes leaked tokens easy to find by secret scanners).
pub const TOKEN_PREFIX: &str = "lk_";

/// Random bytes in a token's secret part: 256 bits.
const SECRET_BYTES: usize = 32;
/// Characters of the token id part: a UUID as 32 lowercase hex digits.
const ID_CHARS: usize = 32;
/// Characters of the secret part: 32 bytes as unpadded base64url.
const SECRET_CHARS: usize = 43;
/// Total length of a well-formed token: `lk_` + id + `_` + secret.
pub const TOKEN_LENGTH: usize = TOKEN_PREFIX.len() + ID_CHARS + 1 + SECRET_CHARS;

/// The public, non-secret identifier of a token (the `<token-id-hex>` part). Safe to log and
/// to put in audit events.
pub type TokenId = Uuid;

pub use latchkey_wire::{
    RoleKind, TokenInfo, TokenScopeView, LONGEST_TOKEN_LIFETIME_SECONDS, TOKEN_ID_PATTERN,
    TOKEN_PATTERN,
};

/// The roles a token can have, as the API names them.
pub const ROLE_KINDS: [&str; 5] = RoleKind::NAMES;

/// What a token's holder may do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Role {
    /// Everything, in every tenant.
    MspAdmin,
    /// Administers one tenant only.
    TenantAdmin { tenant_id: TenantId },
    /// Checks out computers in the tenants they are a member of (membership is checked by the
    /// HTTP layer against the read models, not here).
    Technician { technician_id: TechnicianId },
    /// Read-only: the audit trail and raw events of one tenant, or of all (`None`).
    Auditor { tenant_id: Option<TenantId> },
    /// An enrolled endpoint agent: its own computer only.
    Agent { computer_id: ComputerId },
}

impl Role {
    /// The one tenant, technician or computer the role is confined to (`None`: MSP admins
    /// and auditors of all tenants).
    pub fn scope_id(&self) -> Option<Uuid> {
        match self {
            Role::MspAdmin | Role::Auditor { tenant_id: None } => None,
            Role::TenantAdmin { tenant_id }
            | Role::Auditor {
                tenant_id: Some(tenant_id),
            } => Some(tenant_id.0),
            Role::Technician { technician_id } => Some(technician_id.0),
            Role::Agent { computer_id } => Some(computer_id.0),
        }
    }

    /// The role's name as in the issue and the API: `msp_admin`, `tenant_admin`, ...
    pub fn kind(&self) -> RoleKind {
        match self {
            Role::MspAdmin => RoleKind::MspAdmin,
            Role::TenantAdmin { .. } => RoleKind::TenantAdmin,
            Role::Technician { .. } => RoleKind::Technician,
            Role::Auditor { .. } => RoleKind::Auditor,
            Role::Agent { .. } => RoleKind::Agent,
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub token_id: Uuid,
    pub role: Role,
    /// Who this is, for people e.g. the admin's e-mail address; used as the audit actor.
    pub name: String,
}

impl Principal {
    pub fn is_msp_admin(&self) -> bool {
        matches!(self.role, Role::MspAdmin)
    }

    /// May read the tenant's configuration, computers and audit trail. Technicians and agents
    /// get `false`: their access is narrower (their sessions / their computer) and is checked
    /// by the HTTP layer against the read models.
    pub fn can_read_tenant(&self, tenant: TenantId) -> bool {
        match &self.role {
            Role::MspAdmin => true,
            Role::TenantAdmin { tenant_id } => *tenant_id == tenant,
            Role::Auditor { tenant_id } => tenant_id.is_none_or(|own| own == tenant),
            Role::Technician { .. } | Role::Agent { .. } => false,
        }
    }

    /// May change the tenant: its settings, technicians, enrollment tokens, computers.
    pub fn can_administer_tenant(&self, tenant: TenantId) -> bool {
        match &self.role {
            Role::MspAdmin => true,
            Role::TenantAdmin { tenant_id } => *tenant_id == tenant,
            Role::Technician { .. } | Role::Auditor { .. } | Role::Agent { .. } => false,
        }
    }

    /// Is an auditor (of any scope). Which tenants it may read is still
    /// [`Principal::can_read_tenant`].
    pub fn is_auditor(&self) -> bool {
        matches!(self.role, Role::Auditor { .. })
    }

    /// May read every tenant (MSP admin, or an auditor of all tenants): the global raw event
    /// feed and whole-log verification need this.
    pub fn can_read_all_tenants(&self) -> bool {
        matches!(
            self.role,
            Role::MspAdmin | Role::Auditor { tenant_id: None }
        )
    }

    /// May see this technician (registered, currently in `tenants`): MSP admins and
    /// all-tenant auditors everyone; tenant admins and tenant auditors the current members of
    /// their tenant; a technician themselves. Agents nobody.
    pub fn may_see_technician(
        &self,
        technician: TechnicianId,
        tenants: &std::collections::BTreeSet<TenantId>,
    ) -> bool {
        match self.role {
            Role::MspAdmin | Role::Auditor { tenant_id: None } => true,
            Role::TenantAdmin { tenant_id }
            | Role::Auditor {
                tenant_id: Some(tenant_id),
            } => tenants.contains(&tenant_id),
            Role::Technician { technician_id } => technician_id == technician,
            Role::Agent { .. } => false,
        }
    }

    /// Which of a visible technician's tenants this principal is shown: a tenant-scoped
    /// caller learns nothing about the technician's other customers.
    pub fn tenants_shown(&self, tenants: &std::collections::BTreeSet<TenantId>) -> Vec<TenantId> {
        match self.role {
            Role::MspAdmin | Role::Auditor { tenant_id: None } | Role::Technician { .. } => {
                tenants.iter().copied().collect()
            }
            Role::TenantAdmin { tenant_id }
            | Role::Auditor {
                tenant_id: Some(tenant_id),
            } => tenants
                .iter()
                .copied()
                .filter(|t| *t == tenant_id)
                .collect(),
            Role::Agent { .. } => Vec::new(),
        }
    }

    /// Adds technicians to tenants: only an MSP admin. Technicians are MSP staff; a tenant
    /// admin who could add any technician by id would reach (and learn about) other customers'
    /// staff. A tenant admin manages the technicians already in their tenant (removing them).
    pub fn adds_technicians_to_tenants(&self) -> bool {
        self.is_msp_admin()
    }

    /// Which tokens this principal may list (`None`: agents, none at all).
    pub fn token_scope(&self) -> Option<TokenScope> {
        match self.role {
            Role::MspAdmin | Role::Auditor { tenant_id: None } => Some(TokenScope::All),
            Role::TenantAdmin { tenant_id }
            | Role::Auditor {
                tenant_id: Some(tenant_id),
            } => Some(TokenScope::Tenant(tenant_id)),
            Role::Technician { technician_id } => Some(TokenScope::Technician(technician_id)),
            Role::Agent { .. } => None,
        }
    }

    /// May see this token (list it, learn it exists): its own, or one in its
    /// [`Principal::token_scope`].
    pub fn can_see_token(&self, token: &ListedToken) -> bool {
        token.token_id == self.token_id
            || match self.token_scope() {
                None => false,
                Some(TokenScope::All) => true,
                Some(TokenScope::Tenant(tenant)) => matches!(
                    token.grants,
                    Role::TenantAdmin { tenant_id } | Role::Auditor { tenant_id: Some(tenant_id) }
                        if tenant_id == tenant
                ),
                Some(TokenScope::Technician(technician)) => {
                    token.grants
                        == Role::Technician {
                            technician_id: technician,
                        }
                }
            }
    }

    /// May rotate this token: its own; an MSP admin any; a tenant admin the tokens of their
    /// tenant (the ones they may issue).
    pub fn can_rotate_token(&self, token: &ListedToken) -> bool {
        token.token_id == self.token_id
            || match self.role {
                Role::MspAdmin => true,
                Role::TenantAdmin { tenant_id: own } => matches!(
                    token.grants,
                    Role::TenantAdmin { tenant_id } | Role::Auditor { tenant_id: Some(tenant_id) }
                        if tenant_id == own
                ),
                _ => false,
            }
    }

    /// The technician this principal is, if it is one.
    pub fn technician_id(&self) -> Option<TechnicianId> {
        match self.role {
            Role::Technician { technician_id } => Some(technician_id),
            _ => None,
        }
    }

    /// The computer this principal is the agent of, if it is one.
    pub fn agent_computer_id(&self) -> Option<ComputerId> {
        match self.role {
            Role::Agent { computer_id } => Some(computer_id),
            _ => None,
        }
    }

    /// The actor recorded in event metadata: `user:<name>` for people, `agent:<computer id>`
    /// for agents.
    pub fn actor_string(&self) -> String {
        match &self.role {
            Role::Agent { computer_id } => format!("agent:{computer_id}"),
            _ => format!("user:{}", self.name),
        }
    }
}

/// Errors of tokens and the token store. No message contains a token or any part of its
/// secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "{ADMIN_TOKEN_VARIABLE} is not a valid Latchkey token: {reason} (expected \
         {TOKEN_LENGTH} characters: `lk_`, 32 lowercase hex digits, `_`, 43 base64url \
         characters; leave it unset to have one generated)"
    )]
    InvalidKnownToken { reason: &'static str },
    #[error(
        "{ADMIN_TOKEN_VARIABLE}'s token id {token_id} is already registered with a different \
         secret"
    )]
    KnownTokenConflict { token_id: TokenId },
    #[error("{ADMIN_TOKEN_VARIABLE}'s token {token_id} has been revoked; set a new one")]
    KnownTokenRevoked { token_id: TokenId },
    #[error("{ADMIN_TOKEN_VARIABLE}'s token {token_id} expired at {expired_at}; set a new one")]
    KnownTokenExpired {
        token_id: TokenId,
        expired_at: DateTime<Utc>,
    },
    #[error("token store {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: SqlError,
    },
    #[error("token store {path}: token {token_id} has an unreadable role: {source}")]
    CorruptRole {
        path: PathBuf,
        token_id: TokenId,
        #[source]
        source: serde_json::Error,
    },
}

/// Why an enrollment token was refused. The messages never contain the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnrollmentRefused {
    #[error("the enrollment token is not valid")]
    Unknown,
    #[error("the enrollment token has already been used")]
    Used,
    #[error("the enrollment token has expired")]
    Expired,
}

/// A new random token: its id and the whole token text, `lk_<id hex>_<secret base64url>`.
/// Show the text once to whoever it is for; store only [`hash_token`] of it.
pub fn generate_token() -> (TokenId, String) {
    let mut id_bytes = [0u8; 16];
    rand::rng().fill(&mut id_bytes[..]);
    let token_id = uuid::Builder::from_random_bytes(id_bytes).into_uuid();
    (token_id, token_with_new_secret(token_id))
}

/// The text of token `token_id` with a fresh random secret (a new token, or a rotation).
fn token_with_new_secret(token_id: TokenId) -> String {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rng().fill(&mut secret[..]);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    format!("{TOKEN_PREFIX}{}_{secret}", token_id.simple())
}

/// How long API tokens for people live: `default` when the issuer names no lifetime, and at
/// most `max`. Agents' credentials do not expire: they end when the computer is
/// decommissioned or enrolled again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenLifetimes {
    pub default: Duration,
    pub max: Duration,
}

/// 90 days unless configured otherwise.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(90 * 86_400);
/// 365 days unless configured otherwise.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

impl Default for TokenLifetimes {
    fn default() -> Self {
        Self {
            default: DEFAULT_TOKEN_LIFETIME,
            max: MAX_TOKEN_LIFETIME,
        }
    }
}

impl TokenLifetimes {
    /// Checked settings: both at least a second, the default no longer than the maximum, the
    /// maximum at most 100 years.
    pub fn new(default: Duration, max: Duration) -> Result<Self, String> {
        const CENTURY: Duration = Duration::from_secs(LONGEST_TOKEN_LIFETIME_SECONDS);
        if default < Duration::from_secs(1) || max < Duration::from_secs(1) {
            return Err("token lifetimes must be at least one second".into());
        }
        if max > CENTURY {
            return Err("the maximum token lifetime must be at most 100 years".into());
        }
        if default > max {
            return Err(format!(
                "the default token lifetime ({} s) is longer than the maximum ({} s)",
                default.as_secs(),
                max.as_secs()
            ));
        }
        Ok(Self { default, max })
    }

    /// The lifetime asked for as `expires_in` seconds (the default when absent), or why it
    /// is refused (a sentence about `expires_in`).
    pub fn choose(&self, expires_in: Option<u64>) -> Result<Duration, String> {
        match expires_in {
            None => Ok(self.default),
            Some(0) => Err("expires_in must be at least 1 (seconds)".into()),
            Some(seconds) if seconds > self.max.as_secs() => Err(format!(
                "expires_in must be at most {} seconds ({}), this server's maximum token \
                 lifetime (got {seconds})",
                self.max.as_secs(),
                human_duration(self.max)
            )),
            Some(seconds) => Ok(Duration::from_secs(seconds)),
        }
    }
}

/// `90 days`, `12 hours`, `30 minutes` or `45 seconds`, whichever is exact.
pub fn human_duration(d: Duration) -> String {
    let s = d.as_secs();
    let (n, unit) = if s.is_multiple_of(86_400) {
        (s / 86_400, "day")
    } else if s.is_multiple_of(3_600) {
        (s / 3_600, "hour")
    } else if s.is_multiple_of(60) {
        (s / 60, "minute")
    } else {
        (s, "second")
    };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// A token just issued or rotated: the only time its text exists. Not `Debug`-printable
/// with the text.
pub struct IssuedToken {
    pub token_id: TokenId,
    pub token: String,
    pub expires_at: Option<DateTime<Utc>>,
}

impl fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedToken")
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// What a presented bearer token turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Valid(Principal),
    /// The right secret, but the token expired at this time.
    Expired(DateTime<Utc>),
    /// Malformed, unknown, revoked or the wrong secret, all alike.
    Refused,
}

impl Authentication {
    /// The principal, if the token is valid.
    pub fn principal(self) -> Option<Principal> {
        match self {
            Authentication::Valid(principal) => Some(principal),
            _ => None,
        }
    }
}

/// When a token was last used is written at most this often per token.
pub const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// Which tokens a listing covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenScope {
    /// Every token.
    All,
    /// The tenant-admin and auditor tokens of one tenant.
    Tenant(TenantId),
    /// One technician's tokens.
    Technician(TechnicianId),
}

/// A listing of tokens: the scope, optionally one role, with or without revoked ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenQuery {
    pub scope: TokenScope,
    pub role: Option<&'static str>,
    pub include_revoked: bool,
    pub limit: u32,
}

/// A token as the store lists it ([`TokenInfo`], what the API shows) with the role it
/// grants, which the permission checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedToken {
    pub info: TokenInfo,
    pub grants: Role,
}

impl std::ops::Deref for ListedToken {
    type Target = TokenInfo;

    fn deref(&self) -> &TokenInfo {
        &self.info
    }
}

/// The scope of a token of `role`, as listed.
fn scope_view(role: &Role) -> Option<TokenScopeView> {
    match *role {
        Role::MspAdmin | Role::Auditor { tenant_id: None } => None,
        Role::TenantAdmin { tenant_id }
        | Role::Auditor {
            tenant_id: Some(tenant_id),
        } => Some(TokenScopeView::Tenant { tenant_id }),
        Role::Technician { technician_id } => Some(TokenScopeView::Technician { technician_id }),
        Role::Agent { computer_id } => Some(TokenScopeView::Computer { computer_id }),
    }
}

/// A time as stored: RFC 3339 in UTC, fixed width, so stored times compare as text.
fn stamp(time: DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

fn expiry(now: DateTime<Utc>, lifetime: Duration) -> DateTime<Utc> {
    use chrono::SubsecRound;
    // To the microsecond, as stored, so what the issuer is told is what is kept.
    chrono::Duration::from_std(lifetime)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
        .trunc_subsecs(6)
}

/// Why a text is not a well-formed token (never containing the text itself).
fn parse_token(token: &str) -> Result<TokenId, &'static str> {
    if token.len() != TOKEN_LENGTH {
        return Err(if token.len() < TOKEN_LENGTH {
            "too short"
        } else {
            "too long"
        });
    }
    let rest = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or("it does not start with `lk_`")?;
    // Length checked above and the prefix is ASCII, so these byte offsets are in bounds; the
    // `get`s also refuse to split a multi-byte character.
    let id = rest.get(..ID_CHARS).ok_or("malformed token id")?;
    if !id
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("the token id is not 32 lowercase hex digits");
    }
    if rest.as_bytes().get(ID_CHARS) != Some(&b'_') {
        return Err("no `_` after the token id");
    }
    let secret = rest.get(ID_CHARS + 1..).ok_or("malformed secret part")?;
    match base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(secret) {
        Ok(bytes) if bytes.len() == SECRET_BYTES => {}
        _ => return Err("the secret part is not 32 bytes of unpadded base64url"),
    }
    Uuid::try_parse(id).map_err(|_| "the token id is not 32 lowercase hex digits")
}

/// SHA-256 of the whole token text. Tokens carry 256 random bits, so a fast hash is enough:
/// a slow password KDF (argon2, bcrypt) only helps against guessing low-entropy secrets, and
/// nobody can enumerate 2^256 candidates.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The issued API tokens, in their own SQLite file or the shared PostgreSQL schema
/// (`latchkey_sql::durable`): id, SHA-256 of the token, role, holder, and when it was issued, last
/// used, rotated, revoked and when it expires. Thread-safe.
pub struct TokenStore {
    db: Durable,
    lifetimes: TokenLifetimes,
    /// Tokens used since their `last_used_at` was last written (or for over a minute before),
    /// with the time of their latest use; written in one transaction by
    /// [`TokenStore::flush_last_used`].
    used: Mutex<HashMap<TokenId, DateTime<Utc>>>,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.db.path())
            .field("lifetimes", &self.lifetimes)
            .finish_non_exhaustive()
    }
}

/// The columns `tokens` gained after issue 3, added to older databases when opened.
const LATER_COLUMNS: [&str; 4] = ["scope_id", "expires_at", "last_used_at", "rotated_at"];

const TOKEN_COLUMNS: &str = "token_id, role, name, issued_at, expires_at, last_used_at, \
                             rotated_at, revoked_at";

impl TokenStore {
    /// Opens (or creates) the store at `place`, with the default [`TokenLifetimes`].
    pub fn open(place: impl Into<Place>) -> Result<Self, AuthError> {
        let place = place.into();
        let path = place.path();
        let storage = |source| AuthError::Storage {
            path: path.clone(),
            source,
        };
        let db = Durable::open(
            place,
            "CREATE TABLE IF NOT EXISTS tokens (
                     token_id   TEXT PRIMARY KEY NOT NULL,
                     token_hash BLOB NOT NULL,
                     role_kind  TEXT NOT NULL,
                     role       TEXT NOT NULL,
                     name       TEXT NOT NULL,
                     issued_at  TEXT NOT NULL,
                     revoked_at TEXT
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS enrollment_tokens (
                     token_id    TEXT PRIMARY KEY NOT NULL,
                     token_hash  BLOB NOT NULL,
                     tenant_id   TEXT NOT NULL,
                     issued_by   TEXT NOT NULL,
                     issued_at   TEXT NOT NULL,
                     expires_at  TEXT NOT NULL,
                     used_at     TEXT
                 ) WITHOUT ROWID;",
        )
        .map_err(storage)?;
        let store = Self {
            db,
            lifetimes: TokenLifetimes::default(),
            used: Mutex::default(),
        };
        store.add_later_columns()?;
        Ok(store)
    }

    /// The same store, issuing tokens for `lifetimes`.
    pub fn with_lifetimes(mut self, lifetimes: TokenLifetimes) -> Self {
        self.lifetimes = lifetimes;
        self
    }

    pub fn lifetimes(&self) -> TokenLifetimes {
        self.lifetimes
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    fn storage(&self, source: SqlError) -> AuthError {
        AuthError::Storage {
            path: self.db.path().to_path_buf(),
            source,
        }
    }

    /// Adds the columns of [`LATER_COLUMNS`] a store from before them lacks, fills in the
    /// scope of its tokens and gives people's tokens an expiry [`DEFAULT_TOKEN_LIFETIME`]
    /// from now. One transaction, so servers starting together agree.
    fn add_later_columns(&self) -> Result<(), AuthError> {
        self.db.transaction(
            |e| self.storage(e),
            |tx| {
                let present: Vec<String> = match tx.dialect() {
                    Dialect::Sqlite => {
                        tx.map("SELECT name FROM pragma_table_info('tokens')", &[], |row| {
                            row.get(0)
                        })
                    }
                    Dialect::Postgres => tx.map(
                        "SELECT CAST(column_name AS TEXT) FROM information_schema.columns
                         WHERE table_schema = current_schema() AND table_name = 'tokens'",
                        &[],
                        |row| row.get(0),
                    ),
                }
                .map_err(|e| self.storage(e))?;
                let missing: Vec<&str> = LATER_COLUMNS
                    .into_iter()
                    .filter(|c| !present.iter().any(|p| p == c))
                    .collect();
                for column in &missing {
                    let ddl = format!("ALTER TABLE tokens ADD COLUMN {column} TEXT");
                    let ddl = match tx.dialect() {
                        Dialect::Sqlite => ddl,
                        Dialect::Postgres => latchkey_sql::postgres_ddl(&ddl),
                    };
                    tx.batch(&ddl).map_err(|e| self.storage(e))?;
                }
                if missing.contains(&"expires_at") {
                    // People's tokens from before expiry existed expire a default lifetime
                    // after the upgrade, rather than never.
                    tx.execute(
                        "UPDATE tokens SET expires_at = ?1
                         WHERE role_kind <> 'agent' AND revoked_at IS NULL",
                        params![stamp(expiry(Utc::now(), DEFAULT_TOKEN_LIFETIME))],
                    )
                    .map_err(|e| self.storage(e))?;
                }
                if missing.contains(&"scope_id") {
                    let rows: Vec<(String, String)> = tx
                        .map("SELECT token_id, role FROM tokens", &[], |row| {
                            Ok((row.get(0)?, row.get(1)?))
                        })
                        .map_err(|e| self.storage(e))?;
                    for (token_id, role) in rows {
                        let scope = serde_json::from_str::<Role>(&role)
                            .ok()
                            .and_then(|r| r.scope_id())
                            .map(|id| id.to_string());
                        tx.execute(
                            "UPDATE tokens SET scope_id = ?2 WHERE token_id = ?1",
                            params![token_id, scope],
                        )
                        .map_err(|e| self.storage(e))?;
                    }
                }
                Ok(())
            },
        )
    }

    fn insert(
        &self,
        connection: &dyn Sql,
        token_id: TokenId,
        token: &str,
        role: &Role,
        name: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(), AuthError> {
        let role_json = serde_json::to_string(role).expect("a Role always serialises");
        connection
            .execute(
                "INSERT INTO tokens (token_id, token_hash, role_kind, role, name, issued_at,
                                     scope_id, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    token_id.to_string(),
                    &hash_token(token)[..],
                    role.kind().as_str(),
                    role_json,
                    name,
                    stamp(Utc::now()),
                    role.scope_id().map(|id| id.to_string()),
                    expires_at.map(stamp),
                ],
            )
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// The lifetime a token of `role` gets when its issuer names none: the default for
    /// people, none for agents.
    fn default_lifetime(&self, role: &Role) -> Option<Duration> {
        match role {
            Role::Agent { .. } => None,
            _ => Some(self.lifetimes.default),
        }
    }

    /// Issues a new token for `role` and `name` with the default lifetime (none for an
    /// agent), and returns the token text. This is the only time it exists in clear: show it
    /// once, never log it.
    pub fn issue(&self, role: Role, name: &str) -> Result<String, AuthError> {
        let lifetime = self.default_lifetime(&role);
        self.issue_for(role, name, lifetime)
            .map(|issued| issued.token)
    }

    /// Issues a new token for `role` and `name` that expires after `lifetime` (`None`:
    /// never; for agents). Callers check the lifetime against [`TokenLifetimes::choose`].
    pub fn issue_for(
        &self,
        role: Role,
        name: &str,
        lifetime: Option<Duration>,
    ) -> Result<IssuedToken, AuthError> {
        let (token_id, token) = generate_token();
        let expires_at = lifetime.map(|l| expiry(Utc::now(), l));
        let connection = self.db.lock();
        self.insert(&*connection, token_id, &token, &role, name, expires_at)?;
        Ok(IssuedToken {
            token_id,
            token,
            expires_at,
        })
    }

    /// Registers a token chosen outside (the `LATCHKEY_ADMIN_TOKEN` bootstrap), with the
    /// default lifetime counted from its first registration. Idempotent: the same token again
    /// is accepted (its role, name and expiry are kept as first registered). Fails, naming the
    /// variable and never echoing the value, if the token is malformed, if its id is
    /// registered with another secret, or if it was revoked or has expired.
    pub fn insert_known(&self, token: &str, role: Role, name: &str) -> Result<TokenId, AuthError> {
        let token_id =
            parse_token(token).map_err(|reason| AuthError::InvalidKnownToken { reason })?;
        let now = Utc::now();
        let expires_at = self.default_lifetime(&role).map(|l| expiry(now, l));
        // One transaction, so servers starting together on one database agree.
        self.db.transaction(
            |e| self.storage(e),
            |connection| {
                let existing: Option<(Vec<u8>, Option<String>, Option<String>)> = connection
                    .query_row(
                        "SELECT token_hash, revoked_at, expires_at FROM tokens
                         WHERE token_id = ?1",
                        params![token_id.to_string()],
                        |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)),
                    )
                    .optional()
                    .map_err(|e| self.storage(e))?;
                match existing {
                    None => {
                        self.insert(connection, token_id, token, &role, name, expires_at)?;
                        Ok(token_id)
                    }
                    Some((stored, revoked_at, expires_at)) => {
                        let expired_at = expires_at
                            .map(|t| parse_time(&t).unwrap_or(DateTime::<Utc>::MIN_UTC))
                            .filter(|t| *t <= now);
                        if !bool::from(stored.as_slice().ct_eq(&hash_token(token)[..])) {
                            Err(AuthError::KnownTokenConflict { token_id })
                        } else if revoked_at.is_some() {
                            Err(AuthError::KnownTokenRevoked { token_id })
                        } else if let Some(expired_at) = expired_at {
                            Err(AuthError::KnownTokenExpired {
                                token_id,
                                expired_at,
                            })
                        } else {
                            Ok(token_id)
                        }
                    }
                }
            },
        )
    }

    /// What a bearer token stands for now. `Err` only for a storage failure.
    pub fn authenticate(&self, bearer: &str) -> Result<Authentication, AuthError> {
        self.authenticate_at(bearer, Utc::now())
    }

    /// [`TokenStore::authenticate`] at time `now`. Reads only: a use is remembered in memory
    /// (at most once a minute per token) and written later by
    /// [`TokenStore::flush_last_used`].
    pub fn authenticate_at(
        &self,
        bearer: &str,
        now: DateTime<Utc>,
    ) -> Result<Authentication, AuthError> {
        let presented = hash_token(bearer);
        let Ok(token_id) = parse_token(bearer) else {
            return Ok(Authentication::Refused);
        };
        type Found = (Vec<u8>, String, String, Option<String>, Option<String>);
        let row: Option<Found> = self
            .db
            .lock()
            .prepare_cached(
                "SELECT token_hash, role, name, expires_at, last_used_at FROM tokens
                 WHERE token_id = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut statement| {
                statement.query_row(params![token_id.to_string()], |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                })
            })
            .optional()
            .map_err(|e| self.storage(e))?;
        let Some((stored, role, name, expires_at, last_used_at)) = row else {
            return Ok(Authentication::Refused);
        };
        if !bool::from(stored.as_slice().ct_eq(&presented[..])) {
            return Ok(Authentication::Refused);
        }
        if let Some(expires_at) = expires_at {
            // An expiry that cannot be read is treated as passed: fail closed.
            let expires_at = parse_time(&expires_at).unwrap_or(DateTime::<Utc>::MIN_UTC);
            if expires_at <= now {
                return Ok(Authentication::Expired(expires_at));
            }
        }
        let role = serde_json::from_str(&role).map_err(|source| AuthError::CorruptRole {
            path: self.db.path().to_path_buf(),
            token_id,
            source,
        })?;
        let stale = last_used_at.and_then(|t| parse_time(&t)).is_none_or(|t| {
            now.signed_duration_since(t).to_std().unwrap_or_default() >= LAST_USED_EVERY
        });
        if stale {
            self.used
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(token_id, now);
        }
        Ok(Authentication::Valid(Principal {
            token_id,
            role,
            name,
        }))
    }

    /// Writes when the tokens used since the last call were last used, all in one
    /// transaction; returns how many. The server calls it once a minute, so checking a token
    /// never waits for a write, and a crash loses at most the last minute's uses.
    pub fn flush_last_used(&self) -> Result<usize, AuthError> {
        let used = std::mem::take(&mut *self.used.lock().unwrap_or_else(|p| p.into_inner()));
        if used.is_empty() {
            return Ok(0);
        }
        self.db.transaction(
            |e| self.storage(e),
            |tx| {
                for (token_id, at) in &used {
                    tx.execute(
                        "UPDATE tokens SET last_used_at = ?2
                         WHERE token_id = ?1 AND (last_used_at IS NULL OR last_used_at < ?2)",
                        params![token_id.to_string(), stamp(*at)],
                    )
                    .map_err(|e| self.storage(e))?;
                }
                Ok(used.len())
            },
        )
    }

    /// Whether the token still authenticates (not revoked, not expired): long-lived
    /// connections opened with it (the agents' event feed) check again while they last.
    pub fn is_live(&self, token_id: TokenId) -> Result<bool, AuthError> {
        let expires_at: Option<Option<String>> = self
            .db
            .lock()
            .prepare_cached(
                "SELECT expires_at FROM tokens WHERE token_id = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut statement| {
                statement.query_row(params![token_id.to_string()], |row| row.get(0))
            })
            .optional()
            .map_err(|e| self.storage(e))?;
        Ok(match expires_at {
            None => false,
            Some(None) => true,
            Some(Some(at)) => parse_time(&at).is_some_and(|at| at > Utc::now()),
        })
    }

    /// Revokes a token: it no longer authenticates, for good. Returns whether a live token was
    /// revoked (`false` if unknown or already revoked).
    pub fn revoke(&self, token_id: TokenId) -> Result<bool, AuthError> {
        let changed = self
            .db
            .lock()
            .execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE token_id = ?1 AND revoked_at IS NULL",
                params![token_id.to_string(), stamp(Utc::now())],
            )
            .map_err(|e| self.storage(e))?;
        Ok(changed > 0)
    }

    /// Revokes every token of the technician (at offboarding); returns how many were live.
    pub fn revoke_technician(&self, technician: TechnicianId) -> Result<usize, AuthError> {
        self.db
            .lock()
            .execute(
                "UPDATE tokens SET revoked_at = ?2
                 WHERE role_kind = 'technician' AND scope_id = ?1 AND revoked_at IS NULL",
                params![technician.to_string(), stamp(Utc::now())],
            )
            .map_err(|e| self.storage(e))
    }

    /// Gives the token a new secret (the old one stops working at once) and a new expiry
    /// `lifetime` from now (`None`: keeps not expiring). `Ok(None)` if there is no such
    /// unrevoked token.
    pub fn rotate(
        &self,
        token_id: TokenId,
        lifetime: Option<Duration>,
    ) -> Result<Option<IssuedToken>, AuthError> {
        let now = Utc::now();
        let token = token_with_new_secret(token_id);
        let expires_at = lifetime.map(|l| expiry(now, l));
        let changed = self
            .db
            .lock()
            .execute(
                "UPDATE tokens SET token_hash = ?2, expires_at = ?3, rotated_at = ?4
                 WHERE token_id = ?1 AND revoked_at IS NULL",
                params![
                    token_id.to_string(),
                    &hash_token(&token)[..],
                    expires_at.map(stamp),
                    stamp(now)
                ],
            )
            .map_err(|e| self.storage(e))?;
        Ok((changed > 0).then_some(IssuedToken {
            token_id,
            token,
            expires_at,
        }))
    }

    /// One token as listed, revoked or not.
    pub fn token(&self, token_id: TokenId) -> Result<Option<ListedToken>, AuthError> {
        let sql = format!("SELECT {TOKEN_COLUMNS} FROM tokens WHERE token_id = ?1");
        let now = Utc::now();
        let rows = self
            .db
            .lock()
            .map(&sql, params![token_id.to_string()], |row| {
                Ok(self.token_info(row, now))
            })
            .map_err(|e| self.storage(e))?;
        rows.into_iter().next().transpose()
    }

    /// The tokens `query` asks for, newest first.
    pub fn list(&self, query: &TokenQuery) -> Result<Vec<TokenInfo>, AuthError> {
        let mut conditions = Vec::new();
        let mut values: Vec<Value> = Vec::new();
        match query.scope {
            TokenScope::All => {}
            TokenScope::Tenant(tenant) => {
                values.push(Value::Text(tenant.to_string()));
                conditions.push(format!(
                    "role_kind IN ('tenant_admin', 'auditor') AND scope_id = ?{}",
                    values.len()
                ));
            }
            TokenScope::Technician(technician) => {
                values.push(Value::Text(technician.to_string()));
                conditions.push(format!(
                    "role_kind = 'technician' AND scope_id = ?{}",
                    values.len()
                ));
            }
        }
        if let Some(role) = query.role {
            values.push(Value::Text(role.to_owned()));
            conditions.push(format!("role_kind = ?{}", values.len()));
        }
        if !query.include_revoked {
            conditions.push("revoked_at IS NULL".to_owned());
        }
        let filter = if conditions.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", conditions.join(" AND "))
        };
        let sql = format!(
            "SELECT {TOKEN_COLUMNS} FROM tokens {filter}
             ORDER BY issued_at DESC, token_id LIMIT {}",
            query.limit
        );
        let now = Utc::now();
        let refs: Vec<&dyn latchkey_sql::ToValue> = values
            .iter()
            .map(|v| v as &dyn latchkey_sql::ToValue)
            .collect();
        let rows = self
            .db
            .lock()
            .map(&sql, &refs, |row| Ok(self.token_info(row, now)))
            .map_err(|e| self.storage(e))?;
        rows.into_iter().map(|row| Ok(row?.info)).collect()
    }

    /// A row of [`TOKEN_COLUMNS`] as listed.
    fn token_info(
        &self,
        row: &latchkey_sql::Row,
        now: DateTime<Utc>,
    ) -> Result<ListedToken, AuthError> {
        let text = |i: usize| -> Result<Option<String>, AuthError> {
            row.get(i).map_err(|e| self.storage(e))
        };
        let time = |i: usize| -> Result<Option<DateTime<Utc>>, AuthError> {
            Ok(text(i)?.as_deref().and_then(parse_time))
        };
        let id_text = text(0)?.unwrap_or_default();
        let token_id =
            Uuid::parse_str(&id_text).map_err(|e| self.storage(SqlError::column(0, e)))?;
        let role: Role = serde_json::from_str(&text(1)?.unwrap_or_default()).map_err(|source| {
            AuthError::CorruptRole {
                path: self.db.path().to_path_buf(),
                token_id,
                source,
            }
        })?;
        let (expires_at, revoked_at) = (time(4)?, time(7)?);
        let status = if revoked_at.is_some() {
            "revoked"
        } else if expires_at.is_some_and(|t| t <= now) {
            "expired"
        } else {
            "live"
        };
        let info = TokenInfo {
            token_id,
            holder: text(2)?.unwrap_or_default(),
            role: role.kind(),
            scope: scope_view(&role),
            status: status.to_owned(),
            created_at: time(3)?,
            last_used_at: time(5)?,
            expires_at,
            rotated_at: time(6)?,
            revoked_at,
        };
        Ok(ListedToken { info, grants: role })
    }

    /// Issues a one-time enrollment token for a computer of `tenant`, valid until
    /// `expires_at`. Returns its id and text; only the hash is kept.
    pub fn issue_enrollment(
        &self,
        tenant: TenantId,
        issued_by: &str,
        expires_at: chrono::DateTime<chrono::Utc>,
    ) -> Result<(TokenId, String), AuthError> {
        let (token_id, token) = generate_token();
        self.db
            .lock()
            .execute(
                "INSERT INTO enrollment_tokens
                     (token_id, token_hash, tenant_id, issued_by, issued_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    token_id.to_string(),
                    &hash_token(&token)[..],
                    tenant.to_string(),
                    issued_by,
                    chrono::Utc::now().to_rfc3339(),
                    expires_at.to_rfc3339(),
                ],
            )
            .map_err(|e| self.storage(e))?;
        Ok((token_id, token))
    }

    /// Uses up an enrollment token: the tenant it enrolls into, or why not. A token works once;
    /// [`TokenStore::unredeem_enrollment`] gives it back if the enrollment then fails.
    pub fn redeem_enrollment(
        &self,
        token: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Result<(TokenId, TenantId), EnrollmentRefused>, AuthError> {
        let Ok(token_id) = parse_token(token) else {
            return Ok(Err(EnrollmentRefused::Unknown));
        };
        let connection = self.db.lock();
        let row: Option<(Vec<u8>, String, String, Option<String>)> = connection
            .query_row(
                "SELECT token_hash, tenant_id, expires_at, used_at FROM enrollment_tokens
                 WHERE token_id = ?1",
                params![token_id.to_string()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(|e| self.storage(e))?;
        let Some((stored, tenant, expires_at, used_at)) = row else {
            return Ok(Err(EnrollmentRefused::Unknown));
        };
        if !bool::from(stored.as_slice().ct_eq(&hash_token(token)[..])) {
            return Ok(Err(EnrollmentRefused::Unknown));
        }
        if used_at.is_some() {
            return Ok(Err(EnrollmentRefused::Used));
        }
        let expired = chrono::DateTime::parse_from_rfc3339(&expires_at)
            .map(|e| e <= now)
            .unwrap_or(true);
        if expired {
            return Ok(Err(EnrollmentRefused::Expired));
        }
        let tenant = Uuid::parse_str(&tenant).map_err(|e| self.storage(SqlError::column(1, e)))?;
        let changed = connection
            .execute(
                "UPDATE enrollment_tokens SET used_at = ?2 WHERE token_id = ?1 AND used_at IS NULL",
                params![token_id.to_string(), now.to_rfc3339()],
            )
            .map_err(|e| self.storage(e))?;
        if changed == 0 {
            return Ok(Err(EnrollmentRefused::Used));
        }
        Ok(Ok((token_id, TenantId(tenant))))
    }

    /// Gives back an enrollment token whose enrollment failed after it was redeemed.
    pub fn unredeem_enrollment(&self, token_id: TokenId) -> Result<(), AuthError> {
        self.db
            .lock()
            .execute(
                "UPDATE enrollment_tokens SET used_at = NULL WHERE token_id = ?1",
                params![token_id.to_string()],
            )
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Whether any unrevoked, unexpired MSP admin token exists (if not, start-up creates one).
    pub fn has_msp_admin(&self) -> Result<bool, AuthError> {
        self.db
            .lock()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM tokens
                                WHERE role_kind = 'msp_admin' AND revoked_at IS NULL
                                  AND (expires_at IS NULL OR expires_at > ?1))",
                params![stamp(Utc::now())],
                |row| row.get(0),
            )
            .map_err(|e| self.storage(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant() -> TenantId {
        TenantId(Uuid::from_u128(rand::random()))
    }

    fn store() -> (tempfile::TempDir, TokenStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path().join("tokens.sqlite")).unwrap();
        (dir, store)
    }

    fn principal(role: Role) -> Principal {
        Principal {
            token_id: Uuid::nil(),
            role,
            name: "someone@example.com".into(),
        }
    }

    #[test]
    fn generated_tokens_are_well_formed_and_unique() {
        let (id, token) = generate_token();
        assert_eq!(token.len(), TOKEN_LENGTH);
        assert!(token.starts_with("lk_"));
        assert_eq!(parse_token(&token), Ok(id));
        let (other_id, other) = generate_token();
        assert_ne!(id, other_id);
        assert_ne!(token, other);
    }

    #[test]
    fn auth_issue_then_authenticate_round_trip() {
        let (_dir, store) = store();
        let tenant_id = tenant();
        let role = Role::TenantAdmin { tenant_id };
        let token = store.issue(role.clone(), "admin@customer.example").unwrap();
        let principal = store.authenticate(&token).unwrap().principal().unwrap();
        assert_eq!(principal.role, role);
        assert_eq!(principal.name, "admin@customer.example");
        assert_eq!(Ok(principal.token_id), parse_token(&token));
        assert_eq!(principal.actor_string(), "user:admin@customer.example");
    }

    #[test]
    fn auth_rejects_wrong_secret_unknown_malformed_and_revoked_alike() {
        let (_dir, store) = store();
        let token = store.issue(Role::MspAdmin, "admin@msp.example").unwrap();

        // Same id, another (well-formed) secret.
        let (_, other) = generate_token();
        let forged = format!(
            "{}{}",
            &token[..TOKEN_LENGTH - 43],
            &other[TOKEN_LENGTH - 43..]
        );
        assert_eq!(parse_token(&forged), parse_token(&token));
        assert_eq!(store.authenticate(&forged).unwrap().principal(), None);

        // Unknown id.
        assert_eq!(store.authenticate(&other).unwrap().principal(), None);

        // Malformed.
        for bad in [
            "",
            "lk_",
            "Bearer x",
            &token[..TOKEN_LENGTH - 1],
            &format!("{token}x"),
            &token.to_uppercase(),
            &token.replacen("lk_", "xx_", 1),
            &format!("{}é", &token[..TOKEN_LENGTH - 2]),
        ] {
            assert_eq!(
                store.authenticate(bad).unwrap().principal(),
                None,
                "{bad:?}"
            );
        }

        // Revoked.
        let id = parse_token(&token).unwrap();
        assert!(store.authenticate(&token).unwrap().principal().is_some());
        assert!(store.revoke(id).unwrap());
        assert!(!store.revoke(id).unwrap());
        assert_eq!(store.authenticate(&token).unwrap().principal(), None);
        assert!(!store.has_msp_admin().unwrap());
    }

    #[test]
    fn auth_store_file_never_contains_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.sqlite");
        let store = TokenStore::open(&path).unwrap();
        let mut tokens = Vec::new();
        for i in 0..20 {
            tokens.push(store.issue(Role::MspAdmin, &format!("a{i}")).unwrap());
        }
        let (_, known) = generate_token();
        store.insert_known(&known, Role::MspAdmin, "boot").unwrap();
        tokens.push(known);
        let debug = format!("{store:?}");
        drop(store);
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
        }
        assert!(!bytes.is_empty());
        for token in &tokens {
            let secret = &token[TOKEN_LENGTH - SECRET_CHARS..];
            for needle in [token.as_str(), secret] {
                assert!(!bytes.windows(needle.len()).any(|w| w == needle.as_bytes()));
            }
            assert!(!debug.contains(secret));
        }
    }

    #[test]
    fn auth_insert_known_validates_without_echoing() {
        let (_dir, store) = store();
        let short = "lk_0123456789abcdef_supersecretvalue";
        let error = store
            .insert_known(short, Role::MspAdmin, "boot")
            .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("LATCHKEY_ADMIN_TOKEN"), "{message}");
        assert!(message.contains("too short"), "{message}");
        assert!(!message.contains("supersecretvalue"), "{message}");
        assert!(!format!("{error:?}").contains("supersecretvalue"));

        let (_, token) = generate_token();
        let garbled = token.replace('_', "!");
        let error = store
            .insert_known(&garbled, Role::MspAdmin, "boot")
            .unwrap_err();
        assert!(!error
            .to_string()
            .contains(&token[TOKEN_LENGTH - SECRET_CHARS..]));
        assert!(!store.has_msp_admin().unwrap());

        // A well-formed one registers, and again is a no-op.
        let id = store.insert_known(&token, Role::MspAdmin, "boot").unwrap();
        assert_eq!(
            store.insert_known(&token, Role::MspAdmin, "boot").unwrap(),
            id
        );
        assert!(store.has_msp_admin().unwrap());
        assert!(store
            .authenticate(&token)
            .unwrap()
            .principal()
            .unwrap()
            .is_msp_admin());

        // Same id, other secret: refused, without the secret.
        let (_, other) = generate_token();
        let forged = format!(
            "{}{}",
            &token[..TOKEN_LENGTH - 43],
            &other[TOKEN_LENGTH - 43..]
        );
        let error = store
            .insert_known(&forged, Role::MspAdmin, "boot")
            .unwrap_err();
        assert!(matches!(error, AuthError::KnownTokenConflict { .. }));
        assert!(!error.to_string().contains(&other[TOKEN_LENGTH - 43..]));

        // Revoked stays revoked.
        store.revoke(id).unwrap();
        let error = store
            .insert_known(&token, Role::MspAdmin, "boot")
            .unwrap_err();
        assert!(matches!(error, AuthError::KnownTokenRevoked { .. }));
        assert_eq!(store.authenticate(&token).unwrap().principal(), None);
    }

    #[test]
    fn auth_role_permissions() {
        let (a, b) = (tenant(), tenant());

        let msp = principal(Role::MspAdmin);
        assert!(msp.is_msp_admin() && msp.can_read_all_tenants());
        assert!(msp.can_read_tenant(a) && msp.can_administer_tenant(b));

        let admin_a = principal(Role::TenantAdmin { tenant_id: a });
        assert!(admin_a.can_read_tenant(a) && admin_a.can_administer_tenant(a));
        assert!(!admin_a.can_read_tenant(b) && !admin_a.can_administer_tenant(b));
        assert!(!admin_a.is_msp_admin() && !admin_a.can_read_all_tenants());

        let auditor_all = principal(Role::Auditor { tenant_id: None });
        assert!(auditor_all.can_read_tenant(a) && auditor_all.can_read_tenant(b));
        assert!(!auditor_all.can_administer_tenant(a) && !auditor_all.can_administer_tenant(b));
        assert!(auditor_all.is_auditor() && auditor_all.can_read_all_tenants());

        let auditor_a = principal(Role::Auditor { tenant_id: Some(a) });
        assert!(auditor_a.can_read_tenant(a) && !auditor_a.can_read_tenant(b));
        assert!(!auditor_a.can_administer_tenant(a) && !auditor_a.can_read_all_tenants());

        let technician_id = TechnicianId(Uuid::from_u128(7));
        let technician = principal(Role::Technician { technician_id });
        assert_eq!(technician.technician_id(), Some(technician_id));
        assert!(!technician.can_administer_tenant(a) && !technician.can_read_tenant(a));

        let computer_id = ComputerId(Uuid::from_u128(9));
        let agent = principal(Role::Agent { computer_id });
        assert!(!agent.can_administer_tenant(a) && !agent.can_read_tenant(a));
        assert!(!agent.is_msp_admin() && !agent.can_read_all_tenants());
        assert_eq!(agent.agent_computer_id(), Some(computer_id));
        assert_eq!(agent.actor_string(), format!("agent:{computer_id}"));
        assert_eq!(msp.actor_string(), "user:someone@example.com");
    }

    #[test]
    fn auth_role_serialises_tagged_snake_case() {
        let a = tenant();
        let json = serde_json::to_value(Role::TenantAdmin { tenant_id: a }).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"role": "tenant_admin", "tenant_id": a.0.to_string()})
        );
        let json = serde_json::to_value(Role::MspAdmin).unwrap();
        assert_eq!(json, serde_json::json!({"role": "msp_admin"}));
        let all = Role::Auditor { tenant_id: None };
        let back: Role = serde_json::from_value(serde_json::to_value(&all).unwrap()).unwrap();
        assert_eq!(back, all);
    }

    #[test]
    fn auth_tokens_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.sqlite");
        let computer_id = ComputerId(Uuid::from_u128(3));
        let (admin, agent, revoked) = {
            let store = TokenStore::open(&path).unwrap();
            let admin = store.issue(Role::MspAdmin, "admin@msp.example").unwrap();
            let agent = store.issue(Role::Agent { computer_id }, "W11").unwrap();
            let revoked = store.issue(Role::MspAdmin, "old@msp.example").unwrap();
            store.revoke(parse_token(&revoked).unwrap()).unwrap();
            (admin, agent, revoked)
        };
        let store = TokenStore::open(&path).unwrap();
        assert!(store.has_msp_admin().unwrap());
        assert!(store
            .authenticate(&admin)
            .unwrap()
            .principal()
            .unwrap()
            .is_msp_admin());
        assert_eq!(
            store
                .authenticate(&agent)
                .unwrap()
                .principal()
                .unwrap()
                .role,
            Role::Agent { computer_id }
        );
        assert_eq!(store.authenticate(&revoked).unwrap().principal(), None);
    }

    #[test]
    fn an_expired_token_says_so_only_to_the_right_secret() {
        let (_dir, store) = store();
        let role = Role::Auditor { tenant_id: None };
        let issued = store
            .issue_for(role.clone(), "a@msp.example", Some(Duration::from_secs(60)))
            .unwrap();
        let expires_at = issued.expires_at.unwrap();
        let before = expires_at - chrono::Duration::seconds(1);
        assert!(matches!(
            store.authenticate_at(&issued.token, before).unwrap(),
            Authentication::Valid(Principal { role: r, .. }) if r == role
        ));
        assert_eq!(
            store.authenticate_at(&issued.token, expires_at).unwrap(),
            Authentication::Expired(expires_at)
        );
        // The wrong secret of an expired token is refused like any wrong secret.
        let (_, other) = generate_token();
        let forged = format!(
            "{}{}",
            &issued.token[..TOKEN_LENGTH - SECRET_CHARS],
            &other[TOKEN_LENGTH - SECRET_CHARS..]
        );
        assert_eq!(
            store.authenticate_at(&forged, expires_at).unwrap(),
            Authentication::Refused
        );
    }

    #[test]
    fn people_get_the_default_lifetime_and_agents_none() {
        let dir = tempfile::tempdir().unwrap();
        let lifetimes =
            TokenLifetimes::new(Duration::from_secs(3_600), Duration::from_secs(7_200)).unwrap();
        let store = TokenStore::open(dir.path().join("t.db"))
            .unwrap()
            .with_lifetimes(lifetimes);
        store.issue(Role::MspAdmin, "a@msp.example").unwrap();
        let computer_id = ComputerId(Uuid::from_u128(5));
        store.issue(Role::Agent { computer_id }, "agent").unwrap();
        let listed = store
            .list(&TokenQuery {
                scope: TokenScope::All,
                role: None,
                include_revoked: false,
                limit: 10,
            })
            .unwrap();
        let admin = listed
            .iter()
            .find(|t| t.role == RoleKind::MspAdmin)
            .unwrap();
        let lifetime = admin.expires_at.unwrap() - admin.created_at.unwrap();
        assert!((lifetime.num_seconds() - 3_600).abs() <= 1, "{lifetime}");
        let agent = listed.iter().find(|t| t.role == RoleKind::Agent).unwrap();
        assert_eq!(agent.expires_at, None);
        assert_eq!(agent.scope, Some(TokenScopeView::Computer { computer_id }));
    }

    #[test]
    fn a_lifetime_above_the_maximum_is_refused_naming_expires_in() {
        let lifetimes =
            TokenLifetimes::new(Duration::from_secs(3_600), Duration::from_secs(86_400)).unwrap();
        assert_eq!(lifetimes.choose(None), Ok(Duration::from_secs(3_600)));
        assert_eq!(
            lifetimes.choose(Some(86_400)),
            Ok(Duration::from_secs(86_400))
        );
        let refused = lifetimes.choose(Some(86_401)).unwrap_err();
        assert!(
            refused.starts_with("expires_in must be at most 86400 seconds (1 day)"),
            "{refused}"
        );
        assert!(lifetimes
            .choose(Some(0))
            .unwrap_err()
            .starts_with("expires_in"));
        assert!(TokenLifetimes::new(Duration::from_secs(10), Duration::from_secs(5)).is_err());
    }

    #[test]
    fn last_used_is_written_at_most_once_a_minute_and_only_when_flushed() {
        let (_dir, store) = store();
        let token = store.issue(Role::MspAdmin, "a@msp.example").unwrap();
        let id = parse_token(&token).unwrap();
        let last_used = || store.token(id).unwrap().unwrap().last_used_at;
        let t0 = Utc::now();
        store.authenticate_at(&token, t0).unwrap();
        assert_eq!(last_used(), None, "checking a token does not write");
        assert_eq!(store.flush_last_used().unwrap(), 1);
        let first = last_used().unwrap();
        assert_eq!(first.timestamp_micros(), t0.timestamp_micros());
        // Within the minute: nothing to write.
        store
            .authenticate_at(&token, t0 + chrono::Duration::seconds(30))
            .unwrap();
        assert_eq!(store.flush_last_used().unwrap(), 0);
        assert_eq!(last_used(), Some(first));
        // A minute later: written again, once, with the latest use.
        for s in [61, 62, 63] {
            store
                .authenticate_at(&token, t0 + chrono::Duration::seconds(s))
                .unwrap();
        }
        assert_eq!(store.flush_last_used().unwrap(), 1);
        assert_eq!(
            last_used().unwrap().timestamp(),
            (t0 + chrono::Duration::seconds(63)).timestamp()
        );
    }

    #[test]
    fn rotation_gives_a_new_secret_and_the_old_one_stops_working() {
        let (_dir, store) = store();
        let token = store.issue(Role::MspAdmin, "a@msp.example").unwrap();
        let id = parse_token(&token).unwrap();
        let rotated = store
            .rotate(id, Some(Duration::from_secs(600)))
            .unwrap()
            .unwrap();
        assert_eq!(rotated.token_id, id);
        assert_ne!(rotated.token, token);
        assert_eq!(store.authenticate(&token).unwrap(), Authentication::Refused);
        let principal = store
            .authenticate(&rotated.token)
            .unwrap()
            .principal()
            .unwrap();
        assert_eq!(principal.token_id, id);
        let info = store.token(id).unwrap().unwrap();
        assert!(info.rotated_at.is_some());
        assert_eq!(
            info.expires_at.map(|t| t.timestamp_micros()),
            rotated.expires_at.map(|t| t.timestamp_micros())
        );
        store.revoke(id).unwrap();
        assert!(
            store.rotate(id, None).unwrap().is_none(),
            "a revoked token stays revoked"
        );
    }

    #[test]
    fn a_technicians_tokens_are_listed_and_revoked_together_never_showing_a_secret() {
        let (_dir, store) = store();
        let (nik, ann) = (
            TechnicianId(Uuid::from_u128(10)),
            TechnicianId(Uuid::from_u128(11)),
        );
        let tenant_id = tenant();
        let mut secrets = Vec::new();
        for (role, name) in [
            (Role::Technician { technician_id: nik }, "nik@nikpot.com"),
            (Role::Technician { technician_id: nik }, "nik@nikpot.com"),
            (Role::Technician { technician_id: ann }, "ann@nikpot.com"),
            (Role::TenantAdmin { tenant_id }, "admin@customer.example"),
        ] {
            secrets.push(store.issue(role, name).unwrap());
        }
        let query = |scope| TokenQuery {
            scope,
            role: None,
            include_revoked: true,
            limit: 100,
        };
        let niks = store.list(&query(TokenScope::Technician(nik))).unwrap();
        assert_eq!(niks.len(), 2);
        assert!(niks.iter().all(|t| t.holder == "nik@nikpot.com"));
        let tenants = store.list(&query(TokenScope::Tenant(tenant_id))).unwrap();
        assert_eq!(tenants.len(), 1);
        assert_eq!(tenants[0].scope, Some(TokenScopeView::Tenant { tenant_id }));
        let everything =
            serde_json::to_string(&store.list(&query(TokenScope::All)).unwrap()).unwrap();
        for token in &secrets {
            assert!(!everything.contains(&token[TOKEN_LENGTH - SECRET_CHARS..]));
        }
        assert!(!everything.contains("hash"), "{everything}");

        assert_eq!(store.revoke_technician(nik).unwrap(), 2);
        assert_eq!(store.revoke_technician(nik).unwrap(), 0);
        assert_eq!(
            store.authenticate(&secrets[0]).unwrap(),
            Authentication::Refused
        );
        assert!(store
            .authenticate(&secrets[2])
            .unwrap()
            .principal()
            .is_some());
        let niks = store.list(&query(TokenScope::Technician(nik))).unwrap();
        assert!(niks.iter().all(|t| t.status == "revoked"));
        let live = store
            .list(&TokenQuery {
                include_revoked: false,
                ..query(TokenScope::Technician(nik))
            })
            .unwrap();
        assert!(live.is_empty());
    }

    #[test]
    fn a_token_store_from_before_expiry_gains_the_columns_and_keeps_its_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.db");
        let technician_id = TechnicianId(Uuid::from_u128(10));
        let (token_id, token) = generate_token();
        {
            // The table as issue 3 created it, with one technician token.
            let old = rusqlite::Connection::open(&path).unwrap();
            old.execute_batch(
                "CREATE TABLE tokens (token_id TEXT PRIMARY KEY NOT NULL, token_hash BLOB NOT NULL,
                 role_kind TEXT NOT NULL, role TEXT NOT NULL, name TEXT NOT NULL,
                 issued_at TEXT NOT NULL, revoked_at TEXT) WITHOUT ROWID;",
            )
            .unwrap();
            let role = serde_json::to_string(&Role::Technician { technician_id }).unwrap();
            old.execute(
                "INSERT INTO tokens VALUES (?1, ?2, 'technician', ?3, 'nik@nikpot.com', ?4, NULL)",
                rusqlite::params![
                    token_id.to_string(),
                    &hash_token(&token)[..],
                    role,
                    Utc::now().to_rfc3339()
                ],
            )
            .unwrap();
        }
        let store = TokenStore::open(&path).unwrap();
        let principal = store.authenticate(&token).unwrap().principal().unwrap();
        assert_eq!(principal.role, Role::Technician { technician_id });
        let expires_at = store.token(token_id).unwrap().unwrap().expires_at.unwrap();
        let days = (expires_at - Utc::now()).num_days();
        assert!((89..=90).contains(&days), "expires in {days} days");
        assert_eq!(store.revoke_technician(technician_id).unwrap(), 1);
        drop(store);
        // And opening it again changes nothing.
        let store = TokenStore::open(&path).unwrap();
        assert_eq!(store.authenticate(&token).unwrap(), Authentication::Refused);
    }

    #[test]
    fn auth_store_is_shareable_across_threads() {
        let (_dir, store) = store();
        let store = std::sync::Arc::new(store);
        let handles: Vec<_> = (0..4)
            .map(|i| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let token = store.issue(Role::MspAdmin, &format!("t{i}")).unwrap();
                    store.authenticate(&token).unwrap().principal().is_some()
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap());
        }
    }
}
