//! Typed, layered settings: built-in defaults < `config/*.toml` < environment.
//!
//! Environment variables follow the `config` crate's convention,
//! `LOANFLOW__SECTION__KEY` (`LOANFLOW__LEVELS__MANAGER__THRESHOLD=75000.00`); list
//! settings take commas (`LOANFLOW__CHAIN__LEVELS=kyc,credit,manager`).

use std::path::Path;

use loanflow_domain::rules::{CreditPolicy, KycPolicy, LevelKind, ManagerPolicy, UnderwritingPolicy};
use serde::Deserialize;

use crate::db::Identifier;
use crate::secret::{Secret, TokenHash};

const DEFAULTS: &str = include_str!("defaults.toml");
/// Development mode's layer: the contract's sandbox people and no submission limit.
/// Compiled in and applied only by [`Mode::Development`], so no configuration file or
/// directory can carry the published sandbox tokens into another deployment.
const DEVELOPMENT: &str = include_str!("development.toml");

/// Whether the sandbox layer applies. Only an explicit choice (`loanflow --development`,
/// which `make run` passes) turns it on; nothing inherits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Production,
    Development,
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration is invalid: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub telemetry: TelemetrySettings,
    pub broker: BrokerSettings,
    pub retry: RetrySettings,
    pub chain: ChainSettings,
    pub intake: IntakeSettings,
    pub bureau: BureauSettings,
    pub levels: LevelsSettings,
    pub ledger: LedgerSettings,
    pub twin: TwinSettings,
    pub retention: RetentionSettings,
    /// Operators: the simulated bureau's fault switch, dead-letter replay and (later) the
    /// operations page. None by default.
    #[serde(default)]
    pub operators: Vec<OperatorSettings>,
    /// Set by [`Settings::load`], never read from a file: services announce it.
    #[serde(skip)]
    pub mode: Mode,
    /// The clock of human-level timers (claims, escalation): the system's, unless a
    /// test moves it. Never read from a file.
    #[serde(skip)]
    pub clock: crate::clock::Clock,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TelemetrySettings {
    pub format: LogFormat,
    /// An `EnvFilter` directive; `RUST_LOG`, when set, wins.
    pub filter: String,
    /// Traces, exported over OpenTelemetry's OTLP.
    #[serde(default)]
    pub otlp: OtlpSettings,
}

/// Where and how spans are exported. Off while `endpoint` is empty: then no span is
/// exported and no trace context travels with the messages.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OtlpSettings {
    /// The collector's OTLP/HTTP base address (`http://collector:4318`); spans go to
    /// `<endpoint>/v1/traces`. Empty: tracing is off.
    #[serde(default)]
    pub endpoint: String,
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// The share of new traces kept, from 0 to 1; a trace begun elsewhere (a caller's
    /// `traceparent`) keeps its caller's choice.
    #[serde(default = "all_traces")]
    pub sample_ratio: f64,
    /// How often finished spans are sent, in milliseconds.
    #[serde(default = "export_every")]
    pub export_interval_ms: u64,
}

fn all_traces() -> f64 {
    1.0
}

fn export_every() -> u64 {
    5000
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BrokerSettings {
    /// AMQP URI of the broker and vhost, without credentials: each service connects as
    /// its own user (see `broker::access`). A cluster's nodes are listed with commas
    /// (`amqp://node1:5672/loanflow,amqp://node2:5672/loanflow`, one vhost): a client
    /// connects to the first that answers, and after a lost connection tries the next.
    pub url: String,
    /// Services' broker users are this prefix followed by the service (`intake`,
    /// `ledger`, `level_<name>`, `operator`, `setup`).
    pub user_prefix: String,
    /// Their passwords, by service (`LOANFLOW__BROKER__PASSWORDS__INTAKE`, …); a process
    /// needs its own only, `loanflow migrate` every one (it sets them on the broker).
    #[serde(default)]
    pub passwords: std::collections::BTreeMap<String, Secret>,
    /// The management API and an administrator of it: `loanflow migrate` creates the
    /// vhost, the users and their permissions there.
    pub management_url: String,
    pub management_user: String,
    #[serde(default)]
    pub management_password: Secret,
    /// Who this process acts as on the broker; set by the service that starts, never
    /// read from a file. Unset, the URL is used as it is (a test harness's own client).
    #[serde(skip)]
    pub service: Option<String>,
    pub queue_type: QueueType,
    /// Unacked deliveries a consumer may hold. Too low starves a level that waits on
    /// I/O (the bureau); too high lets one instance hoard work another could do and
    /// makes a crash redeliver more.
    pub prefetch: u16,
    /// The most deliveries one batch takes. Batches are what the channel has buffered
    /// (no timer), so this only caps them under heavy load: too low gives up the
    /// savings of batching; too high makes one failing database write delay more work.
    pub batch_max: u16,
    /// Batches of one consumer handled at once. 1 serialises every round trip; more
    /// overlap one batch's database and broker waits with the next one's work.
    pub batch_concurrency: u16,
    /// Quorum queues only: deliveries of one message before the broker dead-letters it,
    /// the last guard against a message that crashes its consumer every time.
    pub delivery_limit: u32,
    /// Reconnection backoff: first wait, doubling up to the maximum. Too low hammers a
    /// broker that is restarting; too high leaves work waiting after it is back.
    pub reconnect_initial_ms: u64,
    pub reconnect_max_ms: u64,
}

impl BrokerSettings {
    /// These settings for a process acting as `service`.
    pub fn acting_as(&self, service: &str) -> BrokerSettings {
        BrokerSettings { service: Some(service.to_owned()), ..self.clone() }
    }

    /// The broker user of `service`.
    pub fn user_of(&self, service: &str) -> String {
        format!("{}{service}", self.user_prefix)
    }

    /// The broker user this process acts as, if it acts as a service.
    pub fn user(&self) -> Option<String> {
        self.service.as_deref().map(|s| self.user_of(s))
    }

    /// The broker's addresses, in the order given.
    pub fn addresses(&self) -> Vec<&str> {
        self.url.split(',').map(str::trim).filter(|a| !a.is_empty()).collect()
    }

    /// The URIs to connect to, one per address: with this service's user and password.
    /// They carry the password: never logged.
    pub fn connection_urls(&self) -> Vec<String> {
        let addresses = self.addresses();
        let Some(service) = &self.service else { return addresses.into_iter().map(str::to_owned).collect() };
        let encode = |s: &str| percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string();
        let password = self.passwords.get(service).map(|p| encode(p.expose())).unwrap_or_default();
        let user = encode(&self.user_of(service));
        addresses
            .into_iter()
            .map(|address| {
                let (scheme, rest) = address.split_once("://").unwrap_or(("amqp", address));
                format!("{scheme}://{user}:{password}@{rest}")
            })
            .collect()
    }
}

/// Retries of transient failures, through the broker's delay queues.
#[derive(Debug, Clone, Deserialize)]
pub struct RetrySettings {
    /// Attempts in all, the first included. Too few fails applications over a short
    /// outage; too many keeps a hopeless one cycling before anyone sees it.
    pub max_attempts: u32,
    /// Wait before the second attempt; each later wait doubles, up to `max_ms`.
    pub initial_ms: u64,
    pub max_ms: u64,
}

impl RetrySettings {
    /// The wait before attempt `attempt + 1`, after `attempt` attempts (1-based).
    pub fn delay_after(&self, attempt: u32) -> u64 {
        let doublings = attempt.saturating_sub(1).min(32);
        self.initial_ms.max(1).saturating_mul(1u64 << doublings).min(self.max_ms.max(1))
    }

    /// How long a message may wait in all, through every retry of its budget: what its
    /// consumer holds it for at most.
    pub fn budget_ms(&self) -> u64 {
        (1..self.max_attempts.max(1)).map(|a| self.delay_after(a)).fold(0, u64::saturating_add)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QueueType {
    Quorum,
    Classic,
}

/// The approval chain for new applications. Levels are read as the kinds the system
/// knows, so a name that is no level (or that would not be safe in a queue, schema or
/// routing-key name) never gets past loading the settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ChainSettings {
    #[serde(deserialize_with = "level_kinds")]
    pub levels: Vec<LevelKind>,
}

fn level_kinds<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<LevelKind>, D::Error> {
    let names = Vec::<String>::deserialize(deserializer)?;
    names
        .iter()
        .map(|name| {
            LevelKind::from_name(name).ok_or_else(|| {
                serde::de::Error::custom(format!("unknown level {name:?} (known: kyc, credit, underwriting, manager)"))
            })
        })
        .collect()
}

impl ChainSettings {
    /// The levels' names, as routing slips and queues spell them.
    pub fn names(&self) -> Vec<String> {
        self.levels.iter().map(|kind| kind.name().to_owned()).collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct DatabaseSettings {
    /// libpq connection URL without a user (`postgres://host:port/database?…`): the
    /// roles below are the only ones a service connects as.
    pub url: String,
    /// The runtime role the service serves as (levels: a prefix, followed by the level's
    /// name). Its migrations run as `<role>_owner`, which owns the schema and grants the
    /// runtime role only what its tables need.
    pub role: Identifier,
    /// The roles' passwords. Unset, libpq finds them in its password file (`~/.pgpass`,
    /// or `PGPASSFILE`), where `deploy/prepare.sh` keeps them for a local machine.
    #[serde(default)]
    pub password: Secret,
    #[serde(default)]
    pub owner_password: Secret,
    /// The schema this service owns; its tables and migration history live there.
    pub schema: Identifier,
    pub pool_size: u32,
    /// How long to wait for a pooled connection before failing the request.
    pub connect_timeout_ms: u64,
    /// Server-side limit on one statement, so a stuck query cannot hold a
    /// connection (and the request) forever.
    pub statement_timeout_ms: u64,
}

/// A person who may decide applications waiting at human levels.
#[derive(Debug, Clone, Deserialize)]
pub struct ApproverSettings {
    pub name: String,
    /// The SHA-256 digest of the bearer token the approver signs in with; the token
    /// itself is never configured.
    pub token_sha256: TokenHash,
    /// The levels this approver may decide.
    pub levels: Vec<String>,
}

/// A person who runs the system: no decisions, only operations.
#[derive(Debug, Clone, Deserialize)]
pub struct OperatorSettings {
    pub name: String,
    pub token_sha256: TokenHash,
}

/// The operator a bearer token belongs to, if any (every digest compared).
pub fn operator_for<'a>(operators: &'a [OperatorSettings], token: &str) -> Option<&'a OperatorSettings> {
    operators.iter().fold(None, |found, o| if o.token_sha256.matches(token) { Some(o) } else { found })
}

#[derive(Debug, Clone, Deserialize)]
pub struct IntakeSettings {
    pub listen: String,
    /// Approvers and their tokens; none by default.
    #[serde(default)]
    pub approvers: Vec<ApproverSettings>,
    pub workers: usize,
    pub database: DatabaseSettings,
    /// The contract's limits per client address.
    pub limits: LimitSettings,
    /// Proxies whose `X-Forwarded-For` names the client (addresses); none by default,
    /// so the peer address is the client.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// A request body that has not fully arrived after this long is answered 408 and
    /// the connection closed: an idle body must not hold a connection.
    pub body_timeout_ms: u64,
    /// Connections served at once per worker; more wait to be accepted.
    pub max_connections: usize,
    /// Unacked status messages the projection may hold. Each carries up to 32 events
    /// (of a level's batch), so it needs far fewer in flight than a level does; too
    /// many only hold memory.
    pub status_prefetch: u16,
    /// How long an `Idempotency-Key` is remembered; after that it may be used again.
    /// Too short lets a client's late retry create a second application; too long
    /// keeps keys (and their table) around for nothing.
    pub idempotency_hours: u32,
    /// An approver's page session ends after this long without use…
    pub session_idle_minutes: u32,
    /// …and after this long in any case.
    pub session_hours: u32,
    /// Session cookies are `Secure` with the `__Host-` prefix: right wherever the pages
    /// are served over TLS (directly or behind a TLS proxy). Development mode turns it
    /// off, since it serves plain HTTP.
    pub secure_cookies: bool,
    /// Outbox rows published per round trip.
    pub relay_batch: i64,
    /// How often the relay looks for unsent rows when nothing woke it: the bound on
    /// how long a message written by another intake instance waits.
    pub relay_poll_ms: u64,
    /// How long an approver's claim on a case lasts (the holder may renew it).
    pub claim_minutes: u32,
    /// How often the intake looks for waiting cases that are due for escalation.
    pub escalation_poll_ms: u64,
}

/// The contract's "Limits": 0 turns a limit off.
#[derive(Debug, Clone, Deserialize)]
pub struct LimitSettings {
    /// Submissions per second per client address, and the burst above that rate.
    pub submissions_per_second: u32,
    pub submission_burst: u32,
    /// Failed approver authentications per minute per client address; past it every
    /// attempt from that address is refused until the allowance returns.
    pub failed_sign_ins_per_minute: u32,
}

/// The synchronous twin of the chain, for the benchmark's comparison only (see
/// `defaults.toml`). Its processes are started with `loanflow twin …`; no other
/// process serves its endpoints.
#[derive(Debug, Clone, Deserialize)]
pub struct TwinSettings {
    /// Every call between twin processes carries it as a bearer token. A twin process
    /// refuses to start while it is unset.
    pub secret: Secret,
    /// Where a twin level or twin ledger listens (its own listener, never a health
    /// address).
    pub listen: String,
    /// How long the twin intake waits for one level (or the ledger) before answering 503.
    pub timeout_ms: u64,
    pub ledger_url: String,
    pub level_urls: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct BureauSettings {
    pub listen: String,
    pub workers: usize,
    /// Added to every answer, to simulate a slow bureau.
    pub latency_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LevelsSettings {
    pub health_listen: String,
    pub bureau_url: String,
    /// How long credit waits for the bureau before treating it as unavailable.
    pub bureau_timeout_ms: u64,
    /// `schema` is a prefix here: each level owns `<prefix><level name>`.
    pub database: DatabaseSettings,
    pub kyc: KycPolicy,
    pub credit: CreditPolicy,
    pub underwriting: UnderwritingPolicy,
    pub manager: ManagerPolicy,
}

impl LevelsSettings {
    /// The database settings of one level, with its own schema and roles (the prefixes
    /// followed by the level's name).
    pub fn database_for(&self, level: &str) -> Result<DatabaseSettings, String> {
        Ok(DatabaseSettings {
            schema: self.database.schema.followed_by(level)?,
            role: self.database.role.followed_by(level)?,
            ..self.database.clone()
        })
    }
}

/// How long state that only guards against redelivery is kept.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Days a consumer remembers a handled message id. A message redelivered or
    /// replayed later than this is handled again, which every downstream step absorbs
    /// (derived message ids, the ledger's primary key, the projection's sequence
    /// numbers), so this bounds the inbox tables, not correctness.
    pub inbox_days: u32,
    /// How long a dead letter (which holds the application, personal data included) is
    /// kept for an operator to look at and replay; after that the broker drops it.
    pub dead_letter_seconds: u64,
    /// How often the sweep runs (it also runs once at start).
    pub sweep_minutes: u64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LedgerSettings {
    pub health_listen: String,
    pub database: DatabaseSettings,
}

impl Settings {
    /// The built-in defaults alone: what tests start from.
    pub fn defaults() -> Result<Settings, SettingsError> {
        let built =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml)).build()?;
        Settings::checked(built.try_deserialize()?)
    }

    /// Defaults, then development mode's layer (in [`Mode::Development`] only), then
    /// every `*.toml` in `dir` (alphabetically), then the environment.
    pub fn load(dir: &Path, mode: Mode) -> Result<Settings, SettingsError> {
        let mut builder =
            config::Config::builder().add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if mode == Mode::Development {
            builder = builder.add_source(config::File::from_str(DEVELOPMENT, config::FileFormat::Toml));
        }
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut files: Vec<_> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|ext| ext == "toml"))
                .collect();
            files.sort();
            for file in files {
                builder = builder.add_source(config::File::from(file));
            }
        }
        let env = config::Environment::with_prefix("LOANFLOW")
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("chain.levels")
            .with_list_parse_key("levels.kyc.sanctions")
            .with_list_parse_key("intake.trusted_proxies");
        let mut settings: Settings = builder.add_source(env).build()?.try_deserialize()?;
        settings.mode = mode;
        Settings::checked(settings)
    }

    fn checked(settings: Settings) -> Result<Settings, SettingsError> {
        let invalid = |why: String| Err(SettingsError::Invalid(why));
        // A retrying delivery is held by its consumer, unacknowledged; the broker takes
        // one held past its consumer timeout (30 min by default) back from its channel.
        let budget_ms = settings.retry.budget_ms();
        if budget_ms > MAX_RETRY_BUDGET_MS {
            return invalid(format!(
                "retry: max_attempts, initial_ms and max_ms add up to {} s of waiting; keep it under {} s \
                 (a consumer holds a retrying delivery, and the broker takes back one held too long)",
                budget_ms / 1000,
                MAX_RETRY_BUDGET_MS / 1000
            ));
        }
        if settings.chain.levels.is_empty() {
            return invalid("chain.levels must name at least one level".into());
        }
        let mut seen = std::collections::HashSet::new();
        if !settings.chain.levels.iter().all(|l| seen.insert(l)) {
            return invalid("chain.levels must not name a level twice".into());
        }
        for db in [&settings.intake.database, &settings.ledger.database, &settings.levels.database] {
            if let Err(why) = crate::db::check_url(&db.url) {
                return invalid(format!("database url: {why}"));
            }
            // The owner role's name too.
            if let Err(why) = db.role.followed_by("_owner") {
                return invalid(format!("database role: {why}"));
            }
        }
        for kind in LevelKind::ALL {
            let level = kind.name();
            if let Err(why) = settings.levels.database_for(level).and_then(|db| db.role.followed_by("_owner")) {
                return invalid(format!("levels.database: for level {level}: {why}"));
            }
        }
        for address in settings.broker.addresses() {
            let authority = address.split_once("://").map_or("", |(_, rest)| rest).split('/').next();
            if authority.is_some_and(|a| a.contains('@')) {
                return invalid("broker.url must not carry credentials: each service connects as its own user".into());
            }
        }
        let vhosts: std::collections::BTreeSet<String> =
            settings.broker.addresses().into_iter().map(crate::broker::access::vhost_of).collect();
        if vhosts.len() > 1 {
            return invalid(format!("broker.url: every address must name the same vhost, not {vhosts:?}"));
        }
        Ok(settings)
    }
}

/// The longest retry budget allowed: half the broker's default consumer timeout.
const MAX_RETRY_BUDGET_MS: u64 = 15 * 60 * 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_are_the_contracts() {
        let s = Settings::defaults().unwrap();
        assert_eq!(s.chain.names(), ["kyc", "credit", "underwriting", "manager"]);
        assert_eq!(s.intake.listen, "127.0.0.1:8080");
        assert_eq!(s.bureau.listen, "127.0.0.1:8090");
        assert_eq!(s.levels.manager, ManagerPolicy::default());
        assert_eq!(s.levels.underwriting, UnderwritingPolicy::default());
        assert_eq!(s.levels.kyc, KycPolicy::default());
        assert_eq!(s.levels.credit, CreditPolicy::default());
        assert_eq!(s.broker.queue_type, QueueType::Quorum);
        assert_eq!(s.levels.database_for("kyc").unwrap().schema.as_str(), "level_kyc");
    }

    #[test]
    fn retry_delays_double_up_to_the_maximum() {
        let retry = RetrySettings { max_attempts: 8, initial_ms: 1000, max_ms: 30000 };
        let delays: Vec<u64> = (1..8).map(|a| retry.delay_after(a)).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
        assert_eq!(retry.budget_ms(), 91_000);
    }

    #[test]
    fn files_override_defaults() {
        let dir = std::env::temp_dir().join(format!("loanflow-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("site.toml"),
            "[chain]\nlevels = [\"kyc\", \"manager\"]\n[levels.manager]\nthreshold = \"75000\"\n",
        )
        .unwrap();
        let s = Settings::load(&dir, Mode::Production).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.chain.names(), ["kyc", "manager"]);
        assert_eq!(s.levels.manager.threshold.to_string(), "75000.00");
    }

    #[test]
    fn a_cluster_is_a_list_of_addresses_of_one_vhost_each_without_credentials() {
        let mut broker = Settings::defaults().unwrap().broker;
        broker.url = "amqp://node1:5672/loanflow, amqp://node2:5673/loanflow".into();
        broker.passwords.insert("intake".into(), Secret::new("p@ss".to_owned()));
        let urls = broker.acting_as("intake").connection_urls();
        assert_eq!(
            urls,
            [
                "amqp://loanflow%5Fintake:p%40ss@node1:5672/loanflow",
                "amqp://loanflow%5Fintake:p%40ss@node2:5673/loanflow"
            ]
        );
        assert_eq!(crate::broker::access::vhost_of(&broker.url), "loanflow");
        for (url, refused) in [
            ("amqp://node1/loanflow,amqp://node2/other", "same vhost"),
            ("amqp://node1/loanflow,amqp://guest:guest@node2/loanflow", "credentials"),
        ] {
            let dir = std::env::temp_dir().join(format!("loanflow-settings-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("a.toml"), format!("[broker]\nurl = \"{url}\"\n")).unwrap();
            let err = Settings::load(&dir, Mode::Production).unwrap_err();
            std::fs::remove_dir_all(&dir).unwrap();
            assert!(err.to_string().contains(refused), "{err}");
        }
    }

    #[test]
    fn unknown_levels_are_refused() {
        let dir = std::env::temp_dir().join(format!("loanflow-settings-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.toml"), "[chain]\nlevels = [\"kyc\", \"astrology\"]\n").unwrap();
        let err = Settings::load(&dir, Mode::Production).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(err.to_string().contains("astrology"), "{err}");
    }

    /// The contract's sandbox people, in development mode only.
    #[test]
    fn development_mode_alone_carries_the_sandbox_people() {
        let empty = std::env::temp_dir().join(format!("loanflow-settings-{}", uuid::Uuid::new_v4()));
        let production = Settings::load(&empty, Mode::Production).unwrap();
        assert!(production.intake.approvers.is_empty() && production.operators.is_empty());
        assert_eq!(production.intake.limits.submissions_per_second, 50);
        assert_eq!(production.mode, Mode::Production);

        let dev = Settings::load(&empty, Mode::Development).unwrap();
        assert_eq!(dev.mode, Mode::Development);
        assert_eq!(dev.intake.limits.submissions_per_second, 0, "development mode turns the submission limit off");
        let approver = |token: &str| {
            let found: Vec<_> = dev.intake.approvers.iter().filter(|a| a.token_sha256.matches(token)).collect();
            assert_eq!(found.len(), 1, "{token} names exactly one approver");
            (found[0].name.as_str(), found[0].levels.join(","))
        };
        assert_eq!(approver("sandbox-manager-token"), ("grace", "manager".into()));
        assert_eq!(approver("sandbox-manager-token-2"), ("alan", "manager".into()));
        assert_eq!(approver("sandbox-escalation-token"), ("olga", "manager-escalated".into()));
        assert_eq!(dev.intake.approvers.len(), 3);
        let ops = operator_for(&dev.operators, "sandbox-operator-token").expect("the sandbox operator");
        assert_eq!(ops.name, "ops");
        assert!(operator_for(&dev.operators, "sandbox-manager-token").is_none(), "an approver is no operator");
        assert_eq!(dev.operators.len(), 1);
    }

    #[test]
    fn a_retry_budget_longer_than_a_delivery_may_be_held_is_refused() {
        let mut settings = Settings::defaults().unwrap();
        settings.retry = RetrySettings { max_attempts: 40, initial_ms: 1000, max_ms: 30000 };
        let why = Settings::checked(settings).unwrap_err().to_string();
        assert!(why.contains("retry") && why.contains("1051 s"), "{why}");
    }
}
