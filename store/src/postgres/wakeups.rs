//! Wake-ups for `wait_for_events_after`: appends of this process wake its waiters at once;
//! other processes hear of them through LISTEN/NOTIFY on one background connection per
//! store, and a poll covers whatever notifications miss (a lost connection, a transaction
//! that aborted and so unblocked the events behind it).
//!
//! The NOTIFY is sent after the append committed, never inside its transaction: PostgreSQL
//! serialises the commits of notifying transactions on one lock held across their WAL
//! flush, which would end group commit. Appends committed while a NOTIFY is in flight, or
//! within `MIN_NOTIFY_INTERVAL` of the last one, share the next one: a NOTIFY is a
//! transaction of its own, and one per append cost a tenth of the append throughput.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio_postgres::AsyncMessage;

/// The channel every store on one database listens and notifies on.
const CHANNEL: &str = "latchkey_store_events";

/// The least time between two NOTIFYs: what other processes' waiters may lose.
const MIN_NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

/// How long to wait before reconnecting a lost listening connection.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

#[derive(Default)]
pub(super) struct Wakeups {
    /// Bumped whenever events may have become readable.
    commits: watch::Sender<u64>,
    /// Asks the background connection to NOTIFY the other processes.
    announce: Notify,
    /// Whether the background connection is LISTENing now.
    listening: watch::Sender<bool>,
}

impl Wakeups {
    /// Called after this process committed an append.
    pub fn committed(&self) {
        self.wake_local();
        self.announce.notify_one();
    }

    fn wake_local(&self) {
        self.commits.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A receiver that sees every wake-up from now on.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Waits until the background connection listens, so that a store is told of other
    /// processes' commits from the moment it is open; gives up after `patience` (the poll
    /// still covers them).
    pub async fn until_listening(&self, patience: Duration) {
        let mut listening = self.listening.subscribe();
        let _ = tokio::time::timeout(patience, listening.wait_for(|&yes| yes)).await;
    }
}

/// Keeps one connection that LISTENs for other processes' commits and NOTIFYs ours, until
/// `shutdown`'s sender is dropped (when the store is).
pub(super) fn spawn(
    config: tokio_postgres::Config,
    wakeups: Arc<Wakeups>,
    mut shutdown: watch::Receiver<()>,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                () = listen_and_announce(&config, &wakeups) => {}
            }
            wakeups.listening.send_replace(false);
            // Events may have been committed while we were not listening.
            wakeups.wake_local();
            tokio::select! {
                _ = shutdown.changed() => return,
                () = tokio::time::sleep(RECONNECT_DELAY) => {}
            }
        }
    });
}

/// Runs until the connection fails.
async fn listen_and_announce(config: &tokio_postgres::Config, wakeups: &Wakeups) {
    let Ok(tls) = latchkey_sql::tls::connector() else {
        return;
    };
    let Ok((client, mut connection)) = config.connect(tls).await else {
        return;
    };
    let receive = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => wakeups.wake_local(),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    };
    let announce = async {
        if client
            .batch_execute(&format!("LISTEN {CHANNEL}"))
            .await
            .is_err()
        {
            return;
        }
        wakeups.listening.send_replace(true);
        wakeups.wake_local();
        let notify = format!("NOTIFY {CHANNEL}");
        loop {
            wakeups.announce.notified().await;
            let sent = tokio::time::Instant::now();
            if client.batch_execute(&notify).await.is_err() {
                return;
            }
            tokio::time::sleep_until(sent + MIN_NOTIFY_INTERVAL).await;
        }
    };
    tokio::select! {
        () = receive => {}
        () = announce => {}
    }
}
