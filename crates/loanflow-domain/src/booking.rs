//! What the ledger may book. A work item that reaches the ledger's step is booked only
//! if the chain approved it: every level on its slip decided, every decision approved,
//! and the offer it carries is the offer the underwriting rule gives for this
//! application's amount, term and score. The ledger re-derives the offer instead of
//! trusting the message, so a forged or altered message cannot book other terms.

use crate::messages::{WorkItem, LEDGER_STEP};
use crate::rules::{self, Offer, UnderwritingPolicy};
use crate::status::Outcome;

/// Checks `work` and returns the offer to book, or why it may not be booked.
pub fn bookable<'a>(work: &'a WorkItem, policy: &UnderwritingPolicy) -> Result<&'a Offer, String> {
    if work.slip.current() != Some(LEDGER_STEP) {
        return Err(format!("message for step {:?} reached the ledger", work.slip.current()));
    }
    if work.decisions.is_empty() || work.decisions.iter().any(|d| d.outcome != Outcome::Approved) {
        return Err("only an application every level approved can be booked".into());
    }
    let levels = &work.slip.steps[..work.slip.position];
    let mut decided: Vec<&str> = work.decisions.iter().map(|d| d.level.as_str()).collect();
    decided.dedup();
    if decided != levels.iter().map(String::as_str).collect::<Vec<_>>() {
        return Err("the decisions do not match the levels of the application's chain".into());
    }
    let Some(offer) = &work.offer else {
        return Err("an approved application reached the ledger without an offer".into());
    };
    let Some(score) = work.score else {
        return Err("an offer without a credit score cannot be checked".into());
    };
    let expected = rules::underwriting(&work.application, score, policy);
    if expected.verdict.outcome != Outcome::Approved || expected.offer.as_ref() != Some(offer) {
        return Err("the offer differs from what the rules give for this application".into());
    }
    Ok(offer)
}

#[cfg(test)]
mod tests {
    use chrono::{NaiveDate, Utc};

    use super::*;
    use crate::application::{Applicant, Application, Currency, EmploymentStatus, NationalId, Purpose};
    use crate::messages::RoutingSlip;
    use crate::status::{DecidedBy, Decision};

    fn approved_item() -> WorkItem {
        let application = Application {
            applicant: Applicant {
                full_name: "Ada Lovelace".into(),
                email: "ada@example.com".into(),
                national_id: NationalId::parse("SBX720A1").unwrap(),
                date_of_birth: NaiveDate::from_ymd_opt(1990, 4, 1).unwrap(),
                annual_income: "85000".parse().unwrap(),
                monthly_debts: "1200".parse().unwrap(),
                employment_status: EmploymentStatus::Employed,
            },
            amount: "25000".parse().unwrap(),
            currency: Currency::USD,
            term_months: 36,
            purpose: Purpose::Car,
        };
        let levels = ["kyc", "credit", "underwriting"].map(String::from);
        let mut slip = RoutingSlip::through(&levels);
        slip.position = levels.len();
        let offer = rules::underwriting(&application, 720, &UnderwritingPolicy::default()).offer;
        let decisions = levels
            .iter()
            .map(|level| Decision {
                level: level.clone(),
                outcome: Outcome::Approved,
                reason: "ok".into(),
                decided_by: DecidedBy::Auto,
                decided_at: Utc::now(),
            })
            .collect();
        let submitted_at = Utc::now();
        WorkItem {
            application,
            submitted_at,
            submitted_on: submitted_at.date_naive(),
            slip,
            decisions,
            score: Some(720),
            offer,
        }
    }

    fn refused(work: &WorkItem) -> String {
        bookable(work, &UnderwritingPolicy::default()).expect_err("must be refused")
    }

    #[test]
    fn what_the_chain_approved_is_bookable_with_its_offer() {
        let work = approved_item();
        let offer = bookable(&work, &UnderwritingPolicy::default()).unwrap();
        assert_eq!(offer.monthly_payment.to_string(), "806.56");
    }

    #[test]
    fn an_altered_offer_is_refused_whatever_field_was_changed() {
        type Alteration = (&'static str, fn(&mut Offer));
        let cases: [Alteration; 4] = [
            ("amount", |o| o.amount = "1000000".parse().unwrap()),
            ("rate", |o| o.annual_rate = "-0.01".parse().unwrap()),
            ("term", |o| o.term_months = 360),
            ("payment", |o| o.monthly_payment = "1.00".parse().unwrap()),
        ];
        for (what, alter) in cases {
            let mut work = approved_item();
            alter(work.offer.as_mut().unwrap());
            assert!(refused(&work).contains("offer differs"), "{what}");
        }
        let mut work = approved_item();
        work.application.amount = "60000".parse().unwrap();
        assert!(refused(&work).contains("offer differs"), "an offer for another amount");
    }

    #[test]
    fn a_rejection_a_missing_level_or_the_wrong_step_is_refused() {
        let mut work = approved_item();
        work.decisions[0].outcome = Outcome::Rejected;
        assert!(refused(&work).contains("every level approved"));
        let mut work = approved_item();
        work.decisions.remove(0);
        assert!(refused(&work).contains("do not match"));
        let mut work = approved_item();
        work.slip.position = 1;
        assert!(refused(&work).contains("reached the ledger"));
        let mut work = approved_item();
        work.offer = None;
        assert!(refused(&work).contains("without an offer"));
        let mut work = approved_item();
        work.score = Some(810);
        assert!(refused(&work).contains("offer differs"), "another score gives another rate");
    }
}
