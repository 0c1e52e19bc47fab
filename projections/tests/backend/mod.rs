//! The database the read-model tests run on: SQLite in memory by default, or a fresh
//! PostgreSQL database (on `LATCHKEY_TEST_POSTGRES_URL`) with
//! `LATCHKEY_TEST_READ_MODELS=postgres`. `scripts/test.sh` runs these tests both ways.

use latchkey_projections::ReadModels;

pub const BACKEND_VAR: &str = "LATCHKEY_TEST_READ_MODELS";

fn postgres() -> bool {
    match std::env::var(BACKEND_VAR).as_deref() {
        Ok("postgres") => true,
        Ok("sqlite") | Ok("") | Err(_) => false,
        Ok(other) => panic!("{BACKEND_VAR}={other}: expected sqlite or postgres"),
    }
}

/// Empty read models on the backend the run asks for.
#[allow(dead_code)] // not every test file uses both
pub async fn fresh() -> ReadModels {
    if postgres() {
        let database = latchkey_store::postgres::testing::TestDatabase::create().await;
        ReadModels::open(latchkey_sql::Place::Postgres(database.url().to_owned())).unwrap()
    } else {
        ReadModels::in_memory().unwrap()
    }
}

/// Empty read models on the backend the run asks for, and a function that opens another
/// writer on the same database (as another server, or `latchkey replay`, would). The
/// guard keeps a SQLite file alive.
#[allow(dead_code)] // not every test file uses both
pub async fn shared() -> (
    ReadModels,
    impl Fn() -> ReadModels,
    Option<tempfile::TempDir>,
) {
    if postgres() {
        let database = latchkey_store::postgres::testing::TestDatabase::create().await;
        let url = database.url().to_owned();
        let open = move || ReadModels::open(latchkey_sql::Place::Postgres(url.clone())).unwrap();
        (open(), Box::new(open) as Box<dyn Fn() -> ReadModels>, None)
    } else {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("read-models.db");
        let open = move || ReadModels::open(&path).unwrap();
        (
            open(),
            Box::new(open) as Box<dyn Fn() -> ReadModels>,
            Some(dir),
        )
    }
}
