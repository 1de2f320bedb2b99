//! The simulated credit bureau: answers a score for a national id, synchronously
//! over HTTP, as a real bureau would. Scores follow the domain's rule (sandbox
//! identities score their digits; others a stable hash). A configurable latency
//! simulates a slow bureau.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_domain::application::NationalId;
use loanflow_domain::rules::bureau_score;
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
}

#[derive(Serialize)]
pub struct ScoreBody {
    pub score: u16,
}

#[derive(Serialize)]
struct ErrorBody {
    error: &'static str,
    message: &'static str,
}

#[derive(Clone, Copy)]
struct Latency(Duration);

/// `GET /api/scores/{national_id}` → `{"score": 720}`. The id is not echoed and not
/// logged: it is personal data.
async fn score(path: web::Path<String>, latency: web::Data<Latency>) -> HttpResponse {
    if !latency.0.is_zero() {
        tokio::time::sleep(latency.0).await;
    }
    match NationalId::parse(&path) {
        Ok(id) => HttpResponse::Ok().json(ScoreBody { score: bureau_score(&id) }),
        Err(why) => HttpResponse::UnprocessableEntity().json(ErrorBody { error: "invalid_national_id", message: why }),
    }
}

pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    let listen = settings.bureau.listen.clone();
    let bind_error = |e| StartError::Bind(listen.clone(), e);
    let listener = TcpListener::bind(&listen).map_err(bind_error)?;
    let addr = listener.local_addr().map_err(bind_error)?;
    let latency = web::Data::new(Latency(Duration::from_millis(settings.bureau.latency_ms)));
    let server = HttpServer::new(move || {
        App::new().app_data(latency.clone()).route("/api/scores/{national_id}", web::get().to(score))
    })
    .workers(settings.bureau.workers.max(1))
    .disable_signals()
    // Requests in progress get this long to finish when the service stops.
    .shutdown_timeout(10)
    .listen(listener)
    .map_err(bind_error)?
    .run();
    let tasks = TaskTracker::new();
    let handle = server.handle();
    tasks.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "bureau HTTP server failed");
        }
    });
    tasks.spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    tracing::info!(%addr, "bureau listening");
    Ok(Running::new(Some(addr), tasks))
}
