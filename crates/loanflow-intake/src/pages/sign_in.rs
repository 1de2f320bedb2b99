//! Approver sign-in and sign-out: a token for a server-side session (see `sessions`).
//! The sign-in form carries a pre-session token against login CSRF; failed sign-ins
//! share the API's per-address limit.

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::html;

use super::page;
use crate::approvals;
use crate::error::ApiError;
use crate::sessions::Session;
use crate::state::AppState;

pub(super) async fn signed_in(req: &HttpRequest, state: &AppState) -> Option<Session> {
    state.sessions.current(req, &state.pool, &state.approvers).await
}

/// The sign-in form, with a fresh pre-session token.
pub(super) fn form(state: &AppState, status: StatusCode, error: &str) -> HttpResponse {
    let (token, cookie) = state.sessions.sign_in_token();
    let mut response = page(
        status,
        "Approver sign-in",
        html! {
            h1 { "Approver sign-in" }
            @if !error.is_empty() { div.banner.bad role="alert" { (error) } }
            form.card method="post" action="/approvals/session" {
                input type="hidden" name="sign_in" value=(token);
                div.field {
                    label for="token" { "Approver token" }
                    input #token name="token" type="password" required autocomplete="current-password" aria-describedby="token-hint";
                    span.hint #token-hint { "The token your bank issued to you. It names you and the levels you may decide." }
                }
                div.actions { button type="submit" { "Sign in" } }
            }
        },
    );
    if response.add_cookie(&cookie).is_err() {
        tracing::warn!("the sign-in cookie could not be set");
    }
    response
}

/// A form that did not come from this site's own page.
pub(super) fn refused() -> HttpResponse {
    page(
        StatusCode::FORBIDDEN,
        "Request refused",
        html! {
            h1 { "Request refused" }
            p { "This form was not sent from this site's own page. " a href="/approvals" { "Back to the inbox" } "." }
        },
    )
}

pub(super) async fn sign_in(
    req: HttpRequest,
    form_data: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let too_many = |seconds: u64| {
        let message = "Too many failed sign-ins from here. Please wait a moment and try again.";
        let mut page = form(&state, StatusCode::TOO_MANY_REQUESTS, message);
        if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
            page.headers_mut().insert(header::RETRY_AFTER, value);
        }
        page
    };
    if !state.sessions.sign_in_form_ok(&req, form_data.get("sign_in")) {
        tracing::warn!(
            security_event = "sign_in_forged",
            "sign-in refused: the form did not come from our sign-in page"
        );
        return Ok(refused());
    }
    if let Err(ApiError::RateLimited(seconds)) = state.limits.before_authenticating(&req) {
        return Ok(too_many(seconds));
    }
    let token = form_data.get("token").map(|t| t.trim().to_owned()).unwrap_or_default();
    Ok(match approvals::authenticate(&state.approvers, &token) {
        Some(approver) => {
            let cookie = state.sessions.start(&state.pool, &approver).await?;
            tracing::info!(security_event = "approver_signed_in", approver = %approver.name, "approver signed in");
            HttpResponse::SeeOther()
                .cookie(cookie)
                .cookie(state.sessions.sign_in_token_removal())
                .insert_header((header::LOCATION, "/approvals"))
                .finish()
        }
        None => match crate::approvals::failed_sign_in(&state, &req) {
            ApiError::RateLimited(seconds) => too_many(seconds),
            _ => form(&state, StatusCode::UNAUTHORIZED, "That token is not valid. Please check it and try again."),
        },
    })
}

pub(super) async fn sign_out(
    req: HttpRequest,
    form_data: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let to_inbox = || HttpResponse::SeeOther().insert_header((header::LOCATION, "/approvals")).take();
    let Some(session) = signed_in(&req, &state).await else { return Ok(to_inbox().finish()) };
    if !session.csrf_ok(form_data.get("csrf")) {
        return Ok(refused());
    }
    let gone = state.sessions.end(&state.pool, &session).await?;
    tracing::info!(security_event = "approver_signed_out", approver = %session.approver.name, "approver signed out");
    Ok(to_inbox().cookie(gone).finish())
}
