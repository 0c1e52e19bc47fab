//! The PostgreSQL event store, for several API servers sharing one store. Appends are one
//! statement each (see `append`); the global order is (transaction id, sequence), read only
//! below the oldest transaction still running, so a catch-up reader never passes an event
//! that commits late with a lower position. It must never answer an append before its
//! transaction committed, nor hand out an event while one before it may still commit.

mod append;
pub mod leader;
mod rows;
mod schema;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
mod wakeups;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::watch;

use crate::api::{
    AppendResult, EventStore, ExpectedState, NewEvent, Position, RecordedEvent, StoreError,
    StreamName,
};
use crate::append_rules;
use append::Heads;
use schema::{explain, sql_error};
use wakeups::Wakeups;

/// How long `wait_for_events_after` waits for a notification before looking again.
const POLL: Duration = Duration::from_millis(250);

/// How long it waits when events are committed but held back behind a running transaction,
/// which usually ends within milliseconds and may end without a notification (an abort).
const HELD_BACK_POLL: Duration = Duration::from_millis(10);

/// How long `read_all` keeps looking when all it could return is held back behind a running
/// transaction, so that a writer reading right after its append sees it even while other
/// transactions are in flight. A reader behind a longer transaction gets an empty page.
const HELD_BACK_PATIENCE: Duration = Duration::from_secs(1);

/// How long to wait for a pooled connection (or a new one) before failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Tuning for [`PostgresStore::connect_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PostgresOptions {
    /// Connections kept for appends and reads; as many appends run at once.
    pub pool_size: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self { pool_size: 16 }
    }
}

/// A handle on a PostgreSQL event store. Clones share the connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    heads: Heads,
    wakeups: Arc<Wakeups>,
    /// Dropping it stops the background connection.
    _shutdown: watch::Sender<()>,
}

/// Connects to the store `url` names; `open_url` calls this.
pub async fn open(url: &str) -> Result<Arc<dyn EventStore>, StoreError> {
    Ok(Arc::new(PostgresStore::connect(url).await?))
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user:password@host:port/database`), creating or
    /// upgrading the store's tables. TLS as the URL's `sslmode` says (see [`latchkey_sql::tls`]).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, PostgresOptions::default()).await
    }

    pub async fn connect_with(url: &str, options: PostgresOptions) -> Result<Self, StoreError> {
        // The URL may hold a password: never echo it.
        let mut config = tokio_postgres::Config::from_str(url).map_err(|e| {
            StoreError::Unavailable(format!(
                "the PostgreSQL URL is not valid ({}); use \
                 postgres://user:password@host:port/database",
                explain(&e)
            ))
        })?;
        if config.get_application_name().is_none() {
            config.application_name("latchkey");
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        let where_ = describe(&config);
        let manager = Manager::from_config(
            config.clone(),
            latchkey_sql::tls::connector().map_err(StoreError::Unavailable)?,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Unavailable(format!("cannot create a pool: {e}")))?;
        let mut client = pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot connect to PostgreSQL at {where_}: {}",
                pool_error(e)
            ))
        })?;
        schema::migrate(&mut client).await?;
        drop(client);
        let wakeups = Arc::new(Wakeups::default());
        let (shutdown, stopped) = watch::channel(());
        wakeups::spawn(config, Arc::clone(&wakeups), stopped);
        wakeups.until_listening(CONNECT_TIMEOUT).await;
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                heads: Heads::default(),
                wakeups,
                _shutdown: shutdown,
            }),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.inner.pool.get().await.map_err(|e| {
            StoreError::Unavailable(format!(
                "cannot get a connection to PostgreSQL: {}",
                pool_error(e)
            ))
        })
    }

    /// Events of `$all` after `after` that a reader may see now, or an empty page if none.
    async fn read_visible(
        &self,
        after: Option<Position>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let (commit, prepare) = position_params(after);
        let client = self.client().await?;
        let reading = |e| sql_error("cannot read $all", e);
        let statement = client
            .prepare_cached(rows::READ_ALL)
            .await
            .map_err(reading)?;
        client
            .query(&statement, &[&commit, &prepare, &clamp(max_count as u64)])
            .await
            .map_err(reading)?
            .iter()
            .map(rows::decode)
            .collect()
    }

    async fn probe(&self, after: Option<Position>) -> Result<Probe, StoreError> {
        let (commit, prepare) = position_params(after);
        let client = self.client().await?;
        let probing = |e| sql_error("cannot look for new events", e);
        let statement = client.prepare_cached(rows::PROBE).await.map_err(probing)?;
        let row = client
            .query_opt(&statement, &[&commit, &prepare])
            .await
            .map_err(probing)?;
        let Some(row) = row else {
            return Ok(Probe::Nothing);
        };
        let readable: bool = row.try_get(0).map_err(probing)?;
        Ok(if readable {
            Probe::Readable
        } else {
            Probe::HeldBack
        })
    }
}

/// What lies after a position.
enum Probe {
    Readable,
    /// Committed events, but behind a transaction that may still commit before them.
    HeldBack,
    Nothing,
}

/// `after` as `READ_ALL`'s first two parameters; `None` is before every position.
fn position_params(after: Option<Position>) -> (String, i64) {
    match after {
        None => ("0".to_owned(), 0),
        Some(p) => (p.commit.to_string(), clamp(p.prepare)),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> String {
    match e {
        deadpool_postgres::PoolError::Backend(e) => explain(&e),
        other => other.to_string(),
    }
}

/// PostgreSQL integers are signed; anything larger than the biggest one means "no limit".
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Where `config` points, without credentials, for error messages.
fn describe(config: &tokio_postgres::Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect();
    let ports: Vec<String> = config.get_ports().iter().map(u16::to_string).collect();
    format!(
        "host {} port {} database {}",
        if hosts.is_empty() {
            "localhost".to_owned()
        } else {
            hosts.join(",")
        },
        if ports.is_empty() {
            "5432".to_owned()
        } else {
            ports.join(",")
        },
        config.get_dbname().unwrap_or("(the user's)")
    )
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn append(
        &self,
        stream: &StreamName,
        expected: ExpectedState,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult, StoreError> {
        append_rules::validate_batch(&events)?;
        let mut client = self.client().await?;
        let result =
            append::append(&mut client, &self.inner.heads, stream, expected, &events).await;
        if result.is_ok() {
            // Replays too: the caller may be waiting for the original append's events.
            self.inner.wakeups.committed();
        }
        result
    }

    async fn read_stream(
        &self,
        stream: &StreamName,
        from_revision: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max_count == 0 || from_revision > i64::MAX as u64 {
            return Ok(Vec::new());
        }
        let client = self.client().await?;
        let reading = |e| sql_error(&format!("cannot read stream {stream}"), e);
        let statement = client
            .prepare_cached(rows::READ_STREAM)
            .await
            .map_err(reading)?;
        client
            .query(
                &statement,
                &[
                    &stream.as_str(),
                    &clamp(from_revision),
                    &clamp(max_count as u64),
                ],
            )
            .await
            .map_err(reading)?
            .iter()
            .map(rows::decode)
            .collect()
    }

    async fn read_all(
        &self,
        after: Option<Position>,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        if max_count == 0 {
            return Ok(Vec::new());
        }
        let started = tokio::time::Instant::now();
        let mut pause = Duration::from_millis(1);
        loop {
            // Subscribed before reading, so a commit between the read and the wait still
            // wakes it.
            let mut commits = self.inner.wakeups.subscribe();
            let page = self.read_visible(after, max_count).await?;
            if !page.is_empty() || started.elapsed() >= HELD_BACK_PATIENCE {
                return Ok(page);
            }
            match self.probe(after).await? {
                Probe::Nothing => return Ok(page),
                // Committed since the read: read again at once.
                Probe::Readable => continue,
                // Usually behind another append of this process, whose commit wakes it;
                // else (another process's transaction, one that writes no event) after the
                // pause.
                Probe::HeldBack => {
                    let _ = tokio::time::timeout(pause, commits.changed()).await;
                }
            }
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    async fn wait_for_events_after(&self, after: Option<Position>) {
        // Subscribed before looking, so a commit between the look and the wait still wakes.
        let mut commits = self.inner.wakeups.subscribe();
        let patience = match self.probe(after).await {
            Ok(Probe::Readable) => return,
            Ok(Probe::HeldBack) => HELD_BACK_POLL,
            Ok(Probe::Nothing) => POLL,
            // Unavailable: say so at the next read rather than spin here.
            Err(_) => POLL,
        };
        let _ = tokio::time::timeout(patience, commits.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_map_to_transaction_and_sequence() {
        assert_eq!(position_params(None), ("0".to_owned(), 0));
        assert_eq!(
            position_params(Some(Position::new(u64::MAX, 7))),
            (u64::MAX.to_string(), 7)
        );
        assert_eq!(
            position_params(Some(Position::new(3, u64::MAX))),
            ("3".to_owned(), i64::MAX)
        );
    }

    #[test]
    fn connection_descriptions_leave_out_the_password() {
        let config =
            tokio_postgres::Config::from_str("postgres://latchkey:hunter2@db.example:6543/events")
                .expect("parses");
        let described = describe(&config);
        assert!(!described.contains("hunter2"), "{described}");
        assert_eq!(described, "host db.example port 6543 database events");
    }

    #[tokio::test]
    async fn an_invalid_url_is_refused_without_echoing_it() {
        let refused = PostgresStore::connect("postgres://u:hunter2@host:notaport/db")
            .await
            .map(|_| ());
        match refused {
            Err(StoreError::Unavailable(message)) => {
                assert!(!message.contains("hunter2"), "{message}");
                assert!(message.contains("postgres://user:password@"), "{message}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
}
