//! The submission service: validates an application, gives it a reference and records
//! it with its first message, in one commit. The API, the web form and the synchronous
//! twin all submit through here.

use chrono::Utc;
use rand::RngCore;

use loanflow_domain::messages::{Envelope, RoutingSlip, WorkItem, WorkMessage};
use loanflow_domain::reference::RANDOM_BYTES;
use loanflow_domain::{Application, Reference};
use loanflow_platform::broker::WORK_EXCHANGE;

use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{OutboxMessage, Recorded, Submission};

/// Validates an application and records it with its first message (and its
/// idempotency key); returns its reference. The API and the web form both submit here.
#[tracing::instrument(name = "submit", skip_all, fields(reference))]
pub(crate) async fn accept(
    state: &AppState,
    value: &serde_json::Value,
    idempotency_key: Option<String>,
) -> Result<String, ApiError> {
    let (reference, stored, work) = new_work(state, value)?;
    let now = work.submitted_at;
    let first_step = work.slip.current().unwrap_or_default().to_owned();
    let envelope = Envelope::new(reference.clone(), &format!("work/{first_step}"), now, WorkMessage::V1(work));
    let submission = Submission {
        reference: reference.clone(),
        application: stored,
        submitted_at: now,
        message: OutboxMessage {
            reference: reference.clone(),
            message_id: envelope.message_id,
            exchange: WORK_EXCHANGE.to_owned(),
            routing_key: first_step,
            payload: envelope.encode(),
            // The submission's trace: its first message continues it, through every level.
            traceparent: loanflow_platform::trace::traceparent(&tracing::Span::current()),
        },
    };
    match state.writer.record(submission, idempotency_key).await? {
        Recorded::New => {
            tracing::info!("application accepted");
            Ok(reference.to_string())
        }
        Recorded::Existing(first) => {
            tracing::Span::current().record("reference", first.as_str());
            tracing::info!("retried submission answered with its first reference");
            Ok(first)
        }
        Recorded::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// The contract's idempotency key: 1 to 128 printable ASCII characters.
pub(crate) fn valid_idempotency_key(key: &[u8]) -> bool {
    (1..=128).contains(&key.len()) && key.iter().all(|b| (0x20..=0x7e).contains(b))
}

/// Validates an application and starts its work item: what both the chain and the
/// synchronous twin begin with.
pub(crate) fn new_work(
    state: &AppState,
    value: &serde_json::Value,
) -> Result<(Reference, serde_json::Value, WorkItem), ApiError> {
    let now = Utc::now();
    let application = Application::parse(value, now.date_naive()).map_err(ApiError::Validation)?;
    let reference = new_reference();
    tracing::Span::current().record("reference", reference.as_str());
    let stored = serde_json::to_value(&application).map_err(|_| ApiError::InvalidJson)?;
    let work = WorkItem {
        application,
        submitted_at: now,
        submitted_on: now.date_naive(),
        slip: RoutingSlip::through(&state.chain),
        decisions: Vec::new(),
        score: None,
        offer: None,
    };
    Ok((reference, stored, work))
}

fn new_reference() -> Reference {
    let mut bytes = [0u8; RANDOM_BYTES];
    // The thread-local generator is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    Reference::from_random(bytes)
}
