//! `POST /api/loans` (submit) and `GET /api/loans/{reference}` (status).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;

use loanflow_domain::{Reference, Status};

use crate::body::{read_json_object, read_optional_json_object};
use crate::error::ApiError;
use crate::state::AppState;
use crate::submission::{self, valid_idempotency_key};

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/loans", web::post().to(submit))
        .route("/api/loans/{reference}", web::get().to(status))
        .route("/api/loans/{reference}/withdrawal", web::post().to(withdraw));
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

#[tracing::instrument(name = "status", skip_all, fields(reference = %path.as_str()))]
async fn status(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let reference = Reference::parse(&path).map_err(|_| ApiError::NotFound)?;
    Ok(HttpResponse::Ok().json(crate::status::document(&state, reference).await?))
}

#[derive(Serialize)]
struct WithdrawalRequested<'a> {
    reference: &'a str,
    withdrawal: &'static str,
    status_url: &'a str,
}

async fn withdraw(
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
