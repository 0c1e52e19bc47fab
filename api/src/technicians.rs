//! The technician use cases that span more than one store: registering (claim the username
//! and e-mail address for good, then register), offboarding (the event, then every API
//! token), and whether a technician's token may still act. No HTTP here; the rules are the
//! domain's (`technician`, `technician_names`).

use crate::auth::{AuthError, TokenStore};
use crate::commands::{self, CommandError, Envelope, Executed, StateCache};
use latchkey_domain::event::Event;
use latchkey_domain::ids::TechnicianId;
use latchkey_domain::technician::{Technician, TechnicianCommand, TechnicianEvent};
use latchkey_domain::technician_names::{
    self, NameHolder, TechnicianNames, TechnicianNamesCommand,
};
use latchkey_domain::{Actor, Timestamp};
use latchkey_store::{EventStore, StreamName};

#[derive(Debug, thiserror::Error)]
pub enum TechnicianError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("token store: {0}")]
    Tokens(#[from] AuthError),
}

fn stream(name: String) -> Result<StreamName, CommandError> {
    StreamName::new(name).map_err(CommandError::Store)
}

/// Registers a technician: first claims their username and e-mail address in the one
/// stream of names (refused with `UsernameTaken` / `EmailTaken` if another technician, even
/// an offboarded one, holds either), then registers them on their own stream. If the server
/// stops in between, the process manager reacting to the claim completes the registration.
pub async fn register(
    store: &dyn EventStore,
    cache: &StateCache,
    envelope: &Envelope,
    holder: NameHolder,
    by: Actor,
    at: Timestamp,
) -> Result<Executed<Technician>, CommandError> {
    let names = stream(technician_names::STREAM.to_owned())?;
    let loaded = commands::load_cached::<TechnicianNames>(store, cache, &names).await?;
    let existing = if loaded.state.imported() {
        Vec::new()
    } else {
        registered_before(store).await?
    };
    commands::execute_cached::<TechnicianNames, _>(store, cache, &names, envelope, |state| {
        TechnicianNamesCommand::Claim {
            holder: holder.clone(),
            existing: if state.imported() {
                Vec::new()
            } else {
                existing.clone()
            },
            by: by.clone(),
            at,
        }
    })
    .await?;
    let technician = stream(holder.technician_id.stream_name())?;
    commands::execute_cached::<Technician, _>(store, cache, &technician, envelope, |_| {
        TechnicianCommand::Register {
            technician_id: holder.technician_id,
            username: holder.username.clone(),
            email: holder.email.clone(),
            by: by.clone(),
            at,
        }
    })
    .await
}

/// Every technician registered in the log so far: read once, before the first claim of
/// names, so that technicians registered before names were claimed keep theirs.
async fn registered_before(store: &dyn EventStore) -> Result<Vec<NameHolder>, CommandError> {
    const PAGE: usize = 1000;
    let registered = "TechnicianRegistered";
    let mut found = Vec::new();
    let mut after = None;
    loop {
        let page = store.read_all(after, PAGE).await?;
        for recorded in &page {
            if recorded.event_type != registered {
                continue;
            }
            let decoded = serde_json::from_slice(&recorded.payload)
                .map_err(|e| latchkey_domain::DecodeError::Invalid {
                    event_type: registered.to_owned(),
                    version: recorded.schema_version,
                    reason: e.to_string(),
                })
                .and_then(|json| {
                    TechnicianEvent::from_json(registered, recorded.schema_version, json)
                });
            match decoded {
                Ok(Some(TechnicianEvent::TechnicianRegistered(e))) => found.push(NameHolder {
                    technician_id: e.technician_id,
                    username: e.username,
                    email: e.email,
                }),
                Ok(_) => {}
                Err(source) => {
                    return Err(CommandError::Decode {
                        stream: recorded.stream.clone(),
                        source,
                    })
                }
            }
        }
        match page.last() {
            Some(last) if page.len() == PAGE => after = Some(last.position),
            _ => return Ok(found),
        }
    }
}

/// Offboards a technician and revokes every API token of theirs. Both are idempotent, so a
/// failure after the event is mended by offboarding again; and until then the technician's
/// tokens are refused anyway ([`token_may_act`]). Returns the command's outcome and how many
/// tokens were revoked.
pub async fn offboard(
    store: &dyn EventStore,
    cache: &StateCache,
    tokens: &TokenStore,
    envelope: &Envelope,
    technician: TechnicianId,
    by: Actor,
    at: Timestamp,
) -> Result<(Executed<Technician>, usize), TechnicianError> {
    let executed = commands::execute_cached::<Technician, _>(
        store,
        cache,
        &stream(technician.stream_name())?,
        envelope,
        |_| TechnicianCommand::Offboard { by: by.clone(), at },
    )
    .await?;
    let revoked = tokens.revoke_technician(technician)?;
    if revoked > 0 {
        tracing::info!(%technician, revoked, "offboarding revoked the technician's API tokens");
    }
    Ok((executed, revoked))
}

/// Whether a technician's token may act: only while the technician is registered and not
/// offboarded, whatever the token store says. The token store is a separate database, so an
/// offboarding whose token revocation was lost (a crash between the two) must not leave a
/// working token: such tokens are refused here, and revoked now.
pub async fn token_may_act(
    store: &dyn EventStore,
    cache: &StateCache,
    tokens: &TokenStore,
    technician: TechnicianId,
) -> Result<bool, TechnicianError> {
    let loaded =
        commands::load_cached::<Technician>(store, cache, &stream(technician.stream_name())?)
            .await?;
    let active = loaded.state.state().is_some_and(|t| !t.offboarded);
    if !active {
        let revoked = tokens.revoke_technician(technician)?;
        if revoked > 0 {
            tracing::warn!(%technician, revoked, "revoked the API tokens of a technician who is not active (an offboarding stopped half-way)");
        }
    }
    Ok(active)
}

#[cfg(test)]
mod tests {
    use super::*;
    use latchkey_domain::names::{Email, Username};
    use latchkey_domain::DomainError;
    use latchkey_store::MemoryStore;
    use std::sync::Arc;
    use uuid::Uuid;

    fn envelope() -> Envelope {
        Envelope {
            actor: "user:admin@msp.example".into(),
            correlation_id: Uuid::now_v7(),
            causation_id: None,
        }
    }

    fn admin() -> Actor {
        Actor::User {
            email: Email::parse("admin@msp.example").unwrap(),
        }
    }

    fn holder(n: u128, username: &str, email: &str) -> NameHolder {
        NameHolder {
            technician_id: TechnicianId(Uuid::from_u128(n)),
            username: Username::parse(username).unwrap(),
            email: Email::parse(email).unwrap(),
        }
    }

    async fn register_as(
        store: &dyn EventStore,
        cache: &StateCache,
        holder: NameHolder,
    ) -> Result<Executed<Technician>, CommandError> {
        register(
            store,
            cache,
            &envelope(),
            holder,
            admin(),
            chrono::Utc::now(),
        )
        .await
    }

    fn refusal(result: Result<Executed<Technician>, CommandError>) -> Option<DomainError> {
        match result {
            Err(CommandError::Domain(e)) => Some(e),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_taken_username_or_email_is_refused_and_nothing_is_registered() {
        let store = MemoryStore::new();
        let cache = StateCache::new(100);
        register_as(&store, &cache, holder(1, "nik", "nik@nikpot.com"))
            .await
            .unwrap();
        let again = register_as(&store, &cache, holder(2, "nik", "other@nikpot.com")).await;
        assert!(matches!(
            refusal(again),
            Some(DomainError::UsernameTaken { .. })
        ));
        let shouted = register_as(&store, &cache, holder(3, "ann", "NIK@NikPot.com")).await;
        assert!(matches!(
            refusal(shouted),
            Some(DomainError::EmailTaken { .. })
        ));
        for refused in [2, 3] {
            let stream = stream(TechnicianId(Uuid::from_u128(refused)).stream_name()).unwrap();
            assert!(store.read_stream(&stream, 0, 1).await.unwrap().is_empty());
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn of_concurrent_registrations_of_one_username_exactly_one_wins() {
        let store = Arc::new(MemoryStore::new());
        // Separate caches: as if every registration came through another server.
        let tasks: Vec<_> = (0..16u128)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let email = format!("nik{n}@nikpot.com");
                    register_as(&*store, &StateCache::new(0), holder(100 + n, "nik", &email)).await
                })
            })
            .collect();
        let mut won = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => won += 1,
                Err(CommandError::Domain(DomainError::UsernameTaken { .. })) => {}
                // Losing the race eight times in a row is a 409 to the client too.
                Err(CommandError::Contended { .. }) => {}
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert_eq!(won, 1);
    }

    #[tokio::test]
    async fn technicians_registered_before_names_were_claimed_keep_theirs() {
        let store = MemoryStore::new();
        // Registered the old way: no claim of names.
        let old = holder(1, "nik", "nik@nikpot.com");
        commands::execute::<Technician, _>(
            &store,
            &stream(old.technician_id.stream_name()).unwrap(),
            &envelope(),
            |_| TechnicianCommand::Register {
                technician_id: old.technician_id,
                username: old.username.clone(),
                email: old.email.clone(),
                by: admin(),
                at: chrono::Utc::now(),
            },
        )
        .await
        .unwrap();
        let cache = StateCache::new(100);
        let taken = register_as(&store, &cache, holder(2, "nik", "new@nikpot.com")).await;
        assert!(matches!(
            refusal(taken),
            Some(DomainError::UsernameTaken { .. })
        ));
        register_as(&store, &cache, holder(3, "ann", "ann@nikpot.com"))
            .await
            .unwrap();
        let taken = register_as(&store, &cache, holder(4, "bea", "Nik@nikpot.com")).await;
        assert!(matches!(
            refusal(taken),
            Some(DomainError::EmailTaken { .. })
        ));
    }
}
