//! The synchronous twin: the same rules and booking called over HTTP in turn, in
//! processes of its own. It answers with the final decision, and while a dependency is
//! down the applicant gets an error instead of a reference.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use serde_json::{json, Value};

use loanflow_testkit::{application, TestSystem};

async fn post(system: &TestSystem, url: &str, body: &Value) -> (u16, Value) {
    let response = system.http.post(format!("{url}/api/loans")).json(body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_synchronous_twin_answers_with_the_final_decision_of_the_same_rules() {
    let mut system = TestSystem::start().await;
    let twin = system.start_twin().await;
    let sync = twin.url.as_str();

    let (code, approved) = post(&system, sync, &application(720)).await;
    assert_eq!(code, 200, "{approved}");
    assert_eq!(approved["status"], "approved");
    assert_eq!(
        approved["offer"],
        json!({"amount": "25000.00", "annual_rate": "0.0999", "term_months": 36, "monthly_payment": "806.56"}),
        "the same offer as the asynchronous chain"
    );
    let levels: Vec<&str> =
        approved["decisions"].as_array().unwrap().iter().map(|d| d["level"].as_str().unwrap()).collect();
    assert_eq!(levels, ["kyc", "credit", "underwriting", "manager"]);
    assert_eq!(system.count_in_schema(&twin.ledger_schema, "loans").await, 1, "booked by the twin's ledger");
    assert_eq!(system.count("ledger", "loans", None).await, 0, "and never in the chain's ledger");

    let (code, rejected) = post(&system, sync, &application(579)).await;
    assert_eq!(code, 200);
    assert_eq!(rejected["status"], "rejected");
    assert_eq!(rejected["decisions"][1]["reason"], "credit score below 580");

    let mut big = application(800);
    big["amount"] = json!("60000.00");
    big["applicant"]["annual_income"] = json!("400000.00");
    let (code, waiting) = post(&system, sync, &big).await;
    assert_eq!(code, 200);
    assert_eq!(waiting["status"], "awaiting_approver");

    // A dependency down: the applicant gets an error, not a reference to come back to.
    system.bureau.cut();
    let (code, error) = post(&system, sync, &application(720)).await;
    assert_eq!(code, 503, "{error}");
    assert_eq!(error["error"], "unavailable");
    system.bureau.restore();
    let (code, _) = post(&system, sync, &application(720)).await;
    assert_eq!(code, 200, "answers again once the bureau is back");
    system.shutdown().await;
}
