//! Test support: starts the real services, in-process, against the real RabbitMQ and
//! PostgreSQL, each test in isolation: its own vhost (created through the broker's
//! management API) and its own schemas (`t<id>_intake`, ...), so tests run in
//! parallel with each other and beside a running `make run`.
//!
//! Tests talk to the system as clients do (HTTP) and observe it as an operator would
//! (queue depths, status events on the wire, the ledger's rows). Waiting is always
//! for a condition with a deadline, never a bare sleep.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use loanflow_domain::rules::LevelKind;
use loanflow_level::LevelStats;
use loanflow_platform::db::Identifier;
use loanflow_platform::secret::{Secret, TokenHash};
use loanflow_platform::settings::{ApproverSettings, OperatorSettings, RetrySettings};

/// The test approvers' tokens: `grace` and `alan` decide the manager level, `olga` its
/// escalated cases, `kim` only kyc.
pub const MANAGER_TOKEN: &str = "test-token-grace-manager";
pub const SECOND_MANAGER_TOKEN: &str = "test-token-alan-manager";
pub const ESCALATION_TOKEN: &str = "test-token-olga-escalated";
pub const KYC_ONLY_TOKEN: &str = "test-token-kim-kyc";
/// The operator's token in tests (the bureau's fault switch).
pub const OPERATOR_TOKEN: &str = "test-token-operator";
/// The synchronous twin's shared secret in tests.
pub const TWIN_SECRET: &str = "test-twin-secret";
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;

mod broker;
mod collector;
mod database;
mod fixtures;
mod proxy;

pub use broker::{EventTap, Tapped};
pub use collector::{CollectedSpan, OtlpCollector};
pub use fixtures::application;
pub use proxy::FaultProxy;

use broker::{amqp_addr, broker_host, create_vhost, declare_topology, delete_vhost, management_api, proxied_amqp_url};
use database::{ensure_test_database, pg_addr, pg_server, TEST_DATABASE};

/// How often a condition is re-checked while waiting for it.
const POLL: Duration = Duration::from_millis(25);

/// How long the end of a test waits for the outbox to empty.
const SETTLE: Duration = Duration::from_secs(10);

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start every level of the chain (false: start none; see [`TestSystem::start_level`]).
    pub levels: bool,
    /// Point the intake at a broker that is not there.
    pub intake_broker_down: bool,
    /// Another approval chain than the default.
    pub chain: Option<Vec<String>>,
    /// Retry policy; tests default to short waits so that a retry budget is spent in
    /// seconds, not minutes.
    pub retry: RetrySettings,
    /// The contract's per-client limits, tightened so that a test reaches them at once
    /// (5 submissions a second, 3 failed sign-ins a minute, 500 ms for a body). Off
    /// by default: every test submits from one address.
    pub limits: bool,
    /// How long dead letters are kept (the default's 14 days unless set).
    pub dead_letter_seconds: Option<u64>,
    /// Every node of a broker cluster (`host:port`), which the levels, the ledger and
    /// the bureau's clients are given as their address list; the harness itself and the
    /// intake (through its proxy) use `LOANFLOW_TEST_AMQP`'s node.
    pub broker_nodes: Option<Vec<String>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            levels: true,
            intake_broker_down: false,
            chain: None,
            retry: RetrySettings { max_attempts: 10, initial_ms: 100, max_ms: 1000 },
            limits: false,
            dead_letter_seconds: None,
            broker_nodes: None,
        }
    }
}

pub struct TestSystem {
    pub settings: Settings,
    /// Between the intake and the broker.
    pub intake_broker: FaultProxy,
    /// Between the intake and its database.
    pub intake_database: FaultProxy,
    /// Between the credit level and the bureau.
    pub bureau: FaultProxy,
    /// The bureau itself (for its fault controls).
    pub bureau_url: String,
    /// The ledger's health address.
    pub ledger_url: String,
    pub id: String,
    pub vhost: String,
    pub base_url: String,
    pub http: reqwest::Client,
    stop: CancellationToken,
    services: Vec<Running>,
    /// The intake, stopped and started on its own by [`TestSystem::restart_intake`].
    intake: Option<(CancellationToken, Running)>,
    intake_settings: Settings,
    levels: Vec<(String, CancellationToken, Running)>,
    extra_schemas: Vec<String>,
    expect_dead_letters: bool,
    allow_unsent_outbox: bool,
    /// Set once the vhost and the schemas are gone.
    removed: bool,
}

impl TestSystem {
    pub async fn start() -> TestSystem {
        TestSystem::start_with(Options::default()).await
    }

    pub async fn start_with(options: Options) -> TestSystem {
        TestSystem::try_start(options).await.expect("test system should start")
    }

    async fn try_start(options: Options) -> anyhow::Result<TestSystem> {
        if std::env::var("TEST_LOG").is_ok() {
            let logs = loanflow_platform::settings::TelemetrySettings {
                format: loanflow_platform::settings::LogFormat::Pretty,
                filter: "info".into(),
                otlp: Default::default(),
            };
            // Logs only: nothing to export, so nothing to shut down.
            let _ = loanflow_platform::telemetry::init(&logs, "loanflow-test");
        }
        let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
        let vhost = format!("loanflow-test-{id}");
        create_vhost(&vhost).await?;
        // Until the system exists (and its own drop takes over), a failure on the way
        // still removes what was made.
        let mut guard = StartGuard { vhost: vhost.clone(), id: id.clone(), armed: true };
        ensure_test_database().await?;

        let mut settings = Settings::defaults()?;
        // Services connect as their own roles (no user in the URL), as in production.
        let server = pg_server();
        let host = server.split_once('@').map_or(server.as_str(), |(_, host)| host).trim_start_matches("postgres://");
        let db_url = format!("postgres://{host}/{TEST_DATABASE}?sslmode=disable");
        // The services connect as users of this test's own (its id as their prefix),
        // with the permissions `loanflow migrate` grants in production.
        settings.broker.url = match &options.broker_nodes {
            Some(nodes) => nodes.iter().map(|n| format!("amqp://{n}/{vhost}")).collect::<Vec<_>>().join(","),
            None => format!("amqp://{}/{vhost}", broker_host()),
        };
        settings.broker.user_prefix = format!("t{id}_");
        settings.broker.passwords = loanflow_platform::broker::access::random_passwords();
        settings.broker.management_url = management_api();
        settings.broker.reconnect_max_ms = 1000;
        for (db, schema) in [
            (&mut settings.intake.database, format!("t{id}_intake")),
            (&mut settings.ledger.database, format!("t{id}_ledger")),
            (&mut settings.levels.database, format!("t{id}_level_")),
        ] {
            db.url = db_url.clone();
            db.schema = Identifier::new(schema).map_err(anyhow::Error::msg)?;
            db.pool_size = 3;
        }
        settings.intake.listen = "127.0.0.1:0".into();
        settings.intake.workers = 1;
        settings.bureau.listen = "127.0.0.1:0".into();
        settings.operators =
            vec![OperatorSettings { name: "operator".into(), token_sha256: TokenHash::of(OPERATOR_TOKEN) }];
        let limits = &mut settings.intake.limits;
        (limits.submissions_per_second, limits.submission_burst, limits.failed_sign_ins_per_minute) =
            if options.limits { (5, 5, 3) } else { (0, 0, 0) };
        if options.limits {
            settings.intake.body_timeout_ms = 500;
        }
        settings.retry = options.retry.clone();
        settings.intake.approvers = vec![
            ApproverSettings {
                name: "grace".into(),
                token_sha256: TokenHash::of(MANAGER_TOKEN),
                levels: vec!["manager".into()],
            },
            ApproverSettings {
                name: "alan".into(),
                token_sha256: TokenHash::of(SECOND_MANAGER_TOKEN),
                levels: vec!["manager".into()],
            },
            ApproverSettings {
                name: "olga".into(),
                token_sha256: TokenHash::of(ESCALATION_TOKEN),
                levels: vec!["manager-escalated".into()],
            },
            ApproverSettings {
                name: "kim".into(),
                token_sha256: TokenHash::of(KYC_ONLY_TOKEN),
                levels: vec!["kyc".into()],
            },
        ];
        // Escalation is looked for often, so that a test that moves the clock sees it soon.
        settings.intake.escalation_poll_ms = 100;
        if let Some(chain) = options.chain {
            let kinds = chain.iter().map(|l| LevelKind::from_name(l).context("a known level"));
            settings.chain.levels = kinds.collect::<anyhow::Result<_>>()?;
        }
        if let Some(seconds) = options.dead_letter_seconds {
            settings.retention.dead_letter_seconds = seconds;
        }
        // As `loanflow migrate` does, once the settings are final (the retry tiers and
        // the chain shape the topology).
        loanflow_platform::broker::access::provision(&settings).await?;
        declare_topology(&settings).await?;

        let stop = CancellationToken::new();
        let bureau = loanflow_bureau::start(settings.clone(), stop.clone()).await?;
        let bureau_addr = bureau.addr.context("bureau address")?;
        let bureau_proxy = FaultProxy::start(bureau_addr).await;
        settings.levels.bureau_url = format!("http://{}", bureau_proxy.addr());
        let ledger = loanflow_ledger::start(settings.clone(), stop.clone()).await?;
        let ledger_url = format!("http://{}", ledger.addr.context("ledger address")?);
        let mut intake_settings = settings.clone();
        let intake_broker = FaultProxy::start(amqp_addr()?).await;
        intake_settings.broker.url = proxied_amqp_url(&settings.broker.url, intake_broker.addr());
        if options.intake_broker_down {
            // Port 1 on loopback: nothing listens there, connections are refused.
            intake_settings.broker.url = "amqp://127.0.0.1:1/%2f".into();
        }
        let intake_database = FaultProxy::start(pg_addr()?).await;
        intake_settings.intake.database.url =
            format!("postgres://{}/{TEST_DATABASE}?sslmode=disable", intake_database.addr());
        let intake_stop = stop.child_token();
        let intake = loanflow_intake::start(intake_settings.clone(), intake_stop.clone()).await?;
        let base_url = format!("http://{}", intake.addr.context("intake address")?);
        guard.armed = false;
        let mut system = TestSystem {
            settings,
            intake_broker,
            intake_database,
            bureau: bureau_proxy,
            bureau_url: format!("http://{bureau_addr}"),
            ledger_url,
            id,
            vhost,
            base_url,
            http: reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?,
            stop,
            services: vec![bureau, ledger],
            intake: Some((intake_stop, intake)),
            intake_settings,
            levels: Vec::new(),
            extra_schemas: Vec::new(),
            expect_dead_letters: false,
            allow_unsent_outbox: false,
            removed: false,
        };
        if options.levels {
            for level in system.settings.chain.names() {
                system.start_level(&level).await;
            }
        }
        Ok(system)
    }

    /// Starts one more instance of a level (several may run at once).
    pub async fn start_level(&mut self, name: &str) -> Arc<LevelStats> {
        let token = self.stop.child_token();
        let (running, stats) =
            loanflow_level::start(self.settings.clone(), name, token.clone()).await.expect("level should start");
        self.levels.push((name.to_owned(), token, running));
        stats
    }

    /// Starts an instance of a level whose broker connection goes through a proxy
    /// the test can cut.
    pub async fn start_level_behind_proxy(&mut self, name: &str) -> ProxiedLevel {
        let (proxy, url) = self.broker_proxy().await;
        let mut settings = self.settings.clone();
        settings.broker.url = url;
        self.start_level_with(settings, name, proxy).await
    }

    /// A proxy to the broker that the test can cut, and this test's broker URL through
    /// it (for a client the test starts itself).
    pub async fn broker_proxy(&self) -> (FaultProxy, String) {
        let proxy = FaultProxy::start(amqp_addr().expect("broker address")).await;
        let url = proxied_amqp_url(&self.settings.broker.url, proxy.addr());
        (proxy, url)
    }

    /// Starts an instance of a level given two broker addresses (as if of two cluster
    /// nodes), each through a proxy the test can cut: the first, and the second.
    pub async fn start_level_with_two_broker_addresses(&mut self, name: &str) -> (ProxiedLevel, FaultProxy) {
        let (first, second) = (
            FaultProxy::start(amqp_addr().expect("broker address")).await,
            FaultProxy::start(amqp_addr().expect("broker address")).await,
        );
        let mut settings = self.settings.clone();
        settings.broker.url = format!(
            "{},{}",
            proxied_amqp_url(&self.settings.broker.url, first.addr()),
            proxied_amqp_url(&self.settings.broker.url, second.addr())
        );
        (self.start_level_with(settings, name, first).await, second)
    }

    /// Starts an instance of a level whose database connections go through a proxy
    /// the test can cut.
    pub async fn start_level_behind_db_proxy(&mut self, name: &str) -> ProxiedLevel {
        let proxy = FaultProxy::start(pg_addr().expect("database address")).await;
        let mut settings = self.settings.clone();
        settings.levels.database.url = format!("postgres://{}/{TEST_DATABASE}?sslmode=disable", proxy.addr());
        self.start_level_with(settings, name, proxy).await
    }

    async fn start_level_with(&mut self, settings: Settings, name: &str, proxy: FaultProxy) -> ProxiedLevel {
        let token = self.stop.child_token();
        let (running, stats) = loanflow_level::start(settings, name, token.clone()).await.expect("level should start");
        let health = format!("http://{}/health/ready", running.addr.expect("level health address"));
        self.levels.push((name.to_owned(), token, running));
        ProxiedLevel { stats, proxy, health }
    }

    /// Runs a level as its own operating-system process (`loanflow level <name>`), so
    /// that a test can kill it. `binary` is the `loanflow` executable.
    pub fn spawn_level_process(&self, binary: &str, name: &str) -> tokio::process::Child {
        self.level_process(binary, name).spawn().expect("the loanflow binary starts")
    }

    /// The command [`TestSystem::spawn_level_process`] runs, for a test that configures
    /// more (its environment) before spawning it.
    pub fn level_process(&self, binary: &str, name: &str) -> tokio::process::Command {
        let s = &self.settings;
        let retry = &s.retry;
        let mut command = tokio::process::Command::new(binary);
        command
            .args(["level", name])
            .env("LOANFLOW_CONFIG_DIR", "/nonexistent")
            .env("LOANFLOW__BROKER__URL", &s.broker.url)
            .env("LOANFLOW__BROKER__USER_PREFIX", &s.broker.user_prefix)
            .env(
                format!("LOANFLOW__BROKER__PASSWORDS__LEVEL_{}", name.to_uppercase()),
                s.broker.passwords.get(&format!("level_{name}")).map(Secret::expose).unwrap_or_default(),
            )
            .env("LOANFLOW__BROKER__RECONNECT_MAX_MS", s.broker.reconnect_max_ms.to_string())
            .env("LOANFLOW__CHAIN__LEVELS", s.chain.names().join(","))
            .env("LOANFLOW__RETRY__MAX_ATTEMPTS", retry.max_attempts.to_string())
            .env("LOANFLOW__RETRY__INITIAL_MS", retry.initial_ms.to_string())
            .env("LOANFLOW__RETRY__MAX_MS", retry.max_ms.to_string())
            .env("LOANFLOW__LEVELS__DATABASE__URL", &s.levels.database.url)
            .env("LOANFLOW__LEVELS__DATABASE__SCHEMA", s.levels.database.schema.as_str())
            .env("LOANFLOW__LEVELS__DATABASE__POOL_SIZE", s.levels.database.pool_size.to_string())
            .env("LOANFLOW__LEVELS__BUREAU_URL", &s.levels.bureau_url)
            .env("LOANFLOW__TELEMETRY__FILTER", if std::env::var("TEST_LOG").is_ok() { "info" } else { "error" })
            .kill_on_drop(true);
        command
    }

    /// The health address of every level instance running.
    pub fn level_health_urls(&self) -> Vec<String> {
        self.levels.iter().filter_map(|(_, _, running)| running.addr).map(|addr| format!("http://{addr}")).collect()
    }

    /// Starts the synchronous twin beside this system, as `make bench` does: a twin
    /// process per level of the chain, a twin ledger and a twin intake, with schemas of
    /// their own and [`TWIN_SECRET`]. Returns the twin intake's URL and the twin
    /// ledger's.
    pub async fn start_twin(&mut self) -> Twin {
        let mut settings = self.settings.clone();
        settings.twin.secret = Secret::new(TWIN_SECRET);
        settings.twin.timeout_ms = 3000;
        settings.twin.listen = "127.0.0.1:0".into();
        for level in &self.settings.chain.names() {
            let running = loanflow_level::twin::start(settings.clone(), level, self.stop.clone())
                .await
                .expect("twin level starts");
            settings.twin.level_urls.insert(level.clone(), format!("http://{}", running.addr.expect("address")));
            self.services.push(running);
        }
        let ledger_schema = format!("t{}_twin_ledger", self.id);
        let mut ledger = settings.clone();
        ledger.ledger.database.schema = Identifier::new(ledger_schema.clone()).expect("a plain name");
        let running = loanflow_ledger::twin::start(ledger, self.stop.clone()).await.expect("twin ledger starts");
        settings.twin.ledger_url = format!("http://{}", running.addr.expect("twin ledger address"));
        self.services.push(running);
        let intake_schema = format!("t{}_twin_intake", self.id);
        settings.intake.database.schema = Identifier::new(intake_schema.clone()).expect("a plain name");
        let running = loanflow_intake::twin::start(settings.clone(), self.stop.clone()).await.expect("twin intake");
        let url = format!("http://{}", running.addr.expect("twin intake address"));
        self.services.push(running);
        self.extra_schemas.extend([ledger_schema.clone(), intake_schema]);
        Twin { url, ledger_url: settings.twin.ledger_url, ledger_schema, level_urls: settings.twin.level_urls }
    }

    /// An approver's decision through the API: `{"decision": "approve", "reason": …}`.
    pub async fn approve(&self, token: &str, reference: &str, reason: &str) -> reqwest::Response {
        let body = serde_json::json!({"decision": "approve", "reason": reason});
        let url = self.url(&format!("/api/approvals/{reference}"));
        self.http.post(url).bearer_auth(token).json(&body).send().await.expect("the intake answers")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn submit(&self, body: &Value) -> reqwest::Response {
        self.http.post(self.url("/api/loans")).json(body).send().await.expect("intake should answer")
    }

    /// Submits and returns the reference, asserting the 202.
    pub async fn submit_ok(&self, body: &Value) -> String {
        let response = self.submit(body).await;
        assert_eq!(response.status(), 202, "submission should be accepted");
        let body: Value = response.json().await.expect("JSON body");
        body["reference"].as_str().expect("reference").to_owned()
    }

    pub async fn status(&self, reference: &str) -> Value {
        let response =
            self.http.get(self.url(&format!("/api/loans/{reference}"))).send().await.expect("intake should answer");
        assert_eq!(response.status(), 200, "status of {reference}");
        response.json().await.expect("JSON status")
    }

    /// Polls the status until it is `status`, or fails after `within`.
    pub async fn wait_for_status(&self, reference: &str, status: &str, within: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let last = self.status(reference).await;
            if last["status"] == status {
                return last;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{reference} did not become {status} within {within:?}; last seen: {last}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts another intake instance beside the first, on the same database (its own
    /// address, its own relay and status consumer): returns its base URL.
    pub async fn start_another_intake(&mut self) -> String {
        let running =
            loanflow_intake::start(self.intake_settings.clone(), self.stop.clone()).await.expect("another intake");
        let url = format!("http://{}", running.addr.expect("intake address"));
        self.services.push(running);
        url
    }

    /// Starts another ledger instance, sharing the ledger's queue and database.
    pub async fn start_another_ledger(&mut self) {
        let running = loanflow_ledger::start(self.settings.clone(), self.stop.clone()).await.expect("another ledger");
        self.services.push(running);
    }

    /// Stops the intake (gracefully, as a deployment does) and starts it again, with
    /// its settings changed by `change` (a new chain, say). Its address changes.
    pub async fn restart_intake(&mut self, change: impl FnOnce(&mut Settings)) {
        if let Some((token, running)) = self.intake.take() {
            token.cancel();
            running.stopped().await;
        }
        change(&mut self.intake_settings);
        let token = self.stop.child_token();
        let running =
            loanflow_intake::start(self.intake_settings.clone(), token.clone()).await.expect("intake should restart");
        self.base_url = format!("http://{}", running.addr.expect("intake address"));
        self.intake = Some((token, running));
    }

    /// Stops every level instance (the queues keep their messages).
    pub async fn stop_levels(&mut self) {
        for (_, token, running) in self.levels.drain(..) {
            token.cancel();
            running.stopped().await;
        }
    }

    /// This test means to leave dead letters behind (it injects poison, or spends a
    /// retry budget): [`TestSystem::shutdown`] does not count them against it.
    pub fn expect_dead_letters(&mut self) {
        self.expect_dead_letters = true;
    }

    /// This test means to leave outbox rows unsent (its intake never reaches the
    /// broker): [`TestSystem::shutdown`] does not count them against it.
    pub fn allow_unsent_outbox(&mut self) {
        self.allow_unsent_outbox = true;
    }

    /// Ends the test: checks the invariants no assertion of a test should have to
    /// repeat, stops every service, removes the vhost and the schemas, and fails the
    /// test if an invariant did not hold (as crates.io's `TestApp` fails a test that
    /// leaves background jobs behind).
    pub async fn shutdown(self) {
        let broken = self.finish().await;
        assert!(broken.is_empty(), "the test left the system in a state it should not: {broken:?}");
    }

    /// [`TestSystem::shutdown`], returning the invariants that did not hold instead of
    /// failing: every outbox row was sent and no consumer holds a delivery (each within
    /// [`SETTLE`] of the end), and no dead letter is left that the test did not expect.
    pub async fn finish(mut self) -> Vec<String> {
        let mut broken = Vec::new();
        if !self.allow_unsent_outbox {
            let sent = wait_until(SETTLE, || async { self.count("intake", "outbox", None).await == 0 }).await;
            if !sent {
                let rows = self.count("intake", "outbox", None).await;
                broken.push(format!("{rows} unsent outbox row(s)"));
            }
        }
        // Once the system is idle no consumer holds a delivery: one never settled would
        // keep its place, and its queue's prefetch slot, until the connection closed.
        let settled =
            wait_until(SETTLE, || async { loanflow_platform::broker::unacknowledged(&self.vhost) == 0 }).await;
        if !settled {
            let held = loanflow_platform::broker::unacknowledged(&self.vhost);
            broken.push(format!("{held} unacknowledged deliveries"));
        }
        if !self.expect_dead_letters {
            let letters = self.queue_depth(loanflow_platform::broker::DEAD_LETTER_QUEUE).await;
            if letters > 0 {
                broken.push(format!("{letters} unexpected dead letter(s)"));
            }
        }
        self.stop_levels().await;
        self.stop.cancel();
        if let Some((_, intake)) = self.intake.take() {
            intake.stopped().await;
        }
        for service in self.services.drain(..) {
            service.stopped().await;
        }
        // The services are stopped, so the vhost is quiet: deleting its quorum queues
        // now avoids the broker bug that hits deletions under traffic (rabbitmq/ra#484).
        remove(&self.vhost, &self.settings.broker, self.schemas()).await;
        self.removed = true;
        broken
    }

    /// Every schema this test created.
    fn schemas(&self) -> Vec<String> {
        let mut schemas =
            vec![self.settings.intake.database.schema.to_string(), self.settings.ledger.database.schema.to_string()];
        for level in &self.settings.chain.names() {
            schemas.push(format!("{}{level}", self.settings.levels.database.schema));
        }
        schemas.extend(self.extra_schemas.iter().cloned());
        schemas
    }
}

/// A test that panicked before [`TestSystem::shutdown`] still leaves nothing behind:
/// its services are told to stop and, once they had a moment to go quiet, its vhost and
/// schemas are removed (on a thread of its own, since `drop` cannot wait on the test's
/// runtime).
impl Drop for TestSystem {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        self.stop.cancel();
        let (vhost, broker, schemas) = (self.vhost.clone(), self.settings.broker.clone(), self.schemas());
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(async {
                // Let the cancelled consumers and relays let go of their queues first.
                tokio::time::sleep(Duration::from_millis(500)).await;
                remove(&vhost, &broker, schemas).await;
            });
        });
        let _ = cleanup.join();
    }
}

/// What a test system that failed to start had made: its vhost, its broker users and
/// its schemas, removed when the start gives up.
struct StartGuard {
    vhost: String,
    id: String,
    armed: bool,
}

impl Drop for StartGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let Ok(mut broker) = Settings::defaults().map(|s| s.broker) else { return };
        broker.user_prefix = format!("t{}_", self.id);
        broker.management_url = management_api();
        let mut schemas = vec![format!("t{}_intake", self.id), format!("t{}_ledger", self.id)];
        schemas.extend(LevelKind::ALL.iter().map(|kind| format!("t{}_level_{}", self.id, kind.name())));
        let vhost = self.vhost.clone();
        let cleanup = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            runtime.block_on(remove(&vhost, &broker, schemas));
        });
        let _ = cleanup.join();
    }
}

/// Deletes a test's vhost and its broker users, and drops its schemas.
async fn remove(vhost: &str, broker: &loanflow_platform::settings::BrokerSettings, schemas: Vec<String>) {
    if let Err(e) = delete_vhost(vhost).await {
        eprintln!("warning: test vhost {vhost} not deleted: {e:#}");
    }
    if let Err(e) = loanflow_platform::broker::access::remove_users(broker).await {
        eprintln!("warning: the test's broker users were not deleted: {e:#}");
    }
    let url = format!("{}/{TEST_DATABASE}", pg_server());
    let _ = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let mut conn = PgConnection::establish(&url)?;
        for schema in schemas {
            conn.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))?;
        }
        Ok(())
    })
    .await;
}

/// A level started behind a fault proxy.
pub struct ProxiedLevel {
    pub stats: Arc<LevelStats>,
    pub proxy: FaultProxy,
    /// The level's readiness endpoint.
    pub health: String,
}

/// The synchronous twin started beside a test system.
#[derive(Debug, Clone)]
pub struct Twin {
    /// The twin intake.
    pub url: String,
    pub ledger_url: String,
    pub ledger_schema: String,
    pub level_urls: std::collections::BTreeMap<String, String>,
}

/// Re-evaluates `condition` until it holds or `within` passes.
pub async fn wait_until<F, Fut>(within: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if condition().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
