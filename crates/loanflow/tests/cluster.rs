//! The system against a three-node RabbitMQ cluster on this machine
//! (`deploy/local-cluster.sh`, started here if it is not running): applications keep
//! arriving while the node holding the most queue leaders is stopped and later started
//! again; every accepted application reaches its final status, once, and the test prints
//! how long finalisations paused. Four Erlang VMs share the machine's cores: the test
//! gives the cluster the time it needs and waits for conditions, not for the clock.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use loanflow_platform::settings::RetrySettings;
use loanflow_testkit::{application, wait_until, Options, TestSystem};

const NODES: [&str; 3] = ["127.0.0.1:5681", "127.0.0.1:5682", "127.0.0.1:5683"];
/// The node the harness (and, through its proxy, the intake) talks to. The setup step
/// declares the topology through the first address, lf1, so lf1 leads the queues and is
/// the one stopped.
const HARNESS_NODE: usize = 2;

fn cluster(args: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local-cluster.sh");
    let status = std::process::Command::new(script).args(args).status().unwrap();
    assert!(status.success(), "deploy/local-cluster.sh {args:?} failed");
}

async fn queues(http: &reqwest::Client, api: &str, vhost: &str) -> Vec<serde_json::Value> {
    let answer = http.get(format!("{api}/queues/{vhost}")).basic_auth("guest", Some("guest")).send().await.unwrap();
    answer.json().await.unwrap()
}

/// The node (1–3) that leads most of the vhost's queues.
async fn busiest_node(http: &reqwest::Client, api: &str, vhost: &str) -> usize {
    let queues = queues(http, api, vhost).await;
    // Every queue the system declares is replicated on all three nodes: each survives
    // the loss of one.
    for q in &queues {
        assert_eq!(q["type"], "quorum", "{} is replicated", q["name"]);
        assert_eq!(q["members"].as_array().map(Vec::len), Some(3), "{} has a member on every node", q["name"]);
    }
    let mut leaders: HashMap<usize, usize> = HashMap::new();
    for q in &queues {
        let node = q["leader"].as_str().or(q["node"].as_str()).unwrap_or_default();
        if let Some(n) = node.strip_prefix("lf").and_then(|r| r[..1].parse::<usize>().ok()) {
            *leaders.entry(n).or_default() += 1;
        }
    }
    println!("queue leaders by node: {leaders:?}");
    leaders.into_iter().max_by_key(|(_, count)| *count).map(|(node, _)| node).unwrap()
}

/// Stops the cluster when the test ends, passed or failed: four Erlang VMs on two cores
/// would slow every test binary after this one.
struct Cluster;

impl Drop for Cluster {
    fn drop(&mut self) {
        cluster(&["stop"]);
    }
}

/// Deliveries of `queue` this process's consumers held for a retry.
fn retries(queue: &str) -> u64 {
    let label = format!("queue=\"{queue}\"");
    loanflow_platform::metrics::render()
        .lines()
        .filter(|l| l.starts_with(loanflow_platform::metrics::DELIVERIES))
        .filter(|l| l.contains(&label) && l.contains("outcome=\"retry\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_node_with_most_queue_leaders_loses_no_application() {
    cluster(&["start"]);
    let _stop = Cluster;
    // The services' logs, for the census to show what became of an unfinished application.
    let log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cluster-services.log");
    let file = std::fs::File::create(&log).unwrap();
    let _ = tracing_subscriber::fmt()
        .with_writer(std::sync::Mutex::new(file))
        .with_ansi(false)
        .with_env_filter("info,lapin=warn")
        .try_init();
    let api = format!("http://127.0.0.1:{}/api", 15680 + HARNESS_NODE);
    // This binary's only test: the harness's broker is the cluster's node.
    std::env::set_var("LOANFLOW_TEST_AMQP", format!("amqp://guest:guest@{}", NODES[HARNESS_NODE - 1]));
    std::env::set_var("LOANFLOW_TEST_RABBITMQ_API", &api);
    // A retry budget that outlasts the bureau's outage below (about 16 s of waits).
    let retry = RetrySettings { max_attempts: 20, initial_ms: 100, max_ms: 1000 };
    let options = Options { broker_nodes: Some(NODES.map(String::from).to_vec()), retry, ..Options::default() };
    let system = TestSystem::start_with(options).await;
    let node = busiest_node(&system.http, &api, &system.vhost).await;
    assert_ne!(node, HARNESS_NODE, "the node stopped is not the harness's");

    const N: usize = 300;
    let started = Instant::now();
    let started_at = chrono::Utc::now();
    let mut refs = Vec::with_capacity(N);
    let mut stopped_at = None;
    for i in 0..N {
        if i == N / 3 - 20 {
            // The bureau goes away first, so that credit's applications wait for their
            // retries while the node leading credit's queue is lost.
            system.bureau.cut();
            println!("cut the bureau at {:?}", started.elapsed());
        }
        if i == N / 3 {
            println!("stopping lf{node} at {:?}", started.elapsed());
            cluster(&["stop-node", &node.to_string()]);
            stopped_at = Some(started.elapsed());
            println!("stopped lf{node} at {:?}", started.elapsed());
        }
        if i == N / 3 + 40 {
            system.bureau.restore();
            println!("restored the bureau at {:?}", started.elapsed());
        }
        refs.push(system.submit_ok(&application(700 + (i % 100) as u16)).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_final = wait_until(Duration::from_secs(120), || async {
        system.count_matching("intake", "application_status", "status = 'approved'").await == N as i64
    })
    .await;
    if !all_final {
        census(&system, &api, &log).await;
    }
    assert!(all_final, "every application accepted while lf{node} was down reached its final status");
    let retried = retries("loanflow.step.credit");
    assert!(retried > 0, "credit retried applications across the loss of the node");
    cluster(&["start-node", &node.to_string()]);
    println!("started lf{node} again at {:?}", started.elapsed());

    for r in &refs {
        assert_eq!(system.count("ledger", "loans", Some(r)).await, 1, "{r} booked once");
    }
    // How long finalisations paused: the longest gap between consecutive final statuses
    // from the moment the node stopped.
    let schema = system.schema("intake");
    let times = system
        .text_rows(&format!(
            "SELECT extract(epoch FROM updated_at)::text AS v FROM \"{schema}\".application_status \
             WHERE status = 'approved' ORDER BY updated_at"
        ))
        .await;
    let times: Vec<f64> = times.iter().filter_map(|t| t.parse().ok()).collect();
    let longest = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    // Final statuses per second from the first submission: the dip where the node stopped.
    let first = started_at.timestamp_micros() as f64 / 1e6;
    let mut per_second = vec![0usize; times.last().map_or(0, |last| (last - first).max(0.0) as usize + 1)];
    for t in &times {
        per_second[(t - first).max(0.0) as usize] += 1;
    }
    println!(
        "final statuses per second from the first submission (the times above; {retried} retries at credit): \
         {per_second:?}"
    );
    println!(
        "cluster: lf{node} (most queue leaders) stopped after {:?}; {N} applications all approved, once; \
         the longest pause between two final statuses was {:.0} ms",
        stopped_at.unwrap(),
        longest * 1000.0
    );
    system.shutdown().await;
}

/// What a test that timed out needs to see: where the unfinished applications are, and
/// what every queue holds.
async fn census(system: &TestSystem, api: &str, log: &Path) {
    let schema = system.schema("intake");
    let statuses = system
        .text_rows(&format!(
            "SELECT status || ' at ' || coalesce(current_level, '-') || ': ' || count(*) AS v \
             FROM \"{schema}\".application_status GROUP BY status, current_level ORDER BY 1"
        ))
        .await;
    println!("statuses: {statuses:?}");
    println!("outbox rows: {}", system.count("intake", "outbox", None).await);
    println!("loans booked: {}", system.count("ledger", "loans", None).await);
    for level in system.settings.chain.names() {
        let handled = system.count_in_schema(&system.schema(&level), "processed_messages").await;
        println!("messages {level} handled: {handled}");
    }
    let unfinished = system
        .text_rows(&format!(
            "SELECT reference || ' seq ' || seq || ' at ' || updated_at::text AS v \
             FROM \"{schema}\".application_status WHERE status <> 'approved' ORDER BY updated_at LIMIT 3"
        ))
        .await;
    let logged = std::fs::read_to_string(log).unwrap_or_default();
    for row in unfinished {
        println!("unfinished: {row}");
        let reference = row.split(' ').next().unwrap_or_default();
        for line in logged.lines().filter(|l| l.contains(reference)) {
            println!("    {line}");
        }
    }
    match loanflow_platform::dlq::list(&system.settings).await {
        Ok(letters) => {
            let mut why: HashMap<String, usize> = HashMap::new();
            for letter in letters {
                *why.entry(format!("{} from {}", letter.reason, letter.origin_queue)).or_default() += 1;
            }
            println!("dead letters: {why:?}");
        }
        Err(e) => println!("dead letters not listed: {e}"),
    }
    // What the nodes said about this test's vhost (dead-lettering, leader elections).
    let cluster_dir = std::env::var_os("LOANFLOW_CLUSTER_DIR")
        .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/cluster"), std::path::PathBuf::from);
    for node in ["lf1", "lf2", "lf3"] {
        let text = std::fs::read_to_string(cluster_dir.join(node).join("log").join(format!("{node}@localhost.log")))
            .unwrap_or_default();
        let said: Vec<&str> = text.lines().filter(|l| l.contains(&system.vhost) && !l.contains("[info]")).collect();
        println!("{node} said {} things about the vhost that were not [info]; the last ones:", said.len());
        for line in said.iter().rev().take(15).rev() {
            println!("    {line}");
        }
    }
    // The queues' own counts: the management API's lag, and stall once a node is lost.
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local-cluster.sh");
    if let Ok(out) = std::process::Command::new(script).args(["queues", &system.vhost]).output() {
        println!("queues as their replicas have them: {}", String::from_utf8_lossy(&out.stdout));
    }
    for q in queues(&system.http, api, &system.vhost).await {
        println!(
            "queue {}: ready {}, unacked {}, consumers {}, leader {}, online {}",
            q["name"], q["messages_ready"], q["messages_unacknowledged"], q["consumers"], q["leader"], q["online"]
        );
    }
}
