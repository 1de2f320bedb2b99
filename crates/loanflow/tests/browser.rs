//! The web pages in a real headless Chromium: runs `tests/browser/ui.test.mjs` (Node's
//! test runner with playwright-core, using Debian's `chromium`) against a system
//! started here. `make test` installs both; the screenshots land in
//! `target/screenshots` (the README's come from there).

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use loanflow_platform::settings::RetrySettings;
use loanflow_testkit::{application, Options, TestSystem, MANAGER_TOKEN, OPERATOR_TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_work_in_a_real_browser() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        here.join("node_modules/playwright-core").exists(),
        "browser test dependencies are missing: run `make prepare` (npm ci in {})",
        here.display()
    );
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(Path::new(&chromium).exists(), "Chromium is missing: run `make prepare` (apt-get install chromium)");

    // Short retries, so that an application fails (and dead-letters) within the setup.
    let retry = RetrySettings { max_attempts: 2, initial_ms: 100, max_ms: 200 };
    let system = TestSystem::start_with(Options { retry, ..Options::default() }).await;
    let mut big = application(760);
    big["amount"] = json!("60000.00");
    big["applicant"]["annual_income"] = json!("400000.00");
    let waiting = system.submit_ok(&big).await;
    system.wait_for_status(&waiting, "awaiting_approver", Duration::from_secs(20)).await;
    let withdrawable = system.submit_ok(&big).await;
    system.wait_for_status(&withdrawable, "awaiting_approver", Duration::from_secs(20)).await;
    // One that failed while the bureau was away: a dead letter for the operations page.
    system.bureau.cut();
    let failed = system.submit_ok(&application(760)).await;
    system.wait_for_status(&failed, "failed", Duration::from_secs(20)).await;
    system.bureau.restore();

    let screenshots = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/screenshots");
    let status = tokio::process::Command::new("node")
        .args(["--test", "--test-reporter=spec", "ui.test.mjs"])
        .current_dir(&here)
        .env("LOANFLOW_URL", &system.base_url)
        .env("LOANFLOW_MANAGER_TOKEN", MANAGER_TOKEN)
        .env("LOANFLOW_WAITING_REFERENCE", &waiting)
        .env("LOANFLOW_WITHDRAWABLE_REFERENCE", &withdrawable)
        .env("LOANFLOW_FAILED_REFERENCE", &failed)
        .env("LOANFLOW_OPERATOR_TOKEN", OPERATOR_TOKEN)
        .env("LOANFLOW_SCREENSHOTS", &screenshots)
        .env("CHROMIUM", &chromium)
        .status()
        .await
        .expect("node runs");
    system.shutdown().await;
    assert!(status.success(), "the browser tests failed (their output is above)");
}
