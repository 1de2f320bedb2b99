//! The applicant's withdrawal: whoever holds the reference may withdraw an application
//! that is not final. The intake records the request (the case leaves the inbox at once)
//! and sends it to the ledger, which alone knows whether the loan was booked first; the
//! status becomes `withdrawn` when the ledger answers that it never will book it.

use loanflow_domain::messages::{Envelope, Withdrawal, WorkMessage, WITHDRAWAL_ROUTE};
use loanflow_domain::Reference;
use loanflow_platform::broker::WORK_EXCHANGE;
use loanflow_platform::db::blocking;
use serde_json::Value;

use crate::cases::{self, Withdrawing};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::OutboxMessage;

/// The most characters a withdrawal's reason may have.
const MAX_REASON_CHARS: usize = 500;

/// The optional reason of a withdrawal body `{"reason": "..."}`.
pub fn parse_reason(body: Option<&Value>) -> Result<Option<String>, ApiError> {
    let invalid = || {
        let why = format!("must be text of at most {MAX_REASON_CHARS} characters");
        ApiError::Validation([("reason".to_owned(), why)].into())
    };
    let Some(reason) = body.and_then(|b| b.get("reason")).filter(|r| !r.is_null()) else { return Ok(None) };
    let reason = reason.as_str().ok_or_else(invalid)?.trim();
    if reason.chars().count() > MAX_REASON_CHARS || reason.chars().any(char::is_control) {
        return Err(invalid());
    }
    Ok((!reason.is_empty()).then(|| reason.to_owned()))
}

/// Requests the withdrawal of `reference`; a request while one is pending is answered
/// alike.
#[tracing::instrument(name = "withdraw", skip_all, fields(reference = %reference))]
pub async fn request(state: &AppState, reference: &str, reason: Option<String>) -> Result<Reference, ApiError> {
    let reference = Reference::parse(reference).map_err(|_| ApiError::NotFound)?;
    let now = state.clock.now();
    let withdrawal = Withdrawal { reason, requested_at: now };
    let envelope = Envelope::new(reference.clone(), "withdrawal", now, WorkMessage::WithdrawalV1(withdrawal.clone()));
    let message = OutboxMessage {
        reference: reference.clone(),
        message_id: envelope.message_id,
        exchange: WORK_EXCHANGE.to_owned(),
        routing_key: WITHDRAWAL_ROUTE.to_owned(),
        payload: envelope.encode(),
        traceparent: loanflow_platform::trace::traceparent(&tracing::Span::current()),
    };
    let key = reference.clone();
    let done =
        blocking(&state.pool, move |conn| Ok(cases::withdraw(conn, &key, withdrawal.reason.as_deref(), now, &message)))
            .await??;
    if done == Withdrawing::Requested {
        state.relay_wake.notify_one();
        tracing::info!("withdrawal requested");
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_reason_is_optional_text_of_at_most_500_characters() {
        assert_eq!(parse_reason(None).unwrap(), None);
        assert_eq!(parse_reason(Some(&json!({}))).unwrap(), None);
        assert_eq!(
            parse_reason(Some(&json!({"reason": " found a better rate "}))).unwrap().as_deref(),
            Some("found a better rate")
        );
        assert!(parse_reason(Some(&json!({"reason": "x".repeat(501)}))).is_err());
        assert!(parse_reason(Some(&json!({"reason": 5}))).is_err());
        assert!(parse_reason(Some(&json!({"reason": "a\u{0}b"}))).is_err());
    }
}
