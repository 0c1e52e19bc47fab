//! The PostgreSQL store's tables (in the `latchkey_store` schema, so the store can share a
//! database) and their migrations, applied on connect. Every migration
//! runs in one transaction under an advisory lock, so servers starting together never race
//! to create the schema; it must never touch a database whose schema is newer than it knows.

use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use crate::api::StoreError;

/// `pg_advisory_xact_lock` key serialising migrations ("LKEY"; advisory locks are per
/// database, so stores in other databases of the cluster never wait for each other). The
/// two-number form, so it never collides with the streams' one-number keys
/// (`rows::LOCK_STREAM`).
const MIGRATION_LOCK: (i32, i32) = (0x4c4b_4559, 0);

/// `MIGRATIONS[n]` takes a database from schema version n to n + 1. Append, never edit:
/// databases in the field are at every version ever released.
///
/// `events.transaction_id` is the writing transaction's id, assigned as it inserts and
/// 64 bits wide (`xid8`), so it never wraps around. Readers of the global order read only
/// rows whose transaction id is below the oldest one still running (see `rows::READ_ALL`):
/// every transaction that could still commit has a higher id, so nothing can appear behind
/// a reader. `position` orders the events of one transaction. A stream's head (the hash its
/// next event links to) is its row with the highest revision.
const MIGRATIONS: &[&str] = &["
    CREATE TABLE latchkey_store.events (
        transaction_id xid8        NOT NULL DEFAULT pg_current_xact_id(),
        position       bigserial   NOT NULL,
        event_id       uuid        NOT NULL,
        stream         text        NOT NULL,
        revision       bigint      NOT NULL,
        event_type     text        NOT NULL,
        schema_version bigint      NOT NULL,
        actor          text        NOT NULL,
        correlation_id uuid        NOT NULL,
        causation_id   uuid,
        recorded_at    timestamptz NOT NULL,
        prev_hash      bytea,
        hash           bytea       NOT NULL,
        payload        bytea       NOT NULL,
        CONSTRAINT events_pkey PRIMARY KEY (transaction_id, position),
        CONSTRAINT events_event_id_key UNIQUE (event_id),
        CONSTRAINT events_stream_revision_key UNIQUE (stream, revision)
    );
"];

pub(super) fn sql_error(context: &str, e: tokio_postgres::Error) -> StoreError {
    let corrupt = e
        .code()
        .is_some_and(|c| *c == SqlState::DATA_CORRUPTED || *c == SqlState::INDEX_CORRUPTED);
    let reason = explain(&e);
    if e.code() == Some(&SqlState::DISK_FULL) {
        return StoreError::Full(format!("{context}: {reason}"));
    }
    if corrupt {
        StoreError::Corrupt(format!("{context}: {reason}"))
    } else {
        StoreError::Unavailable(format!("{context}: {reason}"))
    }
}

/// The whole of a client error: its own message says only "db error" or "error connecting
/// to server" and leaves the server's reason to its source.
pub(super) fn explain(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut reason = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            reason.push_str(&format!("; {detail}"));
        }
        return reason;
    }
    let mut reason = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        reason.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    reason
}

/// Creates or upgrades the schema of the database `client` is connected to.
pub(super) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let migrating = |e| {
        sql_error(
            "cannot prepare the event store's tables (the role needs CREATE on the database)",
            e,
        )
    };
    let tx = client.transaction().await.map_err(migrating)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock($1, $2)",
        &[&MIGRATION_LOCK.0, &MIGRATION_LOCK.1],
    )
    .await
    .map_err(migrating)?;
    tx.batch_execute(
        "CREATE SCHEMA IF NOT EXISTS latchkey_store;
         CREATE TABLE IF NOT EXISTS latchkey_store.schema_version (
             singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
             version   integer NOT NULL
         );
         INSERT INTO latchkey_store.schema_version (version) VALUES (0) ON CONFLICT DO NOTHING;",
    )
    .await
    .map_err(migrating)?;
    let version: i32 = tx
        .query_one("SELECT version FROM latchkey_store.schema_version", &[])
        .await
        .map_err(migrating)?
        .try_get(0)
        .map_err(migrating)?;
    let known = MIGRATIONS.len();
    let current = usize::try_from(version).map_err(|_| {
        StoreError::Corrupt(format!(
            "the event store's schema version is negative ({version})"
        ))
    })?;
    if current > known {
        return Err(StoreError::Unavailable(format!(
            "the event store's database has schema version {current}, newer than the {known} \
             this build understands; upgrade Latchkey"
        )));
    }
    for migration in &MIGRATIONS[current..] {
        tx.batch_execute(migration).await.map_err(migrating)?;
    }
    if current < known {
        tx.execute(
            "UPDATE latchkey_store.schema_version SET version = $1",
            &[&(known as i32)],
        )
        .await
        .map_err(migrating)?;
    }
    tx.commit().await.map_err(migrating)
}
