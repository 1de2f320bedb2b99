//! The simulated credit bureau: answers a score for a national id, synchronously
//! over HTTP, as a real bureau would. Scores follow the domain's rule (sandbox
//! identities score their digits; others a stable hash). A configurable latency
//! simulates a slow bureau.

use std::net::TcpListener;
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
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

/// Faults a simulation can switch on at run time (`PUT /admin/faults`): extra latency
/// and a full outage. This is a simulator's control, for loopback use; a real bureau
/// has none.
#[derive(Debug, Default)]
struct Faults {
    base_latency_ms: u64,
    extra_latency_ms: AtomicU64,
    down: AtomicBool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FaultsBody {
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub down: bool,
}

async fn get_faults(faults: web::Data<Faults>) -> HttpResponse {
    HttpResponse::Ok().json(FaultsBody {
        latency_ms: faults.extra_latency_ms.load(Ordering::Relaxed),
        down: faults.down.load(Ordering::Relaxed),
    })
}

async fn set_faults(body: web::Json<FaultsBody>, faults: web::Data<Faults>) -> HttpResponse {
    faults.extra_latency_ms.store(body.latency_ms, Ordering::Relaxed);
    faults.down.store(body.down, Ordering::Relaxed);
    tracing::info!(latency_ms = body.latency_ms, down = body.down, "bureau faults set");
    HttpResponse::Ok().json(&*body)
}

/// `GET /api/scores/{national_id}` → `{"score": 720}`. The id is not echoed and not
/// logged: it is personal data.
async fn score(path: web::Path<String>, faults: web::Data<Faults>) -> HttpResponse {
    if faults.down.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable()
            .json(ErrorBody { error: "unavailable", message: "the bureau is down (simulated outage)" });
    }
    let latency = faults.base_latency_ms + faults.extra_latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
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
    let faults = web::Data::new(Faults { base_latency_ms: settings.bureau.latency_ms, ..Faults::default() });
    let server = HttpServer::new(move || {
        App::new()
            .app_data(faults.clone())
            .route("/api/scores/{national_id}", web::get().to(score))
            .route("/admin/faults", web::get().to(get_faults))
            .route("/admin/faults", web::put().to(set_faults))
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
