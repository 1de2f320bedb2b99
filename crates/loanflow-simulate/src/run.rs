//! Running a scenario.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Months, Utc};
use futures_util::stream::{self, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use indicatif::{ProgressBar, ProgressStyle};

use crate::report::{percentiles, Report, Sample};
use crate::scenario::{Profile, Scenario};

/// Where the system is, and where to write the report.
#[derive(Debug, Clone)]
pub struct Options {
    /// The intake, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// The bureau (for faults), e.g. `http://127.0.0.1:8090`.
    pub bureau_url: String,
    pub report_dir: std::path::PathBuf,
    /// Overrides the scenario's approver token.
    /// The approvers' tokens, instead of the scenario's (one person each).
    pub approver_tokens: Option<Vec<String>>,
    /// The operator's token, which the bureau's fault switch requires.
    pub operator_token: String,
    /// Print progress lines.
    pub progress: bool,
}

#[derive(Debug)]
pub struct Outcome {
    pub report: Report,
    /// Expectations that did not hold (empty: the run passed).
    pub failures: Vec<String>,
}

const FINAL: [&str; 3] = ["approved", "rejected", "withdrawn"];
/// Requests the poller keeps in flight: enough to follow thousands of applications,
/// few enough not to be the load being measured.
const POLL_CONCURRENCY: usize = 16;
const POLL_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug, Clone)]
struct Tracked {
    reference: String,
    profile: String,
    submitted_at: Instant,
    submit_ms: f64,
    status: String,
    current_level: Option<String>,
    last: Value,
    final_e2e_ms: Option<f64>,
}

#[derive(Default)]
struct State {
    tracked: Vec<Tracked>,
    submit_errors: Vec<String>,
    done_submitting: bool,
}

fn application(profile: &Profile, rng: &mut StdRng, today: DateTime<Utc>) -> Value {
    let national_id = profile
        .national_id
        .clone()
        .unwrap_or_else(|| format!("SBX{}S{:06}", profile.score, rng.random_range(0..1_000_000)));
    let birth = today.date_naive().checked_sub_months(Months::new(profile.age_years * 12)).unwrap_or_default();
    let amount = rng.random_range(profile.amount_min..=profile.amount_max);
    let term = profile.terms[rng.random_range(0..profile.terms.len())];
    json!({
        "applicant": {
            "full_name": "Sim Applicant",
            "email": "sim@example.com",
            "national_id": national_id,
            "date_of_birth": birth.to_string(),
            "annual_income": profile.annual_income,
            "monthly_debts": profile.monthly_debts,
            "employment_status": "employed"
        },
        "amount": format!("{amount}.00"),
        "currency": "USD",
        "term_months": term,
        "purpose": "other"
    })
}

fn pick<'a>(profiles: &'a [Profile], rng: &mut StdRng) -> &'a Profile {
    let total: u32 = profiles.iter().map(|p| p.weight).sum();
    let mut roll = rng.random_range(0..total.max(1));
    for p in profiles {
        if roll < p.weight {
            return p;
        }
        roll -= p.weight;
    }
    &profiles[0]
}

/// When each application is sent, in seconds from the start: the steady stream at
/// `per_second`, plus the bursts.
fn schedule(scenario: &Scenario) -> Vec<f64> {
    let a = &scenario.arrivals;
    let burst_total: usize = a.bursts.iter().map(|b| b.count).sum();
    let mut at: Vec<f64> = (0..a.count.saturating_sub(burst_total)).map(|i| i as f64 / a.per_second).collect();
    for b in &a.bursts {
        at.extend(std::iter::repeat_n(b.at_s, b.count));
    }
    at.sort_by(f64::total_cmp);
    at
}

pub async fn run(scenario: &Scenario, options: &Options) -> Result<Outcome, reqwest::Error> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).pool_max_idle_per_host(64).build()?;
    let start = Instant::now();
    let run_id = format!("{:x}", Utc::now().timestamp_millis());
    let state = Arc::new(Mutex::new(State::default()));
    let mut timeline: Vec<(f64, BTreeMap<String, usize>)> = Vec::new();

    // Applicants.
    let submitter = {
        let (scenario, options, state, http, run_id) =
            (scenario.clone(), options.clone(), state.clone(), http.clone(), run_id.clone());
        tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(scenario.seed);
            let today = Utc::now();
            let mut sends = Vec::new();
            for (i, at) in schedule(&scenario).into_iter().enumerate() {
                let profile = pick(&scenario.profiles, &mut rng).clone();
                let body = application(&profile, &mut rng, today);
                let wait = Duration::from_secs_f64(at).saturating_sub(start.elapsed());
                tokio::time::sleep(wait).await;
                let (state, http, url, key) =
                    (state.clone(), http.clone(), options.url.clone(), format!("sim-{run_id}-{i}"));
                sends.push(tokio::spawn(async move {
                    let sent = Instant::now();
                    let response =
                        http.post(format!("{url}/api/loans")).header("idempotency-key", key).json(&body).send().await;
                    let submit_ms = sent.elapsed().as_secs_f64() * 1000.0;
                    let mut s = state.lock().expect("state");
                    match response {
                        Ok(r) if r.status().as_u16() == 202 => {
                            drop(s);
                            let reference =
                                r.json::<Value>().await.ok().and_then(|v| v["reference"].as_str().map(str::to_owned));
                            let mut s = state.lock().expect("state");
                            match reference {
                                Some(reference) => s.tracked.push(Tracked {
                                    reference,
                                    profile: profile.name.clone(),
                                    submitted_at: sent,
                                    submit_ms,
                                    status: "submitted".into(),
                                    current_level: None,
                                    last: Value::Null,
                                    final_e2e_ms: None,
                                }),
                                None => s.submit_errors.push("202 without a reference".into()),
                            }
                        }
                        Ok(r) => s.submit_errors.push(format!("HTTP {}", r.status())),
                        Err(e) => s.submit_errors.push(e.without_url().to_string()),
                    }
                }));
            }
            for send in sends {
                let _ = send.await;
            }
            state.lock().expect("state").done_submitting = true;
        })
    };

    // Faults.
    let faults = {
        let (faults, http, bureau) = (scenario.faults.clone(), http.clone(), options.bureau_url.clone());
        let operator = options.operator_token.clone();
        tokio::spawn(async move {
            let mut refused = Vec::new();
            let mut events: Vec<(f64, Value)> = Vec::new();
            for f in faults {
                events.push((f.at_s, json!({"down": f.bureau_down, "latency_ms": f.bureau_latency_ms})));
                events.push((f.until_s, json!({"down": false, "latency_ms": 0})));
            }
            events.sort_by(|a, b| a.0.total_cmp(&b.0));
            for (at, body) in events {
                tokio::time::sleep(Duration::from_secs_f64(at).saturating_sub(start.elapsed())).await;
                let answer = http.put(format!("{bureau}/admin/faults")).bearer_auth(&operator).json(&body).send().await;
                match answer {
                    Ok(r) if r.status().is_success() => {}
                    Ok(r) => refused.push(format!("the bureau's fault switch answered {}", r.status())),
                    Err(e) => refused.push(format!("the bureau's fault switch: {}", e.without_url())),
                }
            }
            refused
        })
    };

    // Approvers.
    let approvers_stop = Arc::new(tokio::sync::Notify::new());
    let mut approver_tasks = Vec::new();
    if let Some(a) = &scenario.approvers {
        let tokens = options.approver_tokens.clone().unwrap_or_else(|| a.tokens.clone());
        // What each person has decided: nobody decides a case twice (under dual control
        // it comes back to the inbox for another person).
        let decided = Arc::new(Mutex::new(HashSet::<(String, String)>::new()));
        for n in 0..a.count {
            let Some(token) = tokens.get(n % tokens.len().max(1)).cloned() else { break };
            let (http, url, stop, decided) =
                (http.clone(), options.url.clone(), approvers_stop.clone(), decided.clone());
            let (share, think) = (a.approve_share, Duration::from_millis(a.think_ms));
            let mut rng = StdRng::seed_from_u64(scenario.seed.wrapping_add(1000 + n as u64));
            approver_tasks.push(tokio::spawn(async move {
                loop {
                    let inbox = http.get(format!("{url}/api/approvals")).bearer_auth(&token).send().await;
                    let items = match inbox {
                        Ok(r) if r.status().is_success() => r.json::<Vec<Value>>().await.unwrap_or_default(),
                        _ => Vec::new(),
                    };
                    for item in items {
                        let Some(reference) = item["reference"].as_str().map(str::to_owned) else { continue };
                        if item["claimed_by"].is_string()
                            || decided.lock().expect("decided").contains(&(reference.clone(), token.clone()))
                        {
                            continue; // someone works it, or this person decided it
                        }
                        // Claimed before it is worked, as a person would: another
                        // approver that got there first keeps it.
                        let claim = http.post(format!("{url}/api/approvals/{reference}/claim")).bearer_auth(&token);
                        if !claim.send().await.is_ok_and(|r| r.status().is_success()) {
                            continue;
                        }
                        decided.lock().expect("decided").insert((reference.clone(), token.clone()));
                        tokio::select! {
                            () = stop.notified() => return,
                            () = tokio::time::sleep(think) => {}
                        }
                        let approve = rng.random_bool(share.clamp(0.0, 1.0));
                        let body = if approve {
                            json!({"decision": "approve", "reason": "simulated approver: approved"})
                        } else {
                            json!({"decision": "reject", "reason": "simulated approver: declined"})
                        };
                        let _ = http
                            .post(format!("{url}/api/approvals/{reference}"))
                            .bearer_auth(&token)
                            .json(&body)
                            .send()
                            .await;
                    }
                    tokio::select! {
                        () = stop.notified() => return,
                        () = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                }
            }));
        }
    }

    // Follow every application until it is final or time is up.
    let deadline = Duration::from_secs_f64(scenario.expect.all_final_within_s + 5.0);
    // Drawn on a terminal only (stderr), and cleared at the end: the table follows.
    let progress = if options.progress {
        let style = ProgressStyle::with_template("[{elapsed:>4}] {bar:20} {pos}/{len} final | {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressBar::new(scenario.arrivals.count as u64).with_style(style)
    } else {
        ProgressBar::hidden()
    };
    loop {
        let (pending, done_submitting): (Vec<(usize, String)>, bool) = {
            let s = state.lock().expect("state");
            let pending = s
                .tracked
                .iter()
                .enumerate()
                .filter(|(_, t)| !FINAL.contains(&t.status.as_str()))
                .map(|(i, t)| (i, t.reference.clone()))
                .collect();
            (pending, s.done_submitting)
        };
        let results: Vec<(usize, Option<Value>)> = stream::iter(pending.iter().cloned())
            .map(|(i, reference)| {
                let (http, url) = (http.clone(), options.url.clone());
                async move {
                    let got = http.get(format!("{url}/api/loans/{reference}")).send().await;
                    let body = match got {
                        Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
                        _ => None,
                    };
                    (i, body)
                }
            })
            .buffer_unordered(POLL_CONCURRENCY)
            .collect()
            .await;
        {
            let mut s = state.lock().expect("state");
            for (i, body) in results {
                let Some(body) = body else { continue };
                let t = &mut s.tracked[i];
                t.status = body["status"].as_str().unwrap_or("unknown").to_owned();
                t.current_level = body["current_level"].as_str().map(str::to_owned);
                if FINAL.contains(&t.status.as_str()) && t.final_e2e_ms.is_none() {
                    // Server timestamps: independent of how often this poller looks.
                    let at = |k: &str| body[k].as_str().and_then(|v| DateTime::parse_from_rfc3339(v).ok());
                    if let (Some(sub), Some(upd)) = (at("submitted_at"), at("updated_at")) {
                        t.final_e2e_ms = Some((upd - sub).num_milliseconds().max(0) as f64);
                    }
                }
                t.last = body;
            }
            let mut counts = BTreeMap::new();
            for t in &s.tracked {
                let key = match (t.status.as_str(), &t.current_level) {
                    ("in_review", Some(level)) => format!("in_review:{level}"),
                    (status, _) => status.to_owned(),
                };
                *counts.entry(key).or_insert(0) += 1;
            }
            timeline.push((start.elapsed().as_secs_f64(), counts.clone()));
            let summary: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            let finished = s.tracked.iter().filter(|t| FINAL.contains(&t.status.as_str())).count();
            progress.set_position(finished as u64);
            progress.set_message(format!("submitted {} | {}", s.tracked.len(), summary.join(" · ")));
            let all_final = s.tracked.iter().all(|t| FINAL.contains(&t.status.as_str()));
            if (done_submitting && all_final) || start.elapsed() > deadline {
                break;
            }
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
    progress.finish_and_clear();
    approvers_stop.notify_waiters();
    for task in approver_tasks {
        task.abort();
    }
    // A fault the bureau refused to inject makes the run meaningless: say so.
    let fault_errors = if faults.is_finished() {
        faults.await.unwrap_or_default()
    } else {
        faults.abort();
        Vec::new()
    };
    submitter.abort();
    // Leave the bureau as we found it.
    if !scenario.faults.is_empty() {
        let reset = http.put(format!("{}/admin/faults", options.bureau_url)).bearer_auth(&options.operator_token);
        let _ = reset.json(&json!({})).send().await;
    }

    let elapsed = start.elapsed().as_secs_f64();
    let s = state.lock().expect("state");
    let report = summarise(scenario, &s, &timeline, elapsed);
    let mut failures = check(scenario, &report);
    failures.extend(fault_errors);
    Ok(Outcome { report, failures })
}

fn summarise(scenario: &Scenario, s: &State, timeline: &[(f64, BTreeMap<String, usize>)], elapsed: f64) -> Report {
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let mut by_profile: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    let mut never_final = Vec::new();
    for t in &s.tracked {
        *outcomes.entry(t.status.clone()).or_insert(0) += 1;
        *by_profile.entry(t.profile.clone()).or_default().entry(t.status.clone()).or_insert(0) += 1;
        if let Some(last) = t.last["decisions"].as_array().and_then(|d| d.last()) {
            if t.status == "rejected" || t.status == "approved" {
                let key = format!(
                    "{} at {}: {} ({})",
                    t.status,
                    last["level"].as_str().unwrap_or("?"),
                    last["reason"].as_str().unwrap_or("?"),
                    last["decided_by"].as_str().unwrap_or("?")
                );
                *reasons.entry(key).or_insert(0) += 1;
            }
        }
        if !FINAL.contains(&t.status.as_str()) {
            never_final.push(format!("{} ({})", t.reference, t.status));
        }
    }
    let submit: Vec<f64> = s.tracked.iter().map(|t| t.submit_ms).collect();
    let e2e: Vec<f64> = s.tracked.iter().filter_map(|t| t.final_e2e_ms).collect();
    let finals = s.tracked.iter().filter(|t| t.final_e2e_ms.is_some()).count();
    let first_submit = s.tracked.iter().map(|t| t.submitted_at).min();
    let span = first_submit.map(|f| f.elapsed().as_secs_f64()).unwrap_or(elapsed).max(0.001);
    Report {
        scenario: scenario.name.clone(),
        applications: s.tracked.len(),
        submit_errors: s.submit_errors.clone(),
        outcomes,
        reasons,
        by_profile,
        submit_ms: percentiles(&submit),
        end_to_end_ms: percentiles(&e2e),
        finalised_per_second: finals as f64 / span,
        elapsed_s: elapsed,
        never_final,
        timeline: timeline.iter().map(|(t, c)| Sample { t: *t, counts: c.clone() }).collect(),
        end_to_end_samples: e2e,
    }
}

fn check(scenario: &Scenario, r: &Report) -> Vec<String> {
    let e = &scenario.expect;
    let count = |k: &str| r.outcomes.get(k).copied().unwrap_or(0);
    let mut failures = Vec::new();
    if r.applications + r.submit_errors.len() < scenario.arrivals.count || !r.submit_errors.is_empty() {
        failures.push(format!(
            "{} submission(s) failed: {:?}",
            r.submit_errors.len(),
            r.submit_errors.iter().take(3).collect::<Vec<_>>()
        ));
    }
    if !r.never_final.is_empty() {
        failures.push(format!("{} application(s) not final within {} s", r.never_final.len(), e.all_final_within_s));
    }
    if r.elapsed_s > e.all_final_within_s + 5.0 {
        failures.push(format!("the run took {:.1} s", r.elapsed_s));
    }
    if count("failed") > e.max_failed {
        failures.push(format!("{} failed (at most {} expected)", count("failed"), e.max_failed));
    }
    if count("approved") < e.min_approved {
        failures.push(format!("{} approved (at least {} expected)", count("approved"), e.min_approved));
    }
    if count("rejected") < e.min_rejected {
        failures.push(format!("{} rejected (at least {} expected)", count("rejected"), e.min_rejected));
    }
    for status in &e.outcomes_seen {
        if count(status) == 0 {
            failures.push(format!("no application ended {status}"));
        }
    }
    if let (Some(max), Some(p99)) = (e.max_submit_p99_ms, r.submit_ms.get("p99")) {
        if p99 > &max {
            failures.push(format!("submit p99 {p99:.1} ms above {max} ms"));
        }
    }
    failures
}
