//! The approver inbox over the API: `GET /api/approvals` and
//! `POST /api/approvals/{reference}`, for bearer tokens (the pages use sessions).

use actix_web::http::header;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;

use crate::approvals::{
    authenticate, claim, decide, failed_sign_in, inbox, levels_for, parse_decision, release, Approver,
};
use crate::body::read_json_object;
use crate::error::ApiError;
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

#[derive(Deserialize)]
struct LevelQuery {
    level: Option<String>,
}

#[tracing::instrument(name = "approvals.list", skip_all)]
async fn list(
    req: HttpRequest,
    query: web::Query<LevelQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let approver = bearer(&req, &state)?;
    let levels = levels_for(&approver, query.level.as_deref())?;
    Ok(HttpResponse::Ok().json(inbox(&state, levels).await?))
}

async fn decide_api(
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

async fn claim_api(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let approver = bearer(&req, &state)?;
    Ok(HttpResponse::Ok().json(claim(&state, &approver, &path).await?))
}

async fn release_api(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let approver = bearer(&req, &state)?;
    release(&state, &approver, &path).await?;
    Ok(HttpResponse::NoContent().finish())
}
