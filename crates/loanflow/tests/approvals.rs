//! The human approval level through its API: every response code of the contract,
//! and a person's decision flowing on through the broker like any other level's.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use serde_json::{json, Value};

use loanflow_testkit::{application, TestSystem, KYC_ONLY_TOKEN, MANAGER_TOKEN};

const WITHIN: Duration = Duration::from_secs(20);

fn big_ticket(score: u16, amount: &str) -> Value {
    let mut body = application(score);
    body["amount"] = json!(amount);
    body["applicant"]["annual_income"] = json!("400000.00");
    body
}

async fn decide(system: &TestSystem, token: Option<&str>, reference: &str, body: Value) -> (u16, Value) {
    let mut request = system.http.post(system.url(&format!("/api/approvals/{reference}"))).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_lists_and_decides_what_waits_for_them() {
    let system = TestSystem::start().await;
    let first = system.submit_ok(&big_ticket(760, "60000.00")).await;
    system.wait_for_status(&first, "awaiting_approver", WITHIN).await;
    let second = system.submit_ok(&big_ticket(810, "75000.00")).await;
    system.wait_for_status(&second, "awaiting_approver", WITHIN).await;

    // The inbox, oldest first, with what a person needs to decide.
    let inbox: Value = system
        .http
        .get(system.url("/api/approvals?level=manager"))
        .bearer_auth(MANAGER_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let items = inbox.as_array().unwrap();
    assert_eq!(items.len(), 2);
    assert_eq!(items[0]["reference"], first.as_str());
    assert_eq!(items[1]["reference"], second.as_str());
    assert_eq!(items[0]["amount"], "60000.00");
    assert_eq!(items[0]["applicant_name"], "Ada Lovelace");
    assert_eq!(items[0]["annual_income"], "400000.00");
    assert_eq!(items[0]["monthly_debts"], "1200.00");
    assert_eq!(items[0]["term_months"], 36);
    assert_eq!(items[0]["score"], 760);
    assert_eq!(items[0]["decisions"].as_array().unwrap().len(), 3);
    assert!(items[0]["waiting_since"].as_str().is_some());

    // Approve one: it flows on to the ledger, decided by the person.
    let (code, body) =
        decide(&system, Some(MANAGER_TOKEN), &first, json!({"decision": "approve", "reason": "collateral verified"}))
            .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["decided_by"], "approver:grace");
    let status = system.wait_for_status(&first, "approved", WITHIN).await;
    let manager = &status["decisions"].as_array().unwrap()[3];
    assert_eq!(manager["level"], "manager");
    assert_eq!(manager["outcome"], "approved");
    assert_eq!(manager["decided_by"], "approver:grace");
    assert_eq!(manager["reason"], "collateral verified");
    assert_eq!(status["offer"]["amount"], "60000.00");
    assert_eq!(system.count("ledger", "loans", Some(&first)).await, 1);
    assert_eq!(system.count("manager", "waiting", Some(&first)).await, 0, "no longer waiting at the level");

    // Reject the other: the chain ends there.
    let (code, _) =
        decide(&system, Some(MANAGER_TOKEN), &second, json!({"decision": "reject", "reason": "income not verified"}))
            .await;
    assert_eq!(code, 200);
    let status = system.wait_for_status(&second, "rejected", WITHIN).await;
    assert_eq!(status["decisions"].as_array().unwrap()[3]["decided_by"], "approver:grace");
    assert_eq!(system.count("ledger", "loans", Some(&second)).await, 0);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_approval_response_code_of_the_contract() {
    let system = TestSystem::start().await;
    let waiting = system.submit_ok(&big_ticket(760, "60000.00")).await;
    system.wait_for_status(&waiting, "awaiting_approver", WITHIN).await;
    let small = system.submit_ok(&application(760)).await;
    system.wait_for_status(&small, "approved", WITHIN).await;
    let approve = json!({"decision": "approve", "reason": "ok"});

    // 401: no token, a wrong token, another scheme.
    for token in [None, Some("not-a-token"), Some("")] {
        let (code, body) = decide(&system, token, &waiting, approve.clone()).await;
        assert_eq!(code, 401, "{token:?}");
        assert_eq!(body["error"], "unauthorized");
    }
    let response = system.http.get(system.url("/api/approvals?level=manager")).send().await.unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let basic = system
        .http
        .get(system.url("/api/approvals"))
        .header("authorization", format!("Basic {MANAGER_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), 401);

    // 403: a token for another level.
    let (code, body) = decide(&system, Some(KYC_ONLY_TOKEN), &waiting, approve.clone()).await;
    assert_eq!(code, 403);
    assert_eq!(body["error"], "forbidden");
    let list =
        system.http.get(system.url("/api/approvals?level=manager")).bearer_auth(KYC_ONLY_TOKEN).send().await.unwrap();
    assert_eq!(list.status(), 403);

    // 409: not waiting (already final), and a second decision for the same application.
    let (code, body) = decide(&system, Some(MANAGER_TOKEN), &small, approve.clone()).await;
    assert_eq!(code, 409);
    assert_eq!(body["error"], "not_awaiting_decision");
    let (first, second) = tokio::join!(
        decide(&system, Some(MANAGER_TOKEN), &waiting, approve.clone()),
        decide(&system, Some(MANAGER_TOKEN), &waiting, json!({"decision": "reject", "reason": "no"})),
    );
    let mut codes = [first.0, second.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 409], "exactly one of two racing decisions is taken");

    // 422 and 404.
    let (code, body) = decide(&system, Some(MANAGER_TOKEN), &waiting, json!({"decision": "maybe", "reason": ""})).await;
    assert_eq!(code, 422);
    assert!(body["fields"]["decision"].is_string() && body["fields"]["reason"].is_string(), "{body}");
    let (code, _) = decide(&system, Some(MANAGER_TOKEN), "LN-000000000000000000000000", approve).await;
    assert_eq!(code, 404);
    system.shutdown().await;
}
