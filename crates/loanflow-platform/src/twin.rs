//! What every process of the synchronous twin shares: it starts only with a shared
//! secret configured, serves on a listener of its own (never a health address), and
//! answers only callers that present that secret.
//!
//! The twin exists for the benchmark's comparison with a chain of HTTP calls. Its
//! processes are started with `loanflow twin …`; `make run` and every other process
//! never mount its endpoints.

use std::net::SocketAddr;

use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpResponse};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http;
use crate::settings::TwinSettings;

/// Serves `configure`'s routes on `twin.listen`, each behind the twin's secret, plus
/// `/health/live`. `None` when no secret is configured: the caller refuses to start.
pub fn serve<F>(
    twin: &TwinSettings,
    workers: usize,
    configure: F,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> Option<std::io::Result<SocketAddr>>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    if !twin.secret.is_set() {
        return None;
    }
    let secret = twin.secret.clone();
    let routes = move |cfg: &mut web::ServiceConfig| {
        let secret = secret.clone();
        let guarded = web::scope("/api")
            .wrap(from_fn(move |req: ServiceRequest, next: Next<actix_web::body::BoxBody>| {
                let allowed = http::bearer_matches(req.request(), &secret);
                async move {
                    if allowed {
                        return next.call(req).await.map(ServiceResponse::map_into_left_body);
                    }
                    tracing::warn!(security_event = "twin_auth_failed", path = %req.path(), "twin call refused");
                    let refused = HttpResponse::Unauthorized()
                        .json(serde_json::json!({"error": "unauthorized", "message": "the twin's secret is required"}));
                    Ok(req.into_response(refused).map_into_right_body())
                }
            }))
            .configure(configure.clone());
        cfg.route(
            "/health/live",
            web::get().to(|| async { HttpResponse::Ok().json(serde_json::json!({"status": "live"})) }),
        )
        .service(guarded);
    };
    Some(http::serve(&twin.listen, workers, routes, shutdown, tasks))
}
