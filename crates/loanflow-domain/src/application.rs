//! The loan application and its validation ("parse, don't validate").
//!
//! [`Application::parse`] turns an untrusted JSON value into an `Application` or into
//! a map of every broken field, keyed by its JSON path, so that one response can tell
//! the applicant everything that is wrong at once.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::money::Money;

/// Limits the contract sets on an application.
pub const MIN_AMOUNT: &str = "500.00";
pub const MAX_AMOUNT: &str = "1000000.00";
pub const MIN_TERM_MONTHS: u16 = 6;
pub const MAX_TERM_MONTHS: u16 = 360;
const MAX_NAME_CHARS: usize = 200;
const MAX_EMAIL_CHARS: usize = 254;

/// Broken fields, keyed by JSON path (`applicant.email`), each with a reason.
pub type FieldErrors = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EmploymentStatus {
    Employed,
    SelfEmployed,
    Unemployed,
    Retired,
    Student,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    HomeImprovement,
    Car,
    Education,
    DebtConsolidation,
    Medical,
    Other,
}

/// Currencies a product may offer. The default product offers USD only; adding a
/// currency is a product decision, made here and in the contract together.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub enum Currency {
    USD,
}

impl Currency {
    /// The ISO 4217 code.
    pub fn code(self) -> &'static str {
        match self {
            Currency::USD => "USD",
        }
    }
}

/// A national identity number: 6 to 20 characters of `A-Z` and `0-9`.
///
/// Personal data: its `Debug` output is redacted so it cannot reach a log by accident.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NationalId(String);

impl NationalId {
    pub fn parse(s: &str) -> Result<NationalId, &'static str> {
        if (6..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()) {
            Ok(NationalId(s.to_owned()))
        } else {
            Err("must be 6 to 20 characters of A-Z and 0-9")
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NationalId {
    type Error = &'static str;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        NationalId::parse(&value)
    }
}

impl From<NationalId> for String {
    fn from(value: NationalId) -> Self {
        value.0
    }
}

impl utoipa::PartialSchema for NationalId {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        crate::money::string_schema("^[A-Z0-9]{6,20}$", "6 to 20 characters of A-Z and 0-9")
    }
}

impl utoipa::ToSchema for NationalId {}

impl fmt::Debug for NationalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("NationalId(<redacted>)")
    }
}

/// The person applying. Every field but the name and email is used by a rule.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Applicant {
    /// 1 to 200 characters after trimming.
    #[schema(min_length = 1, max_length = 200)]
    pub full_name: String,
    /// A plausible address: one `@`, a dot in the domain.
    #[schema(max_length = 254, pattern = "^[^@]+@[^@]+\\.[^@]+$")]
    pub email: String,
    pub national_id: NationalId,
    /// A real calendar date in the past.
    #[schema(value_type = String, format = Date)]
    pub date_of_birth: NaiveDate,
    pub annual_income: Money,
    pub monthly_debts: Money,
    pub employment_status: EmploymentStatus,
}

impl fmt::Debug for Applicant {
    /// Personal data stays out of debug output (and so out of logs).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Applicant").field("employment_status", &self.employment_status).finish_non_exhaustive()
    }
}

/// A loan application, as submitted (`POST /api/loans`); the amount from 500.00 to
/// 1000000.00.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Application {
    pub applicant: Applicant,
    pub amount: Money,
    pub currency: Currency,
    #[schema(minimum = 6, maximum = 360)]
    pub term_months: u16,
    pub purpose: Purpose,
}

/// Why a request body is no JSON object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is not valid JSON")]
    NotJson,
    #[error("the body must be a JSON object")]
    NotAnObject,
}

/// Reads an untrusted request body as a JSON object: the first step of every JSON
/// endpoint (serde_json bounds the nesting depth, so no input exhausts the stack).
pub fn read_object(body: &[u8]) -> Result<Value, BodyError> {
    let value: Value = serde_json::from_slice(body).map_err(|_| BodyError::NotJson)?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(BodyError::NotAnObject)
    }
}

impl Application {
    /// Validates an untrusted JSON body. `today` is the submission date (UTC), against
    /// which a date of birth must lie in the past.
    pub fn parse(body: &Value, today: NaiveDate) -> Result<Application, FieldErrors> {
        let mut errors = FieldErrors::new();
        let Some(root) = body.as_object() else {
            errors.insert("$".into(), "must be a JSON object".into());
            return Err(errors);
        };
        let mut f = Fields { errors: &mut errors };

        let applicant = match root.get("applicant") {
            Some(Value::Object(obj)) => f.applicant(obj, today),
            Some(_) => f.fail("applicant", "must be an object"),
            None => f.fail("applicant", "is required"),
        };
        let amount = f.string(root, "amount").and_then(|s| f.amount(&s));
        let currency = f.string(root, "currency").and_then(|s| f.currency(&s));
        let term_months = f.term(root);
        let purpose = f.enumeration::<Purpose>(root, "purpose", PURPOSES);

        match (applicant, amount, currency, term_months, purpose) {
            (Some(applicant), Some(amount), Some(currency), Some(term_months), Some(purpose)) if errors.is_empty() => {
                Ok(Application { applicant, amount, currency, term_months, purpose })
            }
            _ => Err(errors),
        }
    }
}

const EMPLOYMENT_STATUSES: &str = "employed, self_employed, unemployed, retired, student";
const PURPOSES: &str = "home_improvement, car, education, debt_consolidation, medical, other";

/// Collects field errors while reading fields; each reader returns `None` on error.
struct Fields<'e> {
    errors: &'e mut FieldErrors,
}

impl Fields<'_> {
    fn fail<T>(&mut self, path: &str, why: &str) -> Option<T> {
        self.errors.entry(path.to_owned()).or_insert_with(|| why.to_owned());
        None
    }

    fn string_at(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<String> {
        match obj.get(key) {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Null) | None => self.fail(path, "is required"),
            Some(_) => self.fail(path, "must be a string"),
        }
    }

    fn string(&mut self, obj: &Map<String, Value>, key: &str) -> Option<String> {
        self.string_at(obj, key, key)
    }

    fn enumeration<T: for<'de> Deserialize<'de>>(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        path_and_choices: &str,
    ) -> Option<T> {
        self.enumeration_at(obj, key, key, path_and_choices)
    }

    fn enumeration_at<T: for<'de> Deserialize<'de>>(
        &mut self,
        obj: &Map<String, Value>,
        key: &str,
        path: &str,
        choices: &str,
    ) -> Option<T> {
        let s = self.string_at(obj, key, path)?;
        match serde_json::from_value(Value::String(s)) {
            Ok(v) => Some(v),
            Err(_) => self.fail(path, &format!("must be one of: {choices}")),
        }
    }

    fn money_at(&mut self, obj: &Map<String, Value>, key: &str, path: &str) -> Option<Money> {
        match obj.get(key) {
            Some(Value::Number(_)) => {
                self.fail(path, "must be a decimal string such as \"1200.00\", not a JSON number")
            }
            _ => {
                let s = self.string_at(obj, key, path)?;
                match s.parse::<Money>() {
                    Ok(m) => Some(m),
                    Err(e) => self.fail(path, &e.to_string()),
                }
            }
        }
    }

    fn amount(&mut self, s: &str) -> Option<Money> {
        let Ok(amount) = s.parse::<Money>() else {
            return self.fail("amount", &crate::money::MoneyFormatError.to_string());
        };
        let (min, max) = amount_limits();
        if amount < min || amount > max {
            return self.fail("amount", &format!("must be from {MIN_AMOUNT} to {MAX_AMOUNT}"));
        }
        Some(amount)
    }

    fn currency(&mut self, s: &str) -> Option<Currency> {
        if s.len() != 3 || !s.bytes().all(|b| b.is_ascii_uppercase()) {
            return self.fail("currency", "must be an ISO 4217 code such as \"USD\"");
        }
        match s {
            "USD" => Some(Currency::USD),
            _ => self.fail("currency", "is not offered; accepted: USD"),
        }
    }

    fn term(&mut self, obj: &Map<String, Value>) -> Option<u16> {
        let why = format!("must be a whole number of months from {MIN_TERM_MONTHS} to {MAX_TERM_MONTHS}");
        match obj.get("term_months") {
            Some(Value::Number(n)) => match n.as_u64() {
                Some(t) if (u64::from(MIN_TERM_MONTHS)..=u64::from(MAX_TERM_MONTHS)).contains(&t) => {
                    u16::try_from(t).ok()
                }
                _ => self.fail("term_months", &why),
            },
            Some(Value::Null) | None => self.fail("term_months", "is required"),
            Some(_) => self.fail("term_months", &why),
        }
    }

    fn applicant(&mut self, obj: &Map<String, Value>, today: NaiveDate) -> Option<Applicant> {
        let full_name = self.string_at(obj, "full_name", "applicant.full_name").and_then(|s| {
            let trimmed = s.trim();
            if trimmed.is_empty() || trimmed.chars().count() > MAX_NAME_CHARS {
                self.fail("applicant.full_name", "must be 1 to 200 characters")
            } else if trimmed.chars().any(char::is_control) {
                self.fail("applicant.full_name", "must not contain control characters")
            } else {
                Some(trimmed.to_owned())
            }
        });
        let email = self.string_at(obj, "email", "applicant.email").and_then(|s| {
            if plausible_email(&s) {
                Some(s)
            } else {
                self.fail("applicant.email", "must be an email address such as name@example.com")
            }
        });
        let national_id =
            self.string_at(obj, "national_id", "applicant.national_id").and_then(|s| match NationalId::parse(&s) {
                Ok(id) => Some(id),
                Err(why) => self.fail("applicant.national_id", why),
            });
        let date_of_birth =
            self.string_at(obj, "date_of_birth", "applicant.date_of_birth").and_then(|s| match parse_iso_date(&s) {
                Some(d) if d < today => Some(d),
                Some(_) => self.fail("applicant.date_of_birth", "must be in the past"),
                None => self.fail("applicant.date_of_birth", "must be a calendar date as YYYY-MM-DD"),
            });
        let annual_income = self.money_at(obj, "annual_income", "applicant.annual_income");
        let monthly_debts = self.money_at(obj, "monthly_debts", "applicant.monthly_debts");
        let employment_status = self.enumeration_at::<EmploymentStatus>(
            obj,
            "employment_status",
            "applicant.employment_status",
            EMPLOYMENT_STATUSES,
        );
        Some(Applicant {
            full_name: full_name?,
            email: email?,
            national_id: national_id?,
            date_of_birth: date_of_birth?,
            annual_income: annual_income?,
            monthly_debts: monthly_debts?,
            employment_status: employment_status?,
        })
    }
}

fn amount_limits() -> (Money, Money) {
    // Both constants are valid money; a failure here is a programming error caught by
    // the unit tests, so fall back to an empty range rather than panic in production.
    match (MIN_AMOUNT.parse(), MAX_AMOUNT.parse()) {
        (Ok(min), Ok(max)) => (min, max),
        _ => (Money::ZERO, Money::ZERO),
    }
}

/// Strict `YYYY-MM-DD`: chrono alone would accept `1990-4-1`.
fn parse_iso_date(s: &str) -> Option<NaiveDate> {
    let b = s.as_bytes();
    let shape_ok = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    if !shape_ok {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

/// The contract's "plausible address": one `@`, something before it, a dot inside the
/// domain, no spaces, at most 254 characters. Deliverability is the mail system's job.
fn plausible_email(s: &str) -> bool {
    if s.len() > MAX_EMAIL_CHARS || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return false;
    }
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty()
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 11, 24).unwrap()
    }

    fn valid() -> Value {
        json!({
            "applicant": {
                "full_name": "Ada Lovelace",
                "email": "ada@example.com",
                "national_id": "AB1234567",
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

    fn with(path: &str, value: Value) -> Value {
        let mut body = valid();
        let mut target = &mut body;
        let parts: Vec<&str> = path.split('.').collect();
        for p in &parts[..parts.len() - 1] {
            target = target.get_mut(*p).unwrap();
        }
        let last = parts[parts.len() - 1];
        if value == Value::Null {
            target.as_object_mut().unwrap().remove(last);
        } else {
            target[last] = value;
        }
        body
    }

    #[test]
    fn the_contract_example_is_valid() {
        let app = Application::parse(&valid(), today()).unwrap();
        assert_eq!(app.amount.to_string(), "25000.00");
        assert_eq!(app.term_months, 36);
        assert_eq!(app.applicant.full_name, "Ada Lovelace");
    }

    #[test]
    fn each_broken_field_is_named_by_its_path() {
        // (path, value — Null means "absent", expected to be rejected)
        let cases: Vec<(&str, Value)> = vec![
            ("applicant", Value::Null),
            ("applicant", json!("Ada")),
            ("applicant.full_name", Value::Null),
            ("applicant.full_name", json!("   ")),
            ("applicant.full_name", json!("x".repeat(201))),
            ("applicant.full_name", json!(42)),
            ("applicant.email", json!("ada.example.com")),
            ("applicant.email", json!("ada@@example.com")),
            ("applicant.email", json!("ada@example")),
            ("applicant.email", json!("a da@example.com")),
            ("applicant.email", json!(format!("{}@example.com", "a".repeat(250)))),
            ("applicant.national_id", json!("ab1234567")),
            ("applicant.national_id", json!("AB12")),
            ("applicant.national_id", json!("A".repeat(21))),
            ("applicant.national_id", json!("AB-123456")),
            ("applicant.date_of_birth", json!("1990-02-30")),
            ("applicant.date_of_birth", json!("1990-4-1")),
            ("applicant.date_of_birth", json!("2026-11-24")),
            ("applicant.date_of_birth", json!("2030-01-01")),
            ("applicant.annual_income", json!("-1")),
            ("applicant.annual_income", json!(85000)),
            ("applicant.monthly_debts", json!("1e3")),
            ("applicant.monthly_debts", Value::Null),
            ("applicant.employment_status", json!("astronaut")),
            ("amount", json!("499.99")),
            ("amount", json!("1000000.01")),
            ("amount", json!("25000.001")),
            ("amount", json!(25000)),
            ("amount", json!(" 25000")),
            ("currency", json!("EUR")),
            ("currency", json!("usd")),
            ("currency", Value::Null),
            ("term_months", json!(5)),
            ("term_months", json!(361)),
            ("term_months", json!(36.5)),
            ("term_months", json!("36")),
            ("term_months", json!(-36)),
            ("purpose", json!("yacht")),
        ];
        for (path, value) in cases {
            let errors = Application::parse(&with(path, value.clone()), today())
                .expect_err(&format!("{path} = {value} should be rejected"));
            assert!(errors.contains_key(path), "{path} = {value}: got {errors:?}");
            assert_eq!(errors.len(), 1, "{path} = {value}: only that field is wrong, got {errors:?}");
        }
    }

    #[test]
    fn boundaries_inside_the_limits_are_accepted() {
        for (path, value) in [
            ("amount", json!("500.00")),
            ("amount", json!("1000000")),
            ("term_months", json!(6)),
            ("term_months", json!(360)),
            ("applicant.annual_income", json!("0")),
            ("applicant.monthly_debts", json!("0")),
            ("applicant.national_id", json!("SBX720")),
            ("applicant.national_id", json!("A".repeat(20))),
            ("applicant.full_name", json!("x".repeat(200))),
            ("applicant.date_of_birth", json!("2026-11-23")),
        ] {
            let result = Application::parse(&with(path, value.clone()), today());
            assert!(result.is_ok(), "{path} = {value}: {result:?}");
        }
    }

    #[test]
    fn every_error_is_reported_at_once() {
        let body = json!({"applicant": {}, "amount": "1", "term_months": 0});
        let errors = Application::parse(&body, today()).unwrap_err();
        for path in [
            "applicant.full_name",
            "applicant.email",
            "applicant.national_id",
            "applicant.date_of_birth",
            "applicant.annual_income",
            "applicant.monthly_debts",
            "applicant.employment_status",
            "amount",
            "currency",
            "term_months",
            "purpose",
        ] {
            assert!(errors.contains_key(path), "{path} missing from {errors:?}");
        }
    }

    #[test]
    fn a_non_object_body_is_rejected_as_a_whole() {
        for body in [json!([]), json!("x"), json!(1), Value::Null] {
            let errors = Application::parse(&body, today()).unwrap_err();
            assert!(errors.contains_key("$"));
        }
    }

    #[test]
    fn debug_output_carries_no_personal_data() {
        let app = Application::parse(&valid(), today()).unwrap();
        let shown = format!("{app:?}");
        for secret in ["AB1234567", "Ada", "ada@example.com", "1990", "85000"] {
            assert!(!shown.contains(secret), "{secret} leaked: {shown}");
        }
    }
}
