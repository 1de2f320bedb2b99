//! The whole workflow through the real broker and database.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use chrono::{Months, Utc};
use futures_util::future::join_all;
use futures_util::StreamExt;
use serde_json::{json, Value};

use loanflow_platform::broker::step_queue;
use loanflow_testkit::{application, wait_until, Options, TestSystem};

const FINAL_WITHIN: Duration = Duration::from_secs(20);

fn levels(status: &Value) -> Vec<(String, String)> {
    status["decisions"]
        .as_array()
        .expect("decisions")
        .iter()
        .map(|d| (d["level"].as_str().unwrap_or("").to_owned(), d["outcome"].as_str().unwrap_or("").to_owned()))
        .collect()
}

fn chain(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected.iter().map(|(l, o)| ((*l).to_owned(), (*o).to_owned())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_outcome_of_the_default_chain() {
    let system = TestSystem::start().await;
    let minor_dob = Utc::now().date_naive().checked_sub_months(Months::new(17 * 12)).expect("date").to_string();

    let mut approved = application(720);
    approved["applicant"]["national_id"] = json!("SBX720A1");
    let mut minor = application(720);
    minor["applicant"]["date_of_birth"] = json!(minor_dob);
    let mut sanctioned = application(720);
    sanctioned["applicant"]["national_id"] = json!("SANCTIONED1");
    let low_score = application(579);
    let mut over_indebted = application(720);
    over_indebted["applicant"]["annual_income"] = json!("30000.00");
    over_indebted["applicant"]["monthly_debts"] = json!("1000.00");
    let mut big_ticket = application(800);
    big_ticket["amount"] = json!("60000.00");
    big_ticket["applicant"]["annual_income"] = json!("400000.00");

    let bodies = [&approved, &minor, &sanctioned, &low_score, &over_indebted, &big_ticket];
    let refs: Vec<String> = join_all(bodies.iter().map(|b| system.submit_ok(b))).await;

    // Approved: the offer for score 720 (band 670–739, 9.99%), booked exactly once.
    let status = system.wait_for_status(&refs[0], "approved", FINAL_WITHIN).await;
    assert_eq!(
        levels(&status),
        chain(&[("kyc", "approved"), ("credit", "approved"), ("underwriting", "approved"), ("manager", "approved")])
    );
    assert_eq!(
        status["offer"],
        json!({"amount": "25000.00", "annual_rate": "0.0999", "term_months": 36, "monthly_payment": "806.56"})
    );
    assert_eq!(status["current_level"], Value::Null);
    assert!(status["decisions"].as_array().unwrap().iter().all(|d| d["decided_by"] == "auto"));
    assert_eq!(system.count("ledger", "loans", Some(&refs[0])).await, 1);

    let rejected_at = [
        (&refs[1], chain(&[("kyc", "rejected")]), "applicant is under 18"),
        (&refs[2], chain(&[("kyc", "rejected")]), "identity checks could not be completed"),
        (&refs[3], chain(&[("kyc", "approved"), ("credit", "rejected")]), "credit score below 580"),
        (
            &refs[4],
            chain(&[("kyc", "approved"), ("credit", "approved"), ("underwriting", "rejected")]),
            "debt-to-income ratio above 0.43",
        ),
    ];
    for (reference, expected, reason) in rejected_at {
        let status = system.wait_for_status(reference, "rejected", FINAL_WITHIN).await;
        assert_eq!(levels(&status), expected, "{reference}");
        assert_eq!(status["decisions"].as_array().unwrap().last().unwrap()["reason"], reason);
        assert_eq!(status["offer"], Value::Null);
        assert_eq!(status["current_level"], Value::Null);
        assert_eq!(system.count("ledger", "loans", Some(reference)).await, 0);
    }
    // The sanctions hit is told to nobody but kyc's own records.
    let sanctioned = refs[2].as_str();
    let noted = system.count_matching("kyc", "internal_reasons", &format!("reference = '{sanctioned}'")).await;
    assert_eq!(noted, 1, "kyc keeps the precise reason");
    let precise = "reason = 'applicant is on the sanctions list'";
    assert_eq!(system.count_matching("kyc", "internal_reasons", precise).await, 1);
    assert_eq!(system.count_matching("intake", "decisions", precise).await, 0, "the status never shows it");

    // Above the threshold: waits for a person at the manager level, persisted there.
    let status = system.wait_for_status(&refs[5], "awaiting_approver", FINAL_WITHIN).await;
    assert_eq!(status["current_level"], "manager");
    assert_eq!(levels(&status), chain(&[("kyc", "approved"), ("credit", "approved"), ("underwriting", "approved")]));
    assert_eq!(system.count("manager", "waiting", Some(&refs[5])).await, 1);
    assert_eq!(system.count("ledger", "loans", Some(&refs[5])).await, 0);

    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submission_is_answered_before_any_level_runs() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;

    let reference = system.submit_ok(&application(760)).await;
    // The relay has handed it to the broker: it sits in the first level's queue...
    let queued =
        wait_until(Duration::from_secs(10), || async { system.queue_depth(&step_queue("kyc")).await == 1 }).await;
    assert!(queued, "the application should wait in the kyc queue");
    // ...and nobody has decided anything.
    let status = system.status(&reference).await;
    assert_eq!(status["status"], "submitted");
    assert_eq!(status["current_level"], Value::Null);
    assert_eq!(status["decisions"], json!([]));
    assert_eq!(status["reference"], reference.as_str());

    for level in system.settings.chain.names() {
        system.start_level(&level).await;
    }
    let status = system.wait_for_status(&reference, "approved", FINAL_WITHIN).await;
    assert_eq!(status["offer"]["annual_rate"], "0.0749");
    assert_eq!(system.count("ledger", "loans", Some(&reference)).await, 1);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_moves_through_in_review_with_the_current_level() {
    // Only kyc runs, so the application stops, visibly, at credit.
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    system.start_level("kyc").await;
    let reference = system.submit_ok(&application(700)).await;
    let status = system.wait_for_status(&reference, "in_review", FINAL_WITHIN).await;
    assert_eq!(status["current_level"], "credit");
    assert_eq!(levels(&status), chain(&[("kyc", "approved")]));
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_a_level_share_its_queue_and_decide_each_application_once() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let tap = system.tap_status_events().await;
    let first = system.start_level("kyc").await;
    let second = system.start_level("kyc").await;
    for level in ["credit", "underwriting", "manager"] {
        system.start_level(level).await;
    }

    const N: usize = 60;
    let refs: Vec<String> = join_all((0..N).map(|i| {
        let body = application(if i % 2 == 0 { 720 } else { 810 });
        let system = &system;
        async move { system.submit_ok(&body).await }
    }))
    .await;
    for reference in &refs {
        system.wait_for_status(reference, "approved", FINAL_WITHIN).await;
    }
    let kyc = tap.decisions_by("kyc");
    for reference in &refs {
        assert_eq!(kyc.get(reference), Some(&1), "{reference} should have exactly one kyc decision on the wire");
        assert_eq!(system.count("ledger", "loans", Some(reference)).await, 1);
    }
    let (a, b) = (
        first.decided.load(std::sync::atomic::Ordering::Relaxed),
        second.decided.load(std::sync::atomic::Ordering::Relaxed),
    );
    assert_eq!(a + b, N as u64, "every application decided once across the two instances");
    assert!(a > 0 && b > 0, "both instances should have taken work: {a} and {b}");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_is_configuration() {
    // A product without the manager level: a big ticket is approved without a person,
    // and only the configured levels decide.
    let levels_only = vec!["kyc".to_owned(), "credit".to_owned(), "underwriting".to_owned()];
    let system = TestSystem::start_with(Options { chain: Some(levels_only), ..Options::default() }).await;
    let mut big_ticket = application(800);
    big_ticket["amount"] = json!("60000.00");
    big_ticket["applicant"]["annual_income"] = json!("400000.00");
    let reference = system.submit_ok(&big_ticket).await;
    let status = system.wait_for_status(&reference, "approved", FINAL_WITHIN).await;
    assert_eq!(levels(&status), chain(&[("kyc", "approved"), ("credit", "approved"), ("underwriting", "approved")]));
    assert_eq!(status["offer"]["annual_rate"], "0.0599");
    assert_eq!(system.count("ledger", "loans", Some(&reference)).await, 1);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handled_message_ids_are_forgotten_after_the_retention_period() {
    let mut system = TestSystem::start().await;
    let reference = system.submit_ok(&application(720)).await;
    system.wait_for_status(&reference, "approved", FINAL_WITHIN).await;
    assert_eq!(system.count("kyc", "processed_messages", None).await, 1, "kyc remembers what it handled");

    // Aged past `retention.inbox_days` (7): the next sweep forgets it. A level sweeps
    // when it starts, so a second kyc instance shows it.
    let inbox = format!("\"{}\".processed_messages", system.schema("kyc"));
    system.execute_sql(&format!("UPDATE {inbox} SET processed_at = now() - interval '8 days'")).await;
    system.start_level("kyc").await;
    let forgotten =
        wait_until(Duration::from_secs(10), || async { system.count("kyc", "processed_messages", None).await == 0 })
            .await;
    assert!(forgotten, "the aged inbox entry is removed");
    assert_eq!(system.count("credit", "processed_messages", None).await, 1, "what is not aged stays");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_status_event_carries_the_decisions_so_far_so_a_missed_event_loses_nothing() {
    use loanflow_domain::messages::{Envelope, StatusEvent, StatusMessage};
    use loanflow_domain::{DecidedBy, Decision, Outcome, Reference, Status};

    let system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let reference = system.submit_ok(&application(720)).await;
    // Credit's event arrives, but kyc's never did: credit's carries both decisions.
    let decision = |level: &str| Decision {
        level: level.into(),
        outcome: Outcome::Approved,
        reason: format!("{level} passed"),
        decided_by: DecidedBy::Auto,
        decided_at: Utc::now(),
    };
    let (kyc, credit) = (decision("kyc"), decision("credit"));
    let event = StatusEvent::decided(credit.clone(), 2, Status::InReview, Some("underwriting".into()))
        .with_decisions(&[kyc, credit]);
    let envelope =
        Envelope::new(Reference::parse(&reference).unwrap(), "status/4", Utc::now(), StatusMessage::V1(event));
    let queue = loanflow_platform::broker::STATUS_QUEUE;
    let props = lapin::BasicProperties::default();
    system.inject_as("level_credit", queue, &envelope.encode(), props).await.unwrap();

    let shown = wait_until(Duration::from_secs(10), || async {
        system.status(&reference).await["decisions"].as_array().map_or(0, Vec::len) == 2
    })
    .await;
    assert!(shown, "both decisions are in the timeline");
    let status = system.status(&reference).await;
    assert_eq!(status["decisions"][0]["level"], "kyc", "in chain order");
    assert_eq!(status["decisions"][1]["level"], "credit");
    assert_eq!(status["current_level"], "underwriting");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_counts_its_requests_decisions_and_pool_waits() {
    let system = TestSystem::start().await;
    let reference = system.submit_ok(&application(720)).await;
    system.wait_for_status(&reference, "approved", Duration::from_secs(30)).await;
    let metrics = |url: String| {
        let http = system.http.clone();
        async move { http.get(url).send().await.unwrap().text().await.unwrap() }
    };
    let intake = metrics(system.url("/metrics")).await;
    for expected in [
        r#"loanflow_http_requests_total{method="POST",route="/api/loans",status="202"}"#,
        r#"loanflow_http_request_duration_seconds_bucket{method="GET",route="/api/loans/{reference}""#,
        "loanflow_db_pool_wait_seconds_count",
        // Present (its value is this process's last intake's: tests run many at once).
        r#"loanflow_health_part_up{part="database"}"#,
    ] {
        assert!(intake.contains(expected), "{expected} in the intake's /metrics");
    }
    assert!(!intake.contains(&reference), "no reference in a label: routes are patterns");
    let level = metrics(format!("{}/metrics", system.level_health_urls()[0])).await;
    assert!(level.contains(r#"loanflow_decisions_total{level="kyc",outcome="approved"}"#), "decisions by level");
    system.shutdown().await;
}

/// Scale-out: three instances of credit, two of every other service — two intakes on one
/// database among them — under one load. The work spreads over the instances of each
/// level, every application is decided exactly once per level, and the status every
/// intake answers is right.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_several_instances_of_every_service_work_spreads_and_each_application_is_decided_once_per_level() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let tap = system.tap_status_events().await;
    let mut instances: Vec<(&str, Vec<std::sync::Arc<loanflow_level::LevelStats>>)> = Vec::new();
    for (level, count) in [("kyc", 2), ("credit", 3), ("underwriting", 2), ("manager", 2)] {
        let mut stats = Vec::new();
        for _ in 0..count {
            stats.push(system.start_level(level).await);
        }
        instances.push((level, stats));
    }
    system.start_another_ledger().await;
    let intakes = [system.base_url.clone(), system.start_another_intake().await];

    const N: usize = 300;
    // One in six rejected by credit; the rest approved. Alternating between the intakes.
    let expected = |i: usize| if i.is_multiple_of(6) { "rejected" } else { "approved" };
    let refs: Vec<String> = futures_util::stream::iter(0..N)
        .map(|i| {
            let (system, url) = (&system, intakes[i % 2].clone());
            async move {
                let body = application(if i.is_multiple_of(6) { 500 } else { 720 + (i % 100) as u16 });
                let response = system.http.post(format!("{url}/api/loans")).json(&body).send().await.unwrap();
                assert_eq!(response.status(), 202);
                response.json::<serde_json::Value>().await.unwrap()["reference"].as_str().unwrap().to_owned()
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    // Each reference is known to both intakes, whichever recorded it.
    for (i, reference) in refs.iter().enumerate() {
        let url = &intakes[(i + 1) % 2];
        let final_status = loanflow_testkit::wait_until(FINAL_WITHIN, || async {
            let status: serde_json::Value =
                system.http.get(format!("{url}/api/loans/{reference}")).send().await.unwrap().json().await.unwrap();
            status["status"] != "submitted" && status["status"] != "in_review"
        })
        .await;
        assert!(final_status, "{reference} reached a final status");
    }
    let mut approved = 0;
    for reference in &refs {
        let status = system.status(reference).await;
        let name = status["status"].as_str().unwrap().to_owned();
        assert!(name == "approved" || name == "rejected", "{status}");
        let levels = if name == "approved" { 4 } else { 2 };
        assert_eq!(status["decisions"].as_array().unwrap().len(), levels, "{status}");
        approved += usize::from(name == "approved");
    }
    assert_eq!(approved, (0..N).filter(|i| expected(*i) == "approved").count());
    assert_eq!(system.count("ledger", "loans", None).await as usize, approved, "each approved loan booked once");
    for (level, stats) in &instances {
        let on_wire = tap.decisions_by(level);
        let reached = refs.iter().filter(|r| on_wire.contains_key(*r)).count();
        assert!(
            refs.iter().all(|r| on_wire.get(r).copied().unwrap_or(0) <= 1),
            "{level}: a second decision on the wire"
        );
        let decided: Vec<u64> = stats.iter().map(|s| s.decided.load(std::sync::atomic::Ordering::Relaxed)).collect();
        println!("{level}: {decided:?} of {reached}");
        assert_eq!(decided.iter().sum::<u64>() as usize, reached, "{level}: each application decided once");
        assert!(decided.iter().all(|d| *d > 0), "{level}: every instance took work: {decided:?}");
    }
    assert!(tap.conflicting_decisions().is_empty());
    system.shutdown().await;
}
