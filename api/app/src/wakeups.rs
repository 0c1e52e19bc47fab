//! Wakes the long polls waiting on one stream, and only those: an agent's request feed waits
//! on its computer's stream, and an event on another computer must cost it nothing. The
//! follower of the event log ([`crate::runner::follow_log`]) reads every new event once and
//! wakes the waiters of that event's stream, so the work per event does not grow with the
//! number of connected agents. It must never keep an entry for a stream nobody waits on:
//! idle computers cost no memory here.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::futures::{Notified, OwnedNotified};
use tokio::sync::Notify;

/// The waiters of one stream: one `Notify` shared by all of them, and how many there are.
struct Waiting {
    notify: Arc<Notify>,
    count: usize,
}

/// Waiters by stream name.
#[derive(Default)]
pub struct StreamWakeups {
    waiting: Mutex<HashMap<Box<str>, Waiting>>,
    /// Waiters woken so far (a waiter woken twice counts twice).
    woken: AtomicU64,
}

impl StreamWakeups {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a waiter on `stream` until the returned guard is dropped.
    pub fn wait_on(self: &Arc<Self>, stream: &str) -> Waiter {
        let mut waiting = self.lock();
        let entry = waiting.entry(stream.into()).or_insert_with(|| Waiting {
            notify: Arc::new(Notify::new()),
            count: 0,
        });
        entry.count += 1;
        Waiter {
            wakeups: self.clone(),
            stream: stream.into(),
            notify: entry.notify.clone(),
        }
    }

    /// Wakes every waiter of `stream` that is waiting now (see [`Waiter::notified`]); costs a
    /// map look-up when nobody waits on it.
    pub fn wake(&self, stream: &str) {
        let waiting = self.lock();
        if let Some(entry) = waiting.get(stream) {
            tracing::debug!(stream, waiters = entry.count, "waking long polls");
            self.woken.fetch_add(entry.count as u64, Ordering::Relaxed);
            entry.notify.notify_waiters();
        }
    }

    /// How many waiters there are now, on all streams.
    pub fn waiting(&self) -> usize {
        self.lock().values().map(|w| w.count).sum()
    }

    /// How many wake-ups were delivered to waiters so far.
    pub fn woken(&self) -> u64 {
        self.woken.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<str>, Waiting>> {
        // The map stays consistent whatever panicked while holding it (every change is one
        // insert, increment, decrement or remove).
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One registered waiter. Use: create a [`Notified`] with [`Waiter::notified`], `enable` it,
/// then read the stream, then await it if what was read holds nothing new: an event that
/// lands between the read and the await still wakes it.
pub struct Waiter {
    wakeups: Arc<StreamWakeups>,
    stream: Box<str>,
    notify: Arc<Notify>,
}

impl Waiter {
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// [`Waiter::notified`] that does not borrow the waiter, for a listener kept across
    /// awaits of a state machine that also holds the waiter (the event feed).
    pub fn notified_owned(&self) -> OwnedNotified {
        self.notify.clone().notified_owned()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut waiting = self.wakeups.lock();
        if let Some(entry) = waiting.get_mut(&self.stream) {
            entry.count -= 1;
            if entry.count == 0 {
                waiting.remove(&self.stream);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    fn is_ready(future: std::pin::Pin<&mut impl Future<Output = ()>>) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        matches!(future.poll(&mut cx), Poll::Ready(()))
    }

    #[test]
    fn an_event_on_one_stream_wakes_no_waiter_of_another() {
        let wakeups = Arc::new(StreamWakeups::new());
        let x = wakeups.wait_on("computer-x");
        let mut waiting_x = pin!(x.notified());
        waiting_x.as_mut().enable();
        wakeups.wake("computer-y");
        assert!(!is_ready(waiting_x.as_mut()));
        assert_eq!(wakeups.woken(), 0);
        wakeups.wake("computer-x");
        assert!(is_ready(waiting_x.as_mut()));
        assert_eq!(wakeups.woken(), 1);
    }

    #[test]
    fn a_wake_between_enabling_and_awaiting_is_not_lost() {
        let wakeups = Arc::new(StreamWakeups::new());
        let x = wakeups.wait_on("computer-x");
        let mut waiting = pin!(x.notified());
        waiting.as_mut().enable();
        // ... the poll reads the stream here, finds nothing, and an event lands ...
        wakeups.wake("computer-x");
        assert!(is_ready(waiting.as_mut()));
    }

    #[test]
    fn every_waiter_of_the_stream_is_woken_and_gone_waiters_leave_no_entry() {
        let wakeups = Arc::new(StreamWakeups::new());
        let first = wakeups.wait_on("computer-x");
        let second = wakeups.wait_on("computer-x");
        assert_eq!(wakeups.waiting(), 2);
        {
            let mut a = pin!(first.notified());
            let mut b = pin!(second.notified());
            a.as_mut().enable();
            b.as_mut().enable();
            wakeups.wake("computer-x");
            assert!(is_ready(a.as_mut()) && is_ready(b.as_mut()));
        }
        assert_eq!(wakeups.woken(), 2);
        drop(first);
        assert_eq!(wakeups.waiting(), 1);
        drop(second);
        assert_eq!(wakeups.waiting(), 0);
        assert!(
            wakeups.lock().is_empty(),
            "no entry is kept for an idle stream"
        );
    }
}
