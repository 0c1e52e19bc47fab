//! Starting the real `latchkey` binary on loopback and talking HTTP/1.0 to it, for the
//! end-to-end tests of this crate; a simulated agent ([`agent`]) answering its requests from
//! an in-memory machine ([`machine`]).

#![allow(dead_code)] // each test file uses part of it

pub mod agent;
pub mod ca;
pub mod contract;
pub mod https;
pub mod machine;
pub mod msp;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

/// A running `latchkey serve`; killed when dropped.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// `http://127.0.0.1:PORT`, or `https://…` when the server serves HTTPS.
    pub url: String,
    /// The stdout lines after the "listening" line that were already printed at start-up.
    pub stdout: BufReader<std::process::ChildStdout>,
    /// The server's own `/openapi.json`, fetched when first needed.
    contract: OnceLock<contract::Contract>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the server on `data`; its log (stderr) goes to `<data>/server.log` if the
    /// directory exists already.
    pub fn start(data: &Path, env: &[(&str, &str)]) -> Server {
        Self::start_with_args(data, &[], env)
    }

    /// [`Server::start`] with more arguments for `latchkey serve` (e.g. `--store URL`).
    /// An existing `data` is made private first ([`make_private`]), as the server asks.
    pub fn start_with_args(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Server {
        Self::start_wrapped(&[], data, args, env)
    }

    /// [`Server::start_with_args`] with the server run by `wrapper` (a command and its
    /// arguments, e.g. `unshare …`) that ends by running the rest of its arguments. The
    /// wrapper must exec the server, so the child's pid stays the server's.
    pub fn start_wrapped(
        wrapper: &[&str],
        data: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Server {
        if data.is_dir() {
            make_private(data);
        }
        let binary = env!("CARGO_BIN_EXE_latchkey");
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        command
            .args(["serve", "--listen", "127.0.0.1:0", "--data"])
            .arg(data)
            .args(args)
            .env_remove("LATCHKEY_STORE")
            .env_remove("LATCHKEY_SECRET_KEY")
            .env_remove("LATCHKEY_ADMIN_TOKEN")
            .stdout(Stdio::piped())
            .stderr(match data.is_dir() {
                true => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        // Private like the rest of the data directory: the server refuses
                        // a data directory with a file others may read.
                        .mode(0o600)
                        .open(data.join("server.log"))
                        .expect("a log file in the data directory"),
                ),
                // A test of the server creating its data directory: no log kept.
                false => Stdio::null(),
            });
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("latchkey starts");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        let mut line = String::new();
        stdout.read_line(&mut line).expect("a first line");
        let url = line
            .trim()
            .strip_prefix("latchkey listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_owned();
        let addr = url
            .split_once("://")
            .map(|(_, addr)| addr.to_owned())
            .unwrap_or_else(|| panic!("no scheme in {line:?}"));
        Server {
            child,
            addr,
            url,
            stdout,
            contract: OnceLock::new(),
        }
    }

    /// Waits for the server to exit by itself (it crashed on purpose); returns whether it did
    /// within `limit`.
    pub fn exited_within(&mut self, limit: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + limit;
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        false
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Stops the server and returns what it printed to stdout after the "listening" line.
    pub fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut rest = String::new();
        let _ = self.stdout.read_to_string(&mut rest);
        rest
    }

    /// Stops the server and returns its log (`<data>/server.log`).
    pub fn stop_and_keep(self, data: &Path) -> String {
        self.stop();
        std::fs::read_to_string(data.join("server.log")).unwrap_or_default()
    }

    /// Sends one request; returns the status, the content type and the body. An event stream
    /// (`text/event-stream`) never ends by itself: its body here is its first event.
    ///
    /// Every answer from `/v1` is held to the server's own `/openapi.json` ([`contract`]): a
    /// status or a body the document does not describe fails the test here.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let (status, content_type, answer) = self.request_unchecked(method, path, token, body);
        if path.starts_with("/v1/") {
            if let Err(broken) = self
                .contract()
                .check(method, path, status, &content_type, &answer)
            {
                panic!("the answer breaks the API contract: {broken}");
            }
        }
        (status, content_type, answer)
    }

    /// The server's own document, as [`Server::request`] holds answers to it.
    pub fn contract(&self) -> &contract::Contract {
        self.contract.get_or_init(|| {
            let (status, _, document) = self.request_unchecked("GET", "/openapi.json", None, None);
            assert_eq!(status, 200, "/openapi.json: {document}");
            contract::Contract::new(serde_json::from_str(&document).expect("the document is JSON"))
        })
    }

    /// [`Server::request`] without the contract check.
    pub fn request_unchecked(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, String, String) {
        let mut reader = self.send(method, path, token, body);
        let Head {
            status,
            content_type,
            chunked,
        } = read_head_full(&mut reader);
        let mut body = String::new();
        if chunked && !content_type.starts_with("text/event-stream") {
            body = read_chunked(&mut reader)
                .unwrap_or_else(|cut| panic!("{method} {path}: the body was cut off: {cut}"));
        } else if content_type.starts_with("text/event-stream") {
            while !body.ends_with("\n\n") {
                if reader.read_line(&mut body).unwrap_or(0) == 0 {
                    break;
                }
            }
        } else {
            reader.read_to_string(&mut body).unwrap();
        }
        (status, content_type, body)
    }

    /// Sends one HTTP/1.0 request; returns the connection to read the answer from.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> BufReader<TcpStream> {
        self.send_with_headers(method, path, token, body, &[])
    }

    /// [`Server::send`] with more request headers.
    pub fn send_with_headers(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> BufReader<TcpStream> {
        let mut stream = TcpStream::connect(&self.addr).expect("server accepts connections");
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.addr);
        if let Some(token) = token {
            head.push_str(&format!("Authorization: Bearer {token}\r\n"));
        }
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        if let Some(body) = body {
            stream.write_all(body.as_bytes()).unwrap();
        }
        BufReader::new(stream)
    }

    /// Sends one HTTP/1.0 request from the loopback address `from` (e.g. `127.0.0.2`: every
    /// 127.0.0.0/8 address is this machine), so the server sees another client; returns the
    /// whole answer.
    pub fn exchange_from(
        &self,
        from: &str,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&str>,
    ) -> Answer {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .unwrap();
        let stream = runtime.block_on(async {
            let socket = tokio::net::TcpSocket::new_v4().unwrap();
            socket
                .bind(format!("{from}:0").parse().unwrap())
                .expect("a loopback source address");
            socket
                .connect(self.addr.parse().unwrap())
                .await
                .expect("server accepts connections")
                .into_std()
                .unwrap()
        });
        stream.set_nonblocking(false).unwrap();
        let mut stream = stream;
        let mut head = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", self.addr);
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        if let Some(body) = body {
            stream.write_all(body.as_bytes()).unwrap();
        }
        let mut text = String::new();
        BufReader::new(stream).read_to_string(&mut text).unwrap();
        Answer::parse(&text).expect("an HTTP answer")
    }

    pub fn json(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (status, _, body) = self.request(method, path, token, body);
        (
            status,
            serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
        )
    }
}

/// A whole HTTP answer: status, headers (names in lower case) and body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// Parses a whole HTTP/1.x answer (header names lower-cased); `None` if there is none
    /// (e.g. the server died before answering).
    pub fn parse(text: &str) -> Option<Answer> {
        let (head, body) = text.split_once("\r\n\r\n")?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())?;
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        Some(Answer {
            status,
            headers,
            body: body.to_owned(),
        })
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Makes a directory private to its owner (0700), as `latchkey serve` wants its data
/// directory: `tempfile::tempdir()` makes them 0755.
pub fn make_private(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .expect("the data directory can be made private");
}

/// Reads an answer's status line and headers; returns the status and the content type.
pub fn read_head(reader: &mut impl BufRead) -> (u16, String) {
    let head = read_head_full(reader);
    (head.status, head.content_type)
}

/// An answer's status line and headers, as far as the tests need them.
pub struct Head {
    pub status: u16,
    pub content_type: String,
    /// `Transfer-Encoding: chunked`: a streamed body (actix-web chunks one even for the tests'
    /// HTTP/1.0 requests).
    pub chunked: bool,
}

pub fn read_head_full(reader: &mut impl BufRead) -> Head {
    let mut status = None;
    let mut content_type = String::new();
    let mut chunked = false;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
        match status {
            None => {
                status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok());
                assert!(status.is_some(), "no status in {line:?}");
            }
            Some(_) => {
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-type: ") {
                    content_type = value.trim().to_owned();
                } else if let Some(value) = lower.strip_prefix("transfer-encoding: ") {
                    chunked = value.trim() == "chunked";
                }
            }
        }
    }
    Head {
        status: status.expect("an answer"),
        content_type,
        chunked,
    }
}

/// Reads a chunked body to its end (the last, empty chunk); `Err` if it ends before that (a
/// body cut off, or no chunk size where one belongs), with what arrived until then. Never
/// panics: the cluster test reads answers of servers it kills.
pub fn read_chunked(reader: &mut impl BufRead) -> Result<String, String> {
    let mut body = Vec::new();
    loop {
        let mut line = String::new();
        let size = match reader.read_line(&mut line) {
            Ok(read) if read > 0 => line
                .split(';')
                .next()
                .and_then(|size| usize::from_str_radix(size.trim(), 16).ok()),
            _ => None,
        };
        let Some(size) = size else {
            return Err(String::from_utf8_lossy(&body).into_owned());
        };
        let mut chunk = vec![0; size + 2]; // and its CRLF
        if reader.read_exact(&mut chunk).is_err() {
            return Err(String::from_utf8_lossy(&body).into_owned());
        }
        if size == 0 {
            return Ok(String::from_utf8_lossy(&body).into_owned());
        }
        body.extend_from_slice(&chunk[..size]);
    }
}

/// Retries `f` every 50 ms until it says `Ok`, for at most `limit`; then fails naming `what`
/// and the last reason. For what happens asynchronously (read models, process managers).
pub fn eventually_ok<T>(
    what: &str,
    limit: std::time::Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = std::time::Instant::now() + limit;
    loop {
        match f() {
            Ok(value) => return value,
            Err(why) if std::time::Instant::now() >= deadline => {
                panic!("{what}: not so within {limit:?}; last: {why}")
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    }
}

/// [`eventually_ok`] for a check that has no reason to give.
pub fn eventually<T>(
    what: &str,
    limit: std::time::Duration,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    eventually_ok(what, limit, || f().ok_or_else(|| "not yet".to_owned()))
}
