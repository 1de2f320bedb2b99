//! `loanflow-bench`: the benchmark client behind `make bench`, kept out of the
//! production binary. It drives a running system (started by `deploy/bench.sh`, one
//! process per service, as `make run` runs them) and its synchronous twin (its own
//! `loanflow twin …` processes) through their public APIs, watches finals on the status exchange (so measuring adds no polling load),
//! measures the broker's own ceiling on the same machine in the same run, and reads
//! each service process's peak resident memory.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_util::{stream, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicQosOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};

use loanflow_domain::messages::{Envelope, ReferencedStatus, StatusMessage};
use loanflow_platform::broker::{Outgoing, Publisher, STATUS_EXCHANGE};

#[derive(clap::Parser)]
#[command(name = "loanflow-bench", about = "The benchmark client behind `make bench` (see deploy/bench.sh)")]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:18080")]
    url: String,
    /// The twin intake (`loanflow twin intake`), to compare against.
    #[arg(long)]
    sync_url: Option<String>,
    /// AMQP URI of the benchmark's vhost.
    #[arg(long)]
    amqp: String,
    /// Service processes to measure, as name=pid (`level-credit` and `twin-level-credit`
    /// are the ones frozen in the outage runs).
    #[arg(long = "pid", value_parser = parse_pid)]
    pids: Vec<(String, u32)>,
    /// Services' `/metrics` addresses, as name=url: batch sizes and stage timings.
    #[arg(long = "metrics", value_parser = parse_named_url)]
    metrics: Vec<(String, String)>,
    #[arg(long, default_value = "docs/bench-results.md")]
    results: PathBuf,
    #[arg(long, default_value_t = 5000)]
    full_speed_count: usize,
    /// How many instances of each level and of the ledger run (`INSTANCES` of
    /// deploy/bench.sh); said in the results' heading.
    #[arg(long, default_value_t = 1)]
    instances: usize,
}

fn parse_pid(s: &str) -> Result<(String, u32), String> {
    let (name, pid) = s.split_once('=').ok_or("expected name=pid")?;
    Ok((name.to_owned(), pid.parse().map_err(|_| "pid must be a number")?))
}

fn parse_named_url(s: &str) -> Result<(String, String), String> {
    let (name, url) = s.split_once('=').ok_or("expected name=url")?;
    Ok((name.to_owned(), url.trim_end_matches('/').to_owned()))
}

/// Every sample of every service's `/metrics`, keyed by service, then by series
/// (`name{labels}`).
type Scraped = HashMap<String, HashMap<String, f64>>;

async fn scrape(http: &reqwest::Client, services: &[(String, String)]) -> Scraped {
    let mut all = HashMap::new();
    for (name, url) in services {
        let Ok(response) = http.get(format!("{url}/metrics")).send().await else { continue };
        let Ok(text) = response.text().await else { continue };
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(series, value)| Some((series.to_owned(), value.parse::<f64>().ok()?)))
            .collect();
        all.insert(name.clone(), series);
    }
    all
}

/// The mean of a histogram (`metric_sum` ÷ `metric_count`) between two scrapes, per
/// service and queue.
fn means(before: &Scraped, after: &Scraped, metric: &str) -> Vec<(String, String, f64, f64)> {
    let mut out = Vec::new();
    for (service, series) in after {
        for (key, sum) in series {
            let Some(labels) = key.strip_prefix(&format!("{metric}_sum")) else { continue };
            let count_key = format!("{metric}_count{labels}");
            let old = |k: &str| before.get(service).and_then(|s| s.get(k)).copied().unwrap_or(0.0);
            let count = series.get(&count_key).copied().unwrap_or(0.0) - old(&count_key);
            if count > 0.0 {
                let queue = labels.split('"').nth(1).unwrap_or("").to_owned();
                out.push((service.clone(), queue, (sum - old(key)) / count, count));
            }
        }
    }
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// Batch sizes at full speed, and where time goes per stage at 100/s, as the services
/// themselves measured it.
fn stage_table(batches_before: &Scraped, batches_after: &Scraped, before: &Scraped, after: &Scraped) -> String {
    use loanflow_platform::metrics::{BATCH_SIZE, CONFIRM_WAIT, HANDLING, QUEUE_WAIT};
    let mut t = String::from(
        "\n**Per stage**, as each service measured it (`/metrics`): deliveries per batch at full speed, and \
         at 100/s the mean wait in the queue and the mean handling time of a batch (its database work, \
         bureau calls and confirm waits)\n\n| service | queue | batch size (full speed) | queue wait (100/s) | batch handling (100/s) |\n|---|---|---|---|---|\n",
    );
    let sizes = means(batches_before, batches_after, BATCH_SIZE);
    let waits = means(before, after, QUEUE_WAIT);
    let handling = means(before, after, HANDLING);
    for (service, queue, size, batches) in &sizes {
        let find = |list: &[(String, String, f64, f64)]| {
            list.iter().find(|(s, q, _, _)| s == service && q == queue).map(|(_, _, m, _)| *m * 1000.0)
        };
        let ms = |v: Option<f64>| v.map_or_else(|| "-".into(), |v| format!("{v:.2} ms"));
        t.push_str(&format!(
            "| {service} | {queue} | {size:.1} ({batches:.0} batches) | {} | {} |\n",
            ms(find(&waits)),
            ms(find(&handling))
        ));
    }
    let confirms = means(before, after, CONFIRM_WAIT);
    for (service, _, mean, count) in confirms {
        t.push_str(&format!(
            "| {service} | (every publish) | confirm wait at 100/s: {:.2} ms over {count:.0} publishes | | |\n",
            mean * 1000.0
        ));
    }
    t
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    run(<Args as clap::Parser>::parse()).await
}

/// When each reference became final, as seen on the status exchange.
#[derive(Default)]
struct Finals {
    at: HashMap<String, Instant>,
}

async fn tap(amqp: &str) -> anyhow::Result<(Arc<Mutex<Finals>>, Connection)> {
    let conn = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let channel = conn.create_channel().await?;
    let options = QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() };
    let queue = channel.queue_declare("".into(), options, FieldTable::default()).await?;
    channel
        .queue_bind(
            queue.name().clone(),
            STATUS_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    channel.basic_qos(1000, BasicQosOptions::default()).await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().clone(),
            "bench-tap".into(),
            BasicConsumeOptions { no_ack: true, ..Default::default() },
            FieldTable::default(),
        )
        .await?;
    let finals = Arc::new(Mutex::new(Finals::default()));
    let sink = finals.clone();
    tokio::spawn(async move {
        while let Some(Ok(delivery)) = consumer.next().await {
            if let Ok(env) = Envelope::<StatusMessage>::decode(&delivery.data) {
                let mut sink = sink.lock().expect("finals");
                for ReferencedStatus { reference, event, .. } in env.body.into_events(env.reference) {
                    if event.status.is_final() {
                        sink.at.entry(reference.to_string()).or_insert_with(Instant::now);
                    }
                }
            }
        }
    });
    Ok((finals, conn))
}

fn application(i: usize) -> Value {
    json!({
        "applicant": {
            "full_name": "Bench Applicant", "email": "bench@example.com",
            "national_id": format!("SBX800B{i:08}"), "date_of_birth": "1985-06-15",
            "annual_income": "120000.00", "monthly_debts": "500.00", "employment_status": "employed"
        },
        "amount": "20000.00", "currency": "USD", "term_months": 36, "purpose": "car"
    })
}

struct Sent {
    reference: String,
    at: Instant,
    submit_ms: f64,
}

async fn submit(http: &reqwest::Client, url: &str, i: usize) -> anyhow::Result<Sent> {
    let at = Instant::now();
    let response = http.post(format!("{url}/api/loans")).json(&application(i)).send().await?;
    let submit_ms = at.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(response.status().as_u16() == 202, "submission answered {}", response.status());
    let body: Value = response.json().await?;
    let reference = body["reference"].as_str().context("reference")?.to_owned();
    Ok(Sent { reference, at, submit_ms })
}

/// The broker management API's `/api/{what}/{vhost}` for the benchmark's vhost (the
/// last path segment of its AMQP URI); `Null` when the API does not answer.
async fn management(http: &reqwest::Client, what: &str, amqp: &str) -> Value {
    let vhost = amqp.rsplit('/').next().unwrap_or("%2f");
    let url = format!("http://127.0.0.1:15672/api/{what}/{vhost}");
    match http.get(url).basic_auth("guest", Some("guest")).send().await {
        Ok(r) => r.json().await.unwrap_or_default(),
        Err(_) => Value::Null,
    }
}

/// Waits until every queue of the vhost is empty (the projection has caught up, too), so
/// that one phase's backlog does not run into the next phase's measurements.
async fn settle(http: &reqwest::Client, amqp: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        let queues = management(http, "queues", amqp).await;
        let busy: f64 = queues.as_array().map_or(0.0, |qs| {
            qs.iter().filter(|q| q["name"] != "loanflow.dead-letters").filter_map(|q| q["messages"].as_f64()).sum()
        });
        if busy == 0.0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every sent reference is final; returns how many never were.
async fn wait_final(finals: &Mutex<Finals>, sent: &[Sent], within: Duration) -> usize {
    let deadline = Instant::now() + within;
    loop {
        let missing = {
            let f = finals.lock().expect("finals");
            sent.iter().filter(|s| !f.at.contains_key(&s.reference)).count()
        };
        if missing == 0 || Instant::now() > deadline {
            return missing;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn pct(samples: &mut [f64], q: f64) -> f64 {
    loanflow_simulate::report::Latencies::of(samples).at(q)
}

/// Sends `count` applications at `rate` per second; returns what was sent.
async fn at_rate(
    http: &reqwest::Client,
    url: &str,
    rate: f64,
    count: usize,
    offset: usize,
) -> anyhow::Result<Vec<Sent>> {
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep(Duration::from_secs_f64(i as f64 / rate).saturating_sub(start.elapsed())).await;
        let (http, url) = (http.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move { submit(&http, &url, offset + i).await }));
    }
    let mut sent = Vec::with_capacity(count);
    for t in tasks {
        sent.push(t.await??);
    }
    Ok(sent)
}

/// The broker's ceiling: the same number of hops as the chain (4 levels + ledger),
/// quorum queues, persistent messages of the same size, confirms on every publish,
/// acks after the confirm. Returns chains completed per second.
async fn broker_ceiling(amqp: &str, count: usize, payload_size: usize) -> anyhow::Result<f64> {
    const HOPS: usize = 5;
    let queue = |i: usize| format!("bench.ceiling.{i}");
    let setup = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let ch = setup.create_channel().await?;
    let mut args = FieldTable::default();
    args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    for i in 0..HOPS {
        let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        ch.queue_declare(queue(i).as_str().into(), options, args.clone()).await?;
    }
    // When each chain completed: the rate is taken over the steady 10–90 % window.
    let done = Arc::new(Mutex::new(Vec::<Instant>::with_capacity(count)));
    let mut conns = Vec::new();
    for i in 0..HOPS {
        let conn = Connection::connect(amqp, ConnectionProperties::default()).await?;
        let channel = conn.create_channel().await?;
        // Deep windows, as a careful benchmark of the broker gives it: the ceiling must be
        // what the broker allows, not what a shallow client allows.
        channel.basic_qos(400, BasicQosOptions::default()).await?;
        let mut consumer = channel
            .basic_consume(
                queue(i).as_str().into(),
                "hop".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let publisher = Publisher::open(&conn, None).await?;
        let (next, done) = (if i + 1 < HOPS { Some(queue(i + 1)) } else { None }, done.clone());
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let (publisher, next, done) = (publisher.clone(), next.clone(), done.clone());
                tokio::spawn(async move {
                    if let Some(next) = &next {
                        let out = Outgoing {
                            exchange: "",
                            routing_key: next,
                            reference: "LN-BENCH",
                            message_id: uuid::Uuid::new_v4(),
                            payload: &delivery.data,
                            headers: FieldTable::default(),
                            expiration_ms: None,
                        };
                        if publisher.publish(out).await.is_err() {
                            return;
                        }
                    } else {
                        done.lock().expect("ceiling").push(Instant::now());
                    }
                    let _ = delivery.ack(BasicAckOptions::default()).await;
                });
            }
        });
        conns.push(conn);
    }
    let publisher = Publisher::open(&setup, None).await?;
    let payload = vec![b'x'; payload_size];
    let start = Instant::now();
    stream::iter(0..count)
        .for_each_concurrent(1000, |_| {
            let (publisher, payload) = (publisher.clone(), &payload);
            async move {
                let out = Outgoing {
                    exchange: "",
                    routing_key: "bench.ceiling.0",
                    reference: "LN-BENCH",
                    message_id: uuid::Uuid::new_v4(),
                    payload,
                    headers: FieldTable::default(),
                    expiration_ms: None,
                };
                let _ = publisher.publish(out).await;
            }
        })
        .await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while done.lock().expect("ceiling").len() < count {
        anyhow::ensure!(Instant::now() < deadline, "ceiling chain timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut at: Vec<f64> = done.lock().expect("ceiling").iter().map(|t| (*t - start).as_secs_f64()).collect();
    at.sort_by(f64::total_cmp);
    let (p10, p90) = (at[count / 10], at[count * 9 / 10]);
    let rate = (count * 8 / 10) as f64 / (p90 - p10).max(1e-9);
    // Let the queues drain before deleting them (rabbitmq/ra#484), then clean up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for i in 0..HOPS {
        let _ = ch.queue_delete(queue(i).as_str().into(), QueueDeleteOptions::default()).await;
    }
    for conn in conns {
        let _ = conn.close(200, "bye".into()).await;
    }
    let _ = setup.close(200, "bye".into()).await;
    Ok(rate)
}

/// CPU seconds used so far by the system under test: every `loanflow` service
/// process (not this client), RabbitMQ and PostgreSQL.
fn system_cpu_seconds() -> f64 {
    let me = i32::try_from(std::process::id()).unwrap_or(i32::MAX);
    let ticks_per_second = procfs::ticks_per_second() as f64;
    let Ok(processes) = procfs::process::all_processes() else { return 0.0 };
    processes
        .flatten()
        .filter(|p| p.pid != me)
        .filter_map(|p| p.stat().ok())
        .filter(|stat| matches!(stat.comm.as_str(), "loanflow" | "beam.smp" | "postgres"))
        .map(|stat| (stat.utime + stat.stime) as f64 / ticks_per_second)
        .sum()
}

/// Server-wide counters read before and after the full-speed phase: what one
/// application costs the database and the broker. PostgreSQL's count the whole server,
/// so they are read while nothing else runs on it.
#[derive(Debug, Clone, Copy, Default)]
struct Counters {
    transactions: f64,
    wal_bytes: f64,
    /// `None` without pg_stat_statements (deploy/prepare.sh preloads it).
    statements: Option<f64>,
    publishes: f64,
    deliveries: f64,
}

async fn psql_number(sql: &str) -> Option<f64> {
    let out = tokio::process::Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "root", "-d", "loanflow", "-Atqc", sql])
        .output()
        .await
        .ok()?;
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

async fn counters(http: &reqwest::Client, amqp: &str) -> Counters {
    let stats = management(http, "vhosts", amqp).await;
    let broker = |name: &str| stats["message_stats"][name].as_f64().unwrap_or(0.0);
    Counters {
        transactions: psql_number("select sum(xact_commit + xact_rollback) from pg_stat_database").await.unwrap_or(0.0),
        wal_bytes: psql_number("select wal_bytes from pg_stat_wal").await.unwrap_or(0.0),
        statements: psql_number("select sum(calls) from pg_stat_statements").await,
        publishes: broker("publish"),
        deliveries: broker("deliver_get"),
    }
}

/// One synchronous submission: the applicant waits for the final decision.
async fn submit_sync(http: &reqwest::Client, url: &str, i: usize) -> (bool, f64) {
    let at = Instant::now();
    let ok = http
        .post(format!("{url}/api/loans"))
        .json(&application(i))
        .send()
        .await
        .is_ok_and(|r| r.status().as_u16() == 200);
    (ok, at.elapsed().as_secs_f64() * 1000.0)
}

/// What applicants saw while a level was frozen.
struct OutageSeen {
    sent: usize,
    errors: usize,
    max_wait_ms: f64,
    lost: usize,
}

/// 50 applications a second for 30 s; the credit level is frozen (SIGSTOP) from
/// 10 s to 20 s. `sync_url` picks the mode.
async fn outage(
    http: &reqwest::Client,
    url: &str,
    sync: bool,
    credit_pid: u32,
    finals: &Mutex<Finals>,
    offset: usize,
) -> anyhow::Result<OutageSeen> {
    let (rate, count) = (50.0, 1500);
    let start = Instant::now();
    let signal = move |sig: &'static str| {
        let pid = credit_pid.to_string();
        async move { tokio::process::Command::new("kill").args([sig, &pid]).status().await }
    };
    let freezer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = signal("-STOP").await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let _ = signal("-CONT").await;
    });
    let mut tasks = Vec::with_capacity(count);
    for i in 0..count {
        tokio::time::sleep(Duration::from_secs_f64(i as f64 / rate).saturating_sub(start.elapsed())).await;
        let (http, url) = (http.clone(), url.to_owned());
        tasks.push(tokio::spawn(async move {
            if sync {
                let (ok, ms) = submit_sync(&http, &url, offset + i).await;
                (ok, ms, None)
            } else {
                match submit(&http, &url, offset + i).await {
                    Ok(sent) => (true, sent.submit_ms, Some(sent)),
                    Err(_) => (false, 0.0, None),
                }
            }
        }));
    }
    let mut seen = OutageSeen { sent: count, errors: 0, max_wait_ms: 0.0, lost: 0 };
    let mut accepted = Vec::new();
    for t in tasks {
        let (ok, ms, sent) = t.await?;
        seen.errors += usize::from(!ok);
        seen.max_wait_ms = seen.max_wait_ms.max(ms);
        accepted.extend(sent);
    }
    freezer.await?;
    if !sync {
        seen.lost = wait_final(finals, &accepted, Duration::from_secs(180)).await;
    }
    Ok(seen)
}

fn peak_rss_mib(pid: u32) -> Option<f64> {
    let process = procfs::process::Process::new(i32::try_from(pid).ok()?).ok()?;
    let kib = process.status().ok()?.vmhwm?;
    Some(kib as f64 / 1024.0)
}

fn machine() -> String {
    use procfs::Current;
    let cpu = procfs::CpuInfo::current()
        .ok()
        .and_then(|info| info.model_name(0).map(str::to_owned))
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores ({cpu})")
}

async fn run(args: Args) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(256).timeout(Duration::from_secs(30)).build()?;
    let (finals, _tap) = tap(&args.amqp).await?;
    let mut offset = 0;

    // 1. Full speed: as fast as 64 concurrent clients can submit.
    eprintln!("full speed: {} applications…", args.full_speed_count);
    let cpu_before = system_cpu_seconds();
    let counted_before = counters(&http, &args.amqp).await;
    let batches_before = scrape(&http, &args.metrics).await;
    let start = Instant::now();
    let sent: Vec<Sent> = stream::iter(0..args.full_speed_count)
        .map(|i| {
            let http = http.clone();
            let url = args.url.clone();
            async move { submit(&http, &url, i).await }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    offset += sent.len();
    let lost_full = wait_final(&finals, &sent, Duration::from_secs(300)).await;
    settle(&http, &args.amqp).await;
    let last_final = {
        let f = finals.lock().expect("finals");
        sent.iter().filter_map(|s| f.at.get(&s.reference)).max().copied().unwrap_or_else(Instant::now)
    };
    let throughput = (sent.len() - lost_full) as f64 / (last_final - start).as_secs_f64();
    let cpu_per_app_async = (system_cpu_seconds() - cpu_before) * 1000.0 / sent.len().max(1) as f64;
    // The management API's counters lag by its sampling interval (5 s).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let counted_after = counters(&http, &args.amqp).await;
    let batches_after = scrape(&http, &args.metrics).await;
    let per_app = |after: f64, before: f64| (after - before) / sent.len().max(1) as f64;

    // 2. Submit latency at half the sustained throughput just measured.
    let half = (throughput / 2.0).max(10.0).floor();
    eprintln!("fixed {half:.0}/s (half the sustained throughput) for 10 s…");
    let sent300 = at_rate(&http, &args.url, half, (half * 10.0) as usize, offset).await?;
    offset += sent300.len();
    let lost_300 = wait_final(&finals, &sent300, Duration::from_secs(120)).await;
    settle(&http, &args.amqp).await;
    let mut submit300: Vec<f64> = sent300.iter().map(|s| s.submit_ms).collect();

    // 3. End-to-end latency at a fixed 100/s, with the services' own stage timings.
    eprintln!("fixed 100/s for 20 s…");
    let stages_before = scrape(&http, &args.metrics).await;
    let sent100 = at_rate(&http, &args.url, 100.0, 2000, offset).await?;
    let lost_100 = wait_final(&finals, &sent100, Duration::from_secs(120)).await;
    let mut e2e100: Vec<f64> = {
        let f = finals.lock().expect("finals");
        sent100.iter().filter_map(|s| f.at.get(&s.reference).map(|t| (*t - s.at).as_secs_f64() * 1000.0)).collect()
    };
    let stages_after = scrape(&http, &args.metrics).await;
    settle(&http, &args.amqp).await;

    // 4. The broker's own ceiling, same machine, same run.
    eprintln!("broker ceiling…");
    let payload_size = 1400; // about the size of a work message late in the chain
    let ceiling = broker_ceiling(&args.amqp, 10_000, payload_size).await?;

    // 5. The synchronous twin on the same workloads, and both modes through an outage.
    let comparison = match &args.sync_url {
        Some(sync_url) => {
            eprintln!("synchronous twin: full speed…");
            let n = args.full_speed_count / 2;
            let cpu_before = system_cpu_seconds();
            let start = Instant::now();
            let results: Vec<(bool, f64)> = stream::iter(0..n)
                .map(|i| {
                    let (http, url) = (http.clone(), sync_url.clone());
                    async move { submit_sync(&http, &url, 1_000_000 + i).await }
                })
                .buffer_unordered(64)
                .collect()
                .await;
            let ok = results.iter().filter(|r| r.0).count();
            let sync_throughput = ok as f64 / start.elapsed().as_secs_f64();
            let cpu_per_app_sync = (system_cpu_seconds() - cpu_before) * 1000.0 / n.max(1) as f64;
            eprintln!("synchronous twin: 100/s for 20 s…");
            let start = Instant::now();
            let mut tasks = Vec::new();
            for i in 0..2000 {
                tokio::time::sleep(Duration::from_secs_f64(f64::from(i) / 100.0).saturating_sub(start.elapsed())).await;
                let (http, url) = (http.clone(), sync_url.clone());
                tasks.push(tokio::spawn(async move { submit_sync(&http, &url, 2_000_000 + i as usize).await }));
            }
            let mut waits = Vec::new();
            for t in tasks {
                waits.push(t.await?.1);
            }
            let pid_of = |name: &str| args.pids.iter().find(|(n, _)| n == name).map(|(_, p)| *p);
            let outages = match (pid_of("level-credit"), pid_of("twin-level-credit")) {
                (Some(credit), Some(twin_credit)) => {
                    eprintln!("credit frozen for 10 s at 50/s: asynchronous…");
                    let a = outage(&http, &args.url, false, credit, &finals, 3_000_000).await?;
                    eprintln!("credit frozen for 10 s at 50/s: synchronous…");
                    let s = outage(&http, sync_url, true, twin_credit, &finals, 4_000_000).await?;
                    Some((a, s))
                }
                _ => None,
            };
            Some((sync_throughput, cpu_per_app_sync, waits, outages))
        }
        None => None,
    };

    let memory: Vec<(String, Option<f64>)> = args.pids.iter().map(|(n, p)| (n.clone(), peak_rss_mib(*p))).collect();
    let lost = lost_full + lost_300 + lost_100;

    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    let (s50, s99) = (pct(&mut submit300, 0.50), pct(&mut submit300, 0.99));
    let (e50, e99) = (pct(&mut e2e100, 0.50), pct(&mut e2e100, 0.99));
    let mut submit100: Vec<f64> = sent100.iter().map(|s| s.submit_ms).collect();
    let submit_at_100 = (pct(&mut submit100, 0.50), pct(&mut submit100, 0.99));
    let mut table = String::new();
    table.push_str(&format!(
        "\n### {} — {}{}\n\n`make bench` on {}\n\n| measure | result | target | |\n|---|---|---|---|\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        git_rev(),
        if args.instances > 1 {
            format!(" — {} instances of each level and of the ledger", args.instances)
        } else {
            String::new()
        },
        machine()
    ));
    let mut row =
        |m: &str, r: String, t: &str, ok: bool| table.push_str(&format!("| {m} | {r} | {t} | {} |\n", verdict(ok)));
    row(
        "sustained throughput, all levels auto-decided",
        format!("{throughput:.0} finalised/s ({} applications)", sent.len()),
        "",
        true,
    );
    row(
        "bare broker chain (5 hops, quorum, confirms; prefetch 400, 1,000 unconfirmed; 10–90 % window)",
        format!("{ceiling:.0} chains/s"),
        "",
        true,
    );
    row(
        "ratio to the broker's ceiling",
        format!("{:.2}", throughput / ceiling),
        "≥ 0.35",
        throughput / ceiling >= 0.35,
    );
    row(
        &format!("submit latency at {half:.0}/s (half the sustained throughput)"),
        format!("p50 {s50:.1} ms, p99 {s99:.1} ms"),
        "p99 ≤ 10 ms",
        s99 <= 10.0,
    );
    row(
        "end-to-end latency at 100/s",
        format!("p50 {e50:.1} ms, p99 {e99:.1} ms"),
        "p50 ≤ 30 ms, p99 ≤ 100 ms",
        e50 <= 30.0 && e99 <= 100.0,
    );
    for (name, m) in &memory {
        let shown = m.map(|v| format!("{v:.1} MiB")).unwrap_or_else(|| "unknown".into());
        row(&format!("peak resident memory: {name}"), shown, "≤ 64 MiB", m.is_some_and(|v| v <= 64.0));
    }
    row("applications lost or never final", lost.to_string(), "0", lost == 0);
    let (a, b) = (counted_after, counted_before);
    let statements = a.statements.zip(b.statements).map(|(a, b)| per_app(a, b));
    row(
        "SQL statements per application (full speed)",
        statements.map_or_else(|| "unknown (no pg_stat_statements)".into(), |n| format!("{n:.1}")),
        "≤ 6",
        statements.is_some_and(|n| n <= 6.0),
    );
    let transactions = per_app(a.transactions, b.transactions);
    row("transactions per application", format!("{transactions:.1}"), "≤ 3", transactions <= 3.0);
    row("WAL per application", format!("{:.0} bytes", per_app(a.wal_bytes, b.wal_bytes)), "", true);
    let publishes = per_app(a.publishes, b.publishes);
    row("broker publishes per application", format!("{publishes:.1}"), "≤ 6", publishes <= 6.0);
    row("broker deliveries per application", format!("{:.1}", per_app(a.deliveries, b.deliveries)), "", true);
    row(
        "CPU per application (broker, database, services)",
        format!("{cpu_per_app_async:.1} ms"),
        "≤ 2 ms",
        cpu_per_app_async <= 2.0,
    );
    table.push_str(&stage_table(&batches_before, &batches_after, &stages_before, &stages_after));
    if let Some((sync_throughput, cpu_sync, mut waits, outages)) = comparison {
        let (w50, w99) = (pct(&mut waits, 0.50), pct(&mut waits, 0.99));
        table.push_str(&format!(
            "\n**Asynchronous chain versus its synchronous twin** (same rules and booking code; the twin in processes of its own)\n\n\
             | measure | asynchronous | synchronous |\n|---|---|---|\n\
             | throughput at full speed (64 clients) | {throughput:.0} finalised/s | {sync_throughput:.0} decided/s |\n\
             | what the applicant waits for, at 100/s | p50 {s100:.1} ms, p99 {s100_99:.1} ms (a reference) | p50 {w50:.1} ms, p99 {w99:.1} ms (the final decision) |\n\
             | time to the final decision, at 100/s | p50 {e50:.1} ms, p99 {e99:.1} ms | p50 {w50:.1} ms, p99 {w99:.1} ms |\n\
             | CPU of broker, database and services per application | {cpu_async:.1} ms | {cpu_sync:.1} ms |\n\
             | asynchronous ÷ synchronous throughput (target ≥ 1.5) | {vs:.2} ({verdict_vs}) | |\n",
            vs = throughput / sync_throughput.max(1e-9),
            verdict_vs = verdict(throughput / sync_throughput.max(1e-9) >= 1.5),
            s100 = submit_at_100.0,
            s100_99 = submit_at_100.1,
            cpu_async = cpu_per_app_async,
        ));
        if let Some((a, s)) = &outages {
            let chart = comparison_svg(&[
                ("finalised per second", throughput, sync_throughput),
                ("final decision p50 at 100/s (ms)", e50, w50),
                ("errors during a 10 s outage", a.errors as f64, s.errors as f64),
                ("longest wait in the outage (ms)", a.max_wait_ms, s.max_wait_ms),
            ]);
            let path = args.results.with_file_name("bench-sync-vs-async.svg");
            std::fs::write(&path, chart)?;
            println!("chart: {}", path.display());
            table.push_str(&format!(
                "| credit level frozen 10 s, 50/s for 30 s: errors applicants saw | {} of {} | {} of {} |\n\
                 | … longest an applicant waited for an answer | {:.0} ms | {:.0} ms |\n\
                 | … applications lost or never final | {} | not accepted: {} |\n",
                a.errors, a.sent, s.errors, s.sent, a.max_wait_ms, s.max_wait_ms, a.lost, s.errors
            ));
        }
    }
    println!("{table}");
    let mut results = std::fs::read_to_string(&args.results).unwrap_or_else(|_| {
        "# Benchmark results\n\nEvery `make bench` run appends its table here, newest last, so regressions show.\n"
            .into()
    });
    results.push_str(&table);
    std::fs::write(&args.results, results)?;
    println!("appended to {}", args.results.display());
    Ok(())
}

/// Small panels, one per measure, each with the asynchronous and the synchronous bar.
fn comparison_svg(panels: &[(&str, f64, f64)]) -> String {
    let (pw, ph, top) = (230.0, 230.0, 40.0);
    let w = pw * panels.len() as f64;
    let mut svg = format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif"><rect width="100%" height="100%" fill="#fff"/><text x="12" y="22" font-size="15">Asynchronous chain (blue) versus synchronous twin (orange), same rules and machine</text>"##,
        h = ph + top + 30.0
    );
    for (i, (title, a, s)) in panels.iter().enumerate() {
        let x0 = pw * i as f64 + 20.0;
        let max = a.max(*s).max(1e-9);
        svg.push_str(&format!(r##"<text x="{x0}" y="{}" font-size="12">{title}</text>"##, top + 12.0));
        for (j, (v, colour)) in [(*a, "#0b4f8a"), (*s, "#dd6b20")].iter().enumerate() {
            let bh = v / max * (ph - 70.0);
            let x = x0 + 30.0 + j as f64 * 80.0;
            let y = top + ph - 20.0 - bh;
            svg.push_str(&format!(
                r##"<rect x="{x}" y="{y:.1}" width="60" height="{bh:.1}" fill="{colour}"/><text x="{}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
                x + 30.0,
                y - 4.0,
                if *v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") }
            ));
        }
        svg.push_str(&format!(
            r##"<line x1="{x0}" x2="{}" y1="{y}" y2="{y}" stroke="#333"/><text x="{}" y="{}" font-size="11" text-anchor="middle">async</text><text x="{}" y="{}" font-size="11" text-anchor="middle">sync</text>"##,
            x0 + 190.0,
            x0 + 60.0,
            top + ph - 4.0,
            x0 + 140.0,
            top + ph - 4.0,
            y = top + ph - 20.0
        ));
    }
    svg.push_str("</svg>\n");
    svg
}

fn git_rev() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown revision".into())
}

#[cfg(test)]
mod proc_tests {
    /// What the benchmark reads from /proc: this process's own memory, the machine's CPU,
    /// and the CPU time of the services' processes (PostgreSQL runs on every machine
    /// this runs on).
    #[test]
    fn process_memory_cpu_time_and_the_machine_are_read() {
        assert!(super::peak_rss_mib(std::process::id()).is_some_and(|mib| mib > 0.0));
        assert!(super::machine().contains("cores ("));
        assert!(super::system_cpu_seconds() > 0.0, "PostgreSQL has used some CPU");
    }
}
