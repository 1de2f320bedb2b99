//! Health: each long-running part of a service (a consumer, the outbox relay) owns a
//! flag that says whether it is connected; the service is ready when all are.
//! Served as `/health/live` (the process answers) and `/health/ready` (200 when
//! ready, 503 with the parts that are not), beside `/metrics` (Prometheus).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use actix_web::{web, HttpResponse};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Debug, Clone, Default)]
pub struct Health {
    parts: Arc<Mutex<BTreeMap<String, Arc<AtomicBool>>>>,
}

/// One part's readiness; starts not ready.
#[derive(Debug, Clone)]
pub struct Flag(Arc<AtomicBool>);

impl Flag {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::Relaxed);
    }
}

impl Health {
    pub fn part(&self, name: &str) -> Flag {
        let flag = Arc::new(AtomicBool::new(false));
        if let Ok(mut parts) = self.parts.lock() {
            parts.insert(name.to_owned(), flag.clone());
        }
        Flag(flag)
    }

    /// Each part and whether it is ready.
    pub fn report(&self) -> BTreeMap<String, bool> {
        self.parts
            .lock()
            .map(|parts| parts.iter().map(|(k, v)| (k.clone(), v.load(Ordering::Relaxed))).collect())
            .unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.report().values().all(|ready| *ready)
    }
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

async fn ready(health: web::Data<Health>) -> HttpResponse {
    let parts = health.report();
    let ready = parts.values().all(|r| *r);
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
