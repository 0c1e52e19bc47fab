//! The agent's side of the agent endpoints (`/v1/agent/...`, see the server's
//! `api/src/http/agent.rs`): typed requests and answers, and errors that say whether to retry
//! (unreachable), stop (the credential was refused) or give up on one request.
//!
//! It must never put a secret (token, password, TOTP secret) into an error or a log line.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use latchkey_domain::computer::AccountObservation;
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How long to wait for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take beyond the long poll's own wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No answer (refused, reset, timed out, DNS): try again later.
    #[error("cannot reach the server at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// 401: the credential (or enrollment token) is not, or no longer, accepted.
    #[error("the server refused the credential (401): {detail}")]
    Unauthorized { detail: String },
    /// Any other answer than the one expected.
    #[error("the server answered {status} to {what}: {detail}")]
    Refused {
        status: u16,
        what: &'static str,
        detail: String,
    },
    #[error("the server's answer to {what} is not what this agent understands: {reason}")]
    BadAnswer { what: &'static str, reason: String },
}

/// The server's base URL, checked once: `http` or `https`, with a host. Several URLs,
/// comma-separated, name servers sharing one database: the agent uses one and moves to the
/// next when it cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(Vec<Url>);

impl ServerUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut urls = Vec::new();
        for part in text.split(',') {
            urls.push(
                Self::parse_one(part).map_err(|reason| match text.contains(',') {
                    true => format!("'{}': {reason}", part.trim()),
                    false => reason,
                })?,
            );
        }
        Ok(Self(urls))
    }

    fn parse_one(text: &str) -> Result<Url, String> {
        let url = Url::parse(text.trim()).map_err(|e| format!("not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!(
                "the scheme must be http or https (got '{}')",
                url.scheme()
            ));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("the URL has no host".into());
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err("the URL must not have a query or fragment".into());
        }
        Ok(url)
    }

    /// Each URL without a trailing slash, comma-separated, as stored in the credential.
    pub fn as_str(&self) -> String {
        let urls: Vec<&str> = self.0.iter().map(base).collect();
        urls.join(",")
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn endpoint(&self, server: usize, path: &str) -> String {
        format!("{}/v1/agent/{path}", base(&self.0[server]))
    }
}

fn base(url: &Url) -> &str {
    url.as_str().trim_end_matches('/')
}

/// What the server answers to an enrollment.
#[derive(Debug, Clone, Deserialize)]
pub struct Enrolled {
    pub computer_id: Uuid,
    pub tenant_id: Uuid,
    pub agent_token: String,
}

/// One provisioning request as delivered. The operation is kept as JSON here and parsed by
/// the executor, so one operation this agent does not know does not hide the others.
#[derive(Clone, Deserialize)]
pub struct DeliveredCommand {
    pub request_id: u64,
    pub attempt: u32,
    pub operation: serde_json::Value,
    /// For `rotate_password`: the password to set.
    #[serde(default)]
    pub password: Option<String>,
}

impl std::fmt::Debug for DeliveredCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveredCommand")
            .field("request_id", &self.request_id)
            .field("attempt", &self.attempt)
            .field("operation", &self.operation)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[derive(Deserialize)]
struct Commands {
    commands: Vec<DeliveredCommand>,
}

/// The result of one request, as the server takes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded { verified: AccountObservation },
    Failed { reason: String },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Succeeded { verified } => write!(f, "verified {verified}"),
            Outcome::Failed { reason } => write!(f, "failed: {reason}"),
        }
    }
}

#[derive(Serialize)]
struct ReportBody<'a> {
    request_id: u64,
    #[serde(flatten)]
    outcome: &'a Outcome,
}

/// The TOTP secrets in force on this computer, as the server sends them; kept 0600 in the
/// state directory for offline login.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineSecrets {
    pub admin_group: String,
    pub max_session_minutes: u32,
    pub secrets: Vec<OfflineSecret>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OfflineSecret {
    pub account: String,
    pub technician_id: Option<Uuid>,
    pub username: Option<String>,
    pub generation: u32,
    /// Base32 (SHA1, 6 digits, 30 s).
    pub secret: String,
}

impl std::fmt::Debug for OfflineSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineSecret")
            .field("account", &self.account)
            .field("technician_id", &self.technician_id)
            .field("username", &self.username)
            .field("generation", &self.generation)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// An offline login the agent granted, as buffered and uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineLogin {
    pub login_id: Uuid,
    pub account: String,
    pub technician_id: Option<Uuid>,
    pub generation: u32,
    pub used_at: chrono::DateTime<chrono::Utc>,
    pub until: chrono::DateTime<chrono::Utc>,
}

/// The server, as one agent (or one enrolling computer) sees it.
pub struct Client {
    server: ServerUrl,
    /// Which of the servers answered last; the next call starts there.
    current: AtomicUsize,
    token: Option<String>,
    http: Http,
}

impl Client {
    /// A client without a credential, for enrolling.
    pub fn anonymous(server: ServerUrl) -> Result<Self, ClientError> {
        Self::build(server, None)
    }

    pub fn with_token(server: ServerUrl, token: String) -> Result<Self, ClientError> {
        Self::build(server, Some(token))
    }

    fn build(server: ServerUrl, token: Option<String>) -> Result<Self, ClientError> {
        let http = Http::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("latchkey-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: server.as_str(),
                reason: format!("cannot set up HTTP: {e}"),
            })?;
        Ok(Self {
            server,
            current: AtomicUsize::new(0),
            token,
            http,
        })
    }

    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    pub fn enroll(&self, token: &str, hostname: &str, os: &str) -> Result<Enrolled, ClientError> {
        let body = serde_json::json!({"token": token, "hostname": hostname, "os": os});
        self.call("enroll", "the enrollment", StatusCode::CREATED, |url| {
            self.http.post(url).json(&body)
        })
    }

    /// Waits up to `wait` seconds for requests not yet reported on.
    pub fn commands(&self, wait: u64) -> Result<Vec<DeliveredCommand>, ClientError> {
        let answer: Commands =
            self.call("commands", "the command poll", StatusCode::OK, |url| {
                self.authorized(self.http.get(url))
                    .query(&[("wait", wait)])
                    .timeout(REQUEST_TIMEOUT + Duration::from_secs(wait))
            })?;
        Ok(answer.commands)
    }

    pub fn report(&self, request_id: u64, outcome: &Outcome) -> Result<(), ClientError> {
        let body = ReportBody {
            request_id,
            outcome,
        };
        self.call::<serde_json::Value>("results", "a result report", StatusCode::OK, |url| {
            self.authorized(self.http.post(url)).json(&body)
        })
        .map(drop)
    }

    pub fn offline_secrets(&self) -> Result<OfflineSecrets, ClientError> {
        self.call(
            "offline-secrets",
            "the offline secrets request",
            StatusCode::OK,
            |url| self.authorized(self.http.get(url)),
        )
    }

    pub fn offline_login(&self, login: &OfflineLogin) -> Result<(), ClientError> {
        self.call::<serde_json::Value>(
            "offline-logins",
            "an offline login upload",
            StatusCode::OK,
            |url| self.authorized(self.http.post(url)).json(login),
        )
        .map(drop)
    }

    pub fn inventory(&self, group: &str, members: &[String]) -> Result<(), ClientError> {
        let body = serde_json::json!({"group": group, "members": members});
        self.call::<serde_json::Value>(
            "inventory",
            "the admin group inventory",
            StatusCode::OK,
            |url| self.authorized(self.http.post(url)).json(&body),
        )
        .map(drop)
    }

    fn authorized(&self, request: RequestBuilder) -> RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends the request `build` makes for an endpoint URL to the server that answered last,
    /// and to the next ones in turn while a server cannot be reached or answers that it is
    /// unavailable (502, 503, 504). A request the server may have carried out before its
    /// answer was lost is sent again; every agent request is safe to repeat.
    fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
        expected: StatusCode,
        build: impl Fn(String) -> RequestBuilder,
    ) -> Result<T, ClientError> {
        let count = self.server.len();
        let first = self.current.load(Ordering::Relaxed) % count;
        let mut last = None;
        for step in 0..count {
            let index = (first + step) % count;
            match self.judge(
                build(self.server.endpoint(index, path)).send(),
                index,
                what,
                expected,
            ) {
                Err(e @ ClientError::Unreachable { .. }) => last = Some(e),
                Err(
                    e @ ClientError::Refused {
                        status: 502..=504, ..
                    },
                ) if step + 1 < count => last = Some(e),
                answer => {
                    if index != first {
                        tracing::warn!(
                            from = base(&self.server.0[first]),
                            to = base(&self.server.0[index]),
                            reason = %last.as_ref().map_or(String::new(), ToString::to_string),
                            "moved to another server"
                        );
                        self.current.store(index, Ordering::Relaxed);
                    }
                    return answer;
                }
            }
        }
        Err(last.expect("at least one server"))
    }

    fn judge<T: DeserializeOwned>(
        &self,
        sent: Result<Response, reqwest::Error>,
        server: usize,
        what: &'static str,
        expected: StatusCode,
    ) -> Result<T, ClientError> {
        let response = sent.map_err(|e| ClientError::Unreachable {
            url: base(&self.server.0[server]).to_owned(),
            reason: describe(&e),
        })?;
        let status = response.status();
        if status == expected {
            return response.json().map_err(|e| ClientError::BadAnswer {
                what,
                reason: describe(&e),
            });
        }
        let detail = problem_detail(response);
        if status == StatusCode::UNAUTHORIZED {
            return Err(ClientError::Unauthorized { detail });
        }
        Err(ClientError::Refused {
            status: status.as_u16(),
            what,
            detail,
        })
    }
}

/// A reqwest error with its causes ("error sending request: connection refused"), without
/// the URL's query (which holds nothing secret, but is noise).
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The `detail` of a problem+json answer (the server's explanation), or the start of the
/// body.
fn problem_detail(response: Response) -> String {
    let body = response.text().unwrap_or_default();
    match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(problem) => {
            let detail = problem["detail"]
                .as_str()
                .or(problem["title"].as_str())
                .unwrap_or("no detail given");
            match problem["field"].as_str() {
                Some(field) => format!("{detail} (field {field})"),
                None => detail.to_owned(),
            }
        }
        Err(_) => body.chars().take(200).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_url_must_be_http_with_a_host() {
        assert_eq!(
            ServerUrl::parse("https://latchkey.example.com/")
                .unwrap()
                .as_str(),
            "https://latchkey.example.com"
        );
        assert_eq!(
            ServerUrl::parse("http://127.0.0.1:8080/base/")
                .unwrap()
                .endpoint(0, "enroll"),
            "http://127.0.0.1:8080/base/v1/agent/enroll"
        );
        for bad in [
            "latchkey.example.com",
            "ftp://x",
            "http://",
            "not a url",
            "http://x/?a=1",
            "http://a:8080,ftp://b",
            "http://a:8080,",
        ] {
            assert!(ServerUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn several_servers_are_comma_separated_and_each_is_checked() {
        let servers = ServerUrl::parse(" http://a:8080/ , https://b.example/x/").unwrap();
        assert_eq!(servers.as_str(), "http://a:8080,https://b.example/x");
        assert_eq!(
            servers.endpoint(1, "commands"),
            "https://b.example/x/v1/agent/commands"
        );
        let bad = ServerUrl::parse("http://a:8080,ftp://b").unwrap_err();
        assert!(bad.contains("'ftp://b'"), "{bad}");
    }

    #[test]
    fn an_unreachable_server_is_passed_over_for_the_next_one() {
        // A listener that answers every request with 200 and no commands.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let good = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                use std::io::{Read, Write};
                let mut stream = stream;
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let body = r#"{"commands":[]}"#;
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        // Nothing listens on the first one (bound, then closed).
        let dead = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let servers = ServerUrl::parse(&format!("http://{dead},http://{good}")).unwrap();
        let client = Client::with_token(servers, "lk_test".into()).unwrap();
        assert!(client.commands(0).unwrap().is_empty());
        assert_eq!(
            client.current.load(Ordering::Relaxed),
            1,
            "it stays with the one that answered"
        );
        // With no server reachable, the error names the last one tried.
        let alone = ServerUrl::parse(&format!("http://{dead}")).unwrap();
        let error = Client::with_token(alone, "lk_test".into())
            .unwrap()
            .commands(0)
            .unwrap_err();
        assert!(matches!(error, ClientError::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains(&dead.to_string()), "{error}");
    }

    #[test]
    fn a_report_has_the_shape_the_server_takes() {
        let failed = ReportBody {
            request_id: 3,
            outcome: &Outcome::Failed {
                reason: "no".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({"request_id": 3, "outcome": "failed", "reason": "no"})
        );
        let succeeded = ReportBody {
            request_id: 4,
            outcome: &Outcome::Succeeded {
                verified: AccountObservation::default(),
            },
        };
        assert_eq!(
            serde_json::to_value(&succeeded).unwrap(),
            serde_json::json!({"request_id": 4, "outcome": "succeeded",
                "verified": {"present": false, "groups": [], "password_version": null}})
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let command = DeliveredCommand {
            request_id: 1,
            attempt: 1,
            operation: serde_json::json!({"op": "rotate_password"}),
            password: Some("hunter2hunter2".into()),
        };
        assert!(!format!("{command:?}").contains("hunter2"));
        let secret = OfflineSecret {
            account: "msp-nik".into(),
            technician_id: None,
            username: None,
            generation: 1,
            secret: "JBSWY3DPEHPK3PXP".into(),
        };
        assert!(!format!("{secret:?}").contains("JBSWY3DPEHPK3PXP"));
    }
}
