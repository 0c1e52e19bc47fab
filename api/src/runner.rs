//! Runs the process managers: follows the log in global order, keeps the directory read model
//! up to date, and turns each event's reactions (`latchkey_domain::process::react`) into
//! commands through the one command path. Every reaction is idempotent, so after a crash the
//! runner resumes from its checkpoint and may safely handle the last event again.

use crate::commands::{self, CommandError, Envelope};
use latchkey_domain::computer::Computer;
use latchkey_domain::process::{react, Command};
use latchkey_domain::session::Session;
use latchkey_projections::{ProjectionError, ReadModels};
use latchkey_store::{subscribe_all, EventStore, Position, RecordedEvent, StoreError, StreamName};
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
        }
    }

    /// Follows the read models' checkpoint: it changes after every event the runner applied.
    /// Long polls (the agents' request feed) wait on it.
    pub fn progress(&self) -> watch::Receiver<Option<Position>> {
        self.progress.subscribe()
    }

    fn with_models<T>(&self, f: impl FnOnce(&mut ReadModels) -> T) -> T {
        // A panic elsewhere while holding the lock leaves the SQLite file consistent (every
        // write is one transaction), so the data behind a poisoned lock is still good.
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut models)
    }

    /// Handles every event written so far; returns how many it handled.
    pub async fn run_until_idle(&self) -> Result<usize, RunnerError> {
        let mut handled = 0;
        loop {
            let after = self.with_models(|m| m.process_checkpoint())?;
            let page = self.store.read_all(after, 500).await?;
            if page.is_empty() {
                return Ok(handled);
            }
            for event in &page {
                self.handle(event).await?;
                handled += 1;
            }
        }
    }

    /// Follows the log for ever (until an error).
    pub async fn run(&self) -> Result<(), RunnerError> {
        let after = self.with_models(|m| m.process_checkpoint())?;
        let mut subscription = subscribe_all(self.store.clone(), after);
        loop {
            let event = subscription.next().await?;
            self.handle(&event).await?;
        }
    }

    async fn handle(&self, recorded: &RecordedEvent) -> Result<(), RunnerError> {
        let now = chrono::Utc::now();
        // The directory must include this event before the reactions look things up.
        let reactions = self.with_models(|m| -> Result<Vec<Command>, ProjectionError> {
            m.apply(std::slice::from_ref(recorded))?;
            let event = latchkey_projections::decode(recorded)?;
            react(&event, now, &*m)
        })?;
        self.progress.send_replace(Some(recorded.position));
        let envelope = Envelope {
            actor: "system".into(),
            correlation_id: recorded.metadata.correlation_id,
            causation_id: Some(recorded.id),
        };
        let failed = |source| RunnerError::Command {
            position: recorded.position,
            source,
        };
        for reaction in reactions {
            match reaction {
                Command::Computer {
                    computer_id,
                    command,
                } => {
                    let stream = stream_name(computer_id.stream_name()).map_err(failed)?;
                    commands::execute::<Computer, _>(&*self.store, &stream, &envelope, |_| {
                        command.clone()
                    })
                    .await
                    .map_err(failed)?;
                }
                Command::Session {
                    session_id,
                    command,
                } => {
                    let stream = stream_name(session_id.stream_name()).map_err(failed)?;
                    commands::execute::<Session, _>(&*self.store, &stream, &envelope, |_| {
                        command.clone()
                    })
                    .await
                    .map_err(failed)?;
                }
            }
        }
        self.with_models(|m| m.set_process_checkpoint(recorded.position))?;
        Ok(())
    }
}

fn stream_name(name: String) -> Result<StreamName, CommandError> {
    StreamName::new(name).map_err(CommandError::Store)
}
