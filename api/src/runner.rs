//! Runs the process managers: follows the log in global order, keeps the directory read model
//! up to date, and turns each event's reactions (`latchkey_domain::process::react`) into
//! commands through the one command path. Every reaction is idempotent, so after a crash the
//! runner resumes from its checkpoint and may safely handle the last event again.

use crate::commands::{self, CommandError, Envelope, StateCache};
use crate::wakeups::StreamWakeups;
use latchkey_domain::computer::Computer;
use latchkey_domain::process::{react, Command};
use latchkey_domain::session::Session;
use latchkey_domain::technician::Technician;
use latchkey_projections::{ProjectionError, ReadModels};
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
}

pub struct ProcessRunner {
    store: Arc<dyn EventStore>,
    models: Arc<Mutex<ReadModels>>,
    progress: watch::Sender<Option<Position>>,
    cache: Arc<StateCache>,
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
        }
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

    /// Handles every event written so far; returns how many it handled.
    pub async fn run_until_idle(&self) -> Result<usize, RunnerError> {
        let mut handled = 0;
        loop {
            let (batch, _) = self.handle_batch().await?;
            if batch == 0 {
                return Ok(handled);
            }
            handled += batch;
        }
    }

    /// Follows the log for ever (until an error).
    pub async fn run(&self) -> Result<(), RunnerError> {
        // A run after a failure may find the read models' connection broken (the database
        // restarted): connect again first. The scheduler shares these read models.
        self.with_models(|m| m.reconnect_if_broken())?;
        loop {
            let (handled, after) = self.handle_batch().await?;
            // A short batch was the end of the log: wait for more (at once if some came
            // meanwhile) instead of reading again only to find nothing.
            if handled < BATCH {
                self.store.wait_for_events_after(after).await;
            }
        }
    }

    /// Applies the next batch of events to the read models (one transaction), works out every
    /// event's reactions against the read models as they were right after it, then carries the
    /// reactions out: in order within each target stream, different streams concurrently (so
    /// their appends share the store's group commits). Returns how many events it handled and
    /// the process managers' checkpoint after them.
    async fn handle_batch(&self) -> Result<(usize, Option<Position>), RunnerError> {
        let after = self.with_models(|m| m.process_checkpoint())?;
        let page = self.store.read_all(after, BATCH).await?;
        let Some(last) = page.last().map(|e| e.position) else {
            return Ok((0, after));
        };
        let now = chrono::Utc::now();
        let reactions = self.with_models(|m| -> Result<_, RunnerError> {
            let applied = m.checkpoint()?;
            // Events the read models already have (a crash came between applying them and
            // reacting to them) are reacted to against the current read models.
            let mut reactions = Vec::new();
            for recorded in page
                .iter()
                .filter(|e| applied.is_some_and(|a| e.position <= a))
            {
                let event = latchkey_projections::decode(recorded)?;
                reactions.push((recorded.clone(), react(&event, now, &m.queries())?));
            }
            let fresh = m.apply_with(&page, |recorded, event, queries| {
                Ok::<_, ProjectionError>((recorded.clone(), react(event, now, &queries)?))
            })?;
            reactions.extend(fresh);
            Ok(reactions)
        })?;
        self.progress.send_replace(Some(last));
        // Per target stream, in log order.
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
        self.with_models(|m| m.set_process_checkpoint(last))?;
        Ok((page.len(), Some(last)))
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

/// Events handled per batch. A crash may make the runner handle its last batch again, so a
/// computer must remember at least as many released sessions as a batch can release.
const BATCH: usize = 256;
const _: () = assert!(BATCH <= latchkey_domain::computer::RELEASED_KEPT);

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
