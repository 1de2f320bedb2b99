//! The loan office of the contract's version 2, through the real services: withdrawal
//! (and its race with the chain), dual control, claims, escalation across a restart,
//! the audit trail, and a new chain rolled out while applications are in flight.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::{stream, StreamExt};
use serde_json::{json, Value};

use loanflow_testkit::{
    application, wait_until, Options, TestSystem, ESCALATION_TOKEN, MANAGER_TOKEN, SECOND_MANAGER_TOKEN,
};

const WITHIN: Duration = Duration::from_secs(30);

/// An application that waits for a person (above the manager threshold), affordable.
fn big_ticket(amount: &str) -> Value {
    let mut body = application(760);
    body["amount"] = json!(amount);
    body["applicant"]["annual_income"] = json!("900000.00");
    body
}

async fn post(system: &TestSystem, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let mut request = system.http.post(system.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

async fn withdraw(system: &TestSystem, reference: &str, body: Option<Value>) -> (u16, Value) {
    post(system, &format!("/api/loans/{reference}/withdrawal"), None, body).await
}

async fn decide(system: &TestSystem, token: &str, reference: &str, decision: &str) -> (u16, Value) {
    let body = json!({"decision": decision, "reason": format!("{decision}d after review")});
    post(system, &format!("/api/approvals/{reference}"), Some(token), Some(body)).await
}

async fn claim(system: &TestSystem, token: &str, reference: &str) -> (u16, Value) {
    post(system, &format!("/api/approvals/{reference}/claim"), Some(token), None).await
}

async fn inbox(system: &TestSystem, token: &str, level: &str) -> Vec<Value> {
    let url = system.url(&format!("/api/approvals?level={level}"));
    let response = system.http.get(url).bearer_auth(token).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json::<Vec<Value>>().await.unwrap()
}

fn decisions(status: &Value) -> Vec<Value> {
    status["decisions"].as_array().unwrap().clone()
}

async fn waiting(system: &TestSystem, amount: &str) -> String {
    let reference = system.submit_ok(&big_ticket(amount)).await;
    system.wait_for_status(&reference, "awaiting_approver", WITHIN).await;
    reference
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawal_leaves_the_inbox_at_once_and_ends_withdrawn_after_the_decisions_before_it() {
    let system = TestSystem::start().await;
    let reference = waiting(&system, "60000.00").await;
    assert_eq!(inbox(&system, MANAGER_TOKEN, "manager").await.len(), 1);

    let (code, body) = withdraw(&system, &reference, Some(json!({"reason": "found a better rate"}))).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body,
        json!({"reference": reference, "withdrawal": "requested", "status_url": format!("/api/loans/{reference}")})
    );
    assert!(inbox(&system, MANAGER_TOKEN, "manager").await.is_empty(), "the inbox drops it at once");
    let (code, body) = decide(&system, MANAGER_TOKEN, &reference, "approve").await;
    assert_eq!((code, body["error"].as_str()), (409, Some("not_awaiting_decision")), "no decision after it");
    let (code, _) = withdraw(&system, &reference, None).await;
    assert_eq!(code, 202, "a second request while one is pending");

    let status = system.wait_for_status(&reference, "withdrawn", WITHIN).await;
    let timeline = decisions(&status);
    assert_eq!(timeline.len(), 4, "kyc, credit, underwriting, then the withdrawal: {status}");
    let last = timeline.last().unwrap();
    assert_eq!(
        (&last["level"], &last["outcome"], &last["decided_by"], &last["reason"]),
        (&json!("applicant"), &json!("withdrawn"), &json!("applicant"), &json!("found a better rate"))
    );
    assert_eq!(status["current_level"], Value::Null);
    assert_eq!(system.count("ledger", "withdrawals", Some(&reference)).await, 1);
    assert_eq!(system.count("ledger", "loans", Some(&reference)).await, 0);

    // Final now: 409; unknown: 404; a bad reason: 422 and nothing recorded.
    let (code, body) = withdraw(&system, &reference, None).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("already_final")));
    let (code, _) = withdraw(&system, "LN-000000000000000000000000", None).await;
    assert_eq!(code, 404);
    let other = system.submit_ok(&application(760)).await;
    let (code, body) = withdraw(&system, &other, Some(json!({"reason": "x".repeat(501)}))).await;
    assert_eq!((code, body["error"].as_str()), (422, Some("validation_failed")), "{body}");
    assert_eq!(system.count("intake", "withdrawals", Some(&other)).await, 0);
    let approved = system.wait_for_status(&other, "approved", WITHIN).await;
    let (code, body) = withdraw(&system, &other, None).await;
    assert_eq!((code, body["error"].as_str()), (409, Some("already_final")), "{approved}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_application_may_be_withdrawn() {
    let mut options = Options::default();
    options.retry.max_attempts = 2;
    let mut system = TestSystem::start_with(options).await;
    system.expect_dead_letters();
    system.bureau.cut();
    let reference = system.submit_ok(&application(760)).await;
    system.wait_for_status(&reference, "failed", WITHIN).await;
    let (code, _) = withdraw(&system, &reference, None).await;
    assert_eq!(code, 202);
    let status = system.wait_for_status(&reference, "withdrawn", WITHIN).await;
    assert_eq!(decisions(&status).last().unwrap()["outcome"], "withdrawn");
    system.bureau.restore();
    system.shutdown().await;
}

/// Hundreds of withdrawals racing the chain (some applications it approves, some it
/// rejects): each ends in exactly one final status, which never changes; the ledger
/// either booked a loan or recorded the withdrawal, never both; a withdrawn
/// application's timeline ends with the withdrawal and shows no decision made after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn withdrawals_racing_the_chain_end_every_application_in_one_final_status() {
    const APPLICATIONS: usize = 300;
    let system = TestSystem::start().await;
    let tap = system.tap_status_events().await;
    let references: Vec<String> = stream::iter(0..APPLICATIONS)
        .map(|i| {
            let system = &system;
            async move {
                // One in five is rejected by credit: withdrawals race rejections too.
                let reference = system.submit_ok(&application(if i % 5 == 0 { 500 } else { 760 })).await;
                // Withdrawn at different moments along the chain.
                tokio::time::sleep(Duration::from_millis((i as u64 * 37) % 400)).await;
                let (code, body) = withdraw(system, &reference, None).await;
                assert!(code == 202 || (code == 409 && body["error"] == "already_final"), "{code} {body}");
                reference
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;

    let finals = ["approved", "rejected", "withdrawn"];
    let all_final = wait_until(Duration::from_secs(120), || async {
        for reference in &references {
            if !finals.contains(&system.status(reference).await["status"].as_str().unwrap_or_default()) {
                return false;
            }
        }
        true
    })
    .await;
    assert!(all_final, "every application reaches a final status");
    let mut first: HashMap<String, Value> = HashMap::new();
    for reference in &references {
        first.insert(reference.clone(), system.status(reference).await);
    }
    // Once the system is quiet nothing moves any more.
    let quiet = wait_until(WITHIN, || async {
        system.count("intake", "outbox", None).await == 0
            && system.queue_depth("loanflow.intake.status").await == 0
            && system.queue_depth("loanflow.step.ledger").await == 0
    })
    .await;
    assert!(quiet);

    let mut by_status: HashMap<String, usize> = HashMap::new();
    let (booked, withdrawn) = (ledger_set(&system, "loans").await, ledger_set(&system, "withdrawals").await);
    for reference in &references {
        let status = system.status(reference).await;
        assert_eq!(status["status"], first[reference]["status"], "{reference}: a final status never changes");
        let name = status["status"].as_str().unwrap().to_owned();
        assert!(!(booked.contains(reference) && withdrawn.contains(reference)), "{reference} booked and withdrawn");
        match name.as_str() {
            "approved" => assert!(booked.contains(reference), "{reference} approved without a loan"),
            "withdrawn" => {
                assert!(withdrawn.contains(reference) && !booked.contains(reference), "{reference}");
                let timeline = decisions(&status);
                let last = timeline.last().unwrap();
                assert_eq!(last["outcome"], "withdrawn", "{status}");
                let at = last["decided_at"].as_str().unwrap();
                assert!(
                    timeline.iter().all(|d| d["decided_at"].as_str().unwrap() <= at),
                    "a decision after the withdrawal shows: {status}"
                );
            }
            _ => assert!(!booked.contains(reference), "{reference} rejected but booked"),
        }
        *by_status.entry(name).or_default() += 1;
    }
    // On the wire, no application was both booked and withdrawn by the ledger.
    let mut finals_seen: HashMap<String, HashSet<String>> = HashMap::new();
    for t in tap.events() {
        if matches!(t.event.status.as_str(), "approved" | "withdrawn") {
            finals_seen.entry(t.reference).or_default().insert(t.event.status.as_str().to_owned());
        }
    }
    assert!(finals_seen.values().all(|s| s.len() == 1), "the ledger announced two endings for one application");
    println!("withdrawal race over {APPLICATIONS} applications: {by_status:?}");
    let won = |status: &str| by_status.get(status).copied().unwrap_or(0) > 0;
    assert!(won("withdrawn") && won("approved"), "each side of the race wins sometimes: {by_status:?}");
    system.shutdown().await;
}

async fn ledger_set(system: &TestSystem, table: &str) -> HashSet<String> {
    let schema = system.schema("ledger");
    system.text_rows(&format!("SELECT reference AS v FROM \"{schema}\".\"{table}\"")).await.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_the_dual_control_threshold_two_different_approvers_must_approve() {
    let system = TestSystem::start().await;
    let reference = waiting(&system, "300000.00").await;

    let (code, body) = decide(&system, MANAGER_TOKEN, &reference, "approve").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("awaiting_approver")), "{body}");
    let status = system.status(&reference).await;
    assert_eq!(
        (status["status"].as_str(), status["current_level"].as_str()),
        (Some("awaiting_approver"), Some("manager"))
    );
    let first = decisions(&status).last().unwrap().clone();
    assert_eq!((first["level"].as_str(), first["decided_by"].as_str()), (Some("manager"), Some("approver:grace")));
    let (code, body) = decide(&system, MANAGER_TOKEN, &reference, "approve").await;
    assert_eq!((code, body["error"].as_str()), (409, Some("already_decided_by_you")));
    assert_eq!(inbox(&system, SECOND_MANAGER_TOKEN, "manager").await.len(), 1, "still waiting for the second");

    let (code, body) = decide(&system, SECOND_MANAGER_TOKEN, &reference, "approve").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("in_review")), "{body}");
    let status = system.wait_for_status(&reference, "approved", WITHIN).await;
    let manager: Vec<Value> =
        decisions(&status).iter().filter(|d| d["level"] == "manager").map(|d| d["decided_by"].clone()).collect();
    assert_eq!(
        manager,
        [json!("approver:grace"), json!("approver:alan")],
        "one entry per decision, in the order made: {status}"
    );
    let page = system.http.get(system.url(&format!("/loans/{reference}"))).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("approver:grace") && page.contains("approver:alan"), "the status page shows both approvals");

    // Two approvers racing on a four-eyes case: both approvals count, it goes on.
    let racing = waiting(&system, "400000.00").await;
    let (a, b) = tokio::join!(
        decide(&system, MANAGER_TOKEN, &racing, "approve"),
        decide(&system, SECOND_MANAGER_TOKEN, &racing, "approve")
    );
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    let status = system.wait_for_status(&racing, "approved", WITHIN).await;
    assert_eq!(decisions(&status).iter().filter(|d| d["level"] == "manager").count(), 2);
    // The same approver racing themself: one is taken.
    let twice = waiting(&system, "400000.00").await;
    let (a, b) = tokio::join!(
        decide(&system, MANAGER_TOKEN, &twice, "approve"),
        decide(&system, MANAGER_TOKEN, &twice, "approve")
    );
    let mut codes = [a.0, b.0];
    codes.sort_unstable();
    assert_eq!(codes, [200, 409], "{a:?} {b:?}");
    // A rejection by either ends it.
    let (code, _) = decide(&system, SECOND_MANAGER_TOKEN, &twice, "reject").await;
    assert_eq!(code, 200);
    system.wait_for_status(&twice, "rejected", WITHIN).await;
    // At or below the threshold one approval is enough.
    let single = waiting(&system, "250000.00").await;
    let (code, body) = decide(&system, MANAGER_TOKEN, &single, "approve").await;
    assert_eq!((code, body["status"].as_str()), (200, Some("in_review")));
    system.wait_for_status(&single, "approved", WITHIN).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimed_case_is_decided_by_its_holder_alone_until_released_or_expired() {
    let system = TestSystem::start().await;
    let reference = waiting(&system, "60000.00").await;

    // Two approvers racing for the claim: one holds it.
    let (a, b) =
        tokio::join!(claim(&system, MANAGER_TOKEN, &reference), claim(&system, SECOND_MANAGER_TOKEN, &reference));
    let (holder, other, held, refused) = if a.0 == 200 {
        (MANAGER_TOKEN, SECOND_MANAGER_TOKEN, a, b)
    } else {
        (SECOND_MANAGER_TOKEN, MANAGER_TOKEN, b, a)
    };
    assert_eq!(held.0, 200, "{held:?}");
    assert_eq!((refused.0, refused.1["error"].as_str()), (409, Some("claimed_by_other")), "{refused:?}");
    assert_eq!(refused.1["claimed_by"], held.1["claimed_by"]);
    assert_eq!(held.1["reference"], reference.as_str());
    let until = chrono::DateTime::parse_from_rfc3339(held.1["claimed_until"].as_str().unwrap()).unwrap();
    let minutes = (until.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_minutes();
    assert!((28..=30).contains(&minutes), "a claim lasts intake.claim_minutes: {minutes}");

    let item = inbox(&system, other, "manager").await.pop().unwrap();
    assert_eq!(item["claimed_by"], held.1["claimed_by"]);
    assert_eq!(item["claimed_until"], held.1["claimed_until"]);
    let (code, body) = decide(&system, other, &reference, "approve").await;
    assert_eq!((code, body["error"].as_str()), (409, Some("claimed_by_other")));
    let (code, _) = claim(&system, holder, &reference).await;
    assert_eq!(code, 200, "the holder renews");

    // The holder releases it: the other may claim it.
    let delete = |token: &'static str| {
        let url = system.url(&format!("/api/approvals/{reference}/claim"));
        let request = system.http.delete(url).bearer_auth(token);
        async move { request.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(delete(other).await, 409, "another's claim is not theirs to release");
    assert_eq!(delete(holder).await, 204);
    assert_eq!(inbox(&system, other, "manager").await[0]["claimed_by"], Value::Null);
    let (code, _) = claim(&system, other, &reference).await;
    assert_eq!(code, 200);

    // A claim expires: past it, anyone of the level may act.
    system.settings.clock.advance(Duration::from_secs(31 * 60));
    let (code, body) = claim(&system, holder, &reference).await;
    assert_eq!(code, 200, "{body}");
    let (code, body) = decide(&system, holder, &reference, "approve").await;
    assert_eq!(code, 200, "{body}");
    system.wait_for_status(&reference, "approved", WITHIN).await;
    assert_eq!(system.count("intake", "claims", Some(&reference)).await, 0, "a decision ends the claim");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_case_waiting_past_its_due_time_is_escalated_even_across_a_restart() {
    let mut system = TestSystem::start().await;
    let reference = waiting(&system, "60000.00").await;
    let item = inbox(&system, MANAGER_TOKEN, "manager").await.pop().unwrap();
    assert_eq!(item["escalated"], false);
    let since = chrono::DateTime::parse_from_rfc3339(item["waiting_since"].as_str().unwrap()).unwrap();
    let due = chrono::DateTime::parse_from_rfc3339(item["due_at"].as_str().unwrap()).unwrap();
    assert_eq!(due - since, chrono::Duration::hours(4), "levels.manager.escalate_after's default");
    assert!(inbox(&system, ESCALATION_TOKEN, "manager-escalated").await.is_empty());
    let (code, _) = decide(&system, ESCALATION_TOKEN, &reference, "approve").await;
    assert_eq!(code, 403, "not theirs before it is escalated");

    // While it waits, no broker delivery is held for it: the case is a row.
    assert_eq!(loanflow_platform::broker::unacknowledged(&system.vhost), 0);
    // The timer is pending while every service restarts; time passes meanwhile.
    system.stop_levels().await;
    system.restart_intake(|_| {}).await;
    for level in system.settings.chain.names() {
        system.start_level(&level).await;
    }
    system.settings.clock.advance(Duration::from_secs(4 * 3600 + 60));
    let escalated =
        wait_until(WITHIN, || async { !inbox(&system, ESCALATION_TOKEN, "manager-escalated").await.is_empty() }).await;
    assert!(escalated, "escalated after the restart");
    let item = inbox(&system, ESCALATION_TOKEN, "manager-escalated").await.pop().unwrap();
    assert_eq!(
        (item["escalated"].as_bool(), item["due_at"].as_str()),
        (Some(true), due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).as_str().into())
    );
    assert_eq!(
        inbox(&system, MANAGER_TOKEN, "manager").await[0]["escalated"],
        true,
        "overdue in the level's inbox too"
    );
    let status = system.status(&reference).await;
    let entry = decisions(&status).last().unwrap().clone();
    assert_eq!((entry["level"].as_str(), entry["outcome"].as_str()), (Some("manager"), Some("escalated")), "{status}");

    let (code, body) = decide(&system, ESCALATION_TOKEN, &reference, "approve").await;
    assert_eq!(code, 200, "{body}");
    let status = system.wait_for_status(&reference, "approved", WITHIN).await;
    assert_eq!(decisions(&status).last().unwrap()["decided_by"], "approver:olga");
    assert_eq!(decisions(&status).iter().filter(|d| d["outcome"] == "escalated").count(), 1, "escalated once");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_human_act_is_in_the_audit_trail_and_a_changed_row_is_named() {
    let system = TestSystem::start().await;
    let reference = waiting(&system, "60000.00").await;
    assert_eq!(claim(&system, MANAGER_TOKEN, &reference).await.0, 200);
    assert_eq!(decide(&system, MANAGER_TOKEN, &reference, "approve").await.0, 200);
    let other = waiting(&system, "60000.00").await;
    assert_eq!(withdraw(&system, &other, Some(json!({"reason": "changed my mind"}))).await.0, 202);
    assert_eq!(decide(&system, "not-a-token", &other, "approve").await.0, 401);
    let schema = system.schema("intake");
    let audited = wait_until(WITHIN, || async {
        system.count_matching("intake", "audit_trail", "action = 'sign_in_failed'").await == 1
    })
    .await;
    assert!(audited, "the failed sign-in is recorded");
    let acts = system
        .text_rows(&format!("SELECT actor || ' ' || action AS v FROM \"{schema}\".audit_trail ORDER BY id"))
        .await;
    assert_eq!(
        acts[..4],
        ["approver:grace claim", "approver:grace decision", "applicant withdrawal", "client:127.0.0.1 sign_in_failed"]
    );

    // The service's role may add rows but not change them.
    let update = format!("UPDATE \"{schema}\".audit_trail SET actor = 'approver:mallory' WHERE id = 2");
    let as_service = system.settings.intake.database.runtime_url();
    let refused = system.sql_as(as_service.clone(), &update).await.expect_err("the runtime role cannot update");
    assert!(refused.contains("permission denied"), "{refused}");
    let delete = format!("DELETE FROM \"{schema}\".audit_trail WHERE id = 3");
    assert!(system.sql_as(as_service, &delete).await.is_err(), "nor delete");

    let verify = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_loanflow"))
            .args(["audit", "verify"])
            .env("LOANFLOW_CONFIG_DIR", "/nonexistent")
            .env("LOANFLOW__INTAKE__DATABASE__URL", &system.settings.intake.database.url)
            .env("LOANFLOW__INTAKE__DATABASE__SCHEMA", &schema)
            .output()
            .unwrap()
    };
    let intact = verify();
    assert!(intact.status.success(), "{}", String::from_utf8_lossy(&intact.stdout));
    assert!(
        String::from_utf8_lossy(&intact.stdout).contains("4 row(s)"),
        "{}",
        String::from_utf8_lossy(&intact.stdout)
    );

    // A more privileged hand changes a row: verify names it and fails.
    system.execute_sql(&update).await;
    let broken = verify();
    let out = String::from_utf8_lossy(&broken.stdout);
    assert!(!broken.status.success(), "{out}");
    assert!(out.contains("row 2 was changed"), "{out}");
    // And removes one: the chain is found cut there.
    system.execute_sql(&format!("UPDATE \"{schema}\".audit_trail SET actor = 'approver:grace' WHERE id = 2")).await;
    system.execute_sql(&delete).await;
    let out = String::from_utf8_lossy(&verify().stdout).into_owned();
    assert!(out.contains("row 4 does not follow"), "{out}");
    system.shutdown().await;
}

/// A chain change rolled out while applications are in flight: those that started on
/// the old chain keep their slip (even waiting at a level the new chain dropped); new
/// ones take the new chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_chain_takes_new_applications_while_those_in_flight_keep_their_slip() {
    let mut system = TestSystem::start().await;
    let old: Vec<String> = stream::iter(0..3).then(|_| waiting(&system, "60000.00")).collect().await;
    // The new chain drops the manager: an intake restarted with it routes new
    // applications without a person, while the manager level keeps serving its queue.
    system
        .restart_intake(|s| {
            s.chain.levels.retain(|l| l.name() != "manager");
        })
        .await;
    let new = system.submit_ok(&big_ticket("60000.00")).await;
    let status = system.wait_for_status(&new, "approved", WITHIN).await;
    let levels: Vec<&str> =
        status["decisions"].as_array().unwrap().iter().map(|d| d["level"].as_str().unwrap()).collect();
    assert_eq!(levels, ["kyc", "credit", "underwriting"], "the new chain has no manager");

    for reference in &old {
        assert_eq!(system.status(reference).await["status"], "awaiting_approver", "still on the old slip");
        assert_eq!(decide(&system, MANAGER_TOKEN, reference, "approve").await.0, 200);
    }
    for reference in &old {
        let status = system.wait_for_status(reference, "approved", WITHIN).await;
        assert_eq!(decisions(&status).last().unwrap()["level"], "manager", "{status}");
    }
    system.shutdown().await;
}
