//! Throw-away databases for the PostgreSQL tests and benchmark: each [`TestDatabase`] is a
//! fresh, empty database on the server `LATCHKEY_TEST_POSTGRES_URL` names. This is test
//! code: it panics on failure and must never be called from production paths.
//!
//! Databases are not dropped when a test ends: DROP DATABASE waits for a checkpoint while
//! holding a transaction id, and a transaction id held that long keeps every other test's
//! events from being read (see `rows::READ_ALL`) on the whole server. The throw-away
//! cluster of `scripts/test.sh` goes with its databases; on another server, each new
//! database first drops those left behind more than `LEFTOVER_AGE` ago.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use uuid::Uuid;

/// Test databases are named `latchkey_test_<seconds since the epoch>_<random>`.
const PREFIX: &str = "latchkey_test_";

/// How old a test database must be for a later test run to drop it.
const LEFTOVER_AGE: Duration = Duration::from_secs(3600);

/// The variable naming the server the tests create their databases on.
pub const SERVER_URL_VAR: &str = "LATCHKEY_TEST_POSTGRES_URL";

/// The server URL from `SERVER_URL_VAR`, if set and not empty.
pub fn server_url() -> Option<String> {
    std::env::var(SERVER_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
}

/// The server URL from `SERVER_URL_VAR`; panics saying how to provide one if unset, so a
/// run without a server fails instead of passing without testing anything.
pub fn required_server_url() -> String {
    server_url().unwrap_or_else(|| {
        panic!(
            "{SERVER_URL_VAR} is not set, so the PostgreSQL tests have no server. Run \
             `bash scripts/test.sh` (it starts a throw-away PostgreSQL cluster), or set \
             {SERVER_URL_VAR}=postgres://USER@127.0.0.1:PORT/postgres naming a server where \
             USER may CREATE DATABASE"
        )
    })
}

/// `url` with its database replaced by `database`. Only the URL form
/// (`postgres://user@host:port/db?options`) is supported.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, options) = match url.split_once('?') {
        Some((base, options)) => (base, Some(options)),
        None => (url, None),
    };
    let Some(scheme_end) = base.find("://").map(|i| i + 3) else {
        panic!("{SERVER_URL_VAR} must be a postgres:// URL");
    };
    let rest = &base[scheme_end..];
    let authority = rest
        .split_once('/')
        .map_or(rest, |(authority, _)| authority);
    let mut out = format!("{}{authority}/{database}", &base[..scheme_end]);
    if let Some(options) = options {
        out.push('?');
        out.push_str(options);
    }
    out
}

/// The statements a reader of `$all` runs, for tests of their query plans: every waiting
/// reader runs them each time the log may have moved, so they must never read the whole
/// table.
pub const READ_ALL_SQL: &str = super::rows::READ_ALL;
/// See [`READ_ALL_SQL`].
pub const PROBE_SQL: &str = super::rows::PROBE;

/// A fresh database on a test server.
pub struct TestDatabase {
    server: String,
    name: String,
    url: String,
}

impl TestDatabase {
    /// Creates a database on the server `SERVER_URL_VAR` names; panics if it is unset.
    pub async fn create() -> Self {
        Self::create_on(&required_server_url()).await
    }

    /// [`TestDatabase::create`] for tests without an async runtime (on a runtime of its own).
    pub fn create_blocking() -> Self {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime to create the test database")
            .block_on(Self::create())
    }

    /// Creates a database on the server `server_url` names.
    pub async fn create_on(server_url: &str) -> Self {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{PREFIX}{}_{}",
            now.as_secs(),
            &Uuid::new_v4().simple().to_string()[..12]
        );
        let admin = connect(server_url).await;
        drop_leftovers(&admin, now).await;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("cannot create the test database {name}: {e:?}"));
        Self {
            server: server_url.to_owned(),
            url: url_with_database(server_url, &name),
            name,
        }
    }

    /// The `postgres://` URL of this database.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A plain connection to this database, for tests that go around the store.
    pub async fn raw_connection(&self) -> tokio_postgres::Client {
        connect(&self.url).await
    }

    /// Drops the database now, with whatever connections are still open to it. Only for
    /// runs that nothing else shares the server with, such as the benchmark.
    pub async fn drop_now(self) {
        let admin = connect(&self.server).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

/// Drops the test databases created more than `LEFTOVER_AGE` before `now`; failures only
/// leave them for the next run.
async fn drop_leftovers(admin: &tokio_postgres::Client, now: Duration) {
    let Ok(rows) = admin
        .query(
            "SELECT datname FROM pg_database WHERE starts_with(datname, $1)",
            &[&PREFIX],
        )
        .await
    else {
        return;
    };
    for row in rows {
        let name: String = row.get(0);
        let created = name[PREFIX.len()..]
            .split('_')
            .next()
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|secs| secs + LEFTOVER_AGE.as_secs() < now.as_secs()) {
            let _ = admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await;
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let tls = latchkey_sql::tls::connector().expect("the TLS connector for the test server");
    let (client, connection) = tokio_postgres::connect(url, tls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test PostgreSQL server: {e:?}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_database_of_a_url_is_replaced() {
        assert_eq!(
            url_with_database("postgres://pg@127.0.0.1:5433/postgres", "t1"),
            "postgres://pg@127.0.0.1:5433/t1"
        );
        assert_eq!(
            url_with_database("postgresql://u:p@h/db?connect_timeout=5", "t2"),
            "postgresql://u:p@h/t2?connect_timeout=5"
        );
        assert_eq!(
            url_with_database("postgres://h:1", "t3"),
            "postgres://h:1/t3"
        );
    }
}
