//! A simulated agent on one [`Server`], over the agent endpoints: it enrolls with a one-time
//! enrollment token, polls its request feed and answers every request from its [`Machine`].

use super::machine::Machine;
use super::Server;
use serde_json::{json, Value};

pub struct Agent {
    pub token: String,
    pub computer_id: String,
    pub machine: Machine,
}

impl Agent {
    pub fn enroll(server: &Server, enrollment: &str, hostname: &str) -> Agent {
        let body = json!({"token": enrollment, "hostname": hostname, "os": "windows"});
        let (status, enrolled) =
            server.json("POST", "/v1/agent/enroll", None, Some(&body.to_string()));
        assert_eq!(status, 201, "enrolling {hostname}: {enrolled}");
        Agent {
            token: enrolled["agent_token"].as_str().unwrap().to_owned(),
            computer_id: enrolled["computer_id"].as_str().unwrap().to_owned(),
            machine: Machine::default(),
        }
    }

    /// Polls once (waiting up to `wait` seconds), applies and reports everything received;
    /// returns how many requests the feed held. Panics at a request no consistent server
    /// would send (see [`Machine::problems`]).
    pub fn poll(&mut self, server: &Server, wait: u32) -> usize {
        let commands = feed(server, &self.token, wait);
        self.report(server, &commands);
        commands.len()
    }

    /// Applies `commands` (from the feed) and reports each to `server`.
    pub fn report(&mut self, server: &Server, commands: &[Value]) {
        for command in commands {
            let report = self.machine.answer(command);
            let (status, answer) = server.json(
                "POST",
                "/v1/agent/results",
                Some(&self.token),
                Some(&report.to_string()),
            );
            assert_eq!(status, 200, "{answer}");
        }
    }

    /// Answers requests until `done` holds, polling at most `rounds` times.
    pub fn until(&mut self, server: &Server, rounds: usize, mut done: impl FnMut() -> bool) {
        for _ in 0..rounds {
            if done() {
                return;
            }
            self.poll(server, 1);
        }
        panic!(
            "the agent's requests did not settle; agent log: {:?}",
            self.machine.log
        );
    }

    /// Answers requests until the feed is empty.
    pub fn drain(&mut self, server: &Server) {
        while self.poll(server, 0) > 0 {}
    }
}

/// The requests in the feed of the agent with `token` (waiting up to `wait` seconds for one).
pub fn feed(server: &Server, token: &str, wait: u32) -> Vec<Value> {
    let path = format!("/v1/agent/commands?wait={wait}");
    let (status, body) = server.json("GET", &path, Some(token), None);
    assert_eq!(status, 200, "{body}");
    body["commands"].as_array().unwrap().clone()
}

/// An agent's event feed (`GET /v1/agent/feed`), read event by event.
pub struct EventFeed {
    reader: std::io::BufReader<std::net::TcpStream>,
}

impl EventFeed {
    pub fn open(server: &Server, token: &str) -> EventFeed {
        let mut reader = server.send("GET", "/v1/agent/feed", Some(token), None);
        reader
            .get_ref()
            .set_read_timeout(Some(std::time::Duration::from_secs(60)))
            .unwrap();
        let (status, content_type) = super::read_head(&mut reader);
        assert_eq!(status, 200);
        assert_eq!(content_type, "text/event-stream");
        EventFeed { reader }
    }

    /// The next event, keep-alive comments skipped: its name and its data. `None` once the
    /// server closed the feed.
    pub fn next(&mut self) -> Option<(String, Value)> {
        use std::io::BufRead;
        let (mut event, mut data) = (String::new(), String::new());
        loop {
            let mut line = String::new();
            let read = self
                .reader
                .read_line(&mut line)
                .expect("an event within 60 s");
            if read == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if line.is_empty() {
                if !event.is_empty() || !data.is_empty() {
                    let data = serde_json::from_str(&data).expect("JSON data");
                    return Some((event, data));
                }
            } else if let Some(name) = line.strip_prefix("event: ") {
                event = name.to_owned();
            } else if let Some(text) = line.strip_prefix("data: ") {
                data.push_str(text);
            }
        }
    }

    /// The next `commands` event's requests.
    pub fn commands(&mut self) -> Vec<Value> {
        let (event, data) = self.next().expect("the feed is open");
        assert_eq!(event, "commands", "{data}");
        data["commands"].as_array().unwrap().clone()
    }
}
