//! What one application costs the database, counted on every connection of every
//! service's pool. The batching rewrite brought it down; this test fails if a change
//! makes it grow per application again (see `make bench` for the same figures at full
//! speed, read from PostgreSQL's own statistics).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::Duration;

use futures_util::future::join_all;

use loanflow_platform::db::Counters;
use loanflow_testkit::{application, wait_until, TestSystem};

/// Applications in the measured burst: enough for batches to form.
const BURST: usize = 200;

/// Statements per application for the whole chain (intake, four levels, ledger). Before
/// the batching rewrite it was about 20; with it, about 2 here.
const MAX_STATEMENTS_PER_APPLICATION: f64 = 4.0;

fn total(system: &TestSystem) -> (u64, u64) {
    let mut services = vec!["intake".to_owned(), "ledger".to_owned()];
    services.extend(system.settings.chain.names().iter().cloned());
    services
        .iter()
        .map(|s| Counters::of(&system.schema(s)))
        .fold((0, 0), |(st, tx), c| (st + c.statements(), tx + c.transactions()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_per_application_stay_batched() {
    let system = TestSystem::start().await;
    // One application first, so that start-up work (migrations, first connections) is
    // not counted.
    let first = system.submit_ok(&application(720)).await;
    system.wait_for_status(&first, "approved", Duration::from_secs(30)).await;
    let settled = |n: i64| {
        let system = &system;
        async move {
            system.count("ledger", "loans", None).await == n
                && system.count_matching("intake", "application_status", "status = 'approved'").await == n
        }
    };
    assert!(wait_until(Duration::from_secs(10), || settled(1)).await);
    let (statements, transactions) = total(&system);

    let body = application(720);
    for _ in 0..BURST / 50 {
        join_all((0..50).map(|_| system.submit_ok(&body))).await;
    }
    // Observed from outside the pools (the testkit's own connection), so that waiting
    // adds nothing to the count.
    let all = i64::try_from(BURST).unwrap() + 1;
    assert!(wait_until(Duration::from_secs(90), || settled(all)).await, "every application approved");

    let (statements_after, transactions_after) = total(&system);
    let per_application = |after: u64, before: u64| (after - before) as f64 / BURST as f64;
    let statements = per_application(statements_after, statements);
    let transactions = per_application(transactions_after, transactions);
    println!("per application: {statements:.2} statements, {transactions:.2} explicit transactions");
    for service in ["intake".to_owned(), "ledger".to_owned()].iter().chain(&system.settings.chain.names()) {
        println!("  {service}: {} statements in all", Counters::of(&system.schema(service)).statements());
    }
    assert!(
        statements <= MAX_STATEMENTS_PER_APPLICATION,
        "{statements:.2} statements per application, more than {MAX_STATEMENTS_PER_APPLICATION}"
    );
    system.shutdown().await;
}
