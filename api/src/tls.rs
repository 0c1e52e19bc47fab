//! HTTPS for `latchkey serve`: the certificate chain and private key come from two PEM files
//! (`--tls-cert`, `--tls-key`) and are read again when either file changes on disk (looked
//! at every [`CHECK_INTERVAL`], and at once on SIGHUP), so a renewed certificate is served
//! without a restart. A new pair that cannot be used (unreadable, not PEM, a key that is not
//! the certificate's) is logged as an error and the pair in use is kept.
//!
//! The private key never reaches a log line or an error message, not even in part.

use crate::config::TlsFiles;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// How often the files are looked at for a change.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The crypto provider of every TLS connection the server accepts: aws-lc-rs, the one
/// reqwest already brings. (Named explicitly: with two providers compiled in, rustls would
/// not pick one by itself.)
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// What a file looked like when last read: a rename over it, a rewrite in place, even one
/// that keeps the modification time (`cp -p`), changes one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    Present {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    /// Missing or unreadable (say, half-way through a renewal that removes and recreates).
    Unreadable,
}

impl Stamp {
    fn of(path: &Path) -> Stamp {
        match std::fs::metadata(path) {
            Ok(meta) => Stamp::Present {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            },
            Err(_) => Stamp::Unreadable,
        }
    }
}

/// The outcome of one look at the files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// Neither file changed since the last look.
    Unchanged,
    /// A new pair is served; its certificate's SHA-256 fingerprint.
    Reloaded { fingerprint: String },
    /// The files changed but cannot be used: the old pair is still served.
    Failed(String),
}

/// The certificate the server presents, re-read from its files when they change. It is the
/// rustls certificate resolver of every TLS connection.
#[derive(Debug)]
pub struct ReloadingCertificate {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The files as they were at the last look (whether or not that read succeeded), so a
    /// broken pair is reported once, not at every look.
    seen: Mutex<(Stamp, Stamp)>,
}

impl ReloadingCertificate {
    /// Reads the pair for the first time; an error names the flag and the file.
    pub fn load(files: TlsFiles) -> Result<Arc<Self>, String> {
        let provider = provider();
        let seen = (Stamp::of(&files.cert), Stamp::of(&files.key));
        let key = read_pair(&files, &provider)?;
        warn_if_others_may_read(&files.key);
        Ok(Arc::new(Self {
            files,
            provider,
            current: RwLock::new(key),
            seen: Mutex::new(seen),
        }))
    }

    /// The SHA-256 fingerprint (hex) of the certificate served now.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.served())
    }

    fn served(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Reads the pair again if either file changed since the last look (or always, when
    /// `forced`), and serves it if it can be used.
    pub fn check(&self, forced: bool) -> Reload {
        let now = (Stamp::of(&self.files.cert), Stamp::of(&self.files.key));
        {
            let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            if *seen == now && !forced {
                return Reload::Unchanged;
            }
            *seen = now;
        }
        match read_pair(&self.files, &self.provider) {
            Ok(key) => {
                let fingerprint = fingerprint(&key);
                let changed = fingerprint != self.fingerprint();
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = key;
                match changed || forced {
                    true => {
                        warn_if_others_may_read(&self.files.key);
                        Reload::Reloaded { fingerprint }
                    }
                    // Touched but the same pair (say, a renewal that changed nothing).
                    false => Reload::Unchanged,
                }
            }
            Err(reason) => Reload::Failed(reason),
        }
    }

    /// A rustls server configuration that presents this certificate (HTTP/1.1; actix-web adds
    /// the ALPN protocol names).
    pub fn server_config(self: &Arc<Self>) -> Result<rustls::ServerConfig, String> {
        let config = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("cannot set up TLS: {e}"))?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(config)
    }

    /// Looks at the files every [`CHECK_INTERVAL`] and at every SIGHUP (`hangups`, set up
    /// before the server starts so a SIGHUP never kills it), for as long as the server runs.
    pub async fn watch(self: Arc<Self>, mut hangups: tokio::signal::unix::Signal) {
        let mut ticks = tokio::time::interval(CHECK_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let forced = tokio::select! {
                _ = ticks.tick() => false,
                _ = hangups.recv() => true,
            };
            match self.check(forced) {
                Reload::Unchanged => {}
                Reload::Reloaded { fingerprint } => tracing::info!(
                    cert = %self.files.cert.display(),
                    key = %self.files.key.display(),
                    sha256 = %fingerprint,
                    "serving the TLS certificate read again from its files"
                ),
                Reload::Failed(reason) => tracing::error!(
                    error = %reason,
                    sha256 = %self.fingerprint(),
                    "the TLS certificate files changed but cannot be used; still serving the \
                     certificate read before (fix the files; they are looked at again when \
                     they change, or at SIGHUP)"
                ),
            }
        }
    }
}

impl ResolvesServerCert for ReloadingCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.served())
    }
}

/// The SHA-256 fingerprint (hex) of a pair's end-entity certificate.
fn fingerprint(key: &CertifiedKey) -> String {
    key.end_entity_cert()
        .map(|cert| hex::encode(Sha256::digest(cert.as_ref())))
        .unwrap_or_default()
}

/// Reads and checks a certificate chain and its private key.
fn read_pair(files: &TlsFiles, provider: &CryptoProvider) -> Result<Arc<CertifiedKey>, String> {
    let cert_path = files.cert.display();
    let key_path = files.key.display();
    let chain_pem = std::fs::read(&files.cert)
        .map_err(|e| format!("--tls-cert {cert_path}: cannot read it: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {cert_path}: not a PEM certificate chain: {e}"))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {cert_path}: no certificate in it (expected PEM: -----BEGIN \
             CERTIFICATE-----, the server's certificate first, then its intermediates)"
        ));
    }
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read(&files.key)
            .map_err(|e| format!("--tls-key {key_path}: cannot read it: {e}"))?,
    );
    // The PEM error is not shown: some of its variants quote the file, and this one holds
    // the private key.
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "--tls-key {key_path}: no private key in it (expected PEM: -----BEGIN PRIVATE \
             KEY-----, or an RSA or EC private key)"
        ),
        _ => format!("--tls-key {key_path}: not a well-formed PEM private key"),
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "--tls-key {key_path} is not the private key of the certificate in --tls-cert \
             {cert_path}: give the key the certificate was issued for"
        ),
        other => {
            format!("--tls-cert {cert_path} with --tls-key {key_path}: cannot be used: {other}")
        }
    })?;
    Ok(Arc::new(certified))
}

/// A private key that other users may read is served all the same (where keys live is the
/// operator's business, e.g. a group `ssl-cert`), but said.
fn warn_if_others_may_read(key: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(key) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o007 != 0 {
            tracing::warn!(
                key = %key.display(),
                mode = format!("{mode:o}"),
                "every user of this machine may read the TLS private key (chmod o-rwx)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate for `name` and its key, both PEM.
    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("chain.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Writes a file beside its place and renames it there, as a renewal tool would.
    fn replace(path: &Path, text: &str) {
        let partial = path.with_extension("new");
        std::fs::write(&partial, text).unwrap();
        std::fs::rename(&partial, path).unwrap();
    }

    #[test]
    fn a_changed_pair_is_served_and_a_broken_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let (cert, key) = pair("one.example");
        replace(&files.cert, &cert);
        replace(&files.key, &key);
        let served = ReloadingCertificate::load(files.clone()).unwrap();
        let first = served.fingerprint();
        assert_eq!(served.check(false), Reload::Unchanged);

        // A new certificate whose key has not arrived yet: refused, the old one kept, and
        // said once only.
        let (cert, key) = pair("two.example");
        replace(&files.cert, &cert);
        let failed = served.check(false);
        assert!(
            matches!(&failed, Reload::Failed(reason) if reason.contains("is not the private key")),
            "{failed:?}"
        );
        assert_eq!(served.fingerprint(), first);
        assert_eq!(served.check(false), Reload::Unchanged);

        // The key arrives: the new pair is served.
        replace(&files.key, &key);
        let Reload::Reloaded { fingerprint } = served.check(false) else {
            panic!("not reloaded")
        };
        assert_ne!(fingerprint, first);
        assert_eq!(served.fingerprint(), fingerprint);

        // Garbage in the key file: refused without quoting it.
        replace(
            &files.key,
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWtleS1ieXRlcw\n",
        );
        let Reload::Failed(reason) = served.check(false) else {
            panic!("garbage accepted")
        };
        assert!(reason.starts_with("--tls-key"), "{reason}");
        assert!(!reason.contains("c2VjcmV0"), "{reason}");
        assert_eq!(served.fingerprint(), fingerprint);
    }

    #[test]
    fn a_pair_that_cannot_be_used_stops_the_start_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let err = ReloadingCertificate::load(files.clone()).unwrap_err();
        assert!(err.starts_with("--tls-cert"), "{err}");
        let (cert, key) = pair("one.example");
        replace(&files.cert, &key);
        replace(&files.key, &cert);
        let err = ReloadingCertificate::load(files.clone()).unwrap_err();
        assert!(err.contains("no certificate in it"), "{err}");
        replace(&files.cert, &cert);
        let err = ReloadingCertificate::load(files.clone()).unwrap_err();
        assert!(err.contains("no private key in it"), "{err}");
        let (_, other_key) = pair("two.example");
        replace(&files.key, &other_key);
        let err = ReloadingCertificate::load(files).unwrap_err();
        assert!(err.contains("is not the private key"), "{err}");
    }
}
