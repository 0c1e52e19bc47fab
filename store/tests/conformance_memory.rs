//! The conformance suite against the in-memory backend.

use std::sync::Arc;

use async_trait::async_trait;
use latchkey_store::conformance::Backend;
use latchkey_store::{EventStore, MemoryStore};

/// Every `open` hands out another handle on the same data, which is what "reopen" means for
/// a store that lives in memory.
struct Memory(MemoryStore);

#[async_trait]
impl Backend for Memory {
    async fn open(&self) -> Arc<dyn EventStore> {
        Arc::new(self.0.clone())
    }

    fn url(&self) -> Option<String> {
        None
    }
}

latchkey_store::conformance_tests!(Memory(MemoryStore::new()));
