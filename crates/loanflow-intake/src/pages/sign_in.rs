//! Sign-in and sign-out of approvers (the inbox) and operators (the operations page): a
//! token for a server-side session (see `sessions`). The sign-in form carries a
//! pre-session token against login CSRF; failed sign-ins share the API's per-address
//! limit and go to the audit trail.

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

/// Who a sign-in form is for, and where it leads.
#[derive(Debug, Clone, Copy)]
pub(super) struct Door {
    title: &'static str,
    action: &'static str,
    label: &'static str,
    hint: &'static str,
    /// Where a signed-in (or signed-out) person goes.
    pub(super) home: &'static str,
}

pub(super) const APPROVERS: Door = Door {
    title: "Approver sign-in",
    action: "/approvals/session",
    label: "Approver token",
    hint: "The token your bank issued to you. It names you and the levels you may decide.",
    home: "/approvals",
};

pub(super) const OPERATORS: Door = Door {
    title: "Operator sign-in",
    action: "/ops/session",
    label: "Operator token",
    hint: "The token of an operator: the operations page, and replaying dead letters.",
    home: "/ops",
};

/// The approvers' sign-in form, with a fresh pre-session token.
pub(super) fn form(state: &AppState, status: StatusCode, error: &str) -> HttpResponse {
    form_at(APPROVERS, state, status, error)
}

/// A sign-in form, with a fresh pre-session token.
pub(super) fn form_at(door: Door, state: &AppState, status: StatusCode, error: &str) -> HttpResponse {
    let (token, cookie) = state.sessions.sign_in_token();
    let mut response = page(
        status,
        door.title,
        html! {
            h1 { (door.title) }
            @if !error.is_empty() { div.banner.bad role="alert" { (error) } }
            form.card method="post" action=(door.action) {
                input type="hidden" name="sign_in" value=(token);
                div.field {
                    label for="token" { (door.label) }
                    input #token name="token" type="password" required autocomplete="current-password" aria-describedby="token-hint";
                    span.hint #token-hint { (door.hint) }
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
    let opened = state.clone();
    enter(APPROVERS, &req, &form_data, &state, |token| async move {
        let state = opened;
        let approver = approvals::authenticate(&state.approvers, &token)?;
        let cookie = state.sessions.start(&state.pool, &approver).await;
        tracing::info!(security_event = "approver_signed_in", approver = %approver.name, "approver signed in");
        Some(cookie)
    })
    .await
}

pub(super) async fn operator_sign_in(
    req: HttpRequest,
    form_data: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let opened = state.clone();
    enter(OPERATORS, &req, &form_data, &state, |token| async move {
        let state = opened;
        let operator = loanflow_platform::settings::operator_for(&state.settings.operators, &token)?;
        let cookie = state.sessions.start_operator(&state.pool, &operator.name).await;
        tracing::info!(security_event = "operator_signed_in", operator = %operator.name, "operator signed in");
        Some(cookie)
    })
    .await
}

/// Checks a sign-in form (its origin, the per-address limit) and the token it carries
/// (`open` starts the session, or finds no one for the token).
async fn enter<F, Fut>(
    door: Door,
    req: &HttpRequest,
    form_data: &HashMap<String, String>,
    state: &AppState,
    open: F,
) -> Result<HttpResponse, ApiError>
where
    F: FnOnce(String) -> Fut,
    Fut: std::future::Future<
        Output = Option<Result<actix_web::cookie::Cookie<'static>, loanflow_platform::db::DbError>>,
    >,
{
    let too_many = |seconds: u64| {
        let message = "Too many failed sign-ins from here. Please wait a moment and try again.";
        let mut page = form_at(door, state, StatusCode::TOO_MANY_REQUESTS, message);
        if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
            page.headers_mut().insert(header::RETRY_AFTER, value);
        }
        page
    };
    if !state.sessions.sign_in_form_ok(req, form_data.get("sign_in")) {
        tracing::warn!(
            security_event = "sign_in_forged",
            "sign-in refused: the form did not come from our sign-in page"
        );
        return Ok(refused());
    }
    if let Err(ApiError::RateLimited(seconds)) = state.limits.before_authenticating(req) {
        return Ok(too_many(seconds));
    }
    let token = form_data.get("token").map(|t| t.trim().to_owned()).unwrap_or_default();
    Ok(match open(token).await {
        Some(cookie) => HttpResponse::SeeOther()
            .cookie(cookie?)
            .cookie(state.sessions.sign_in_token_removal())
            .insert_header((header::LOCATION, door.home))
            .finish(),
        None => match crate::approvals::failed_sign_in(state, req) {
            ApiError::RateLimited(seconds) => too_many(seconds),
            _ => form_at(
                door,
                state,
                StatusCode::UNAUTHORIZED,
                "That token is not valid. Please check it and try again.",
            ),
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
