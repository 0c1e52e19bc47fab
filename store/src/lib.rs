//! The event store port: one [`EventStore`] trait shaped after KurrentDB's semantics
//! (expected stream state, idempotent event ids, a global order, catch-up-then-live
//! subscriptions), its backends, and the conformance suite every backend must pass.
//! Nothing above this crate knows which backend it talks to; nothing here knows the domain.
//! The SQL layer the read side shares with the backends is its own crate, `latchkey-sql`.
//! The conformance suite and the PostgreSQL test databases are built only for tests (the
//! `testing` feature, which other crates' tests switch on).

pub mod api;
mod append_rules;
pub mod backend;
#[cfg(any(test, feature = "testing"))]
pub mod conformance;
pub mod embedded;
pub mod hash_chain;
#[cfg(feature = "kurrentdb")]
pub mod kurrentdb;
pub mod memory;
pub mod postgres;
mod sequence;
pub mod subscription;

use std::sync::Arc;

pub use api::*;
pub use backend::{Backend, Leadership};
pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;
pub use subscription::{subscribe_all, Subscription};

/// The forms `open_url` accepts, for error messages.
const ACCEPTED_URLS: &str = "memory:, embedded:<path>, a plain file path, \
     postgres://user@host/db or kurrentdb://host:2113 (esdb:// also)";

/// Opens the store a `--store` value names: `memory:` for an in-memory store,
/// `embedded:<path>` or a plain filesystem path for the embedded SQLite store.
pub async fn open_url(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    match parse_url(url)? {
        Location::Memory => Ok(Arc::new(MemoryStore::new())),
        Location::Embedded(path) => {
            let path = path.to_owned();
            let store = tokio::task::spawn_blocking(move || EmbeddedStore::open(path))
                .await
                .map_err(|e| StoreError::Unavailable(format!("opening the store failed: {e}")))??;
            Ok(Arc::new(store))
        }
        Location::Postgres(url) => postgres::open(url).await,
        #[cfg(feature = "kurrentdb")]
        Location::Kurrent(url) => kurrentdb::open(url).await,
        #[cfg(not(feature = "kurrentdb"))]
        Location::Kurrent(_) => Err(StoreError::Unavailable(
            "this build has no KurrentDB backend; build with `--features kurrentdb`".into(),
        )),
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Location<'a> {
    Memory,
    Embedded(&'a str),
    Postgres(&'a str),
    Kurrent(&'a str),
}

fn parse_url(url: &str) -> Result<Location<'_>, StoreError> {
    let unsupported =
        |what: &str| StoreError::Unavailable(format!("{what} (got {url:?}); use {ACCEPTED_URLS}"));
    if url == "memory:" || url == "memory://" {
        return Ok(Location::Memory);
    }
    if let Some(path) = url
        .strip_prefix("embedded://")
        .or_else(|| url.strip_prefix("embedded:"))
    {
        return match path {
            "" => Err(unsupported("an embedded store needs a file path")),
            path => Ok(Location::Embedded(path)),
        };
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return match scheme {
            "postgres" | "postgresql" => Ok(Location::Postgres(url)),
            "kurrentdb" | "kurrentdb+discover" | "esdb" | "esdb+discover" => {
                Ok(Location::Kurrent(url))
            }
            _ => Err(unsupported(&format!(
                "unknown event store scheme {scheme:?}"
            ))),
        };
    }
    if url.is_empty() {
        return Err(unsupported("the event store location is empty"));
    }
    Ok(Location::Embedded(url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_urls_name_a_backend() {
        assert_eq!(parse_url("memory:").ok(), Some(Location::Memory));
        assert_eq!(
            parse_url("embedded:/var/lib/latchkey/events.db").ok(),
            Some(Location::Embedded("/var/lib/latchkey/events.db"))
        );
        assert_eq!(
            parse_url("embedded://data/events.db").ok(),
            Some(Location::Embedded("data/events.db"))
        );
        assert_eq!(
            parse_url("data/events.db").ok(),
            Some(Location::Embedded("data/events.db"))
        );
    }

    #[test]
    fn unsupported_urls_say_what_is_accepted() {
        for url in ["ftp://x", "", "embedded:"] {
            let message = parse_url(url).map(|_| ()).unwrap_err().to_string();
            assert!(
                message.contains("memory:, embedded:<path>"),
                "{url}: {message}"
            );
        }
        assert_eq!(
            parse_url("postgres://localhost/latchkey").ok(),
            Some(Location::Postgres("postgres://localhost/latchkey"))
        );
        assert_eq!(
            parse_url("kurrentdb://localhost:2113").ok(),
            Some(Location::Kurrent("kurrentdb://localhost:2113"))
        );
    }

    #[tokio::test]
    async fn open_url_opens_memory_and_embedded_stores() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/dir/events.db");
        let embedded = open_url(&format!("embedded:{}", path.display()))
            .await
            .expect("opens embedded");
        assert!(path.exists(), "the file and its directories are created");
        drop(embedded);
        let memory = open_url("memory:").await.expect("opens memory");
        assert!(memory.read_all(None, 10).await.expect("reads").is_empty());
    }
}
