//! What can go wrong, each as the one sentence the user reads after `latchkey: `.

use crate::DEFAULT_SERVER;
use latchkey_domain::names::InvalidValue;
use reqwest::StatusCode;

/// Said when the server answers 401.
pub const TOKEN_REFUSED: &str = "the server refused the token (LATCHKEY_TOKEN / --token)";

/// A client command's failure.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("no API token: pass --token TOKEN or set LATCHKEY_TOKEN")]
    NoToken,
    #[error("--server {server}: not a valid URL ({reason}); expected e.g. {DEFAULT_SERVER}")]
    BadServer { server: String, reason: String },
    #[error("--server {server}: use an http:// or https:// URL, e.g. {DEFAULT_SERVER}")]
    NotHttp { server: String },
    #[error("--ca-file {path}: {problem}")]
    CaFile { path: String, problem: String },
    #[error("cannot set up the HTTP client: {0}")]
    HttpClient(String),
    #[error("cannot build the URL for {path}: {reason}")]
    Url { path: String, reason: String },

    /// 401: the token is unknown, revoked or malformed; or expired, which `detail` says.
    #[error("{}", refused_message(.expired))]
    TokenRefused { expired: Option<String> },
    /// Any other answer but a success: the problem's `detail` and `field`.
    #[error("{}", problem_message(.status, .body))]
    Refused { status: StatusCode, body: String },
    #[error(
        "cannot reach the server at {server}: its certificate is not trusted ({cause}); if it \
         comes from a private CA, pass that CA with --ca-file FILE (LATCHKEY_CA_FILE)"
    )]
    Untrusted { server: String, cause: String },
    #[error("cannot reach the server at {server}: {cause}")]
    Unreachable { server: String, cause: String },
    #[error("the server at {server} did not answer in time")]
    Timeout { server: String },
    #[error("cannot build the request: {cause}")]
    Request { cause: String },
    #[error("talking to the server at {server} failed: {cause}")]
    Transport { server: String, cause: String },
    #[error(
        "the server at {server} answered something that is not JSON ({cause}); is it a latchkey \
         server?"
    )]
    NotJson { server: String, cause: String },
    #[error(
        "the server at {server} answered JSON this CLI cannot read ({cause}); is it a latchkey \
         server of the same version?"
    )]
    Unreadable { server: String, cause: String },

    /// A value the domain refuses (checked here before anything is sent, with the words the
    /// server would use).
    #[error("{0} (field: {field})", field = .0.field)]
    Invalid(#[from] InvalidValue),
    #[error("--file {path}: {problem}")]
    PolicyFile { path: String, problem: String },
    #[error(
        "`audit tail` follows every event you may see and takes no filters (--tenant, \
         --computer, --technician, --account, --from, --to, --limit); give them to `audit` \
         without `tail`"
    )]
    TailFilters,
    #[error("the live tail from {server} broke off: {cause}{}", resume_hint(.last))]
    TailBroken {
        server: String,
        cause: String,
        last: Option<String>,
    },
    #[error("the server at {server} ended the live tail (did it stop?){}", resume_hint(.last))]
    TailEnded {
        server: String,
        last: Option<String>,
    },
    #[error("the hash chain is BROKEN: stream {stream} at revision {revision}: {problem}")]
    Broken {
        stream: String,
        revision: String,
        problem: String,
    },
    /// Reading or writing a local file, or standard output.
    #[error("{what}: {error}")]
    Io {
        what: String,
        #[source]
        error: std::io::Error,
    },
}

impl CliError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let what = what.into();
        move |error| CliError::Io { what, error }
    }
}

fn refused_message(expired: &Option<String>) -> String {
    match expired {
        Some(detail) => format!("{TOKEN_REFUSED}: {detail}"),
        None => TOKEN_REFUSED.to_owned(),
    }
}

fn resume_hint(last: &Option<String>) -> String {
    match last {
        Some(position) => format!("; resume with `latchkey audit tail --after {position}`"),
        None => String::new(),
    }
}

/// A problem document (RFC 9457) as far as the CLI reads it.
#[derive(serde::Deserialize)]
struct Problem {
    #[serde(default)]
    detail: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

/// The message for an error answer: the problem document's `detail` and `field`, or else
/// the status and the start of the body.
pub(crate) fn problem_message(status: &StatusCode, body: &str) -> String {
    let problem: Option<Problem> = serde_json::from_str(body).ok();
    let detail = problem
        .as_ref()
        .and_then(|p| p.detail.as_deref())
        .filter(|d| !d.is_empty());
    match detail {
        Some(detail) => {
            let field = problem
                .as_ref()
                .and_then(|p| p.field.as_deref())
                .filter(|f| !f.is_empty());
            match field {
                Some(field) => format!("{detail} (field: {field})"),
                None => detail.to_owned(),
            }
        }
        None => {
            let snippet: String = body.trim().chars().take(200).collect();
            if snippet.is_empty() {
                format!("the server answered {status}")
            } else {
                format!("the server answered {status}: {snippet}")
            }
        }
    }
}

/// The `detail` of a 401 that says the token expired.
pub(crate) fn expired_detail(body: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Expired {
        #[serde(rename = "type")]
        kind: String,
        detail: String,
    }
    serde_json::from_str::<Expired>(body)
        .ok()
        .filter(|p| p.kind == "urn:latchkey:problem:token-expired")
        .map(|p| p.detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_names_its_field() {
        let body = r#"{"type":"urn:latchkey:problem:invalid-value","title":"Unprocessable Entity","status":422,"detail":"name must be short","field":"name"}"#;
        assert_eq!(
            problem_message(&StatusCode::UNPROCESSABLE_ENTITY, body),
            "name must be short (field: name)"
        );
        assert_eq!(
            problem_message(&StatusCode::BAD_GATEWAY, ""),
            "the server answered 502 Bad Gateway"
        );
    }

    #[test]
    fn a_refused_token_says_whether_it_expired() {
        assert_eq!(
            CliError::TokenRefused { expired: None }.to_string(),
            TOKEN_REFUSED
        );
        let body = r#"{"type":"urn:latchkey:problem:token-expired","title":"Unauthorized","status":401,"detail":"the API token expired at 2026-01-01T00:00:00Z"}"#;
        assert_eq!(
            CliError::TokenRefused {
                expired: expired_detail(body)
            }
            .to_string(),
            format!("{TOKEN_REFUSED}: the API token expired at 2026-01-01T00:00:00Z")
        );
    }
}
