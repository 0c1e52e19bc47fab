//! Server settings: each from its command-line flag, else its environment variable (clap
//! reads both), else the config file (`--config`, TOML), else the default. The flags and the
//! file are two [`Layer`]s, merged key by key with figment (the flags' layer on top).
//!
//! ```toml
//! listen = "0.0.0.0:8443"
//! data = "/var/lib/latchkey"
//! store = "embedded:/var/lib/latchkey/events.db"
//! admin_email = "admin@msp.example"
//! tls_cert = "/etc/latchkey/tls/fullchain.pem"
//! tls_key = "/etc/latchkey/tls/privkey.pem"
//! # insecure_http = true   # plain HTTP on a non-loopback address, behind a TLS proxy
//! auth_failures_per_address = 10
//! auth_failures_per_token = 5
//! auth_failure_window_seconds = 60
//! trusted_proxies = ["10.0.0.0/8"]   # believe X-Forwarded-For from these peers only
//! token_default_expiry = "90d"   # API tokens for people: lifetime when none is asked for
//! token_max_expiry = "365d"      # and the longest an issuer may ask for (`expires_in`)
//! ```
//!
//! Plain HTTP is served only on a loopback address or when asked for by name
//! (`insecure_http`): anywhere else, tokens and passwords would cross the network in clear.

use crate::ratelimit::{self, IpNet, Limits};
use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use latchkey_server_stores::tokens::TokenLifetimes;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA: &str = "./data";
pub const DEFAULT_ADMIN_EMAIL: &str = "admin@latchkey.local";

/// One layer of settings: the config file's, or what the flags and the environment gave.
/// A key the layer does not set is `None`, and the layer below (or the default) applies.
/// Unknown keys are an error naming the key, so a typo in the file is not ignored.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layer {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure_http: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failures_per_address: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failures_per_token: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auth_failure_window_seconds: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trusted_proxies: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_default_expiry: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_max_expiry: Option<String>,
}

impl Layer {
    /// The config file at `path` (TOML).
    pub fn load(path: &Path) -> Result<Self, String> {
        // Read here, so a missing or unreadable file is an error, not an empty layer.
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: cannot read it: {e}", path.display()))?;
        Figment::from(Toml::string(&text))
            .extract()
            .map_err(|e| format!("--config {}: {e}", path.display()))
    }

    /// This layer over `below`: each key this layer sets wins.
    pub fn over(self, below: Layer) -> Result<Layer, String> {
        Figment::from(Serialized::defaults(below))
            .merge(Serialized::defaults(self))
            .extract()
            .map_err(|e| format!("the settings could not be merged: {e}"))
    }
}

/// The largest failure limit accepted (a higher one would be no limit at all).
const MAX_FAILURE_LIMIT: u32 = 1_000_000;
/// The longest window accepted: a day.
const MAX_WINDOW_SECONDS: u64 = 86_400;

/// The server's certificate chain and its private key, PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: String,
    pub data: PathBuf,
    /// `None`: the embedded store in `<data>/events.db`.
    pub store: Option<String>,
    pub admin_email: String,
    /// `None`: plain HTTP (see [`Settings::transport`]).
    pub tls: Option<TlsFiles>,
    /// Plain HTTP on a non-loopback address was asked for by name.
    pub insecure_http: bool,
    /// Failed-authentication limits and the proxies whose `X-Forwarded-For` is believed.
    pub limits: Limits,
    pub token_lifetimes: TokenLifetimes,
}

/// How the server speaks to its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    Https(TlsFiles),
    /// Plain HTTP; `exposed` when some listen address is not loopback (allowed only by
    /// `insecure_http`, and warned about).
    Http {
        exposed: bool,
    },
}

impl Settings {
    /// Flags/environment first, then the file, then the defaults. The certificate and its key
    /// come together or not at all.
    pub fn resolve(given: Layer, file: Layer) -> Result<Self, String> {
        let set = given.over(file)?;
        let tls = match (set.tls_cert, set.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => {
                return Err("--tls-cert is given but --tls-key is not: give both, the \
                            certificate chain and its private key (PEM files)"
                    .into())
            }
            (None, Some(_)) => {
                return Err("--tls-key is given but --tls-cert is not: give both, the \
                            certificate chain and its private key (PEM files)"
                    .into())
            }
        };
        let lifetime = |flag: &str, set: Option<String>, default| match set {
            None => Ok(default),
            Some(text) => parse_duration(&text).map_err(|e| format!("--{flag}: {e}")),
        };
        let defaults = TokenLifetimes::default();
        let token_lifetimes = TokenLifetimes::new(
            lifetime(
                "token-default-expiry",
                set.token_default_expiry,
                defaults.default,
            )?,
            lifetime("token-max-expiry", set.token_max_expiry, defaults.max)?,
        )
        .map_err(|e| format!("--token-default-expiry / --token-max-expiry: {e}"))?;
        Ok(Self {
            listen: set.listen.unwrap_or_else(|| DEFAULT_LISTEN.into()),
            data: set.data.unwrap_or_else(|| DEFAULT_DATA.into()),
            store: set.store,
            admin_email: set
                .admin_email
                .unwrap_or_else(|| DEFAULT_ADMIN_EMAIL.into()),
            tls,
            insecure_http: set.insecure_http.unwrap_or(false),
            limits: Limits {
                per_address: failure_limit(
                    "--auth-failures-per-address",
                    set.auth_failures_per_address,
                    ratelimit::DEFAULT_PER_ADDRESS,
                )?,
                per_token: failure_limit(
                    "--auth-failures-per-token",
                    set.auth_failures_per_token,
                    ratelimit::DEFAULT_PER_TOKEN,
                )?,
                window: match set.auth_failure_window_seconds {
                    None => ratelimit::DEFAULT_WINDOW,
                    Some(s) if (1..=MAX_WINDOW_SECONDS).contains(&s) => Duration::from_secs(s),
                    Some(s) => {
                        return Err(format!(
                            "--auth-failure-window-seconds must be from 1 to \
                             {MAX_WINDOW_SECONDS} (got {s})"
                        ))
                    }
                },
                max_entries: ratelimit::DEFAULT_MAX_ENTRIES,
                trusted_proxies: set
                    .trusted_proxies
                    .unwrap_or_default()
                    .iter()
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| IpNet::parse(p).map_err(|e| format!("--trusted-proxy: {e}")))
                    .collect::<Result<_, _>>()?,
            },
            token_lifetimes,
        })
    }

    /// The event store URL in force.
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("embedded:{}", self.data.join("events.db").display()))
    }

    /// HTTPS when a certificate is configured; plain HTTP on loopback addresses only, or
    /// anywhere when `insecure_http` asks for it; otherwise the reason the server must not
    /// start. `addrs` are the listen address resolved.
    pub fn transport(&self, addrs: &[SocketAddr]) -> Result<Transport, String> {
        let exposed = addrs.is_empty() || addrs.iter().any(|a| !a.ip().is_loopback());
        match (&self.tls, self.insecure_http) {
            (Some(_), true) => Err("--insecure-http and --tls-cert/--tls-key are both given: \
                 serve HTTPS with the certificate, or plain HTTP, not both"
                .into()),
            (Some(files), false) => Ok(Transport::Https(files.clone())),
            (None, true) => Ok(Transport::Http { exposed }),
            (None, false) if !exposed => Ok(Transport::Http { exposed }),
            (None, false) => Err(format!(
                "--listen {}: not a loopback address, and plain HTTP there would carry API \
                 tokens, agent credentials and passwords in clear. Give the server a \
                 certificate with --tls-cert FILE --tls-key FILE (PEM; LATCHKEY_TLS_CERT and \
                 LATCHKEY_TLS_KEY, or tls_cert and tls_key in the config file), or, when a \
                 proxy in front of it terminates TLS, pass --insecure-http \
                 (LATCHKEY_INSECURE_HTTP=true, or insecure_http = true)",
                self.listen
            )),
        }
    }
}

/// A failure limit from 1 to [`MAX_FAILURE_LIMIT`], or the default.
fn failure_limit(flag: &str, given: Option<u32>, default: u32) -> Result<u32, String> {
    match given {
        None => Ok(default),
        Some(n) if (1..=MAX_FAILURE_LIMIT).contains(&n) => Ok(n),
        Some(n) => Err(format!(
            "{flag} must be from 1 to {MAX_FAILURE_LIMIT} failed authentications per window \
             (got {n})"
        )),
    }
}
/// Durations (`90d`, `12h`, `3600`) are written as on the CLI's command line.
pub use latchkey_cli::parse_duration;

/// A store URL fit for a log line or an error message: a password in it (`postgres://user:
/// password@host/db`) is replaced by `***`.
pub fn redacted_store_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => match parsed.set_password(Some("***")) {
            Ok(()) => parsed.to_string(),
            Err(()) => "(a store URL that cannot be shown)".into(),
        },
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_password_in_a_store_url_is_never_shown() {
        let shown = redacted_store_url("postgres://latchkey:s3cret-pw@db.example:5432/latchkey");
        assert!(!shown.contains("s3cret-pw"), "{shown}");
        assert_eq!(shown, "postgres://latchkey:***@db.example:5432/latchkey");
        for plain in [
            "postgres://latchkey@127.0.0.1:5432/db",
            "embedded:/var/lib/latchkey/events.db",
            "memory:",
        ] {
            assert_eq!(redacted_store_url(plain), plain);
        }
    }
    use super::*;

    /// A config file's layer, from its text.
    fn file_layer(text: &str) -> Layer {
        Figment::from(Toml::string(text))
            .extract()
            .expect("a valid config file")
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_the_defaults() {
        let file = file_layer("listen = \"0.0.0.0:9000\"\ndata = \"/srv/lk\"");
        let given = Layer {
            listen: Some("127.0.0.1:1".into()),
            ..Layer::default()
        };
        let settings = Settings::resolve(given, file).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:1");
        assert_eq!(settings.data, PathBuf::from("/srv/lk"));
        assert_eq!(settings.admin_email, DEFAULT_ADMIN_EMAIL);
        assert_eq!(settings.store_url(), "embedded:/srv/lk/events.db");
        assert_eq!(settings.tls, None);
        assert!(!settings.insecure_http);
        let defaults = Settings::resolve(Layer::default(), Layer::default()).unwrap();
        assert_eq!(defaults.listen, DEFAULT_LISTEN);
        assert_eq!(defaults.data, PathBuf::from(DEFAULT_DATA));
        assert_eq!(defaults.token_lifetimes, TokenLifetimes::default());
    }

    #[test]
    fn the_certificate_and_its_key_come_from_flags_or_the_file_and_only_together() {
        let file = file_layer(
            "tls_cert = \"/etc/lk/chain.pem\"\ntls_key = \"/etc/lk/key.pem\"\ninsecure_http = false",
        );
        let given = Layer {
            tls_cert: Some("/run/chain.pem".into()),
            ..Layer::default()
        };
        let settings = Settings::resolve(given, file).unwrap();
        assert_eq!(
            settings.tls,
            Some(TlsFiles {
                cert: "/run/chain.pem".into(),
                key: "/etc/lk/key.pem".into()
            })
        );
        let half = Layer {
            tls_key: Some("/run/key.pem".into()),
            ..Layer::default()
        };
        let err = Settings::resolve(half, Layer::default()).unwrap_err();
        assert!(
            err.starts_with("--tls-key is given but --tls-cert is not"),
            "{err}"
        );
    }

    #[test]
    fn plain_http_only_on_loopback_unless_asked_for_by_name() {
        let addrs = |text: &str| -> Vec<SocketAddr> { vec![text.parse().unwrap()] };
        let settings = |listen: &str, insecure_http: bool, tls: bool| Settings {
            listen: listen.into(),
            data: DEFAULT_DATA.into(),
            store: None,
            admin_email: DEFAULT_ADMIN_EMAIL.into(),
            tls: tls.then(|| TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into(),
            }),
            insecure_http,
            limits: Limits::default(),
            token_lifetimes: TokenLifetimes::default(),
        };
        for loopback in ["127.0.0.1:8080", "127.0.0.2:1", "[::1]:8080"] {
            assert_eq!(
                settings(loopback, false, false).transport(&addrs(loopback)),
                Ok(Transport::Http { exposed: false })
            );
        }
        for exposed in ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080"] {
            let err = settings(exposed, false, false)
                .transport(&addrs(exposed))
                .unwrap_err();
            assert!(
                err.starts_with(&format!("--listen {exposed}: not a loopback")),
                "{err}"
            );
            assert!(err.contains("--tls-cert FILE --tls-key FILE"), "{err}");
            assert!(err.contains("--insecure-http"), "{err}");
            assert_eq!(
                settings(exposed, true, false).transport(&addrs(exposed)),
                Ok(Transport::Http { exposed: true })
            );
            assert!(matches!(
                settings(exposed, false, true).transport(&addrs(exposed)),
                Ok(Transport::Https(_))
            ));
        }
        // A name that resolves to loopback and elsewhere is exposed.
        let mixed = vec![
            "127.0.0.1:80".parse().unwrap(),
            "192.0.2.7:80".parse().unwrap(),
        ];
        assert!(settings("both:80", false, false).transport(&mixed).is_err());
        let err = settings("0.0.0.0:1", true, true)
            .transport(&addrs("0.0.0.0:1"))
            .unwrap_err();
        assert!(err.contains("not both"), "{err}");
    }

    #[test]
    fn the_authentication_limits_come_from_flags_or_the_file_and_are_checked() {
        let defaults = Settings::resolve(Layer::default(), Layer::default()).unwrap();
        assert_eq!(defaults.limits, Limits::default());
        let file = file_layer(
            "auth_failures_per_address = 20\nauth_failure_window_seconds = 300\n\
             trusted_proxies = [\"10.0.0.0/8\", \"::1\"]",
        );
        let given = Layer {
            auth_failures_per_token: Some(3),
            ..Layer::default()
        };
        let limits = Settings::resolve(given, file).unwrap().limits;
        assert_eq!(limits.per_address, 20);
        assert_eq!(limits.per_token, 3);
        assert_eq!(limits.window, Duration::from_secs(300));
        assert_eq!(
            limits.trusted_proxies,
            vec![
                IpNet::parse("10.0.0.0/8").unwrap(),
                IpNet::parse("::1").unwrap()
            ]
        );
        let zero = Layer {
            auth_failures_per_address: Some(0),
            ..Layer::default()
        };
        let err = Settings::resolve(zero, Layer::default()).unwrap_err();
        assert!(
            err.starts_with("--auth-failures-per-address must be"),
            "{err}"
        );
        let bad_proxy = Layer {
            trusted_proxies: Some(vec!["proxy.example".into()]),
            ..Layer::default()
        };
        let err = Settings::resolve(bad_proxy, Layer::default()).unwrap_err();
        assert!(
            err.starts_with("--trusted-proxy: \"proxy.example\""),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it_and_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latchkey.toml");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\nlisen = \"x\"").unwrap();
        let err = Layer::load(&path).unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        assert!(
            err.starts_with(&format!("--config {}", path.display())),
            "{err}"
        );
        let missing = dir.path().join("missing.toml");
        let err = Layer::load(&missing).unwrap_err();
        assert!(err.contains("cannot read it"), "{err}");
        std::fs::write(&path, "listen = \"127.0.0.1:1\"\ninsecure_http = true").unwrap();
        let file = Layer::load(&path).unwrap();
        assert_eq!(file.listen.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(file.insecure_http, Some(true));
    }

    #[test]
    fn a_layer_wins_key_by_key_over_the_one_below() {
        let file = Layer {
            listen: Some("0.0.0.0:9000".into()),
            trusted_proxies: Some(vec!["10.0.0.0/8".into()]),
            insecure_http: Some(true),
            ..Layer::default()
        };
        let given = Layer {
            listen: Some("127.0.0.1:1".into()),
            ..Layer::default()
        };
        let set = given.over(file).unwrap();
        assert_eq!(set.listen.as_deref(), Some("127.0.0.1:1"));
        assert_eq!(set.trusted_proxies, Some(vec!["10.0.0.0/8".to_owned()]));
        assert_eq!(set.insecure_http, Some(true));
        assert_eq!(set.data, None);
    }

    #[test]
    fn token_lifetimes_come_from_flags_or_the_file_and_are_checked() {
        let file = file_layer("token_default_expiry = \"7d\"\ntoken_max_expiry = \"30d\"");
        let given = Layer {
            token_max_expiry: Some("14d".into()),
            ..Layer::default()
        };
        let settings = Settings::resolve(given, file).unwrap();
        assert_eq!(
            settings.token_lifetimes.default,
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(
            settings.token_lifetimes.max,
            Duration::from_secs(14 * 86_400)
        );
        let longer = Layer {
            token_default_expiry: Some("400d".into()),
            ..Layer::default()
        };
        let error = Settings::resolve(longer, Layer::default()).unwrap_err();
        assert!(error.contains("longer than the maximum"), "{error}");
        let garbled = Layer {
            token_max_expiry: Some("a year".into()),
            ..Layer::default()
        };
        let error = Settings::resolve(garbled, Layer::default()).unwrap_err();
        assert!(error.starts_with("--token-max-expiry:"), "{error}");
    }

    #[test]
    fn durations_are_read_with_their_unit() {
        assert_eq!(parse_duration("90d"), Ok(Duration::from_secs(90 * 86_400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1_800)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("3600"), Ok(Duration::from_secs(3_600)));
        for bad in ["", "d", "1w", "-5d", "1.5h", "99999999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
