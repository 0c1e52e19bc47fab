//! Work per event that does not grow with the past: the statements the projections run for
//! every provisioning result find their rows through an index that holds only what is open,
//! not every membership a computer's account ever had (a named account joins and leaves the
//! admin group once per session, for years).

use latchkey_projections::ReadModels;

/// SQLite's plan for `sql`, one line per step.
fn plan(db: &rusqlite::Connection, sql: &str) -> String {
    let mut statement = db.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
    let rows = statement
        .query_map([], |row| row.get::<_, String>(3))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    rows.join("\n")
}

#[test]
fn the_open_membership_of_an_account_is_found_without_reading_its_past() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read-models.db");
    drop(ReadModels::open(&path).unwrap());
    let db = rusqlite::Connection::open(&path).unwrap();
    // The two look-ups `accounts::apply` makes for every verified result.
    for sql in [
        "SELECT admin_group, joined_commit, joined_prepare FROM admin_memberships
         WHERE computer_id = 'c' AND account = 'a' AND left_at IS NULL",
        "SELECT 1 FROM admin_memberships
         WHERE computer_id = 'c' AND account = 'a' AND admin_group = 'g' AND left_at IS NULL",
    ] {
        let plan = plan(&db, sql);
        assert!(
            plan.contains("USING INDEX admin_memberships_open_by_account")
                || plan.contains("USING COVERING INDEX admin_memberships_open_by_account"),
            "{sql}\nplans: {plan}"
        );
    }
}
