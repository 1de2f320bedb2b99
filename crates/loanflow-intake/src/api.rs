//! The public JSON API: `POST /api/loans` and `GET /api/loans/{reference}`.
//!
//! Handlers stay thin: read and check the request, call the domain, call the store.

use std::sync::Arc;

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpRequest, HttpResponse};
use chrono::{DateTime, SecondsFormat, Utc};
use futures_util::StreamExt;
use rand::RngCore;
use serde::Serialize;
use tokio::sync::Notify;

use loanflow_domain::messages::{Envelope, RoutingSlip, WorkItem, WorkMessage};
use loanflow_domain::reference::RANDOM_BYTES;
use loanflow_domain::rules::Offer;
use loanflow_domain::{Application, Decision, Reference, Status};
use loanflow_platform::broker::WORK_EXCHANGE;
use loanflow_platform::db::{blocking, PgPool};
use loanflow_platform::Settings;

use crate::error::ApiError;
use crate::store::{self, OutboxMessage, Recorded, Submission};

/// The contract's limit on a request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The contract's default wait for a body, where no state says otherwise.
const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub chain: Arc<Vec<String>>,
    /// Wakes the outbox relay as soon as a group of submissions is committed.
    pub relay_wake: Arc<Notify>,
    /// Records submissions, grouped into shared transactions.
    pub writer: crate::writer::Writer,
    pub approvers: crate::approvals::Approvers,
    /// The approver pages' server-side sessions.
    pub sessions: crate::sessions::Sessions,
    /// Set when this intake runs the synchronous twin instead of the chain.
    pub twin: Option<Arc<crate::twin::TwinChain>>,
    /// The contract's limits per client address.
    pub limits: Arc<crate::limits::Limits>,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
}

impl AppState {
    pub(crate) fn new(pool: PgPool, settings: &Settings, twin: Option<crate::twin::TwinChain>) -> AppState {
        let relay_wake = Arc::new(Notify::new());
        AppState {
            writer: crate::writer::Writer::start(
                pool.clone(),
                relay_wake.clone(),
                chrono::Duration::hours(i64::from(settings.intake.idempotency_hours)),
            ),
            pool,
            chain: Arc::new(settings.chain.levels.clone()),
            relay_wake,
            approvers: Arc::new(settings.intake.approvers.clone()),
            sessions: crate::sessions::Sessions::new(&settings.intake),
            twin: twin.map(Arc::new),
            limits: Arc::new(crate::limits::Limits::new(&settings.intake)),
            body_timeout: std::time::Duration::from_millis(settings.intake.body_timeout_ms.max(1)),
        }
    }
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/loans", web::post().to(submit)).route("/api/loans/{reference}", web::get().to(status));
}

#[derive(Serialize)]
struct Accepted<'a> {
    reference: &'a str,
    status: Status,
    status_url: &'a str,
}

async fn submit(req: HttpRequest, payload: web::Payload, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    state.limits.submission(&req)?;
    let idempotency_key = idempotency_key(&req)?;
    let value = read_json_object(&req, payload).await?;
    if let Some(chain) = &state.twin {
        return crate::twin::submit(&state, chain, &value).await;
    }
    let reference = accept(&state, &value, idempotency_key).await?;
    let status_url = format!("/api/loans/{reference}");
    Ok(HttpResponse::Accepted().insert_header((header::LOCATION, status_url.as_str())).json(Accepted {
        reference: &reference,
        status: Status::Submitted,
        status_url: &status_url,
    }))
}

/// Validates an application and records it with its first message (and its
/// idempotency key); returns its reference. The API and the web form both submit here.
#[tracing::instrument(name = "submit", skip_all, fields(reference))]
pub(crate) async fn accept(
    state: &AppState,
    value: &serde_json::Value,
    idempotency_key: Option<String>,
) -> Result<String, ApiError> {
    let (reference, stored, work) = new_work(state, value)?;
    let now = work.submitted_at;
    let first_step = work.slip.current().unwrap_or_default().to_owned();
    let envelope = Envelope::new(reference.clone(), &format!("work/{first_step}"), now, WorkMessage::V1(work));
    let submission = Submission {
        reference: reference.clone(),
        application: stored,
        submitted_at: now,
        message: OutboxMessage {
            reference: reference.clone(),
            message_id: envelope.message_id,
            exchange: WORK_EXCHANGE.to_owned(),
            routing_key: first_step,
            payload: envelope.encode(),
        },
    };
    match state.writer.record(submission, idempotency_key).await? {
        Recorded::New => {
            tracing::info!("application accepted");
            Ok(reference.to_string())
        }
        Recorded::Existing(first) => {
            tracing::Span::current().record("reference", first.as_str());
            tracing::info!("retried submission answered with its first reference");
            Ok(first)
        }
        Recorded::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// The optional `Idempotency-Key`: 1 to 128 printable ASCII characters.
fn idempotency_key(req: &HttpRequest) -> Result<Option<String>, ApiError> {
    let Some(value) = req.headers().get("idempotency-key") else { return Ok(None) };
    if valid_idempotency_key(value.as_bytes()) {
        Ok(Some(String::from_utf8_lossy(value.as_bytes()).into_owned()))
    } else {
        Err(ApiError::InvalidIdempotencyKey)
    }
}

/// The contract's idempotency key: 1 to 128 printable ASCII characters.
pub(crate) fn valid_idempotency_key(key: &[u8]) -> bool {
    (1..=128).contains(&key.len()) && key.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// Reads a JSON object body under the contract's rules: `application/json` (415),
/// at most [`MAX_BODY_BYTES`] (413), valid JSON (400) and an object (400).
pub(crate) async fn read_json_object(req: &HttpRequest, payload: web::Payload) -> Result<serde_json::Value, ApiError> {
    require_json(req)?;
    // A body that does not arrive in time is answered 408: an idle body must not hold
    // a connection (and a worker's attention) for as long as the client likes.
    let timeout = req.app_data::<web::Data<AppState>>().map_or(DEFAULT_BODY_TIMEOUT, |s| s.body_timeout);
    let body = tokio::time::timeout(timeout, read_limited(req, payload, MAX_BODY_BYTES))
        .await
        .map_err(|_| ApiError::RequestTimeout)??;
    loanflow_domain::application::read_object(&body).map_err(|e| match e {
        loanflow_domain::application::BodyError::NotJson => ApiError::InvalidJson,
        loanflow_domain::application::BodyError::NotAnObject => ApiError::NotAnObject,
    })
}

/// Validates an application and starts its work item: what both the chain and the
/// synchronous twin begin with.
pub(crate) fn new_work(
    state: &AppState,
    value: &serde_json::Value,
) -> Result<(Reference, serde_json::Value, WorkItem), ApiError> {
    let now = Utc::now();
    let application = Application::parse(value, now.date_naive()).map_err(ApiError::Validation)?;
    let reference = new_reference();
    tracing::Span::current().record("reference", reference.as_str());
    let stored = serde_json::to_value(&application).map_err(|_| ApiError::InvalidJson)?;
    let work = WorkItem {
        application,
        submitted_at: now,
        submitted_on: now.date_naive(),
        slip: RoutingSlip::through(&state.chain),
        decisions: Vec::new(),
        score: None,
        offer: None,
    };
    Ok((reference, stored, work))
}

fn new_reference() -> Reference {
    let mut bytes = [0u8; RANDOM_BYTES];
    // The thread-local generator is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    Reference::from_random(bytes)
}

/// `application/json`, with or without parameters such as `charset`.
fn require_json(req: &HttpRequest) -> Result<(), ApiError> {
    let is_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case(ContentType::json().0.essence_str()));
    if is_json {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType)
    }
}

/// Reads the body, refusing it as soon as it passes `limit` (a declared length over
/// the limit is refused before anything is read).
async fn read_limited(req: &HttpRequest, mut payload: web::Payload, limit: usize) -> Result<Vec<u8>, ApiError> {
    let declared =
        req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return Err(ApiError::TooLarge(limit));
    }
    let mut body = Vec::with_capacity(declared.unwrap_or(1024).min(limit));
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|_| ApiError::InvalidJson)?;
        if body.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

#[derive(Serialize)]
struct StatusBody {
    reference: String,
    status: Status,
    current_level: Option<String>,
    submitted_at: String,
    updated_at: String,
    decisions: Vec<DecisionBody>,
    offer: Option<Offer>,
}

#[derive(Serialize)]
struct DecisionBody {
    level: String,
    outcome: loanflow_domain::Outcome,
    reason: String,
    decided_by: loanflow_domain::DecidedBy,
    decided_at: String,
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<Decision> for DecisionBody {
    fn from(d: Decision) -> Self {
        DecisionBody {
            level: d.level,
            outcome: d.outcome,
            reason: d.reason,
            decided_by: d.decided_by,
            decided_at: timestamp(d.decided_at),
        }
    }
}

#[tracing::instrument(name = "status", skip_all, fields(reference = %path.as_str()))]
async fn status(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let reference = Reference::parse(&path).map_err(|_| ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(status_body(&state, reference).await?))
}

/// The contract's status document of one application.
pub(crate) async fn status_body(state: &AppState, reference: Reference) -> Result<impl Serialize, ApiError> {
    let lookup = reference.clone();
    let view = blocking(&state.pool, move |conn| store::load_status(conn, &lookup)).await?.ok_or(ApiError::NotFound)?;
    Ok(StatusBody {
        reference: reference.into(),
        status: view.status,
        current_level: view.current_level,
        submitted_at: timestamp(view.submitted_at),
        updated_at: timestamp(view.updated_at),
        decisions: view.decisions.into_iter().map(DecisionBody::from).collect(),
        offer: if view.status == Status::Approved { view.offer } else { None },
    })
}

/// Unknown paths answer in the contract's error shape too.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NoRoute)
}
