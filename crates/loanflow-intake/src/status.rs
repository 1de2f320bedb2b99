//! The contract's status document of one application (`GET /api/loans/{reference}`,
//! and the synchronous twin's answer).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use loanflow_domain::rules::Offer;
use loanflow_domain::{Decision, Reference, Status};
use loanflow_platform::db::blocking;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store;

/// An application's status: where it is, and its timeline of decisions.
#[derive(Serialize, utoipa::ToSchema)]
pub struct StatusBody {
    reference: String,
    status: Status,
    current_level: Option<String>,
    #[schema(format = DateTime)]
    submitted_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
    decisions: Vec<DecisionBody>,
    /// Set once approved.
    offer: Option<Offer>,
}

/// One entry of the timeline: a level's decision, the applicant's withdrawal, or an
/// escalation.
#[derive(Serialize, utoipa::ToSchema)]
struct DecisionBody {
    level: String,
    outcome: loanflow_domain::Outcome,
    reason: String,
    decided_by: loanflow_domain::DecidedBy,
    #[schema(format = DateTime)]
    decided_at: String,
}

pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

impl From<Decision> for DecisionBody {
    fn from(d: Decision) -> Self {
        DecisionBody {
            level: d.level,
            outcome: d.outcome,
            reason: d.reason,
            decided_by: d.decided_by,
            decided_at: timestamp(d.decided_at),
        }
    }
}

/// The contract's status document of one application.
pub async fn document(state: &AppState, reference: Reference) -> Result<StatusBody, ApiError> {
    let lookup = reference.clone();
    let view = blocking(&state.pool, move |conn| store::load_status(conn, &lookup)).await?.ok_or(ApiError::NotFound)?;
    Ok(StatusBody {
        reference: reference.into(),
        status: view.status,
        current_level: view.current_level,
        submitted_at: timestamp(view.submitted_at),
        updated_at: timestamp(view.updated_at),
        decisions: view.decisions.into_iter().map(DecisionBody::from).collect(),
        offer: if view.status == Status::Approved { view.offer } else { None },
    })
}
