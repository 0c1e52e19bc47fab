//! Server settings: each from its command-line flag, else its environment variable (clap
//! reads both), else the config file (`--config`, TOML), else the default.
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
use latchkey_server_stores::tokens::TokenLifetimes;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATA: &str = "./data";
pub const DEFAULT_ADMIN_EMAIL: &str = "admin@latchkey.local";

/// The config file. Unknown keys are an error naming the key, so a typo is not ignored.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub store: Option<String>,
    pub admin_email: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_http: Option<bool>,
    pub auth_failures_per_address: Option<u32>,
    pub auth_failures_per_token: Option<u32>,
    pub auth_failure_window_seconds: Option<u64>,
    pub trusted_proxies: Option<Vec<String>>,
    pub token_default_expiry: Option<String>,
    pub token_max_expiry: Option<String>,
}

impl ConfigFile {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("--config {}: cannot read it: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("--config {}: {e}", path.display()))
    }
}

/// What the flags and the environment said (`None`/`false`: nothing).
#[derive(Debug, Default, Clone)]
pub struct Given {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub store: Option<String>,
    pub admin_email: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub insecure_http: bool,
    pub auth_failures_per_address: Option<u32>,
    pub auth_failures_per_token: Option<u32>,
    pub auth_failure_window_seconds: Option<u64>,
    /// Empty: none given (the file's, if any, apply).
    pub trusted_proxies: Vec<String>,
    pub token_default_expiry: Option<String>,
    pub token_max_expiry: Option<String>,
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
    pub fn resolve(given: Given, file: ConfigFile) -> Result<Self, String> {
        let tls = match (
            given.tls_cert.or(file.tls_cert),
            given.tls_key.or(file.tls_key),
        ) {
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
        let lifetime =
            |flag: &str, given: Option<String>, file: Option<String>, default| match given.or(file)
            {
                None => Ok(default),
                Some(text) => parse_duration(&text).map_err(|e| format!("--{flag}: {e}")),
            };
        let defaults = TokenLifetimes::default();
        let token_lifetimes = TokenLifetimes::new(
            lifetime(
                "token-default-expiry",
                given.token_default_expiry,
                file.token_default_expiry,
                defaults.default,
            )?,
            lifetime(
                "token-max-expiry",
                given.token_max_expiry,
                file.token_max_expiry,
                defaults.max,
            )?,
        )
        .map_err(|e| format!("--token-default-expiry / --token-max-expiry: {e}"))?;
        Ok(Self {
            listen: given
                .listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            data: given
                .data
                .or(file.data)
                .unwrap_or_else(|| DEFAULT_DATA.into()),
            store: given.store.or(file.store),
            admin_email: given
                .admin_email
                .or(file.admin_email)
                .unwrap_or_else(|| DEFAULT_ADMIN_EMAIL.into()),
            tls,
            insecure_http: given.insecure_http || file.insecure_http.unwrap_or(false),
            limits: Limits {
                per_address: failure_limit(
                    "--auth-failures-per-address",
                    given
                        .auth_failures_per_address
                        .or(file.auth_failures_per_address),
                    ratelimit::DEFAULT_PER_ADDRESS,
                )?,
                per_token: failure_limit(
                    "--auth-failures-per-token",
                    given
                        .auth_failures_per_token
                        .or(file.auth_failures_per_token),
                    ratelimit::DEFAULT_PER_TOKEN,
                )?,
                window: match given
                    .auth_failure_window_seconds
                    .or(file.auth_failure_window_seconds)
                {
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
                trusted_proxies: match given.trusted_proxies.is_empty() {
                    false => given.trusted_proxies,
                    true => file.trusted_proxies.unwrap_or_default(),
                }
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

    #[test]
    fn flags_beat_the_file_and_the_file_beats_the_defaults() {
        let file: ConfigFile =
            toml::from_str("listen = \"0.0.0.0:9000\"\ndata = \"/srv/lk\"").unwrap();
        let given = Given {
            listen: Some("127.0.0.1:1".into()),
            ..Given::default()
        };
        let settings = Settings::resolve(given, file).unwrap();
        assert_eq!(settings.listen, "127.0.0.1:1");
        assert_eq!(settings.data, PathBuf::from("/srv/lk"));
        assert_eq!(settings.admin_email, DEFAULT_ADMIN_EMAIL);
        assert_eq!(settings.store_url(), "embedded:/srv/lk/events.db");
        assert_eq!(settings.tls, None);
        assert!(!settings.insecure_http);
        let defaults = Settings::resolve(Given::default(), ConfigFile::default()).unwrap();
        assert_eq!(defaults.listen, DEFAULT_LISTEN);
        assert_eq!(defaults.data, PathBuf::from(DEFAULT_DATA));
        assert_eq!(defaults.token_lifetimes, TokenLifetimes::default());
    }

    #[test]
    fn the_certificate_and_its_key_come_from_flags_or_the_file_and_only_together() {
        let file: ConfigFile = toml::from_str(
            "tls_cert = \"/etc/lk/chain.pem\"\ntls_key = \"/etc/lk/key.pem\"\ninsecure_http = false",
        )
        .unwrap();
        let given = Given {
            tls_cert: Some("/run/chain.pem".into()),
            ..Given::default()
        };
        let settings = Settings::resolve(given, file).unwrap();
        assert_eq!(
            settings.tls,
            Some(TlsFiles {
                cert: "/run/chain.pem".into(),
                key: "/etc/lk/key.pem".into()
            })
        );
        let half = Given {
            tls_key: Some("/run/key.pem".into()),
            ..Given::default()
        };
        let err = Settings::resolve(half, ConfigFile::default()).unwrap_err();
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
        let defaults = Settings::resolve(Given::default(), ConfigFile::default()).unwrap();
        assert_eq!(defaults.limits, Limits::default());
        let file: ConfigFile = toml::from_str(
            "auth_failures_per_address = 20\nauth_failure_window_seconds = 300\n\
             trusted_proxies = [\"10.0.0.0/8\", \"::1\"]",
        )
        .unwrap();
        let given = Given {
            auth_failures_per_token: Some(3),
            ..Given::default()
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
        let zero = Given {
            auth_failures_per_address: Some(0),
            ..Given::default()
        };
        let err = Settings::resolve(zero, ConfigFile::default()).unwrap_err();
        assert!(
            err.starts_with("--auth-failures-per-address must be"),
            "{err}"
        );
        let bad_proxy = Given {
            trusted_proxies: vec!["proxy.example".into()],
            ..Given::default()
        };
        let err = Settings::resolve(bad_proxy, ConfigFile::default()).unwrap_err();
        assert!(
            err.starts_with("--trusted-proxy: \"proxy.example\""),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let err = toml::from_str::<ConfigFile>("lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }

    #[test]
    fn token_lifetimes_come_from_flags_or_the_file_and_are_checked() {
        let file: ConfigFile =
            toml::from_str("token_default_expiry = \"7d\"\ntoken_max_expiry = \"30d\"").unwrap();
        let given = Given {
            token_max_expiry: Some("14d".into()),
            ..Given::default()
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
        let longer = Given {
            token_default_expiry: Some("400d".into()),
            ..Given::default()
        };
        let error = Settings::resolve(longer, ConfigFile::default()).unwrap_err();
        assert!(error.contains("longer than the maximum"), "{error}");
        let garbled = Given {
            token_max_expiry: Some("a year".into()),
            ..Given::default()
        };
        let error = Settings::resolve(garbled, ConfigFile::default()).unwrap_err();
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
