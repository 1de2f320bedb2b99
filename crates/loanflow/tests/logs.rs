//! The logs of every service, captured at `info` through whole workflows, carry the
//! references and none of the applicants' personal data. (A binary of its own: it
//! installs the process's log subscriber.)

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use loanflow_testkit::{application, TestSystem, MANAGER_TOKEN};

/// Everything the services log, in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_references_and_no_personal_data() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt().with_env_filter("info").json().with_writer(move || writer.clone()).try_init().unwrap();

    let system = TestSystem::start().await;
    // Every path: approved, rejected at each automatic level, a person's approval.
    let mut people = Vec::new();
    let cases = [
        (720, None, "approved"),
        (579, None, "rejected"),
        (720, Some("minor"), "rejected"),
        (720, Some("sanctioned"), "rejected"),
        (800, Some("big"), "awaiting_approver"),
    ];
    for (score, tweak, expected) in cases {
        let mut body = application(score);
        body["applicant"]["full_name"] = json!(format!("Personal Name{}", people.len()));
        body["applicant"]["email"] = json!(format!("private{}@example.org", people.len()));
        match tweak {
            Some("minor") => body["applicant"]["date_of_birth"] = json!("2015-07-19"),
            Some("sanctioned") => body["applicant"]["national_id"] = json!("SANCTIONED1"),
            Some("big") => {
                body["amount"] = json!("60000.00");
                body["applicant"]["annual_income"] = json!("412345.67");
            }
            _ => {}
        }
        let reference = system.submit_ok(&body).await;
        system.wait_for_status(&reference, expected, Duration::from_secs(30)).await;
        people.push((reference, body));
    }
    let (big, _) = &people[4];
    assert_eq!(system.approve(MANAGER_TOKEN, big, "income verified").await.status(), 200);
    system.wait_for_status(big, "approved", Duration::from_secs(30)).await;
    system.shutdown().await;

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    for (reference, body) in &people {
        assert!(logs.contains(reference.as_str()), "the capture works: {reference} is logged");
        let applicant = &body["applicant"];
        for field in ["full_name", "email", "national_id", "date_of_birth", "annual_income", "monthly_debts"] {
            let value = applicant[field].as_str().unwrap();
            assert!(!logs.contains(value), "{field} ({value}) appears in the logs");
        }
    }
}
