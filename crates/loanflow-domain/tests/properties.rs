//! Properties of everything that reads untrusted input: the application validator (what
//! a `POST /api/loans` body goes through) and every message decoder. For any input, no
//! panic; whatever is accepted survives a round trip unchanged.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed property

use chrono::{NaiveDate, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{json, Value};

use loanflow_domain::application::{read_object, Application};
use loanflow_domain::messages::{Envelope, RoutingSlip, StatusEvent, StatusMessage, WorkItem, WorkMessage};
use loanflow_domain::reference::RANDOM_BYTES;
use loanflow_domain::{Reference, Status};

fn today() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 12, 1).unwrap()
}

/// The contract's example application.
fn valid() -> Value {
    json!({
        "applicant": {
            "full_name": "Ada Lovelace", "email": "ada@example.com", "national_id": "SBX720A1",
            "date_of_birth": "1990-04-01", "annual_income": "85000.00", "monthly_debts": "450.00",
            "employment_status": "employed"
        },
        "amount": "25000.00", "currency": "USD", "term_months": 36, "purpose": "home_improvement"
    })
}

/// Any JSON value, a few levels deep, with strings that look like what the fields hold.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        "[0-9]{0,8}(\\.[0-9]{0,4})?".prop_map(Value::String),
        "-?[0-9]{1,3}(e[0-9]{1,3})?".prop_map(Value::String),
        "[A-Z0-9]{0,24}".prop_map(Value::String),
        "[0-9]{4}-[0-9]{2}-[0-9]{2}".prop_map(Value::String),
        "\\PC{0,40}".prop_map(Value::String),
        prop::sample::select(vec!["employed", "retired", "USD", "EUR", "car", "other", "", " "])
            .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,12}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 5] = ["amount", "currency", "term_months", "purpose", "applicant"];
const APPLICANT_FIELDS: [&str; 7] =
    ["full_name", "email", "national_id", "date_of_birth", "annual_income", "monthly_debts", "employment_status"];

/// The example with some fields replaced by anything, or removed: most inputs then sit
/// next to the validator's boundaries instead of failing at its first check.
fn near_valid() -> impl Strategy<Value = Value> {
    let edits = prop::collection::vec((0..12usize, prop::option::of(any_json())), 0..4);
    edits.prop_map(|edits| {
        let mut body = valid();
        for (field, replacement) in edits {
            let (target, key) = if field < FIELDS.len() {
                (&mut body, FIELDS[field])
            } else {
                (&mut body["applicant"], APPLICANT_FIELDS[(field - FIELDS.len()) % APPLICANT_FIELDS.len()])
            };
            if let Some(object) = target.as_object_mut() {
                match replacement {
                    Some(value) => object.insert(key.to_owned(), value),
                    None => object.remove(key),
                };
            }
        }
        body
    })
}

fn work_envelope(application: Application) -> Envelope<WorkMessage> {
    let reference = Reference::from_random([7; RANDOM_BYTES]);
    let submitted_at = Utc.with_ymd_and_hms(2026, 12, 1, 9, 30, 0).unwrap();
    let work = WorkItem {
        application,
        submitted_at,
        submitted_on: today(),
        slip: RoutingSlip::through(&["kyc".to_owned(), "credit".to_owned()]),
        decisions: Vec::new(),
        score: Some(720),
        offer: None,
    };
    Envelope::new(reference, "work/kyc", submitted_at, WorkMessage::V1(work))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Any bytes as a request body: an answer, never a panic.
    #[test]
    fn any_body_is_answered(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        if let Ok(value) = read_object(&bytes) {
            let _ = Application::parse(&value, today());
        }
    }

    /// Anything near a valid application: accepted or refused with field messages, and
    /// what is accepted reads back the same from its own serialisation.
    #[test]
    fn what_the_validator_accepts_round_trips(body in near_valid()) {
        match Application::parse(&body, today()) {
            Ok(application) => {
                let again = Application::parse(&serde_json::to_value(&application).unwrap(), today());
                prop_assert_eq!(again.as_ref().ok(), Some(&application));
                // And through the wire format of the work it starts.
                let envelope = work_envelope(application);
                prop_assert_eq!(Envelope::<WorkMessage>::decode(&envelope.encode()).unwrap(), envelope);
            }
            Err(errors) => prop_assert!(!errors.is_empty(), "a refusal names what is wrong"),
        }
    }

    /// Any JSON at all: an answer, never a panic.
    #[test]
    fn any_json_is_answered(body in any_json()) {
        let _ = Application::parse(&body, today());
    }

    /// The message decoders, on bytes and on JSON: never a panic, and a message that
    /// decodes encodes to one that decodes the same.
    #[test]
    fn message_decoders_never_panic_and_what_they_accept_round_trips(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
        json in any_json(),
    ) {
        let json = serde_json::to_vec(&json).unwrap();
        for input in [&bytes, &json] {
            if let Ok(work) = Envelope::<WorkMessage>::decode(input) {
                prop_assert_eq!(Envelope::<WorkMessage>::decode(&work.encode()).unwrap(), work);
            }
            if let Ok(status) = Envelope::<StatusMessage>::decode(input) {
                prop_assert_eq!(Envelope::<StatusMessage>::decode(&status.encode()).unwrap(), status);
            }
        }
    }

    /// Real messages with a byte changed: decoded the same way as any input.
    #[test]
    fn damaged_messages_are_refused_or_read_whole(position in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let application = Application::parse(&valid(), today()).unwrap();
        let status = Envelope::new(
            Reference::from_random([3; RANDOM_BYTES]),
            "status/1",
            Utc::now(),
            StatusMessage::V1(StatusEvent::progress(0, Status::Submitted, Some("kyc".into()), Utc::now())),
        );
        for mut encoded in [work_envelope(application).encode(), status.encode()] {
            let at = position.index(encoded.len());
            encoded[at] = byte;
            if let Ok(work) = Envelope::<WorkMessage>::decode(&encoded) {
                prop_assert_eq!(Envelope::<WorkMessage>::decode(&work.encode()).unwrap(), work);
            }
            if let Ok(status) = Envelope::<StatusMessage>::decode(&encoded) {
                prop_assert_eq!(Envelope::<StatusMessage>::decode(&status.encode()).unwrap(), status);
            }
        }
    }
}
