//! Offline login: a technician's TOTP code lets the agent grant an account admin rights
//! locally while the server cannot be reached, for the tenant's maximum session length. The
//! agent checks the code against the secret the server delivered for this computer, refuses a
//! code that was used before, and buffers the login in its outbox until the daemon has
//! uploaded it; the daemon takes the access back when it expires.
//!
//! Guessing is limited: [`MAX_WRONG_CODES`] wrong codes for one account within
//! [`WRONG_CODE_WINDOW`] lock its offline login for [`LOCKOUT`], and the lockout is buffered
//! for upload like a login. Every attempt is counted as wrong, durably, before its code is
//! checked, and forgiven only when the code turns out right, so neither a restart nor killing
//! the command mid-check gives a guess back.
//!
//! It must never contact the server (it has to work without one), never print a secret but
//! the one-time password it sets, never keep or send a code, and never lose a buffered login
//! or lockout.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use chrono::{DateTime, Duration, Utc};
use rand::seq::IndexedRandom;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::client::{OfflineLockout, OfflineLogin, OfflineSecret, OfflineSecrets};
use crate::os::{self, AccountBackend};
use crate::state::{
    SetPassword, StateDir, StateError, LOCKOUT_OUTBOX, OFFLINE_ATTEMPTS, OFFLINE_SECRETS,
    OFFLINE_STATE, OUTBOX,
};
use latchkey_domain::names::{AccountName, ClaimedName};

/// TOTP parameters, as the server issues them (RFC 6238 defaults).
const TOTP_DIGITS: usize = 6;
const TOTP_STEP: u64 = 30;
/// One step either side, for the drift between this computer's clock and the phone's.
const TOTP_SKEW: u64 = 1;

/// Wrong codes for one account within [`WRONG_CODE_WINDOW`] that lock its offline login.
pub const MAX_WRONG_CODES: usize = 5;
/// How long a wrong code counts.
pub const WRONG_CODE_WINDOW: Duration = Duration::minutes(15);
/// How long offline login for an account stays locked: no code, right or wrong, is checked.
pub const LOCKOUT: Duration = Duration::minutes(15);

/// The offline password: long enough for ~115 bits, without characters that are easy to
/// misread when typed from a screen (0/O, 1/l/I).
const PASSWORD_LENGTH: usize = 20;
const PASSWORD_ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";

/// Who asks for offline access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A technician by MSP username (their named account).
    Technician(String),
    /// The tenant's shared account, by someone who gave this name (a claim the audit trail
    /// records as such).
    Shared { name: ClaimedName },
}

impl fmt::Display for Who {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Who::Technician(name) => write!(f, "technician {name}"),
            Who::Shared { .. } => f.write_str("the shared account"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error(
        "this computer has no offline secrets yet ({path} is missing): the agent daemon fetches \
         them from the server while it is enrolled, running and online"
    )]
    NoSecrets { path: String },
    #[error(
        "--technician {0}: this computer has no offline secret for that technician (one is \
         issued at their first check-out of this computer in named mode)"
    )]
    UnknownTechnician(String),
    #[error(
        "--shared: this computer has no offline secret for a shared account (is the customer's \
         login mode shared, and has the account been used here once?)"
    )]
    NoSharedSecret,
    #[error(
        "--code must be the {TOTP_DIGITS} digits the authenticator app shows (got {0} characters)"
    )]
    CodeFormat(usize),
    #[error(
        "--code: the code is not valid for {who} on this computer; check that it comes from \
         this computer's entry in the authenticator app and that this computer's clock is \
         right (it says {now} UTC). {left} more wrong code{plural} lock offline login for \
         {account} for {minutes} minutes",
        plural = if *left == 1 { "" } else { "s" },
        minutes = LOCKOUT.num_minutes()
    )]
    BadCode {
        who: Who,
        account: String,
        now: String,
        left: usize,
    },
    #[error(
        "--code: the code is not valid for {who}, and that was {failures} wrong codes within \
         {window} minutes: offline login for {account} is locked until {until} UTC. The \
         lockout is recorded and reported to Latchkey",
        window = WRONG_CODE_WINDOW.num_minutes()
    )]
    TooManyWrongCodes {
        who: Who,
        account: String,
        failures: usize,
        until: String,
    },
    #[error(
        "offline login for {account} is locked until {until} UTC after too many wrong codes; \
         no code is checked until then (try again in {minutes} minutes)"
    )]
    LockedOut {
        account: String,
        until: String,
        minutes: i64,
    },
    #[error(
        "--code: this code was already used for {account}; wait for the next code (a new one \
         every {TOTP_STEP} seconds)"
    )]
    ReusedCode { account: String },
    #[error("the stored offline secret of {account} is not valid base32; wait for the daemon to fetch it again")]
    BadSecret { account: String },
    #[error("account {account} exists and was not created by Latchkey; refusing to grant it")]
    NotManaged { account: String },
    #[error("could not grant {account}: {reason}")]
    Machine { account: String, reason: String },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The secrets as kept in the state directory, with when they were fetched.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredSecrets {
    pub fetched_at: DateTime<Utc>,
    #[serde(flatten)]
    pub secrets: OfflineSecrets,
}

/// What `offline-login` keeps between runs and shares with the daemon.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineState {
    /// The last accepted TOTP step per `<account>#<generation>`: a code is accepted only for
    /// a later step, so no code works twice.
    #[serde(default)]
    pub last_steps: BTreeMap<String, u64>,
    /// Access granted offline that the daemon must take back at `until`.
    #[serde(default)]
    pub grants: Vec<Grant>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub login_id: Uuid,
    pub account: String,
    pub group: String,
    pub until: DateTime<Utc>,
    /// The account was in the group already (an online session): leave it there at expiry.
    pub already_member: bool,
    /// The hash of the password printed at the login: if the shadow file still holds it at
    /// expiry, the password is replaced by one nobody knows.
    pub hash: String,
}

/// Access just granted; the password is shown once and kept nowhere.
pub struct Granted {
    pub login_id: Uuid,
    pub account: String,
    pub password: String,
    pub group: String,
    pub until: DateTime<Utc>,
}

pub fn load_secrets(state: &StateDir) -> Result<Option<StoredSecrets>, StateError> {
    state.read_json(OFFLINE_SECRETS)
}

/// Keeps freshly fetched secrets; rewrites the file only if they changed.
pub fn store_secrets(
    state: &StateDir,
    secrets: OfflineSecrets,
    now: DateTime<Utc>,
) -> Result<(), StateError> {
    if load_secrets(state)?.is_some_and(|old| old.secrets == secrets) {
        return Ok(());
    }
    state.write_json(
        OFFLINE_SECRETS,
        &StoredSecrets {
            fetched_at: now,
            secrets,
        },
    )
}

fn load_state(state: &StateDir) -> Result<OfflineState, StateError> {
    Ok(state.read_json(OFFLINE_STATE)?.unwrap_or_default())
}

/// The wrong codes per account and the lockouts in force (`offline-attempts.json`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attempts {
    #[serde(default)]
    pub accounts: BTreeMap<String, AccountAttempts>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccountAttempts {
    /// Attempts counted as wrong within the window, oldest first; the one being checked is
    /// among them until its code is found right.
    #[serde(default)]
    pub wrong: Vec<WrongCode>,
    /// No code is checked for the account before this time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locked_until: Option<DateTime<Utc>>,
}

/// One wrong code: when, and an id (the last one names the lockout it leads to, so a lockout
/// written again after a crash keeps its id). Never the code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WrongCode {
    pub id: Uuid,
    pub at: DateTime<Utc>,
}

impl AccountAttempts {
    /// Forgets wrong codes older than the window and a lockout that is over.
    fn age(&mut self, now: DateTime<Utc>) {
        self.wrong.retain(|w| w.at > now - WRONG_CODE_WINDOW);
        if self.locked_until.is_some_and(|until| until <= now) {
            self.locked_until = None;
        }
    }
}

pub fn load_attempts(state: &StateDir) -> Result<Attempts, StateError> {
    Ok(state.read_json(OFFLINE_ATTEMPTS)?.unwrap_or_default())
}

/// Where the guarded attempt stands once counted.
struct Guard {
    attempts: Attempts,
    account: AccountName,
    technician_id: Option<Uuid>,
}

impl Guard {
    /// Refuses the attempt if the account is locked; otherwise counts it as wrong, durably,
    /// before its code is checked. A count already at the limit (a run killed while checking
    /// the last code) locks the account now.
    fn count(
        state: &StateDir,
        secret: &OfflineSecret,
        now: DateTime<Utc>,
    ) -> Result<Self, OfflineError> {
        let mut guard = Guard {
            attempts: load_attempts(state)?,
            account: secret.account.clone(),
            technician_id: secret.technician_id.map(|t| t.0),
        };
        let entry = guard.entry();
        entry.age(now);
        if let Some(until) = entry.locked_until {
            return Err(locked_out(guard.account.as_str(), until, now));
        }
        if entry.wrong.len() >= MAX_WRONG_CODES {
            let until = guard.lock(state, now)?;
            return Err(locked_out(guard.account.as_str(), until, now));
        }
        entry.wrong.push(WrongCode {
            id: Uuid::new_v4(),
            at: now,
        });
        state.write_json(OFFLINE_ATTEMPTS, &guard.attempts)?;
        Ok(guard)
    }

    fn entry(&mut self) -> &mut AccountAttempts {
        self.attempts
            .accounts
            .entry(self.account.to_string())
            .or_default()
    }

    /// The code was right: the account's wrong codes are forgiven.
    fn right(mut self, state: &StateDir) -> Result<(), StateError> {
        self.attempts.accounts.remove(self.account.as_str());
        state.write_json(OFFLINE_ATTEMPTS, &self.attempts)
    }

    /// The code was not checked after all (the stored secret is unusable): it does not count.
    fn unchecked(mut self, state: &StateDir) -> Result<(), StateError> {
        self.entry().wrong.pop();
        state.write_json(OFFLINE_ATTEMPTS, &self.attempts)
    }

    /// The code was wrong: an error saying how many are left, or locking the account.
    fn wrong(mut self, state: &StateDir, who: &Who, now: DateTime<Utc>) -> OfflineError {
        let failures = self.entry().wrong.len();
        if failures < MAX_WRONG_CODES {
            return OfflineError::BadCode {
                who: who.clone(),
                account: self.account.into(),
                now: now.format("%Y-%m-%d %H:%M:%S").to_string(),
                left: MAX_WRONG_CODES - failures,
            };
        }
        match self.lock(state, now) {
            Ok(until) => OfflineError::TooManyWrongCodes {
                who: who.clone(),
                account: self.account.into(),
                failures,
                until: until.format("%Y-%m-%d %H:%M:%S").to_string(),
            },
            Err(e) => e.into(),
        }
    }

    /// Locks the account's offline login for [`LOCKOUT`] from `now`: the lockout goes to the
    /// outbox first (named by the last wrong code, so writing it again after a crash is the
    /// same lockout), then the lock.
    fn lock(&mut self, state: &StateDir, now: DateTime<Utc>) -> Result<DateTime<Utc>, StateError> {
        let until = now + LOCKOUT;
        let account = self.account.clone();
        let technician_id = self.technician_id;
        let entry = self.entry();
        let lockout = OfflineLockout {
            lockout_id: entry.wrong.last().map_or_else(Uuid::new_v4, |w| w.id),
            account,
            technician_id,
            failures: u32::try_from(entry.wrong.len()).unwrap_or(u32::MAX),
            locked_at: now,
            locked_until: until,
        };
        entry.wrong.clear();
        entry.locked_until = Some(until);
        state.write_json(&lockout_file(&lockout.lockout_id), &lockout)?;
        state.write_json(OFFLINE_ATTEMPTS, &self.attempts)?;
        tracing::warn!(
            account = %lockout.account,
            failures = lockout.failures,
            until = %until,
            lockout_id = %lockout.lockout_id,
            "offline login locked after too many wrong codes; the lockout is buffered for upload"
        );
        Ok(until)
    }
}

fn locked_out(account: &str, until: DateTime<Utc>, now: DateTime<Utc>) -> OfflineError {
    let seconds = (until - now).num_seconds().max(0);
    OfflineError::LockedOut {
        account: account.to_owned(),
        until: until.format("%Y-%m-%d %H:%M:%S").to_string(),
        // Rounded up: "in 0 minutes" would invite an attempt that is still refused.
        minutes: (seconds + 59) / 60,
    }
}

/// A stored TOTP secret that is not valid base32 of at least 128 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidSecret;

/// The TOTP step `code` belongs to, within one step of `unix_time`, if it is valid for
/// `secret` (base32). Compares in constant time.
pub fn code_step(secret: &str, code: &str, unix_time: u64) -> Result<Option<u64>, InvalidSecret> {
    let bytes = totp_rs::Secret::Encoded(secret.to_owned())
        .to_bytes()
        .map_err(|_| InvalidSecret)?;
    let totp = totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        TOTP_DIGITS,
        0,
        TOTP_STEP,
        bytes,
        None,
        "offline".to_owned(),
    )
    .map_err(|_| InvalidSecret)?;
    let now = unix_time / TOTP_STEP;
    let mut matched = None;
    // Every candidate is checked, so the time taken does not say which one matched.
    for step in now.saturating_sub(TOTP_SKEW)..=now + TOTP_SKEW {
        if totp.check(code, step * TOTP_STEP) {
            matched = Some(step);
        }
    }
    Ok(matched)
}

/// Checks `code` for `who` and grants their account admin rights until the tenant's maximum
/// session length from `now`; buffers the login for upload.
pub fn login(
    state: &StateDir,
    backend: &dyn AccountBackend,
    who: &Who,
    code: &str,
    now: DateTime<Utc>,
) -> Result<Granted, OfflineError> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != TOTP_DIGITS || !code.chars().all(|c| c.is_ascii_digit()) {
        return Err(OfflineError::CodeFormat(code.chars().count()));
    }
    let _lock = state.lock()?;
    let stored = load_secrets(state)?.ok_or_else(|| OfflineError::NoSecrets {
        path: state.file(OFFLINE_SECRETS).display().to_string(),
    })?;
    let secret = find_secret(&stored.secrets.secrets, who)?;
    let account = secret.account.to_string();
    let guard = Guard::count(state, secret, now)?;
    let unix_time = u64::try_from(now.timestamp()).unwrap_or(0);
    let step = match code_step(&secret.secret, &code, unix_time) {
        Ok(Some(step)) => step,
        Ok(None) => return Err(guard.wrong(state, who, now)),
        Err(InvalidSecret) => {
            guard.unchecked(state)?;
            return Err(OfflineError::BadSecret { account });
        }
    };
    // A right code, even one used before: it is not a guess.
    guard.right(state)?;
    let mut offline = load_state(state)?;
    let used_key = format!("{account}#{}", secret.generation);
    if offline
        .last_steps
        .get(&used_key)
        .is_some_and(|last| step <= *last)
    {
        return Err(OfflineError::ReusedCode { account });
    }
    // Spent before anything else happens: a crash from here on cannot make it usable again.
    offline.last_steps.insert(used_key, step);
    state.write_json(OFFLINE_STATE, &offline)?;

    let machine = |reason: String| OfflineError::Machine {
        account: account.clone(),
        reason,
    };
    let group = stored.secrets.admin_group.to_string();
    let seen = backend
        .observe(&account)
        .map_err(|e| machine(e.to_string()))?;
    let mut managed = state.accounts()?;
    if seen.present && !managed.manages(&account) {
        return Err(OfflineError::NotManaged { account });
    }
    if !seen.present {
        // The server says this account of ours exists here; someone removed it. Recreate it,
        // recorded as ours first (as the daemon does).
        managed.accounts.entry(account.clone()).or_default();
        state.save_accounts(&managed)?;
        backend
            .ensure_account(&account)
            .map_err(|e| machine(e.to_string()))?;
    }
    let already_member = seen.groups.contains(&group);

    let password = new_password();
    backend
        .set_password_hash(&account, &os::hash_password(&password))
        .map_err(|e| machine(e.to_string()))?;
    let hash = backend
        .observe(&account)
        .map_err(|e| machine(e.to_string()))?
        .password_hash
        .filter(|hash| os::password_matches(&password, hash))
        .ok_or_else(|| machine("the shadow file does not hold the new password".into()))?;
    managed
        .accounts
        .entry(account.clone())
        .or_default()
        .password = Some(SetPassword {
        version: None,
        hash: hash.clone(),
    });
    state.save_accounts(&managed)?;
    backend
        .add_to_group(&account, &group)
        .map_err(|e| machine(e.to_string()))?;
    let in_group = backend
        .observe(&account)
        .map_err(|e| machine(e.to_string()))?
        .groups
        .contains(&group);
    if !in_group {
        return Err(machine(format!("{account} is not listed in {group}")));
    }

    let until = now + Duration::minutes(i64::from(stored.secrets.max_session_minutes));
    let login = OfflineLogin {
        login_id: Uuid::new_v4(),
        account: secret.account.clone(),
        technician_id: secret.technician_id.map(|t| t.0),
        claimed_by: match who {
            Who::Shared { name } => Some(name.clone()),
            Who::Technician(_) => None,
        },
        generation: secret.generation,
        admin_group: Some(stored.secrets.admin_group.clone()),
        used_at: now,
        until,
    };
    // The audit event first: whatever happens next, the server will hear of this login.
    state.write_json(&outbox_file(&login.login_id), &login)?;
    offline.grants.push(Grant {
        login_id: login.login_id,
        account: account.clone(),
        group: group.clone(),
        until,
        already_member,
        hash,
    });
    state.write_json(OFFLINE_STATE, &offline)?;
    Ok(Granted {
        login_id: login.login_id,
        account,
        password,
        group,
        until,
    })
}

fn find_secret<'a>(
    secrets: &'a [OfflineSecret],
    who: &Who,
) -> Result<&'a OfflineSecret, OfflineError> {
    let matching = secrets.iter().filter(|s| match who {
        Who::Technician(name) => {
            s.technician_id.is_some()
                && (s.username.as_deref() == Some(name.as_str()) || s.account.as_str() == name)
        }
        Who::Shared { .. } => s.technician_id.is_none(),
    });
    matching
        .max_by_key(|s| s.generation)
        .ok_or_else(|| match who {
            Who::Technician(name) => OfflineError::UnknownTechnician(name.clone()),
            Who::Shared { .. } => OfflineError::NoSharedSecret,
        })
}

/// A fresh random password from the operating system's CSPRNG (through `rand`'s ThreadRng),
/// with an upper-case letter, a lower-case letter and a digit.
fn new_password() -> String {
    let mut rng = rand::rng();
    loop {
        let password: String = (0..PASSWORD_LENGTH)
            .filter_map(|_| PASSWORD_ALPHABET.choose(&mut rng).map(|&b| char::from(b)))
            .collect();
        let has = |class: fn(&char) -> bool| password.chars().any(|c| class(&c));
        if has(char::is_ascii_uppercase)
            && has(char::is_ascii_lowercase)
            && has(char::is_ascii_digit)
        {
            return password;
        }
    }
}

fn outbox_file(login_id: &Uuid) -> String {
    format!("{OUTBOX}/{login_id}.json")
}

fn lockout_file(lockout_id: &Uuid) -> String {
    format!("{LOCKOUT_OUTBOX}/{lockout_id}.json")
}

/// The offline logins not yet uploaded, sorted by `used_at` (file name order says nothing).
pub fn pending(state: &StateDir) -> Result<Vec<(PathBuf, OfflineLogin)>, StateError> {
    let mut logins: Vec<(PathBuf, OfflineLogin)> = read_outbox(state, OUTBOX, "offline login")?;
    logins.sort_by_key(|(_, login)| login.used_at);
    Ok(logins)
}

/// The offline-login lockouts not yet uploaded, sorted by `locked_at`.
pub fn pending_lockouts(state: &StateDir) -> Result<Vec<(PathBuf, OfflineLockout)>, StateError> {
    let mut lockouts: Vec<(PathBuf, OfflineLockout)> =
        read_outbox(state, LOCKOUT_OUTBOX, "offline lockout")?;
    lockouts.sort_by_key(|(_, lockout)| lockout.locked_at);
    Ok(lockouts)
}

fn read_outbox<T: serde::de::DeserializeOwned>(
    state: &StateDir,
    outbox: &str,
    what: &str,
) -> Result<Vec<(PathBuf, T)>, StateError> {
    let dir = state.file(outbox);
    let entries = std::fs::read_dir(&dir).map_err(|source| StateError::Io {
        path: dir.display().to_string(),
        action: "list",
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        match crate::state::read_json::<T>(&path) {
            Ok(Some(item)) => found.push((path, item)),
            Ok(None) => {}
            // Kept, never deleted: an operator can repair it.
            Err(e) => tracing::warn!(error = %e, "skipping an unreadable buffered {what}"),
        }
    }
    Ok(found)
}

/// Forgets the grants of `account` (in `group`, or in any group) because the server decides
/// its membership from now on. The caller holds the state lock.
pub fn drop_grants(state: &StateDir, account: &str, group: Option<&str>) -> Result<(), StateError> {
    let mut offline = load_state(state)?;
    let before = offline.grants.len();
    offline
        .grants
        .retain(|g| !(g.account == account && group.is_none_or(|group| g.group == group)));
    if offline.grants.len() != before {
        state.write_json(OFFLINE_STATE, &offline)?;
    }
    Ok(())
}

/// The end of the offline grant of `account` in force (the latest, if several), if any: the
/// account must not be deleted under it.
pub fn grant_in_force(
    state: &StateDir,
    account: &str,
) -> Result<Option<DateTime<Utc>>, StateError> {
    Ok(load_state(state)?
        .grants
        .iter()
        .filter(|g| g.account == account && !g.already_member)
        .map(|g| g.until)
        .max())
}

/// When the next offline grant expires, if any.
pub fn next_expiry(state: &StateDir) -> Result<Option<DateTime<Utc>>, StateError> {
    Ok(load_state(state)?.grants.iter().map(|g| g.until).min())
}

/// Takes back every grant whose `until` has passed: out of the admin group (unless it was a
/// member before), and a password nobody knows if the printed one is still set. A grant that
/// cannot be taken back now stays, to be tried again. Returns what was taken back.
pub fn expire(
    state: &StateDir,
    backend: &dyn AccountBackend,
    now: DateTime<Utc>,
) -> Result<Vec<Grant>, StateError> {
    let _lock = state.lock()?;
    let mut offline = load_state(state)?;
    let (due, mut kept): (Vec<Grant>, Vec<Grant>) =
        offline.grants.drain(..).partition(|g| g.until <= now);
    if due.is_empty() {
        return Ok(Vec::new());
    }
    let mut taken_back = Vec::new();
    for grant in due {
        match take_back(state, backend, &grant) {
            Ok(()) => taken_back.push(grant),
            Err(reason) => {
                tracing::warn!(account = %grant.account, %reason, "cannot take back an expired offline login yet");
                kept.push(grant);
            }
        }
    }
    offline.grants = kept;
    state.write_json(OFFLINE_STATE, &offline)?;
    Ok(taken_back)
}

fn take_back(state: &StateDir, backend: &dyn AccountBackend, grant: &Grant) -> Result<(), String> {
    let account = grant.account.as_str();
    if !grant.already_member {
        backend
            .remove_from_group(account, &grant.group)
            .map_err(|e| e.to_string())?;
    }
    let seen = backend.observe(account).map_err(|e| e.to_string())?;
    if !grant.already_member && seen.groups.contains(&grant.group) {
        return Err(format!("{account} is still listed in {}", grant.group));
    }
    if seen.present
        && !grant.already_member
        && seen.password_hash.as_deref() == Some(grant.hash.as_str())
    {
        let hash = os::hash_password(&new_password());
        backend
            .set_password_hash(account, &hash)
            .map_err(|e| e.to_string())?;
        let mut managed = state.accounts().map_err(|e| e.to_string())?;
        if let Some(record) = managed.accounts.get_mut(account) {
            record.password = Some(SetPassword {
                version: None,
                hash,
            });
            state.save_accounts(&managed).map_err(|e| e.to_string())?;
        }
    }
    if !grant.already_member {
        // The agent cannot ask the server for the policy here: it takes the default of every
        // login mode (end the logons, clear sudo's cached credentials), so the offline access
        // ends for real too.
        backend.end_logons(account).map_err(|e| e.to_string())?;
        backend.clear_sudo(account).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::os::memory::MemoryAccounts;
    use crate::state::ManagedAccount;
    use latchkey_domain::ids::TechnicianId;
    use latchkey_domain::names::GroupName;

    const SECRET: &str = "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP";

    fn code_at(unix_time: u64) -> String {
        let bytes = totp_rs::Secret::Encoded(SECRET.into()).to_bytes().unwrap();
        totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, 30, bytes, None, "t".into())
            .unwrap()
            .generate(unix_time)
    }

    fn setup() -> (tempfile::TempDir, StateDir, MemoryAccounts) {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("state")).unwrap();
        let backend = MemoryAccounts::new(&["Administrators"]);
        backend.ensure_account("msp-nik").unwrap();
        let mut managed = state.accounts().unwrap();
        managed
            .accounts
            .insert("msp-nik".into(), ManagedAccount::default());
        state.save_accounts(&managed).unwrap();
        let secrets = OfflineSecrets {
            admin_group: GroupName::parse("Administrators").unwrap(),
            max_session_minutes: 60,
            secrets: vec![OfflineSecret {
                account: AccountName::parse("msp-nik").unwrap(),
                technician_id: Some(TechnicianId(Uuid::nil())),
                username: Some("nik".into()),
                generation: 1,
                secret: SECRET.into(),
            }],
        };
        store_secrets(&state, secrets, Utc::now()).unwrap();
        (dir, state, backend)
    }

    fn at(unix: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(unix, 0).unwrap()
    }

    #[test]
    fn a_code_is_valid_one_step_either_side_and_says_which_step() {
        let t = 1_700_000_010;
        assert_eq!(code_step(SECRET, &code_at(t), t), Ok(Some(t / 30)));
        assert_eq!(code_step(SECRET, &code_at(t - 30), t), Ok(Some(t / 30 - 1)));
        assert_eq!(code_step(SECRET, &code_at(t + 30), t), Ok(Some(t / 30 + 1)));
        assert_eq!(code_step(SECRET, &code_at(t - 90), t), Ok(None));
        assert_eq!(code_step("not base32!", "123456", t), Err(InvalidSecret));
    }

    #[test]
    fn a_code_grants_once_and_is_refused_on_reuse_and_an_older_code_too() {
        let (_dir, state, backend) = setup();
        let t = 1_700_000_010;
        let who = Who::Technician("nik".into());
        let granted = login(&state, &backend, &who, &code_at(t), at(t as i64)).unwrap();
        assert_eq!(granted.account, "msp-nik");
        let seen = backend.observe("msp-nik").unwrap();
        assert_eq!(seen.groups, vec!["Administrators".to_string()]);
        assert!(os::password_matches(
            &granted.password,
            &seen.password_hash.unwrap()
        ));
        assert_eq!(granted.until, at(t as i64 + 3600));
        let reused = login(&state, &backend, &who, &code_at(t), at(t as i64 + 5));
        assert!(
            matches!(reused, Err(OfflineError::ReusedCode { .. })),
            "{:?}",
            reused.err()
        );
        let older = login(&state, &backend, &who, &code_at(t - 30), at(t as i64 + 5));
        assert!(matches!(older, Err(OfflineError::ReusedCode { .. })));
        let next = login(&state, &backend, &who, &code_at(t + 30), at(t as i64 + 30));
        assert!(next.is_ok());
        assert_eq!(
            pending(&state).unwrap().len(),
            2,
            "both logins are buffered"
        );
    }

    /// Issue 12: a shared-account login was audited as "a technician". The name the person
    /// gave travels with the buffered login; a named login carries none.
    #[test]
    fn a_shared_login_buffers_the_name_its_user_gave() {
        let (_dir, state, backend) = setup();
        let mut stored = load_secrets(&state).unwrap().unwrap().secrets;
        stored.secrets[0].technician_id = None;
        stored.secrets[0].username = None;
        store_secrets(&state, stored, Utc::now()).unwrap();
        let t = 1_700_000_010;
        let who = Who::Shared {
            name: ClaimedName::parse("Nik Potter").unwrap(),
        };
        login(&state, &backend, &who, &code_at(t), at(t as i64)).unwrap();
        let buffered = pending(&state).unwrap();
        assert_eq!(buffered.len(), 1);
        assert_eq!(
            buffered[0].1.claimed_by.as_ref().map(|n| n.as_str()),
            Some("Nik Potter")
        );
        assert_eq!(buffered[0].1.technician_id, None);
    }

    #[test]
    fn a_wrong_code_an_unknown_technician_and_a_malformed_code_are_refused() {
        let (_dir, state, backend) = setup();
        let t = 1_700_000_010;
        let wrong = format!(
            "{:06}",
            (code_at(t).parse::<u32>().unwrap() + 1) % 1_000_000
        );
        let who = Who::Technician("nik".into());
        assert!(matches!(
            login(&state, &backend, &who, &wrong, at(t as i64)),
            Err(OfflineError::BadCode { .. })
        ));
        assert!(matches!(
            login(
                &state,
                &backend,
                &Who::Technician("ann".into()),
                &code_at(t),
                at(t as i64)
            ),
            Err(OfflineError::UnknownTechnician(_))
        ));
        assert!(matches!(
            login(
                &state,
                &backend,
                &Who::Shared {
                    name: ClaimedName::parse("Ann Other").unwrap()
                },
                &code_at(t),
                at(t as i64)
            ),
            Err(OfflineError::NoSharedSecret)
        ));
        assert!(matches!(
            login(&state, &backend, &who, "12345", at(t as i64)),
            Err(OfflineError::CodeFormat(5))
        ));
        assert!(backend.observe("msp-nik").unwrap().groups.is_empty());
        assert!(pending(&state).unwrap().is_empty());
    }

    fn wrong_at(unix_time: u64) -> String {
        format!(
            "{:06}",
            (code_at(unix_time).parse::<u32>().unwrap() + 1) % 1_000_000
        )
    }

    #[test]
    fn five_wrong_codes_lock_the_account_and_buffer_one_lockout_without_the_codes() {
        let (_dir, state, backend) = setup();
        let t = 1_700_000_010;
        let who = Who::Technician("nik".into());
        let mut wrong_codes = Vec::new();
        for i in 0..MAX_WRONG_CODES as i64 {
            let now = t + i * 10;
            let wrong = wrong_at(now as u64);
            let refused = login(&state, &backend, &who, &wrong, at(now))
                .err()
                .expect("refused");
            wrong_codes.push(wrong);
            if i + 1 < MAX_WRONG_CODES as i64 {
                assert!(
                    matches!(&refused, OfflineError::BadCode { left, .. }
                        if *left == MAX_WRONG_CODES - 1 - i as usize),
                    "{refused}"
                );
                assert!(refused.to_string().contains("more wrong code"), "{refused}");
            } else {
                assert!(
                    matches!(
                        &refused,
                        OfflineError::TooManyWrongCodes { failures: 5, .. }
                    ),
                    "{refused}"
                );
                assert!(refused.to_string().contains("locked until"), "{refused}");
            }
        }
        let locked_at = t + 40;
        // The right code is refused too while the lockout lasts, unchecked.
        let now = locked_at + 60;
        let refused = login(&state, &backend, &who, &code_at(now as u64), at(now))
            .err()
            .expect("refused");
        assert!(
            matches!(&refused, OfflineError::LockedOut { minutes: 14, .. }),
            "{refused}"
        );
        assert!(backend.observe("msp-nik").unwrap().groups.is_empty());

        let lockouts = pending_lockouts(&state).unwrap();
        assert_eq!(lockouts.len(), 1, "one lockout, buffered once");
        let (path, lockout) = &lockouts[0];
        assert_eq!(lockout.account.as_str(), "msp-nik");
        assert_eq!(lockout.technician_id, Some(Uuid::nil()));
        assert_eq!(lockout.failures, 5);
        assert_eq!(lockout.locked_at, at(locked_at));
        assert_eq!(lockout.locked_until, at(locked_at) + LOCKOUT);
        let mut kept = std::fs::read_to_string(path).unwrap();
        kept.push_str(&std::fs::read_to_string(state.file(OFFLINE_ATTEMPTS)).unwrap());
        for code in &wrong_codes {
            assert!(!kept.contains(code.as_str()), "a code was kept: {kept}");
        }
        assert!(pending(&state).unwrap().is_empty(), "no login");

        // Once the lockout is over, the right code works again.
        let after = locked_at + LOCKOUT.num_seconds();
        let granted = login(&state, &backend, &who, &code_at(after as u64), at(after));
        assert!(granted.is_ok(), "{:?}", granted.err());
        assert_eq!(pending_lockouts(&state).unwrap().len(), 1);
    }

    #[test]
    fn a_right_code_forgives_the_wrong_ones_and_old_wrong_ones_are_forgotten() {
        let (_dir, state, backend) = setup();
        let t = 1_700_000_010;
        let who = Who::Technician("nik".into());
        let wrong = |now: i64| login(&state, &backend, &who, &wrong_at(now as u64), at(now));
        for i in 0..4 {
            assert!(matches!(wrong(t + i), Err(OfflineError::BadCode { .. })));
        }
        assert!(login(&state, &backend, &who, &code_at(t as u64), at(t + 5)).is_ok());
        for i in 0..4 {
            assert!(matches!(
                wrong(t + 100 + i),
                Err(OfflineError::BadCode { left, .. }) if left == 4 - i as usize
            ));
        }
        // Those four are older than the window by then: four more do not lock.
        let later = t + 100 + WRONG_CODE_WINDOW.num_seconds();
        for i in 0..4 {
            assert!(matches!(
                wrong(later + i),
                Err(OfflineError::BadCode { .. })
            ));
        }
        assert!(pending_lockouts(&state).unwrap().is_empty());
    }

    #[test]
    fn an_attempt_counts_before_its_code_is_checked_so_killing_the_check_gives_nothing_back() {
        let (_dir, state, backend) = setup();
        let t = 1_700_000_010;
        let stored = load_secrets(&state).unwrap().unwrap();
        let secret = &stored.secrets.secrets[0];
        // Five runs killed right after counting, before their codes were checked.
        for i in 0..MAX_WRONG_CODES as i64 {
            let guard = Guard::count(&state, secret, at(t + i));
            assert!(guard.is_ok());
        }
        let last_wrong = load_attempts(&state).unwrap().accounts["msp-nik"]
            .wrong
            .last()
            .unwrap()
            .id;
        let who = Who::Technician("nik".into());
        let now = t + 10;
        let refused = login(&state, &backend, &who, &code_at(now as u64), at(now));
        assert!(
            matches!(refused, Err(OfflineError::LockedOut { .. })),
            "{:?}",
            refused.err()
        );
        let lockouts = pending_lockouts(&state).unwrap();
        assert_eq!(lockouts.len(), 1);
        assert_eq!(
            lockouts[0].1.lockout_id, last_wrong,
            "named by the last wrong attempt, so a lockout written again keeps its id"
        );
        // An unusable stored secret does not count the attempt.
        let mut broken = stored.secrets.clone();
        broken.secrets[0].secret = "not base32!".into();
        broken.secrets[0].account = AccountName::parse("msp-other").unwrap();
        store_secrets(&state, broken, at(t)).unwrap();
        assert!(matches!(
            login(&state, &backend, &who, "123456", at(now)),
            Err(OfflineError::BadSecret { .. })
        ));
        let attempts = load_attempts(&state).unwrap();
        assert!(attempts.accounts["msp-other"].wrong.is_empty());
    }

    #[test]
    fn an_account_latchkey_did_not_create_is_not_granted() {
        let (_dir, state, backend) = setup();
        state.save_accounts(&Default::default()).unwrap();
        let t = 1_700_000_010;
        let refused = login(
            &state,
            &backend,
            &Who::Technician("nik".into()),
            &code_at(t),
            at(t as i64),
        );
        assert!(matches!(refused, Err(OfflineError::NotManaged { .. })));
        assert!(backend.observe("msp-nik").unwrap().groups.is_empty());
    }

    #[test]
    fn an_expired_grant_is_taken_back_and_its_password_made_unknown() {
        let (_dir, state, backend) = setup();
        let t = 1_700_000_010;
        let granted = login(
            &state,
            &backend,
            &Who::Technician("nik".into()),
            &code_at(t),
            at(t as i64),
        )
        .unwrap();
        assert_eq!(next_expiry(&state).unwrap(), Some(granted.until));
        assert!(expire(&state, &backend, at(t as i64 + 60))
            .unwrap()
            .is_empty());
        let taken = expire(&state, &backend, granted.until).unwrap();
        assert_eq!(taken.len(), 1);
        let seen = backend.observe("msp-nik").unwrap();
        assert!(seen.groups.is_empty());
        assert!(!os::password_matches(
            &granted.password,
            &seen.password_hash.unwrap()
        ));
        assert_eq!(next_expiry(&state).unwrap(), None);
    }

    #[test]
    fn the_server_taking_over_the_membership_drops_the_grant() {
        let (_dir, state, backend) = setup();
        let t = 1_700_000_010;
        login(
            &state,
            &backend,
            &Who::Technician("nik".into()),
            &code_at(t),
            at(t as i64),
        )
        .unwrap();
        drop_grants(&state, "msp-nik", Some("Administrators")).unwrap();
        assert_eq!(next_expiry(&state).unwrap(), None);
    }
}
