//! The database the read-model tests run on: SQLite in memory by default, or a fresh
//! PostgreSQL database (on `LATCHKEY_TEST_POSTGRES_URL`) with
//! `LATCHKEY_TEST_READ_MODELS=postgres`. `scripts/test.sh` runs these tests both ways.

use latchkey_projections::ReadModels;

pub const BACKEND_VAR: &str = "LATCHKEY_TEST_READ_MODELS";

/// Empty read models on the backend the run asks for.
pub async fn fresh() -> ReadModels {
    match std::env::var(BACKEND_VAR).as_deref() {
        Ok("postgres") => {
            let database = latchkey_store::postgres::testing::TestDatabase::create().await;
            ReadModels::open_postgres(database.url()).unwrap()
        }
        Ok("sqlite") | Ok("") | Err(_) => ReadModels::in_memory().unwrap(),
        Ok(other) => panic!("{BACKEND_VAR}={other}: expected sqlite or postgres"),
    }
}
