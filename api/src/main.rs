//! `latchkey`: the server and (from issue 3 on) the admin CLI.
//!
//! UNFINISHED (issue 3): `serve` opens the event store and answers `/healthz`; the REST API,
//! projections, secrets and the CLI's admin commands are not built yet.

use actix_web::{get, web, App, HttpResponse, HttpServer, Responder};
use clap::{Parser, Subcommand};
use latchkey_store::EventStore;
use std::path::PathBuf;
use std::sync::Arc;

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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "LATCHKEY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: String,
    /// Directory for the embedded event store and other state.
    #[arg(long, env = "LATCHKEY_DATA", default_value = "./data")]
    data: PathBuf,
    /// Event store location; defaults to `embedded:<data>/events.db`.
    #[arg(long, env = "LATCHKEY_STORE")]
    store: Option<String>,
}

struct AppState {
    store: Arc<dyn EventStore>,
}

#[get("/healthz")]
async fn healthz(state: web::Data<AppState>) -> impl Responder {
    match state.store.read_all(None, 1).await {
        Ok(_) => HttpResponse::Ok().json(serde_json::json!({ "status": "ok" })),
        Err(e) => {
            tracing::error!(error = %e, "event store check failed");
            HttpResponse::ServiceUnavailable()
                .json(serde_json::json!({ "status": "unavailable", "detail": e.to_string() }))
        }
    }
}

async fn serve(args: ServeArgs) -> Result<(), String> {
    let url = match args.store {
        Some(url) => url,
        None => {
            std::fs::create_dir_all(&args.data).map_err(|e| {
                format!(
                    "--data {}: cannot create the directory: {e}",
                    args.data.display()
                )
            })?;
            format!("embedded:{}", args.data.join("events.db").display())
        }
    };
    let store = latchkey_store::open_url(&url)
        .await
        .map_err(|e| format!("--store {url}: {e}"))?;
    let state = web::Data::new(AppState { store });
    let server = HttpServer::new(move || App::new().app_data(state.clone()).service(healthz))
        .bind(&args.listen)
        .map_err(|e| format!("--listen {}: cannot listen there: {e}", args.listen))?;
    for addr in server.addrs() {
        // Tests and scripts read this line to learn the port when they pass port 0.
        println!("latchkey listening on http://{addr}");
    }
    tracing::info!(store = %url, "event store open");
    server
        .run()
        .await
        .map_err(|e| format!("server stopped: {e}"))
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
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("latchkey: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}
