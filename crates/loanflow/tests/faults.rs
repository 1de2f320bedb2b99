//! Fault injection: the delivery guarantees, each proven by breaking something under
//! load and checking, at the end, that every accepted application reached a final
//! status, that every approved loan has exactly one ledger row, and that no level
//! decided anything twice.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;

use lapin::options::BasicGetOptions;
use lapin::BasicProperties;
use serde_json::Value;

use loanflow_platform::broker::{step_queue, DEAD_LETTER_QUEUE, STATUS_QUEUE};
use loanflow_platform::settings::RetrySettings;
use loanflow_testkit::{application, wait_until, Options, TestSystem};

/// How long each outage lasts: the 10 seconds.
const OUTAGE: Duration = Duration::from_secs(10);
const SETTLE_WITHIN: Duration = Duration::from_secs(90);

/// Submits `n` applications, `chunk` at a time; every one must be accepted.
async fn submit_many(system: &TestSystem, n: usize) -> Vec<String> {
    let mut refs = Vec::with_capacity(n);
    let bodies: Vec<Value> = (0..n).map(|i| application(if i % 2 == 0 { 720 } else { 810 })).collect();
    for chunk in bodies.chunks(25) {
        refs.extend(join_all(chunk.iter().map(|b| system.submit_ok(b))).await);
    }
    refs
}

/// The end-of-scenario invariants.
async fn assert_all_approved_once(system: &TestSystem, refs: &[String]) {
    for reference in refs {
        let status = system.wait_for_status(reference, "approved", SETTLE_WITHIN).await;
        let levels: Vec<&str> =
            status["decisions"].as_array().unwrap().iter().map(|d| d["level"].as_str().unwrap()).collect();
        assert_eq!(levels, ["kyc", "credit", "underwriting", "manager"], "{reference}: one decision per level");
    }
    assert_eq!(system.count("ledger", "loans", None).await, refs.len() as i64, "one ledger row per approved loan");
}

async fn wait_ready(system: &TestSystem, ready: bool) -> bool {
    probe_ready(system, &system.url("/health/ready"), ready).await
}

/// The intake's readiness: status code and body.
async fn ready_body(system: &TestSystem) -> (u16, Value) {
    let answer = system.http.get(system.url("/health/ready")).send().await.unwrap();
    (answer.status().as_u16(), answer.json().await.unwrap())
}

/// Waits until the intake's readiness body reports `part` up or down.
async fn wait_part(system: &TestSystem, part: &str, up: bool) -> bool {
    wait_until(SETTLE_WITHIN, || async { ready_body(system).await.1["parts"][part] == up }).await
}

/// Waits until a readiness endpoint says `ready` (200) or not (503).
async fn probe_ready(system: &TestSystem, url: &str, ready: bool) -> bool {
    wait_until(Duration::from_secs(15), || async {
        let status = system.http.get(url).send().await.map(|r| r.status().as_u16()).unwrap_or(0);
        (status == 200) == ready
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intake_survives_its_broker_connection_cut_for_ten_seconds() {
    let system = TestSystem::start().await;
    let tap = system.tap_status_events().await;
    assert!(wait_ready(&system, true).await, "ready once connected");
    let mut refs = submit_many(&system, 150).await;

    system.intake_broker.cut();
    // The intake stays ready (a load balancer keeps it in: its outbox absorbs the
    // outage), and says in the body that its broker parts are down.
    assert!(wait_part(&system, "outbox-relay", false).await, "the relay's part is reported down");
    let body = ready_body(&system).await;
    assert_eq!(body.0, 200, "still ready while the broker is unreachable: {:?}", body.1);
    assert_eq!(body.1["parts"]["database"], true);
    // Applicants are still answered at once: their applications wait in the outbox.
    refs.extend(submit_many(&system, 150).await);
    // The backlog shows in the metrics: what an operator alerts on.
    let schema = system.settings.intake.database.schema.to_string();
    let backlog = format!("loanflow_outbox_backlog{{schema=\"{schema}\"}} ");
    let seen = wait_until(Duration::from_secs(5), || async {
        let metrics = system.http.get(system.url("/metrics")).send().await.unwrap().text().await.unwrap();
        let value = metrics.lines().find_map(|l| l.strip_prefix(backlog.as_str())?.parse::<f64>().ok());
        value.is_some_and(|n| n >= 150.0)
    })
    .await;
    assert!(seen, "{backlog}≥ 150 in /metrics");
    tokio::time::sleep(OUTAGE).await; // the outage itself, not a wait for a condition
    system.intake_broker.restore();
    assert!(wait_part(&system, "outbox-relay", true).await, "the relay reconnects");
    assert!(wait_part(&system, "status-consumer", true).await, "the projection reconnects");

    assert_all_approved_once(&system, &refs).await;
    assert_eq!(system.count("intake", "outbox", None).await, 0, "the relay caught up");
    assert_eq!(tap.conflicting_decisions(), Vec::<(String, String)>::new());
    system.shutdown().await;
}

/// A level given two broker addresses goes on through the second when the first is cut
/// (as when a cluster node goes down), and nothing is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_given_two_broker_addresses_fails_over_to_the_second() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let (kyc, _second) = system.start_level_with_two_broker_addresses("kyc").await;
    for level in ["credit", "underwriting", "manager"] {
        system.start_level(level).await;
    }
    let mut refs = submit_many(&system, 30).await;
    assert_all_approved_once(&system, &refs).await;
    let before = kyc.stats.decided.load(std::sync::atomic::Ordering::Relaxed);
    kyc.proxy.cut(); // the first address is gone for good
    refs.extend(submit_many(&system, 30).await);
    assert_all_approved_once(&system, &refs).await;
    let after = kyc.stats.decided.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after - before, 30, "the same kyc instance decided them, through the second address");
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_survives_its_broker_connection_cut_for_ten_seconds() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let tap = system.tap_status_events().await;
    for level in ["kyc", "underwriting", "manager"] {
        system.start_level(level).await;
    }
    let credit = system.start_level_behind_proxy("credit").await;
    assert!(probe_ready(&system, &credit.health, true).await, "the level is ready once consuming");
    let mut refs = submit_many(&system, 150).await;
    let busy = wait_until(Duration::from_secs(20), || async { tap.decisions_by("credit").len() >= 20 }).await;
    assert!(busy, "credit is deciding when its connection is cut");

    credit.proxy.cut();
    assert!(probe_ready(&system, &credit.health, false).await, "not ready while disconnected");
    refs.extend(submit_many(&system, 150).await);
    tokio::time::sleep(OUTAGE).await;
    credit.proxy.restore();
    assert!(probe_ready(&system, &credit.health, true).await, "ready again once reconnected");

    assert_all_approved_once(&system, &refs).await;
    assert_eq!(tap.conflicting_decisions(), Vec::<(String, String)>::new());
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bureau_outage_delays_applications_without_failing_them() {
    // Retries back off from 200 ms to 2 s: 12 attempts span about 17 s, longer than
    // the outage.
    let retry = RetrySettings { max_attempts: 12, initial_ms: 200, max_ms: 2000 };
    let system = TestSystem::start_with(Options { retry, ..Options::default() }).await;
    system.bureau.cut();
    let refs = submit_many(&system, 50).await;
    // They reach credit and wait there: neither failed nor rejected.
    for reference in &refs {
        let status = system.wait_for_status(reference, "in_review", SETTLE_WITHIN).await;
        assert_eq!(status["current_level"], "credit");
    }
    tokio::time::sleep(OUTAGE).await;
    for reference in &refs {
        let status = system.status(reference).await["status"].clone();
        assert_eq!(status, "in_review", "{reference} is still waiting, not failed");
    }
    system.bureau.restore();
    assert_all_approved_once(&system, &refs).await;
    assert_eq!(system.queue_depth(DEAD_LETTER_QUEUE).await, 0);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_retry_budget_applications_fail_then_complete_after_replay() {
    let retry = RetrySettings { max_attempts: 3, initial_ms: 100, max_ms: 200 };
    let system = TestSystem::start_with(Options { retry, ..Options::default() }).await;
    system.bureau.cut();
    let refs = submit_many(&system, 20).await;
    for reference in &refs {
        let status = system.wait_for_status(reference, "failed", SETTLE_WITHIN).await;
        assert_eq!(status["current_level"], "credit");
    }
    let letters = loanflow_platform::dlq::list(&system.settings).await.unwrap();
    assert_eq!(letters.len(), refs.len(), "every failed application's message is kept");
    for letter in &letters {
        assert!(refs.contains(&letter.reference));
        assert_eq!(letter.origin_queue, step_queue("credit"));
        assert_eq!(letter.attempts, 3);
        assert!(letter.reason.contains("gave up after 3 attempts") && letter.reason.contains("bureau"), "{letter:?}");
    }

    system.bureau.restore();
    // One first, by reference; then the rest.
    let intake = loanflow_platform::db::pool(&system.settings.intake.database);
    let replayed =
        loanflow_intake::operations::replay_dead_letters(&system.settings, &intake, "ops", Some(&refs[0])).await;
    assert_eq!(replayed.unwrap(), 1);
    let audited = format!("actor = 'operator:ops' AND action = 'dead_letter_replay' AND reference = '{}'", refs[0]);
    assert_eq!(system.count_matching("intake", "audit_trail", &audited).await, 1, "the replay is in the audit trail");
    system.wait_for_status(&refs[0], "approved", SETTLE_WITHIN).await;
    assert_eq!(loanflow_platform::dlq::replay(&system.settings, None).await.unwrap(), refs.len() - 1);
    assert_all_approved_once(&system, &refs).await;
    assert_eq!(system.queue_depth(DEAD_LETTER_QUEUE).await, 0);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_level_killed_with_sigkill_mid_load_loses_nothing() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let tap = system.tap_status_events().await;
    for level in ["kyc", "underwriting", "manager"] {
        system.start_level(level).await;
    }
    let binary = env!("CARGO_BIN_EXE_loanflow");
    let mut credit = system.spawn_level_process(binary, "credit");
    let refs = submit_many(&system, 300).await;
    let busy = wait_until(Duration::from_secs(30), || async { tap.decisions_by("credit").len() >= 30 }).await;
    assert!(busy, "credit is deciding when it is killed");

    credit.kill().await.unwrap(); // SIGKILL: no chance to clean up
    let decided_before = tap.decisions_by("credit").len();
    assert!(decided_before < refs.len(), "killed mid-load ({decided_before} of {} decided)", refs.len());
    let _restarted = system.spawn_level_process(binary, "credit");

    assert_all_approved_once(&system, &refs).await;
    assert_eq!(tap.conflicting_decisions(), Vec::<(String, String)>::new());
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_a_level_cleanly_and_loses_nothing() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let tap = system.tap_status_events().await;
    for level in ["kyc", "underwriting", "manager"] {
        system.start_level(level).await;
    }
    let binary = env!("CARGO_BIN_EXE_loanflow");
    let mut credit = system.spawn_level_process(binary, "credit");
    let refs = submit_many(&system, 200).await;
    let busy = wait_until(Duration::from_secs(30), || async { !tap.decisions_by("credit").is_empty() }).await;
    assert!(busy);

    let pid = credit.id().unwrap().to_string();
    let signalled = tokio::process::Command::new("kill").args(["-TERM", &pid]).status().await.unwrap();
    assert!(signalled.success());
    let exit = tokio::time::timeout(Duration::from_secs(15), credit.wait()).await.expect("exits promptly").unwrap();
    assert!(exit.success(), "a clean stop exits 0, got {exit:?}");
    let _restarted = system.spawn_level_process(binary, "credit");

    assert_all_approved_once(&system, &refs).await;
    assert_eq!(tap.conflicting_decisions(), Vec::<(String, String)>::new());
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_message_delivered_twice_is_decided_once() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    let tap = system.tap_status_events().await;
    let reference = system.submit_ok(&application(720)).await;
    let queued =
        wait_until(Duration::from_secs(10), || async { system.queue_depth(&step_queue("kyc")).await == 1 }).await;
    assert!(queued);

    // Copy the message in the kyc queue, byte for byte and with its properties, as the
    // intake that sent it (a relay that published it twice).
    let conn = system.amqp().await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let original =
        channel.basic_get(step_queue("kyc").as_str().into(), BasicGetOptions { no_ack: false }).await.unwrap().unwrap();
    let props: BasicProperties = original.delivery.properties.clone();
    system.inject_as("intake", &step_queue("kyc"), &original.delivery.data, props).await.unwrap();
    channel.close(200, "bye".into()).await.unwrap(); // the original returns to the queue
    conn.close(200, "bye".into()).await.unwrap();
    assert!(wait_until(Duration::from_secs(5), || async { system.queue_depth(&step_queue("kyc")).await == 2 }).await);

    for level in system.settings.chain.names() {
        system.start_level(&level).await;
    }
    system.wait_for_status(&reference, "approved", SETTLE_WITHIN).await;
    let drained =
        wait_until(Duration::from_secs(10), || async { system.queue_depth(&step_queue("kyc")).await == 0 }).await;
    assert!(drained, "the duplicate was consumed too");
    // Let any second decision reach the tap before counting: every later step is idle.
    for step in ["credit", "underwriting", "manager", "ledger"] {
        assert!(
            wait_until(Duration::from_secs(10), || async { system.queue_depth(&step_queue(step)).await == 0 }).await
        );
    }
    assert!(wait_until(Duration::from_secs(10), || async { system.queue_depth(STATUS_QUEUE).await == 0 }).await);
    for level in ["kyc", "credit", "underwriting", "manager"] {
        assert_eq!(tap.decisions_by(level).get(&reference), Some(&1), "{level} decided once, announced once");
    }
    assert_eq!(system.status(&reference).await["decisions"].as_array().unwrap().len(), 4);
    assert_eq!(system.count("ledger", "loans", Some(&reference)).await, 1);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_messages_are_dead_lettered_at_once_and_the_line_moves_on() {
    let mut system = TestSystem::start().await;
    system.expect_dead_letters();
    let mut unknown_version = serde_json::to_value(application(720)).unwrap();
    unknown_version = serde_json::json!({
        "message_id": "5f0c6a2e-0000-4000-8000-000000000001",
        "reference": "LN-000000000000000000000000",
        "sent_at": "2026-11-24T10:00:00Z",
        "type": "loan.work.v9",
        "data": unknown_version,
    });
    let poisons: [Vec<u8>; 2] = [b"\xff\xfe not json".to_vec(), serde_json::to_vec(&unknown_version).unwrap()];
    let mut queues: Vec<String> = system.settings.chain.names().iter().map(|l| step_queue(l)).collect();
    queues.push(step_queue("ledger"));
    queues.push(STATUS_QUEUE.to_owned());

    for queue in &queues {
        // From a sender the queue accepts, so that it is the message that is refused.
        let sender = if queue == STATUS_QUEUE || queue == &step_queue("ledger") { "level_manager" } else { "intake" };
        for poison in &poisons {
            let props = BasicProperties::default().with_delivery_mode(2);
            system.inject_as(sender, queue, poison, props).await.unwrap();
        }
    }
    let expected = (queues.len() * poisons.len()) as u32;
    let all_dead =
        wait_until(Duration::from_secs(20), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == expected }).await;
    assert!(all_dead, "every poison message is dead-lettered at once (no retries)");
    let letters = loanflow_platform::dlq::list(&system.settings).await.unwrap();
    for queue in &queues {
        let from_here: Vec<_> = letters.iter().filter(|l| &l.origin_queue == queue).collect();
        assert_eq!(from_here.len(), 2, "{queue}");
        assert!(
            from_here.iter().all(|l| l.reason.starts_with("undecodable message") && l.attempts == 1),
            "{from_here:?}"
        );
    }
    // Listing is read-only: listed more often than the queue's delivery limit (20), every
    // letter is still there, in the same order.
    let order: Vec<String> = letters.iter().map(|l| format!("{}/{}", l.origin_queue, l.reason)).collect();
    for _ in 0..30 {
        let again = loanflow_platform::dlq::list(&system.settings).await.unwrap();
        assert_eq!(again.iter().map(|l| format!("{}/{}", l.origin_queue, l.reason)).collect::<Vec<_>>(), order);
    }
    assert_eq!(system.queue_depth(DEAD_LETTER_QUEUE).await, expected, "no letter lost to listing");
    // The line still moves.
    let reference = system.submit_ok(&application(720)).await;
    system.wait_for_status(&reference, "approved", SETTLE_WITHIN).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_at_a_level_delays_applications_without_failing_them() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    for level in ["kyc", "underwriting", "manager"] {
        system.start_level(level).await;
    }
    let credit = system.start_level_behind_db_proxy("credit").await;
    let mut refs = submit_many(&system, 25).await;
    credit.proxy.cut();
    refs.extend(submit_many(&system, 25).await);
    // Credit cannot check its inbox: the applications wait at credit, none fails.
    let waiting = wait_until(Duration::from_secs(20), || async {
        let last = system.status(refs.last().unwrap()).await;
        last["status"] == "in_review" && last["current_level"] == "credit"
    })
    .await;
    assert!(waiting, "applications wait at credit while its database is unreachable");
    tokio::time::sleep(Duration::from_secs(5)).await; // the outage itself
    for reference in &refs[25..] {
        assert_ne!(system.status(reference).await["status"], "failed", "{reference}");
    }
    credit.proxy.restore();
    assert_all_approved_once(&system, &refs).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn level_queues_are_quorum_queues_whose_delivery_limit_dead_letters_a_crashing_message() {
    let mut options = Options { levels: false, ..Options::default() };
    options.retry.max_attempts = 10;
    let mut system = TestSystem::start_with(options).await;
    system.expect_dead_letters();
    let api = "http://127.0.0.1:15672/api";
    for level in ["kyc", "credit", "underwriting", "manager", "ledger"] {
        let url = format!("{api}/queues/{}/{}", system.vhost, step_queue(level));
        let queue: Value =
            system.http.get(url).basic_auth("guest", Some("guest")).send().await.unwrap().json().await.unwrap();
        assert_eq!(queue["type"], "quorum", "{level}");
        assert_eq!(queue["arguments"]["x-delivery-limit"], system.settings.broker.delivery_limit, "{level}");
        assert_eq!(queue["arguments"]["x-dead-letter-exchange"], "loanflow.dead", "{level}");
    }

    // A consumer that dies on a message (here: returns it, again and again) loses it to
    // the broker's delivery limit, which dead-letters it instead of looping forever.
    let reference = system.submit_ok(&application(720)).await;
    let queue = step_queue("kyc");
    assert!(wait_until(Duration::from_secs(10), || async { system.queue_depth(&queue).await == 1 }).await);
    let conn = system.amqp().await.unwrap();
    let channel = conn.create_channel().await.unwrap();
    let limit = system.settings.broker.delivery_limit;
    let mut deliveries = 0;
    while let Some(got) = channel.basic_get(queue.as_str().into(), BasicGetOptions { no_ack: false }).await.unwrap() {
        deliveries += 1;
        got.delivery.nack(lapin::options::BasicNackOptions { requeue: true, ..Default::default() }).await.unwrap();
        assert!(deliveries <= limit + 1, "the broker should have stopped redelivering");
        let _ = wait_until(Duration::from_secs(2), || async {
            system.queue_depth(&queue).await > 0 || system.queue_depth(DEAD_LETTER_QUEUE).await > 0
        })
        .await;
    }
    assert!(wait_until(Duration::from_secs(10), || async { system.queue_depth(DEAD_LETTER_QUEUE).await == 1 }).await);
    let letters = loanflow_platform::dlq::list(&system.settings).await.unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reference, reference);
    assert_eq!(letters[0].origin_queue, queue);
    assert!(letters[0].reason.contains("delivery_limit"), "{:?}", letters[0]);
    let _ = conn.close(200, "bye".into()).await;
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_inside_a_batch_dead_letters_alone_while_its_batch_mates_go_on() {
    let mut system = TestSystem::start_with(Options { levels: false, ..Options::default() }).await;
    system.expect_dead_letters();
    // Twenty applications and one poison message between them wait in the kyc queue,
    // so that kyc, once started, takes them in batches.
    let mut refs = submit_many(&system, 10).await;
    let props = BasicProperties::default().with_delivery_mode(2);
    let kyc = step_queue("kyc");
    let poison = b"{\"type\": \"loan.work.v1\", \"not\": \"a work item\"}";
    system.inject_as("intake", &kyc, poison, props).await.unwrap();
    refs.extend(submit_many(&system, 10).await);
    let queued = wait_until(Duration::from_secs(10), || async { system.queue_depth(&kyc).await == 21 }).await;
    assert!(queued, "all twenty-one wait in the kyc queue");

    let kyc_stats = system.start_level("kyc").await;
    for level in ["credit", "underwriting", "manager"] {
        system.start_level(level).await;
    }
    assert_all_approved_once(&system, &refs).await;
    assert!(kyc_stats.largest_batch.load(Ordering::Relaxed) > 1, "kyc took them in batches");
    assert_eq!(kyc_stats.decided.load(Ordering::Relaxed), 20, "every batch-mate decided once");
    let letters = loanflow_platform::dlq::list(&system.settings).await.unwrap();
    assert_eq!(letters.len(), 1, "only the poison message is dead-lettered: {letters:?}");
    assert_eq!(letters[0].origin_queue, kyc);
    assert!(letters[0].reason.starts_with("undecodable message"), "{}", letters[0].reason);
    system.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_intake_is_not_ready_while_its_database_is_unreachable() {
    let system = TestSystem::start().await;
    assert!(wait_ready(&system, true).await, "ready once its database answers");
    system.intake_database.cut();
    assert!(wait_ready(&system, false).await, "503 while its database is unreachable");
    let (status, body) = ready_body(&system).await;
    assert_eq!((status, body["parts"]["database"].clone()), (503, Value::Bool(false)), "{body}");
    system.intake_database.restore();
    assert!(wait_ready(&system, true).await, "ready again once the database answers");
    let reference = system.submit_ok(&application(720)).await;
    system.wait_for_status(&reference, "approved", SETTLE_WITHIN).await;
    system.shutdown().await;
}

/// A delivery waiting for its retry holds its own place and nothing more: the consumer
/// settles what arrives after it meanwhile (acked on its own: with a prefetch window of
/// four, a multiple-ack that had to wait for the retry would stop the line until the
/// retry budget ran out), and a connection lost during the wait gives the delivery
/// back to the broker, which redelivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_waiting_for_its_retry_holds_up_nothing_and_survives_its_connection() {
    use loanflow_platform::broker::{self, access, Disposition};
    use std::sync::{Arc, Mutex};
    const ATTEMPTS: u32 = 30;
    let mut system = TestSystem::start_with(Options { levels: false, ..Default::default() }).await;
    system.expect_dead_letters();
    let (proxy, url) = system.broker_proxy().await;
    let mut settings = system.settings.clone();
    settings.broker = settings.broker.acting_as(&access::level("kyc"));
    settings.broker.url = url;
    settings.broker.prefetch = 4;
    // A 6 s budget: 29 waits of 200 ms.
    settings.retry = RetrySettings { max_attempts: ATTEMPTS, initial_ms: 200, max_ms: 200 };
    let senders = access::Senders::of(&settings.broker, access::Queue::Level("kyc"));
    let consuming = loanflow_platform::health::Health::default();
    let health = consuming.part("broker");
    // Every delivery the handler saw: its body, the attempts made before, redelivered.
    let seen: Arc<Mutex<Vec<(String, u32, bool)>>> = Arc::default();
    let log = seen.clone();
    let stop = loanflow_platform::CancellationToken::new();
    let consumer =
        tokio::spawn(broker::consume(settings, step_queue("kyc"), senders, health, stop.clone(), move |batch, _| {
            let log = log.clone();
            async move {
                let mut log = log.lock().unwrap();
                batch
                    .iter()
                    .map(|item| {
                        let body = String::from_utf8_lossy(&item.data).into_owned();
                        let slow = body == "slow";
                        log.push((body, item.attempts, item.redelivered));
                        if slow {
                            Disposition::Retry("not yet".into())
                        } else {
                            Disposition::Ack
                        }
                    })
                    .collect()
            }
        }));
    let count = |pred: &dyn Fn(&(String, u32, bool)) -> bool| seen.lock().unwrap().iter().filter(|e| pred(e)).count();
    let slow_attempts =
        || seen.lock().unwrap().iter().filter(|(body, ..)| body == "slow").map(|(_, n, _)| *n).max().unwrap_or(0);
    let props = || BasicProperties::default().with_delivery_mode(2);
    let queue = step_queue("kyc");
    system.inject_as("intake", &queue, b"slow", props()).await.unwrap();
    for i in 0..20 {
        system.inject_as("intake", &queue, format!("fast {i}").as_bytes(), props()).await.unwrap();
    }
    let all_fast =
        wait_until(Duration::from_secs(30), || async { count(&|(b, ..)| b.starts_with("fast")) == 20 }).await;
    assert!(all_fast, "every other delivery was handled, each once");
    let waited = slow_attempts();
    assert!(waited < ATTEMPTS - 1, "while the slow one was still retrying ({waited} attempts so far)");

    // The connection goes while it waits: the broker takes the delivery back and, once
    // the consumer is back, delivers it again (its count starts over: it is a new
    // delivery), until the budget is spent and it is dead-lettered.
    // Every other delivery's ack has left (the consumer holds the slow one alone).
    let settled = wait_until(Duration::from_secs(10), || async { broker::unacknowledged(&system.vhost) == 1 }).await;
    assert!(settled, "only the waiting delivery is held");
    proxy.cut();
    let lost = wait_until(Duration::from_secs(10), || async { !consuming.is_ready() }).await;
    assert!(lost, "the consumer noticed its connection was gone");
    proxy.restore();
    let again =
        wait_until(Duration::from_secs(30), || async { count(&|(b, n, r)| b == "slow" && *n == 0 && *r) >= 1 }).await;
    assert!(again, "the waiting delivery came back after the connection was lost");
    let dead = wait_until(Duration::from_secs(30), || async {
        loanflow_platform::dlq::list(&system.settings).await.unwrap().len() == 1
    })
    .await;
    assert!(dead, "the slow one is dead-lettered once its budget is spent");
    let letter = loanflow_platform::dlq::list(&system.settings).await.unwrap().remove(0);
    assert_eq!(letter.attempts, u64::from(ATTEMPTS));
    assert!(letter.reason.contains("not yet"), "{}", letter.reason);
    // (One of the others may have been handled again: an ack still on its way when the
    // connection was cut is lost with it, and the broker redelivers. At-least-once.)
    let fast: std::collections::BTreeSet<String> =
        seen.lock().unwrap().iter().filter(|(b, ..)| b.starts_with("fast")).map(|(b, ..)| b.clone()).collect();
    assert_eq!(fast.len(), 20);
    assert_eq!(system.queue_depth(&queue).await, 0);
    stop.cancel();
    consumer.await.unwrap();
    system.shutdown().await;
}
