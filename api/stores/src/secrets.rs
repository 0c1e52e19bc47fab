//! Secrets (DESIGN.md §3): random passwords and offline TOTP secrets, generated with a CSPRNG
//! and kept encrypted (XChaCha20-Poly1305, key from configuration) in their own SQLite file or
//! the shared PostgreSQL schema (`latchkey_sql::durable`).
//! Nothing here may ever put a secret value in the event log, a log line, a `Debug` or an error.

use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use latchkey_domain::ids::ComputerId;
use latchkey_domain::names::AccountName;
use latchkey_domain::policy::PasswordPolicy;
use latchkey_sql::{params, OptionalExtension, Sql, SqlError};
use latchkey_sql::{Durable, Place};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::RngExt;
use std::fmt;
use std::path::{Path, PathBuf};
use zeroize::{Zeroize, Zeroizing};

/// The environment variable (and config key) the secret-store key comes from.
pub const KEY_VARIABLE: &str = "LATCHKEY_SECRET_KEY";

const LOWERCASE: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
const UPPERCASE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const DIGITS: &[u8] = b"0123456789";
/// Symbols that need no quoting in a Windows or POSIX command line argument list: no quotes,
/// backslash, backtick, space or `%`, so an agent can pass the password on without escaping bugs.
pub const SYMBOLS: &[u8] = b"!#$&()*+,-./:;<=>?@[]^_{|}~";

/// A secret value: a password, a base32 TOTP secret or an `otpauth://` URI carrying one.
/// Its `Debug` is redacted, it has no `Display`, and its memory is wiped on drop; read it
/// with [`Secret::expose`] only where it leaves the server (to the agent, to a reveal).
#[derive(Clone)]
pub struct Secret(Zeroizing<String>);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(Zeroizing::new(value))
    }

    /// The plaintext. Never log it, never put it in an event or an error.
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Errors of the secret key. Messages never contain the key or any part of it.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{KEY_VARIABLE} must be 32 bytes of base64 (it is not valid base64)")]
    NotBase64,
    #[error("{KEY_VARIABLE} must be 32 bytes of base64 (got {got} bytes)")]
    WrongLength { got: usize },
}

/// Errors of secret generation and of the secret store. Messages name references, labels and
/// paths, never a secret value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("secret reference must be 1-256 printable characters without spaces (got {got:?})")]
    InvalidReference { got: String },
    #[error(
        "{KEY_VARIABLE} does not match the key the secret store {path} was created with; \
         start the server with the original key"
    )]
    WrongKey { path: PathBuf },
    #[error(
        "secret {reference} could not be decrypted: wrong {KEY_VARIABLE}, or the record was \
         altered or moved from another reference"
    )]
    Decrypt { reference: String },
    #[error("could not encrypt secret {reference}")]
    Encrypt { reference: String },
    #[error("TOTP account label must not contain ':' (got {label:?})")]
    TotpLabel { label: String },
    #[error("the TOTP secret is not a valid base32 secret of at least 128 bits")]
    TotpSecret,
    #[error("secret store {path}: {source}")]
    Storage {
        path: PathBuf,
        #[source]
        source: SqlError,
    },
}

/// The 32-byte secret-store key, from configuration (never from the event store).
#[derive(Clone)]
pub struct Key(Zeroizing<[u8; 32]>);

impl Key {
    /// Parses standard base64 (padded or not, surrounding whitespace ignored).
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let text = text.trim();
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .map_err(|_| KeyError::NotBase64)?;
        let result = <[u8; 32]>::try_from(bytes.as_slice())
            .map(|key| Self(Zeroizing::new(key)))
            .map_err(|_| KeyError::WrongLength { got: bytes.len() });
        bytes.zeroize();
        result
    }

    /// A new random key, e.g. for `latchkey` to print on first start or for tests.
    pub fn generate() -> Self {
        let mut key = Zeroizing::new([0u8; 32]);
        rand::rng().fill(&mut key[..]);
        Self(key)
    }

    /// The key as standard base64, the form [`Key::from_base64`] reads. Show it only to the
    /// operator who must keep it.
    pub fn to_base64(&self) -> Secret {
        Secret::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]))
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(<redacted>)")
    }
}

/// The id under which the secret store keeps one secret, and which events carry instead of
/// the secret: `password:<computer-id>:<account>:<version>` or
/// `totp:<computer-id>:<account>:<generation>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretRef(String);

impl SecretRef {
    const MAX_LENGTH: usize = 256;

    /// The reference of password `version` of `account` on `computer`.
    pub fn password(computer: ComputerId, account: &AccountName, version: u32) -> Self {
        Self(format!(
            "password:{computer}:{}:{version}",
            account.as_str()
        ))
    }

    /// The reference of TOTP secret `generation` of `account` on `computer`.
    pub fn totp(computer: ComputerId, account: &AccountName, generation: u32) -> Self {
        Self(format!("totp:{computer}:{}:{generation}", account.as_str()))
    }

    /// Accepts any reference of 1-256 printable, non-space characters (e.g. read back from a
    /// stored event).
    pub fn parse(value: impl Into<String>) -> Result<Self, SecretError> {
        let value: String = value.into();
        let ok = !value.is_empty()
            && value.len() <= Self::MAX_LENGTH
            && value.chars().all(|c| {
                c.is_ascii_graphic() || (!c.is_ascii() && !c.is_control() && !c.is_whitespace())
            });
        if ok {
            Ok(Self(value))
        } else {
            Err(SecretError::InvalidReference {
                got: value.chars().take(80).collect(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A random password to `policy`: exactly `length` characters, only from the enabled
/// classes, at least one from each, in uniformly random order.
pub fn generate_password(policy: &PasswordPolicy) -> Secret {
    let alphabet = policy.alphabet();
    let classes: Vec<&[u8]> = [
        (alphabet.lowercase, LOWERCASE),
        (alphabet.uppercase, UPPERCASE),
        (alphabet.digits, DIGITS),
        (alphabet.symbols, SYMBOLS),
    ]
    .into_iter()
    .filter_map(|(on, chars)| on.then_some(chars))
    .collect();
    let all: Vec<u8> = classes.concat();
    let length = usize::from(policy.length());
    // ThreadRng is a CSPRNG (ChaCha12) reseeded from the operating system.
    let mut rng = rand::rng();
    let mut password = Zeroizing::new(Vec::<u8>::with_capacity(length.max(classes.len())));
    for class in &classes {
        password.extend(class.choose(&mut rng));
    }
    while password.len() < length {
        password.extend(all.choose(&mut rng));
    }
    password.shuffle(&mut rng);
    // Every byte is ASCII from the tables above.
    Secret::new(password.iter().map(|&b| char::from(b)).collect())
}

/// TOTP parameters every authenticator app understands (RFC 6238 defaults).
const TOTP_DIGITS: usize = 6;
const TOTP_STEP: u64 = 30;
/// One step either side, for the drift between the computer's clock and the phone's.
const TOTP_SKEW: u8 = 1;
/// The issuer shown in authenticator apps.
pub const TOTP_ISSUER: &str = "Latchkey";

/// A new offline TOTP secret: 20 random bytes (160 bits, RFC 4226's recommendation), as the
/// unpadded base32 text an authenticator app takes.
pub fn generate_totp_secret() -> Secret {
    let mut bytes = Zeroizing::new(vec![0u8; 20]);
    rand::rng().fill(&mut bytes[..]);
    // Display of an encoded totp-rs secret is its base32 text.
    Secret::new(
        totp_rs::Secret::Raw(bytes.to_vec())
            .to_encoded()
            .to_string(),
    )
}

fn totp(secret: &Secret, account_label: &str) -> Result<totp_rs::TOTP, SecretError> {
    let bytes = totp_rs::Secret::Encoded(secret.expose().to_owned())
        .to_bytes()
        .map_err(|_| SecretError::TotpSecret)?;
    totp_rs::TOTP::new(
        totp_rs::Algorithm::SHA1,
        TOTP_DIGITS,
        TOTP_SKEW,
        TOTP_STEP,
        bytes,
        Some(TOTP_ISSUER.to_owned()),
        account_label.to_owned(),
    )
    .map_err(|err| match err {
        totp_rs::TotpUrlError::AccountName(_) => SecretError::TotpLabel {
            label: account_label.chars().take(80).collect(),
        },
        _ => SecretError::TotpSecret,
    })
}

/// The account label of a TOTP secret: `<technician email>@<hostname>`, e.g.
/// `nik@nikpot.com@W11-L-PASSWORD`.
pub fn totp_label(technician: &str, hostname: &str) -> String {
    format!("{technician}@{hostname}")
}

/// The `otpauth://totp/Latchkey:<label>?secret=…&issuer=Latchkey` URI (SHA1, 6 digits, 30 s)
/// for an authenticator app. It contains the secret, so it is a [`Secret`] too.
pub fn totp_uri(secret: &Secret, account_label: &str) -> Result<Secret, SecretError> {
    Ok(Secret::new(totp(secret, account_label)?.get_url()))
}

/// Whether `code` is the TOTP code of `secret` at `unix_time` (seconds), one step of clock
/// drift allowed either side. Compares in constant time; a malformed secret never verifies.
pub fn verify_totp(secret: &Secret, code: &str, unix_time: u64) -> bool {
    match totp(secret, "verify") {
        Ok(totp) => totp.check(code.trim(), unix_time),
        Err(_) => false,
    }
}

/// The code of `secret` at `unix_time`; what the technician's authenticator app shows.
pub fn totp_code(secret: &Secret, unix_time: u64) -> Result<Secret, SecretError> {
    Ok(Secret::new(totp(secret, "code")?.generate(unix_time)))
}

/// Associated data of one record: binds the ciphertext to its reference (and to this format),
/// so a ciphertext copied to another row does not decrypt.
fn associated_data(reference: &str) -> Vec<u8> {
    let mut aad = b"latchkey-secret-v1\0".to_vec();
    aad.extend_from_slice(reference.as_bytes());
    aad
}

/// The reference under which the store keeps a known value, to tell a wrong key at start-up.
const KEY_CHECK_REFERENCE: &str = "latchkey:key-check";
const KEY_CHECK_VALUE: &[u8] = b"latchkey secret store key check";

/// Encrypted secrets at rest in their own SQLite file (WAL, synchronous=FULL) or in
/// PostgreSQL. Each record is XChaCha20-Poly1305 with a random 192-bit nonce and its
/// reference as associated data.
///
/// UNFINISHED: per-tenant keys and tenant deletion by destroying its key (crypto-shredding,
/// DESIGN.md §3) are not built; one key covers the whole store.
pub struct SecretStore {
    cipher: XChaCha20Poly1305,
    db: Durable,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("path", &self.db.path())
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Opens (or creates) the store at `path`. Fails with [`SecretError::WrongKey`] if the
    /// store was created with another key.
    pub fn open(place: impl Into<Place>, key: &Key) -> Result<Self, SecretError> {
        let place = place.into();
        let path = place.path();
        let storage = |source| SecretError::Storage {
            path: path.clone(),
            source,
        };
        let db = Durable::open(
            place,
            "CREATE TABLE IF NOT EXISTS secrets (
                     reference  TEXT PRIMARY KEY NOT NULL,
                     nonce      BLOB NOT NULL,
                     ciphertext BLOB NOT NULL
                 ) WITHOUT ROWID;
                 CREATE TABLE IF NOT EXISTS key_check (
                     id         INTEGER PRIMARY KEY CHECK (id = 1),
                     nonce      BLOB NOT NULL,
                     ciphertext BLOB NOT NULL
                 );",
        )
        .map_err(storage)?;
        let store = Self {
            cipher: XChaCha20Poly1305::new(chacha20poly1305::Key::from_slice(&key.0[..])),
            db,
        };
        store.check_key()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        self.db.path()
    }

    fn storage(&self, source: SqlError) -> SecretError {
        SecretError::Storage {
            path: self.db.path().to_path_buf(),
            source,
        }
    }

    fn check_key(&self) -> Result<(), SecretError> {
        self.db.transaction(
            |e| self.storage(e),
            |tx| {
                let stored: Option<(Vec<u8>, Vec<u8>)> = tx
                    .query_row(
                        "SELECT nonce, ciphertext FROM key_check WHERE id = 1",
                        params![],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()
                    .map_err(|e| self.storage(e))?;
                match stored {
                    Some((nonce, ciphertext)) => {
                        let plain = self
                            .decrypt_raw(KEY_CHECK_REFERENCE, &nonce, &ciphertext)
                            .ok_or_else(|| SecretError::WrongKey {
                                path: self.db.path().to_path_buf(),
                            })?;
                        if plain.as_slice() != KEY_CHECK_VALUE {
                            return Err(SecretError::WrongKey {
                                path: self.db.path().to_path_buf(),
                            });
                        }
                    }
                    None => {
                        let (nonce, ciphertext) =
                            self.encrypt_raw(KEY_CHECK_REFERENCE, KEY_CHECK_VALUE)?;
                        tx.execute(
                            "INSERT INTO key_check (id, nonce, ciphertext) VALUES (1, ?1, ?2)",
                            params![nonce, ciphertext],
                        )
                        .map_err(|e| self.storage(e))?;
                    }
                }
                Ok(())
            },
        )
    }

    fn encrypt_raw(
        &self,
        reference: &str,
        plain: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), SecretError> {
        let mut nonce = [0u8; 24];
        rand::rng().fill(&mut nonce[..]);
        let aad = associated_data(reference);
        let ciphertext = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plain,
                    aad: &aad,
                },
            )
            .map_err(|_| SecretError::Encrypt {
                reference: reference.to_owned(),
            })?;
        Ok((nonce.to_vec(), ciphertext))
    }

    fn decrypt_raw(
        &self,
        reference: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        if nonce.len() != 24 {
            return None;
        }
        let aad = associated_data(reference);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .ok()
            .map(Zeroizing::new)
    }

    fn decrypt(
        &self,
        reference: &SecretRef,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Secret, SecretError> {
        let failed = || SecretError::Decrypt {
            reference: reference.to_string(),
        };
        let plain = self
            .decrypt_raw(reference.as_str(), nonce, ciphertext)
            .ok_or_else(failed)?;
        let text = std::str::from_utf8(&plain).map_err(|_| failed())?;
        Ok(Secret::new(text.to_owned()))
    }

    /// Stores `secret` under `reference` unless something is already stored there, and returns
    /// what is stored: the first value wins, so asking twice for the same rotation gives the
    /// same password. The insert that does nothing when the reference is taken decides,
    /// durably, before this returns; no lock is needed (on PostgreSQL a concurrent insert of
    /// the same reference waits for the first to commit or roll back).
    pub fn put_if_absent(
        &self,
        reference: &SecretRef,
        secret: &Secret,
    ) -> Result<Secret, SecretError> {
        let (nonce, ciphertext) =
            self.encrypt_raw(reference.as_str(), secret.expose().as_bytes())?;
        let connection = self.db.lock();
        let inserted = connection
            .execute(
                "INSERT INTO secrets (reference, nonce, ciphertext) VALUES (?1, ?2, ?3)
                 ON CONFLICT (reference) DO NOTHING",
                params![reference.as_str(), nonce, ciphertext],
            )
            .map_err(|e| self.storage(e))?;
        if inserted == 1 {
            return Ok(secret.clone());
        }
        // Secrets are never deleted, so the one that won is there.
        self.read(&*connection, reference)?
            .ok_or_else(|| self.storage(SqlError::NoRows))
    }

    /// The secret stored under `reference`, if any.
    pub fn get(&self, reference: &SecretRef) -> Result<Option<Secret>, SecretError> {
        let connection = self.db.lock();
        self.read(&*connection, reference)
    }

    fn read(
        &self,
        connection: &dyn Sql,
        reference: &SecretRef,
    ) -> Result<Option<Secret>, SecretError> {
        let row: Option<(Vec<u8>, Vec<u8>)> = connection
            .query_row(
                "SELECT nonce, ciphertext FROM secrets WHERE reference = ?1",
                [reference.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(|e| self.storage(e))?;
        row.map(|(nonce, ciphertext)| self.decrypt(reference, &nonce, &ciphertext))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_domain::policy::PasswordAlphabet;
    use proptest::prelude::*;
    use std::collections::HashSet;
    use uuid::Uuid;

    fn class_of(c: char) -> usize {
        if c.is_ascii_lowercase() {
            0
        } else if c.is_ascii_uppercase() {
            1
        } else if c.is_ascii_digit() {
            2
        } else {
            3
        }
    }

    fn password_ref(version: u32) -> SecretRef {
        SecretRef::password(
            ComputerId(Uuid::from_u128(7)),
            &AccountName::parse("msp-nik").expect("valid account"),
            version,
        )
    }

    proptest! {
        #[test]
        fn passwords_have_the_policy_length_and_every_enabled_class_and_nothing_else(
            length in PasswordPolicy::MIN_LENGTH..=PasswordPolicy::MAX_LENGTH,
            lowercase: bool, uppercase: bool, digits: bool, symbols: bool,
        ) {
            let alphabet = PasswordAlphabet { lowercase, uppercase, digits, symbols };
            prop_assume!(alphabet.classes() > 0);
            let policy = PasswordPolicy::new(length, alphabet).expect("valid policy");
            let password = generate_password(&policy);
            let password = password.expose();
            prop_assert_eq!(password.chars().count(), usize::from(length));
            let enabled = [lowercase, uppercase, digits, symbols];
            let mut seen = [false; 4];
            for c in password.chars() {
                prop_assert!(
                    LOWERCASE.contains(&(c as u8)) || UPPERCASE.contains(&(c as u8))
                        || DIGITS.contains(&(c as u8)) || SYMBOLS.contains(&(c as u8)),
                    "character outside every alphabet"
                );
                prop_assert!(c.is_ascii());
                let class = class_of(c);
                prop_assert!(enabled[class], "character from a disabled class");
                seen[class] = true;
            }
            prop_assert_eq!(seen, enabled);
        }
    }

    #[test]
    fn two_passwords_differ() {
        let policy = PasswordPolicy::default();
        let passwords: HashSet<String> = (0..100)
            .map(|_| generate_password(&policy).expose().to_owned())
            .collect();
        assert_eq!(passwords.len(), 100);
    }

    #[test]
    fn the_required_characters_are_not_always_at_the_start() {
        // Only digits + lowercase, shortest length: if the shuffle were missing, the first
        // character would always be lowercase and the second always a digit.
        let policy = PasswordPolicy::new(
            12,
            PasswordAlphabet {
                lowercase: true,
                uppercase: false,
                digits: true,
                symbols: false,
            },
        )
        .expect("valid policy");
        let first_is_digit = (0..200)
            .filter(|_| {
                generate_password(&policy)
                    .expose()
                    .starts_with(|c: char| c.is_ascii_digit())
            })
            .count();
        assert!((20..180).contains(&first_is_digit), "{first_is_digit}");
    }

    #[test]
    fn secret_debug_does_not_show_the_value() {
        let secret = Secret::new("hunter2-correct-horse".into());
        let debug = format!("{secret:?} {:?}", Some(&secret));
        assert!(!debug.contains("hunter2"), "{debug}");
        let key = Key::generate();
        assert!(!format!("{key:?}").contains(key.to_base64().expose()));
    }

    #[test]
    fn totp_secrets_are_160_bits_of_base32_and_differ() {
        let a = generate_totp_secret();
        let b = generate_totp_secret();
        assert_eq!(a.expose().len(), 32);
        assert_ne!(a.expose(), b.expose());
        assert!(a
            .expose()
            .chars()
            .all(|c| c.is_ascii_uppercase() || ('2'..='7').contains(&c)));
    }

    #[test]
    fn totp_uri_names_issuer_and_account() {
        let secret = generate_totp_secret();
        let label = totp_label("nik@nikpot.com", "W11-L-PASSWORD");
        assert_eq!(label, "nik@nikpot.com@W11-L-PASSWORD");
        let uri = totp_uri(&secret, &label).expect("valid label");
        let uri = uri.expose();
        assert!(
            uri.starts_with("otpauth://totp/Latchkey:nik%40nikpot.com%40W11-L-PASSWORD?"),
            "{uri}"
        );
        assert!(uri.contains(&format!("secret={}", secret.expose())));
        assert!(uri.contains("issuer=Latchkey"));
        let parsed = totp_rs::TOTP::from_url(uri).expect("parses back");
        assert_eq!(parsed.digits, 6);
        assert_eq!(parsed.step, 30);
        assert_eq!(parsed.algorithm, totp_rs::Algorithm::SHA1);
    }

    #[test]
    fn a_label_with_a_colon_is_refused_without_the_secret_in_the_error() {
        let secret = generate_totp_secret();
        let err = totp_uri(&secret, "nik:W11").expect_err("colon refused");
        let message = err.to_string();
        assert!(message.contains("nik:W11"), "{message}");
        assert!(!message.contains(secret.expose()));
    }

    #[test]
    fn totp_verify_accepts_the_current_code_and_rejects_a_wrong_one() {
        let secret = generate_totp_secret();
        let now = 1_795_000_000;
        // Computed independently with totp-rs from the raw bytes.
        let bytes = totp_rs::Secret::Encoded(secret.expose().to_owned())
            .to_bytes()
            .expect("base32");
        let reference = totp_rs::TOTP::new(
            totp_rs::Algorithm::SHA1,
            6,
            0,
            30,
            bytes,
            None,
            String::new(),
        )
        .expect("valid totp");
        let code = reference.generate(now);
        assert_eq!(totp_code(&secret, now).expect("code").expose(), code);
        assert!(verify_totp(&secret, &code, now));
        assert!(verify_totp(&secret, &code, now + 30), "one step of drift");
        assert!(!verify_totp(&secret, &code, now + 120), "stale code");
        let wrong = format!(
            "{:06}",
            (code.parse::<u32>().expect("digits") + 1) % 1_000_000
        );
        assert!(!verify_totp(&secret, &wrong, now));
        assert!(!verify_totp(&secret, "", now));
        assert!(!verify_totp(&Secret::new("not base32!".into()), &code, now));
    }

    #[test]
    fn key_parsing_says_what_is_wrong_without_the_key() {
        let key = Key::generate();
        let text = key.to_base64();
        let parsed = Key::from_base64(text.expose()).expect("round trip");
        assert_eq!(parsed.0[..], key.0[..]);
        assert_eq!(
            Key::from_base64("c2hvcnQ=").expect_err("short").to_string(),
            "LATCHKEY_SECRET_KEY must be 32 bytes of base64 (got 5 bytes)"
        );
        assert_eq!(
            Key::from_base64("not base64 at all!").expect_err("garbage"),
            KeyError::NotBase64
        );
    }

    #[test]
    fn references_are_built_from_computer_account_and_version() {
        let reference = password_ref(3);
        assert_eq!(
            reference.as_str(),
            "password:00000000-0000-0000-0000-000000000007:msp-nik:3"
        );
        assert_eq!(
            SecretRef::parse(reference.as_str()).expect("valid"),
            reference
        );
        assert!(SecretRef::parse("").is_err());
        assert!(SecretRef::parse("has space").is_err());
        assert!(SecretRef::parse("x".repeat(257)).is_err());
    }

    #[test]
    fn store_round_trips_across_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("secrets.db");
        let key = Key::generate();
        let password = generate_password(&PasswordPolicy::default());
        let totp_ref = SecretRef::totp(
            ComputerId(Uuid::from_u128(7)),
            &AccountName::parse("msp-nik").expect("valid account"),
            1,
        );
        let totp_secret = generate_totp_secret();
        {
            let store = SecretStore::open(&path, &key).expect("open");
            store
                .put_if_absent(&password_ref(1), &password)
                .expect("put");
            store.put_if_absent(&totp_ref, &totp_secret).expect("put");
        }
        let store = SecretStore::open(&path, &key).expect("reopen");
        let got = store.get(&password_ref(1)).expect("get").expect("present");
        assert_eq!(got.expose(), password.expose());
        let got = store.get(&totp_ref).expect("get").expect("present");
        assert_eq!(got.expose(), totp_secret.expose());
        assert!(store.get(&password_ref(2)).expect("get").is_none());
    }

    #[test]
    fn put_if_absent_keeps_the_first_value() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SecretStore::open(dir.path().join("s.db"), &Key::generate()).expect("open");
        let first = Secret::new("first-password-AAAA".into());
        let second = Secret::new("second-password-BBBB".into());
        let stored = store.put_if_absent(&password_ref(1), &first).expect("put");
        assert_eq!(stored.expose(), first.expose());
        let stored = store
            .put_if_absent(&password_ref(1), &second)
            .expect("put again");
        assert_eq!(stored.expose(), first.expose());
        let got = store.get(&password_ref(1)).expect("get").expect("present");
        assert_eq!(got.expose(), first.expose());
    }

    #[test]
    fn a_wrong_key_is_refused_at_open_and_fails_to_decrypt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let key = Key::generate();
        let password = generate_password(&PasswordPolicy::default());
        SecretStore::open(&path, &key)
            .expect("open")
            .put_if_absent(&password_ref(1), &password)
            .expect("put");

        let other = Key::generate();
        let err = SecretStore::open(&path, &other).expect_err("wrong key refused");
        assert!(matches!(err, SecretError::WrongKey { .. }), "{err}");
        assert!(err.to_string().contains("LATCHKEY_SECRET_KEY"));

        // Even past the start-up check (a store without its key-check row), the record
        // itself does not decrypt under another key.
        rusqlite::Connection::open(&path)
            .expect("raw open")
            .execute("DELETE FROM key_check", [])
            .expect("delete key check");
        let store = SecretStore::open(&path, &other).expect("open without check");
        let err = store.get(&password_ref(1)).expect_err("wrong key");
        assert!(matches!(err, SecretError::Decrypt { .. }), "{err}");
        assert!(!err.to_string().contains(password.expose()));
    }

    #[test]
    fn a_ciphertext_moved_to_another_reference_does_not_decrypt() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let key = Key::generate();
        let store = SecretStore::open(&path, &key).expect("open");
        store
            .put_if_absent(&password_ref(1), &Secret::new("password-one-1111".into()))
            .expect("put");
        rusqlite::Connection::open(&path)
            .expect("raw open")
            .execute(
                "UPDATE secrets SET reference = ?1 WHERE reference = ?2",
                [password_ref(2).as_str(), password_ref(1).as_str()],
            )
            .expect("move row");
        let err = store
            .get(&password_ref(2))
            .expect_err("moved record refused");
        assert!(matches!(err, SecretError::Decrypt { .. }), "{err}");
    }

    #[test]
    fn the_store_file_does_not_contain_the_plaintext() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.db");
        let password = generate_password(&PasswordPolicy::default());
        let totp_secret = generate_totp_secret();
        {
            let store = SecretStore::open(&path, &Key::generate()).expect("open");
            store
                .put_if_absent(&password_ref(1), &password)
                .expect("put");
            store
                .put_if_absent(&password_ref(2), &totp_secret)
                .expect("put");
        }
        let mut bytes = Vec::new();
        for entry in std::fs::read_dir(dir.path()).expect("read dir") {
            bytes.extend(std::fs::read(entry.expect("entry").path()).expect("read file"));
        }
        assert!(
            bytes.windows(6).any(|w| w == b"secret"),
            "sanity: read the files"
        );
        for plain in [password.expose(), totp_secret.expose()] {
            assert!(!bytes.windows(plain.len()).any(|w| w == plain.as_bytes()));
        }
    }
}
