//! The one place a backend is chosen. `--store` and `--data` name where everything lives;
//! [`Backend::open`] opens the event store and says where the relational side lives (the
//! read models, snapshots and the server's token, secret and idempotency tables) and whether
//! several servers share it. Nothing above this crate names a backend: it asks the
//! [`Backend`] for a [`Place`] and, when shared, for the [`Leadership`] of the servers.

use crate::postgres::leader;
use crate::{parse_url, EventStore, Location, StoreError};
use latchkey_sql::Place;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// The event store and where everything beside it lives.
pub struct Backend {
    events: Arc<dyn EventStore>,
    /// Every server shares the database at this URL (PostgreSQL): the relational side lives
    /// there too, and one server at a time leads.
    shared: Option<String>,
    /// This server's data directory (its own files when nothing is shared).
    data: PathBuf,
}

/// Leadership of the servers sharing a database: held until [`Leadership::lost`] says
/// otherwise. A server alone always leads.
pub struct Leadership(Option<leader::Leadership>);

impl Leadership {
    /// Resolves when the leadership is lost (its connection broke); never for a server alone.
    pub async fn lost(&mut self) {
        match &mut self.0 {
            Some(held) => held.lost().await,
            None => std::future::pending().await,
        }
    }
}

impl Backend {
    /// Opens the event store `url` names (see [`crate::open_url`]), with `data` as this
    /// server's data directory.
    pub async fn open(url: &str, data: &Path) -> Result<Self, StoreError> {
        let shared = matches!(parse_url(url)?, Location::Postgres(_)).then(|| url.to_owned());
        let events = crate::open_url(url).await?;
        Ok(Self {
            events,
            shared,
            data: data.to_owned(),
        })
    }

    pub fn events(&self) -> &Arc<dyn EventStore> {
        &self.events
    }

    /// Whether several servers share the database (then one leads the process managers and
    /// each must follow the shared read models).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Where the tables that would be the file `file` of the data directory live: that file,
    /// or the shared database.
    pub fn place(&self, file: &str) -> Place {
        match &self.shared {
            Some(url) => Place::Postgres(url.clone()),
            None => Place::File(self.data.join(file)),
        }
    }

    /// Becomes the leader of the servers sharing the database, waiting (trying again every
    /// `retry`) while another leads; `key` names the lock. A server alone leads at once.
    pub async fn lead(&self, key: i64, retry: Duration) -> Result<Leadership, StoreError> {
        match &self.shared {
            Some(url) => Ok(Leadership(Some(
                leader::Leadership::acquire(url, key, retry).await?,
            ))),
            None => Ok(Leadership(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn alone_everything_is_a_file_of_the_data_directory_and_leadership_is_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Backend::open("memory:", dir.path()).await.unwrap();
        assert!(!backend.is_shared());
        assert_eq!(
            backend.place("tokens.db").path(),
            dir.path().join("tokens.db")
        );
        let mut leadership = backend.lead(1, Duration::from_millis(10)).await.unwrap();
        let lost = tokio::time::timeout(Duration::from_millis(50), leadership.lost()).await;
        assert!(lost.is_err(), "a server alone never loses its leadership");
    }
}
