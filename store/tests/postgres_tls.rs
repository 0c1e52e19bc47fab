//! TLS to PostgreSQL: `scripts/test.sh` gives its cluster a certificate signed by a throw-away
//! CA, names the CA in `LATCHKEY_POSTGRES_CA` and sets `LATCHKEY_TEST_POSTGRES_TLS=1`; every
//! other PostgreSQL test then runs over TLS too (connections prefer it). Against a server
//! of your own without TLS these tests say SKIPPED.

use latchkey_sql::tls;
use latchkey_sql::{PgConnection, SqlExt};
use latchkey_store::postgres::testing::TestDatabase;

fn tls_server() -> bool {
    let on = std::env::var("LATCHKEY_TEST_POSTGRES_TLS").is_ok_and(|v| v == "1");
    if !on {
        eprintln!("SKIPPED: LATCHKEY_TEST_POSTGRES_TLS is not 1 (scripts/test.sh sets it)");
    }
    on
}

fn require_tls(url: &str) -> String {
    format!("{url}?sslmode=require")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_connection_talks_tls_with_a_verified_server() {
    if !tls_server() {
        return;
    }
    let db = TestDatabase::create().await;
    let url = require_tls(db.url());
    // The read side and the server's own tables.
    let conn = PgConnection::connect(&url, "public").unwrap();
    let encrypted: bool = conn
        .one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
            |row| row.get(0),
        )
        .unwrap()
        .unwrap();
    assert!(encrypted, "the read-side connection is encrypted");
    // The event store (pool and wake-ups) with TLS required.
    let store = latchkey_store::postgres::PostgresStore::connect(&url)
        .await
        .unwrap();
    let stream = latchkey_store::conformance::unique_stream("tls");
    latchkey_store::conformance::append_ok(
        &store,
        &stream,
        latchkey_store::ExpectedState::NoStream,
        latchkey_store::conformance::events(0, 1),
    )
    .await;
    let unencrypted: i64 = conn
        .one(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = current_database() AND NOT s.ssl",
            &[],
            |row| row.get(0),
        )
        .unwrap()
        .unwrap();
    assert_eq!(
        unencrypted, 0,
        "no connection to the database is in the clear"
    );
    // Leadership.
    let leader = latchkey_store::postgres::leader::Leadership::acquire(
        &url,
        7,
        std::time::Duration::from_millis(20),
    )
    .await;
    assert!(leader.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_no_trusted_ca_signed_is_refused() {
    if !tls_server() {
        return;
    }
    let db = TestDatabase::create().await;
    // The system's roots only: the test CA is not among them.
    let untrusting = tls::connector_trusting(None).unwrap();
    let refused = tokio_postgres::connect(&require_tls(db.url()), untrusting).await;
    let error = refused.err().expect("the handshake must fail");
    assert!(
        format!("{error:?}").to_lowercase().contains("certificate"),
        "{error:?}"
    );
}

#[test]
fn a_ca_file_that_is_not_a_certificate_is_named_in_the_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ca.pem");
    std::fs::write(&path, "not a certificate").unwrap();
    let error = tls::connector_trusting(Some(&path))
        .err()
        .unwrap()
        .to_string();
    assert!(error.contains("LATCHKEY_POSTGRES_CA"), "{error}");
    assert!(error.contains("ca.pem"), "{error}");
    let missing = tls::connector_trusting(Some(&dir.path().join("nowhere.pem")))
        .err()
        .unwrap()
        .to_string();
    assert!(missing.contains("nowhere.pem"), "{missing}");
}
