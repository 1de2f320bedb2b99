//! One application is one trace: from the `POST` that submits it, through the outbox
//! relay, every level (each its own process, exporting as itself) and the bureau call,
//! to the ledger and the status projection; W3C trace context carries it across the
//! broker and HTTP. The spans are exported over OTLP/HTTP (JSON) to a stand-in collector.
//!
//! This binary's own services (intake, bureau, ledger) export through the one exporter
//! this process installs, once, for all its tests.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::json;

use loanflow_platform::settings::{LogFormat, OtlpProtocol, OtlpSettings, TelemetrySettings};
use loanflow_platform::telemetry::{self, Telemetry};
use loanflow_testkit::{application, CollectedSpan, Options, OtlpCollector, TestSystem, MANAGER_TOKEN};

const WITHIN: Duration = Duration::from_secs(60);

/// How often exporters send what they have, in these tests.
const EXPORT_MS: &str = "100";

struct Traced {
    collector: OtlpCollector,
    telemetry: Telemetry,
}

/// The collector, and this process's exporter pointed at it.
fn traced() -> &'static Traced {
    static TRACED: OnceLock<Traced> = OnceLock::new();
    TRACED.get_or_init(|| {
        let collector = OtlpCollector::start();
        let settings = TelemetrySettings {
            format: LogFormat::Pretty,
            filter: if std::env::var("TEST_LOG").is_ok() { "info" } else { "error" }.into(),
            otlp: OtlpSettings {
                endpoint: collector.endpoint().to_owned(),
                protocol: OtlpProtocol::HttpJson,
                sample_ratio: 1.0,
                export_interval_ms: EXPORT_MS.parse().unwrap(),
            },
        };
        let telemetry = telemetry::init(&settings, "loanflow-test-services");
        Traced { collector, telemetry }
    })
}

/// A caller's own trace: its id, and the `traceparent` of its span.
fn caller_trace() -> (String, String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, traceparent)
}

fn named<'a>(spans: &'a [CollectedSpan], name: &str) -> Vec<&'a CollectedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn by_id<'a>(spans: &'a [CollectedSpan], id: &str) -> Option<&'a CollectedSpan> {
    spans.iter().find(|s| s.span_id == id)
}

/// Starts the chain's levels as processes of their own, exporting to the collector.
fn spawn_traced_levels(system: &TestSystem) -> Vec<tokio::process::Child> {
    let binary = env!("CARGO_BIN_EXE_loanflow");
    system
        .settings
        .chain
        .names()
        .iter()
        .map(|level| {
            system
                .level_process(binary, level)
                .env("LOANFLOW__TELEMETRY__OTLP__ENDPOINT", traced().collector.endpoint())
                .env("LOANFLOW__TELEMETRY__OTLP__PROTOCOL", "http/json")
                .env("LOANFLOW__TELEMETRY__OTLP__EXPORT_INTERVAL_MS", EXPORT_MS)
                .spawn()
                .unwrap()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_application_is_one_trace_from_the_post_through_every_level_process_to_the_ledger() {
    let traced = traced();
    let system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let _levels = spawn_traced_levels(&system);

    // The client traces too: the intake continues its trace.
    let (trace_id, caller_span, traceparent) = caller_trace();
    let reference = submit(&system, &traceparent, &application(760)).await;
    system.wait_for_status(&reference, "approved", WITHIN).await;
    traced.telemetry.flush();

    let queues = ["kyc", "credit", "underwriting", "manager", "ledger"].map(|q| format!("process loanflow.step.{q}"));
    let spans = traced
        .collector
        .wait_for_trace(&trace_id, WITHIN, |spans| {
            queues.iter().all(|q| !named(spans, q).is_empty())
                && spans.iter().filter(|s| s.name == "project status").count() >= 5
        })
        .await;
    let names: Vec<(&str, &str)> = spans.iter().map(|s| (s.service.as_str(), s.name.as_str())).collect();

    // The POST continues the caller's trace, and names the application.
    let post = named(&spans, "POST /api/loans");
    assert_eq!(post.len(), 1, "one server span for the POST: {names:?}");
    assert_eq!(post[0].parent_span_id, caller_span, "a child of the caller's span");
    assert_eq!(post[0].attribute("http.response.status_code"), Some("202"));
    let submit = named(&spans, "submit");
    assert_eq!(submit.len(), 1, "{names:?}");
    assert_eq!(submit[0].parent_span_id, post[0].span_id);
    assert_eq!(submit[0].attribute("reference"), Some(reference.as_str()));

    // The relay publishes in the submission's trace; kyc continues from that publish.
    let publish = named(&spans, "send loanflow.work");
    assert_eq!(publish.len(), 1, "{names:?}");
    assert_eq!(publish[0].parent_span_id, submit[0].span_id);
    let mut previous = publish[0];
    for (level, queue) in ["kyc", "credit", "underwriting", "manager"].iter().zip(&queues) {
        let process = named(&spans, queue);
        assert_eq!(process.len(), 1, "{queue} handled it once: {names:?}");
        let process = process[0];
        assert_eq!(process.service, format!("loanflow-level-{level}"), "exported by the level's own process");
        assert_eq!(process.attribute("reference"), Some(reference.as_str()));
        assert_eq!(process.attribute("messaging.destination.name"), Some(&queue["process ".len()..]));
        assert_eq!(
            process.parent_span_id, previous.span_id,
            "{queue} continues the span whose message it received ({} of {})",
            previous.name, previous.service
        );
        previous = process;
    }
    let ledger = named(&spans, &queues[4]);
    assert_eq!(ledger.len(), 1, "{names:?}");
    assert_eq!(ledger[0].parent_span_id, previous.span_id, "the ledger continues the manager's span");
    assert_eq!(ledger[0].attribute("reference"), Some(reference.as_str()));

    // The credit level's call to the bureau carries the trace over HTTP.
    let score = named(&spans, "POST /api/scores");
    assert_eq!(score.len(), 1, "{names:?}");
    let caller = by_id(&spans, &score[0].parent_span_id).expect("the bureau call's parent is in the trace");
    assert_eq!(caller.service, "loanflow-level-credit");

    // Every status event (four decisions, approved) is projected in the trace, whether it
    // came alone or as an item of a batch message.
    let projected = named(&spans, "project status");
    let statuses: Vec<&str> = projected.iter().filter_map(|s| s.attribute("status")).collect();
    assert!(statuses.contains(&"approved"), "{statuses:?}");
    assert!(statuses.iter().filter(|s| **s == "in_review").count() >= 4, "{statuses:?}");

    // Nothing of another application's trace slipped in: every span that names an
    // application names this one.
    for span in &spans {
        if let Some(other) = span.attribute("reference") {
            assert_eq!(other, reference, "{} of {} in the wrong trace", span.name, span.service);
        }
    }
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applications_decided_in_batches_each_keep_their_own_trace_and_a_persons_decision_continues_its_application() {
    let traced = traced();
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;

    // Queued while no level runs, the applications are taken in batches: each still has
    // a trace of its own, and its status events, sent several to a message, too.
    let mut small = Vec::new();
    for _ in 0..12 {
        let (trace_id, _, traceparent) = caller_trace();
        small.push((submit(&system, &traceparent, &application(760)).await, trace_id));
    }
    // A big loan waits for a person; the person's decision is a request of its own.
    let mut big = application(780);
    big["amount"] = json!("60000.00");
    big["applicant"]["annual_income"] = json!("400000.00");
    let (big_trace, _, traceparent) = caller_trace();
    let reference = submit(&system, &traceparent, &big).await;
    for level in system.settings.chain.names() {
        system.start_level(&level).await;
    }
    system.wait_for_status(&reference, "awaiting_approver", WITHIN).await;
    let (decision_trace, _, decision_parent) = caller_trace();
    let decided = system
        .http
        .post(system.url(&format!("/api/approvals/{reference}")))
        .bearer_auth(MANAGER_TOKEN)
        .header("traceparent", &decision_parent)
        .json(&json!({"decision": "approve", "reason": "collateral verified"}))
        .send()
        .await
        .unwrap();
    assert_eq!(decided.status(), 200);
    system.wait_for_status(&reference, "approved", WITHIN).await;
    for (reference, _) in &small {
        system.wait_for_status(reference, "approved", WITHIN).await;
    }
    traced.telemetry.flush();

    let mut from_batch_items = 0;
    for (reference, trace_id) in &small {
        let spans =
            traced.collector.wait_for_trace(trace_id, WITHIN, |spans| named(spans, "project status").len() >= 5).await;
        let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
        for queue in ["kyc", "credit", "underwriting", "manager", "ledger"] {
            let process = named(&spans, &format!("process loanflow.step.{queue}"));
            assert_eq!(process.len(), 1, "{reference} at {queue}: {names:?}");
            assert_eq!(process[0].attribute("reference"), Some(reference.as_str()));
        }
        let projected = named(&spans, "project status");
        assert!(projected.len() >= 5, "every status event of {reference} projected in its trace: {names:?}");
        for span in &spans {
            if let Some(other) = span.attribute("reference") {
                assert_eq!(other, reference, "{} in the wrong trace", span.name);
            }
        }
        // An event that came alone is projected under its message's delivery; one that
        // came as an item of a batch message, under the span its item names.
        let deliveries: Vec<&str> =
            named(&spans, "process loanflow.intake.status").iter().map(|s| s.span_id.as_str()).collect();
        from_batch_items += projected.iter().filter(|s| !deliveries.contains(&s.parent_span_id.as_str())).count();
    }
    assert!(from_batch_items > 0, "some events travelled as items of batch messages");

    // Every delivery's span is linked from its batch's span.
    let batches: Vec<CollectedSpan> =
        traced.collector.all().into_iter().filter(|s| s.name.starts_with("process batch ")).collect();
    for (_, trace_id) in &small {
        for process in traced.collector.trace(trace_id).iter().filter(|s| s.name.starts_with("process loanflow.")) {
            let link = (process.trace_id.clone(), process.span_id.clone());
            assert!(batches.iter().any(|b| b.links.contains(&link)), "no batch span links to {}", process.name);
        }
    }

    // The decision's delivery is in the decision's trace; the application goes on in its
    // own, in a span that links to the decision's.
    let spans = traced
        .collector
        .wait_for_trace(&big_trace, WITHIN, |spans| !named(spans, "process loanflow.step.ledger").is_empty())
        .await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let resumed = named(&spans, "decided by a person");
    assert_eq!(resumed.len(), 1, "{names:?}");
    assert_eq!(resumed[0].attribute("reference"), Some(reference.as_str()));
    let decision_spans = traced.collector.trace(&decision_trace);
    let delivery = decision_spans
        .iter()
        .find(|s| s.name == "process loanflow.step.manager")
        .expect("the decision's delivery at the manager level, in the decision's trace");
    assert!(
        resumed[0].links.contains(&(decision_trace.clone(), delivery.span_id.clone())),
        "links to the decision's delivery: {:?}",
        resumed[0].links
    );
    let ledger = named(&spans, "process loanflow.step.ledger");
    assert_eq!(ledger.len(), 1, "the ledger in the application's trace: {names:?}");
    assert_eq!(ledger[0].parent_span_id, resumed[0].span_id);
    system.shutdown().await;
}

/// Submits with the caller's `traceparent`; the reference.
async fn submit(system: &TestSystem, traceparent: &str, body: &serde_json::Value) -> String {
    let response = system.http.post(system.url("/api/loans")).header("traceparent", traceparent).json(body).send();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 202);
    response.json::<serde_json::Value>().await.unwrap()["reference"].as_str().unwrap().to_owned()
}
