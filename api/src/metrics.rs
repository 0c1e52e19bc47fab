//! Prometheus metrics at `/metrics` (text exposition format), through the official
//! `prometheus-client` crate: HTTP requests by method, route pattern and status, their
//! latency, and at scrape time the read models' position and the health figures an operator
//! alerts on (open sessions, standing privilege — should be 0 — and stuck revocations).

use crate::http::Services;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{web, HttpResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    /// The route pattern (`/v1/sessions/{session_id}`), never the raw path: ids would make
    /// the label set unbounded.
    pub route: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    read_model_position: Gauge,
    open_sessions: Gauge,
    standing_privilege: Gauge,
    stuck_requests: Gauge,
    polls_waiting: Gauge,
    poll_wakeups: Gauge,
    process_managers_failing: Gauge,
    process_manager_restarts: Gauge,
    storage_full: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("latchkey");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0005, 2.0, 14))
        });
        let read_model_position = Gauge::default();
        let open_sessions = Gauge::default();
        let standing_privilege = Gauge::default();
        let stuck_requests = Gauge::default();
        let polls_waiting = Gauge::default();
        let poll_wakeups = Gauge::default();
        let process_managers_failing = Gauge::default();
        let process_manager_restarts = Gauge::default();
        let storage_full = Gauge::default();
        registry.register(
            "storage_full",
            "1 while writes find the storage full and are refused with 507 (see /healthz)",
            storage_full.clone(),
        );
        registry.register(
            "process_managers_failing",
            "1 while the process managers are failing and being restarted (see /healthz)",
            process_managers_failing.clone(),
        );
        registry.register(
            "process_manager_restarts",
            "Times the process managers failed and were restarted since start-up",
            process_manager_restarts.clone(),
        );
        registry.register("http_requests", "HTTP requests answered", requests.clone());
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "read_model_position",
            "Commit position of the last event applied to the read models",
            read_model_position.clone(),
        );
        registry.register(
            "open_sessions",
            "Sessions provisioning or active",
            open_sessions.clone(),
        );
        registry.register(
            "standing_privilege",
            "Admin-group memberships no open session explains (should be 0)",
            standing_privilege.clone(),
        );
        registry.register(
            "stuck_requests",
            "Failed revocations and clean-ups waiting for a retry",
            stuck_requests.clone(),
        );
        registry.register(
            "agent_polls_waiting",
            "Agents' long polls waiting for an event on their computer",
            polls_waiting.clone(),
        );
        // A gauge set from the wake-up counter at scrape time (it only grows).
        registry.register(
            "agent_poll_wakeups",
            "Wake-ups delivered to waiting long polls since start",
            poll_wakeups.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            latency,
            read_model_position,
            open_sessions,
            standing_privilege,
            stuck_requests,
            polls_waiting,
            poll_wakeups,
            process_managers_failing,
            process_manager_restarts,
            storage_full,
        }
    }

    /// Adds the failed-authentication limiter's figures: attempts it refused (429), by the
    /// limit that refused them.
    pub fn register_auth_limiter(&self, limiter: &crate::ratelimit::AuthLimiter) {
        let mut registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        registry.register(
            "auth_attempts_refused",
            "Authentication attempts refused with 429 because their client address or token \
             id failed too often (label limit: address or token_id)",
            limiter.refused(),
        );
    }

    fn observe(&self, method: &str, route: String, status: u16, started: Instant) {
        self.latency
            .get_or_create(&RouteLabels {
                route: route.clone(),
            })
            .observe(started.elapsed().as_secs_f64());
        self.requests
            .get_or_create(&RequestLabels {
                method: method.to_owned(),
                route,
                status,
            })
            .inc();
    }
}

/// Middleware body: times the request and counts its answer.
pub async fn track(
    req: ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody + 'static>,
) -> Result<ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let metrics = req.app_data::<web::Data<Metrics>>().cloned();
    let method = req.method().to_string();
    let route = req
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    let services = req.app_data::<web::Data<Services>>().cloned();
    let response = next.call(req).await?;
    let status = response.status();
    if let Some(metrics) = metrics {
        metrics.observe(&method, route, status.as_u16(), started);
    }
    // A full disk shows in /healthz from the first write it refused until one succeeds.
    if let Some(services) = services {
        if status == actix_web::http::StatusCode::INSUFFICIENT_STORAGE {
            services.health.storage_full();
        } else if status.is_success() && method != "GET" {
            services.health.storage_has_room();
        }
    }
    Ok(response)
}

pub async fn scrape(metrics: web::Data<Metrics>, services: web::Data<Services>) -> HttpResponse {
    let position = *services.progress.borrow();
    metrics
        .read_model_position
        .set(position.map_or(0, |p| p.commit as i64));
    metrics.polls_waiting.set(services.wakeups.waiting() as i64);
    metrics.poll_wakeups.set(services.wakeups.woken() as i64);
    metrics
        .process_managers_failing
        .set(i64::from(services.health.is_degraded()));
    metrics
        .process_manager_restarts
        .set(services.health.restarts() as i64);
    metrics
        .storage_full
        .set(i64::from(services.health.storage_full_since().is_some()));
    let figures = services
        .query(|q| {
            let open = q.open_session_count()?;
            let standing = q.standing_privilege(None, chrono::Utc::now())?.len();
            let stuck = q.failed_requests(None)?.len();
            Ok((open, standing, stuck))
        })
        .await;
    if let Ok((open, standing, stuck)) = figures {
        metrics.open_sessions.set(open as i64);
        metrics.standing_privilege.set(standing as i64);
        metrics.stuck_requests.set(stuck as i64);
    }
    let mut text = String::new();
    let registry = metrics.registry.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        return HttpResponse::InternalServerError().body(e.to_string());
    }
    HttpResponse::Ok()
        .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
        .body(text)
}
