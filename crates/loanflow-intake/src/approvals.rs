//! The human approval level's service: who an approver is, what waits for them, and
//! their decisions; the API (`api::approvals`) and the inbox page call it. A decision does not change anything here directly: it is handed to the
//! level through the outbox, and the level announces it like any other decision.

use std::sync::Arc;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;

use loanflow_domain::application::{Currency, EmploymentStatus, Purpose};
use loanflow_domain::messages::{ApproverDecision, Envelope, WorkMessage};
use loanflow_domain::{Application, Decision, Money, Outcome, Reference, Status};
use loanflow_platform::broker::WORK_EXCHANGE;
use loanflow_platform::db::{blocking, DbError};
use loanflow_platform::settings::ApproverSettings;

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

/// The approver of that name as configured now (a session outlives no removal).
pub fn by_name(approvers: &[ApproverSettings], name: &str) -> Option<Approver> {
    approvers.iter().find(|a| a.name == name).map(|a| Approver { name: a.name.clone(), levels: a.levels.clone() })
}

/// One application in an approver's inbox: the API's item and the inbox page's view.
#[derive(Debug, Serialize)]
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
    pub waiting_since: String,
    pub decisions: Vec<Decision>,
}

impl TryFrom<Waiting> for InboxItem {
    type Error = DbError;

    /// The stored application was validated when it was submitted; one that no longer
    /// reads is corrupt, not something to show half of.
    fn try_from(w: Waiting) -> Result<Self, DbError> {
        let a: Application = serde_json::from_value(w.application)
            .map_err(|e| DbError::Corrupt(format!("stored application {}: {e}", w.reference)))?;
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
    let waiting = blocking(&state.pool, move |conn| store::waiting_at(conn, &levels)).await?;
    let items: Result<Vec<InboxItem>, DbError> = waiting.into_iter().map(InboxItem::try_from).collect();
    Ok(items?)
}

#[derive(Debug, Serialize)]
pub struct Accepted {
    pub reference: String,
    pub level: String,
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

/// Hands an approver's decision to the level the application waits at.
#[tracing::instrument(name = "approvals.decide", skip_all, fields(reference = %reference, approver = %approver.name))]
pub async fn decide(
    state: &AppState,
    approver: &Approver,
    reference: &str,
    outcome: Outcome,
    reason: String,
) -> Result<Accepted, ApiError> {
    let reference = Reference::parse(reference).map_err(|_| ApiError::NotFound)?;
    let lookup = reference.clone();
    let view = blocking(&state.pool, move |conn| store::load_status(conn, &lookup)).await?.ok_or(ApiError::NotFound)?;
    if view.status != Status::AwaitingApprover {
        return Err(ApiError::NotAwaitingDecision);
    }
    let level = view.current_level.unwrap_or_default();
    if !approver.levels.contains(&level) {
        return Err(ApiError::Forbidden);
    }
    let now = Utc::now();
    let decision =
        ApproverDecision { level: level.clone(), outcome, reason, approver: approver.name.clone(), decided_at: now };
    let envelope =
        Envelope::new(reference.clone(), &format!("approval/{level}"), now, WorkMessage::ApprovalV1(decision));
    let message = OutboxMessage {
        reference: reference.clone(),
        message_id: envelope.message_id,
        exchange: WORK_EXCHANGE.to_owned(),
        routing_key: level.clone(),
        payload: envelope.encode(),
    };
    let key = reference.clone();
    let step = level.clone();
    if !blocking(&state.pool, move |conn| store::request_decision(conn, &key, &step, &message)).await? {
        // Someone else decided it a moment ago.
        return Err(ApiError::NotAwaitingDecision);
    }
    state.relay_wake.notify_one();
    tracing::info!(outcome = outcome.as_str(), "approver decision accepted");
    Ok(Accepted {
        reference: reference.into(),
        level,
        decision: if outcome == Outcome::Approved { "approve" } else { "reject" },
        decided_by: format!("approver:{}", approver.name),
        status: Status::InReview,
    })
}

/// Shared with the inbox page.
pub type Approvers = Arc<Vec<ApproverSettings>>;
