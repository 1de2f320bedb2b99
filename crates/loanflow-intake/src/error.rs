//! The HTTP edge's errors: every error response the intake gives is built here, in
//! the contract's shape `{"error", "message", "fields"?}`.

use std::collections::BTreeMap;

use actix_web::error::{JsonPayloadError, UrlencodedError};
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse, ResponseError};
use serde::Serialize;

use loanflow_platform::db::DbError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("the request body is not valid JSON")]
    InvalidJson,
    #[error("the request body must be a JSON object")]
    NotAnObject,
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("the request body must be sent as application/json")]
    UnsupportedMediaType,
    #[error("the application breaks {} rule(s); see fields", .0.len())]
    Validation(BTreeMap<String, String>),
    #[error("the Idempotency-Key header must be 1 to 128 printable ASCII characters")]
    InvalidIdempotencyKey,
    #[error("this Idempotency-Key was used for a different application")]
    IdempotencyKeyReused,
    #[error("a valid approver token is required (Authorization: Bearer <token>)")]
    Unauthorized,
    #[error("this approver may not decide that level")]
    Forbidden,
    #[error("the application is not waiting for that decision")]
    NotAwaitingDecision,
    #[error("{0} holds this case; only they may decide it until their claim ends")]
    ClaimedByOther(String),
    #[error("you have decided this application already; another approver must decide it")]
    AlreadyDecidedByYou,
    #[error("the application is final already and cannot be withdrawn")]
    AlreadyFinal,
    #[error("the {0} step is unavailable; please try again later")]
    StepUnavailable(String),
    #[error("no such application")]
    NotFound,
    #[error("no such resource")]
    NoRoute,
    #[error("too many requests; retry after {0} s")]
    RateLimited(u64),
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// A query string or form the extractor could not read (the reason is actix's).
    #[error("the request cannot be read: {0}")]
    BadRequest(String),
    #[error("internal error")]
    Internal(#[from] DbError),
}

/// Every error code the API answers with, as `error` in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    InvalidIdempotencyKey,
    IdempotencyKeyReused,
    NotFound,
    Unauthorized,
    Forbidden,
    NotAwaitingDecision,
    ClaimedByOther,
    AlreadyDecidedByYou,
    AlreadyFinal,
    RateLimited,
    RequestTimeout,
    BadRequest,
    Unavailable,
    Internal,
}

/// The contract's error codes: (code, status). `fields` accompanies 422 only.
impl ApiError {
    fn code_and_status(&self) -> (ErrorCode, StatusCode) {
        match self {
            ApiError::InvalidJson => (ErrorCode::InvalidJson, StatusCode::BAD_REQUEST),
            ApiError::NotAnObject => (ErrorCode::InvalidJson, StatusCode::BAD_REQUEST),
            ApiError::TooLarge(_) => (ErrorCode::PayloadTooLarge, StatusCode::PAYLOAD_TOO_LARGE),
            ApiError::UnsupportedMediaType => (ErrorCode::UnsupportedMediaType, StatusCode::UNSUPPORTED_MEDIA_TYPE),
            ApiError::Validation(_) => (ErrorCode::ValidationFailed, StatusCode::UNPROCESSABLE_ENTITY),
            ApiError::InvalidIdempotencyKey => (ErrorCode::InvalidIdempotencyKey, StatusCode::BAD_REQUEST),
            ApiError::IdempotencyKeyReused => (ErrorCode::IdempotencyKeyReused, StatusCode::CONFLICT),
            ApiError::NotFound | ApiError::NoRoute => (ErrorCode::NotFound, StatusCode::NOT_FOUND),
            ApiError::Unauthorized => (ErrorCode::Unauthorized, StatusCode::UNAUTHORIZED),
            ApiError::StepUnavailable(_) => (ErrorCode::Unavailable, StatusCode::SERVICE_UNAVAILABLE),
            ApiError::Forbidden => (ErrorCode::Forbidden, StatusCode::FORBIDDEN),
            ApiError::NotAwaitingDecision => (ErrorCode::NotAwaitingDecision, StatusCode::CONFLICT),
            ApiError::ClaimedByOther(_) => (ErrorCode::ClaimedByOther, StatusCode::CONFLICT),
            ApiError::AlreadyDecidedByYou => (ErrorCode::AlreadyDecidedByYou, StatusCode::CONFLICT),
            ApiError::AlreadyFinal => (ErrorCode::AlreadyFinal, StatusCode::CONFLICT),
            ApiError::RateLimited(_) => (ErrorCode::RateLimited, StatusCode::TOO_MANY_REQUESTS),
            ApiError::RequestTimeout => (ErrorCode::RequestTimeout, StatusCode::REQUEST_TIMEOUT),
            ApiError::BadRequest(_) => (ErrorCode::BadRequest, StatusCode::BAD_REQUEST),
            // No connection could be had in time: the database is down or saturated, which
            // a retry may outlive. Everything else unexpected is a 500.
            ApiError::Internal(DbError::Pool(_) | DbError::Unavailable(_)) => {
                (ErrorCode::Unavailable, StatusCode::SERVICE_UNAVAILABLE)
            }
            ApiError::Internal(_) => (ErrorCode::Internal, StatusCode::INTERNAL_SERVER_ERROR),
        }
    }
}

/// The body of every error answer.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody<'a> {
    pub error: ErrorCode,
    pub message: String,
    /// What is wrong with each field, by JSON path (`422 validation_failed` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    pub fields: Option<&'a BTreeMap<String, String>>,
    /// Who holds the case (`409 claimed_by_other` only), `approver:<name>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub claimed_by: Option<&'a str>,
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.code_and_status().1
    }

    fn error_response(&self) -> HttpResponse {
        let (error, status) = self.code_and_status();
        if let ApiError::Internal(cause) = self {
            // Logged once, here, with its cause; the client gets a fixed message.
            tracing::error!(error = %cause, "request failed");
        }
        let message = match self {
            ApiError::Internal(DbError::Pool(_) | DbError::Unavailable(_)) => {
                "the service is unavailable; please try again later".to_owned()
            }
            other => other.to_string(),
        };
        let fields = match self {
            ApiError::Validation(fields) => Some(fields),
            _ => None,
        };
        let mut response = HttpResponse::build(status);
        match self {
            ApiError::Unauthorized => {
                response.insert_header((actix_web::http::header::WWW_AUTHENTICATE, "Bearer"));
            }
            ApiError::RateLimited(seconds) => {
                response.insert_header((actix_web::http::header::RETRY_AFTER, seconds.to_string()));
            }
            // A body that stalls: the connection is not kept for another request.
            ApiError::RequestTimeout => {
                response.insert_header((actix_web::http::header::CONNECTION, "close"));
            }
            _ => {}
        }
        let claimed_by = match self {
            ApiError::ClaimedByOther(holder) => Some(holder.as_str()),
            _ => None,
        };
        response.json(ErrorBody { error, message, fields, claimed_by })
    }
}

impl From<crate::cases::CaseError> for ApiError {
    fn from(e: crate::cases::CaseError) -> Self {
        use crate::cases::CaseError;
        match e {
            CaseError::NotFound => ApiError::NotFound,
            CaseError::NotAwaiting => ApiError::NotAwaitingDecision,
            CaseError::Forbidden => ApiError::Forbidden,
            CaseError::ClaimedByOther(holder) => ApiError::ClaimedByOther(holder),
            CaseError::AlreadyDecidedByYou => ApiError::AlreadyDecidedByYou,
            CaseError::AlreadyFinal => ApiError::AlreadyFinal,
            CaseError::Db(e) => ApiError::Internal(e),
        }
    }
}

/// Actix's own rejections — a query string, path, form or JSON body its extractor
/// cannot read — answered in the contract's shape like every other error, instead of
/// actix's plain-text defaults.
pub fn extractor_rejections(cfg: &mut web::ServiceConfig) {
    let limit = crate::body::MAX_BODY_BYTES;
    cfg.app_data(web::QueryConfig::default().error_handler(|e, _| ApiError::BadRequest(e.to_string()).into()))
        // Every path parameter is a string: a path that does not match is no resource.
        .app_data(web::PathConfig::default().error_handler(|_, _| ApiError::NoRoute.into()))
        .app_data(web::FormConfig::default().limit(limit).error_handler(|e, _| form_rejection(e).into()))
        .app_data(web::JsonConfig::default().limit(limit).error_handler(|e, _| json_rejection(e).into()));
}

fn form_rejection(e: UrlencodedError) -> ApiError {
    match e {
        UrlencodedError::ContentType => ApiError::UnsupportedMediaType,
        UrlencodedError::Overflow { limit, .. } => ApiError::TooLarge(limit),
        other => ApiError::BadRequest(other.to_string()),
    }
}

fn json_rejection(e: JsonPayloadError) -> ApiError {
    match e {
        JsonPayloadError::ContentType => ApiError::UnsupportedMediaType,
        JsonPayloadError::Overflow { limit } | JsonPayloadError::OverflowKnownLength { limit, .. } => {
            ApiError::TooLarge(limit)
        }
        _ => ApiError::InvalidJson,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_cannot_be_reached_answers_503_and_other_failures_500() {
        let unavailable = ApiError::Internal(DbError::Unavailable("timed out waiting for connection".into()));
        assert_eq!(unavailable.status_code(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unavailable.code_and_status().0, ErrorCode::Unavailable);
        let broken = ApiError::Internal(DbError::Corrupt("unknown status".into()));
        assert_eq!(broken.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
