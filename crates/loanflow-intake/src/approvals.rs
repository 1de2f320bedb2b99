//! The human approval level's service: who an approver is, what waits for them, and
//! their decisions; the API (`api::approvals`) and the inbox page call it. A decision does not change anything here directly: it is handed to the
//! level through the outbox, and the level announces it like any other decision.

use std::sync::Arc;

use serde::Serialize;
use serde_json::Value;

use loanflow_domain::application::{Currency, EmploymentStatus, Purpose};
use loanflow_domain::messages::{ApproverDecision, Envelope, WorkMessage};
use loanflow_domain::{Application, Decision, Money, Outcome, Reference, Status};
use loanflow_platform::audit::{self, Act};
use loanflow_platform::broker::WORK_EXCHANGE;
use loanflow_platform::db::{blocking, DbError};
use loanflow_platform::settings::ApproverSettings;

use crate::cases;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{self, OutboxMessage, Waiting};

/// The most characters a decision's reason may have.
const MAX_REASON_CHARS: usize = 500;

/// A signed-in approver.
#[derive(Debug, Clone)]
pub struct Approver {
    pub name: String,
    pub levels: Vec<String>,
}

/// Finds the approver a token belongs to. Configuration holds only each token's
/// digest; every one is compared, each in constant time, so the answer's timing does
/// not tell how close a guess was.
pub fn authenticate(approvers: &[ApproverSettings], token: &str) -> Option<Approver> {
    let mut found = None;
    for approver in approvers {
        if approver.token_sha256.matches(token) {
            found = Some(Approver { name: approver.name.clone(), levels: approver.levels.clone() });
        }
    }
    found
}

/// A failed approver authentication (a missing or unknown token, on the API or the
/// sign-in page), counted towards the per-address limit and written to the audit trail.
/// The audit row is written beside the request, not in its way: the answer (401 or 429)
/// does not wait for it.
pub fn failed_sign_in(state: &AppState, req: &actix_web::HttpRequest) -> ApiError {
    let answer = state.limits.failed_authentication(req);
    let client = state.limits.client(req).map_or_else(|| "unknown".to_owned(), |ip| ip.to_string());
    let (pool, now) = (state.pool.clone(), state.clock.now());
    tokio::spawn(async move {
        let actor = format!("client:{client}");
        let written = blocking(&pool, move |conn| {
            let act = Act { actor: &actor, action: "sign_in_failed", reference: None, detail: serde_json::json!({}) };
            audit::record(conn, &act, now)
        })
        .await;
        if let Err(e) = written {
            tracing::warn!(error = %e, "a failed sign-in could not be written to the audit trail");
        }
    });
    answer
}

/// The approver of that name as configured now (a session outlives no removal).
pub fn by_name(approvers: &[ApproverSettings], name: &str) -> Option<Approver> {
    // A name with a colon is no approver's (`operator:<name>` names an operator's session).
    if name.contains(':') {
        return None;
    }
    approvers.iter().find(|a| a.name == name).map(|a| Approver { name: a.name.clone(), levels: a.levels.clone() })
}

/// One application in an approver's inbox: the API's item and the inbox page's view.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct InboxItem {
    pub reference: String,
    pub level: String,
    pub amount: Money,
    pub currency: Currency,
    pub term_months: u16,
    pub purpose: Purpose,
    pub applicant_name: String,
    pub annual_income: Money,
    pub monthly_debts: Money,
    pub employment_status: EmploymentStatus,
    pub score: Option<i32>,
    #[schema(format = DateTime)]
    pub waiting_since: String,
    /// When it is (or was) due for escalation.
    #[schema(format = DateTime)]
    pub due_at: String,
    pub escalated: bool,
    pub claimed_by: Option<String>,
    #[schema(format = DateTime)]
    pub claimed_until: Option<String>,
    pub decisions: Vec<Decision>,
}

impl InboxItem {
    /// The stored application was validated when it was submitted; one that no longer
    /// reads is corrupt, not something to show half of.
    fn new(w: Waiting, escalate_after: chrono::Duration) -> Result<Self, DbError> {
        let a: Application = serde_json::from_value(w.application)
            .map_err(|e| DbError::Corrupt(format!("stored application {}: {e}", w.reference)))?;
        let (claimed_by, claimed_until) = match w.claim {
            Some((name, until)) => (Some(format!("approver:{name}")), Some(crate::status::timestamp(until))),
            None => (None, None),
        };
        Ok(InboxItem {
            reference: w.reference,
            level: w.level,
            amount: a.amount,
            currency: a.currency,
            term_months: a.term_months,
            purpose: a.purpose,
            applicant_name: a.applicant.full_name,
            annual_income: a.applicant.annual_income,
            monthly_debts: a.applicant.monthly_debts,
            employment_status: a.applicant.employment_status,
            score: w.score,
            waiting_since: crate::status::timestamp(w.waiting_since),
            due_at: crate::status::timestamp(w.waiting_since + escalate_after),
            escalated: w.escalated_at.is_some(),
            claimed_by,
            claimed_until,
            decisions: w.decisions,
        })
    }
}

/// The levels to show: the one asked for (if the approver may decide it), else all
/// of the approver's.
pub fn levels_for(approver: &Approver, asked: Option<&str>) -> Result<Vec<String>, ApiError> {
    match asked {
        Some(level) if approver.levels.iter().any(|l| l == level) => Ok(vec![level.to_owned()]),
        Some(_) => Err(ApiError::Forbidden),
        None => Ok(approver.levels.clone()),
    }
}

pub async fn inbox(state: &AppState, levels: Vec<String>) -> Result<Vec<InboxItem>, ApiError> {
    let now = state.clock.now();
    let waiting = blocking(&state.pool, move |conn| store::waiting_at(conn, &levels, now)).await?;
    let after = state.escalate_after();
    let items: Result<Vec<InboxItem>, DbError> = waiting.into_iter().map(|w| InboxItem::new(w, after)).collect();
    Ok(items?)
}

/// A decision taken.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DecisionAccepted)]
pub struct Accepted {
    pub reference: String,
    pub level: String,
    /// `approve` or `reject`.
    pub decision: &'static str,
    pub decided_by: String,
    pub status: Status,
}

/// Validates a decision body: `{"decision": "approve" | "reject", "reason": "..."}`.
pub fn parse_decision(body: &Value) -> Result<(Outcome, String), ApiError> {
    let mut fields = std::collections::BTreeMap::new();
    let outcome = match body.get("decision").and_then(Value::as_str) {
        Some("approve") => Some(Outcome::Approved),
        Some("reject") => Some(Outcome::Rejected),
        _ => {
            fields.insert("decision".to_owned(), "must be \"approve\" or \"reject\"".to_owned());
            None
        }
    };
    let reason = body.get("reason").and_then(Value::as_str).map(str::trim).unwrap_or("");
    if reason.is_empty() || reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        fields.insert("reason".to_owned(), format!("must be 1 to {MAX_REASON_CHARS} characters"));
    }
    match outcome {
        Some(outcome) if fields.is_empty() => Ok((outcome, reason.to_owned())),
        _ => Err(ApiError::Validation(fields)),
    }
}

/// An approver's decision on a case: handed to the level the application waits at, or,
/// when dual control needs another approval, recorded while the case keeps waiting.
#[tracing::instrument(name = "approvals.decide", skip_all, fields(reference = %reference, approver = %approver.name))]
pub async fn decide(
    state: &AppState,
    approver: &Approver,
    reference: &str,
    outcome: Outcome,
    reason: String,
) -> Result<Accepted, ApiError> {
    let reference = Reference::parse(reference).map_err(|_| ApiError::NotFound)?;
    let now = state.clock.now();
    let (key, who, policy) = (reference.clone(), approver.clone(), state.manager.clone());
    // The decision's trace: the level goes on with the application's own, linked to it.
    let traceparent = loanflow_platform::trace::traceparent(&tracing::Span::current());
    let decided = blocking(&state.pool, move |conn| {
        let decision = cases::Decision { approver: &who, outcome, reason: reason.clone(), now };
        Ok(cases::decide(conn, &key, &decision, &policy, |level, earlier| {
            let decision = ApproverDecision {
                level: level.to_owned(),
                outcome,
                reason: reason.clone(),
                approver: who.name.clone(),
                decided_at: now,
                earlier,
            };
            let envelope =
                Envelope::new(key.clone(), &format!("approval/{level}"), now, WorkMessage::ApprovalV1(decision));
            OutboxMessage {
                reference: key.clone(),
                message_id: envelope.message_id,
                exchange: WORK_EXCHANGE.to_owned(),
                routing_key: level.to_owned(),
                payload: envelope.encode(),
                traceparent: traceparent.clone(),
            }
        }))
    })
    .await??;
    let (level, status) = match decided {
        cases::Decided::Handed { level } => {
            state.relay_wake.notify_one();
            (level, Status::InReview)
        }
        cases::Decided::Recorded { level } => (level, Status::AwaitingApprover),
    };
    tracing::info!(
        outcome = outcome.as_str(),
        waiting = (status == Status::AwaitingApprover),
        "approver decision accepted"
    );
    Ok(Accepted {
        reference: reference.into(),
        level,
        decision: if outcome == Outcome::Approved { "approve" } else { "reject" },
        decided_by: format!("approver:{}", approver.name),
        status,
    })
}

/// What a claim answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Claimed {
    pub reference: String,
    pub claimed_by: String,
    #[schema(format = DateTime)]
    pub claimed_until: String,
}

/// Claims (or renews) a case for `approver`, for `intake.claim_minutes`.
#[tracing::instrument(name = "approvals.claim", skip_all, fields(reference = %reference, approver = %approver.name))]
pub async fn claim(state: &AppState, approver: &Approver, reference: &str) -> Result<Claimed, ApiError> {
    let reference = Reference::parse(reference).map_err(|_| ApiError::NotFound)?;
    let now = state.clock.now();
    let until = now + state.claim_for;
    let (key, who) = (reference.clone(), approver.clone());
    let claim = blocking(&state.pool, move |conn| Ok(cases::claim(conn, &key, &who, now, until))).await??;
    Ok(Claimed {
        reference: reference.into(),
        claimed_by: claim.claimed_by,
        claimed_until: crate::status::timestamp(claim.claimed_until),
    })
}

/// Releases `approver`'s claim on a case.
#[tracing::instrument(name = "approvals.release", skip_all, fields(reference = %reference, approver = %approver.name))]
pub async fn release(state: &AppState, approver: &Approver, reference: &str) -> Result<(), ApiError> {
    let reference = Reference::parse(reference).map_err(|_| ApiError::NotFound)?;
    let now = state.clock.now();
    let who = approver.clone();
    blocking(&state.pool, move |conn| Ok(cases::release(conn, &reference, &who, now))).await??;
    Ok(())
}

/// Shared with the inbox page.
pub type Approvers = Arc<Vec<ApproverSettings>>;
