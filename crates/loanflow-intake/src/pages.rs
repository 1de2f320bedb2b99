//! The web pages: the application form, the confirmation and live status page, and
//! the approver inbox. Rendered on the server (every page works without JavaScript;
//! `static/app.js` adds live updates and browser-side checks) and escaped here, in
//! one place. Forms submit to the same code paths as the JSON API.

use std::collections::{BTreeMap, HashMap};

use actix_web::http::header::{self, ContentType};
use actix_web::{web, HttpRequest, HttpResponse};
use rand::RngCore;
use serde_json::{json, Value};

use loanflow_domain::application::{MAX_TERM_MONTHS, MIN_TERM_MONTHS};
use loanflow_domain::{Outcome, Reference, Status};
use loanflow_platform::db::blocking;

use crate::api::AppState;
use crate::approvals::{self, InboxItem};
use crate::error::ApiError;
use crate::sessions::Session;
use crate::store::{self, StatusView};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/", web::post().to(submit_form))
        .route("/track", web::get().to(track))
        .route("/loans/{reference}", web::get().to(status_page))
        .route("/loans/{reference}/live", web::get().to(status_fragment))
        .route("/approvals", web::get().to(inbox_page))
        .route("/approvals/session", web::post().to(sign_in))
        .route("/approvals/session/end", web::post().to(sign_out))
        .route("/approvals/{reference}/decision", web::post().to(decide_form))
        .route("/static/app.css", web::get().to(css))
        .route("/static/app.js", web::get().to(js));
}

async fn css() -> HttpResponse {
    HttpResponse::Ok().content_type("text/css; charset=utf-8").body(include_str!("../static/app.css"))
}

async fn js() -> HttpResponse {
    HttpResponse::Ok().content_type("text/javascript; charset=utf-8").body(include_str!("../static/app.js"))
}

/// HTML-escapes text for element content and quoted attributes.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

fn page(status: actix_web::http::StatusCode, title: &str, body: &str) -> HttpResponse {
    let html = format!(
        r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · loanflow</title>
<link rel="stylesheet" href="/static/app.css">
<script src="/static/app.js" defer></script>
</head>
<body>
<a class="skip" href="#main">Skip to content</a>
<header class="site"><div class="inner"><a href="/">loanflow bank</a>
<nav aria-label="Main"><a href="/">Apply</a><a href="/#track">Track an application</a><a href="/approvals">Approver inbox</a></nav></div></header>
<main id="main">
{body}
</main>
</body>
</html>"##,
        title = esc(title)
    );
    HttpResponse::build(status).content_type(ContentType::html()).body(html)
}

// ------------------------------------------------------------------ the form

/// One input of the application form, named by its JSON path.
struct Input {
    path: &'static str,
    label: &'static str,
    kind: Kind,
    hint: &'static str,
}

enum Kind {
    Text { input_type: &'static str, autocomplete: &'static str, pattern: Option<&'static str>, mode: &'static str },
    Choice(&'static [(&'static str, &'static str)]),
}

const MONEY_PATTERN: &str = r"\d{1,15}(\.\d{1,2})?";
const MONEY_HINT: &str = "Digits, optionally a point and one or two decimals, e.g. 25000 or 25000.00";

const INPUTS: &[Input] = &[
    Input {
        path: "applicant.full_name",
        label: "Full name",
        kind: Kind::Text { input_type: "text", autocomplete: "name", pattern: None, mode: "text" },
        hint: "As on your identity document.",
    },
    Input {
        path: "applicant.email",
        label: "Email",
        kind: Kind::Text { input_type: "email", autocomplete: "email", pattern: None, mode: "email" },
        hint: "We send updates about your application here.",
    },
    Input {
        path: "applicant.national_id",
        label: "National ID",
        kind: Kind::Text { input_type: "text", autocomplete: "off", pattern: Some("[A-Z0-9]{6,20}"), mode: "text" },
        hint: "6 to 20 capital letters and digits.",
    },
    Input {
        path: "applicant.date_of_birth",
        label: "Date of birth",
        kind: Kind::Text { input_type: "date", autocomplete: "bday", pattern: None, mode: "numeric" },
        hint: "You must be 18 or older to borrow.",
    },
    Input {
        path: "applicant.annual_income",
        label: "Annual income (USD)",
        kind: Kind::Text { input_type: "text", autocomplete: "off", pattern: Some(MONEY_PATTERN), mode: "decimal" },
        hint: MONEY_HINT,
    },
    Input {
        path: "applicant.monthly_debts",
        label: "Monthly debt payments (USD)",
        kind: Kind::Text { input_type: "text", autocomplete: "off", pattern: Some(MONEY_PATTERN), mode: "decimal" },
        hint: "What you pay each month on other loans and cards; 0 if none.",
    },
    Input {
        path: "applicant.employment_status",
        label: "Employment",
        kind: Kind::Choice(&[
            ("employed", "Employed"),
            ("self_employed", "Self-employed"),
            ("unemployed", "Unemployed"),
            ("retired", "Retired"),
            ("student", "Student"),
        ]),
        hint: "",
    },
    Input {
        path: "amount",
        label: "Loan amount (USD)",
        kind: Kind::Text { input_type: "text", autocomplete: "off", pattern: Some(MONEY_PATTERN), mode: "decimal" },
        hint: "From 500.00 to 1000000.00.",
    },
    Input { path: "currency", label: "Currency", kind: Kind::Choice(&[("USD", "US dollar (USD)")]), hint: "" },
    Input {
        path: "term_months",
        label: "Term (months)",
        kind: Kind::Text { input_type: "number", autocomplete: "off", pattern: None, mode: "numeric" },
        hint: "From 6 to 360 months.",
    },
    Input {
        path: "purpose",
        label: "Purpose",
        kind: Kind::Choice(&[
            ("home_improvement", "Home improvement"),
            ("car", "Car"),
            ("education", "Education"),
            ("debt_consolidation", "Debt consolidation"),
            ("medical", "Medical"),
            ("other", "Other"),
        ]),
        hint: "",
    },
];

fn field_id(path: &str) -> String {
    path.replace('.', "-")
}

fn render_form(values: &HashMap<String, String>, errors: &BTreeMap<String, String>, key: &str) -> String {
    let mut fields = String::new();
    for input in INPUTS {
        let id = field_id(input.path);
        let value = values.get(input.path).map(String::as_str).unwrap_or("");
        let error = errors.get(input.path);
        let invalid = if error.is_some() { "true" } else { "false" };
        let described = if input.hint.is_empty() { format!("{id}-error") } else { format!("{id}-hint {id}-error") };
        let control = match &input.kind {
            Kind::Text { input_type, autocomplete, pattern, mode } => {
                let pattern_attr = pattern.map(|p| format!(r##" pattern="{}""##, esc(p))).unwrap_or_default();
                let range = if input.path == "term_months" {
                    format!(r##" min="{MIN_TERM_MONTHS}" max="{MAX_TERM_MONTHS}" step="1""##)
                } else {
                    String::new()
                };
                format!(
                    r##"<input id="{id}" name="{name}" type="{input_type}" value="{value}" required autocomplete="{autocomplete}" inputmode="{mode}"{pattern_attr}{range} data-format="{format}" aria-describedby="{described}" aria-invalid="{invalid}">"##,
                    name = input.path,
                    value = esc(value),
                    format = esc(if input.hint.is_empty() { "Please check this field." } else { input.hint }),
                )
            }
            Kind::Choice(choices) => {
                let mut options = String::from(r##"<option value="">Choose…</option>"##);
                for (v, label) in choices.iter() {
                    let selected =
                        if *v == value || (choices.len() == 1 && value.is_empty()) { " selected" } else { "" };
                    options.push_str(&format!(r##"<option value="{v}"{selected}>{label}</option>"##));
                }
                format!(
                    r##"<select id="{id}" name="{name}" required aria-describedby="{described}" aria-invalid="{invalid}">{options}</select>"##,
                    name = input.path
                )
            }
        };
        let hint = if input.hint.is_empty() {
            String::new()
        } else {
            format!(r##"<span class="hint" id="{id}-hint">{}</span>"##, esc(input.hint))
        };
        fields.push_str(&format!(
            r##"<div class="field"><label for="{id}">{label}</label>{control}{hint}<span class="error" id="{id}-error" aria-live="polite">{error}</span></div>"##,
            label = esc(input.label),
            error = esc(error.map(String::as_str).unwrap_or("")),
        ));
    }
    let summary = if errors.is_empty() {
        String::new()
    } else {
        format!("Please correct {} highlighted field(s).", errors.len())
    };
    format!(
        r##"<h1>Apply for a loan</h1>
<p>Tell us about yourself and the loan you need. You get a reference number at once; we review your application in the background and you can follow every step.</p>
<form id="application-form" class="card" method="post" action="/" aria-describedby="form-errors">
<p id="form-errors" class="error" role="alert" aria-live="assertive">{summary}</p>
<input type="hidden" name="idempotency_key" value="{key}">
<fieldset class="grid plain"><legend class="hint">All fields are required.</legend>
{fields}
</fieldset>
<div class="actions"><button type="submit">Submit application</button></div>
</form>
<section id="track" class="card" aria-labelledby="track-title">
<h2 id="track-title">Track an application</h2>
<form class="track" method="get" action="/track">
<label for="track-reference" class="skip">Reference number</label>
<input id="track-reference" name="reference" placeholder="LN-…" autocomplete="off" required aria-label="Reference number">
<button type="submit">Track</button>
</form>
</section>"##,
        summary = esc(&summary),
        key = esc(key),
    )
}

async fn home() -> HttpResponse {
    page(
        actix_web::http::StatusCode::OK,
        "Apply for a loan",
        &render_form(&HashMap::new(), &BTreeMap::new(), &random_hex(16)),
    )
}

/// The form's fields as the API's JSON body.
fn form_to_json(form: &HashMap<String, String>) -> Value {
    let get = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let term = get("term_months");
    json!({
        "applicant": {
            "full_name": get("applicant.full_name"),
            "email": get("applicant.email"),
            "national_id": get("applicant.national_id"),
            "date_of_birth": get("applicant.date_of_birth"),
            "annual_income": get("applicant.annual_income"),
            "monthly_debts": get("applicant.monthly_debts"),
            "employment_status": get("applicant.employment_status"),
        },
        "amount": get("amount"),
        "currency": get("currency"),
        "term_months": term.parse::<u64>().map(Value::from).unwrap_or(Value::String(term)),
        "purpose": get("purpose"),
    })
}

async fn submit_form(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.limits.submission(&req)?;
    let form = form.into_inner();
    let key = form.get("idempotency_key").filter(|k| crate::api::valid_idempotency_key(k.as_bytes())).cloned();
    match crate::api::accept(&state, &form_to_json(&form), key.clone()).await {
        Ok(reference) => Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/loans/{reference}?submitted=1")))
            .finish()),
        Err(ApiError::Validation(errors)) => {
            let key = key.unwrap_or_else(|| random_hex(16));
            let body = render_form(&form, &errors, &key);
            Ok(page(actix_web::http::StatusCode::UNPROCESSABLE_ENTITY, "Please check your application", &body))
        }
        Err(e) => Err(e),
    }
}

#[derive(serde::Deserialize)]
struct TrackQuery {
    reference: String,
}

async fn track(query: web::Query<TrackQuery>) -> HttpResponse {
    let wanted = query.reference.trim().to_uppercase();
    match Reference::parse(&wanted) {
        Ok(r) => HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/loans/{r}"))).finish(),
        Err(_) => not_found_page(&wanted),
    }
}

fn not_found_page(reference: &str) -> HttpResponse {
    page(
        actix_web::http::StatusCode::NOT_FOUND,
        "Application not found",
        &format!(
            r##"<h1>Application not found</h1><div class="banner bad" role="alert"><p>We found no application with the reference <span class="reference">{}</span>. Please check it and try again.</p></div><p><a href="/#track">Track another application</a></p>"##,
            esc(reference)
        ),
    )
}

// ------------------------------------------------------------------ status

fn status_label(status: Status) -> &'static str {
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

/// How a step is named to people.
fn step_title(level: &str) -> String {
    match level {
        "kyc" => "Identity check (KYC)".to_owned(),
        "credit" => "Credit check".to_owned(),
        "underwriting" => "Underwriting".to_owned(),
        "manager" => "Manager approval".to_owned(),
        other => other.replace('_', " "),
    }
}

fn when(t: chrono::DateTime<chrono::Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The live part of the status page, re-fetched by the browser until it is final.
fn render_status(reference: &str, view: &StatusView, chain: &[String]) -> String {
    let is_final = view.status.is_final();
    let mut steps = String::new();
    let mut levels: Vec<String> = chain.to_vec();
    for d in &view.decisions {
        if !levels.contains(&d.level) {
            levels.push(d.level.clone());
        }
    }
    let rejected = view.decisions.iter().any(|d| d.outcome == Outcome::Rejected);
    for level in &levels {
        let (class, text) = if let Some(d) = view.decisions.iter().find(|d| &d.level == level) {
            let by = match &d.decided_by {
                loanflow_domain::DecidedBy::Auto => "automatic check".to_owned(),
                loanflow_domain::DecidedBy::Approver(name) => format!("approver {name}"),
            };
            let outcome = if d.outcome == Outcome::Approved { "Approved" } else { "Declined" };
            (
                if d.outcome == Outcome::Approved { "approved" } else { "rejected" },
                format!(
                    r##"{outcome} — {reason}<br><span class="meta">by {by} (<span class="decided-by">{raw}</span>) · {at}</span>"##,
                    reason = esc(&d.reason),
                    by = esc(&by),
                    raw = esc(&String::from(d.decided_by.clone())),
                    at = when(d.decided_at)
                ),
            )
        } else if view.current_level.as_deref() == Some(level.as_str()) {
            if view.status == Status::AwaitingApprover {
                ("waiting", "Waiting for an approver's decision".to_owned())
            } else if view.status == Status::Failed {
                ("waiting", "Delayed: this check could not be completed yet".to_owned())
            } else {
                ("current", "In progress".to_owned())
            }
        } else if rejected || is_final {
            ("skipped", "Not needed".to_owned())
        } else {
            ("pending", "Waiting for earlier steps".to_owned())
        };
        steps.push_str(&format!(
            r##"<li class="{class}" data-level="{level}"><span class="step">{title}</span><br>{text}</li>"##,
            level = esc(level),
            title = esc(&step_title(level)),
        ));
    }
    let booked = match view.status {
        Status::Approved => ("approved", "Loan booked"),
        _ if rejected => ("skipped", "Not needed"),
        _ => ("pending", "After approval"),
    };
    steps.push_str(&format!(
        r##"<li class="{}" data-level="ledger"><span class="step">Booking</span><br>{}</li>"##,
        booked.0, booked.1
    ));
    let offer = match (&view.offer, view.status) {
        (Some(o), Status::Approved) => format!(
            r##"<section class="card" aria-labelledby="offer-title"><h2 id="offer-title">Your loan</h2><dl class="facts">
<dt>Amount</dt><dd id="offer-amount">USD {amount}</dd>
<dt>Annual rate</dt><dd id="offer-rate">{rate}%</dd>
<dt>Term</dt><dd id="offer-term">{term} months</dd>
<dt>Monthly payment</dt><dd id="offer-payment">USD {payment}</dd></dl></section>"##,
            amount = o.amount,
            rate = (o.annual_rate * rust_decimal::Decimal::from(100)).normalize(),
            term = o.term_months,
            payment = o.monthly_payment
        ),
        _ => String::new(),
    };
    let closing = match view.status {
        Status::Approved => {
            r##"<div class="banner ok"><strong>Congratulations: your loan is approved and booked.</strong></div>"##
        }
        Status::Rejected => {
            r##"<div class="banner bad"><strong>We are sorry: we cannot offer this loan.</strong> The step that declined it says why.</div>"##
        }
        Status::Failed => {
            r##"<div class="banner bad"><strong>Your application is delayed.</strong> Nothing is lost; our team has been alerted and it will continue.</div>"##
        }
        _ => "",
    };
    format!(
        r##"<div id="live-status" data-final="{is_final}" data-fragment="/loans/{reference}/live">
<p aria-live="polite" role="status">Status: <span class="badge {code}" id="status-badge" data-status="{code}">{label}</span> <span class="meta">updated {updated}</span></p>
{closing}
<section class="card" aria-labelledby="steps-title"><h2 id="steps-title">Review steps</h2><ol class="timeline">{steps}</ol></section>
{offer}
</div>"##,
        reference = esc(reference),
        code = view.status.as_str(),
        label = status_label(view.status),
        updated = when(view.updated_at),
    )
}

#[derive(serde::Deserialize)]
struct StatusQuery {
    submitted: Option<String>,
}

async fn load(state: &AppState, reference: &str) -> Result<Option<(Reference, StatusView)>, ApiError> {
    let Ok(reference) = Reference::parse(reference) else { return Ok(None) };
    let lookup = reference.clone();
    let view = blocking(&state.pool, move |conn| store::load_status(conn, &lookup)).await?;
    Ok(view.map(|v| (reference, v)))
}

async fn status_page(
    path: web::Path<String>,
    query: web::Query<StatusQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some((reference, view)) = load(&state, &path).await? else { return Ok(not_found_page(&path)) };
    let confirmation = if query.submitted.is_some() {
        format!(
            r##"<div class="banner ok" role="status"><h1>Thank you: we have your application</h1>
<p>Your reference number is</p><p class="reference" id="reference">{r}</p>
<p><button type="button" class="secondary" data-copy="{r}" hidden>Copy reference</button></p>
<p>Keep it to follow your application on this page, which updates by itself. Its address: <a href="/loans/{r}">/loans/{r}</a>.</p></div>"##,
            r = esc(reference.as_str())
        )
    } else {
        format!(r##"<h1>Application <span class="reference" id="reference">{}</span></h1>"##, esc(reference.as_str()))
    };
    let noscript = if view.status.is_final() {
        ""
    } else {
        r##"<noscript><p class="hint">Without JavaScript this page does not update by itself: reload it to see progress.</p></noscript>"##
    };
    let body = format!("{confirmation}{noscript}{}", render_status(reference.as_str(), &view, &state.chain));
    Ok(page(actix_web::http::StatusCode::OK, &format!("Application {reference}"), &body))
}

async fn status_fragment(path: web::Path<String>, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some((reference, view)) = load(&state, &path).await? else { return Err(ApiError::NotFound) };
    Ok(HttpResponse::Ok()
        .content_type(ContentType::html())
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(render_status(reference.as_str(), &view, &state.chain)))
}

// ------------------------------------------------------------------ approver inbox

async fn signed_in(req: &HttpRequest, state: &AppState) -> Option<Session> {
    state.sessions.current(req, &state.pool, &state.approvers).await
}

/// The sign-in form, with a fresh pre-session token (against login CSRF).
fn sign_in_page(state: &AppState, status: actix_web::http::StatusCode, error: &str) -> HttpResponse {
    let error_html = if error.is_empty() {
        String::new()
    } else {
        format!(r##"<div class="banner bad" role="alert">{}</div>"##, esc(error))
    };
    let (token, cookie) = state.sessions.sign_in_token();
    let mut response = page(
        status,
        "Approver sign-in",
        &format!(
            r##"<h1>Approver sign-in</h1>{error_html}
<form class="card" method="post" action="/approvals/session">
<input type="hidden" name="sign_in" value="{token}">
<div class="field"><label for="token">Approver token</label>
<input id="token" name="token" type="password" required autocomplete="current-password" aria-describedby="token-hint">
<span class="hint" id="token-hint">The token your bank issued to you. It names you and the levels you may decide.</span></div>
<div class="actions"><button type="submit">Sign in</button></div></form>"##,
            token = esc(&token),
        ),
    );
    if response.add_cookie(&cookie).is_err() {
        tracing::warn!("the sign-in cookie could not be set");
    }
    response
}

fn refused_form() -> HttpResponse {
    page(
        actix_web::http::StatusCode::FORBIDDEN,
        "Request refused",
        r##"<h1>Request refused</h1><p>This form was not sent from this site's own page. <a href="/approvals">Back to the inbox</a>.</p>"##,
    )
}

#[derive(serde::Deserialize)]
struct InboxQuery {
    done: Option<String>,
    error: Option<String>,
}

fn render_item(item: &InboxItem, csrf: &str) -> String {
    let s = |v: &Value| v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string());
    let decisions: String = item
        .decisions
        .iter()
        .map(|d| {
            format!(
                "<li><strong>{}</strong>: {} — {}</li>",
                esc(&step_title(&s(&d["level"]))),
                esc(&s(&d["outcome"])),
                esc(&s(&d["reason"]))
            )
        })
        .collect();
    let r = esc(&item.reference);
    format!(
        r##"<article class="card" aria-labelledby="title-{r}" data-reference="{r}">
<h2 id="title-{r}"><span class="reference">{r}</span></h2>
<dl class="facts">
<dt>Applicant</dt><dd>{name}</dd>
<dt>Amount</dt><dd>{currency} {amount}</dd>
<dt>Term</dt><dd>{term} months</dd>
<dt>Purpose</dt><dd>{purpose}</dd>
<dt>Annual income</dt><dd>{income}</dd>
<dt>Monthly debts</dt><dd>{debts}</dd>
<dt>Employment</dt><dd>{employment}</dd>
<dt>Credit score</dt><dd>{score}</dd>
<dt>Waiting since</dt><dd>{since}</dd>
</dl>
<h3>Earlier decisions</h3><ul>{decisions}</ul>
<form method="post" action="/approvals/{r}/decision">
<input type="hidden" name="csrf" value="{csrf}">
<div class="field"><label for="reason-{r}">Reason (shown to the applicant)</label>
<textarea id="reason-{r}" name="reason" rows="2" required maxlength="500"></textarea></div>
<div class="actions"><button type="submit" name="decision" value="approve">Approve</button>
<button type="submit" name="decision" value="reject" class="reject">Reject</button></div>
</form></article>"##,
        name = esc(&s(&item.applicant_name)),
        currency = esc(&s(&item.currency)),
        amount = esc(&s(&item.amount)),
        term = esc(&s(&item.term_months)),
        purpose = esc(&s(&item.purpose).replace('_', " ")),
        income = esc(&s(&item.annual_income)),
        debts = esc(&s(&item.monthly_debts)),
        employment = esc(&s(&item.employment_status).replace('_', " ")),
        score = item.score.map(|v| v.to_string()).unwrap_or_else(|| "—".into()),
        since = esc(&item.waiting_since),
        csrf = esc(csrf),
    )
}

async fn inbox_page(
    req: HttpRequest,
    query: web::Query<InboxQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(session) = signed_in(&req, &state).await else {
        return Ok(sign_in_page(&state, actix_web::http::StatusCode::OK, ""));
    };
    let (approver, csrf) = (&session.approver, session.csrf.as_str());
    let items = approvals::inbox(&state, approver.levels.clone()).await?;
    let mut flash = String::new();
    if let Some(done) = &query.done {
        flash = format!(
            r##"<div class="banner ok" role="status">Your decision on <span class="reference">{}</span> was recorded; it now continues through the chain. <a href="/loans/{0}">Follow it</a>.</div>"##,
            esc(done)
        );
    }
    if let Some(error) = &query.error {
        flash.push_str(&format!(r##"<div class="banner bad" role="alert">{}</div>"##, esc(error)));
    }
    let list = if items.is_empty() {
        r##"<p class="card">Nothing is waiting for you. New applications appear here when they need a person's decision.</p>"##.to_owned()
    } else {
        items.iter().map(|i| render_item(i, csrf)).collect()
    };
    let body = format!(
        r##"<h1>Approver inbox</h1>
<p>Signed in as <strong id="approver-name">{name}</strong> (levels: {levels}). Oldest first.</p>
<form method="post" action="/approvals/session/end"><input type="hidden" name="csrf" value="{csrf}"><button type="submit" class="secondary">Sign out</button></form>
{flash}<div aria-live="polite">{list}</div>"##,
        name = esc(&approver.name),
        levels = esc(&approver.levels.join(", ")),
        csrf = esc(csrf),
    );
    Ok(page(actix_web::http::StatusCode::OK, "Approver inbox", &body))
}

async fn sign_in(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let too_many = |seconds: u64| {
        let mut page = sign_in_page(
            &state,
            actix_web::http::StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins from here. Please wait a moment and try again.",
        );
        if let Ok(value) = header::HeaderValue::from_str(&seconds.to_string()) {
            page.headers_mut().insert(header::RETRY_AFTER, value);
        }
        page
    };
    if !state.sessions.sign_in_form_ok(&req, form.get("sign_in")) {
        tracing::warn!(
            security_event = "sign_in_forged",
            "sign-in refused: the form did not come from our sign-in page"
        );
        return Ok(refused_form());
    }
    if let Err(ApiError::RateLimited(seconds)) = state.limits.before_authenticating(&req) {
        return Ok(too_many(seconds));
    }
    let token = form.get("token").map(|t| t.trim().to_owned()).unwrap_or_default();
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
        None => match state.limits.failed_authentication(&req) {
            ApiError::RateLimited(seconds) => too_many(seconds),
            _ => sign_in_page(
                &state,
                actix_web::http::StatusCode::UNAUTHORIZED,
                "That token is not valid. Please check it and try again.",
            ),
        },
    })
}

async fn sign_out(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let to_inbox = || HttpResponse::SeeOther().insert_header((header::LOCATION, "/approvals")).take();
    let Some(session) = signed_in(&req, &state).await else { return Ok(to_inbox().finish()) };
    if !session.csrf_ok(form.get("csrf")) {
        return Ok(refused_form());
    }
    let gone = state.sessions.end(&state.pool, &session).await?;
    tracing::info!(security_event = "approver_signed_out", approver = %session.approver.name, "approver signed out");
    Ok(to_inbox().cookie(gone).finish())
}

async fn decide_form(
    req: HttpRequest,
    path: web::Path<String>,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(session) = signed_in(&req, &state).await else {
        return Ok(sign_in_page(&state, actix_web::http::StatusCode::UNAUTHORIZED, "Please sign in again."));
    };
    if !session.csrf_ok(form.get("csrf")) {
        return Ok(refused_form());
    }
    let approver = &session.approver;
    let body = json!({"decision": form.get("decision"), "reason": form.get("reason")});
    let back = |query: String| {
        HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/approvals?{query}"))).finish()
    };
    let outcome = match approvals::parse_decision(&body) {
        Ok((outcome, reason)) => approvals::decide(&state, approver, &path, outcome, reason).await,
        Err(e) => Err(e),
    };
    let encode = |s: &str| {
        s.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect::<String>()
    };
    Ok(match outcome {
        Ok(accepted) => back(format!("done={}", encode(&accepted.reference))),
        Err(ApiError::Validation(_)) => {
            back(format!("error={}", encode("Please choose approve or reject and give a reason.")))
        }
        Err(ApiError::NotAwaitingDecision) => {
            back(format!("error={}", encode("That application is no longer waiting for a decision.")))
        }
        Err(ApiError::Forbidden) => back(format!("error={}", encode("You may not decide that level."))),
        Err(ApiError::NotFound) => back(format!("error={}", encode("No such application."))),
        Err(e) => return Err(e),
    })
}
