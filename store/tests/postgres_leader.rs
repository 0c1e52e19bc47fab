//! Leadership among servers sharing a PostgreSQL database: one holder at a time, and the
//! next one takes over when the holder's connection ends.

use std::time::Duration;

use latchkey_store::postgres::leader::Leadership;
use latchkey_store::postgres::testing::TestDatabase;

const KEY: i64 = 42;
const RETRY: Duration = Duration::from_millis(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_server_leads_at_a_time_and_the_next_takes_over_when_it_goes() {
    let db = TestDatabase::create().await;
    let first = Leadership::acquire(db.url(), KEY, RETRY).await.unwrap();
    let url = db.url().to_owned();
    let mut second = tokio::spawn(async move { Leadership::acquire(&url, KEY, RETRY).await });
    // Many retries later, the second is still waiting: the first holds the lock.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut second)
            .await
            .is_err(),
        "a second leader while the first still leads"
    );
    // Another key is another leadership: not blocked.
    let other = Leadership::acquire(db.url(), KEY + 1, RETRY).await.unwrap();
    drop(first);
    let mut second = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second takes over once the first is gone")
        .unwrap()
        .unwrap();
    // Leadership is lost when its connection ends: kill the backend holding the lock.
    let admin = db.raw_connection().await;
    let killed = admin
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
             WHERE locktype = 'advisory' AND objid = $1 AND granted",
            &[&(KEY as u32)],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    assert_eq!(killed, 1, "exactly one session holds the lock");
    tokio::time::timeout(Duration::from_secs(30), second.lost())
        .await
        .expect("losing the connection is noticed");
    drop(other);
}
