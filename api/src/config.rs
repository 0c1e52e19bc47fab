//! Server settings: each from its command-line flag, else its environment variable (clap
//! reads both), else the config file (`--config`, TOML), else the default.
//!
//! ```toml
//! listen = "0.0.0.0:8080"
//! data = "/var/lib/latchkey"
//! store = "embedded:/var/lib/latchkey/events.db"
//! admin_email = "admin@msp.example"
//! ```

use serde::Deserialize;
use std::path::{Path, PathBuf};

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
}

impl Settings {
    /// Flags/environment first (`Some`), then the file, then the defaults.
    pub fn resolve(
        listen: Option<String>,
        data: Option<PathBuf>,
        store: Option<String>,
        admin_email: Option<String>,
        file: ConfigFile,
    ) -> Self {
        Self {
            listen: listen
                .or(file.listen)
                .unwrap_or_else(|| DEFAULT_LISTEN.into()),
            data: data.or(file.data).unwrap_or_else(|| DEFAULT_DATA.into()),
            store: store.or(file.store),
            admin_email: admin_email
                .or(file.admin_email)
                .unwrap_or_else(|| DEFAULT_ADMIN_EMAIL.into()),
        }
    }

    /// The event store URL in force.
    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("embedded:{}", self.data.join("events.db").display()))
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
        let settings = Settings::resolve(Some("127.0.0.1:1".into()), None, None, None, file);
        assert_eq!(settings.listen, "127.0.0.1:1");
        assert_eq!(settings.data, PathBuf::from("/srv/lk"));
        assert_eq!(settings.admin_email, DEFAULT_ADMIN_EMAIL);
        assert_eq!(settings.store_url(), "embedded:/srv/lk/events.db");
        let defaults = Settings::resolve(None, None, None, None, ConfigFile::default());
        assert_eq!(defaults.listen, DEFAULT_LISTEN);
        assert_eq!(defaults.data, PathBuf::from(DEFAULT_DATA));
    }

    #[test]
    fn an_unknown_key_in_the_file_is_an_error_naming_it() {
        let err = toml::from_str::<ConfigFile>("lisen = \"x\"").unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
