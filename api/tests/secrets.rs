//! The secret store shared by several servers on one PostgreSQL database: asked at once, from
//! every server, to store a password under one reference, they all get the first one stored,
//! and it is the one kept. No lock serialises them (a reference's insert decides).

use latchkey_domain::ids::ComputerId;
use latchkey_domain::names::AccountName;
use latchkey_server_stores::secrets::{Key, Secret, SecretRef, SecretStore};
use latchkey_sql::Place;
use latchkey_store::postgres::testing::TestDatabase;
use std::sync::Arc;
use uuid::Uuid;

#[test]
fn servers_asked_at_once_for_one_password_all_get_the_first_stored() {
    const SERVERS: usize = 2;
    const CALLERS: usize = 8;
    const REFERENCES: u32 = 20;
    let database = TestDatabase::create_blocking();
    let key = Key::generate();
    let servers: Vec<Arc<SecretStore>> = (0..SERVERS)
        .map(|_| {
            Arc::new(SecretStore::open(Place::Postgres(database.url().to_owned()), &key).unwrap())
        })
        .collect();
    let account = AccountName::parse("msp-nik").unwrap();
    let reference =
        |version| SecretRef::password(ComputerId(Uuid::from_u128(7)), &account, version);
    let barrier = Arc::new(std::sync::Barrier::new(SERVERS * CALLERS));
    let callers: Vec<_> = (0..SERVERS * CALLERS)
        .map(|caller| {
            let store = servers[caller % SERVERS].clone();
            let barrier = barrier.clone();
            let references: Vec<SecretRef> = (1..=REFERENCES).map(reference).collect();
            std::thread::spawn(move || {
                barrier.wait();
                references
                    .iter()
                    .map(|r| {
                        let mine = Secret::new(format!("password-of-caller-{caller}-{r}"));
                        store.put_if_absent(r, &mine).unwrap().expose().to_owned()
                    })
                    .collect::<Vec<String>>()
            })
        })
        .collect();
    let answers: Vec<Vec<String>> = callers.into_iter().map(|c| c.join().unwrap()).collect();
    for (i, version) in (1..=REFERENCES).enumerate() {
        let kept = servers[0]
            .get(&reference(version))
            .unwrap()
            .expect("stored")
            .expose()
            .to_owned();
        for answer in &answers {
            assert_eq!(answer[i], kept, "version {version}");
        }
    }
}
