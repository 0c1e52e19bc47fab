//! `latchkey_sql` on PostgreSQL: a transaction's `BEGIN` and its `execute_later`
//! statements wait for the next statement that needs an answer and go out with it, in order;
//! a failure among them fails that statement and keeps the transaction from committing.

use latchkey_sql::{params, PgConnection, Sql, SqlError, SqlExt};
use latchkey_store::postgres::testing::TestDatabase;

fn connect(db: &TestDatabase) -> PgConnection {
    PgConnection::connect(db.url(), "public").unwrap()
}

fn values(conn: &PgConnection) -> Vec<i64> {
    conn.map("SELECT v FROM t ORDER BY v", &[], |row| row.get(0))
        .unwrap()
}

fn with_table() -> (TestDatabase, PgConnection) {
    let db = TestDatabase::create_blocking();
    let conn = connect(&db);
    conn.batch("CREATE TABLE t (v BIGINT PRIMARY KEY)").unwrap();
    (db, conn)
}

#[test]
fn queued_statements_run_in_order_before_the_statement_that_needs_an_answer() {
    let (db, conn) = with_table();
    let other = connect(&db);
    let tx = conn.transaction().unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![1])
        .unwrap();
    tx.execute_later("UPDATE t SET v = v + 10", params![])
        .unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![2])
        .unwrap();
    // The query sees what was queued before it, in that order: 1 became 11 before 2 came.
    assert_eq!(values(&tx), [2, 11]);
    assert!(values(&other).is_empty(), "not committed yet");
    tx.execute_later("DELETE FROM t WHERE v = ?1", params![2])
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(values(&other), [11]);
}

#[test]
fn a_failed_queued_statement_fails_the_commit_and_nothing_of_the_transaction_stays() {
    let (db, conn) = with_table();
    let tx = conn.transaction().unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![1])
        .unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![1])
        .unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![2])
        .unwrap();
    let failed = tx.commit().unwrap_err();
    assert!(failed.is_unique_violation(), "{failed}");
    assert!(values(&connect(&db)).is_empty());
    // The connection is out of the failed transaction and works on.
    conn.execute("INSERT INTO t VALUES (?1)", params![3])
        .unwrap();
    assert_eq!(values(&connect(&db)), [3]);
}

#[test]
fn a_failed_queued_statement_fails_the_next_query_too() {
    let (_db, conn) = with_table();
    let tx = conn.transaction().unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![1])
        .unwrap();
    tx.execute_later("INSERT INTO nowhere VALUES (?1)", params![1])
        .unwrap();
    assert!(tx.query("SELECT v FROM t", &[]).is_err());
    drop(tx);
    assert!(values(&conn).is_empty());
}

#[test]
fn a_transaction_dropped_without_commit_sends_nothing_it_queued() {
    let (db, conn) = with_table();
    {
        let tx = conn.transaction().unwrap();
        tx.execute_later("INSERT INTO t VALUES (?1)", params![1])
            .unwrap();
    }
    {
        // Rolled back after some of it went out.
        let tx = conn.transaction().unwrap();
        tx.execute("INSERT INTO t VALUES (?1)", params![2]).unwrap();
        tx.execute_later("INSERT INTO t VALUES (?1)", params![3])
            .unwrap();
    }
    assert!(values(&connect(&db)).is_empty());
    let tx = conn.transaction().unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![4])
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(values(&connect(&db)), [4]);
}

#[test]
fn outside_a_transaction_a_later_statement_runs_at_once() {
    let (db, conn) = with_table();
    conn.execute_later("INSERT INTO t VALUES (?1)", params![5])
        .unwrap();
    assert_eq!(values(&connect(&db)), [5]);
}

#[test]
fn a_transaction_without_statements_commits_and_the_next_one_starts_afresh() {
    let (db, conn) = with_table();
    conn.transaction().unwrap().commit().unwrap();
    conn.read_transaction().unwrap().commit().unwrap();
    let tx = conn.read_transaction().unwrap();
    let read_only = tx
        .execute("INSERT INTO t VALUES (?1)", params![1])
        .unwrap_err();
    assert!(read_only.to_string().contains("read-only"), "{read_only}");
    drop(tx);
    let tx = conn.transaction().unwrap();
    tx.execute("INSERT INTO t VALUES (?1)", params![1]).unwrap();
    tx.commit().unwrap();
    assert_eq!(values(&connect(&db)), [1]);
}

#[test]
fn after_a_statement_that_did_not_prepare_nothing_runs_outside_the_transaction() {
    let (db, conn) = with_table();
    let tx = conn.transaction().unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![1])
        .unwrap();
    // Fails before anything went out, the transaction's BEGIN included. A caller that
    // ignores the error must not have the rest of its transaction run statement by statement.
    assert!(tx.query("SELECT nothing FROM nowhere", &[]).is_err());
    let refused = tx
        .execute("INSERT INTO t VALUES (?1)", params![2])
        .unwrap_err();
    assert!(matches!(refused, SqlError::TransactionFailed), "{refused}");
    assert!(tx
        .execute_later("INSERT INTO t VALUES (?1)", params![3])
        .is_err());
    let commit = tx.commit().unwrap_err();
    assert!(matches!(commit, SqlError::TransactionFailed), "{commit}");
    assert!(values(&connect(&db)).is_empty());
    // The next transaction works.
    let tx = conn.transaction().unwrap();
    tx.execute_later("INSERT INTO t VALUES (?1)", params![4])
        .unwrap();
    tx.commit().unwrap();
    assert_eq!(values(&connect(&db)), [4]);
}

#[test]
fn a_server_side_failure_ignored_by_the_caller_still_fails_the_commit() {
    let (db, conn) = with_table();
    let tx = conn.transaction().unwrap();
    tx.execute("INSERT INTO t VALUES (?1)", params![1]).unwrap();
    assert!(tx.execute("INSERT INTO t VALUES (?1)", params![1]).is_err());
    assert!(tx.commit().is_err());
    assert!(values(&connect(&db)).is_empty());
}
