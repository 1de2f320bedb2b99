//! Health: each long-running part of a service (a consumer, the outbox relay, the
//! database) owns a flag that says whether it works; the service is ready when every
//! *required* part is. A *reported* part shows in the body and in the metrics without
//! deciding readiness: the intake keeps accepting applications while the broker is
//! away (its outbox absorbs the outage), so a load balancer must keep sending them.
//! Served as `/health/live` (the process answers) and `/health/ready` (200 when
//! ready, 503 otherwise; the body lists every part), beside `/metrics` (Prometheus,
//! with `loanflow_health_part_up{part}`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpResponse};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Default)]
pub struct Health {
    parts: Arc<Mutex<BTreeMap<String, Part>>>,
}

#[derive(Debug, Clone)]
struct Part {
    up: Arc<AtomicBool>,
    required: bool,
}

/// One part's state; starts down.
#[derive(Debug, Clone)]
pub struct Flag {
    up: Arc<AtomicBool>,
    name: String,
}

impl Flag {
    pub fn set(&self, up: bool) {
        self.up.store(up, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::HEALTH_PART_UP, "part" => self.name.clone()).set(if up { 1.0 } else { 0.0 });
    }
}

impl Health {
    /// A part the service is not ready without.
    pub fn part(&self, name: &str) -> Flag {
        self.add(name, true)
    }

    /// A part whose state is reported but does not decide readiness.
    pub fn reported(&self, name: &str) -> Flag {
        self.add(name, false)
    }

    fn add(&self, name: &str, required: bool) -> Flag {
        crate::metrics::install();
        let up = Arc::new(AtomicBool::new(false));
        if let Ok(mut parts) = self.parts.lock() {
            parts.insert(name.to_owned(), Part { up: up.clone(), required });
        }
        let flag = Flag { up, name: name.to_owned() };
        flag.set(false);
        flag
    }

    /// Each part and whether it is up.
    pub fn report(&self) -> BTreeMap<String, bool> {
        self.parts
            .lock()
            .map(|parts| parts.iter().map(|(k, p)| (k.clone(), p.up.load(Ordering::Relaxed))).collect())
            .unwrap_or_default()
    }

    /// Whether every required part is up.
    pub fn is_ready(&self) -> bool {
        self.parts
            .lock()
            .map(|parts| parts.values().filter(|p| p.required).all(|p| p.up.load(Ordering::Relaxed)))
            .unwrap_or(false)
    }
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

async fn ready(health: web::Data<Health>) -> HttpResponse {
    let parts = health.report();
    let ready = health.is_ready();
    let body = serde_json::json!({"status": if ready { "ready" } else { "not_ready" }, "parts": parts});
    if ready {
        HttpResponse::Ok().json(body)
    } else {
        HttpResponse::ServiceUnavailable().json(body)
    }
}

async fn metrics() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4").body(crate::metrics::render())
}

/// Adds the health routes, and `/metrics`, to an existing app.
pub fn routes(cfg: &mut web::ServiceConfig) {
    crate::metrics::install();
    cfg.route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready))
        .route("/metrics", web::get().to(metrics));
}

/// Serves the health routes alone on `listen`: a service without an HTTP API of its
/// own. Nothing else is ever mounted here (a health address is reachable by anyone
/// who can reach the host, so it must not change or reveal loan data).
pub fn serve(
    listen: &str,
    health: Health,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<std::net::SocketAddr> {
    let data = web::Data::new(health);
    crate::http::serve(listen, 1, move |cfg| routes(cfg.app_data(data.clone())), shutdown, tasks)
}
