//! The web pages, one module per screen: the application form ([`form`]), the
//! confirmation and live status page ([`status`]), approver sign-in ([`sign_in`]) and
//! the approver inbox ([`inbox`]). Rendered on the server from maud templates, which
//! escape every insertion unless told otherwise, from typed view models (every page
//! works without JavaScript; `static/app.js` adds live updates and browser-side checks).
//! Forms submit to the same code paths as the JSON API.

use actix_web::http::header::ContentType;
use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use maud::{html, Markup, DOCTYPE};

mod form;
mod inbox;
mod ops;
mod sign_in;
mod status;

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(form::home))
        .route("/", web::post().to(form::submit))
        .route("/track", web::get().to(form::track))
        .route("/loans/{reference}", web::get().to(status::show))
        .route("/loans/{reference}/live", web::get().to(status::live_part))
        .route("/loans/{reference}/withdraw", web::get().to(status::confirm_withdrawal))
        .route("/loans/{reference}/withdraw", web::post().to(status::withdraw))
        .route("/approvals", web::get().to(inbox::show))
        .route("/approvals/session", web::post().to(sign_in::sign_in))
        .route("/approvals/session/end", web::post().to(sign_in::sign_out))
        .route("/approvals/{reference}/decision", web::post().to(inbox::decide))
        .route("/approvals/{reference}/claim", web::post().to(inbox::claim))
        .route("/ops", web::get().to(ops::show))
        .route("/ops/live", web::get().to(ops::live_part))
        .route("/ops/session", web::post().to(sign_in::operator_sign_in))
        .route("/ops/session/end", web::post().to(ops::sign_out))
        .route("/ops/replay", web::post().to(ops::replay))
        .route("/static/app.css", web::get().to(css))
        .route("/static/app.js", web::get().to(js));
}

async fn css() -> HttpResponse {
    HttpResponse::Ok().content_type("text/css; charset=utf-8").body(include_str!("../../static/app.css"))
}

async fn js() -> HttpResponse {
    HttpResponse::Ok().content_type("text/javascript; charset=utf-8").body(include_str!("../../static/app.js"))
}

/// Every page's frame around `body`.
fn page(status: StatusCode, title: &str, body: Markup) -> HttpResponse {
    let html = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · loanflow" }
                link rel="stylesheet" href="/static/app.css";
                script src="/static/app.js" defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.site {
                    div.inner {
                        a href="/" { "loanflow bank" }
                        nav aria-label="Main" {
                            a href="/" { "Apply" }
                            a href="/#track" { "Track an application" }
                            a href="/approvals" { "Approver inbox" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    };
    fragment(status, html)
}

/// A bare piece of HTML (what the live status page re-fetches).
fn fragment(status: StatusCode, html: Markup) -> HttpResponse {
    HttpResponse::build(status).content_type(ContentType::html()).body(html.into_string())
}

fn not_found_page(reference: &str) -> HttpResponse {
    page(
        StatusCode::NOT_FOUND,
        "Application not found",
        html! {
            h1 { "Application not found" }
            div.banner.bad role="alert" {
                p { "We found no application with the reference " span.reference { (reference) } ". Please check it and try again." }
            }
            p { a href="/#track" { "Track another application" } }
        },
    )
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

/// A snake_case choice (`home_improvement`) as words.
fn words<T: serde::Serialize>(choice: &T) -> String {
    serde_json::to_value(choice).ok().and_then(|v| v.as_str().map(|s| s.replace('_', " "))).unwrap_or_default()
}
