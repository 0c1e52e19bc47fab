//! Server settings: each from its command-line flag, else its environment variable (clap
//! reads both), else the config file (`--config`, TOML), else the default.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! data = "/var/lib/latchkey"
//! store = "embedded:/var/lib/latchkey/events.db"
//! admin_email = "admin@msp.example"
//! token_default_expiry = "90d"   # API tokens for people: lifetime when none is asked for
//! token_max_expiry = "365d"      # and the longest an issuer may ask for (`expires_in`)
//! ```

use crate::auth::TokenLifetimes;
use serde::Deserialize;
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

/// The settings in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub listen: String,
    pub data: PathBuf,
    /// `None`: the embedded store in `<data>/events.db`.
    pub store: Option<String>,
    pub admin_email: String,
    pub token_lifetimes: TokenLifetimes,
}

/// The settings given by flags or the environment (`None`: not given).
#[derive(Debug, Default, Clone)]
pub struct Given {
    pub listen: Option<String>,
    pub data: Option<PathBuf>,
    pub store: Option<String>,
    pub admin_email: Option<String>,
    pub token_default_expiry: Option<String>,
    pub token_max_expiry: Option<String>,
}

impl Settings {
    /// Flags/environment first (`Some`), then the file, then the defaults; a bad value is an
    /// error naming its flag.
    pub fn resolve(given: Given, file: ConfigFile) -> Result<Self, String> {
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
        let (listen, data, store, admin_email) =
            (given.listen, given.data, given.store, given.admin_email);
        Ok(Self {
            listen: listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            data: data.or(file.data).unwrap_or_else(|| DEFAULT_DATA.into()),
            store: store.or(file.store),
            admin_email: admin_email
                .or(file.admin_email)
                .unwrap_or_else(|| DEFAULT_ADMIN_EMAIL.into()),
            token_lifetimes,
        })
    }

    /// The event store URL in force.
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("embedded:{}", self.data.join("events.db").display()))
    }
}

/// A duration written `<n>d`, `<n>h`, `<n>m`, `<n>s` or plain seconds: `90d`, `12h`, `3600`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&text[..i], c),
        _ => (text, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3_600,
        'd' => 86_400,
        _ => 0,
    };
    let seconds = digits
        .parse::<u64>()
        .ok()
        .filter(|_| scale > 0)
        .and_then(|n| n.checked_mul(scale));
    match seconds {
        Some(seconds) => Ok(Duration::from_secs(seconds)),
        None => Err(format!(
            "a duration must be a whole number with d, h, m or s, e.g. 90d, 12h, 3600s (got \
             {text:?})"
        )),
    }
}

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
        let defaults = Settings::resolve(Given::default(), ConfigFile::default()).unwrap();
        assert_eq!(defaults.listen, DEFAULT_LISTEN);
        assert_eq!(defaults.data, PathBuf::from(DEFAULT_DATA));
        assert_eq!(defaults.token_lifetimes, TokenLifetimes::default());
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

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let err = toml::from_str::<ConfigFile>("lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
