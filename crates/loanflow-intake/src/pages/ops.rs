//! The operations page (`/ops`), for operators (`[[operators]]`; the sandbox's `ops` in
//! development mode), signed in with their token like approvers: applications by status,
//! each queue's backlog and consumers (from the broker's management API, as the
//! operator), throughput and latency over the last minutes as charts, and the dead
//! letters with their replay (written to the audit trail). The live part refreshes
//! itself every few seconds.

use std::collections::HashMap;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup, PreEscaped};

use loanflow_platform::broker::access::{self, QueueFigures};
use loanflow_platform::broker::{step_queue, DEAD_LETTER_QUEUE, STATUS_QUEUE};
use loanflow_platform::db::blocking;
use loanflow_platform::dlq::{self, DeadLetter};

use super::sign_in::{self, form_at, OPERATORS};
use super::{fragment, page};
use crate::error::ApiError;
use crate::operations::{self, Minute, Overview};
use crate::sessions::OperatorSession;
use crate::state::AppState;

async fn signed_in(req: &HttpRequest, state: &AppState) -> Option<OperatorSession> {
    state.sessions.current_operator(req, &state.pool, &state.settings.operators).await
}

/// Everything the live part shows, read now.
struct Figures {
    overview: Overview,
    queues: Result<Vec<QueueFigures>, String>,
    letters: Result<Vec<DeadLetter>, String>,
}

async fn figures(state: &AppState) -> Result<Figures, ApiError> {
    let now = state.clock.now();
    let overview = blocking(&state.pool, move |conn| operations::overview(conn, now)).await?;
    let mut names: Vec<String> = state.chain.iter().map(|l| step_queue(l)).collect();
    names.extend([
        step_queue(loanflow_domain::messages::LEDGER_STEP),
        STATUS_QUEUE.to_owned(),
        DEAD_LETTER_QUEUE.to_owned(),
    ]);
    let settings = &state.settings;
    let (queues, letters) = tokio::join!(access::queue_figures(&settings.broker, &names), dlq::list(settings));
    Ok(Figures { overview, queues: queues.map_err(|e| e.to_string()), letters: letters.map_err(|e| e.to_string()) })
}

/// A line chart of `series` (name, class, one value per minute) as inline SVG.
fn chart(title: &str, unit: &str, minutes: &[Minute], series: &[(&str, &str, Vec<f64>)]) -> Markup {
    let (width, height, pad) = (600.0, 160.0, 30.0);
    let top = series.iter().flat_map(|(_, _, v)| v.iter().copied()).fold(0.0_f64, f64::max).max(1.0);
    let n = minutes.len().max(2) as f64 - 1.0;
    let x = |i: usize| pad + (width - 2.0 * pad) * i as f64 / n;
    let y = |v: f64| height - pad - (height - 2.0 * pad) * v / top;
    let mut svg = format!(
        r#"<svg viewBox="0 0 {width} {height}" role="img" aria-label="{title}" class="chart"><line x1="{pad}" y1="{b}" x2="{r}" y2="{b}" class="axis"/><text x="2" y="{t}" class="tick">{top:.1}</text><text x="2" y="{b}" class="tick">0</text>"#,
        b = height - pad,
        r = width - pad,
        t = pad + 4.0,
    );
    for (_, class, values) in series {
        let points: Vec<String> = values.iter().enumerate().map(|(i, v)| format!("{:.1},{:.1}", x(i), y(*v))).collect();
        svg.push_str(&format!(r#"<polyline class="{class}" fill="none" points="{}"/>"#, points.join(" ")));
    }
    svg.push_str("</svg>");
    html! {
        figure {
            figcaption { (title) " (" (unit) "): "
                @for (name, class, _) in series { span class={ "key " (class) } { (name) } " " }
            }
            // Built above from numbers and fixed words only: nothing to escape.
            (PreEscaped(svg))
        }
    }
}

fn live(figures: &Figures, csrf: &str) -> Markup {
    let minutes = &figures.overview.minutes;
    let per_minute = |f: fn(&Minute) -> f64| minutes.iter().map(f).collect::<Vec<f64>>();
    html! {
        div #live-status data-final="false" data-every="5000" data-fragment="/ops/live" {
            section.card aria-labelledby="statuses-title" {
                h2 #statuses-title { "Applications by status" }
                table #statuses {
                    thead { tr { th { "status" } th { "applications" } } }
                    tbody { @for (status, n) in &figures.overview.statuses { tr data-status=(status) { td { (status) } td { (n) } } } }
                }
            }
            section.card aria-labelledby="queues-title" {
                h2 #queues-title { "Queues" }
                @match &figures.queues {
                    Ok(queues) => table #queues {
                        thead { tr { th { "queue" } th { "messages" } th { "consumers" } } }
                        tbody { @for q in queues { tr data-queue=(q.name) { td { (q.name) } td { (q.messages) } td { (q.consumers) } } } }
                    },
                    Err(e) => p.banner.bad role="alert" { "The broker's figures are unavailable: " (e) },
                }
            }
            section.card aria-labelledby="minutes-title" {
                h2 #minutes-title { "The last " (operations::MINUTES) " minutes" }
                (chart("Throughput", "applications per minute", minutes, &[
                    ("submitted", "submitted", per_minute(|m| m.submitted as f64)),
                    ("final", "finished", per_minute(|m| m.finished as f64)),
                ]))
                (chart("Latency to a final status", "seconds", minutes, &[
                    ("p50", "p50", per_minute(|m| m.p50_seconds.unwrap_or(0.0))),
                    ("p95", "p95", per_minute(|m| m.p95_seconds.unwrap_or(0.0))),
                ]))
            }
            section.card aria-labelledby="letters-title" {
                h2 #letters-title { "Dead letters" }
                @match &figures.letters {
                    Ok(letters) if letters.is_empty() => p { "None." },
                    Ok(letters) => {
                        table #dead-letters {
                            thead { tr { th { "reference" } th { "from" } th { "reason" } th { "attempts" } th { "age (s)" } th {} } }
                            tbody {
                                @for l in letters {
                                    tr data-reference=(l.reference) {
                                        td.reference { (l.reference) } td { (l.origin_queue) } td { (l.reason) } td { (l.attempts) }
                                        td { (l.age_seconds.map_or_else(|| "-".to_owned(), |a| a.to_string())) }
                                        td { form.inline method="post" action="/ops/replay" {
                                            input type="hidden" name="csrf" value=(csrf);
                                            input type="hidden" name="reference" value=(l.reference);
                                            button.secondary type="submit" { "Replay" }
                                        } }
                                    }
                                }
                            }
                        }
                        form method="post" action="/ops/replay" {
                            input type="hidden" name="csrf" value=(csrf);
                            button type="submit" name="all" value="yes" { "Replay all" }
                        }
                    }
                    Err(e) => p.banner.bad role="alert" { "The dead letters are unavailable: " (e) },
                }
            }
        }
    }
}

#[derive(serde::Deserialize)]
pub(super) struct OpsQuery {
    replayed: Option<usize>,
}

pub(super) async fn show(
    req: HttpRequest,
    query: web::Query<OpsQuery>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(session) = signed_in(&req, &state).await else {
        return Ok(form_at(OPERATORS, &state, StatusCode::OK, ""));
    };
    let figures = figures(&state).await?;
    let body = html! {
        h1 { "Operations" }
        p { "Signed in as operator " strong #operator-name { (session.name) } ". This page refreshes itself." }
        form method="post" action="/ops/session/end" {
            input type="hidden" name="csrf" value=(session.csrf);
            button.secondary type="submit" { "Sign out" }
        }
        @if let Some(n) = query.replayed { div.banner.ok role="status" { "Replayed " (n) " dead letter(s)." } }
        (live(&figures, &session.csrf))
    };
    Ok(page(StatusCode::OK, "Operations", body))
}

pub(super) async fn live_part(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let Some(session) = signed_in(&req, &state).await else { return Err(ApiError::Unauthorized) };
    Ok(fragment(StatusCode::OK, live(&figures(&state).await?, &session.csrf)))
}

pub(super) async fn replay(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let Some(session) = signed_in(&req, &state).await else {
        return Ok(form_at(OPERATORS, &state, StatusCode::UNAUTHORIZED, "Please sign in again."));
    };
    if !session.csrf_ok(form.get("csrf")) {
        return Ok(sign_in::refused());
    }
    let reference = form.get("reference").filter(|r| !r.is_empty()).map(String::as_str);
    if reference.is_none() && form.get("all").map(String::as_str) != Some("yes") {
        return Err(ApiError::BadRequest("name a reference, or all".into()));
    }
    let replayed = operations::replay_dead_letters(&state.settings, &state.pool, &session.name, reference)
        .await
        .map_err(|e| ApiError::StepUnavailable(format!("dead-letter replay ({e})")))?;
    tracing::info!(security_event = "dead_letters_replayed", operator = %session.name, replayed, "dead letters replayed");
    Ok(HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/ops?replayed={replayed}"))).finish())
}

pub(super) async fn sign_out(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let to_ops = || HttpResponse::SeeOther().insert_header((header::LOCATION, "/ops")).take();
    let Some(session) = signed_in(&req, &state).await else { return Ok(to_ops().finish()) };
    if !session.csrf_ok(form.get("csrf")) {
        return Ok(sign_in::refused());
    }
    let gone = state.sessions.end_operator(&state.pool, &session).await?;
    Ok(to_ops().cookie(gone).finish())
}
