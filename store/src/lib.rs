//! The event store port: one [`EventStore`] trait shaped after KurrentDB's semantics
//! (expected stream state, idempotent event ids, a global order, catch-up-then-live
//! subscriptions), its backends, and the conformance suite every backend must pass.
//! Nothing above this crate knows which backend it talks to; nothing here knows the domain.

pub mod api;
mod append_rules;
pub mod conformance;
pub mod embedded;
pub mod hash_chain;
pub mod memory;
mod sequence;
pub mod subscription;

use std::sync::Arc;

pub use api::*;
pub use embedded::EmbeddedStore;
pub use memory::MemoryStore;
pub use subscription::{subscribe_all, Subscription};

/// The forms `open_url` accepts, for error messages.
const ACCEPTED_URLS: &str =
    "memory:, embedded:<path> or a plain file path (postgres:// and kurrentdb:// are not \
     supported yet)";

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
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Location<'a> {
    Memory,
    Embedded(&'a str),
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
        let what = match scheme {
            "postgres" | "postgresql" | "kurrentdb" | "esdb" | "esdb+discover" => {
                format!("the {scheme} event store backend is not supported yet")
            }
            _ => format!("unknown event store scheme {scheme:?}"),
        };
        return Err(unsupported(&what));
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
        for url in [
            "postgres://localhost/latchkey",
            "kurrentdb://localhost:2113",
            "ftp://x",
            "",
            "embedded:",
        ] {
            let message = parse_url(url).map(|_| ()).unwrap_err().to_string();
            assert!(
                message.contains("memory:, embedded:<path>"),
                "{url}: {message}"
            );
        }
        let message = parse_url("postgres://x")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(message.contains("not supported yet"), "{message}");
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
