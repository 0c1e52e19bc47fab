//! `latchkey`: the server (`serve`), the read-model rebuild (`replay`), and the admin and
//! auditor CLI that talks to a running server (see `latchkey --help`).

use actix_web::{get, web, App, HttpResponse, HttpServer, Responder};
use clap::{Parser, Subcommand};
use latchkey_api::config::{Layer, Settings, Transport};
use latchkey_api::http::{self, Services};
use latchkey_api::metrics::Metrics;
use latchkey_api::tls::ReloadingCertificate;
use latchkey_app::health::{Health, ProcessManagers};
use latchkey_app::runner::ProcessRunner;
use latchkey_app::scheduler::Scheduler;
use latchkey_projections::{ReadModels, ReadView};
use latchkey_server_stores::idempotency::IdempotencyStore;
use latchkey_server_stores::secrets::{Key, SecretStore, KEY_VARIABLE};
use latchkey_server_stores::tokens::{Role, TokenStore, ADMIN_TOKEN_VARIABLE};
use latchkey_store::Backend;
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
    Serve(ServeCommand),
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
    /// A TOML file with any of: listen, data, store, admin_email, tls_cert, tls_key,
    /// insecure_http, token_default_expiry, token_max_expiry, auth_failures_per_address,
    /// auth_failures_per_token, auth_failure_window_seconds, trusted_proxies (flags and
    /// environment win).
    #[arg(long, env = "LATCHKEY_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args, Default)]
struct LimitArgs {
    /// Failed authentications (bad, unknown or missing tokens) one client address may make
    /// per window before it gets 429 [default: 10].
    #[arg(long, env = "LATCHKEY_AUTH_FAILURES_PER_ADDRESS", value_name = "N")]
    auth_failures_per_address: Option<u32>,
    /// Failed authentications with one token id (the `lk_<id>_` part), from any address, per
    /// window before it gets 429 [default: 5].
    #[arg(long, env = "LATCHKEY_AUTH_FAILURES_PER_TOKEN", value_name = "N")]
    auth_failures_per_token: Option<u32>,
    /// The window of those limits, in seconds [default: 60].
    #[arg(
        long,
        env = "LATCHKEY_AUTH_FAILURE_WINDOW_SECONDS",
        value_name = "SECONDS"
    )]
    auth_failure_window_seconds: Option<u64>,
    /// A reverse proxy (address or network, e.g. 10.0.0.0/8) whose X-Forwarded-For names the
    /// client; repeat it or separate with commas. Without it the peer address is the client.
    #[arg(
        long = "trusted-proxy",
        env = "LATCHKEY_TRUSTED_PROXIES",
        value_name = "ADDRESS[/PREFIX]",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<String>,
}

#[derive(clap::Args)]
struct TransportArgs {
    /// Serve HTTPS with this certificate chain (PEM: the server's certificate first, then its
    /// intermediates); read again when it changes on disk, or at SIGHUP.
    #[arg(long, env = "LATCHKEY_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "LATCHKEY_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on an address that is not loopback (behind a proxy that terminates
    /// TLS). Without a certificate, plain HTTP is otherwise served on loopback only.
    #[arg(
        long,
        env = "LATCHKEY_INSECURE_HTTP",
        value_parser = clap::builder::FalseyValueParser::new()
    )]
    insecure_http: bool,
}

#[derive(clap::Args)]
struct ServeCommand {
    #[command(flatten)]
    common: ServeArgs,
    #[command(flatten)]
    transport: TransportArgs,
    #[command(flatten)]
    limits: LimitArgs,
}

impl ServeArgs {
    fn settings(
        self,
        transport: Option<TransportArgs>,
        limits: Option<LimitArgs>,
    ) -> Result<Settings, String> {
        let limits = limits.unwrap_or_default();
        let file = match &self.config {
            Some(path) => Layer::load(path)?,
            None => Layer::default(),
        };
        let transport = transport.unwrap_or(TransportArgs {
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
        });
        Settings::resolve(
            Layer {
                listen: self.listen,
                data: self.data,
                store: self.store,
                admin_email: self.admin_email,
                tls_cert: transport.tls_cert,
                tls_key: transport.tls_key,
                // A flag that is off says nothing: the file may still ask for it.
                insecure_http: transport.insecure_http.then_some(true),
                token_default_expiry: self.token_default_expiry,
                token_max_expiry: self.token_max_expiry,
                auth_failures_per_address: limits.auth_failures_per_address,
                auth_failures_per_token: limits.auth_failures_per_token,
                auth_failure_window_seconds: limits.auth_failure_window_seconds,
                trusted_proxies: (!limits.trusted_proxies.is_empty())
                    .then_some(limits.trusted_proxies),
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
        // Reads and writes are served; the process managers may be failing (degraded:
        // check-outs are recorded but not provisioned until they run again).
        // A full disk: reads are served, writes refused with 507 until space is freed.
        Ok(_) => {
            let process_managers = state.health.process_managers();
            let full_since = state.health.storage_full_since();
            let degraded =
                matches!(process_managers, ProcessManagers::Failing { .. }) || full_since.is_some();
            let mut body = serde_json::to_value(&process_managers).unwrap_or_default();
            body["status"] = if degraded { "degraded" } else { "ok" }.into();
            body["storage"] = if full_since.is_some() { "full" } else { "ok" }.into();
            if let Some(since) = full_since {
                body["storage_full_since"] = since.to_rfc3339().into();
            }
            HttpResponse::Ok().json(body)
        }
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

/// Prepares the data directory and opens the backend `--store` names (see [`Backend`]).
async fn open_backend(args: &Settings) -> Result<(String, Backend), String> {
    latchkey_api::datadir::prepare(&args.data)?;
    let url = args.store_url();
    let backend = Backend::open(&url, &args.data).await.map_err(|e| {
        let shown = latchkey_api::config::redacted_store_url(&url);
        format!("--store {shown}: {e}")
    })?;
    Ok((url, backend))
}

async fn replay(args: ReplayArgs) -> Result<(), String> {
    let settings = args.serve.settings(None, None)?;
    let (_, backend) = open_backend(&settings).await?;
    let place = backend.place("read-models.db");
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "replaying {bar:40} {pos}/{len} events ({per_sec}, {eta} left)",
        )
        .map_err(|e| e.to_string())?,
    );
    let shown = match backend.is_shared() {
        true => format!(
            "the shared database's schema {}",
            latchkey_projections::POSTGRES_SCHEMA
        ),
        false => place.path().display().to_string(),
    };
    let applied = latchkey_app::replay::replay(&**backend.events(), place, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .map_err(|e| format!("replay into {shown}: {e}"))?;
    bar.finish();
    println!("rebuilt the read models in {shown} from {applied} events");
    Ok(())
}

/// The advisory lock whose holder runs the process managers and the scheduler.
const LEADER_LOCK: i64 = 0x6c6b_6c65_6164; // "lklead"

/// How often a server on a shared database reads the read models' checkpoint (for
/// `/metrics`; the agents' long polls follow the event log itself).
const FOLLOW_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a server that is not the leader tries to become it.
const LEADER_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// How the server will listen: the addresses `--listen` names, and HTTPS (with its
/// certificate, read now so a bad one stops the start) or plain HTTP.
struct Listening {
    addrs: Vec<std::net::SocketAddr>,
    certificate: Option<Arc<ReloadingCertificate>>,
    /// Plain HTTP on an address that is not loopback (`--insecure-http`).
    exposed: bool,
}

fn listening(args: &Settings) -> Result<Listening, String> {
    use std::net::ToSocketAddrs;
    let addrs: Vec<_> = args
        .listen
        .to_socket_addrs()
        .map_err(|e| format!("--listen {}: cannot listen there: {e}", args.listen))?
        .collect();
    Ok(match args.transport(&addrs)? {
        Transport::Https(files) => Listening {
            addrs,
            certificate: Some(ReloadingCertificate::load(files)?),
            exposed: false,
        },
        Transport::Http { exposed } => Listening {
            addrs,
            certificate: None,
            exposed,
        },
    })
}

async fn serve(args: ServeCommand) -> Result<(), String> {
    let args = args
        .common
        .settings(Some(args.transport), Some(args.limits))?;
    // First, so a server that must not listen as asked touches no data.
    let listening = listening(&args)?;
    // Set up before the server runs, so a SIGHUP (reload the certificate) never kills it.
    let hangups = match listening.certificate {
        Some(_) => Some(
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?,
        ),
        None => None,
    };
    let (url, backend) = open_backend(&args).await?;
    let store = backend.events().clone();
    let shared = backend.is_shared();
    let read_models_error = |e: latchkey_projections::ProjectionError| match shared {
        true => format!("--store: read models in the shared database: {e}"),
        false => format!("--data {}: read models: {e}", args.data.display()),
    };
    let read_models = backend.place("read-models.db");
    let models = ReadModels::open(read_models.clone()).map_err(read_models_error)?;
    let view = ReadView::open(read_models).map_err(read_models_error)?;
    let place = |file: &str| backend.place(file);
    let key = secret_key(&args.data)?;
    // Opened now so a wrong key stops the server at start-up, not at the first rotation.
    let secrets = SecretStore::open(place("secrets.db"), &key).map_err(|e| e.to_string())?;
    let models = Arc::new(Mutex::new(models));
    let snapshots = latchkey_server_stores::snapshots::SnapshotStore::open(place("snapshots.db"))
        .map_err(|e| format!("snapshots: {e}"))?;
    let cache =
        Arc::new(latchkey_app::commands::StateCache::new(100_000).with_snapshots(snapshots));
    let runner = ProcessRunner::new(store.clone(), models.clone()).with_cache(cache.clone());
    let tokens = Arc::new(
        TokenStore::open(place("tokens.db"))
            .map_err(|e| e.to_string())?
            .with_lifetimes(args.token_lifetimes),
    );
    let runner = runner.with_tokens(tokens.clone());
    let idempotency = IdempotencyStore::open(place("idempotency.db"))
        .map_err(|e| format!("idempotency keys: {e}"))?;
    let new_admin_token = bootstrap_admin(&tokens, &args.admin_email)?;
    let view = Arc::new(view);
    // Alone, the runner tells when the read models move; sharing them, every server reads
    // their checkpoint, whoever the leader is.
    let progress = match shared {
        true => follow_checkpoint(view.clone()),
        false => runner.progress(),
    };
    let from = view.with(|q| q.checkpoint()).map_err(read_models_error)?;
    let wakeups = Arc::new(latchkey_app::wakeups::StreamWakeups::new());
    let health = Arc::new(Health::default());
    actix_web::rt::spawn(latchkey_app::runner::follow_log(
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
        health: health.clone(),
        limiter: latchkey_api::ratelimit::AuthLimiter::new(args.limits.clone()),
    });
    actix_web::rt::spawn(record_token_use(state.clone()));
    let metrics = web::Data::new(Metrics::new());
    metrics.register_auth_limiter(&state.limiter);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(state.clone())
            .app_data(metrics.clone())
            .wrap(actix_web::middleware::from_fn(latchkey_api::metrics::track))
            .service(healthz)
            .route("/metrics", web::get().to(latchkey_api::metrics::scrape))
            .configure(http::configure)
    })
    // Streamed answers (the event feed, a long poll's body that follows its head, exports)
    // go out as they are written: with Nagle's algorithm a small write that follows another
    // one unacknowledged waits for the client's delayed ACK (40 ms on Linux).
    .tcp_nodelay(true);
    let bound = match &listening.certificate {
        Some(certificate) => {
            server.bind_rustls_0_23(&listening.addrs[..], certificate.server_config()?)
        }
        None => server.bind(&listening.addrs[..]),
    };
    let server =
        bound.map_err(|e| format!("--listen {}: cannot listen there: {e}", args.listen))?;
    let scheme = match listening.certificate {
        Some(_) => "https",
        None => "http",
    };
    // Said before the address is printed, so whoever reads that line finds it in the log.
    match (&listening.certificate, hangups) {
        (Some(certificate), Some(hangups)) => {
            tracing::info!(
                sha256 = %certificate.fingerprint(),
                "serving HTTPS; the certificate files are read again when they change, or at SIGHUP"
            );
            actix_web::rt::spawn(certificate.clone().watch(hangups));
        }
        _ if listening.exposed => tracing::warn!(
            listen = %args.listen,
            "serving plain HTTP on an address that is not loopback, as --insecure-http asks: \
             API tokens, agent credentials and passwords cross the network in clear unless a \
             proxy in front of this server terminates TLS"
        ),
        _ => {}
    }
    for addr in server.addrs() {
        // Tests and scripts read this line to learn the port when they pass port 0.
        println!("latchkey listening on {scheme}://{addr}");
    }
    if let Some(token) = new_admin_token {
        // Printed once, to the terminal only: the server keeps just its hash.
        println!("MSP admin API token (shown once; keep it safe): {token}");
    }
    tracing::info!(store = %latchkey_api::config::redacted_store_url(&url), "event store open");
    let server = server.run();
    let scheduler = Scheduler::new(store, models);
    actix_web::rt::spawn(supervise(backend, runner, scheduler, health));
    server.await.map_err(|e| format!("server stopped: {e}"))
}

/// The first pause before the process managers are restarted after a failure; it doubles
/// up to [`MAX_RESTART_PAUSE`] while they keep failing.
const FIRST_RESTART_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);
const MAX_RESTART_PAUSE: std::time::Duration = std::time::Duration::from_secs(30);
/// How long a run must last before it counts as recovered (the pause starts again small).
const STEADY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs the process managers and the scheduler for as long as the server runs: here alone,
/// or (several servers) while this server leads. A failure (a database restart, a full disk,
/// a lost leadership) is logged, shown in `/healthz` and `/metrics`, and followed by a
/// restart with back-off; a leader that lost its lock waits to lead again as a follower.
/// HTTP keeps serving meanwhile: check-outs are recorded and provisioned once they run.
async fn supervise(
    backend: Backend,
    runner: ProcessRunner,
    scheduler: Scheduler,
    health: Arc<Health>,
) {
    let mut pause = FIRST_RESTART_PAUSE;
    loop {
        let run = lead(&backend, &runner, &scheduler, &health);
        tokio::pin!(run);
        let result = tokio::select! {
            result = &mut run => result,
            () = tokio::time::sleep(STEADY) => {
                pause = FIRST_RESTART_PAUSE;
                if health.is_degraded() {
                    tracing::info!("the process managers have recovered");
                    health.set(match backend.is_shared() {
                        false => ProcessManagers::Running,
                        true => ProcessManagers::Waiting,
                    });
                }
                run.await
            }
        };
        let reason = match result {
            Ok(()) => "stopped".to_owned(),
            Err(e) => e,
        };
        let retry_at = chrono::Utc::now()
            + chrono::Duration::from_std(pause).unwrap_or(chrono::Duration::seconds(30));
        tracing::error!(error = %reason, retry_in = ?pause, "the process managers failed; restarting them");
        health.failed(reason, retry_at);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_RESTART_PAUSE);
    }
}

/// Writes when API tokens were last used, once a minute, in one transaction: checking a
/// token only notes the use in memory, so the hot path never waits for a write.
async fn record_token_use(services: web::Data<Services>) {
    let mut every = tokio::time::interval(latchkey_server_stores::tokens::LAST_USED_EVERY);
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

/// Waits to become the leader of the servers sharing the database (a server alone leads at
/// once), then runs the process managers for as long as the leadership lasts. Losing it (the
/// lock's connection broke) ends the run: the supervisor steps down and waits to lead again,
/// as a follower meanwhile.
async fn lead(
    backend: &Backend,
    runner: &ProcessRunner,
    scheduler: &Scheduler,
    health: &Health,
) -> Result<(), String> {
    if !health.is_degraded() && backend.is_shared() {
        health.set(ProcessManagers::Waiting);
    }
    let mut leadership = backend
        .lead(LEADER_LOCK, LEADER_RETRY)
        .await
        .map_err(|e| e.to_string())?;
    if backend.is_shared() {
        tracing::info!("this server leads: it runs the process managers and the scheduler");
    }
    health.set(ProcessManagers::Running);
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
        // Colour only for a person at a terminal: a log file or journald gets plain text.
        .with_ansi(
            std::io::IsTerminal::is_terminal(&std::io::stderr())
                && std::env::var_os("NO_COLOR").is_none(),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => {
            latchkey_api::datadir::restrict_umask();
            serve(args).await
        }
        Command::Replay(args) => {
            latchkey_api::datadir::restrict_umask();
            replay(args).await
        }
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
