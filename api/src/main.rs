//! `latchkey`: the server (`serve`), the read-model rebuild (`replay`), and the admin and
//! auditor CLI that talks to a running server (see `latchkey --help`).

use actix_web::{get, web, App, HttpResponse, HttpServer, Responder};
use clap::{Parser, Subcommand};
use latchkey_api::auth::{Role, TokenStore, ADMIN_TOKEN_VARIABLE};
use latchkey_api::config::{ConfigFile, Given, Settings};
use latchkey_api::http::{self, IdempotencyStore, Services};
use latchkey_api::metrics::Metrics;
use latchkey_api::replay::Target;
use latchkey_api::runner::ProcessRunner;
use latchkey_api::scheduler::Scheduler;
use latchkey_api::secrets::{Key, SecretStore, KEY_VARIABLE};
use latchkey_api::storage::Place;
use latchkey_projections::{ReadModels, ReadView};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Parser)]
#[command(
    name = "latchkey",
    version,
    about = "Just-in-time, audited admin access for MSPs"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server on the embedded event store (no other server needed).
    Serve(ServeArgs),
    /// Drop and rebuild every read model from the event log (stop the server first).
    Replay(ReplayArgs),
    #[command(flatten)]
    Client(latchkey_api::cli::ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "LATCHKEY_LISTEN")]
    listen: Option<String>,
    /// Directory for the embedded event store and other state [default: ./data].
    #[arg(long, env = "LATCHKEY_DATA")]
    data: Option<PathBuf>,
    /// Event store location; defaults to `embedded:<data>/events.db`.
    #[arg(long, env = "LATCHKEY_STORE")]
    store: Option<String>,
    /// The e-mail address the first MSP admin token acts as (shown in the audit trail)
    /// [default: admin@latchkey.local].
    #[arg(long, env = "LATCHKEY_ADMIN_EMAIL")]
    admin_email: Option<String>,
    /// How long an API token for a person lives when its issuer asks for no lifetime, e.g.
    /// 90d, 12h, 3600s [default: 90d].
    #[arg(long, env = "LATCHKEY_TOKEN_DEFAULT_EXPIRY", value_name = "DURATION")]
    token_default_expiry: Option<String>,
    /// The longest lifetime an issuer may ask for (`expires_in`) [default: 365d].
    #[arg(long, env = "LATCHKEY_TOKEN_MAX_EXPIRY", value_name = "DURATION")]
    token_max_expiry: Option<String>,
    /// A TOML file with any of: listen, data, store, admin_email, token_default_expiry,
    /// token_max_expiry (flags and environment win).
    #[arg(long, env = "LATCHKEY_CONFIG")]
    config: Option<PathBuf>,
}

impl ServeArgs {
    fn settings(self) -> Result<Settings, String> {
        let file = match &self.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        Settings::resolve(
            Given {
                listen: self.listen,
                data: self.data,
                store: self.store,
                admin_email: self.admin_email,
                token_default_expiry: self.token_default_expiry,
                token_max_expiry: self.token_max_expiry,
            },
            file,
        )
    }
}

#[derive(clap::Args)]
struct ReplayArgs {
    #[command(flatten)]
    serve: ServeArgs,
}

/// The secret store's key: from `LATCHKEY_SECRET_KEY` (base64 of 32 bytes), or else from
/// `<data>/secret.key`, created with mode 0600 on first start. Production setups should
/// pass the key from a secret manager so it never sits beside the data it protects.
fn secret_key(data: &Path) -> Result<Key, String> {
    if let Ok(text) = std::env::var(KEY_VARIABLE) {
        return Key::from_base64(text.trim()).map_err(|e| e.to_string());
    }
    let path = data.join("secret.key");
    match std::fs::read_to_string(&path) {
        Ok(text) => Key::from_base64(text.trim()).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let key = Key::generate();
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(|e| format!("{}: cannot create the key file: {e}", path.display()))?;
            file.write_all(key.to_base64().expose().as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| format!("{}: cannot write the key file: {e}", path.display()))?;
            tracing::warn!(path = %path.display(), "generated a new secret-store key; set {KEY_VARIABLE} to keep the key away from the data");
            Ok(key)
        }
        Err(e) => Err(format!("{}: cannot read the key file: {e}", path.display())),
    }
}

#[get("/healthz")]
async fn healthz(state: web::Data<Services>) -> impl Responder {
    match state.store.read_all(None, 1).await {
        Ok(_) => HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })),
        Err(e) => {
            tracing::error!(error = %e, "event store check failed");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "status": "unavailable", "detail": e.to_string() }))
        }
    }
}

/// Makes sure an MSP admin can log in: the token from `LATCHKEY_ADMIN_TOKEN` (for scripts),
/// or on first start a new one, returned so it can be shown once.
fn bootstrap_admin(tokens: &TokenStore, email: &str) -> Result<Option<String>, String> {
    let email =
        latchkey_domain::names::Email::parse(email).map_err(|e| format!("--admin-email: {e}"))?;
    if let Ok(token) = std::env::var(ADMIN_TOKEN_VARIABLE) {
        tokens
            .insert_known(token.trim(), Role::MspAdmin, email.as_str())
            .map_err(|e| e.to_string())?;
        return Ok(None);
    }
    if tokens.has_msp_admin().map_err(|e| e.to_string())? {
        return Ok(None);
    }
    tokens
        .issue(Role::MspAdmin, email.as_str())
        .map(Some)
        .map_err(|e| e.to_string())
}

async fn open_store(
    args: &Settings,
) -> Result<(String, std::sync::Arc<dyn latchkey_store::EventStore>), String> {
    std::fs::create_dir_all(&args.data).map_err(|e| {
        format!(
            "--data {}: cannot create the directory: {e}",
            args.data.display()
        )
    })?;
    let url = args.store_url();
    let store = latchkey_store::open_url(&url).await.map_err(|e| {
        let shown = latchkey_api::config::redacted_store_url(&url);
        format!("--store {shown}: {e}")
    })?;
    Ok((url, store))
}

async fn replay(args: ReplayArgs) -> Result<(), String> {
    let settings = args.serve.settings()?;
    let (url, store) = open_store(&settings).await?;
    let path = settings.data.join("read-models.db");
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "replaying {bar:40} {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .map_err(|e| e.to_string())?,
    );
    let (target, place) = match shared_database(&url) {
        Some(database) => (
            Target::Postgres(database),
            format!(
                "PostgreSQL schema {}",
                latchkey_projections::POSTGRES_SCHEMA
            ),
        ),
        None => (Target::File(&path), path.display().to_string()),
    };
    let applied = latchkey_api::replay::replay(&*store, target, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .map_err(|e| format!("replay into {place}: {e}"))?;
    bar.finish();
    println!("rebuilt the read models in {place} from {applied} events");
    Ok(())
}

/// The PostgreSQL URL when the event store is PostgreSQL: the read models and the token,
/// secret and idempotency tables then live in that database too, shared by every server.
fn shared_database(url: &str) -> Option<&str> {
    (url.starts_with("postgres://") || url.starts_with("postgresql://")).then_some(url)
}

/// The advisory lock whose holder runs the process managers and the scheduler.
const LEADER_LOCK: i64 = 0x6c6b_6c65_6164; // "lklead"

/// How often a server on a shared database reads the read models' checkpoint (for
/// `/metrics`; the agents' long polls follow the event log itself).
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a server that is not the leader tries to become it.
const LEADER_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

async fn serve(args: ServeArgs) -> Result<(), String> {
    let args = args.settings()?;
    let (url, store) = open_store(&args).await?;
    let shared = shared_database(&url).map(str::to_owned);
    let read_models_error = |e: latchkey_projections::ProjectionError| match &shared {
        Some(_) => format!("--store: read models in PostgreSQL: {e}"),
        None => format!("--data {}: read models: {e}", args.data.display()),
    };
    let (models, view) = match &shared {
        Some(url) => (
            ReadModels::open_postgres(url).map_err(read_models_error)?,
            ReadView::open_postgres(url).map_err(read_models_error)?,
        ),
        None => {
            let path = args.data.join("read-models.db");
            (
                ReadModels::open(&path).map_err(read_models_error)?,
                ReadView::open(&path).map_err(read_models_error)?,
            )
        }
    };
    let place = |file: &str| match &shared {
        Some(url) => Place::Postgres(url.clone()),
        None => Place::File(args.data.join(file)),
    };
    let key = secret_key(&args.data)?;
    // Opened now so a wrong key stops the server at start-up, not at the first rotation.
    let secrets = SecretStore::open(place("secrets.db"), &key).map_err(|e| e.to_string())?;
    let models = Arc::new(Mutex::new(models));
    let snapshots = latchkey_api::snapshots::SnapshotStore::open(place("snapshots.db"))
        .map_err(|e| format!("snapshots: {e}"))?;
    let cache =
        Arc::new(latchkey_api::commands::StateCache::new(100_000).with_snapshots(snapshots));
    let runner = ProcessRunner::new(store.clone(), models.clone()).with_cache(cache.clone());
    let tokens = TokenStore::open(place("tokens.db"))
        .map_err(|e| e.to_string())?
        .with_lifetimes(args.token_lifetimes);
    let idempotency = IdempotencyStore::open(place("idempotency.db"))
        .map_err(|e| format!("idempotency keys: {e}"))?;
    let new_admin_token = bootstrap_admin(&tokens, &args.admin_email)?;
    let view = Arc::new(view);
    // Alone, the runner tells when the read models move; sharing them, every server reads
    // their checkpoint, whoever the leader is.
    let progress = match &shared {
        Some(_) => follow_checkpoint(view.clone()),
        None => runner.progress(),
    };
    let from = view.with(|q| q.checkpoint()).map_err(read_models_error)?;
    let wakeups = Arc::new(latchkey_api::wakeups::StreamWakeups::new());
    actix_web::rt::spawn(latchkey_api::runner::follow_log(
        store.clone(),
        from,
        wakeups.clone(),
    ));
    let state = web::Data::new(Services {
        store: store.clone(),
        tokens,
        view,
        secrets,
        idempotency,
        progress,
        wakeups,
        cache,
    });
    actix_web::rt::spawn(record_token_use(state.clone()));
    let metrics = web::Data::new(Metrics::new());
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(metrics.clone())
            .wrap(actix_web::middleware::from_fn(latchkey_api::metrics::track))
            .service(healthz)
            .route("/metrics", web::get().to(latchkey_api::metrics::scrape))
            .configure(http::configure)
    })
    .bind(&args.listen)
    .map_err(|e| format!("--listen {}: cannot listen there: {e}", args.listen))?;
    for addr in server.addrs() {
        // Tests and scripts read this line to learn the port when they pass port 0.
        println!("latchkey listening on http://{addr}");
    }
    if let Some(token) = new_admin_token {
        // Printed once, to the terminal only: the server keeps just its hash.
        println!("MSP admin API token (shown once; keep it safe): {token}");
    }
    tracing::info!(store = %latchkey_api::config::redacted_store_url(&url), "event store open");
    let server = server.run();
    let handle = server.handle();
    let stopped_by: Arc<Mutex<Option<String>>> = Arc::default();
    let report = stopped_by.clone();
    let scheduler = Scheduler::new(store, models);
    actix_web::rt::spawn(async move {
        // Without its process managers the server would accept check-outs it never
        // provisions, so it stops rather than limp on.
        let result = match shared {
            None => run_process_managers(&runner, &scheduler).await,
            Some(url) => lead(&url, &runner, &scheduler).await,
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "the process managers stopped");
            *report.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            handle.stop(true).await;
        }
    });
    server.await.map_err(|e| format!("server stopped: {e}"))?;
    let stopped = stopped_by.lock().unwrap_or_else(|p| p.into_inner()).take();
    match stopped {
        Some(e) => Err(format!("the process managers stopped: {e}")),
        None => Ok(()),
    }
}

/// Writes when API tokens were last used, once a minute, in one transaction: checking a
/// token only notes the use in memory, so the hot path never waits for a write.
async fn record_token_use(services: web::Data<Services>) {
    let mut every = tokio::time::interval(latchkey_api::auth::LAST_USED_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let services = services.clone();
        match web::block(move || services.tokens.flush_last_used()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot record when API tokens were used"),
            Err(e) => tracing::warn!(error = %e, "cannot record when API tokens were used"),
        }
    }
}

async fn run_process_managers(runner: &ProcessRunner, scheduler: &Scheduler) -> Result<(), String> {
    tokio::select! {
        result = runner.run() => result.map_err(|e| e.to_string()),
        result = scheduler.run(std::time::Duration::from_secs(1)) => result.map_err(|e| e.to_string()),
    }
}

/// Waits to become the leader of the servers sharing the database, then runs the process
/// managers for as long as the leadership lasts. Losing it (the lock's connection broke) stops
/// the server: another one may be leading by then, and a restart rejoins as a follower.
async fn lead(url: &str, runner: &ProcessRunner, scheduler: &Scheduler) -> Result<(), String> {
    let mut leadership =
        latchkey_store::postgres::leader::Leadership::acquire(url, LEADER_LOCK, LEADER_RETRY)
            .await
            .map_err(|e| e.to_string())?;
    tracing::info!("this server leads: it runs the process managers and the scheduler");
    tokio::select! {
        result = run_process_managers(runner, scheduler) => result,
        () = leadership.lost() => Err("lost the connection holding the leadership".into()),
    }
}

/// Follows the shared read models' checkpoint from a thread of its own (the queries block).
fn follow_checkpoint(
    view: Arc<ReadView>,
) -> tokio::sync::watch::Receiver<Option<latchkey_store::Position>> {
    let (sender, receiver) = tokio::sync::watch::channel(None);
    std::thread::Builder::new()
        .name("latchkey-follow".into())
        .spawn(move || loop {
            match view.with(|q| q.checkpoint()) {
                Ok(position) => {
                    sender.send_if_modified(|seen| {
                        let moved = *seen != position;
                        *seen = position;
                        moved
                    });
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the read models' checkpoint"),
            }
            if sender.is_closed() {
                return;
            }
            std::thread::sleep(FOLLOW_INTERVAL);
        })
        .expect("cannot start the checkpoint follower thread");
    receiver
}

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => serve(args).await,
        Command::Replay(args) => replay(args).await,
        Command::Client(command) => latchkey_api::cli::run(command).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("latchkey: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
