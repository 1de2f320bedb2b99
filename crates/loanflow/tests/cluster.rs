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
    // Every queue the system declares is replicated on all three nodes, the retry
    // tiers included: each survives the loss of one.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "not yet reliable: in one run of three, applications were not all final within 120 s while the node was down; run with `make cluster-test`"]
async fn losing_the_node_with_most_queue_leaders_loses_no_application() {
    cluster(&["start"]);
    let api = format!("http://127.0.0.1:{}/api", 15680 + HARNESS_NODE);
    // This binary's only test: the harness's broker is the cluster's node.
    std::env::set_var("LOANFLOW_TEST_AMQP", format!("amqp://guest:guest@{}", NODES[HARNESS_NODE - 1]));
    std::env::set_var("LOANFLOW_TEST_RABBITMQ_API", &api);
    let options = Options { broker_nodes: Some(NODES.map(String::from).to_vec()), ..Options::default() };
    let system = TestSystem::start_with(options).await;
    let node = busiest_node(&system.http, &api, &system.vhost).await;
    assert_ne!(node, HARNESS_NODE, "the node stopped is not the harness's");

    const N: usize = 300;
    let started = Instant::now();
    let mut refs = Vec::with_capacity(N);
    let mut stopped_at = None;
    for i in 0..N {
        if i == N / 3 {
            cluster(&["stop-node", &node.to_string()]);
            stopped_at = Some(started.elapsed());
            println!("stopped lf{node} at {:?}", started.elapsed());
        }
        refs.push(system.submit_ok(&application(700 + (i % 100) as u16)).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_final = wait_until(Duration::from_secs(120), || async {
        for r in &refs {
            let s = system.status(r).await;
            if s["status"] != "approved" {
                return false;
            }
        }
        true
    })
    .await;
    assert!(all_final, "every application accepted while lf{node} was down reached its final status");
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
    println!(
        "cluster: lf{node} (most queue leaders) stopped after {:?}; {N} applications all approved, once; \
         the longest pause between two final statuses was {:.0} ms",
        stopped_at.unwrap(),
        longest * 1000.0
    );
    system.shutdown().await;
    // Four Erlang VMs on two cores would slow every test binary after this one.
    cluster(&["stop"]);
}
