//! The agent's side of the agent endpoints (`/v1/agent/...`, see the server's
//! `api/src/http/agent.rs`): typed requests and answers, and errors that say whether to retry
//! (unreachable), stop (the credential was refused) or give up on one request.
//!
//! It must never put a secret (token, password, TOTP secret) into an error or a log line.

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use latchkey_domain::computer::AccountObservation;
use latchkey_domain::names::{FailureReason, GroupName};
use latchkey_wire::{AgentCommand, AgentCommands, FeedEnded, Inventory, Report, ReportOutcome};
use reqwest::blocking::{Client as Http, RequestBuilder, Response};
use reqwest::{StatusCode, Url};
// What the agent does not read of an answer (a report's count of recorded events, …).
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Serialize;

/// How long to wait for a connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a request may take beyond the long poll's own wait.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// How often the server's event feed sends a keep-alive (the server's `FEED_HEARTBEAT`).
pub const FEED_HEARTBEAT: Duration = Duration::from_secs(25);
/// An event feed on which nothing (no event, no keep-alive) arrived for this long, two
/// heartbeats, is taken for a dead connection. It also bounds the wait for the feed's answer.
pub const FEED_SILENCE: Duration = Duration::from_secs(2 * FEED_HEARTBEAT.as_secs());
/// The longest line of the event feed this agent reads (a `commands` event is one line of
/// JSON; thousands of requests stay far below it).
const MAX_FEED_LINE: u64 = 8 * 1024 * 1024;

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
pub use latchkey_wire::Enrolled;

/// One provisioning request as delivered. The operation is kept as JSON here and parsed by
/// the executor, so one operation this agent does not know does not hide the others.
pub type DeliveredCommand = AgentCommand<serde_json::Value>;

/// The requests not yet reported on, as the long poll and the feed's `commands` events
/// bring them.
type Commands = AgentCommands<serde_json::Value>;

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

/// The report of one request, as the server takes it.
fn report_body(request_id: u64, outcome: &Outcome) -> Report {
    let (outcome, verified, reason) = match outcome {
        Outcome::Succeeded { verified } => (ReportOutcome::Succeeded, Some(verified.clone()), None),
        Outcome::Failed { reason } => {
            // The executor's reasons are one short line already; anything else is made so.
            let reason = FailureReason::parse(reason.as_str())
                .or_else(|_| FailureReason::parse(crate::executor::reason(reason)))
                .ok();
            (ReportOutcome::Failed, None, reason)
        }
    };
    Report {
        request_id,
        outcome,
        verified,
        reason,
    }
}

/// The TOTP secrets in force on this computer, as the server sends them; kept 0600 in the
/// state directory for offline login.
pub use latchkey_wire::AgentOfflineSecrets as OfflineSecrets;

/// One of them (its secret stays out of `Debug` output).
pub use latchkey_wire::AgentOfflineSecret as OfflineSecret;

/// An offline login the agent granted, as buffered and uploaded; and a lockout of offline
/// login after too many wrong codes (it never holds a code).
pub use latchkey_wire::{OfflineLockout, OfflineLogin};

/// The server, as one agent (or one enrolling computer) sees it.
pub struct Client {
    server: ServerUrl,
    /// Which of the servers answered last; the next call starts there.
    current: AtomicUsize,
    token: Option<String>,
    http: Http,
    /// How long the event feed may stay silent ([`FEED_SILENCE`]; shorter in tests).
    feed_silence: Duration,
}

/// CA certificates to trust for the server's HTTPS certificate besides the system's
/// (`--ca-file`), read from a PEM file.
#[derive(Clone, Default)]
pub struct TrustedCas(Vec<reqwest::Certificate>);

impl TrustedCas {
    /// The certificates of a PEM file; the error says what is wrong with the file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let pem =
            std::fs::read(path).map_err(|e| format!("--ca-file {shown}: cannot read it: {e}"))?;
        let certificates = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("--ca-file {shown}: not a PEM certificate bundle: {e}"))?;
        if certificates.is_empty() {
            return Err(format!(
                "--ca-file {shown}: no certificate in it (expected PEM: -----BEGIN \
                 CERTIFICATE-----)"
            ));
        }
        Ok(Self(certificates))
    }
}

impl Client {
    /// A client without a credential, for enrolling.
    pub fn anonymous(server: ServerUrl) -> Result<Self, ClientError> {
        Self::new(server, None, TrustedCas::default())
    }

    pub fn with_token(server: ServerUrl, token: String) -> Result<Self, ClientError> {
        Self::new(server, Some(token), TrustedCas::default())
    }

    /// A client that also trusts `cas` for the server's certificate.
    pub fn new(
        server: ServerUrl,
        token: Option<String>,
        cas: TrustedCas,
    ) -> Result<Self, ClientError> {
        let mut builder = Http::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("latchkey-agent/", env!("CARGO_PKG_VERSION")));
        if !cas.0.is_empty() {
            builder = builder.tls_certs_merge(cas.0);
        }
        let http = builder.build().map_err(|e| ClientError::Unreachable {
            url: server.as_str(),
            reason: format!("cannot set up HTTP: {e}"),
        })?;
        Ok(Self {
            server,
            current: AtomicUsize::new(0),
            token,
            http,
            feed_silence: FEED_SILENCE,
        })
    }

    pub fn server(&self) -> &ServerUrl {
        &self.server
    }

    pub fn enroll(
        &self,
        token: &str,
        hostname: &str,
        os: &str,
        admin_group: Option<&str>,
    ) -> Result<Enrolled, ClientError> {
        // Sent as given: the server names the field at fault if it refuses one.
        let mut body = serde_json::json!({"token": token, "hostname": hostname, "os": os});
        if let Some(group) = admin_group {
            body["admin_group"] = group.into();
        }
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

    /// Opens the event feed (`GET /v1/agent/feed`), which pushes the requests not yet
    /// reported on; `None` when the server has none (an older server answers 404), so the
    /// caller long-polls [`Client::commands`] instead.
    pub fn feed(&self) -> Result<Option<Feed>, ClientError> {
        let what = "the event feed";
        let opened = self.exchange("feed", what, StatusCode::OK, |url| {
            self.authorized(self.http.get(url))
                .header(reqwest::header::ACCEPT, "text/event-stream")
                // A blocking response applies this to every read of its body too: the
                // longest the feed may stay silent.
                .timeout(self.feed_silence)
        });
        let (response, server) = match opened {
            Ok(opened) => opened,
            Err(ClientError::Refused { status: 404, .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if !content_type.starts_with("text/event-stream") {
            return Err(ClientError::BadAnswer {
                what,
                reason: format!("its content type is {content_type:?}, not text/event-stream"),
            });
        }
        Ok(Some(Feed {
            server: base(&self.server.0[server]).to_owned(),
            silence: self.feed_silence,
            body: BufReader::new(response),
            name: String::new(),
            data: None,
        }))
    }

    pub fn report(&self, request_id: u64, outcome: &Outcome) -> Result<(), ClientError> {
        let body = report_body(request_id, outcome);
        self.call::<IgnoredAny>("results", "a result report", StatusCode::OK, |url| {
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
        self.call::<IgnoredAny>(
            "offline-logins",
            "an offline login upload",
            StatusCode::OK,
            |url| self.authorized(self.http.post(url)).json(login),
        )
        .map(drop)
    }

    pub fn offline_lockout(&self, lockout: &OfflineLockout) -> Result<(), ClientError> {
        self.call::<IgnoredAny>(
            "offline-lockouts",
            "an offline lockout upload",
            StatusCode::OK,
            |url| self.authorized(self.http.post(url)).json(lockout),
        )
        .map(drop)
    }

    pub fn inventory(&self, group: &GroupName, members: &[String]) -> Result<(), ClientError> {
        let body = Inventory {
            group: group.clone(),
            members: members.iter().cloned().collect(),
        };
        self.call::<IgnoredAny>(
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

    /// Sends the request `build` makes for an endpoint URL (see [`Client::exchange`]) and
    /// reads the answer's JSON.
    fn call<T: DeserializeOwned>(
        &self,
        path: &str,
        what: &'static str,
        expected: StatusCode,
        build: impl Fn(String) -> RequestBuilder,
    ) -> Result<T, ClientError> {
        let (response, _) = self.exchange(path, what, expected, build)?;
        response.json().map_err(|e| ClientError::BadAnswer {
            what,
            reason: describe(&e),
        })
    }

    /// Sends the request `build` makes for an endpoint URL to the server that answered last,
    /// and to the next ones in turn while a server cannot be reached or answers that it is
    /// unavailable (502, 503, 504). A request the server may have carried out before its
    /// answer was lost is sent again; every agent request is safe to repeat. Returns the
    /// answer with the `expected` status and which server gave it.
    fn exchange(
        &self,
        path: &str,
        what: &'static str,
        expected: StatusCode,
        build: impl Fn(String) -> RequestBuilder,
    ) -> Result<(Response, usize), ClientError> {
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
                    return answer.map(|response| (response, index));
                }
            }
        }
        Err(last.expect("at least one server"))
    }

    fn judge(
        &self,
        sent: Result<Response, reqwest::Error>,
        server: usize,
        what: &'static str,
        expected: StatusCode,
    ) -> Result<Response, ClientError> {
        let response = sent.map_err(|e| {
            let mut reason = describe(&e);
            if reason.contains("certificate") {
                reason.push_str(
                    " (the server's certificate is not trusted; if a private CA issued it, \
                     pass that CA with --ca-file)",
                );
            }
            ClientError::Unreachable {
                url: base(&self.server.0[server]).to_owned(),
                reason,
            }
        })?;
        let status = response.status();
        if status == expected {
            return Ok(response);
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

/// What the event feed brings.
#[derive(Debug)]
pub enum FeedNews {
    /// Every request not yet reported on, in order (the long poll's answer): the whole list
    /// each time, which may still name requests reported since the server sent it.
    Commands(Vec<DeliveredCommand>),
    /// A keep-alive: the connection is alive and nothing changed.
    KeepAlive,
}

/// An open event feed (`text/event-stream`), read event by event.
pub struct Feed {
    /// The server's base URL, for errors.
    server: String,
    silence: Duration,
    body: BufReader<Response>,
    /// The event being read: its name and its data lines so far.
    name: String,
    data: Option<String>,
}

impl Feed {
    /// The server this feed comes from.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Waits for the next list of requests or keep-alive; events this agent does not know
    /// are passed over. An error once the feed is over, as for any other call:
    /// [`ClientError::Unauthorized`] when the server ended it because the credential was
    /// revoked; [`ClientError::Unreachable`] when it ended it otherwise (to be reconnected),
    /// closed it, stayed silent for longer than two keep-alives (a dead connection) or could
    /// not be read; [`ClientError::BadAnswer`] for an event this agent cannot read.
    pub fn next_news(&mut self) -> Result<FeedNews, ClientError> {
        // The `text/event-stream` format: `field: value` lines, an empty line ends an event,
        // lines starting with `:` are comments (the server's keep-alives).
        loop {
            let line = self.line()?;
            if line.starts_with(':') {
                return Ok(FeedNews::KeepAlive);
            }
            if line.is_empty() {
                let name = std::mem::take(&mut self.name);
                let Some(data) = self.data.take() else {
                    continue; // no data, no event
                };
                let bad = |e: serde_json::Error| ClientError::BadAnswer {
                    what: "the event feed",
                    reason: format!("its {name} event: {e}"),
                };
                match name.as_str() {
                    "commands" => {
                        let commands: Commands = serde_json::from_str(&data).map_err(bad)?;
                        return Ok(FeedNews::Commands(commands.commands));
                    }
                    "end" => {
                        let end: FeedEnded = serde_json::from_str(&data).map_err(bad)?;
                        return Err(self.ended(end.reason));
                    }
                    other => {
                        tracing::debug!(
                            event = other,
                            "passing over an event this agent does not know"
                        );
                        continue;
                    }
                }
            }
            let (field, value) = match line.split_once(':') {
                Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
                None => (line.as_str(), ""),
            };
            match field {
                "event" => value.clone_into(&mut self.name),
                "data" => match &mut self.data {
                    Some(data) if data.len() + value.len() >= MAX_FEED_LINE as usize => {
                        return Err(self.over(format!(
                            "an event of the event feed is longer than {MAX_FEED_LINE} bytes"
                        )));
                    }
                    Some(data) => {
                        data.push('\n');
                        data.push_str(value);
                    }
                    None => self.data = Some(value.to_owned()),
                },
                _ => {} // id, retry and fields unknown to the format: not used here
            }
        }
    }

    /// The error for the server's `end` event. Its reasons are "the agent's credential was
    /// revoked" and "server error; reconnect". Any other is reconnected too: were the
    /// credential refused after all, the next connection's 401 would say so.
    fn ended(&self, reason: String) -> ClientError {
        match reason.contains("revoked") {
            true => ClientError::Unauthorized { detail: reason },
            false => self.over(format!("the server ended the event feed: {reason}")),
        }
    }

    /// One line without its end (LF or CRLF).
    fn line(&mut self) -> Result<String, ClientError> {
        let mut line = Vec::new();
        let read = (&mut self.body)
            .take(MAX_FEED_LINE)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.dead(&e))?;
        if read == 0 {
            return Err(self.over("the server closed the event feed".into()));
        }
        if line.last() != Some(&b'\n') {
            return Err(match read as u64 {
                MAX_FEED_LINE => self.over(format!(
                    "a line of the event feed is longer than {MAX_FEED_LINE} bytes"
                )),
                _ => self.over("the server closed the event feed mid-line".into()),
            });
        }
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        String::from_utf8(line).map_err(|_| ClientError::BadAnswer {
            what: "the event feed",
            reason: "a line is not UTF-8".into(),
        })
    }

    fn dead(&self, error: &std::io::Error) -> ClientError {
        let timed_out = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout)
            || error.kind() == std::io::ErrorKind::TimedOut;
        match timed_out {
            true => self.over(format!(
                "nothing came on the event feed for {} s, not even a keep-alive",
                self.silence.as_secs_f64()
            )),
            false => self.over(format!("reading the event feed: {error}")),
        }
    }

    fn over(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            url: self.server.clone(),
            reason,
        }
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

    /// One answer of [`stub`]: the bytes to write, then whether to keep the connection open
    /// (until the test ends) rather than close it.
    struct Reply {
        text: String,
        hold: bool,
    }

    fn event_stream(body: &str, hold: bool) -> Reply {
        Reply {
            text: format!("HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\r\n{body}"),
            hold,
        }
    }

    /// A server on loopback answering its connections' requests with `replies`, one each, in
    /// order; returns its address, the request lines it received, and a sender that keeps
    /// held connections open until dropped.
    fn stub(
        replies: Vec<Reply>,
    ) -> (
        std::net::SocketAddr,
        std::sync::mpsc::Receiver<String>,
        std::sync::mpsc::Sender<()>,
    ) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (requests, received) = std::sync::mpsc::channel();
        let (release, held) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            let mut open = Vec::new();
            for (reply, stream) in replies.into_iter().zip(listener.incoming()) {
                let mut stream = stream.unwrap();
                let mut head = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                head.read_line(&mut line).unwrap();
                let _ = requests.send(line.trim_end().to_owned());
                loop {
                    let mut header = String::new();
                    if head.read_line(&mut header).unwrap() == 0 || header.trim().is_empty() {
                        break;
                    }
                }
                stream.write_all(reply.text.as_bytes()).unwrap();
                if reply.hold {
                    open.push(stream);
                }
            }
            // Held connections stay open until the test lets go (or a minute passes).
            let _ = held.recv_timeout(Duration::from_secs(60));
            drop(open);
        });
        (addr, received, release)
    }

    fn listed(news: FeedNews) -> Vec<DeliveredCommand> {
        match news {
            FeedNews::Commands(commands) => commands,
            FeedNews::KeepAlive => panic!("a keep-alive, not a commands event"),
        }
    }

    fn client(addr: std::net::SocketAddr) -> Client {
        let server = ServerUrl::parse(&format!("http://{addr}")).unwrap();
        Client::with_token(server, "lk_test".into()).unwrap()
    }

    #[test]
    fn the_event_feed_is_read_event_by_event() {
        let first = concat!(
            ": keep-alive\n\n",
            "event: commands\r\n",
            r#"data: {"commands":[{"request_id":1,"attempt":2,"operation":{"op":"ensure_account","account":"msp-nik"}}]}"#,
            "\r\n\r\n",
            "event: news\ndata: {\"not\": \"for this agent\"}\n\n",
            "event: commands\n\n",
            "event: commands\ndata: {\"commands\":\n: keep-alive\ndata: []}\n\n",
            "event: end\ndata: {\"reason\":\"server error; reconnect\"}\n\n",
        );
        let second = "event: end\ndata: {\"reason\":\"the agent's credential was revoked\"}\n\n";
        let third = "event: commands\ndata: {\"commands\":[]}\n\nevent: comm";
        let (addr, requests, _release) = stub(vec![
            event_stream(first, false),
            event_stream(second, false),
            event_stream(third, false),
        ]);
        let client = client(addr);

        let mut feed = client.feed().unwrap().expect("a feed");
        assert_eq!(requests.recv().unwrap(), "GET /v1/agent/feed HTTP/1.1");
        assert!(matches!(feed.next_news().unwrap(), FeedNews::KeepAlive));
        let commands = listed(feed.next_news().unwrap());
        assert_eq!(commands.len(), 1);
        assert_eq!((commands[0].request_id.0, commands[0].attempt), (1, 2));
        assert_eq!(commands[0].operation["account"], "msp-nik");
        // The unknown event and the one without data are passed over; data lines are joined,
        // also around a keep-alive.
        assert!(matches!(feed.next_news().unwrap(), FeedNews::KeepAlive));
        assert!(listed(feed.next_news().unwrap()).is_empty());
        let ended = feed.next_news().unwrap_err();
        assert!(
            matches!(&ended, ClientError::Unreachable { reason, .. } if reason.contains("server error; reconnect")),
            "{ended}"
        );

        let mut feed = client.feed().unwrap().expect("a feed");
        let revoked = feed.next_news().unwrap_err();
        assert!(
            matches!(&revoked, ClientError::Unauthorized { detail } if detail == "the agent's credential was revoked"),
            "{revoked}"
        );

        let mut feed = client.feed().unwrap().expect("a feed");
        assert!(listed(feed.next_news().unwrap()).is_empty());
        let closed = feed.next_news().unwrap_err();
        assert!(
            matches!(&closed, ClientError::Unreachable { reason, url } if reason.contains("closed") && url == &format!("http://{addr}")),
            "{closed}"
        );
    }

    #[test]
    fn a_server_without_the_event_feed_says_so_and_other_refusals_are_errors() {
        let problem = |status: &str| {
            Reply {
            text: format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/problem+json\r\ncontent-length: 19\r\nconnection: close\r\n\r\n{{\"detail\":\"no way\"}}"
            ),
            hold: false,
        }
        };
        let (addr, _requests, _release) = stub(vec![
            problem("404 Not Found"),
            problem("401 Unauthorized"),
            Reply {
                text: "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}".into(),
                hold: false,
            },
        ]);
        let client = client(addr);
        assert!(client.feed().unwrap().is_none(), "404: an older server");
        let refused = client.feed().err().expect("401 is an error");
        assert!(
            matches!(&refused, ClientError::Unauthorized { detail } if detail == "no way"),
            "{refused}"
        );
        let json = client.feed().err().expect("not an event stream");
        assert!(
            matches!(&json, ClientError::BadAnswer { reason, .. } if reason.contains("application/json")),
            "{json}"
        );
    }

    #[test]
    fn a_feed_silent_for_longer_than_two_keep_alives_is_a_dead_connection() {
        let (addr, _requests, release) = stub(vec![event_stream(
            ": keep-alive\n\nevent: commands\ndata: {\"commands\":[]}\n\n",
            true,
        )]);
        let mut client = client(addr);
        assert_eq!(FEED_SILENCE, 2 * FEED_HEARTBEAT);
        client.feed_silence = Duration::from_millis(300);
        let mut feed = client.feed().unwrap().expect("a feed");
        assert!(matches!(feed.next_news().unwrap(), FeedNews::KeepAlive));
        assert!(listed(feed.next_news().unwrap()).is_empty());
        // The server holds the connection open and sends nothing more.
        let silent = feed.next_news().unwrap_err();
        assert!(
            matches!(&silent, ClientError::Unreachable { reason, .. } if reason.contains("not even a keep-alive")),
            "{silent}"
        );
        drop(release);
    }

    #[test]
    fn a_report_has_the_shape_the_server_takes() {
        let failed = report_body(
            3,
            &Outcome::Failed {
                reason: "no".into(),
            },
        );
        assert_eq!(
            serde_json::to_value(&failed).unwrap(),
            serde_json::json!({"request_id": 3, "outcome": "failed", "reason": "no"})
        );
        let succeeded = report_body(
            4,
            &Outcome::Succeeded {
                verified: AccountObservation::default(),
            },
        );
        assert_eq!(
            serde_json::to_value(&succeeded).unwrap(),
            serde_json::json!({"request_id": 4, "outcome": "succeeded",
                "verified": {"present": false, "groups": [], "password_version": null}})
        );
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let command = DeliveredCommand {
            request_id: latchkey_domain::ids::RequestId(1),
            attempt: 1,
            operation: serde_json::json!({"op": "rotate_password"}),
            password: Some("hunter2hunter2".into()),
        };
        assert!(!format!("{command:?}").contains("hunter2"));
        let secret = OfflineSecret {
            account: latchkey_domain::names::AccountName::parse("msp-nik").unwrap(),
            technician_id: None,
            username: None,
            generation: 1,
            secret: "JBSWY3DPEHPK3PXP".into(),
        };
        assert!(!format!("{secret:?}").contains("JBSWY3DPEHPK3PXP"));
    }
}
