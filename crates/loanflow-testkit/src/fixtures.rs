//! What tests submit.

use serde_json::{json, Value};

/// A valid application (the contract's example) with a sandbox identity that scores
/// `score`, which the caller adjusts field by field.
pub fn application(score: u16) -> Value {
    json!({
        "applicant": {
            "full_name": "Ada Lovelace",
            "email": "ada@example.com",
            "national_id": format!("SBX{score}A1"),
            "date_of_birth": "1990-04-01",
            "annual_income": "85000.00",
            "monthly_debts": "1200.00",
            "employment_status": "employed"
        },
        "amount": "25000.00",
        "currency": "USD",
        "term_months": 36,
        "purpose": "home_improvement"
    })
}
