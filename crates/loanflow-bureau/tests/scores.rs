//! The bureau over real HTTP: sandbox scores, stable scores, bad ids, latency.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test

use std::time::{Duration, Instant};

use loanflow_platform::secret::TokenHash;
use loanflow_platform::settings::OperatorSettings;
use loanflow_platform::{CancellationToken, Settings};

const OPERATOR: &str = "test-operator-token";

async fn bureau(latency_ms: u64) -> (String, CancellationToken) {
    let mut settings = Settings::defaults().unwrap();
    settings.bureau.listen = "127.0.0.1:0".into();
    settings.bureau.latency_ms = latency_ms;
    settings.operators = vec![OperatorSettings { name: "operator".into(), token_sha256: TokenHash::of(OPERATOR) }];
    let stop = CancellationToken::new();
    let running = loanflow_bureau::start(settings, stop.clone()).await.unwrap();
    (format!("http://{}", running.addr.unwrap()), stop)
}

/// Asks for the score of `national_id`, which travels in the body.
async fn score(base: &str, national_id: &str) -> (u16, serde_json::Value) {
    let body = serde_json::json!({ "national_id": national_id });
    let response = reqwest::Client::new().post(format!("{base}/api/scores")).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn scores_sandbox_identities_exactly_and_others_stably() {
    let (base, stop) = bureau(0).await;
    assert_eq!(score(&base, "SBX720A1").await, (200, serde_json::json!({"score": 720})));
    let first = score(&base, "AB1234567").await;
    assert_eq!(first, score(&base, "AB1234567").await);
    let (status, body) = score(&base, "not-an-id").await;
    assert_eq!(status, 422);
    assert_eq!(body["error"], "invalid_national_id");
    stop.cancel();
}

#[tokio::test]
async fn the_national_id_is_never_part_of_a_url() {
    let (base, stop) = bureau(0).await;
    let by_path = reqwest::get(format!("{base}/api/scores/SBX720A1")).await.unwrap();
    assert_eq!(by_path.status(), 404, "no route takes the id in its path");
    assert_eq!(score(&base, "SBX720A1").await, (200, serde_json::json!({"score": 720})));
    stop.cancel();
}

#[tokio::test]
async fn configured_latency_delays_every_answer() {
    let (base, stop) = bureau(300).await;
    let started = Instant::now();
    let (status, _) = score(&base, "SBX700").await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300), "answered after {:?}", started.elapsed());
    stop.cancel();
}

#[tokio::test]
async fn a_simulated_outage_can_be_switched_on_and_off() {
    let (base, stop) = bureau(0).await;
    let client = reqwest::Client::new();
    let set = |down: bool| {
        client.put(format!("{base}/admin/faults")).bearer_auth(OPERATOR).json(&serde_json::json!({"down": down})).send()
    };
    assert_eq!(set(true).await.unwrap().status(), 200);
    assert_eq!(score(&base, "SBX720").await.0, 503);
    assert_eq!(set(false).await.unwrap().status(), 200);
    assert_eq!(score(&base, "SBX720").await, (200, serde_json::json!({"score": 720})));
    stop.cancel();
}

#[tokio::test]
async fn the_fault_switch_is_the_operators_alone() {
    let (base, stop) = bureau(0).await;
    let client = reqwest::Client::new();
    let down = serde_json::json!({"down": true});
    let url = format!("{base}/admin/faults");
    for refused in [
        client.put(&url).json(&down),
        client.put(&url).bearer_auth("sandbox-operator-token").json(&down),
        client.put(&url).bearer_auth("").json(&down),
        client.put(&url).basic_auth("ops", Some(OPERATOR)).json(&down),
        client.get(&url),
    ] {
        let response = refused.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert_eq!(response.json::<serde_json::Value>().await.unwrap()["error"], "unauthorized");
    }
    assert_eq!(score(&base, "SBX720").await.0, 200, "no refused call switched the outage on");
    assert_eq!(client.put(&url).bearer_auth(OPERATOR).json(&down).send().await.unwrap().status(), 200);
    assert_eq!(score(&base, "SBX720").await.0, 503);
    stop.cancel();
}
