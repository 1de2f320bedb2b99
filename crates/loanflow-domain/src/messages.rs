//! The messages services exchange, versioned from the first day.
//!
//! Every message is an [`Envelope`]: a message id, the loan reference, when it was
//! sent, and a body tagged with its type and version (`"type": "loan.work.v1"`).
//! A consumer that meets a type or version it does not know fails to decode it and
//! dead-letters it rather than guessing. Message ids are derived from what the message
//! means (reference, step, kind), so a redelivered input produces the same outgoing ids
//! and duplicates can be recognised downstream.

use chrono::{DateTime, NaiveDate, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

use crate::application::Application;
use crate::reference::Reference;
use crate::rules::Offer;
use crate::status::{Decision, Status};

/// The name of the step that books an approved loan; it always closes the slip.
pub const LEDGER_STEP: &str = "ledger";

/// The routing key of an applicant's withdrawal on the work exchange: it goes to the
/// ledger, which alone can say whether a loan was booked before it.
pub const WITHDRAWAL_ROUTE: &str = "withdrawal";

/// Namespace of the derived (v5) message ids.
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6c6f_616e_666c_6f77_0000_0000_0000_0001);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Envelope<B> {
    pub message_id: Uuid,
    pub reference: Reference,
    pub sent_at: DateTime<Utc>,
    #[serde(flatten)]
    pub body: B,
}

#[derive(Debug, thiserror::Error)]
#[error("undecodable message: {0}")]
pub struct DecodeError(#[from] serde_json::Error);

impl<B: Serialize + DeserializeOwned> Envelope<B> {
    pub fn new(reference: Reference, what: &str, sent_at: DateTime<Utc>, body: B) -> Envelope<B> {
        let message_id = derived_message_id(&reference, what);
        Envelope { message_id, reference, sent_at, body }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Serialising these plain data types cannot fail (no maps with non-string
        // keys, no custom serialisers that error); an empty body would be dead-lettered.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Envelope<B>, DecodeError> {
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// A message id that is the same every time the same thing is said about the same
/// application, e.g. `derived_message_id(r, "work/credit")`.
pub fn derived_message_id(reference: &Reference, what: &str) -> Uuid {
    Uuid::new_v5(&MESSAGE_ID_NAMESPACE, format!("{reference}/{what}").as_bytes())
}

/// The routing slip: the steps an application goes through, fixed when it is
/// submitted. It travels with the application, so changing the configured chain
/// affects new applications only, never those in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RoutingSlip {
    pub steps: Vec<String>,
    pub position: usize,
}

impl RoutingSlip {
    /// A slip through `levels`, closed by the ledger.
    pub fn through(levels: &[String]) -> RoutingSlip {
        let mut steps = levels.to_vec();
        steps.push(LEDGER_STEP.to_owned());
        RoutingSlip { steps, position: 0 }
    }

    pub fn current(&self) -> Option<&str> {
        self.steps.get(self.position).map(String::as_str)
    }

    /// The slip as the next step receives it, or `None` at the end.
    pub fn advanced(&self) -> Option<RoutingSlip> {
        let next = RoutingSlip { steps: self.steps.clone(), position: self.position + 1 };
        next.current().is_some().then_some(next)
    }

    /// The level that holds an application at this step: `None` for the ledger,
    /// which is not an approval level.
    pub fn current_level(&self) -> Option<&str> {
        self.current().filter(|s| *s != LEDGER_STEP)
    }
}

/// An application travelling the chain, with what the levels so far have found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WorkItem {
    pub application: Application,
    pub submitted_at: DateTime<Utc>,
    /// The submission date that age rules are judged on.
    pub submitted_on: NaiveDate,
    pub slip: RoutingSlip,
    pub decisions: Vec<Decision>,
    pub score: Option<u16>,
    pub offer: Option<Offer>,
}

/// A person's decision at a human level, sent by the intake to that level's queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApproverDecision {
    pub level: String,
    pub outcome: crate::status::Outcome,
    pub reason: String,
    /// The approver's name (shown as `approver:<name>`).
    pub approver: String,
    pub decided_at: DateTime<Utc>,
    /// Under dual control, the approvals given before this one, by other approvers, in
    /// the order given; they are recorded before it. Absent from a single approval.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<EarlierApproval>,
}

/// An approval given before the decision that carries it (dual control).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EarlierApproval {
    pub approver: String,
    pub reason: String,
    pub decided_at: DateTime<Utc>,
}

/// The applicant withdraws the application, sent by the intake to the ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Withdrawal {
    pub reason: Option<String>,
    pub requested_at: DateTime<Utc>,
}

impl Withdrawal {
    /// The timeline's entry for a withdrawal the ledger recorded.
    pub fn decision(&self) -> Decision {
        Decision {
            level: "applicant".to_owned(),
            outcome: crate::status::Outcome::Withdrawn,
            reason: self.reason.clone().unwrap_or_else(|| "withdrawn by the applicant".to_owned()),
            decided_by: crate::status::DecidedBy::Applicant,
            decided_at: self.requested_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum WorkMessage {
    #[serde(rename = "loan.work.v1")]
    V1(WorkItem),
    #[serde(rename = "loan.approval.v1")]
    ApprovalV1(ApproverDecision),
    #[serde(rename = "loan.withdrawal.v1")]
    WithdrawalV1(Withdrawal),
}

/// The synchronous twin's answer from a level (`POST /api/steps/{level}`): the same
/// rule's decision the asynchronous chain would reach, and the work item as the level
/// leaves it (credit adds the score, underwriting the offer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepAnswer {
    pub outcome: StepOutcome,
    pub reason: Option<String>,
    pub work: WorkItem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepOutcome {
    Approved,
    Rejected,
    AwaitApprover,
}

/// A change of an application's status, published by whichever service caused it.
///
/// `seq` orders the events of one application so that a projection can apply them
/// in any order, and more than once: 2·n for the n-th decision, 2·n + 1 for progress
/// that follows n decisions without one (waiting for a person, booked, failed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusEvent {
    pub seq: u32,
    pub status: Status,
    pub current_level: Option<String>,
    pub decision: Option<Decision>,
    pub offer: Option<Offer>,
    pub occurred_at: DateTime<Utc>,
    /// The credit score, on `awaiting_approver` only: what an approver needs to
    /// decide. Never shown in the public status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<u16>,
    /// Every decision made so far, in order (this event's own included): a projection
    /// that missed or has not yet seen an earlier event still shows the whole timeline.
    /// Absent from events that predate it, and from events that do not know them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decisions: Vec<Decision>,
}

impl StatusEvent {
    /// The same event, carrying the decisions so far.
    pub fn with_decisions(self, decisions: &[Decision]) -> StatusEvent {
        StatusEvent { decisions: decisions.to_vec(), ..self }
    }

    /// The event announcing `decision`, the application's `decided`-th; it occurs
    /// when the decision was made.
    pub fn decided(decision: Decision, decided: usize, status: Status, current_level: Option<String>) -> StatusEvent {
        StatusEvent {
            seq: StatusEvent::decision_seq(decided),
            status,
            current_level,
            occurred_at: decision.decided_at,
            decision: Some(decision),
            offer: None,
            score: None,
            decisions: Vec::new(),
        }
    }

    /// Progress that follows `decided_so_far` decisions without adding one (waiting
    /// for a person, booked, failed). The caller says when: this crate reads no clock.
    pub fn progress(
        decided_so_far: usize,
        status: Status,
        current_level: Option<String>,
        occurred_at: DateTime<Utc>,
    ) -> StatusEvent {
        StatusEvent {
            seq: StatusEvent::progress_seq(decided_so_far),
            status,
            current_level,
            decision: None,
            offer: None,
            occurred_at,
            score: None,
            decisions: Vec::new(),
        }
    }

    /// The sequence number of the withdrawn event, and of its timeline entry: after any
    /// decision, so that it is listed last and no earlier progress overtakes it.
    pub const WITHDRAWN_SEQ: u32 = 1 << 30;

    /// The ledger recorded the withdrawal: the application will never be booked.
    pub fn withdrawn(withdrawal: &Withdrawal, occurred_at: DateTime<Utc>) -> StatusEvent {
        StatusEvent {
            seq: StatusEvent::WITHDRAWN_SEQ,
            status: Status::Withdrawn,
            current_level: None,
            decision: Some(withdrawal.decision()),
            offer: None,
            occurred_at,
            score: None,
            decisions: Vec::new(),
        }
    }

    pub fn decision_seq(decisions_including_this: usize) -> u32 {
        u32::try_from(decisions_including_this).unwrap_or(u32::MAX / 2).saturating_mul(2)
    }

    pub fn progress_seq(decisions_so_far: usize) -> u32 {
        StatusEvent::decision_seq(decisions_so_far).saturating_add(1)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", content = "data")]
pub enum StatusMessage {
    #[serde(rename = "loan.status.v1")]
    V1(StatusEvent),
    /// The events one delivery batch of a service produced, for several applications,
    /// in one message: one publish and one confirm per batch instead of per event. The
    /// envelope's reference is the first event's.
    #[serde(rename = "loan.status.batch.v1")]
    BatchV1(Vec<ReferencedStatus>),
}

/// One application's event inside a [`StatusMessage::BatchV1`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReferencedStatus {
    pub reference: Reference,
    pub event: StatusEvent,
    /// The W3C trace context of the work that led to this event (one message carries
    /// several applications, each of its own trace); absent while tracing is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl StatusMessage {
    /// Every event the message carries, with its application (`reference` is the
    /// envelope's, which a single event belongs to) and, for an item of a batch, its
    /// own trace context (a single event's is the message's).
    pub fn into_events(self, reference: Reference) -> Vec<ReferencedStatus> {
        match self {
            StatusMessage::V1(event) => vec![ReferencedStatus { reference, event, traceparent: None }],
            StatusMessage::BatchV1(events) => events,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        Reference::from_random([7; crate::reference::RANDOM_BYTES])
    }

    fn event() -> StatusEvent {
        StatusEvent {
            seq: 2,
            status: Status::InReview,
            current_level: Some("credit".into()),
            decision: None,
            offer: None,
            occurred_at: DateTime::from_timestamp(1_764_000_000, 0).unwrap(),
            score: None,
            decisions: Vec::new(),
        }
    }

    #[test]
    fn envelopes_round_trip_and_carry_their_version_tag() {
        let env = Envelope::new(reference(), "status/2", event().occurred_at, StatusMessage::V1(event()));
        let bytes = env.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "loan.status.v1");
        assert_eq!(json["reference"], reference().as_str());
        assert_eq!(Envelope::<StatusMessage>::decode(&bytes).unwrap(), env);
    }

    #[test]
    fn a_status_batch_round_trips_and_yields_each_event_with_its_reference() {
        let other = Reference::from_random([8; crate::reference::RANDOM_BYTES]);
        let batch = StatusMessage::BatchV1(vec![
            ReferencedStatus { reference: reference(), event: event(), traceparent: None },
            ReferencedStatus { reference: other.clone(), event: event(), traceparent: None },
        ]);
        let env = Envelope::new(reference(), "status-batch", event().occurred_at, batch);
        let bytes = env.encode();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["type"], "loan.status.batch.v1");
        let decoded = Envelope::<StatusMessage>::decode(&bytes).unwrap();
        let events = decoded.body.into_events(decoded.reference);
        assert_eq!(events.iter().map(|e| e.reference.clone()).collect::<Vec<_>>(), [reference(), other]);
    }

    #[test]
    fn unknown_versions_and_garbage_do_not_decode() {
        let env = Envelope::new(reference(), "status/2", event().occurred_at, StatusMessage::V1(event()));
        let mut json: serde_json::Value = serde_json::from_slice(&env.encode()).unwrap();
        json["type"] = "loan.status.v2".into();
        let v2 = serde_json::to_vec(&json).unwrap();
        assert!(Envelope::<StatusMessage>::decode(&v2).is_err());
        assert!(Envelope::<StatusMessage>::decode(b"\xff\x00").is_err());
        assert!(Envelope::<WorkMessage>::decode(&env.encode()).is_err(), "a status is not work");
        json["type"] = "loan.status.v1".into();
        json["reference"] = "LN-../../etc".into();
        assert!(Envelope::<StatusMessage>::decode(&serde_json::to_vec(&json).unwrap()).is_err());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        let r = reference();
        assert_eq!(derived_message_id(&r, "work/kyc"), derived_message_id(&r, "work/kyc"));
        assert_ne!(derived_message_id(&r, "work/kyc"), derived_message_id(&r, "work/credit"));
    }

    #[test]
    fn the_slip_walks_the_levels_then_the_ledger() {
        let slip = RoutingSlip::through(&["kyc".to_owned(), "manager".to_owned()]);
        assert_eq!(slip.current(), Some("kyc"));
        let slip = slip.advanced().unwrap();
        assert_eq!(slip.current_level(), Some("manager"));
        let slip = slip.advanced().unwrap();
        assert_eq!(slip.current(), Some(LEDGER_STEP));
        assert_eq!(slip.current_level(), None);
        assert_eq!(slip.advanced(), None);
    }

    #[test]
    fn the_constructors_number_and_date_events_consistently() {
        let at = DateTime::from_timestamp(1_764_000_000, 0).unwrap();
        let decision = Decision {
            level: "kyc".into(),
            outcome: crate::status::Outcome::Approved,
            reason: "ok".into(),
            decided_by: crate::status::DecidedBy::Auto,
            decided_at: at,
        };
        let decided = StatusEvent::decided(decision.clone(), 1, Status::InReview, Some("credit".into()));
        assert_eq!((decided.seq, decided.occurred_at), (StatusEvent::decision_seq(1), at));
        assert_eq!(decided.decision, Some(decision));
        let later = at + chrono::Duration::seconds(1);
        let waiting = StatusEvent::progress(1, Status::AwaitingApprover, Some("manager".into()), later);
        assert_eq!((waiting.seq, waiting.occurred_at, waiting.decision), (StatusEvent::progress_seq(1), later, None));
        assert!(decided.seq < waiting.seq, "progress after a decision orders after it");
    }

    #[test]
    fn sequence_numbers_order_decisions_and_progress() {
        assert!(StatusEvent::decision_seq(1) < StatusEvent::progress_seq(1));
        assert!(StatusEvent::progress_seq(1) < StatusEvent::decision_seq(2));
        assert!(StatusEvent::progress_seq(0) > 0, "the first event beats the submitted state");
    }
}
