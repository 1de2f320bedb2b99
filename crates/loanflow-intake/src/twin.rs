//! The synchronous twin of the chain, for comparison only (`loanflow twin intake`):
//! the intake calls each twin level over HTTP in turn, then the twin ledger, each call
//! carrying the twin's secret, and answers the applicant with the final decision. Same rules (each level runs the same `decide`), same ledger, same status
//! projection; no broker. While a level is down or slow, applicants get errors or
//! wait — which is what the asynchronous chain exists to avoid, and what the
//! benchmark measures.

use std::time::Duration;

use actix_web::HttpResponse;
use chrono::Utc;

use loanflow_domain::messages::{StatusEvent, StepAnswer, StepOutcome};
use loanflow_domain::{DecidedBy, Decision, Outcome, Reference, Status};
use loanflow_platform::db;
use loanflow_platform::db::blocking;
use loanflow_platform::health::Health;
use loanflow_platform::settings::TwinSettings;
use loanflow_platform::shutdown::Running;
use loanflow_platform::{CancellationToken, Settings};

use crate::error::ApiError;
use crate::state::AppState;
use crate::submission::new_work;
use crate::{store, StartError, SCHEMA};

pub struct TwinChain {
    http: reqwest::Client,
    settings: TwinSettings,
}

/// Starts an intake whose `POST /api/loans` runs the synchronous twin: no broker, no
/// outbox relay, no status consumer.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    if !settings.twin.secret.is_set() {
        return Err(StartError::NoTwinSecret);
    }
    let pool = db::migrated_pool(&settings.intake.database, SCHEMA).await?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(settings.twin.timeout_ms))
        .build()
        .map_err(StartError::Client)?;
    let chain = TwinChain { http, settings: settings.twin.clone() };
    let state = AppState::new(pool, &settings, Some(chain));
    let (addr, tasks) = crate::serve(&settings, state, Health::default(), &shutdown)?;
    tracing::info!(%addr, "twin intake listening (levels are called over HTTP)");
    Ok(Running::new(Some(addr), tasks))
}

impl TwinChain {
    fn post(&self, url: String) -> reqwest::RequestBuilder {
        self.http.post(url).bearer_auth(self.settings.secret.expose())
    }
}

async fn project(state: &AppState, reference: &Reference, event: StatusEvent) -> Result<(), ApiError> {
    let reference = reference.clone();
    blocking(&state.pool, move |conn| store::apply_events(conn, [(&reference, &event)])).await?;
    Ok(())
}

/// Progress after `decided` decisions, now.
fn progress(decided: usize, status: Status, current_level: Option<String>) -> StatusEvent {
    StatusEvent::progress(decided, status, current_level, Utc::now())
}

pub async fn submit(state: &AppState, chain: &TwinChain, value: &serde_json::Value) -> Result<HttpResponse, ApiError> {
    let (reference, stored, mut work) = new_work(state, value)?;
    let (key, at) = (reference.clone(), work.submitted_at);
    blocking(&state.pool, move |conn| store::record_application(conn, &key, &stored, at)).await?;

    for level in state.chain.iter() {
        let decided = work.decisions.len();
        let url = chain.settings.level_urls.get(level).cloned().unwrap_or_default();
        let answer = chain.post(format!("{url}/api/steps/{level}")).json(&work).send().await;
        let answer: Option<StepAnswer> = match answer {
            Ok(r) if r.status().is_success() => r.json().await.ok(),
            _ => None,
        };
        let Some(answer) = answer else {
            // The applicant gets an error; the application is left failed.
            project(state, &reference, progress(decided, Status::Failed, Some(level.clone()))).await?;
            return Err(ApiError::StepUnavailable(level.clone()));
        };
        work = answer.work;
        let outcome = match answer.outcome {
            StepOutcome::Approved => Outcome::Approved,
            StepOutcome::Rejected => Outcome::Rejected,
            StepOutcome::AwaitApprover => {
                project(state, &reference, progress(decided, Status::AwaitingApprover, Some(level.clone()))).await?;
                return respond(state, reference).await;
            }
        };
        let decision = Decision {
            level: level.clone(),
            outcome,
            reason: answer.reason.unwrap_or_default(),
            decided_by: DecidedBy::Auto,
            decided_at: Utc::now(),
        };
        work.decisions.push(decision.clone());
        let decided = work.decisions.len();
        if outcome == Outcome::Rejected {
            project(state, &reference, StatusEvent::decided(decision, decided, Status::Rejected, None)).await?;
            return respond(state, reference).await;
        }
        match work.slip.advanced() {
            Some(next) => {
                let current = next.current_level().map(str::to_owned);
                work.slip = next;
                project(state, &reference, StatusEvent::decided(decision, decided, Status::InReview, current)).await?;
            }
            None => return Err(ApiError::StepUnavailable("ledger".into())),
        }
    }

    let decided = work.decisions.len();
    let offer = work.offer.clone();
    let booked = chain.post(format!("{}/api/loans/{reference}", chain.settings.ledger_url)).json(&work).send().await;
    if !booked.is_ok_and(|r| r.status().is_success()) {
        project(state, &reference, progress(decided, Status::Failed, None)).await?;
        return Err(ApiError::StepUnavailable("ledger".into()));
    }
    project(state, &reference, StatusEvent { offer, ..progress(decided, Status::Approved, None) }).await?;
    respond(state, reference).await
}

async fn respond(state: &AppState, reference: Reference) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(crate::status::document(state, reference).await?))
}
