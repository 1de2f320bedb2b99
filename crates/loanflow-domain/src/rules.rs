//! The decision rules of each approval level, and the offer arithmetic.
//!
//! Each level is a pure function of the application (and what earlier levels found)
//! and its policy. Policies are plain data so that a product can change thresholds in
//! configuration; the defaults are the contract's.

use chrono::{Datelike, NaiveDate};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::application::{Application, NationalId};
use crate::money::Money;
use crate::status::Outcome;

/// What a level decided, with the reason shown to the applicant and, where that reason
/// is kept neutral on purpose, the precise one, which stays in the level's own records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: String,
    /// Never shown to the applicant nor published: a sanctions hit, told to the
    /// applicant, would tip them off.
    pub internal_reason: Option<String>,
}

impl Verdict {
    fn approve(reason: impl Into<String>) -> Verdict {
        Verdict { outcome: Outcome::Approved, reason: reason.into(), internal_reason: None }
    }
    fn reject(reason: impl Into<String>) -> Verdict {
        Verdict { outcome: Outcome::Rejected, reason: reason.into(), internal_reason: None }
    }
    fn reject_quietly(public: impl Into<String>, internal: impl Into<String>) -> Verdict {
        Verdict { outcome: Outcome::Rejected, reason: public.into(), internal_reason: Some(internal.into()) }
    }
}

/// The public reason of a kyc rejection whose cause must not be told.
pub const IDENTITY_NOT_CONFIRMED: &str = "identity checks could not be completed";

/// The kinds of approval level the system knows. A chain names levels; each level
/// process is configured with its kind, so a product can add a second level of an
/// existing kind (a "director" manager with a higher threshold) without a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LevelKind {
    Kyc,
    Credit,
    Underwriting,
    Manager,
}

impl LevelKind {
    pub const ALL: [LevelKind; 4] = [LevelKind::Kyc, LevelKind::Credit, LevelKind::Underwriting, LevelKind::Manager];

    pub fn name(self) -> &'static str {
        match self {
            LevelKind::Kyc => "kyc",
            LevelKind::Credit => "credit",
            LevelKind::Underwriting => "underwriting",
            LevelKind::Manager => "manager",
        }
    }

    pub fn from_name(name: &str) -> Option<LevelKind> {
        match name {
            "kyc" => Some(LevelKind::Kyc),
            "credit" => Some(LevelKind::Credit),
            "underwriting" => Some(LevelKind::Underwriting),
            "manager" => Some(LevelKind::Manager),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------- kyc

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KycPolicy {
    pub minimum_age: u32,
    /// National ids that must be refused.
    pub sanctions: Vec<String>,
}

impl Default for KycPolicy {
    fn default() -> Self {
        KycPolicy { minimum_age: 18, sanctions: vec!["SANCTIONED1".to_owned()] }
    }
}

/// Completed years of age on `on`.
pub fn age_on(date_of_birth: NaiveDate, on: NaiveDate) -> i32 {
    let had_birthday = (on.month(), on.day()) >= (date_of_birth.month(), date_of_birth.day());
    on.year() - date_of_birth.year() - i32::from(!had_birthday)
}

pub fn kyc(app: &Application, submitted_on: NaiveDate, policy: &KycPolicy) -> Verdict {
    let applicant = &app.applicant;
    if policy.sanctions.iter().any(|s| s == applicant.national_id.as_str()) {
        return Verdict::reject_quietly(IDENTITY_NOT_CONFIRMED, "applicant is on the sanctions list");
    }
    let minimum = i32::try_from(policy.minimum_age).unwrap_or(i32::MAX);
    if age_on(applicant.date_of_birth, submitted_on) < minimum {
        return Verdict::reject(format!("applicant is under {}", policy.minimum_age));
    }
    Verdict::approve("identity checks passed")
}

// ---------------------------------------------------------------- bureau

pub const MIN_SCORE: u16 = 300;
pub const MAX_SCORE: u16 = 850;

/// The simulated bureau's score for a national id: the same every time.
///
/// Sandbox identities (`SBX` + three digits from 300 to 850 + anything) score exactly
/// those digits so that tests and simulations choose outcomes; any other id gets a
/// stable hash (FNV-1a, chosen because it never changes between Rust releases, unlike
/// the standard library's hasher) mapped onto 300–850.
pub fn bureau_score(national_id: &NationalId) -> u16 {
    let id = national_id.as_str();
    if let Some(digits) = id.strip_prefix("SBX").and_then(|rest| rest.get(..3)) {
        if let Ok(score) = digits.parse::<u16>() {
            if digits.bytes().all(|b| b.is_ascii_digit()) && (MIN_SCORE..=MAX_SCORE).contains(&score) {
                return score;
            }
        }
    }
    let hash =
        id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    let span = u64::from(MAX_SCORE - MIN_SCORE) + 1;
    MIN_SCORE + u16::try_from(hash % span).unwrap_or(0)
}

// ---------------------------------------------------------------- credit

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct CreditPolicy {
    pub minimum_score: u16,
}

impl Default for CreditPolicy {
    fn default() -> Self {
        CreditPolicy { minimum_score: 580 }
    }
}

/// The score itself is not put in the reason: the status is readable by anyone who
/// holds the reference, and a credit score is the applicant's private data.
pub fn credit(score: u16, policy: &CreditPolicy) -> Verdict {
    if score < policy.minimum_score {
        Verdict::reject(format!("credit score below {}", policy.minimum_score))
    } else {
        Verdict::approve("credit score meets the minimum")
    }
}

// ---------------------------------------------------------------- underwriting

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateBand {
    pub min_score: u16,
    pub max_score: u16,
    #[serde(with = "rust_decimal::serde::str")]
    pub annual_rate: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UnderwritingPolicy {
    #[serde(with = "rust_decimal::serde::str")]
    pub max_debt_to_income: Decimal,
    pub bands: Vec<RateBand>,
}

impl Default for UnderwritingPolicy {
    fn default() -> Self {
        let band = |min_score, max_score, bp| RateBand { min_score, max_score, annual_rate: Decimal::new(bp, 4) };
        UnderwritingPolicy {
            max_debt_to_income: Decimal::new(43, 2),
            bands: vec![band(800, 850, 599), band(740, 799, 749), band(670, 739, 999), band(580, 669, 1399)],
        }
    }
}

/// The loan offered: what the ledger books and the applicant sees.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Offer {
    pub amount: Money,
    /// A decimal fraction (`0.0749`), serialised as a string like money.
    #[serde(with = "rust_decimal::serde::str")]
    #[schema(value_type = String, pattern = "^[0-9]+(\\.[0-9]+)?$")]
    pub annual_rate: Decimal,
    pub term_months: u16,
    pub monthly_payment: Money,
}

/// The standard amortising payment P·r / (1 − (1 + r)^−n), r = annual_rate ÷ 12,
/// rounded half-up to cents. Computed as P·r·f / (f − 1) with f = (1 + r)^n, in
/// decimal arithmetic throughout. A zero rate is an even split of the principal.
pub fn monthly_payment(principal: Money, annual_rate: Decimal, term_months: u16) -> Money {
    let p = principal.as_decimal();
    let n = Decimal::from(term_months.max(1));
    if annual_rate <= Decimal::ZERO {
        return Money::from_decimal(p / n);
    }
    let r = annual_rate / Decimal::from(12);
    let growth = (0..term_months.max(1)).fold(Decimal::ONE, |f, _| f * (Decimal::ONE + r));
    let payment = p * r * growth / (growth - Decimal::ONE);
    Money::from_decimal(payment)
}

/// Underwriting's finding: the verdict, and on approval the offer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Underwritten {
    pub verdict: Verdict,
    pub offer: Option<Offer>,
}

pub fn underwriting(app: &Application, score: u16, policy: &UnderwritingPolicy) -> Underwritten {
    let rejected = |reason: String| Underwritten { verdict: Verdict::reject(reason), offer: None };
    let Some(band) = policy.bands.iter().find(|b| (b.min_score..=b.max_score).contains(&score)) else {
        return rejected("no rate is offered for this credit score".to_owned());
    };
    let payment = monthly_payment(app.amount, band.annual_rate, app.term_months);
    let applicant = &app.applicant;
    let monthly_income = applicant.annual_income.as_decimal() / Decimal::from(12);
    let over_limit = format!("debt-to-income ratio above {}", policy.max_debt_to_income);
    if monthly_income.is_zero() {
        return rejected(over_limit);
    }
    let dti = (applicant.monthly_debts.as_decimal() + payment.as_decimal()) / monthly_income;
    if dti > policy.max_debt_to_income {
        return rejected(over_limit);
    }
    Underwritten {
        verdict: Verdict::approve(format!("debt-to-income within {}", policy.max_debt_to_income)),
        offer: Some(Offer {
            amount: app.amount,
            annual_rate: band.annual_rate,
            term_months: app.term_months,
            monthly_payment: payment,
        }),
    }
}

// ---------------------------------------------------------------- manager

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ManagerPolicy {
    /// Amounts at or below this are approved automatically; above it a person decides.
    pub threshold: Money,
    /// Above this, two different approvers must approve (four eyes).
    pub dual_control_threshold: Money,
    /// An application waiting for a person longer than this is escalated (`"4h"`).
    #[serde(with = "humantime_serde")]
    pub escalate_after: std::time::Duration,
}

impl Default for ManagerPolicy {
    fn default() -> Self {
        ManagerPolicy {
            threshold: Money::from_decimal(Decimal::new(50_000, 0)),
            dual_control_threshold: Money::from_decimal(Decimal::new(250_000, 0)),
            escalate_after: std::time::Duration::from_secs(4 * 3600),
        }
    }
}

/// How many different approvers must approve an application waiting at a human level.
pub fn approvals_needed(app: &Application, policy: &ManagerPolicy) -> usize {
    if app.amount > policy.dual_control_threshold {
        2
    } else {
        1
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ManagerVerdict {
    Decided(Verdict),
    AwaitApprover,
}

pub fn manager(app: &Application, policy: &ManagerPolicy) -> ManagerVerdict {
    if app.amount <= policy.threshold {
        ManagerVerdict::Decided(Verdict::approve("within the automatic approval limit"))
    } else {
        ManagerVerdict::AwaitApprover
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::application::{Applicant, Currency, EmploymentStatus, Purpose};

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn money(s: &str) -> Money {
        s.parse().unwrap()
    }

    fn app(national_id: &str, dob: NaiveDate, income: &str, debts: &str, amount: &str, term: u16) -> Application {
        Application {
            applicant: Applicant {
                full_name: "Ada Lovelace".into(),
                email: "ada@example.com".into(),
                national_id: NationalId::parse(national_id).unwrap(),
                date_of_birth: dob,
                annual_income: money(income),
                monthly_debts: money(debts),
                employment_status: EmploymentStatus::Employed,
            },
            amount: money(amount),
            currency: Currency::USD,
            term_months: term,
            purpose: Purpose::Car,
        }
    }

    fn adult(national_id: &str) -> Application {
        app(national_id, date(1990, 4, 1), "85000", "1200", "25000", 36)
    }

    #[test]
    fn age_counts_completed_years() {
        let dob = date(2008, 11, 24);
        assert_eq!(age_on(dob, date(2026, 11, 23)), 17);
        assert_eq!(age_on(dob, date(2026, 11, 24)), 18);
        let leap = date(2008, 2, 29);
        assert_eq!(age_on(leap, date(2026, 2, 28)), 17);
        assert_eq!(age_on(leap, date(2026, 3, 1)), 18);
    }

    #[test]
    fn kyc_rejects_minors_on_the_submission_date_and_sanctioned_ids() {
        let policy = KycPolicy::default();
        let on = date(2026, 11, 24);
        let turns_18_today = app("AB1234567", date(2008, 11, 24), "85000", "0", "1000", 12);
        let turns_18_tomorrow = app("AB1234567", date(2008, 11, 25), "85000", "0", "1000", 12);
        assert_eq!(kyc(&turns_18_today, on, &policy).outcome, Outcome::Approved);
        let minor = kyc(&turns_18_tomorrow, on, &policy);
        assert_eq!(minor, Verdict::reject("applicant is under 18"));
        let sanctioned = kyc(&adult("SANCTIONED1"), on, &policy);
        assert_eq!(sanctioned.outcome, Outcome::Rejected);
        assert_eq!(sanctioned.reason, IDENTITY_NOT_CONFIRMED, "the applicant is not tipped off");
        assert_eq!(sanctioned.internal_reason.as_deref(), Some("applicant is on the sanctions list"));
    }

    #[test]
    fn bureau_scores_sandbox_identities_exactly_and_others_stably() {
        let id = |s: &str| NationalId::parse(s).unwrap();
        assert_eq!(bureau_score(&id("SBX720A1")), 720);
        assert_eq!(bureau_score(&id("SBX300")), 300);
        assert_eq!(bureau_score(&id("SBX850")), 850);
        for not_sandbox in ["SBX299", "SBX851", "SBX999", "SBXABC", "XSBX720"] {
            let score = bureau_score(&id(not_sandbox));
            assert!((MIN_SCORE..=MAX_SCORE).contains(&score), "{not_sandbox}: {score}");
        }
        assert_eq!(bureau_score(&id("AB1234567")), bureau_score(&id("AB1234567")));
        // Pinned so that a change of hash (which would change every non-sandbox score
        // a bank has seen) fails loudly.
        assert_eq!(bureau_score(&id("AB1234567")), 465);
    }

    #[test]
    fn credit_rejects_below_the_minimum() {
        let policy = CreditPolicy::default();
        assert_eq!(credit(579, &policy).outcome, Outcome::Rejected);
        assert_eq!(credit(580, &policy).outcome, Outcome::Approved);
        assert_eq!(credit(579, &policy).reason, "credit score below 580");
    }

    #[test]
    fn monthly_payment_matches_the_amortisation_formula() {
        // Reference values computed independently with 40-digit decimal arithmetic.
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(monthly_payment(money("25000"), d("0.0749"), 36), money("777.54"));
        assert_eq!(monthly_payment(money("1000000"), d("0.1399"), 360), money("11840.80"));
        assert_eq!(monthly_payment(money("500"), d("0.0599"), 6), money("84.80"));
        assert_eq!(monthly_payment(money("60000"), d("0.0999"), 60), money("1274.53"));
        assert_eq!(monthly_payment(money("1200"), Decimal::ZERO, 12), money("100.00"));
    }

    #[test]
    fn underwriting_prices_by_score_band() {
        let policy = UnderwritingPolicy::default();
        for (score, rate) in [
            (850, "0.0599"),
            (800, "0.0599"),
            (799, "0.0749"),
            (740, "0.0749"),
            (739, "0.0999"),
            (670, "0.0999"),
            (669, "0.1399"),
            (580, "0.1399"),
        ] {
            let found = underwriting(&adult("SBX720"), score, &policy);
            let offer = found.offer.unwrap_or_else(|| panic!("{score} should be offered"));
            assert_eq!(offer.annual_rate.to_string(), rate, "score {score}");
            assert_eq!(offer.term_months, 36);
            assert_eq!(offer.amount, money("25000"));
        }
        assert_eq!(underwriting(&adult("SBX720"), 579, &policy).verdict.outcome, Outcome::Rejected);
    }

    #[test]
    fn underwriting_rejects_debt_to_income_above_the_limit() {
        let policy = UnderwritingPolicy::default();
        // Income 120000/yr = 10000/mo. 12000 over 12 months at 0.0599 costs 1032.74/mo.
        // Debts of 3267.26 make the ratio exactly 0.43 (accepted); one cent more is over.
        let at_limit = app("SBX800", date(1990, 1, 1), "120000", "3267.26", "12000", 12);
        let over = app("SBX800", date(1990, 1, 1), "120000", "3267.27", "12000", 12);
        assert_eq!(monthly_payment(money("12000"), Decimal::new(599, 4), 12), money("1032.74"));
        assert_eq!(underwriting(&at_limit, 800, &policy).verdict.outcome, Outcome::Approved);
        let rejected = underwriting(&over, 800, &policy);
        assert_eq!(rejected.verdict, Verdict::reject("debt-to-income ratio above 0.43"));
        assert_eq!(rejected.offer, None);
    }

    #[test]
    fn underwriting_rejects_zero_income() {
        let no_income = app("SBX800", date(1990, 1, 1), "0", "0", "1000", 12);
        let found = underwriting(&no_income, 800, &UnderwritingPolicy::default());
        assert_eq!(found.verdict.outcome, Outcome::Rejected);
    }

    #[test]
    fn two_approvers_are_needed_above_the_dual_control_threshold_only() {
        let policy = ManagerPolicy::default();
        let at = Application { amount: "250000".parse().unwrap(), ..adult("SBX720") };
        let above = Application { amount: "250000.01".parse().unwrap(), ..adult("SBX720") };
        assert_eq!(approvals_needed(&at, &policy), 1);
        assert_eq!(approvals_needed(&above, &policy), 2);
    }

    #[test]
    fn manager_approves_at_the_threshold_and_waits_above_it() {
        let policy = ManagerPolicy::default();
        let at = app("SBX800", date(1990, 1, 1), "900000", "0", "50000.00", 60);
        let above = app("SBX800", date(1990, 1, 1), "900000", "0", "50000.01", 60);
        assert!(matches!(manager(&at, &policy), ManagerVerdict::Decided(v) if v.outcome == Outcome::Approved));
        assert_eq!(manager(&above, &policy), ManagerVerdict::AwaitApprover);
    }
}
