//! Request bodies under the contract's rules, for every JSON endpoint: the media type
//! (415), the size (413), the time it takes to arrive (408), valid JSON and an object
//! (400).

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;

use loanflow_domain::application::{read_object, BodyError};

use crate::error::ApiError;
use crate::state::AppState;

/// The contract's limit on a request body.
pub const MAX_BODY_BYTES: usize = 16 * 1024;

/// The contract's default wait for a body, where no state says otherwise.
const DEFAULT_BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

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
    read_object(&body).map_err(|e| match e {
        BodyError::NotJson => ApiError::InvalidJson,
        BodyError::NotAnObject => ApiError::NotAnObject,
    })
}

/// Reads an optional JSON object body: none at all (no content type, nothing sent) is
/// `None`; anything sent must pass [`read_json_object`]'s rules.
pub(crate) async fn read_optional_json_object(
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Option<serde_json::Value>, ApiError> {
    let declared_empty = req.headers().get(header::CONTENT_LENGTH).is_some_and(|v| v.as_bytes() == b"0");
    let chunked = req.headers().contains_key(header::TRANSFER_ENCODING);
    if req.headers().get(header::CONTENT_TYPE).is_none() && (declared_empty || !chunked) {
        let body = read_limited(req, payload, MAX_BODY_BYTES).await?;
        return if body.is_empty() { Ok(None) } else { Err(ApiError::UnsupportedMediaType) };
    }
    read_json_object(req, payload).await.map(Some)
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
