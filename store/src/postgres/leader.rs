//! Leadership among the servers that share one PostgreSQL database: whoever holds a
//! session-level advisory lock is the leader. The lock lives as long as the connection that
//! took it, so when the leader's process dies (even by SIGKILL) PostgreSQL drops the
//! connection and another server's next attempt gets the lock.

use super::CONNECT_TIMEOUT;
use crate::StoreError;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres_rustls::MakeRustlsConnect;

/// Held leadership. [`Leadership::lost`] completes if the connection holding the lock ends.
pub struct Leadership {
    _client: tokio_postgres::Client,
    connection: tokio::task::JoinHandle<()>,
}

impl Leadership {
    /// Waits until this process holds the advisory lock `key` on the database `url` names,
    /// trying again every `retry`. Fails only if the URL is malformed; an unreachable server
    /// is retried like a held lock.
    pub async fn acquire(url: &str, key: i64, retry: Duration) -> Result<Self, StoreError> {
        let mut config = tokio_postgres::Config::from_str(url).map_err(|_| {
            StoreError::Unavailable(
                "the PostgreSQL URL is not valid; use postgres://user:password@host:port/database"
                    .into(),
            )
        })?;
        config.application_name("latchkey-leader");
        config.connect_timeout(CONNECT_TIMEOUT);
        // Notice a silently vanished peer within about a minute.
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        let tls = latchkey_sql::tls::connector().map_err(StoreError::Unavailable)?;
        loop {
            // Held by another server, or the database is unreachable or restarting: either
            // way, try again later.
            if let Ok(Some(leadership)) = Self::try_once(&config, &tls, key).await {
                return Ok(leadership);
            }
            tokio::time::sleep(retry).await;
        }
    }

    async fn try_once(
        config: &tokio_postgres::Config,
        tls: &MakeRustlsConnect,
        key: i64,
    ) -> Result<Option<Self>, tokio_postgres::Error> {
        let (client, connection) = config.connect(tls.clone()).await?;
        let connection = tokio::spawn(async move {
            let _ = connection.await;
        });
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?;
        if row.get::<_, bool>(0) {
            Ok(Some(Self {
                _client: client,
                connection,
            }))
        } else {
            connection.abort();
            Ok(None)
        }
    }

    /// Completes when the connection holding the lock has ended: from then on another
    /// server may lead, so this one must stop acting as leader.
    pub async fn lost(&mut self) {
        let _ = (&mut self.connection).await;
    }
}
