//! The `smoke` scenario as a test: the simulator drives a real system through its
//! public API only, and the scenario's own expectations decide the verdict.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;

use loanflow_testkit::{TestSystem, MANAGER_TOKEN, OPERATOR_TOKEN, SECOND_MANAGER_TOKEN};

/// The simulator pointed at a test system, with the test approver's token.
fn options(system: &TestSystem, root: &Path) -> loanflow_simulate::Options {
    loanflow_simulate::Options {
        url: system.base_url.clone(),
        bureau_url: system.bureau_url.clone(),
        report_dir: root.join("target/reports"),
        approver_tokens: Some(vec![MANAGER_TOKEN.to_owned(), SECOND_MANAGER_TOKEN.to_owned()]),
        operator_token: OPERATOR_TOKEN.to_owned(),
        progress: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_meets_its_expectations() {
    let system = TestSystem::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let scenario = loanflow_simulate::Scenario::load(&root.join("examples/smoke.toml")).unwrap();
    let options = options(&system, &root);
    let outcome = loanflow_simulate::run(&scenario, &options).await.unwrap();
    let report = &outcome.report;
    println!("{}", report.table());
    assert!(outcome.failures.is_empty(), "unmet: {:?}", outcome.failures);
    assert_eq!(report.applications, 20);
    // Every kind of outcome the scenario is built to produce, with its level and reason.
    for expected in [
        "rejected at kyc: applicant is under 18 (auto)",
        "rejected at kyc: identity checks could not be completed (auto)",
        "rejected at credit: credit score below 580 (auto)",
        "rejected at underwriting: debt-to-income ratio above 0.43 (auto)",
        "approved at manager: within the automatic approval limit (auto)",
    ] {
        assert!(report.reasons.contains_key(expected), "{expected} missing from {:?}", report.reasons);
    }
    assert!(
        report.reasons.keys().any(|k| k.ends_with("(approver:grace)")),
        "the scripted approver decided the big tickets: {:?}",
        report.reasons
    );
    assert_eq!(report.end_to_end_samples.len(), 20, "every application's end-to-end latency is known");

    let folder = report.write(&root.join("target/reports")).unwrap();
    for file in ["summary.json", "statuses.svg", "latency.svg"] {
        let text = std::fs::read_to_string(folder.join(file)).unwrap();
        assert!(text.len() > 200, "{file} has content");
    }
    system.shutdown().await;
}

/// `big-tickets`, shortened: loans up to 400000, many under dual control, which the
/// scripted approvers (two people) see through to a final status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_tickets_under_dual_control_all_reach_a_final_status() {
    let system = TestSystem::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut scenario = loanflow_simulate::Scenario::load(&root.join("examples/big-tickets.toml")).unwrap();
    scenario.arrivals.count = 30;
    scenario.arrivals.bursts.clear();
    (scenario.expect.min_approved, scenario.expect.min_rejected) = (5, 1);
    if let Some(approvers) = &mut scenario.approvers {
        approvers.think_ms = 20;
    }
    let outcome = loanflow_simulate::run(&scenario, &options(&system, &root)).await.unwrap();
    println!("{}", outcome.report.table());
    assert!(outcome.failures.is_empty(), "unmet: {:?}", outcome.failures);
    let both = system.count_matching("intake", "decisions", "level = 'manager' AND decided_by = 'approver:alan'").await;
    assert!(both > 0, "the second person approved some");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unmet_expectations_fail_the_run() {
    let system = TestSystem::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut scenario = loanflow_simulate::Scenario::load(&root.join("examples/smoke.toml")).unwrap();
    scenario.arrivals.count = 4;
    scenario.expect.min_approved = 5; // more than were sent: cannot hold
    let options = options(&system, &root);
    let outcome = loanflow_simulate::run(&scenario, &options).await.unwrap();
    assert!(outcome.failures.iter().any(|f| f.contains("at least 5 expected")), "{:?}", outcome.failures);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fault_the_bureau_refuses_to_inject_fails_the_run() {
    let system = TestSystem::start().await;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut scenario = loanflow_simulate::Scenario::load(&root.join("examples/smoke.toml")).unwrap();
    scenario.arrivals.count = 4;
    scenario.faults =
        vec![loanflow_simulate::scenario::Fault { at_s: 0.0, until_s: 0.2, bureau_down: false, bureau_latency_ms: 5 }];
    let options = loanflow_simulate::Options { operator_token: "not-the-operator".into(), ..options(&system, &root) };
    let outcome = loanflow_simulate::run(&scenario, &options).await.unwrap();
    assert!(
        outcome.failures.iter().any(|f| f.contains("fault switch answered 401")),
        "a refused fault is reported: {:?}",
        outcome.failures
    );
    system.shutdown().await;
}
