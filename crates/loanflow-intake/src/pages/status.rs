//! The status page: the confirmation after submitting, then the application's live
//! status — a timeline of the chain with each decision, who made it, when and why,
//! and the offer once approved. The browser re-fetches the live part until it is final.

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use maud::{html, Markup};

use loanflow_domain::{DecidedBy, Decision, Outcome, Reference, Status};
use loanflow_platform::db::blocking;

use super::{fragment, not_found_page, page, step_title, when};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{self, StatusView};

fn label(status: Status) -> &'static str {
    match status {
        Status::Submitted => "Submitted",
        Status::InReview => "In review",
        Status::AwaitingApprover => "Waiting for an approver",
        Status::Approved => "Approved",
        Status::Rejected => "Declined",
        Status::Failed => "Delayed: we are looking into it",
        Status::Withdrawn => "Withdrawn",
    }
}

/// One step of the timeline as shown: its class (for the style) and what it says.
enum Step<'a> {
    Decided(&'a Decision),
    Waiting(&'static str),
    Current,
    Skipped,
    Pending,
}

fn step(level: &str, shown: Step<'_>) -> Markup {
    let class = match &shown {
        Step::Decided(d) => match d.outcome {
            Outcome::Approved => "approved",
            Outcome::Rejected | Outcome::Withdrawn => "rejected",
            Outcome::Escalated => "waiting",
        },
        Step::Waiting(_) => "waiting",
        Step::Current => "current",
        Step::Skipped => "skipped",
        Step::Pending => "pending",
    };
    html! {
        li class=(class) data-level=(level) data-outcome=[match &shown { Step::Decided(d) => Some(d.outcome.as_str()), _ => None }] {
            span.step { (step_title(level)) }
            br;
            @match shown {
                Step::Decided(d) => {
                    (match d.outcome {
                        Outcome::Approved => "Approved",
                        Outcome::Rejected => "Declined",
                        Outcome::Withdrawn => "Withdrawn",
                        Outcome::Escalated => "Escalated",
                    }) " — " (d.reason)
                    br;
                    span.meta {
                        "by "
                        @match &d.decided_by {
                            DecidedBy::Auto => "automatic check",
                            DecidedBy::Applicant => "the applicant",
                            DecidedBy::Approver(name) => { "approver " (name) }
                        }
                        " (" span.decided-by { (String::from(d.decided_by.clone())) } ") · " (when(d.decided_at))
                    }
                }
                Step::Waiting(why) => (why),
                Step::Current => "In progress",
                Step::Skipped => "Not needed",
                Step::Pending => "Waiting for earlier steps",
            }
        }
    }
}

/// The live part of the status page.
fn live(reference: &str, view: &StatusView, chain: &[String]) -> Markup {
    let is_final = view.status.is_final();
    let mut levels: Vec<&str> = chain.iter().map(String::as_str).collect();
    for d in &view.decisions {
        if !levels.contains(&d.level.as_str()) {
            levels.push(&d.level);
        }
    }
    let rejected = view.decisions.iter().any(|d| matches!(d.outcome, Outcome::Rejected | Outcome::Withdrawn));
    // Every entry of a level (two approvals under dual control, an escalation), then
    // what the level is doing now if it still holds the application.
    let shown = |level: &str| {
        let mut steps: Vec<Step<'_>> = view.decisions.iter().filter(|d| d.level == level).map(Step::Decided).collect();
        let verdict = view.decisions.iter().any(|d| d.level == level && d.outcome.is_verdict());
        if view.current_level.as_deref() == Some(level) && !is_final {
            steps.push(match view.status {
                Status::AwaitingApprover if verdict => Step::Waiting("Waiting for a second approver's decision"),
                Status::AwaitingApprover => Step::Waiting("Waiting for an approver's decision"),
                Status::Failed => Step::Waiting("Delayed: this check could not be completed yet"),
                _ => Step::Current,
            });
        } else if steps.is_empty() {
            steps.push(if rejected || is_final { Step::Skipped } else { Step::Pending });
        }
        steps
    };
    let (booking_class, booking) = match view.status {
        Status::Approved => ("approved", "Loan booked"),
        _ if rejected => ("skipped", "Not needed"),
        _ => ("pending", "After approval"),
    };
    html! {
        div #live-status data-final=(is_final) data-fragment={ "/loans/" (reference) "/live" } {
            p aria-live="polite" role="status" {
                "Status: "
                span #status-badge class={ "badge " (view.status.as_str()) } data-status=(view.status.as_str()) { (label(view.status)) }
                " "
                span.meta { "updated " (when(view.updated_at)) }
            }
            @match view.status {
                Status::Approved => div.banner.ok { strong { "Congratulations: your loan is approved and booked." } },
                Status::Rejected => div.banner.bad { strong { "We are sorry: we cannot offer this loan." } " The step that declined it says why." },
                Status::Failed => div.banner.bad { strong { "Your application is delayed." } " Nothing is lost; our team has been alerted and it will continue." },
                Status::Withdrawn => div.banner { strong { "You have withdrawn this application." } " No loan will be booked." },
                _ => {}
            }
            @if view.withdrawing && !is_final {
                p #withdrawal-pending role="status" { "Your withdrawal is being processed." }
            } @else if !is_final {
                p { a.button.secondary #withdraw href={ "/loans/" (reference) "/withdraw" } { "Withdraw this application" } }
            }
            section.card aria-labelledby="steps-title" {
                h2 #steps-title { "Review steps" }
                ol.timeline {
                    @for level in &levels { @for s in shown(level) { (step(level, s)) } }
                    li class=(booking_class) data-level="ledger" { span.step { "Booking" } br; (booking) }
                }
            }
            @if let (Some(o), Status::Approved) = (&view.offer, view.status) {
                section.card aria-labelledby="offer-title" {
                    h2 #offer-title { "Your loan" }
                    dl.facts {
                        dt { "Amount" } dd #offer-amount { "USD " (o.amount) }
                        dt { "Annual rate" } dd #offer-rate { ((o.annual_rate * rust_decimal::Decimal::from(100)).normalize()) "%" }
                        dt { "Term" } dd #offer-term { (o.term_months) " months" }
                        dt { "Monthly payment" } dd #offer-payment { "USD " (o.monthly_payment) }
                    }
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct StatusQuery {
    submitted: Option<String>,
}

async fn load(state: &AppState, reference: &str) -> Result<Option<(Reference, StatusView)>, ApiError> {
    let Ok(reference) = Reference::parse(reference) else { return Ok(None) };
    let lookup = reference.clone();
    let view = blocking(&state.pool, move |conn| store::load_status(conn, &lookup)).await?;
    Ok(view.map(|v| (reference, v)))
}

pub(super) async fn show(
    path: web::Path<String>,
    query: web::Query<StatusQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some((reference, view)) = load(&state, &path).await? else { return Ok(not_found_page(&path)) };
    let r = reference.as_str();
    let body = html! {
        @if query.submitted.is_some() {
            div.banner.ok role="status" {
                h1 { "Thank you: we have your application" }
                p { "Your reference number is" }
                p.reference #reference { (r) }
                p { button.secondary type="button" data-copy=(r) hidden { "Copy reference" } }
                p { "Keep it to follow your application on this page, which updates by itself. Its address: " a href={ "/loans/" (r) } { "/loans/" (r) } "." }
            }
        } @else {
            h1 { "Application " span.reference #reference { (r) } }
        }
        @if !view.status.is_final() {
            noscript { p.hint { "Without JavaScript this page does not update by itself: reload it to see progress." } }
        }
        (live(r, &view, &state.chain))
    };
    Ok(page(StatusCode::OK, &format!("Application {reference}"), body))
}

pub(super) async fn live_part(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some((reference, view)) = load(&state, &path).await? else { return Err(ApiError::NotFound) };
    Ok(fragment(StatusCode::OK, live(reference.as_str(), &view, &state.chain)))
}

/// The confirmation step of a withdrawal: what it means, an optional reason, and the
/// button that does it (a POST; this page itself changes nothing).
pub(super) async fn confirm_withdrawal(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    confirmation(&state, &path, None).await
}

async fn confirmation(state: &AppState, path: &str, error: Option<&str>) -> Result<HttpResponse, ApiError> {
    let Some((reference, view)) = load(state, path).await? else { return Ok(not_found_page(path)) };
    let r = reference.as_str();
    let status = if error.is_some() { StatusCode::UNPROCESSABLE_ENTITY } else { StatusCode::OK };
    let body = html! {
        h1 { "Withdraw application " span.reference { (r) } "?" }
        @if let Some(error) = error { div.banner.bad role="alert" #reason-error { (error) } }
        @if view.status.is_final() {
            div.banner.bad role="alert" { p { "This application is final: it can no longer be withdrawn." } }
            p { a href={ "/loans/" (r) } { "Back to the application" } }
        } @else {
            p { "If you withdraw it, we stop reviewing it and will not book a loan. If the loan was booked a moment before, it stays booked, and this page will say so." }
            form method="post" action={ "/loans/" (r) "/withdraw" } {
                label for="reason" { "Why are you withdrawing? (optional)" }
                textarea #reason name="reason" maxlength="500" rows="3" aria-describedby=[error.map(|_| "reason-error")] {}
                p {
                    button #confirm-withdrawal type="submit" { "Yes, withdraw it" }
                    " "
                    a href={ "/loans/" (r) } { "No, keep my application" }
                }
            }
        }
    };
    Ok(page(status, &format!("Withdraw {reference}"), body))
}

/// The confirmed withdrawal: back to the status page, which shows it being processed.
pub(super) async fn withdraw(
    path: web::Path<String>,
    form: web::Form<std::collections::HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body = serde_json::json!({ "reason": form.get("reason") });
    let done = match crate::withdrawal::parse_reason(Some(&body)) {
        Ok(reason) => crate::withdrawal::request(&state, &path, reason).await.map(drop),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) | Err(ApiError::AlreadyFinal) => {}
        Err(ApiError::Validation(_)) => {
            let why = "The reason may have at most 500 characters, without control characters.";
            return confirmation(&state, &path, Some(why)).await;
        }
        Err(ApiError::NotFound) => return Ok(not_found_page(&path)),
        Err(e) => return Err(e),
    }
    Ok(HttpResponse::SeeOther()
        .insert_header((actix_web::http::header::LOCATION, format!("/loans/{}", path.as_str())))
        .finish())
}
