//! The public JSON API, one module per resource: loans ([`loans`]) and the approver
//! inbox ([`approvals`]). Handlers stay thin: read and check the request, call a service
//! (submission, status, approvals), answer. Every rejection, the extractors' own
//! included, answers in the contract's error shape.

use actix_web::{web, HttpResponse};

use crate::error::ApiError;

mod approvals;
mod loans;
pub mod openapi;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.configure(loans::routes).configure(approvals::routes).route("/api/openapi.json", web::get().to(openapi::serve));
}

/// Unknown paths answer in the contract's error shape too.
pub async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NoRoute)
}
