//! The conformance suite against the embedded SQLite backend, one temporary file per case.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use latchkey_store::conformance::Backend;
use latchkey_store::{EmbeddedStore, EventStore};
use tempfile::TempDir;

struct Embedded {
    path: PathBuf,
    _dir: TempDir,
}

impl Embedded {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Self {
            path: dir.path().join("store/events.db"),
            _dir: dir,
        }
    }
}

#[async_trait]
impl Backend for Embedded {
    async fn open(&self) -> Arc<dyn EventStore> {
        let store = EmbeddedStore::open(&self.path)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.path.display()));
        Arc::new(store)
    }

    fn url(&self) -> Option<String> {
        Some(format!("embedded:{}", self.path.display()))
    }
}

latchkey_store::conformance_tests!(Embedded::new());
