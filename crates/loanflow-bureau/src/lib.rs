//! The simulated credit bureau: answers a score for a national id, synchronously
//! over HTTP, as a real bureau would. Scores follow the domain's rule (sandbox
//! identities score their digits; others a stable hash). A configurable latency
//! simulates a slow bureau.

use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_domain::application::NationalId;
use loanflow_domain::rules::bureau_score;
use loanflow_platform::http::{self, bearer_token};
use loanflow_platform::settings::{operator_for, OperatorSettings};
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

/// Faults a simulation can switch on at run time (`PUT /admin/faults`, with the
/// operator token): extra latency and a full outage. A simulator's control; a real
/// bureau has none.
#[derive(Debug, Default)]
struct Faults {
    base_latency_ms: u64,
    extra_latency_ms: AtomicU64,
    down: AtomicBool,
    operators: Vec<OperatorSettings>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FaultsBody {
    #[serde(default)]
    pub latency_ms: u64,
    #[serde(default)]
    pub down: bool,
}

/// The fault switch is the operator's: `None` for the operator; anyone else gets a 401
/// to answer, and the attempt is logged as a security event (never the token itself).
fn refusal_unless_operator(req: &HttpRequest, operators: &[OperatorSettings]) -> Option<HttpResponse> {
    if let Some(operator) = bearer_token(req).and_then(|token| operator_for(operators, token)) {
        tracing::info!(security_event = "operator_act", operator = %operator.name, path = %req.path(), "fault switch used");
        return None;
    }
    tracing::warn!(security_event = "operator_auth_failed", path = %req.path(), "fault switch refused: no operator token");
    Some(HttpResponse::Unauthorized().json(ErrorBody {
        error: "unauthorized",
        message: "the operator token is required (Authorization: Bearer <token>)",
    }))
}

async fn get_faults(req: HttpRequest, faults: web::Data<Faults>) -> HttpResponse {
    if let Some(refused) = refusal_unless_operator(&req, &faults.operators) {
        return refused;
    }
    HttpResponse::Ok().json(FaultsBody {
        latency_ms: faults.extra_latency_ms.load(Ordering::Relaxed),
        down: faults.down.load(Ordering::Relaxed),
    })
}

async fn set_faults(req: HttpRequest, body: web::Json<FaultsBody>, faults: web::Data<Faults>) -> HttpResponse {
    if let Some(refused) = refusal_unless_operator(&req, &faults.operators) {
        return refused;
    }
    faults.extra_latency_ms.store(body.latency_ms, Ordering::Relaxed);
    faults.down.store(body.down, Ordering::Relaxed);
    tracing::info!(latency_ms = body.latency_ms, down = body.down, "bureau faults set");
    HttpResponse::Ok().json(&*body)
}

/// What credit asks: the national id travels in the body, never in the URL (proxies and
/// access logs record paths).
// No `Debug`: the id is personal data and must not reach a log by accident.
#[derive(Deserialize, Serialize)]
pub struct ScoreRequest {
    pub national_id: String,
}

/// `POST /api/scores` with `{"national_id": "..."}` → `{"score": 720}`. The id is not
/// echoed and not logged: it is personal data.
async fn score(body: web::Json<ScoreRequest>, faults: web::Data<Faults>) -> HttpResponse {
    if faults.down.load(Ordering::Relaxed) {
        return HttpResponse::ServiceUnavailable()
            .json(ErrorBody { error: "unavailable", message: "the bureau is down (simulated outage)" });
    }
    let latency = faults.base_latency_ms + faults.extra_latency_ms.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_millis(latency)).await;
    }
    match NationalId::parse(&body.national_id) {
        Ok(id) => HttpResponse::Ok().json(ScoreBody { score: bureau_score(&id) }),
        Err(why) => HttpResponse::UnprocessableEntity().json(ErrorBody { error: "invalid_national_id", message: why }),
    }
}

pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    let listen = settings.bureau.listen.clone();
    let faults = web::Data::new(Faults {
        base_latency_ms: settings.bureau.latency_ms,
        operators: settings.operators.clone(),
        ..Faults::default()
    });
    let routes = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(faults.clone())
            .route("/api/scores", web::post().to(score))
            .route("/admin/faults", web::get().to(get_faults))
            .route("/admin/faults", web::put().to(set_faults));
    };
    let tasks = TaskTracker::new();
    let addr = http::serve(&listen, settings.bureau.workers, routes, shutdown, &tasks)
        .map_err(|e| StartError::Bind(listen.clone(), e))?;
    tracing::info!(%addr, "bureau listening");
    Ok(Running::new(Some(addr), tasks))
}
