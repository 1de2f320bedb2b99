//! The approver inbox: what waits at the signed-in approver's levels, oldest first,
//! with what a decision needs, and a form per application to approve or reject with a
//! reason. The decision goes the same way as the API's.

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::json;

use super::sign_in::{self, signed_in};
use super::{page, step_title, words};
use crate::approvals::{self, InboxItem};
use crate::error::ApiError;
use crate::state::AppState;

fn item(item: &InboxItem, csrf: &str, me: &str) -> Markup {
    let r = item.reference.as_str();
    let title_id = format!("title-{r}");
    let reason_id = format!("reason-{r}");
    let mine = format!("approver:{me}");
    let held_by_me = item.claimed_by.as_deref() == Some(mine.as_str());
    let approvals_so_far: Vec<String> = item
        .decisions
        .iter()
        .filter(|d| d.level == item.level && d.outcome == loanflow_domain::Outcome::Approved)
        .map(|d| String::from(d.decided_by.clone()))
        .collect();
    html! {
        article.card aria-labelledby=(title_id) data-reference=(r) data-escalated=(item.escalated) {
            h2 #(title_id) {
                span.reference { (r) }
                @if item.escalated { " " span.badge.failed.overdue { "Overdue: escalated" } }
            }
            p.claim {
                @match (&item.claimed_by, &item.claimed_until) {
                    (Some(_), Some(until)) if held_by_me => { "Claimed by you until " (until) "." }
                    (Some(holder), Some(until)) => { "Claimed by " strong { (holder) } " until " (until) ": only they may decide it." }
                    _ => "Not claimed: claim it before you work on it.",
                }
                form.inline method="post" action={ "/approvals/" (r) "/claim" } {
                    input type="hidden" name="csrf" value=(csrf);
                    @if held_by_me {
                        button.secondary type="submit" name="action" value="renew" { "Renew claim" }
                        " "
                        button.secondary type="submit" name="action" value="release" { "Release" }
                    } @else if item.claimed_by.is_none() {
                        button.secondary type="submit" name="action" value="claim" { "Claim" }
                    }
                }
            }
            @if !approvals_so_far.is_empty() {
                p.dual-control { "Four eyes: approved so far by " (approvals_so_far.join(", ")) "; another approver must decide." }
            }
            dl.facts {
                dt { "Applicant" } dd { (item.applicant_name) }
                dt { "Amount" } dd { (item.currency.code()) " " (item.amount) }
                dt { "Term" } dd { (item.term_months) " months" }
                dt { "Purpose" } dd { (words(&item.purpose)) }
                dt { "Annual income" } dd { (item.annual_income) }
                dt { "Monthly debts" } dd { (item.monthly_debts) }
                dt { "Employment" } dd { (words(&item.employment_status)) }
                dt { "Credit score" } dd { (item.score.map_or_else(|| "—".to_owned(), |s| s.to_string())) }
                dt { "Waiting since" } dd { (item.waiting_since) }
                dt { "Due by" } dd { (item.due_at) }
            }
            h3 { "Earlier decisions" }
            ul {
                @for d in &item.decisions {
                    li { strong { (step_title(&d.level)) } ": " (d.outcome.as_str()) " — " (d.reason) " (" (String::from(d.decided_by.clone())) ")" }
                }
            }
            form method="post" action={ "/approvals/" (r) "/decision" } {
                input type="hidden" name="csrf" value=(csrf);
                div.field {
                    label for=(reason_id) { "Reason (shown to the applicant)" }
                    textarea #(reason_id) name="reason" rows="2" required maxlength="500" {}
                }
                div.actions {
                    button type="submit" name="decision" value="approve" { "Approve" }
                    button.reject type="submit" name="decision" value="reject" { "Reject" }
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct InboxQuery {
    done: Option<String>,
    error: Option<String>,
}

pub(super) async fn show(
    req: HttpRequest,
    query: web::Query<InboxQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(session) = signed_in(&req, &state).await else {
        return Ok(sign_in::form(&state, StatusCode::OK, ""));
    };
    let (approver, csrf) = (&session.approver, session.csrf.as_str());
    let items = approvals::inbox(&state, approver.levels.clone()).await?;
    let body = html! {
        h1 { "Approver inbox" }
        p { "Signed in as " strong #approver-name { (approver.name) } " (levels: " (approver.levels.join(", ")) "). Oldest first." }
        form method="post" action="/approvals/session/end" {
            input type="hidden" name="csrf" value=(csrf);
            button.secondary type="submit" { "Sign out" }
        }
        @if let Some(done) = &query.done {
            div.banner.ok role="status" {
                "Your decision on " span.reference { (done) } " was recorded; it now continues through the chain. "
                a href={ "/loans/" (done) } { "Follow it" } "."
            }
        }
        @if let Some(error) = &query.error { div.banner.bad role="alert" { (error) } }
        div aria-live="polite" {
            @if items.is_empty() {
                p.card { "Nothing is waiting for you. New applications appear here when they need a person's decision." }
            }
            @for i in &items { (item(i, csrf, &approver.name)) }
        }
    };
    Ok(page(StatusCode::OK, "Approver inbox", body))
}

/// The session a form acts for: signed in, and the form carries its CSRF token; else
/// the page to answer with instead.
async fn acting(
    req: &HttpRequest,
    form: &HashMap<String, String>,
    state: &AppState,
) -> Result<crate::sessions::Session, HttpResponse> {
    let Some(session) = signed_in(req, state).await else {
        return Err(sign_in::form(state, StatusCode::UNAUTHORIZED, "Please sign in again."));
    };
    if session.csrf_ok(form.get("csrf")) {
        Ok(session)
    } else {
        Err(sign_in::refused())
    }
}

pub(super) async fn decide(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = match acting(&req, &form, &state).await {
        Ok(session) => session,
        Err(answer) => return Ok(answer),
    };
    let body = json!({"decision": form.get("decision"), "reason": form.get("reason")});
    let outcome = match approvals::parse_decision(&body) {
        Ok((outcome, reason)) => approvals::decide(&state, &session.approver, &path, outcome, reason).await,
        Err(e) => Err(e),
    };
    let back = |name: &str, value: &str| {
        let query = format!("{name}={}", utf8_percent_encode(value, NON_ALPHANUMERIC));
        HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/approvals?{query}"))).finish()
    };
    Ok(match outcome {
        Ok(accepted) => back("done", &accepted.reference),
        Err(ApiError::Validation(_)) => back("error", "Please choose approve or reject and give a reason."),
        Err(ApiError::NotAwaitingDecision) => back("error", "That application is no longer waiting for a decision."),
        Err(ApiError::ClaimedByOther(holder)) => {
            back("error", &format!("{holder} holds that case; only they may decide it."))
        }
        Err(ApiError::AlreadyDecidedByYou) => {
            back("error", "You approved that case already: another approver must decide it.")
        }
        Err(ApiError::Forbidden) => back("error", "You may not decide that level."),
        Err(ApiError::NotFound) => back("error", "No such application."),
        Err(e) => return Err(e),
    })
}

/// Claims, renews or releases a case from the inbox page.
pub(super) async fn claim(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let session = match acting(&req, &form, &state).await {
        Ok(session) => session,
        Err(answer) => return Ok(answer),
    };
    let done = match form.get("action").map(String::as_str) {
        Some("release") => approvals::release(&state, &session.approver, &path).await,
        _ => approvals::claim(&state, &session.approver, &path).await.map(drop),
    };
    let to = match done {
        Ok(()) => "/approvals".to_owned(),
        Err(ApiError::ClaimedByOther(holder)) => {
            let why = format!("{holder} holds that case.");
            format!("/approvals?error={}", utf8_percent_encode(&why, NON_ALPHANUMERIC))
        }
        Err(ApiError::NotAwaitingDecision | ApiError::NotFound | ApiError::Forbidden) => {
            let why = "That application is no longer waiting for you.";
            format!("/approvals?error={}", utf8_percent_encode(why, NON_ALPHANUMERIC))
        }
        Err(e) => return Err(e),
    };
    Ok(HttpResponse::SeeOther().insert_header((header::LOCATION, to)).finish())
}
