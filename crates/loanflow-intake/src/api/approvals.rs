//! The approver inbox over the API: `GET /api/approvals` and
//! `POST /api/approvals/{reference}`, for bearer tokens (the pages use sessions).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::approvals::{
    authenticate, claim, decide, failed_sign_in, inbox, levels_for, parse_decision, release, Approver,
};
use crate::body::read_json_object;
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

/// The approver the bearer token names; failures count towards the per-address limit.
fn bearer(req: &HttpRequest, state: &AppState) -> Result<Approver, ApiError> {
    state.limits.before_authenticating(req)?;
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| failed_sign_in(state, req))?;
    authenticate(&state.approvers, token.trim()).ok_or_else(|| failed_sign_in(state, req))
}

pub(super) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/api/approvals", web::get().to(list))
        .route("/api/approvals/{reference}", web::post().to(decide_api))
        .route("/api/approvals/{reference}/claim", web::post().to(claim_api))
        .route("/api/approvals/{reference}/claim", web::delete().to(release_api));
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LevelQuery {
    /// One of the approver's levels (`manager`, `manager-escalated`); all of them if absent.
    level: Option<String>,
}

/// What waits for the approver, oldest first.
#[utoipa::path(
    get, path = "/api/approvals", tag = "approvals", params(LevelQuery),
    security(("approver" = [])),
    responses(
        (status = 200, description = "The inbox", body = Vec<crate::approvals::InboxItem>),
        (status = 400, description = "An unreadable query", body = ErrorBody),
        (status = 401, description = "No valid approver token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A level the token may not decide", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
#[tracing::instrument(name = "approvals.list", skip_all)]
pub(crate) async fn list(
    req: HttpRequest,
    query: web::Query<LevelQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let approver = bearer(&req, &state)?;
    let levels = levels_for(&approver, query.level.as_deref())?;
    Ok(HttpResponse::Ok().json(inbox(&state, levels).await?))
}

/// The body of a decision.
#[derive(Deserialize, utoipa::ToSchema)]
#[allow(dead_code)] // read as JSON by `approvals::parse_decision`; this is its description
pub(crate) struct DecisionRequest {
    decision: DecisionChoice,
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
enum DecisionChoice {
    Approve,
    Reject,
}

/// Decides a waiting application (under dual control, the first approval is recorded
/// and the application keeps waiting for another approver's).
#[utoipa::path(
    post, path = "/api/approvals/{reference}", tag = "approvals",
    params(("reference" = String, Path, description = "The application's reference")),
    request_body(content = DecisionRequest, content_type = "application/json"),
    security(("approver" = [])),
    responses(
        (status = 200, description = "Accepted", body = crate::approvals::Accepted),
        (status = 400, description = "Not JSON or not an object", body = ErrorBody),
        (status = 401, description = "No valid approver token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A level the token may not decide", body = ErrorBody),
        (status = 404, description = "No such application", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 409, description = "not_awaiting_decision, claimed_by_other or already_decided_by_you", body = ErrorBody),
        (status = 413, description = "Over 16 KiB", body = ErrorBody),
        (status = 415, description = "Not application/json", body = ErrorBody),
        (status = 422, description = "No valid decision or reason", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn decide_api(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let approver = bearer(&req, &state)?;
    let body = read_json_object(&req, payload).await?;
    let (outcome, reason) = parse_decision(&body)?;
    let accepted = decide(&state, &approver, &path, outcome, reason).await?;
    Ok(HttpResponse::Ok().json(accepted))
}

/// Claims (or renews the claim on) a waiting case for `intake.claim_minutes`.
#[utoipa::path(
    post, path = "/api/approvals/{reference}/claim", tag = "approvals",
    params(("reference" = String, Path, description = "The application's reference")),
    security(("approver" = [])),
    responses(
        (status = 200, description = "Claimed", body = crate::approvals::Claimed),
        (status = 401, description = "No valid approver token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A level the token may not decide", body = ErrorBody),
        (status = 404, description = "No such application", body = ErrorBody),
        (status = 409, description = "claimed_by_other or not_awaiting_decision", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn claim_api(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let approver = bearer(&req, &state)?;
    Ok(HttpResponse::Ok().json(claim(&state, &approver, &path).await?))
}

/// Releases the approver's claim (nothing to release is no error).
#[utoipa::path(
    delete, path = "/api/approvals/{reference}/claim", tag = "approvals",
    params(("reference" = String, Path, description = "The application's reference")),
    security(("approver" = [])),
    responses(
        (status = 204, description = "Released"),
        (status = 401, description = "No valid approver token", body = ErrorBody, headers(("WWW-Authenticate" = String))),
        (status = 404, description = "No such application", body = ErrorBody),
        (status = 409, description = "claimed_by_other", body = ErrorBody),
        (status = 429, description = "Too many failed authentications", body = ErrorBody, headers(("Retry-After" = u64))),
        (status = 503, description = "The database is unavailable", body = ErrorBody),
    )
)]
pub(crate) async fn release_api(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let approver = bearer(&req, &state)?;
    release(&state, &approver, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}
