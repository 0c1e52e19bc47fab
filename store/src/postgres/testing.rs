//! Throw-away databases for the PostgreSQL tests and benchmark: each [`TestDatabase`] is a
//! fresh, empty database on the server `LATCHKEY_TEST_POSTGRES_URL` names, dropped again
//! with the value. This is test code: it panics on failure and must never be called from
//! production paths.

use tokio_postgres::NoTls;
use uuid::Uuid;

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

/// A fresh database, dropped (with whatever connections are still open to it) when this
/// value is.
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

    /// Creates a database on the server `server_url` names.
    pub async fn create_on(server_url: &str) -> Self {
        let name = format!("latchkey_test_{}", Uuid::new_v4().simple());
        let admin = connect(server_url).await;
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
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let server = self.server.clone();
        let drop_sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run inside a runtime, which cannot be blocked on; a thread of its own can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&server, NoTls).await.ok()?;
                tokio::spawn(connection);
                client.batch_execute(&drop_sql).await.ok()
            })
        });
        // A database left behind on a throw-away server is harmless; don't fail for it.
        let _ = dropped.join();
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
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
