//! `POST /api/loans` (submit) and `GET /api/loans/{reference}` (status).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use loanflow_domain::{Reference, Status};

use crate::body::{read_json_object, read_optional_json_object};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;
use crate::submission::{self, valid_idempotency_key};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/loans", web::post().to(submit))
        .route("/api/loans/{reference}", web::get().to(status))
        .route("/api/loans/{reference}/withdrawal", web::post().to(withdraw));
}

/// A recorded application.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = SubmissionAccepted)]
pub(crate) struct Accepted<'a> {
    reference: &'a str,
    /// `submitted`.
    status: Status,
    status_url: &'a str,
}

/// Submits an application: answered as soon as it is durably recorded, before any level.
#[utoipa::path(
    post, path = "/api/loans", tag = "loans",
    request_body(content = loanflow_domain::Application, content_type = "application/json"),
    params(("Idempotency-Key" = Option<String>, Header, max_length = 128, pattern = "^[\\x21-\\x7e]{1,128}$",
        description = "Makes a retried submission return the first submission's reference")),
    responses(
        (status = 202, description = "Recorded", body = Accepted, headers(("Location" = String, description = "The status URL"))),
        (status = 400, description = "Not JSON, not an object, or a bad Idempotency-Key", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "idempotency_key_reused", body = ErrorBody),
        (status = 413, description = "Over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "A rule is broken: see fields", body = ErrorBody),
        (status = 429, description = "Over the submission limit", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn submit(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.limits.submission(&req)?;
    let idempotency_key = idempotency_key(&req)?;
    let value = read_json_object(&req, payload).await?;
    if let Some(chain) = &state.twin {
        return crate::twin::submit(&state, chain, &value).await;
    }
    let reference = submission::accept(&state, &value, idempotency_key).await?;
    let status_url = format!("/api/loans/{reference}");
    Ok(HttpResponse::Accepted().insert_header((header::LOCATION, status_url.as_str())).json(Accepted {
        reference: &reference,
        status: Status::Submitted,
        status_url: &status_url,
    }))
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

/// An application's status.
#[utoipa::path(
    get, path = "/api/loans/{reference}", tag = "loans",
    params(("reference" = String, Path, description = "The application's reference")),
    responses(
        (status = 200, description = "Its status", body = crate::status::StatusBody),
        (status = 404, description = "No such application", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "status", skip_all, fields(reference = %path.as_str()))]
pub(crate) async fn status(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let reference = Reference::parse(&path).map_err(|_| ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(crate::status::document(&state, reference).await?))
}

/// A withdrawal on its way to the ledger.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct WithdrawalRequested<'a> {
    reference: &'a str,
    /// `requested`.
    withdrawal: &'static str,
    status_url: &'a str,
}

/// The body of a withdrawal (optional).
#[derive(serde::Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // read as JSON by `withdrawal::parse_reason`; this is its description
pub(crate) struct WithdrawalRequest {
    #[schema(max_length = 500)]
    reason: Option<String>,
}

/// Withdraws an application that is not final; the ledger decides whether a loan was
/// booked before it.
#[utoipa::path(
    post, path = "/api/loans/{reference}/withdrawal", tag = "loans",
    params(("reference" = String, Path, description = "The application's reference")),
    request_body(content = Option<WithdrawalRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "Requested (again, if one is pending)", body = WithdrawalRequested),
        (status = 400, description = "Not JSON or not an object", body = ErrorBody),
        (status = 404, description = "No such application", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "already_final", body = ErrorBody),
        (status = 413, description = "Over 16 KiB", body = ErrorBody),
        (status = 415, description = "A body that is not application/json", body = ErrorBody),
        (status = 422, description = "A reason over 500 characters", body = ErrorBody),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn withdraw(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = read_optional_json_object(&req, payload).await?;
    let reason = crate::withdrawal::parse_reason(body.as_ref())?;
    let reference = crate::withdrawal::request(&state, &path, reason).await?;
    let status_url = format!("/api/loans/{reference}");
    Ok(HttpResponse::Accepted().json(WithdrawalRequested {
        reference: reference.as_str(),
        withdrawal: "requested",
        status_url: &status_url,
    }))
}
