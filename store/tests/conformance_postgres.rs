//! The conformance suite against the PostgreSQL backend, one fresh database per case on the
//! server `LATCHKEY_TEST_POSTGRES_URL` names (`bash scripts/test.sh` starts one). Without
//! that variable every case fails, saying so: a suite that skips itself proves nothing.

use std::sync::Arc;

use async_trait::async_trait;
use latchkey_store::conformance::Backend;
use latchkey_store::postgres::testing::TestDatabase;
use latchkey_store::postgres::PostgresStore;
use latchkey_store::EventStore;

struct Postgres(TestDatabase);

impl Postgres {
    async fn new() -> Self {
        Self(TestDatabase::create().await)
    }
}

#[async_trait]
impl Backend for Postgres {
    async fn open(&self) -> Arc<dyn EventStore> {
        let store = PostgresStore::connect(self.0.url())
            .await
            .unwrap_or_else(|e| panic!("cannot open the store in {}: {e}", self.0.name()));
        Arc::new(store)
    }

    fn url(&self) -> Option<String> {
        Some(self.0.url().to_owned())
    }
}

latchkey_store::conformance_tests!(Postgres::new().await);
