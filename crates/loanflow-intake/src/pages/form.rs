//! The application form: filled in, checked in the browser, checked again on the
//! server, and shown again with each field's message when something is wrong.
//!
//! Each field has one message slot, tied to it with `aria-describedby`. A message says
//! what is wrong and how to put it right, once: while a field shows one, its hint is
//! hidden (the hints state the same limits), and the browser-side checks use each
//! field's own wording for each kind of mistake (missing, malformed, out of range).

use std::collections::{BTreeMap, HashMap};

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use maud::{html, Markup};
use serde_json::{json, Value};

use loanflow_domain::application::{MAX_TERM_MONTHS, MIN_TERM_MONTHS};
use loanflow_domain::Reference;
use loanflow_platform::secret::new_token;

use super::{not_found_page, page};
use crate::error::ApiError;
use crate::state::AppState;

/// One input of the form, named by its JSON path.
struct Input {
    path: &'static str,
    label: &'static str,
    kind: Kind,
    /// Shown under the field until it has a message.
    hint: &'static str,
    /// How a sentence about this field starts ("Your email", "The loan amount").
    subject: &'static str,
    /// The message for a field left empty.
    missing: &'static str,
    /// The message for a value of the wrong form or out of range (browser-side checks).
    malformed: &'static str,
}

enum Kind {
    Text { input_type: &'static str, autocomplete: &'static str, pattern: Option<&'static str>, mode: &'static str },
    Choice(&'static [(&'static str, &'static str)]),
}

const MONEY_PATTERN: &str = r"\d{1,15}(\.\d{1,2})?";

const INPUTS: &[Input] = &[
    Input {
        path: "applicant.full_name",
        label: "Full name",
        kind: Kind::Text { input_type: "text", autocomplete: "name", pattern: None, mode: "text" },
        hint: "As on your identity document.",
        subject: "Your full name",
        missing: "Enter your full name, as on your identity document.",
        malformed: "Enter your full name, as on your identity document.",
    },
    Input {
        path: "applicant.email",
        label: "Email",
        kind: Kind::Text { input_type: "email", autocomplete: "email", pattern: None, mode: "email" },
        hint: "We send updates about your application here.",
        subject: "Your email",
        missing: "Enter your email address, such as name@example.com.",
        malformed: "Enter an email address such as name@example.com: this one is not complete.",
    },
    Input {
        path: "applicant.national_id",
        label: "National ID",
        kind: Kind::Text { input_type: "text", autocomplete: "off", pattern: Some("[A-Z0-9]{6,20}"), mode: "text" },
        hint: "6 to 20 capital letters and digits.",
        subject: "Your national ID",
        missing: "Enter your national ID: 6 to 20 capital letters and digits.",
        malformed: "Use 6 to 20 capital letters and digits only, without spaces or dashes.",
    },
    Input {
        path: "applicant.date_of_birth",
        label: "Date of birth",
        kind: Kind::Text { input_type: "date", autocomplete: "bday", pattern: None, mode: "numeric" },
        hint: "You must be 18 or older to borrow.",
        subject: "Your date of birth",
        missing: "Enter your date of birth.",
        malformed: "Enter your date of birth as a date, such as 1990-04-01.",
    },
    Input {
        path: "applicant.annual_income",
        label: "Annual income (USD)",
        kind: Kind::Text { input_type: "text", autocomplete: "off", pattern: Some(MONEY_PATTERN), mode: "decimal" },
        hint: "Before tax, in US dollars.",
        subject: "Your annual income",
        missing: "Enter your annual income; 0 if you have none.",
        malformed: "Enter the income in digits, optionally with a point and two decimals, such as 85000 or 85000.00.",
    },
    Input {
        path: "applicant.monthly_debts",
        label: "Monthly debt payments (USD)",
        kind: Kind::Text { input_type: "text", autocomplete: "off", pattern: Some(MONEY_PATTERN), mode: "decimal" },
        hint: "What you pay each month on other loans and cards; 0 if none.",
        subject: "Your monthly debt payments",
        missing: "Enter what you pay each month on other loans and cards; 0 if none.",
        malformed: "Enter the payments in digits, optionally with a point and two decimals, such as 450 or 450.00.",
    },
    Input {
        path: "applicant.employment_status",
        label: "Employment",
        kind: Kind::Choice(&[
            ("employed", "Employed"),
            ("self_employed", "Self-employed"),
            ("unemployed", "Unemployed"),
            ("retired", "Retired"),
            ("student", "Student"),
        ]),
        hint: "",
        subject: "Your employment",
        missing: "Choose your employment.",
        malformed: "Choose your employment from the list.",
    },
    Input {
        path: "amount",
        label: "Loan amount (USD)",
        kind: Kind::Text { input_type: "text", autocomplete: "off", pattern: Some(MONEY_PATTERN), mode: "decimal" },
        hint: "From 500.00 to 1000000.00.",
        subject: "The loan amount",
        missing: "Enter how much you want to borrow, from 500.00 to 1000000.00.",
        malformed: "Enter the amount in digits, optionally with a point and two decimals, such as 25000 or 25000.00.",
    },
    Input {
        path: "currency",
        label: "Currency",
        kind: Kind::Choice(&[("USD", "US dollar (USD)")]),
        hint: "",
        subject: "The currency",
        missing: "Choose the currency.",
        malformed: "Choose the currency from the list.",
    },
    Input {
        path: "term_months",
        label: "Term (months)",
        kind: Kind::Text { input_type: "number", autocomplete: "off", pattern: None, mode: "numeric" },
        hint: "From 6 to 360 months.",
        subject: "The term",
        missing: "Enter the term: a whole number of months from 6 to 360.",
        malformed: "Enter a whole number of months from 6 to 360.",
    },
    Input {
        path: "purpose",
        label: "Purpose",
        kind: Kind::Choice(&[
            ("home_improvement", "Home improvement"),
            ("car", "Car"),
            ("education", "Education"),
            ("debt_consolidation", "Debt consolidation"),
            ("medical", "Medical"),
            ("other", "Other"),
        ]),
        hint: "",
        subject: "The purpose",
        missing: "Choose what the loan is for.",
        malformed: "Choose what the loan is for from the list.",
    },
];

/// The page's wording for the validator's message about `input` (the API's own
/// message, "must be from 500.00 to 1000000.00", reads as a sentence about the field).
fn message(input: &Input, value: &str, api_message: &str) -> String {
    if value.trim().is_empty() {
        input.missing.to_owned()
    } else {
        format!("{} {}.", input.subject, api_message.trim_end_matches('.'))
    }
}

fn field(input: &Input, value: &str, error: Option<&str>) -> Markup {
    let id = input.path.replace('.', "-");
    let (hint_id, error_id) = (format!("{id}-hint"), format!("{id}-error"));
    let message = error.map(|e| message(input, value, e));
    let has_hint = !input.hint.is_empty();
    // The error alone while there is one; else the hint (and the empty error slot).
    let described = match (&message, has_hint) {
        (None, true) => format!("{hint_id} {error_id}"),
        _ => error_id.clone(),
    };
    let invalid = if message.is_some() { "true" } else { "false" };
    html! {
        div.field {
            label for=(id) { (input.label) }
            @match &input.kind {
                Kind::Text { input_type, autocomplete, pattern, mode } => {
                    @let term = input.path == "term_months";
                    input #(id) name=(input.path) type=(input_type) value=(value) required
                        autocomplete=(autocomplete) inputmode=(mode) pattern=[*pattern]
                        min=[term.then_some(MIN_TERM_MONTHS)] max=[term.then_some(MAX_TERM_MONTHS)]
                        step=[term.then_some(1)]
                        data-missing=(input.missing) data-malformed=(input.malformed)
                        aria-describedby=(described) aria-invalid=(invalid);
                }
                Kind::Choice(choices) => {
                    select #(id) name=(input.path) required data-missing=(input.missing)
                        data-malformed=(input.malformed) aria-describedby=(described) aria-invalid=(invalid) {
                        option value="" { "Choose…" }
                        @for (choice, label) in choices.iter() {
                            option value=(choice) selected[*choice == value || (choices.len() == 1 && value.is_empty())] { (label) }
                        }
                    }
                }
            }
            @if has_hint {
                span.hint #(hint_id) hidden[message.is_some()] { (input.hint) }
            }
            span.error #(error_id) aria-live="polite" { (message.unwrap_or_default()) }
        }
    }
}

fn render(values: &HashMap<String, String>, errors: &BTreeMap<String, String>, key: &str) -> Markup {
    let summary = if errors.is_empty() {
        String::new()
    } else {
        format!("Please correct {} highlighted field(s).", errors.len())
    };
    html! {
        h1 { "Apply for a loan" }
        p { "Tell us about yourself and the loan you need. You get a reference number at once; we review your application in the background and you can follow every step." }
        form #application-form.card method="post" action="/" aria-describedby="form-errors" {
            p #form-errors.error role="alert" aria-live="assertive" { (summary) }
            input type="hidden" name="idempotency_key" value=(key);
            fieldset.grid.plain {
                legend.hint { "All fields are required." }
                @for input in INPUTS {
                    (field(input, values.get(input.path).map(String::as_str).unwrap_or(""), errors.get(input.path).map(String::as_str)))
                }
            }
            div.actions { button type="submit" { "Submit application" } }
        }
        section #track.card aria-labelledby="track-title" {
            h2 #track-title { "Track an application" }
            form.track method="get" action="/track" {
                label.skip for="track-reference" { "Reference number" }
                input #track-reference name="reference" placeholder="LN-…" autocomplete="off" required aria-label="Reference number";
                button type="submit" { "Track" }
            }
        }
    }
}

pub(super) async fn home() -> HttpResponse {
    page(StatusCode::OK, "Apply for a loan", render(&HashMap::new(), &BTreeMap::new(), &new_token()))
}

/// The form's fields as the API's JSON body.
fn to_json(form: &HashMap<String, String>) -> Value {
    let get = |k: &str| form.get(k).map(|v| v.trim().to_owned()).unwrap_or_default();
    let term = get("term_months");
    json!({
        "applicant": {
            "full_name": get("applicant.full_name"),
            "email": get("applicant.email"),
            "national_id": get("applicant.national_id"),
            "date_of_birth": get("applicant.date_of_birth"),
            "annual_income": get("applicant.annual_income"),
            "monthly_debts": get("applicant.monthly_debts"),
            "employment_status": get("applicant.employment_status"),
        },
        "amount": get("amount"),
        "currency": get("currency"),
        "term_months": term.parse::<u64>().map(Value::from).unwrap_or(Value::String(term)),
        "purpose": get("purpose"),
    })
}

pub(super) async fn submit(
    req: HttpRequest,
    form: web::Form<HashMap<String, String>>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    state.limits.submission(&req)?;
    let form = form.into_inner();
    let key = form.get("idempotency_key").filter(|k| crate::submission::valid_idempotency_key(k.as_bytes())).cloned();
    match crate::submission::accept(&state, &to_json(&form), key.clone()).await {
        Ok(reference) => Ok(HttpResponse::SeeOther()
            .insert_header((header::LOCATION, format!("/loans/{reference}?submitted=1")))
            .finish()),
        Err(ApiError::Validation(errors)) => {
            let key = key.unwrap_or_else(new_token);
            Ok(page(StatusCode::UNPROCESSABLE_ENTITY, "Please check your application", render(&form, &errors, &key)))
        }
        Err(e) => Err(e),
    }
}

#[derive(serde::Deserialize)]
pub(super) struct TrackQuery {
    reference: String,
}

pub(super) async fn track(query: web::Query<TrackQuery>) -> HttpResponse {
    let wanted = query.reference.trim().to_uppercase();
    match Reference::parse(&wanted) {
        Ok(r) => HttpResponse::SeeOther().insert_header((header::LOCATION, format!("/loans/{r}"))).finish(),
        Err(_) => not_found_page(&wanted),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_shows_one_message_tied_to_it_and_hides_its_hint_meanwhile() {
        let amount = INPUTS.iter().find(|i| i.path == "amount").unwrap();
        let html = field(amount, "400", Some("must be from 500.00 to 1000000.00")).into_string();
        assert!(html.contains(r#"<span class="error" id="amount-error" aria-live="polite">The loan amount must be from 500.00 to 1000000.00.</span>"#), "{html}");
        assert!(
            html.contains(r#"aria-describedby="amount-error""#) && html.contains(r#"aria-invalid="true""#),
            "{html}"
        );
        assert!(html.contains(r#"id="amount-hint" hidden"#), "the hint states the same limits: hidden: {html}");
        let fine = field(amount, "", None).into_string();
        assert!(fine.contains(r#"aria-describedby="amount-hint amount-error""#) && !fine.contains("hidden"), "{fine}");
        let email = INPUTS.iter().find(|i| i.path == "applicant.email").unwrap();
        let blank = field(email, " ", Some("must be an email address such as name@example.com")).into_string();
        assert!(blank.contains(">Enter your email address, such as name@example.com.</span>"), "{blank}");
    }

    #[test]
    fn whatever_was_typed_is_escaped() {
        let name = &INPUTS[0];
        let html = field(name, r#""><script>alert(1)</script>"#, Some("must be <b>")).into_string();
        assert!(!html.contains("<script>") && !html.contains("<b>"), "{html}");
        assert!(html.contains("&quot;&gt;&lt;script&gt;"), "{html}");
    }
}
