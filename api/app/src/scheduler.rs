//! Time-driven commands, from the read models so they survive a restart:
//! - sessions past their maximum length are checked in (`Expired`), which revokes their access
//!   on the computer through the process managers;
//! - failed revocations and clean-ups are retried with exponential back-off (5 s, 10 s, 20 s …
//!   up to 10 minutes between attempts), for ever: they are shown as stuck
//!   (`/v1/tenants/{id}/stuck-requests`), never dropped.

use crate::commands::{self, CommandError, Envelope};
use latchkey_domain::computer::{Computer, ComputerCommand};
use latchkey_domain::ids::RequestId;
use latchkey_domain::session::{CheckInReason, Session, SessionCommand};
use latchkey_domain::{Actor, DomainError};
use latchkey_projections::{ProjectionError, ReadModels};
use latchkey_store::{EventStore, StreamName};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The wait before retrying a request whose attempt number `attempt` failed.
pub fn back_off(attempt: u32) -> chrono::Duration {
    let seconds = 5u64.saturating_mul(1u64 << attempt.saturating_sub(1).min(20));
    chrono::Duration::seconds(seconds.min(600) as i64)
}

pub struct Scheduler {
    store: Arc<dyn EventStore>,
    models: Arc<Mutex<ReadModels>>,
}

fn envelope() -> Envelope {
    Envelope {
        actor: "system".into(),
        correlation_id: Uuid::now_v7(),
        causation_id: None,
    }
}

fn stream(name: String) -> Result<StreamName, CommandError> {
    StreamName::new(name).map_err(CommandError::Store)
}

impl Scheduler {
    pub fn new(store: Arc<dyn EventStore>, models: Arc<Mutex<ReadModels>>) -> Self {
        Self { store, models }
    }

    fn query<T>(
        &self,
        f: impl FnOnce(&ReadModels) -> Result<T, ProjectionError>,
    ) -> Result<T, ProjectionError> {
        f(&self.models.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Checks in every open session whose time is up at `now`; returns how many.
    pub async fn expire_due(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, SchedulerError> {
        let due = self.query(|m| m.queries().expired_sessions(now))?;
        let mut expired = 0;
        for session in due {
            let command = SessionCommand::CheckIn {
                reason: CheckInReason::Expired,
                by: Actor::System,
                at: now,
            };
            let executed = commands::execute::<Session, _>(
                &*self.store,
                &stream(session.stream_name())?,
                &envelope(),
                |_| command.clone(),
            )
            .await?;
            if !executed.events.is_empty() {
                tracing::info!(%session, "session expired and checked in");
                expired += 1;
            }
        }
        Ok(expired)
    }

    /// Re-issues every failed revocation whose back-off has passed at `now`; returns how many.
    pub async fn retry_due(
        &self,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<usize, SchedulerError> {
        let failed = self.query(|m| m.queries().failed_requests(None))?;
        let mut retried = 0;
        for request in failed {
            if request.failed_at + back_off(request.attempt) > now {
                continue;
            }
            let command = ComputerCommand::RetryRequest {
                request_id: RequestId(request.request_id),
                at: now,
            };
            let result = commands::execute::<Computer, _>(
                &*self.store,
                &stream(request.computer_id.stream_name())?,
                &envelope(),
                |_| command.clone(),
            )
            .await;
            match result {
                Ok(executed) if !executed.events.is_empty() => {
                    tracing::warn!(
                        computer = %request.computer_id, request = request.request_id,
                        attempt = request.attempt + 1, "retrying a failed revocation"
                    );
                    retried += 1;
                }
                Ok(_) => {}
                // The read model was behind: the request is already closed.
                Err(CommandError::Domain(DomainError::UnknownRequest { .. })) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(retried)
    }

    /// Runs both every `every`, for ever (until an error).
    pub async fn run(&self, every: Duration) -> Result<(), SchedulerError> {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = chrono::Utc::now();
            self.expire_due(now).await?;
            self.retry_due(now).await?;
        }
    }
}
