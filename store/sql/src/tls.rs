//! TLS for every PostgreSQL connection (event store, read models, the server's own tables,
//! leadership). The server's certificate is checked against the system's trusted roots plus,
//! for a private CA, the PEM file `LATCHKEY_POSTGRES_CA` names. Whether TLS is used follows
//! the URL's `sslmode`: `prefer` (the default) uses it when the server offers it, `require`
//! refuses a server that does not, `disable` never uses it.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls_pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

/// The variable naming a PEM file of extra CA certificates to trust.
pub const CA_VAR: &str = "LATCHKEY_POSTGRES_CA";

/// The connector every connection uses, built once from the system roots and `CA_VAR`. The
/// error says what is wrong with the CA file (never a secret).
pub fn connector() -> Result<MakeRustlsConnect, String> {
    static CONNECTOR: OnceLock<Result<MakeRustlsConnect, String>> = OnceLock::new();
    CONNECTOR
        .get_or_init(|| {
            let ca = std::env::var_os(CA_VAR).filter(|v| !v.is_empty());
            connector_trusting(ca.as_deref().map(Path::new))
        })
        .clone()
}

/// A connector trusting the system roots and the certificates in the PEM file `ca`.
pub fn connector_trusting(ca: Option<&Path>) -> Result<MakeRustlsConnect, String> {
    let mut roots = rustls::RootCertStore::empty();
    // A system without a CA bundle still works with a private CA; bad entries are skipped.
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca {
        let unreadable = |reason: String| {
            format!(
                "{CA_VAR}={}: cannot use it as a CA certificate file: {reason}",
                path.display()
            )
        };
        let pem = std::fs::read(path).map_err(|e| unreadable(e.to_string()))?;
        let mut added = 0;
        for cert in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| unreadable(e.to_string()))?;
            roots.add(cert).map_err(|e| unreadable(e.to_string()))?;
            added += 1;
        }
        if added == 0 {
            return Err(unreadable("it holds no PEM certificate".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}
