//! The technician use cases that span more than one store: registering (claim the username
//! and e-mail address for good, then register), offboarding (revoke every API token, record
//! the event, revoke again), handing out a token only if the technician is still active
//! after it was written, and whether a technician's token may still act. No HTTP here; the rules are the
//! domain's (`technician`, `technician_names`).

use crate::commands::{self, CommandError, Envelope, Executed, StateCache};
use crate::fault;
use latchkey_domain::event::Event;
use latchkey_domain::ids::TechnicianId;
use latchkey_domain::technician::{Technician, TechnicianCommand, TechnicianEvent};
use latchkey_domain::technician_names::{
    self, NameHolder, TechnicianNames, TechnicianNamesCommand,
};
use latchkey_domain::{Actor, Timestamp};
use latchkey_server_stores::tokens::{AuthError, TokenId, TokenStore};
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

/// Offboards a technician and revokes every API token of theirs, in an order after which no
/// token of theirs acts, whatever crashes and whatever tokens are issued meanwhile (the tokens
/// live in another database than the events, so the two cannot be one transaction):
///
/// 1. revoke their tokens. A crash after this leaves the tokens revoked and the technician
///    not yet offboarded: nothing was acknowledged, and offboarding again completes it;
/// 2. record the offboarding. From here on no token is handed out for them
///    ([`keep_new_token`] reads the stream after writing a token);
/// 3. revoke again: the tokens issued between 1 and 2. A crash between 2 and 3 (nothing
///    acknowledged) is mended by the process managers, which revoke an offboarded
///    technician's tokens when they handle the event (`runner`), and by [`token_may_act`]
///    on a server that has not cached the technician as active.
///
/// Every step is idempotent (offboarding an offboarded technician records nothing), so
/// offboarding again mends any failure. If step 2 fails (a 409 or a database error), the
/// tokens stay revoked though the technician is not offboarded: failing safe. Returns the
/// command's outcome and how many live tokens were revoked.
pub async fn offboard(
    store: &dyn EventStore,
    cache: &StateCache,
    tokens: &TokenStore,
    envelope: &Envelope,
    technician: TechnicianId,
    by: Actor,
    at: Timestamp,
) -> Result<(Executed<Technician>, usize), TechnicianError> {
    let stream = stream(technician.stream_name())?;
    let before = tokens.revoke_technician(technician)?;
    fault::maybe_crash(fault::Point::OffboardBeforeEvent);
    let executed =
        commands::execute_cached::<Technician, _>(store, cache, &stream, envelope, |_| {
            TechnicianCommand::Offboard { by: by.clone(), at }
        })
        .await?;
    fault::maybe_crash(fault::Point::OffboardAfterEvent);
    let after = tokens.revoke_technician(technician)?;
    let revoked = before + after;
    if revoked > 0 {
        tracing::info!(%technician, revoked, "offboarding revoked the technician's API tokens");
    }
    Ok((executed, revoked))
}

/// Whether a technician's token that was just written (issued, or given a new secret) may be
/// handed out: only if, read from the stream after the write, the technician is registered
/// and not offboarded. If not, every token of theirs, this one included, is revoked now and
/// the caller must not show the secret. If the stream cannot be read, this token is revoked
/// (the others are left alone) and the error returned.
///
/// With [`offboard`]'s order no token survives an offboarding: one written before the
/// offboarding's second revocation (step 3) began is revoked by it; one written after that
/// began was written after the offboarding was recorded, so the read here sees it. The read
/// goes to the store (this server's cached state is only where it starts from: the events
/// after it are read), so an offboarding through another server counts too.
pub async fn keep_new_token(
    store: &dyn EventStore,
    cache: &StateCache,
    tokens: &TokenStore,
    technician: TechnicianId,
    token: TokenId,
) -> Result<bool, TechnicianError> {
    let loaded = match stream(technician.stream_name()) {
        Ok(stream) => commands::load_cached::<Technician>(store, cache, &stream).await,
        Err(e) => Err(e),
    };
    let loaded = match loaded {
        Ok(loaded) => loaded,
        Err(e) => {
            tokens.revoke(token)?;
            return Err(e.into());
        }
    };
    let active = loaded.state.state().is_some_and(|t| !t.offboarded);
    if !active {
        let revoked = tokens.revoke_technician(technician)?;
        tracing::warn!(%technician, %token, revoked, "a token written for a technician who is no longer active was revoked at once (an offboarding came in between)");
    }
    Ok(active)
}

/// Whether a technician's token may act: only while the technician is registered and not
/// offboarded, as far as this server knows. Defense in depth: what keeps an offboarded
/// technician's tokens from acting is that they are revoked ([`offboard`], the process
/// managers, [`keep_new_token`]). So this asks the store only when this server has not cached
/// the technician's state (after a restart, say); otherwise it answers from the cache, which
/// this server's own commands keep current and which is never ahead of the stream. A token
/// that fails it is revoked now.
pub async fn token_may_act(
    store: &dyn EventStore,
    cache: &StateCache,
    tokens: &TokenStore,
    technician: TechnicianId,
) -> Result<bool, TechnicianError> {
    let stream = stream(technician.stream_name())?;
    let state = match cache.cached::<Technician>(&stream) {
        Some(state) => state,
        None => {
            commands::load_cached::<Technician>(store, cache, &stream)
                .await?
                .state
        }
    };
    let active = state.state().is_some_and(|t| !t.offboarded);
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

    /// Where a [`Gated`] store stops once: so a test can do something right there, as
    /// another request (or a crash) would.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Step {
        /// Before an append to the stream: its events are not recorded yet.
        BeforeAppend,
        /// After an append to the stream: its events are recorded.
        AfterAppend,
    }

    struct Gate {
        step: Step,
        stream: String,
        reached: tokio::sync::oneshot::Sender<()>,
        resume: tokio::sync::oneshot::Receiver<()>,
    }

    /// A memory store that stops once at a [`Step`] on one stream until told to go on.
    #[derive(Default)]
    struct Gated {
        inner: MemoryStore,
        gate: std::sync::Mutex<Option<Gate>>,
    }

    impl Gated {
        /// Stops at `step` on `stream`: the first receiver ends when it got there, and it goes
        /// on when the sender is used (or dropped).
        fn stop_at(
            &self,
            step: Step,
            stream: &StreamName,
        ) -> (
            tokio::sync::oneshot::Receiver<()>,
            tokio::sync::oneshot::Sender<()>,
        ) {
            let (reached, at) = tokio::sync::oneshot::channel();
            let (go, resume) = tokio::sync::oneshot::channel();
            *self.gate.lock().unwrap() = Some(Gate {
                step,
                stream: stream.as_str().to_owned(),
                reached,
                resume,
            });
            (at, go)
        }

        async fn pass(&self, step: Step, stream: &StreamName) {
            let gate = {
                let mut gate = self.gate.lock().unwrap();
                match &*gate {
                    Some(g) if g.step == step && g.stream == stream.as_str() => gate.take(),
                    _ => None,
                }
            };
            if let Some(gate) = gate {
                let _ = gate.reached.send(());
                let _ = gate.resume.await;
            }
        }
    }

    #[async_trait::async_trait]
    impl EventStore for Gated {
        async fn append(
            &self,
            stream: &StreamName,
            expected: latchkey_store::ExpectedState,
            events: Vec<latchkey_store::NewEvent>,
        ) -> Result<latchkey_store::AppendResult, latchkey_store::StoreError> {
            self.pass(Step::BeforeAppend, stream).await;
            let written = self.inner.append(stream, expected, events).await?;
            self.pass(Step::AfterAppend, stream).await;
            Ok(written)
        }
        async fn read_stream(
            &self,
            stream: &StreamName,
            from: u64,
            max: usize,
        ) -> Result<Vec<latchkey_store::RecordedEvent>, latchkey_store::StoreError> {
            self.inner.read_stream(stream, from, max).await
        }
        async fn read_all(
            &self,
            after: Option<latchkey_store::Position>,
            max: usize,
        ) -> Result<Vec<latchkey_store::RecordedEvent>, latchkey_store::StoreError> {
            self.inner.read_all(after, max).await
        }
        async fn wait_for_events_after(&self, after: Option<latchkey_store::Position>) {
            self.inner.wait_for_events_after(after).await
        }
    }

    /// A registered technician nik and a token store with one live token of theirs.
    struct Offboarding {
        store: Arc<Gated>,
        cache: Arc<StateCache>,
        tokens: Arc<TokenStore>,
        nik: TechnicianId,
        first: String,
        _dir: tempfile::TempDir,
    }

    impl Offboarding {
        async fn new() -> Self {
            let store = Arc::new(Gated::default());
            let cache = Arc::new(StateCache::new(100));
            let nik = holder(1, "nik", "nik@nikpot.com");
            register_as(&*store, &cache, nik.clone()).await.unwrap();
            let dir = tempfile::tempdir().unwrap();
            let tokens = Arc::new(TokenStore::open(dir.path().join("tokens.db")).unwrap());
            let first = tokens
                .issue(role(nik.technician_id), "nik@nikpot.com")
                .unwrap();
            Self {
                store,
                cache,
                tokens,
                nik: nik.technician_id,
                first,
                _dir: dir,
            }
        }

        fn stream(&self) -> StreamName {
            stream(self.nik.stream_name()).unwrap()
        }

        /// Offboards nik, in a task of its own.
        fn offboard(
            &self,
        ) -> tokio::task::JoinHandle<Result<(Executed<Technician>, usize), TechnicianError>>
        {
            let (store, cache, tokens, nik) = (
                self.store.clone(),
                self.cache.clone(),
                self.tokens.clone(),
                self.nik,
            );
            tokio::spawn(async move {
                offboard(
                    &*store,
                    &cache,
                    &tokens,
                    &envelope(),
                    nik,
                    admin(),
                    chrono::Utc::now(),
                )
                .await
            })
        }

        /// Issues a token for nik as `POST /v1/tokens` does once its checks passed: written,
        /// then kept only if nik is still active. The token if it was handed out.
        async fn issue(&self, cache: &StateCache) -> Option<String> {
            let issued = self
                .tokens
                .issue_for(role(self.nik), "nik@nikpot.com", None)
                .unwrap();
            let kept = keep_new_token(&*self.store, cache, &self.tokens, self.nik, issued.token_id)
                .await
                .unwrap();
            kept.then_some(issued.token)
        }

        fn acts(&self, token: &str) -> bool {
            matches!(
                self.tokens.authenticate(token).unwrap(),
                latchkey_server_stores::tokens::Authentication::Valid(_)
            )
        }

        async fn offboarded(&self) -> bool {
            commands::load::<Technician>(&*self.store, &self.stream())
                .await
                .unwrap()
                .state
                .state()
                .is_some_and(|t| t.offboarded)
        }
    }

    fn role(technician_id: TechnicianId) -> latchkey_server_stores::tokens::Role {
        latchkey_server_stores::tokens::Role::Technician { technician_id }
    }

    #[tokio::test]
    async fn an_offboarding_revokes_every_token_and_no_token_is_handed_out_after_it() {
        let o = Offboarding::new().await;
        assert!(o.acts(&o.first));
        let (_, revoked) = o.offboard().await.unwrap().unwrap();
        assert_eq!(revoked, 1);
        assert!(!o.acts(&o.first));
        assert_eq!(o.issue(&o.cache).await, None);
        // Even by a server whose cache still has nik active: the check reads the stream.
        let stale = StateCache::new(100);
        let o2 = Offboarding::new().await;
        commands::load_cached::<Technician>(&*o2.store, &stale, &o2.stream())
            .await
            .unwrap();
        o2.offboard().await.unwrap().unwrap();
        assert_eq!(o2.issue(&stale).await, None);
        assert!(
            !token_may_act(&*o2.store, &StateCache::new(100), &o2.tokens, o2.nik)
                .await
                .unwrap()
        );
    }

    /// The token store is told first: stopped before the offboarding is recorded (a crash,
    /// or the append failing), every token of nik's is revoked already, nik is not offboarded,
    /// and offboarding again completes it.
    #[tokio::test]
    async fn an_offboarding_stopped_before_its_event_has_revoked_the_tokens_already() {
        let o = Offboarding::new().await;
        let (at, _go) = o.store.stop_at(Step::BeforeAppend, &o.stream());
        let running = o.offboard();
        at.await.unwrap();
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert!(!o.acts(&o.first), "revoked before the event");
        assert!(!o.offboarded().await);
        let (executed, _) = o.offboard().await.unwrap().unwrap();
        assert_eq!(executed.events.len(), 1);
        assert!(o.offboarded().await);
    }

    /// A token issued while the offboarding is being recorded is handed out (nik is not
    /// offboarded yet), and revoked by the offboarding's second revocation.
    #[tokio::test]
    async fn a_token_issued_while_the_offboarding_is_recorded_is_revoked_by_it() {
        let o = Offboarding::new().await;
        let (at, go) = o.store.stop_at(Step::BeforeAppend, &o.stream());
        let running = o.offboard();
        at.await.unwrap();
        assert!(!o.acts(&o.first));
        let late = o.issue(&o.cache).await.expect("nik is still active");
        assert!(o.acts(&late));
        go.send(()).unwrap();
        let (_, revoked) = running.await.unwrap().unwrap();
        assert_eq!(revoked, 2, "the first token, then the late one");
        assert!(!o.acts(&late));
    }

    /// A token issued after the offboarding was recorded and before its second revocation is
    /// not handed out, and revoked at once.
    #[tokio::test]
    async fn a_token_issued_after_the_offboarding_was_recorded_is_not_handed_out() {
        let o = Offboarding::new().await;
        let (at, go) = o.store.stop_at(Step::AfterAppend, &o.stream());
        let running = o.offboard();
        at.await.unwrap();
        // Through a server that has nik cached as active, too.
        let other = StateCache::new(100);
        assert_eq!(o.issue(&other).await, None);
        let listed = o
            .tokens
            .list(&latchkey_server_stores::tokens::TokenQuery {
                scope: latchkey_server_stores::tokens::TokenScope::Technician(o.nik),
                role: None,
                include_revoked: true,
                limit: 10,
            })
            .unwrap();
        assert_eq!(listed.len(), 2);
        assert!(listed.iter().all(|t| t.status == "revoked"), "{listed:?}");
        go.send(()).unwrap();
        running.await.unwrap().unwrap();
    }

    /// The one case the offboarding cannot close alone: a token issued while the event was
    /// being recorded, then a crash before the second revocation. No offboarding was
    /// acknowledged; a server that has not cached nik (after the restart) refuses the token,
    /// and revokes it; the process managers do too (tests/tokens.rs).
    #[tokio::test]
    async fn a_token_left_by_an_offboarding_stopped_after_its_event_is_refused_and_revoked() {
        let o = Offboarding::new().await;
        let (at, go) = o.store.stop_at(Step::BeforeAppend, &o.stream());
        let running = o.offboard();
        at.await.unwrap();
        let late = o.issue(&o.cache).await.expect("nik is still active");
        let (after, _stop) = o.store.stop_at(Step::AfterAppend, &o.stream());
        go.send(()).unwrap();
        after.await.unwrap();
        running.abort();
        assert!(running.await.unwrap_err().is_cancelled());
        assert!(o.offboarded().await);
        assert!(o.acts(&late), "the crash left it live in the token store");
        let restarted = StateCache::new(100);
        assert!(!token_may_act(&*o.store, &restarted, &o.tokens, o.nik)
            .await
            .unwrap());
        assert!(!o.acts(&late), "revoked for good");
    }

    /// Many tokens issued while offboardings run: none that was handed out acts afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_token_issued_concurrently_with_an_offboarding_survives_it() {
        for _ in 0..20 {
            let o = Arc::new(Offboarding::new().await);
            let issuing: Vec<_> = (0..4)
                .map(|_| {
                    let o = o.clone();
                    tokio::spawn(async move {
                        let mut handed = Vec::new();
                        for _ in 0..10 {
                            if let Some(token) = o.issue(&StateCache::new(100)).await {
                                handed.push(token);
                            }
                            tokio::task::yield_now().await;
                        }
                        handed
                    })
                })
                .collect();
            o.offboard().await.unwrap().unwrap();
            // Acknowledged: from here on nothing handed out acts, whenever it was issued.
            let mut handed = Vec::new();
            for task in issuing {
                handed.extend(task.await.unwrap());
            }
            for token in handed.iter().chain([&o.first]) {
                assert!(!o.acts(token));
            }
        }
    }
}
