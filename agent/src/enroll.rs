//! Enrollment (`latchkey-agent enroll`): trades a one-time enrollment token for this
//! computer's own agent credential and keeps it in the state directory (0600).
//!
//! It must never overwrite an existing credential (that would orphan the computer on the
//! server) and never print the credential.

use std::path::Path;

use chrono::Utc;
use latchkey_domain::names::Hostname;

use crate::client::{Client, ClientError, ServerUrl, TrustedCas};
use crate::state::{Credential, StateDir, StateError, CREDENTIAL, JOURNAL, OFFLINE_SECRETS};

#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    #[error("--server {url:?}: {reason} (expected e.g. https://latchkey.example.com)")]
    BadServerUrl { url: String, reason: String },
    #[error("--server {url}: cannot reach the server: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("--server {url}: this does not look like a Latchkey server ({reason})")]
    NotLatchkey { url: String, reason: String },
    #[error("--token: the server does not know this enrollment token ({detail}); check that it was copied whole")]
    UnknownToken { detail: String },
    #[error("--token: the enrollment token was already used or has expired ({detail}); ask the MSP admin for a new one")]
    SpentToken { detail: String },
    #[error("the server refused the enrollment ({status}): {detail}")]
    Refused { status: u16, detail: String },
    #[error("--hostname: {0}")]
    BadHostname(String),
    /// `--ca-file` cannot be used.
    #[error("{0}")]
    BadCaFile(String),
    #[error(
        "this computer is already enrolled (computer {computer_id} with {server}); to enroll it \
         again, remove {path} first"
    )]
    AlreadyEnrolled {
        computer_id: uuid::Uuid,
        server: String,
        path: String,
    },
    #[error(transparent)]
    State(#[from] StateError),
}

/// The operating system as the server names it.
pub const OS: &str = if cfg!(target_os = "macos") {
    "macos"
} else if cfg!(target_os = "windows") {
    "windows"
} else {
    "linux"
};

/// Enrolls with `server` using `token`; keeps the credential in `state_dir`. `ca_file`
/// names CA certificates to trust for the server's certificate besides the system's; its
/// absolute path is kept in the credential for `run`.
pub fn enroll(
    state_dir: &Path,
    server: &str,
    token: &str,
    hostname: Option<&str>,
    admin_group: Option<&str>,
    ca_file: Option<&Path>,
) -> Result<Credential, EnrollError> {
    let url = ServerUrl::parse(server).map_err(|reason| EnrollError::BadServerUrl {
        url: server.to_owned(),
        reason,
    })?;
    let (cas, ca_file) = match ca_file {
        Some(path) => {
            let cas = TrustedCas::load(path).map_err(EnrollError::BadCaFile)?;
            let absolute = std::path::absolute(path).map_err(|e| {
                EnrollError::BadCaFile(format!("--ca-file {}: {e}", path.display()))
            })?;
            (cas, Some(absolute))
        }
        None => (TrustedCas::default(), None),
    };
    let hostname = match hostname {
        Some(name) => {
            Hostname::parse(name.trim()).map_err(|e| EnrollError::BadHostname(e.to_string()))?
        }
        None => {
            let name = this_hostname();
            Hostname::parse(name.as_str()).map_err(|e| {
                EnrollError::BadHostname(format!(
                    "this computer's hostname is not usable ({e}); pass --hostname"
                ))
            })?
        }
    };
    let state = StateDir::open(state_dir)?;
    if let Some(existing) = state.credential()? {
        return Err(EnrollError::AlreadyEnrolled {
            computer_id: existing.computer_id,
            server: existing.server,
            path: state.file(CREDENTIAL).display().to_string(),
        });
    }
    let client = Client::new(url.clone(), None, cas).map_err(|e| EnrollError::Unreachable {
        url: url.as_str().to_owned(),
        reason: e.to_string(),
    })?;
    let enrolled = client
        .enroll(token.trim(), hostname.as_str(), OS, admin_group)
        .map_err(|e| match e {
            ClientError::Unreachable { url, reason } => EnrollError::Unreachable { url, reason },
            ClientError::Unauthorized { detail } => EnrollError::UnknownToken { detail },
            ClientError::Refused {
                status: 410,
                detail,
                ..
            } => EnrollError::SpentToken { detail },
            ClientError::Refused {
                status: 404 | 405,
                detail,
                ..
            } => EnrollError::NotLatchkey {
                url: url.as_str().to_owned(),
                reason: detail,
            },
            ClientError::Refused { status, detail, .. } => EnrollError::Refused { status, detail },
            ClientError::BadAnswer { reason, .. } => EnrollError::NotLatchkey {
                url: url.as_str().to_owned(),
                reason,
            },
        })?;
    // A journal of an earlier enrollment numbers its requests from 1 too: keep it aside so
    // the new computer's requests are never mistaken for the old ones.
    let journal = state.file(JOURNAL);
    if journal.exists() {
        let aside = state.file(&format!(
            "{JOURNAL}.before-{}",
            Utc::now().format("%Y%m%dT%H%M%SZ")
        ));
        std::fs::rename(&journal, &aside).map_err(|source| StateError::Io {
            path: journal.display().to_string(),
            action: "set aside the earlier enrollment's journal",
            source,
        })?;
    }
    state.remove(&state.file(OFFLINE_SECRETS))?;
    let credential = Credential {
        server: url.as_str().to_owned(),
        computer_id: enrolled.computer_id.0,
        tenant_id: enrolled.tenant_id.0,
        hostname: hostname.to_string(),
        agent_token: enrolled.agent_token,
        enrolled_at: Utc::now(),
        ca_file,
    };
    state.write_json(CREDENTIAL, &credential)?;
    Ok(credential)
}

/// The kernel's name for this computer.
fn this_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .find_map(|path| std::fs::read_to_string(path).ok())
        .map(|name| name.trim().to_owned())
        .unwrap_or_default()
}
