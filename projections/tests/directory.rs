//! The directory read model answers the process managers' look-ups, and applies each event
//! exactly once across redelivery and reopening.

mod backend;
mod support;

use latchkey_domain::computer::Computer;
use latchkey_domain::ids::SessionId;
use latchkey_domain::policy::LoginMode;
use latchkey_domain::process::Lookup;
use latchkey_domain::session::{CheckInReason, SessionCheckedIn};
use latchkey_domain::{Aggregate, AnyEvent};
use latchkey_projections::ReadModels;
use latchkey_store::MemoryStore;
use support::{
    admin, all_events, append, at, enroll, nik_on_w11, register_technician, register_tenant,
    CUSTOMER_1, CUSTOMER_2, NIK, W11,
};
use uuid::Uuid;

const SESSION: SessionId = SessionId(Uuid::from_u128(1000));

async fn story(store: &MemoryStore) {
    register_tenant(store, CUSTOMER_1, "customer-1", LoginMode::Named, 0).await;
    register_technician(store, NIK, "nik", "nik@nikpot.com", &[CUSTOMER_1], 0).await;
    let command = enroll(W11, CUSTOMER_1, "W11-L-PASSWORD", 0);
    let enrolled = Computer::decide(&Computer::default(), command).unwrap();
    let events = enrolled.into_iter().map(AnyEvent::Computer).collect();
    append(store, W11.stream_name(), &admin(), events).await;
    let checked_out = AnyEvent::Session(nik_on_w11(SESSION, at(0)).into());
    append(store, SESSION.stream_name(), &admin(), vec![checked_out]).await;
}

#[tokio::test]
async fn the_directory_answers_the_process_managers_lookups() {
    let store = MemoryStore::new();
    story(&store).await;
    let mut models = backend::fresh().await;
    assert_eq!(models.apply(&all_events(&store).await).unwrap(), 5);
    assert_eq!(models.computers_of_tenant(CUSTOMER_1).unwrap(), vec![W11]);
    assert_eq!(
        models.open_sessions_of_technician(NIK, None).unwrap(),
        vec![SESSION]
    );
    assert_eq!(
        models
            .open_sessions_of_technician(NIK, Some(CUSTOMER_1))
            .unwrap(),
        vec![SESSION]
    );
    assert!(models
        .open_sessions_of_technician(NIK, Some(CUSTOMER_2))
        .unwrap()
        .is_empty());
    assert_eq!(
        models.open_sessions_on_computer(W11).unwrap(),
        vec![SESSION]
    );

    let checked_in = SessionCheckedIn {
        session_id: SESSION,
        computer_id: W11,
        reason: CheckInReason::Manual,
        by: admin(),
        at: at(0),
    };
    let event = AnyEvent::Session(checked_in.into());
    append(&store, SESSION.stream_name(), &admin(), vec![event]).await;
    assert_eq!(
        models.apply(&all_events(&store).await).unwrap(),
        1,
        "only the new event"
    );
    assert!(models.open_sessions_on_computer(W11).unwrap().is_empty());
    assert!(models
        .open_sessions_of_technician(NIK, None)
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn events_are_applied_once_across_redelivery_and_reopening() {
    let store = MemoryStore::new();
    story(&store).await;
    let events = all_events(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read-models.db");
    {
        let mut models = ReadModels::open(&path).unwrap();
        assert_eq!(models.checkpoint().unwrap(), None);
        assert_eq!(models.apply(&events[..3]).unwrap(), 3);
        assert_eq!(models.checkpoint().unwrap(), Some(events[2].position));
    }
    let mut models = ReadModels::open(&path).unwrap();
    assert_eq!(models.checkpoint().unwrap(), Some(events[2].position));
    assert_eq!(
        models.apply(&events).unwrap(),
        2,
        "the first three were already applied"
    );
    assert_eq!(models.apply(&events).unwrap(), 0);
    assert_eq!(models.checkpoint().unwrap(), Some(events[4].position));
    assert_eq!(models.computers_of_tenant(CUSTOMER_1).unwrap(), vec![W11]);
}

#[tokio::test]
async fn a_read_view_opens_at_most_its_connection_limit_and_serves_every_reader() {
    let store = MemoryStore::new();
    story(&store).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("read-models.db");
    ReadModels::open(&path)
        .unwrap()
        .apply(&all_events(&store).await)
        .unwrap();
    let view = std::sync::Arc::new(latchkey_projections::ReadView::open(&path).unwrap());
    let inside = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let most = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let readers: Vec<_> = (0..3 * latchkey_projections::VIEW_CONNECTIONS)
        .map(|_| {
            let (view, inside, most) = (view.clone(), inside.clone(), most.clone());
            std::thread::spawn(move || {
                view.with(|q| {
                    use std::sync::atomic::Ordering::SeqCst;
                    let now = inside.fetch_add(1, SeqCst) + 1;
                    most.fetch_max(now, SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    let computers = q.computers_of_tenant(CUSTOMER_1);
                    inside.fetch_sub(1, SeqCst);
                    computers
                })
                .unwrap()
            })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.join().unwrap(), vec![W11]);
    }
    let most = most.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        most <= latchkey_projections::VIEW_CONNECTIONS,
        "{most} readers at once"
    );
    assert!(most > 1, "readers share the pool at once");
}
