//! Catch-up-then-live subscriptions to `$all` for projections and process managers, written
//! once over the `EventStore` trait so every backend gets the same behaviour. A subscription
//! must never skip or repeat an event, however events and wake-ups interleave.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::api::{EventStore, Position, RecordedEvent, StoreError};

/// Events fetched per `read_all` while catching up.
pub const PAGE_SIZE: usize = 1000;

/// A reader of `$all` from a checkpoint: it pages through what is already stored, then
/// waits for new commits, and hands out each event exactly once, in global order.
pub struct Subscription {
    store: Arc<dyn EventStore>,
    /// The position of the last event handed out.
    checkpoint: Option<Position>,
    /// The position of the last event fetched (handed out or still buffered).
    fetched: Option<Position>,
    buffer: VecDeque<RecordedEvent>,
}

/// Subscribes to every event after `after` (`None`: from the beginning of the log).
pub fn subscribe_all(store: Arc<dyn EventStore>, after: Option<Position>) -> Subscription {
    Subscription {
        store,
        checkpoint: after,
        fetched: after,
        buffer: VecDeque::new(),
    }
}

impl Subscription {
    /// The next event, waiting for one to be committed if the subscription is caught up.
    ///
    /// Cancel-safe: dropping the future (e.g. in `tokio::select!`) loses no event, since
    /// fetched events are only buffered once a read completed.
    pub async fn next(&mut self) -> Result<RecordedEvent, StoreError> {
        loop {
            if let Some(event) = self.buffer.pop_front() {
                self.checkpoint = Some(event.position);
                return Ok(event);
            }
            let page = self.store.read_all(self.fetched, PAGE_SIZE).await?;
            if page.is_empty() {
                self.store.wait_for_events_after(self.fetched).await;
                continue;
            }
            self.accept(page)?;
        }
    }

    /// The position of the last event returned by `next`, to save and resume from; before
    /// the first event, the position the subscription started after.
    pub fn checkpoint(&self) -> Option<Position> {
        self.checkpoint
    }

    /// Buffers a page after checking it really continues where the last one stopped: a
    /// backend that broke the order would otherwise make us repeat or lose events silently.
    fn accept(&mut self, page: Vec<RecordedEvent>) -> Result<(), StoreError> {
        let mut last = self.fetched;
        for event in &page {
            if last.is_some_and(|last| event.position <= last) {
                return Err(StoreError::Corrupt(format!(
                    "$all went backwards: position {} came after {}",
                    event.position,
                    last.map_or_else(String::new, |p| p.to_string())
                )));
            }
            last = Some(event.position);
        }
        self.fetched = last;
        self.buffer.extend(page);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AppendResult, ExpectedState, NewEvent, StreamName};
    use async_trait::async_trait;

    /// A backend that answers every read with the same event, as a broken one might.
    struct Stuck(RecordedEvent);

    #[async_trait]
    impl EventStore for Stuck {
        async fn append(
            &self,
            _: &StreamName,
            _: ExpectedState,
            _: Vec<NewEvent>,
        ) -> Result<AppendResult, StoreError> {
            Err(StoreError::Unavailable("read-only".into()))
        }
        async fn read_stream(
            &self,
            _: &StreamName,
            _: u64,
            _: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            Ok(Vec::new())
        }
        async fn read_all(
            &self,
            _: Option<Position>,
            _: usize,
        ) -> Result<Vec<RecordedEvent>, StoreError> {
            Ok(vec![self.0.clone()])
        }
        async fn wait_for_events_after(&self, _: Option<Position>) {}
    }

    #[tokio::test]
    async fn a_backend_that_repeats_an_event_is_reported_not_followed() {
        let memory = crate::memory::MemoryStore::new();
        let stream = StreamName::new("s").expect("valid name");
        let new = crate::conformance::event(1);
        memory
            .append(&stream, ExpectedState::NoStream, vec![new])
            .await
            .expect("appends");
        let event = memory.read_all(None, 1).await.expect("reads").remove(0);
        let mut subscription = subscribe_all(Arc::new(Stuck(event.clone())), None);
        assert_eq!(subscription.next().await.ok(), Some(event.clone()));
        assert_eq!(subscription.checkpoint(), Some(event.position));
        assert!(matches!(
            subscription.next().await,
            Err(StoreError::Corrupt(_))
        ));
    }
}
