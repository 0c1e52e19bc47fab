//! Runs the process managers: follows the log in global order, keeps the directory read model
//! up to date, and turns each event's reactions (`latchkey_domain::process::react`) into
//! commands through the one command path. Every reaction is idempotent, so after a crash the
//! runner resumes from its checkpoint and may safely handle the last event again. One
//! reaction is outside the event log: an offboarded technician's API tokens are revoked
//! (again), so an offboarding that stopped after its event still ends with no working token.

use crate::commands::{self, CommandError, Envelope, StateCache};
use crate::wakeups::StreamWakeups;
use latchkey_domain::computer::Computer;
use latchkey_domain::ids::TechnicianId;
use latchkey_domain::process::{react, Command};
use latchkey_domain::session::Session;
use latchkey_domain::technician::Technician;
use latchkey_projections::{ProjectionError, ReadModels};
use latchkey_server_stores::tokens::{AuthError, TokenStore};
use latchkey_store::{EventStore, Position, RecordedEvent, StoreError, StreamName};
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("a reaction to the event at {position} failed: {source}")]
    Command {
        position: Position,
        source: CommandError,
    },
    /// The read models' transaction of an earlier batch failed, so this one must not be
    /// applied (the read models would skip the failed one's events).
    #[error("the read models' transaction of an earlier batch failed; this batch is not applied")]
    EarlierBatchFailed,
    #[error("the read models' transaction ended before the batch's reactions were worked out")]
    NoReactions,
    #[error("revoking the tokens of the technician offboarded at {position} failed: {source}")]
    Tokens {
        position: Position,
        source: AuthError,
    },
}

pub struct ProcessRunner {
    store: Arc<dyn EventStore>,
    models: Arc<Mutex<ReadModels>>,
    progress: watch::Sender<Option<Position>>,
    cache: Arc<StateCache>,
    /// Which batches may still be applied (see [`Chain`]).
    chain: Arc<Mutex<Chain>>,
    /// On PostgreSQL, the last position whose reactions were all carried out, kept here (not
    /// behind the read models' lock, which a batch's transaction holds for its round trips)
    /// and handed to the read models by the next batch's transaction, which writes it.
    handled: Arc<Mutex<Option<Position>>>,
    /// Where the API tokens are, to revoke an offboarded technician's (none: not done).
    tokens: Option<Arc<TokenStore>>,
}

impl ProcessRunner {
    pub fn new(store: Arc<dyn EventStore>, models: Arc<Mutex<ReadModels>>) -> Self {
        let checkpoint = models
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .checkpoint()
            .ok()
            .flatten();
        Self {
            store,
            models,
            progress: watch::Sender::new(checkpoint),
            cache: Arc::new(StateCache::new(0)),
            chain: Arc::default(),
            handled: Arc::default(),
            tokens: None,
        }
    }

    /// Revokes an offboarded technician's API tokens in `tokens` when it handles the
    /// offboarding: the reaction that completes an offboarding whose server stopped between
    /// recording it and its last revocation (`technicians::offboard`). The process managers'
    /// checkpoint passes the event only once that is done.
    pub fn with_tokens(mut self, tokens: Arc<TokenStore>) -> Self {
        self.tokens = Some(tokens);
        self
    }

    /// Shares an aggregate-state cache (the HTTP handlers').
    pub fn with_cache(mut self, cache: Arc<StateCache>) -> Self {
        self.cache = cache;
        self
    }

    /// Follows the read models' checkpoint: it changes after every event the runner applied.
    /// Long polls (the agents' request feed) wait on it.
    pub fn progress(&self) -> watch::Receiver<Option<Position>> {
        self.progress.subscribe()
    }

    fn with_models<T>(&self, f: impl FnOnce(&mut ReadModels) -> T) -> T {
        // A panic elsewhere while holding the lock leaves the database consistent (every
        // write is one transaction), so the data behind a poisoned lock is still good.
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut models)
    }

    /// `f` on the read models on a thread of the blocking pool: their database calls block,
    /// and the thread that runs the runner also drives other tasks (the log follower, the
    /// event store's connections), which must not wait for them.
    fn off_thread<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut ReadModels) -> T + Send + 'static,
    ) -> impl std::future::Future<Output = T> {
        let models = self.models.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut models = models.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut models)
        });
        async move {
            match task.await {
                Ok(value) => value,
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    Err(e) => panic!("the read models' task did not finish: {e}"),
                },
            }
        }
    }

    /// Handles every event written so far; returns how many it handled.
    pub async fn run_until_idle(&self) -> Result<usize, RunnerError> {
        let mut handled = 0;
        loop {
            let done = self.handle_batch().await?;
            if done.handled == 0 {
                return Ok(handled);
            }
            handled += done.handled;
        }
    }

    /// Follows the log for ever (until an error).
    pub async fn run(&self) -> Result<(), RunnerError> {
        // A run after a failure may find the read models' connection broken (the database
        // restarted): connect again first. The scheduler shares these read models.
        self.with_models(|m| m.reconnect_if_broken())?;
        loop {
            let done = self.handle_batch().await?;
            // At the end of the log: wait for more (at once if some came meanwhile) instead
            // of reading again only to find nothing.
            if done.at_end {
                self.store.wait_for_events_after(done.after).await;
            }
        }
    }

    /// Starts a chain of batches (PostgreSQL), from the process managers' checkpoint: the
    /// batches of earlier chains that have not started yet are never applied.
    fn new_chain(&self) -> u64 {
        let mut chain = self.chain.lock().unwrap_or_else(|p| p.into_inner());
        chain.generation += 1;
        chain.failed = false;
        chain.generation
    }

    /// Notes that every reaction up to `position` was carried out (PostgreSQL; see
    /// [`ProcessRunner::handled`]).
    fn note_handled(&self, position: Position) {
        let mut handled = self.handled.lock().unwrap_or_else(|p| p.into_inner());
        *handled = (*handled).max(Some(position));
    }

    /// Handles the events after the process managers' checkpoint, a batch at a time: each
    /// batch is applied to the read models in one transaction, every event's reactions
    /// worked out against the read models as they were right after it, then the reactions
    /// carried out: in order within each target stream, different streams concurrently (so
    /// their appends share the store's group commits).
    ///
    /// On PostgreSQL, where every call to the read models waits for the network, three
    /// things overlap: a batch's reactions are carried out while its transaction
    /// commits, and meanwhile the next batch is read and applied (its reactions wait for
    /// the first batch's), until the log has nothing more. A reaction may thus be carried
    /// out before its event's transaction committed; if that fails, the runner stops and
    /// its next start handles those events again, as after a crash (reactions are
    /// idempotent). The process managers' checkpoint is written with a later batch's
    /// transaction, or on its own once the log has nothing new, so it trails what was
    /// carried out by up to three batches (see [`OVERLAPPED_BATCH`]).
    async fn handle_batch(&self) -> Result<Handled, RunnerError> {
        let (stored, on_server) = self
            .with_models(|m| Ok::<_, ProjectionError>((m.process_checkpoint()?, m.on_server())))?;
        if !on_server {
            return self.handle_batch_in_turn(stored).await;
        }
        let noted = *self.handled.lock().unwrap_or_else(|p| p.into_inner());
        let after = stored.max(noted);
        let chain = self.new_chain();
        let Some(mut batch) = self.next_batch(after, chain).await? else {
            self.off_thread(move |m| {
                if let Some(noted) = noted {
                    m.handled(noted);
                }
                m.write_handled()
            })
            .await?;
            return Ok(Handled {
                handled: 0,
                after,
                at_end: true,
            });
        };
        let mut handled = 0;
        loop {
            let (done, committed, next) = futures::future::join3(
                self.carry_out(batch.reactions),
                batch.committed,
                self.next_batch(Some(batch.last), chain),
            )
            .await;
            committed?;
            done?;
            self.note_handled(batch.last);
            handled += batch.count;
            match next? {
                Some(next) => batch = next,
                None => {
                    return Ok(Handled {
                        handled,
                        after: Some(batch.last),
                        at_end: true,
                    })
                }
            }
        }
    }

    /// [`ProcessRunner::handle_batch`] for read models whose calls are short (SQLite): one
    /// batch, each step after the other, on the runner's own thread. Moving such calls to
    /// another thread to overlap them costs more than it saves. The process managers'
    /// checkpoint goes with the next batch's transaction, so it trails by one batch.
    async fn handle_batch_in_turn(&self, after: Option<Position>) -> Result<Handled, RunnerError> {
        let page = self.store.read_all(after, BATCH).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            self.with_models(|m| m.write_handled())?;
            return Ok(Handled {
                handled: 0,
                after,
                at_end: true,
            });
        };
        let now = chrono::Utc::now();
        // Events the read models already have (a crash came between applying them and
        // reacting to them) are reacted to against the current read models.
        let reactions = self.with_models(|m| {
            m.apply_and_react(&page, |recorded, event, queries| {
                Ok::<_, ProjectionError>((recorded.clone(), react(event, now, &queries)?))
            })
        })?;
        self.progress.send_replace(Some(last));
        self.carry_out(reactions).await?;
        self.with_models(|m| m.handled(last));
        Ok(Handled {
            handled: page.len(),
            after: Some(last),
            at_end: page.len() < BATCH,
        })
    }

    /// Reads the events after `after` and applies them to the read models, working out each
    /// one's reactions; `None` when there are none. Returns as soon as the reactions are
    /// known: the batch's `committed` ends with its transaction, which also writes what
    /// [`ProcessRunner::note_handled`] noted so far.
    async fn next_batch(
        &self,
        after: Option<Position>,
        generation: u64,
    ) -> Result<Option<Batch>, RunnerError> {
        let page = self.store.read_all(after, OVERLAPPED_BATCH).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok(None);
        };
        let count = page.len();
        let now = chrono::Utc::now();
        let (reacted, reactions) = tokio::sync::oneshot::channel();
        let chain = self.chain.clone();
        let handled = self.handled.clone();
        // Events the read models already have (a crash came between applying them and
        // reacting to them) are reacted to against the current read models. The previous
        // batch's transaction has ended when this one gets the read models.
        let applied = self.off_thread(move |m| {
            {
                let mut chain = chain.lock().unwrap_or_else(|p| p.into_inner());
                if chain.generation != generation || chain.failed {
                    return Err(RunnerError::EarlierBatchFailed);
                }
                // Set until this batch has committed: a panic leaves it set too.
                chain.failed = true;
            }
            if let Some(noted) = *handled.lock().unwrap_or_else(|p| p.into_inner()) {
                m.handled(noted);
            }
            let applied = m.apply_and_react_early(
                &page,
                |recorded, event, queries| {
                    Ok::<_, RunnerError>((recorded.clone(), react(event, now, &queries)?))
                },
                |reactions| {
                    let _ = reacted.send(reactions);
                },
            );
            if applied.is_ok() {
                let mut chain = chain.lock().unwrap_or_else(|p| p.into_inner());
                if chain.generation == generation {
                    chain.failed = false;
                }
            }
            applied
        });
        let progress = self.progress.clone();
        let committed: CommitFuture = Box::pin(async move {
            applied.await?;
            progress.send_replace(Some(last));
            Ok(())
        });
        let reactions = match reactions.await {
            Ok(reactions) => reactions,
            // The transaction failed before the last event was reacted to.
            Err(_) => {
                committed.await?;
                return Err(RunnerError::NoReactions);
            }
        };
        Ok(Some(Batch {
            count,
            last,
            reactions,
            committed,
        }))
    }

    /// Carries out a batch's reactions: per target stream in log order, different streams
    /// concurrently.
    async fn carry_out(
        &self,
        reactions: Vec<(RecordedEvent, Vec<Command>)>,
    ) -> Result<(), RunnerError> {
        for (recorded, _) in &reactions {
            self.revoke_tokens_if_offboarded(recorded).await?;
        }
        let mut by_stream: Vec<(String, Vec<(RecordedEvent, Command)>)> = Vec::new();
        for (recorded, commands) in reactions {
            for command in commands {
                let target = match &command {
                    Command::Computer { computer_id, .. } => computer_id.stream_name(),
                    Command::Session { session_id, .. } => session_id.stream_name(),
                    Command::Technician { technician_id, .. } => technician_id.stream_name(),
                };
                match by_stream.iter_mut().find(|(s, _)| *s == target) {
                    Some((_, list)) => list.push((recorded.clone(), command)),
                    None => by_stream.push((target, vec![(recorded.clone(), command)])),
                }
            }
        }
        let streams = by_stream.into_iter().map(|(stream, commands)| async move {
            for (recorded, command) in commands {
                self.execute(&recorded, &stream, command).await?;
            }
            Ok::<_, RunnerError>(())
        });
        futures::future::try_join_all(streams).await?;
        Ok(())
    }

    /// If `recorded` offboarded a technician, revokes their API tokens (see
    /// [`ProcessRunner::with_tokens`]). Idempotent: usually the offboarding did it already.
    async fn revoke_tokens_if_offboarded(
        &self,
        recorded: &RecordedEvent,
    ) -> Result<(), RunnerError> {
        let Some(tokens) = &self.tokens else {
            return Ok(());
        };
        if recorded.event_type != "TechnicianOffboarded" {
            return Ok(());
        }
        let Some(technician) = TechnicianId::from_stream_name(recorded.stream.as_str()) else {
            return Ok(());
        };
        let tokens = tokens.clone();
        let revoked = tokio::task::spawn_blocking(move || tokens.revoke_technician(technician))
            .await
            .unwrap_or_else(|e| match e.try_into_panic() {
                Ok(panic) => std::panic::resume_unwind(panic),
                Err(e) => panic!("the token store's task did not finish: {e}"),
            })
            .map_err(|source| RunnerError::Tokens {
                position: recorded.position,
                source,
            })?;
        if revoked > 0 {
            // Issued while the offboarding was being recorded (its own second revocation may
            // not have come yet), or left by an offboarding that stopped half-way.
            tracing::info!(%technician, revoked, "revoked the API tokens of an offboarded technician that were still live");
        }
        Ok(())
    }

    async fn execute(
        &self,
        recorded: &RecordedEvent,
        stream: &str,
        reaction: Command,
    ) -> Result<(), RunnerError> {
        let envelope = Envelope {
            actor: "system".into(),
            correlation_id: recorded.metadata.correlation_id,
            causation_id: Some(recorded.id),
        };
        let failed = |source| RunnerError::Command {
            position: recorded.position,
            source,
        };
        let stream = stream_name(stream.to_owned()).map_err(failed)?;
        match reaction {
            Command::Computer { command, .. } => {
                commands::execute_cached::<Computer, _>(
                    &*self.store,
                    &self.cache,
                    &stream,
                    &envelope,
                    |_| command.clone(),
                )
                .await
                .map_err(failed)?;
            }
            Command::Technician { command, .. } => {
                commands::execute_cached::<Technician, _>(
                    &*self.store,
                    &self.cache,
                    &stream,
                    &envelope,
                    |_| command.clone(),
                )
                .await
                .map_err(failed)?;
            }
            Command::Session { command, .. } => {
                commands::execute_cached::<Session, _>(
                    &*self.store,
                    &self.cache,
                    &stream,
                    &envelope,
                    |_| command.clone(),
                )
                .await
                .map_err(failed)?;
            }
        }
        Ok(())
    }
}

/// The batches of one call of [`ProcessRunner::handle_batch`] on PostgreSQL form a chain: each
/// is read after the previous one's last event and applied once that one's transaction has
/// ended, so none may be applied after one that failed (the read models would skip the
/// failed one's events). A new call starts a new chain from the process managers' checkpoint,
/// which no failed batch passed: a run restarted after a failure goes on, and a batch left
/// over from the failed run (its task cannot be cancelled) is refused.
#[derive(Default)]
struct Chain {
    generation: u64,
    /// Set while a batch's transaction runs, and for good if it failed.
    failed: bool,
}

/// A batch of events being applied to the read models, with each one's reactions.
struct Batch {
    count: usize,
    last: Position,
    reactions: Vec<(RecordedEvent, Vec<Command>)>,
    /// Ends when the batch's transaction has committed (or failed).
    committed: CommitFuture,
}

type CommitFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), RunnerError>> + Send>>;

/// What one call of [`ProcessRunner::handle_batch`] did.
struct Handled {
    /// Events handled.
    handled: usize,
    /// The process managers' checkpoint after them.
    after: Option<Position>,
    /// Whether the log had nothing more when last read.
    at_end: bool,
}

/// Events handled per batch (SQLite). A crash may make the runner handle every event after
/// the checkpoint it last wrote again, here its last batch, so a computer must remember at
/// least as many released sessions as those events can release (one per event at most).
const BATCH: usize = 256;
const _: () = assert!(BATCH <= latchkey_domain::computer::RELEASED_KEPT);

/// Events per batch on PostgreSQL. There the checkpoint written trails what was carried out
/// by up to three batches: a batch's transaction writes what was noted when it began, while
/// the previous batch's reactions were still being carried out, and it commits while its
/// own are. So a third of [`BATCH`]; a busy server's batches are far smaller anyway.
const OVERLAPPED_BATCH: usize = BATCH / 3;
const _: () = assert!(3 * OVERLAPPED_BATCH <= latchkey_domain::computer::RELEASED_KEPT);

/// Follows the end of the event log from `from` on and wakes the waiters of each new event's
/// stream ([`StreamWakeups`]), and only those: the agents' long polls wait on their own
/// computer's stream. It learns of new events from the store (on PostgreSQL, appended by any
/// server: the notification says only that the log moved, and the events themselves say which
/// streams, so a lost or coalesced notification can never lose a wake-up). Spawn it; it runs
/// for as long as the server.
pub async fn follow_log(
    store: Arc<dyn EventStore>,
    from: Option<Position>,
    wakeups: Arc<StreamWakeups>,
) {
    let mut head = from;
    loop {
        match store.read_all(head, FOLLOW_PAGE).await {
            Ok(page) => {
                // Once per stream and page: a command appends its events together.
                let streams: std::collections::HashSet<&str> =
                    page.iter().map(|e| e.stream.as_str()).collect();
                for stream in streams {
                    wakeups.wake(stream);
                }
                if let Some(last) = page.last() {
                    head = Some(last.position);
                    // More may follow: read on before waiting.
                    if page.len() == FOLLOW_PAGE {
                        continue;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the end of the event log");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        }
        store.wait_for_events_after(head).await;
    }
}

/// Events read per page while following the end of the log.
const FOLLOW_PAGE: usize = 1000;

fn stream_name(name: String) -> Result<StreamName, CommandError> {
    StreamName::new(name).map_err(CommandError::Store)
}
