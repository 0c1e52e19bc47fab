//! The process-manager runner overlaps a batch's commit with its reactions and with reading
//! and applying the next batch. A batch read after one whose transaction failed must never be
//! applied: the read models would move their checkpoint past the failed batch's events. The
//! same runner, run again, goes on from its checkpoint.

use latchkey_app::commands::{execute, Envelope};
use latchkey_app::runner::ProcessRunner;
use latchkey_domain::ids::{TechnicianId, TenantId};
use latchkey_domain::names::{Email, Username};
use latchkey_domain::technician::{Technician, TechnicianCommand};
use latchkey_domain::Actor;
use latchkey_projections::ReadModels;
use latchkey_sql::{PgConnection, Sql};
use latchkey_store::postgres::testing::TestDatabase;
use latchkey_store::{EventStore, MemoryStore, StreamName};
use std::sync::{Arc, Mutex};
use uuid::Uuid;

async fn on_technician(store: &dyn EventStore, id: TechnicianId, command: TechnicianCommand) {
    let envelope = Envelope {
        actor: "user:admin@msp.example".into(),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
    };
    let stream = StreamName::new(id.stream_name()).unwrap();
    execute::<Technician, _>(store, &stream, &envelope, |_| command.clone())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_read_after_one_whose_commit_failed_is_not_applied() {
    let database = TestDatabase::create().await;
    let store: Arc<dyn EventStore> = Arc::new(MemoryStore::new());
    let admin = Actor::User {
        email: Email::parse("admin@msp.example").unwrap(),
    };
    let now = chrono::Utc::now();
    // More events than one batch holds; the eleventh technician's joining is in the first.
    for i in 0..300u128 {
        let id = TechnicianId(Uuid::from_u128(i + 1));
        let register = TechnicianCommand::Register {
            technician_id: id,
            username: Username::parse(format!("tech{i}")).unwrap(),
            email: Email::parse(format!("tech{i}@msp.example")).unwrap(),
            by: admin.clone(),
            at: now,
        };
        on_technician(store.as_ref(), id, register).await;
        if i == 10 {
            let join = TechnicianCommand::JoinTenant {
                tenant_id: TenantId(Uuid::from_u128(7)),
                by: admin.clone(),
                at: now,
            };
            on_technician(store.as_ref(), id, join).await;
        }
    }
    let models =
        ReadModels::open(latchkey_sql::Place::Postgres(database.url().to_owned())).unwrap();
    // The database refuses that line when the first batch commits (its statements go out
    // with the commit), after its reactions were handed to the runner.
    PgConnection::connect(database.url(), "latchkey_read")
        .unwrap()
        .batch(
            "ALTER TABLE audit_trail ADD CONSTRAINT refused
             CHECK (event_type <> 'TechnicianJoinedTenant')",
        )
        .unwrap();
    let runner = ProcessRunner::new(store.clone(), Arc::new(Mutex::new(models)));
    assert!(runner.run_until_idle().await.is_err());

    let models =
        ReadModels::open(latchkey_sql::Place::Postgres(database.url().to_owned())).unwrap();
    assert_eq!(models.checkpoint().unwrap(), None, "no batch was applied");
    assert!(models.queries().technicians(None).unwrap().is_empty());

    // Run again once the database takes the line (the server's supervisor restarts the same
    // runner): a new chain of batches, from the checkpoint, applies everything.
    PgConnection::connect(database.url(), "latchkey_read")
        .unwrap()
        .batch("ALTER TABLE audit_trail DROP CONSTRAINT refused")
        .unwrap();
    runner.run_until_idle().await.unwrap();
    let last = store
        .read_all(None, 1000)
        .await
        .unwrap()
        .last()
        .unwrap()
        .position;
    assert_eq!(models.checkpoint().unwrap(), Some(last));
    assert_eq!(models.queries().technicians(None).unwrap().len(), 300);
}
