//! Authentication and authorization (issue 3, item 2): bearer API tokens, the roles they carry
//! and the permission checks the HTTP layer asks of a [`Principal`].
//! A token is shown once, when issued; this module must never store, log or put in an error a
//! token (or its secret part) in clear. Only its SHA-256 is stored, compared in constant time.

use crate::storage::{Durable, Place};
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use latchkey_domain::ids::{ComputerId, TechnicianId, TenantId};
use latchkey_store::sql::{params, OptionalExtension, Sql, SqlError};
use rand::RngExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
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
    /// The role's name as in the issue and the API: `msp_admin`, `tenant_admin`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Role::MspAdmin => "msp_admin",
            Role::TenantAdmin { .. } => "tenant_admin",
            Role::Technician { .. } => "technician",
            Role::Auditor { .. } => "auditor",
            Role::Agent { .. } => "agent",
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
    let mut rng = rand::rng();
    let mut id_bytes = [0u8; 16];
    rng.fill(&mut id_bytes[..]);
    let token_id = uuid::Builder::from_random_bytes(id_bytes).into_uuid();
    let mut secret = [0u8; SECRET_BYTES];
    rng.fill(&mut secret[..]);
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    let token = format!("{TOKEN_PREFIX}{}_{secret}", token_id.simple());
    (token_id, token)
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
/// (`crate::storage`): id, SHA-256 of the token, role, name, issue and revocation time.
/// Thread-safe.
pub struct TokenStore {
    db: Durable,
}

impl fmt::Debug for TokenStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenStore")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

impl TokenStore {
    /// Opens (or creates) the store at `path`.
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
        Ok(Self { db })
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

    fn insert(
        &self,
        connection: &dyn Sql,
        token_id: TokenId,
        token: &str,
        role: &Role,
        name: &str,
    ) -> Result<(), AuthError> {
        let role_json = serde_json::to_string(role).expect("a Role always serialises");
        connection
            .execute(
                "INSERT INTO tokens (token_id, token_hash, role_kind, role, name, issued_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    token_id.to_string(),
                    &hash_token(token)[..],
                    role.kind(),
                    role_json,
                    name,
                    chrono::Utc::now().to_rfc3339(),
                ],
            )
            .map_err(|e| self.storage(e))?;
        Ok(())
    }

    /// Issues a new token for `role` and `name`, and returns the token text. This is the only
    /// time it exists in clear: show it once, never log it.
    pub fn issue(&self, role: Role, name: &str) -> Result<String, AuthError> {
        let (token_id, token) = generate_token();
        let connection = self.db.lock();
        self.insert(&*connection, token_id, &token, &role, name)?;
        Ok(token)
    }

    /// Registers a token chosen outside (the `LATCHKEY_ADMIN_TOKEN` bootstrap). Idempotent: the
    /// same token again is accepted (its role and name are kept as first registered). Fails,
    /// naming the variable and never echoing the value, if the token is malformed, if its id is
    /// registered with another secret, or if it was revoked.
    pub fn insert_known(&self, token: &str, role: Role, name: &str) -> Result<TokenId, AuthError> {
        let token_id =
            parse_token(token).map_err(|reason| AuthError::InvalidKnownToken { reason })?;
        // One transaction, so servers starting together on one database agree.
        self.db.transaction(
            |e| self.storage(e),
            |connection| {
                let existing: Option<(Vec<u8>, Option<String>)> = connection
                    .query_row(
                        "SELECT token_hash, revoked_at FROM tokens WHERE token_id = ?1",
                        params![token_id.to_string()],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()
                    .map_err(|e| self.storage(e))?;
                match existing {
                    None => {
                        self.insert(connection, token_id, token, &role, name)?;
                        Ok(token_id)
                    }
                    Some((stored, revoked_at)) => {
                        if !bool::from(stored.as_slice().ct_eq(&hash_token(token)[..])) {
                            Err(AuthError::KnownTokenConflict { token_id })
                        } else if revoked_at.is_some() {
                            Err(AuthError::KnownTokenRevoked { token_id })
                        } else {
                            Ok(token_id)
                        }
                    }
                }
            },
        )
    }

    /// The principal a bearer token stands for. `Ok(None)` for a malformed, unknown, revoked or
    /// wrong-secret token, all alike; `Err` only for a storage failure.
    pub fn authenticate(&self, bearer: &str) -> Result<Option<Principal>, AuthError> {
        let presented = hash_token(bearer);
        let Ok(token_id) = parse_token(bearer) else {
            return Ok(None);
        };
        let row: Option<(Vec<u8>, String, String)> = self
            .db
            .lock()
            .prepare_cached(
                "SELECT token_hash, role, name FROM tokens
                 WHERE token_id = ?1 AND revoked_at IS NULL",
            )
            .and_then(|mut statement| {
                statement.query_row(params![token_id.to_string()], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })
            })
            .optional()
            .map_err(|e| self.storage(e))?;
        let Some((stored, role, name)) = row else {
            return Ok(None);
        };
        if !bool::from(stored.as_slice().ct_eq(&presented[..])) {
            return Ok(None);
        }
        let role = serde_json::from_str(&role).map_err(|source| AuthError::CorruptRole {
            path: self.db.path().to_path_buf(),
            token_id,
            source,
        })?;
        Ok(Some(Principal {
            token_id,
            role,
            name,
        }))
    }

    /// Whether the token still authenticates (not revoked): long-lived connections opened
    /// with it (the agents' event feed) check again while they last.
    pub fn is_live(&self, token_id: TokenId) -> Result<bool, AuthError> {
        self.db
            .lock()
            .prepare_cached("SELECT 1 FROM tokens WHERE token_id = ?1 AND revoked_at IS NULL")
            .and_then(|mut statement| statement.exists(params![token_id.to_string()]))
            .map_err(|e| self.storage(e))
    }

    /// Revokes a token: it no longer authenticates, for good. Returns whether a live token was
    /// revoked (`false` if unknown or already revoked).
    pub fn revoke(&self, token_id: TokenId) -> Result<bool, AuthError> {
        let changed = self
            .db
            .lock()
            .execute(
                "UPDATE tokens SET revoked_at = ?2 WHERE token_id = ?1 AND revoked_at IS NULL",
                params![token_id.to_string(), chrono::Utc::now().to_rfc3339()],
            )
            .map_err(|e| self.storage(e))?;
        Ok(changed > 0)
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

    /// Whether any unrevoked MSP admin token exists (if not, first start creates one).
    pub fn has_msp_admin(&self) -> Result<bool, AuthError> {
        self.db
            .lock()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM tokens
                                WHERE role_kind = 'msp_admin' AND revoked_at IS NULL)",
                params![],
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
        let principal = store.authenticate(&token).unwrap().unwrap();
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
        assert_eq!(store.authenticate(&forged).unwrap(), None);

        // Unknown id.
        assert_eq!(store.authenticate(&other).unwrap(), None);

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
            assert_eq!(store.authenticate(bad).unwrap(), None, "{bad:?}");
        }

        // Revoked.
        let id = parse_token(&token).unwrap();
        assert!(store.authenticate(&token).unwrap().is_some());
        assert!(store.revoke(id).unwrap());
        assert!(!store.revoke(id).unwrap());
        assert_eq!(store.authenticate(&token).unwrap(), None);
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
        assert!(store.authenticate(&token).unwrap().unwrap().is_msp_admin());

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
        assert_eq!(store.authenticate(&token).unwrap(), None);
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
        assert!(store.authenticate(&admin).unwrap().unwrap().is_msp_admin());
        assert_eq!(
            store.authenticate(&agent).unwrap().unwrap().role,
            Role::Agent { computer_id }
        );
        assert_eq!(store.authenticate(&revoked).unwrap(), None);
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
                    store.authenticate(&token).unwrap().is_some()
                })
            })
            .collect();
        for handle in handles {
            assert!(handle.join().unwrap());
        }
    }
}
