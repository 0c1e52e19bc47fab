//! The layering rules of DESIGN.md §6, checked on the real dependency graph: the domain has
//! no async runtime, no database, no HTTP and no randomness or clock source, and
//! dependencies point one way (api/agent → projections → store → domain; inside `api/`, the
//! HTTP server `latchkey-api` → the application layer `latchkey-app` → the server's own
//! stores `latchkey-server-stores`, the last two without HTTP; the SQL layer `latchkey-sql`
//! sits under store and knows no other Latchkey crate; the wire types `latchkey-wire` know
//! the domain and no server crate, and the CLI `latchkey-cli` the wire types and no server
//! crate), and the test code the store ships for other crates' tests is not in what the
//! server and the agent are built from.

use std::process::Command;

/// `cargo tree` of one package's normal dependencies, one crate name per line.
fn dependencies(package: &str) -> Vec<String> {
    tree(package, "{p}")
        .iter()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// `cargo tree` of one package's normal dependencies, a line per crate in `format`.
fn tree(package: &str, format: &str) -> Vec<String> {
    let output = Command::new(env!("CARGO"))
        .args([
            "tree",
            "--offline",
            "-e",
            "normal",
            "--prefix",
            "none",
            "--format",
            format,
            "-p",
            package,
        ])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()
        .expect("cargo tree runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn the_domain_has_no_io_runtime_database_http_clock_or_randomness() {
    let deps = dependencies("latchkey-domain");
    assert!(
        deps.contains(&"serde".to_owned()),
        "cargo tree output looks wrong: {deps:?}"
    );
    let forbidden = [
        "tokio",
        "async-std",
        "mio",
        "rusqlite",
        "libsqlite3-sys",
        "sqlx",
        "postgres",
        "tokio-postgres",
        "kurrentdb",
        "eventstore",
        "hyper",
        "reqwest",
        "actix-web",
        "http",
        "rand",
        "getrandom",
        "iana-time-zone",
    ];
    let found: Vec<&String> = deps
        .iter()
        .filter(|d| forbidden.contains(&d.as_str()))
        .collect();
    assert!(found.is_empty(), "the domain depends on {found:?}");
}

#[test]
fn dependencies_point_one_way() {
    // The server's crates, top to bottom: nothing below one of them depends on it.
    let server = ["latchkey-api", "latchkey-app", "latchkey-server-stores"];
    let store = dependencies("latchkey-store");
    assert!(!store
        .iter()
        .any(|d| d == "latchkey-projections" || server.contains(&d.as_str())));
    let domain = dependencies("latchkey-domain");
    assert!(!domain
        .iter()
        .any(|d| d.starts_with("latchkey-") && d != "latchkey-domain"));
    let projections = dependencies("latchkey-projections");
    assert!(!projections
        .iter()
        .any(|d| server.contains(&d.as_str()) || d == "latchkey-agent"));
    let sql = dependencies("latchkey-sql");
    assert!(
        sql.iter()
            .all(|d| !d.starts_with("latchkey-") || d == "latchkey-sql"),
        "latchkey-sql depends on {sql:?}"
    );
}

/// The application layer (`latchkey-app`: the command path, the process managers, the
/// scheduler, replay, technicians) knows no HTTP, server or client: the HTTP server calls it,
/// never the other way round. It sits on the server's own stores, the read models and the
/// event store.
#[test]
fn the_application_layer_knows_no_http() {
    let app = dependencies("latchkey-app");
    assert!(
        app.contains(&"latchkey-server-stores".to_owned()),
        "cargo tree output looks wrong: {app:?}"
    );
    let forbidden = [
        "latchkey-api",
        "latchkey-cli",
        "latchkey-agent",
        "actix-web",
        "actix-http",
        "actix-rt",
        "reqwest",
        "hyper",
    ];
    let found: Vec<&String> = app
        .iter()
        .filter(|d| forbidden.contains(&d.as_str()))
        .collect();
    assert!(found.is_empty(), "latchkey-app depends on {found:?}");
}

/// The server's own stores (`latchkey-server-stores`: tokens, secrets, snapshots,
/// idempotency keys) sit on the SQL layer and the domain: no HTTP framework or client, and
/// nothing above them (the application layer, the HTTP server and the clients).
#[test]
fn the_servers_stores_know_no_http_and_nothing_above_them() {
    let stores = dependencies("latchkey-server-stores");
    assert!(
        stores.contains(&"latchkey-sql".to_owned()),
        "cargo tree output looks wrong: {stores:?}"
    );
    let forbidden = [
        "latchkey-api",
        "latchkey-app",
        "latchkey-cli",
        "latchkey-agent",
        "actix-web",
        "actix-http",
        "reqwest",
        "hyper",
    ];
    let found: Vec<&String> = stores
        .iter()
        .filter(|d| forbidden.contains(&d.as_str()))
        .collect();
    assert!(
        found.is_empty(),
        "latchkey-server-stores depends on {found:?}"
    );
}

/// The wire types (`latchkey-wire`) are what the server, the CLI and the agent share: they
/// know the domain, and no server crate, HTTP framework, database or event store.
#[test]
fn the_wire_types_know_no_server() {
    let wire = dependencies("latchkey-wire");
    assert!(
        wire.contains(&"latchkey-domain".to_owned()),
        "cargo tree output looks wrong: {wire:?}"
    );
    let forbidden = [
        "latchkey-api",
        "latchkey-agent",
        "latchkey-projections",
        "latchkey-store",
        "latchkey-sql",
        "actix-web",
        "actix-http",
        "reqwest",
        "hyper",
        "tokio",
        "rusqlite",
        "tokio-postgres",
    ];
    let found: Vec<&String> = wire
        .iter()
        .filter(|d| forbidden.contains(&d.as_str()))
        .collect();
    assert!(found.is_empty(), "latchkey-wire depends on {found:?}");
}

/// The CLI (`latchkey-cli`) is a client of the REST API: it knows the wire types and the
/// domain, not the server that answers them.
#[test]
fn the_cli_knows_no_server() {
    let cli = dependencies("latchkey-cli");
    assert!(
        cli.contains(&"latchkey-wire".to_owned()),
        "cargo tree output looks wrong: {cli:?}"
    );
    let forbidden = [
        "latchkey-api",
        "latchkey-agent",
        "latchkey-projections",
        "latchkey-store",
        "latchkey-sql",
        "actix-web",
        "actix-http",
        "rusqlite",
        "tokio-postgres",
    ];
    let found: Vec<&String> = cli
        .iter()
        .filter(|d| forbidden.contains(&d.as_str()))
        .collect();
    assert!(found.is_empty(), "latchkey-cli depends on {found:?}");
}

/// The agent reads and sends the wire types too, without the server that answers them.
#[test]
fn the_agent_knows_no_server() {
    let agent = dependencies("latchkey-agent");
    assert!(
        agent.contains(&"latchkey-wire".to_owned()),
        "cargo tree output looks wrong: {agent:?}"
    );
    let server = [
        "latchkey-api",
        "latchkey-cli",
        "latchkey-projections",
        "actix-web",
    ];
    let found: Vec<&String> = agent
        .iter()
        .filter(|d| server.contains(&d.as_str()))
        .collect();
    assert!(found.is_empty(), "latchkey-agent depends on {found:?}");
}

#[test]
fn the_binaries_are_built_without_the_stores_test_code() {
    for package in ["latchkey-api", "latchkey-agent"] {
        let lines = tree(package, "{p} [{f}]");
        let store: Vec<&String> = lines
            .iter()
            .filter(|l| l.starts_with("latchkey-store "))
            .collect();
        assert!(
            !store.is_empty() || package == "latchkey-agent",
            "{package}: no latchkey-store in {lines:?}"
        );
        assert!(
            store.iter().all(|l| !l.contains("testing")),
            "{package} builds latchkey-store with its test code: {store:?}"
        );
    }
}

/// The server's crates, as folders of `api/`: the HTTP server and start-up, the application
/// layer, and the server's own stores.
const SERVER_SOURCES: [&str; 3] = ["src", "app/src", "stores/src"];

/// The backend is chosen in one place, `latchkey_store::Backend`: the server above it (the
/// application layer, its own stores, HTTP, start-up) asks it for places and leadership and
/// names no backend, database driver or connection type itself. Test modules may.
#[test]
fn nothing_above_the_store_chooses_a_backend() {
    let forbidden = [
        "postgres::",
        "Place::Postgres",
        "Place::File",
        "open_postgres",
        "PgConnection",
        "rusqlite",
        "tokio_postgres",
        "open_url(",
        "EmbeddedStore",
    ];
    let api = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../api"));
    let mut files: Vec<_> = SERVER_SOURCES.iter().map(|dir| api.join(dir)).collect();
    let mut found = Vec::new();
    let mut checked = 0;
    while let Some(path) = files.pop() {
        if path.is_dir() {
            files.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
            continue;
        }
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        checked += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        // Production code only: a file's unit tests come after its `#[cfg(test)]`.
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (number, line) in code.lines().enumerate() {
            let line = line.split("//").next().unwrap_or_default();
            for word in forbidden {
                if line.contains(word) {
                    found.push(format!("{}:{}: {word}", path.display(), number + 1));
                }
            }
        }
    }
    assert!(checked > 20, "the server has only {checked} files?");
    assert!(
        found.is_empty(),
        "the server names a backend:\n{}",
        found.join("\n")
    );
}
