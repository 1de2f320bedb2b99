//! Statuses and decisions, as the contract names them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Submitted,
    InReview,
    AwaitingApprover,
    Approved,
    Rejected,
    Failed,
    Withdrawn,
}

impl Status {
    pub const ALL: [Status; 7] = [
        Status::Submitted,
        Status::InReview,
        Status::AwaitingApprover,
        Status::Approved,
        Status::Rejected,
        Status::Failed,
        Status::Withdrawn,
    ];

    /// Final statuses never change once reached (the contract's promise).
    pub fn is_final(self) -> bool {
        matches!(self, Status::Approved | Status::Rejected | Status::Withdrawn)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Submitted => "submitted",
            Status::InReview => "in_review",
            Status::AwaitingApprover => "awaiting_approver",
            Status::Approved => "approved",
            Status::Rejected => "rejected",
            Status::Failed => "failed",
            Status::Withdrawn => "withdrawn",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an entry of an application's timeline says. A level decides `approved` or
/// `rejected`; the applicant's withdrawal and an escalation of a waiting application
/// are entries of the timeline too, though no level decided them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Approved,
    Rejected,
    Withdrawn,
    Escalated,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [Outcome::Approved, Outcome::Rejected, Outcome::Withdrawn, Outcome::Escalated];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Approved => "approved",
            Outcome::Rejected => "rejected",
            Outcome::Withdrawn => "withdrawn",
            Outcome::Escalated => "escalated",
        }
    }

    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }

    /// Whether a level (a rule or a person) can come to this: approve or reject.
    pub fn is_verdict(self) -> bool {
        matches!(self, Outcome::Approved | Outcome::Rejected)
    }
}

/// Who decided: a rule (`auto`), a named person (`approver:<name>`), or the applicant
/// (`applicant`, withdrawing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DecidedBy {
    Auto,
    Applicant,
    Approver(String),
}

impl utoipa::PartialSchema for DecidedBy {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::money::string_schema("^(auto|applicant|approver:.+)$", "`auto`, `applicant` or `approver:<name>`")
    }
}

impl utoipa::ToSchema for DecidedBy {}

impl TryFrom<String> for DecidedBy {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        match value.as_str() {
            "auto" => Ok(DecidedBy::Auto),
            "applicant" => Ok(DecidedBy::Applicant),
            other => match other.strip_prefix("approver:") {
                Some(name) if !name.is_empty() => Ok(DecidedBy::Approver(name.to_owned())),
                _ => Err(format!("unknown decider {other:?}")),
            },
        }
    }
}

impl From<DecidedBy> for String {
    fn from(value: DecidedBy) -> Self {
        match value {
            DecidedBy::Auto => "auto".to_owned(),
            DecidedBy::Applicant => "applicant".to_owned(),
            DecidedBy::Approver(name) => format!("approver:{name}"),
        }
    }
}

/// One level's decision, as it appears in the status and in the ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    pub level: String,
    pub outcome: Outcome,
    pub reason: String,
    pub decided_by: DecidedBy,
    #[schema(value_type = String, format = DateTime)]
    pub decided_at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_through_their_names() {
        for st in Status::ALL {
            assert_eq!(Status::parse(st.as_str()), Some(st));
            assert_eq!(serde_json::to_string(&st).unwrap(), format!("\"{st}\""));
        }
        assert_eq!(Status::parse("pending"), None);
    }

    #[test]
    fn only_approved_rejected_and_withdrawn_are_final() {
        let finals: Vec<_> = Status::ALL.into_iter().filter(|s| s.is_final()).collect();
        assert_eq!(finals, [Status::Approved, Status::Rejected, Status::Withdrawn]);
    }

    #[test]
    fn decided_by_uses_the_contract_spelling() {
        let by: DecidedBy = serde_json::from_str("\"approver:grace\"").unwrap();
        assert_eq!(by, DecidedBy::Approver("grace".into()));
        assert_eq!(String::from(DecidedBy::Auto), "auto");
        assert_eq!(serde_json::from_str::<DecidedBy>("\"applicant\"").unwrap(), DecidedBy::Applicant);
        for outcome in Outcome::ALL {
            assert_eq!(Outcome::parse(outcome.as_str()), Some(outcome));
        }
        assert!(serde_json::from_str::<DecidedBy>("\"approver:\"").is_err());
        assert!(serde_json::from_str::<DecidedBy>("\"robot\"").is_err());
    }
}
