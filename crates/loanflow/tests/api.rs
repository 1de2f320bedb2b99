//! The HTTP contract of the intake: error codes and bodies, and what a rejected
//! request leaves behind (nothing).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use serde_json::{json, Value};

use loanflow_platform::broker::step_queue;
use loanflow_testkit::{application, wait_until, Options, TestSystem};

struct Case {
    name: &'static str,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    status: u16,
    error: &'static str,
    field: Option<&'static str>,
}

fn with(path: &str, value: Value) -> Vec<u8> {
    let mut body = application(720);
    let mut target = &mut body;
    let parts: Vec<&str> = path.split('.').collect();
    for p in &parts[..parts.len() - 1] {
        target = target.get_mut(*p).expect("path");
    }
    if value.is_null() {
        target.as_object_mut().expect("object").remove(parts[parts.len() - 1]);
    } else {
        target[parts[parts.len() - 1]] = value;
    }
    serde_json::to_vec(&body).expect("json")
}

fn cases() -> Vec<Case> {
    let json_ct = Some("application/json");
    let valid = serde_json::to_vec(&application(720)).expect("json");
    let mut padded = application(720);
    padded["padding"] = json!("x".repeat(17 * 1024));
    let case = |name, content_type, body, status, error, field| Case { name, content_type, body, status, error, field };
    vec![
        case("not JSON", json_ct, b"{\"applicant\":".to_vec(), 400, "invalid_json", None),
        case("empty body", json_ct, Vec::new(), 400, "invalid_json", None),
        case("a JSON array", json_ct, b"[]".to_vec(), 400, "invalid_json", None),
        case("a JSON string", json_ct, b"\"loan\"".to_vec(), 400, "invalid_json", None),
        case("over 16 KiB", json_ct, serde_json::to_vec(&padded).expect("json"), 413, "payload_too_large", None),
        case("text/plain", Some("text/plain"), valid.clone(), 415, "unsupported_media_type", None),
        case(
            "form encoded",
            Some("application/x-www-form-urlencoded"),
            valid.clone(),
            415,
            "unsupported_media_type",
            None,
        ),
        case("no content type", None, valid, 415, "unsupported_media_type", None),
        case("amount below 500", json_ct, with("amount", json!("499.99")), 422, "validation_failed", Some("amount")),
        case("amount as a number", json_ct, with("amount", json!(25000)), 422, "validation_failed", Some("amount")),
        case("amount with exponent", json_ct, with("amount", json!("2.5e4")), 422, "validation_failed", Some("amount")),
        case("currency EUR", json_ct, with("currency", json!("EUR")), 422, "validation_failed", Some("currency")),
        case("term 361", json_ct, with("term_months", json!(361)), 422, "validation_failed", Some("term_months")),
        case("purpose unknown", json_ct, with("purpose", json!("yacht")), 422, "validation_failed", Some("purpose")),
        case(
            "name missing",
            json_ct,
            with("applicant.full_name", Value::Null),
            422,
            "validation_failed",
            Some("applicant.full_name"),
        ),
        case(
            "email implausible",
            json_ct,
            with("applicant.email", json!("ada")),
            422,
            "validation_failed",
            Some("applicant.email"),
        ),
        case(
            "national id lower case",
            json_ct,
            with("applicant.national_id", json!("sbx720a1")),
            422,
            "validation_failed",
            Some("applicant.national_id"),
        ),
        case(
            "born in the future",
            json_ct,
            with("applicant.date_of_birth", json!("2999-01-01")),
            422,
            "validation_failed",
            Some("applicant.date_of_birth"),
        ),
        case(
            "not a date",
            json_ct,
            with("applicant.date_of_birth", json!("1990-02-30")),
            422,
            "validation_failed",
            Some("applicant.date_of_birth"),
        ),
        case(
            "negative income",
            json_ct,
            with("applicant.annual_income", json!("-1.00")),
            422,
            "validation_failed",
            Some("applicant.annual_income"),
        ),
        case(
            "employment unknown",
            json_ct,
            with("applicant.employment_status", json!("pirate")),
            422,
            "validation_failed",
            Some("applicant.employment_status"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_its_code_and_body_and_leaves_nothing_behind() {
    // No level runs, so anything published would stay visible in the kyc queue.
    let system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    for case in cases() {
        let mut request = system.http.post(system.url("/api/loans")).body(case.body.clone());
        if let Some(ct) = case.content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("intake answers");
        assert_eq!(response.status().as_u16(), case.status, "{}", case.name);
        assert!(response.headers().get("location").is_none(), "{}", case.name);
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("{}: error body is JSON: {e}", case.name));
        assert_eq!(body["error"], case.error, "{}: {body}", case.name);
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{}: {body}", case.name);
        match case.field {
            Some(field) => {
                let fields = body["fields"].as_object().unwrap_or_else(|| panic!("{}: fields in {body}", case.name));
                assert!(fields.contains_key(field), "{}: {field} in {body}", case.name);
                assert_eq!(fields.len(), 1, "{}: only {field} is wrong: {body}", case.name);
            }
            None => assert!(body.get("fields").is_none(), "{}: no fields on a {}: {body}", case.name, case.status),
        }
    }
    assert_eq!(system.count("intake", "applications", None).await, 0, "no application recorded");
    assert_eq!(system.count("intake", "outbox", None).await, 0, "no message queued for the broker");
    assert_eq!(system.queue_depth(&step_queue("kyc")).await, 0, "no message published");

    // The control: one valid submission does show up in each of those places, so the
    // checks above could have failed.
    system.submit_ok(&application(720)).await;
    assert_eq!(system.count("intake", "applications", None).await, 1);
    let published =
        wait_until(Duration::from_secs(10), || async { system.queue_depth(&step_queue("kyc")).await == 1 }).await;
    assert!(published, "the valid submission reaches the kyc queue");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_answers_202_with_its_reference_and_location() {
    let system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let response = system.submit(&application(720)).await;
    assert_eq!(response.status(), 202);
    let location = response.headers().get("location").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let body: Value = response.json().await.expect("json");
    let reference = body["reference"].as_str().expect("reference");
    assert!(reference.starts_with("LN-") && reference.len() == 27, "{reference}");
    assert!(reference.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'), "URL-safe: {reference}");
    assert_eq!(body["status"], "submitted");
    assert_eq!(body["status_url"], format!("/api/loans/{reference}"));
    assert_eq!(location.as_deref(), Some(format!("/api/loans/{reference}").as_str()));

    // Charset parameters on the content type are fine.
    let response = system
        .http
        .post(system.url("/api/loans"))
        .header("content-type", "application/json; charset=utf-8")
        .body(serde_json::to_vec(&application(720)).expect("json"))
        .send()
        .await
        .expect("answer");
    assert_eq!(response.status(), 202);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_malformed_references_are_404() {
    let system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    for reference in ["LN-0000000000000000000000000", "LN-000000000000000000000000", "nope", "LN-%27%3B"] {
        let response = system.http.get(system.url(&format!("/api/loans/{reference}"))).send().await.expect("answer");
        assert_eq!(response.status(), 404, "{reference}");
        let body: Value = response.json().await.expect("json");
        assert_eq!(body["error"], "not_found", "{reference}");
    }
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submissions_are_accepted_while_the_broker_is_unreachable() {
    let mut system =
        TestSystem::start_with(Options { levels: false, intake_broker_down: true, ..Options::default() }).await;
    system.allow_unsent_outbox();
    let reference = system.submit_ok(&application(720)).await;
    assert_eq!(system.status(&reference).await["status"], "submitted");
    assert_eq!(system.count("intake", "outbox", Some(&reference)).await, 1, "the message waits in the outbox");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retried_submission_return_the_first_reference() {
    let system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let post = |key: &str, body: &Value| {
        system.http.post(system.url("/api/loans")).header("idempotency-key", key).json(body).send()
    };
    let body = application(720);

    // Retried, also concurrently: one application, one reference.
    let first = post("retry-me-1", &body).await.unwrap();
    assert_eq!(first.status(), 202);
    let reference = first.json::<Value>().await.unwrap()["reference"].clone();
    let retries = futures_util::future::join_all((0..8).map(|_| post("retry-me-1", &body))).await;
    for retry in retries {
        let retry = retry.unwrap();
        assert_eq!(retry.status(), 202);
        assert_eq!(retry.json::<Value>().await.unwrap()["reference"], reference);
    }
    let racing = futures_util::future::join_all((0..8).map(|_| post("raced-key", &body))).await;
    let mut raced = std::collections::HashSet::new();
    for r in racing {
        let r = r.unwrap();
        assert_eq!(r.status(), 202);
        raced.insert(r.json::<Value>().await.unwrap()["reference"].to_string());
    }
    assert_eq!(raced.len(), 1, "concurrent first submissions with one key make one application");
    assert_eq!(system.count("intake", "applications", None).await, 2);
    let two_messages = wait_until(Duration::from_secs(10), || async {
        system.count("intake", "outbox", None).await == 0 && system.queue_depth(&step_queue("kyc")).await == 2
    })
    .await;
    assert!(two_messages, "one message per application reaches the broker");

    // The same key for another application is refused, and records nothing.
    let mut other = application(720);
    other["amount"] = json!("30000.00");
    let conflict = post("retry-me-1", &other).await.unwrap();
    assert_eq!(conflict.status(), 409);
    assert_eq!(conflict.json::<Value>().await.unwrap()["error"], "idempotency_key_reused");

    // A key outside 1..=128 printable ASCII is refused.
    for bad in ["".to_owned(), "k".repeat(129), "tab\there".to_owned()] {
        let response = post(&bad, &body).await.unwrap();
        assert_eq!(response.status(), 400, "{bad:?}");
        assert_eq!(response.json::<Value>().await.unwrap()["error"], "invalid_idempotency_key");
    }
    assert_eq!(system.count("intake", "applications", None).await, 2);

    // Past `intake.idempotency_hours` (24 by default) the key is forgotten: the same key
    // with another application makes a new one.
    let keys = format!("\"{}\".idempotency_keys", system.schema("intake"));
    system.execute_sql(&format!("UPDATE {keys} SET created_at = now() - interval '25 hours'")).await;
    let again = post("retry-me-1", &other).await.unwrap();
    assert_eq!(again.status(), 202, "an expired key may be used again");
    assert_ne!(again.json::<Value>().await.unwrap()["reference"], reference);
    assert_eq!(system.count("intake", "applications", None).await, 3);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_an_extractor_cannot_read_is_answered_in_the_contracts_error_shape() {
    let system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let form = |path: &str, content_type: &str, body: String| {
        system.http.post(system.url(path)).header("content-type", content_type.to_owned()).body(body).send()
    };
    let cases = [
        // A query string without what the handler needs, and one with a field twice.
        ("GET /track", system.http.get(system.url("/track")).send().await.unwrap(), 400, "bad_request"),
        (
            "GET /api/approvals?level=…&level=…",
            system
                .http
                .get(system.url("/api/approvals?level=manager&level=kyc"))
                .bearer_auth(loanflow_testkit::MANAGER_TOKEN)
                .send()
                .await
                .unwrap(),
            400,
            "bad_request",
        ),
        // A form sent as JSON, and a form over the size limit.
        ("POST / as JSON", form("/", "application/json", "{}".into()).await.unwrap(), 415, "unsupported_media_type"),
        (
            "POST / too large",
            form("/", "application/x-www-form-urlencoded", format!("amount={}", "9".repeat(20_000))).await.unwrap(),
            413,
            "payload_too_large",
        ),
    ];
    for (what, response, status, code) in cases {
        assert_eq!(response.status(), status, "{what}");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(content_type.starts_with("application/json"), "{what}: {content_type}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"], code, "{what}: {body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {body}");
    }
    assert_eq!(system.count("intake", "applications", None).await, 0, "nothing was recorded");
    system.shutdown().await;
}
