//! Who may do what on the broker: one user per service, with only the permissions its
//! work needs, and the senders each consumer accepts.
//!
//! Every service connects as `<broker.user_prefix><service>` (`loanflow_intake`,
//! `loanflow_level_kyc`, `loanflow_ledger`, `loanflow_operator`) and stamps what it
//! publishes with that name in the `user_id` property, which RabbitMQ checks against the
//! connection's user (a mismatch closes the channel): a consumer can trust it. None of
//! them may configure anything; the topology is declared by `loanflow_setup` in
//! `loanflow migrate`, which also creates these users and their permissions through the
//! management API (as an administrator), or a deployment imports the same definitions.
//!
//! Work travels through a *topic* exchange because RabbitMQ 3.10 applies topic
//! permissions (routing-key patterns) to topic exchanges only: the intake may route
//! work to the levels and withdrawals to the ledger, but never work to the ledger; the
//! ledger routes no work at all.

use std::collections::BTreeMap;

use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::json;

use loanflow_domain::messages::{LEDGER_STEP, WITHDRAWAL_ROUTE};
use loanflow_domain::rules::LevelKind;

use super::{DEAD_LETTER_QUEUE, WORK_EXCHANGE};
use crate::settings::{BrokerSettings, Settings};

/// The setup step's identity: it alone may declare (configure) the topology.
pub const SETUP: &str = "setup";
/// The operator's identity: reads the dead-letter queue and replays letters.
pub const OPERATOR: &str = "operator";
pub const INTAKE: &str = "intake";
pub const LEDGER: &str = "ledger";

/// A level's identity: `level_<name>`.
pub fn level(name: &str) -> String {
    format!("level_{name}")
}

/// Every level the system knows, whichever the chain names now: during a rollout an
/// application may still travel to a level the new chain dropped.
fn all_levels() -> Vec<&'static str> {
    LevelKind::ALL.iter().map(|kind| kind.name()).collect()
}

/// One service's permissions on the vhost (regular expressions over exchange and queue
/// names; RabbitMQ's "configure", "write", "read"), the routing keys it may publish with
/// on the work exchange, and those it may bind queues to it with (topic permissions'
/// "read").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub service: String,
    pub configure: String,
    pub write: String,
    pub read: String,
    pub work_routing_keys: String,
    pub work_binding_keys: String,
}

/// What each identity may do.
pub fn grants() -> Vec<Grant> {
    let nothing = "^$".to_owned();
    let levels = all_levels().join("|");
    let grant = |service: &str, write: &str, read: String, keys: &str| Grant {
        service: service.to_owned(),
        configure: nothing.clone(),
        write: write.to_owned(),
        read,
        work_routing_keys: keys.to_owned(),
        work_binding_keys: nothing.clone(),
    };
    let mut all = vec![
        Grant {
            service: SETUP.into(),
            configure: r"^loanflow\.".into(),
            // Declaring a delay tier that dead-letters to the default exchange takes
            // write permission on it.
            write: r"^(loanflow\..+|amq\.default)$".into(),
            read: r"^loanflow\.".into(),
            work_routing_keys: ".*".into(),
            work_binding_keys: ".*".into(),
        },
        // The outbox: first steps and approvers' decisions to levels, withdrawals to the
        // ledger (whose consumer accepts nothing else from the intake).
        grant(
            INTAKE,
            r"^loanflow\.(work|dead)$",
            r"^loanflow\.intake\.status$".into(),
            &format!("^({levels}|{WITHDRAWAL_ROUTE})$"),
        ),
        grant(LEDGER, r"^loanflow\.(status|dead)$", format!(r"^loanflow\.step\.{LEDGER_STEP}$"), "^$"),
        // Replays go straight to their origin queue through the default exchange.
        grant(OPERATOR, r"^amq\.default$", r"^loanflow\.dead-letters$".into(), "^$"),
    ];
    for name in all_levels() {
        all.push(grant(
            &level(name),
            r"^loanflow\.(work|status|dead)$",
            format!(r"^loanflow\.step\.{name}$"),
            &format!("^({levels}|{LEDGER_STEP})$"),
        ));
    }
    all
}

/// The identities whose messages a queue's consumer accepts, besides its own and the
/// operator's (a replayed dead letter). Anyone else's message is refused: dead-lettered
/// with the reason, and logged as a security event.
pub fn senders_for(step_or_status: Queue<'_>) -> Vec<String> {
    let levels = all_levels().into_iter().map(level);
    match step_or_status {
        Queue::Level(_) => std::iter::once(INTAKE.to_owned()).chain(levels).collect(),
        Queue::Ledger => levels.collect(),
        Queue::Status => [INTAKE.to_owned(), LEDGER.to_owned()].into_iter().chain(levels).collect(),
    }
}

/// The queues whose senders are checked.
#[derive(Debug, Clone, Copy)]
pub enum Queue<'a> {
    Level(&'a str),
    Ledger,
    Status,
}

/// Who a consumer accepts messages from, as broker user names.
#[derive(Debug, Clone)]
pub struct Senders {
    users: Vec<String>,
}

impl Senders {
    /// The senders of `queue` for a consumer acting as `broker.service`.
    pub fn of(broker: &BrokerSettings, queue: Queue<'_>) -> Senders {
        Senders::just(broker, senders_for(queue))
    }

    /// `services`, the consumer itself (its retries) and the operator (replays).
    pub fn just(broker: &BrokerSettings, services: Vec<String>) -> Senders {
        let mut services = services;
        services.extend(broker.service.clone());
        services.push(OPERATOR.to_owned());
        Senders { users: services.iter().map(|s| broker.user_of(s)).collect() }
    }

    /// Whether a message stamped with `user_id` may be handled.
    pub fn allows(&self, user_id: Option<&str>) -> bool {
        user_id.is_some_and(|user| self.users.iter().any(|u| u == user))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("the broker's management API at {0} is unreachable: {1}")]
    Unreachable(String, reqwest::Error),
    #[error("the management API refused {0}: {1}")]
    Refused(String, reqwest::StatusCode),
    #[error("broker.passwords.{0} is not set (LOANFLOW__BROKER__PASSWORDS__{1})")]
    NoPassword(String, String),
}

/// The vhost named by the broker URL's path (`%2f` is `/`); of a list of addresses, the
/// first's (they all name the same one).
pub fn vhost_of(url: &str) -> String {
    let url = url.split(',').next().unwrap_or(url).trim();
    let path = url.split_once("://").map_or(url, |(_, rest)| rest).split_once('/').map_or("", |(_, path)| path);
    let path = path.split('?').next().unwrap_or_default();
    let decoded = percent_encoding::percent_decode_str(path).decode_utf8_lossy().into_owned();
    if decoded.is_empty() {
        "/".to_owned()
    } else {
        decoded
    }
}

/// Creates the vhost, every service's user (with its configured password), their
/// permissions and their routing keys on the work exchange, through the management API
/// as the configured administrator. Idempotent: run by every `loanflow migrate`.
pub async fn provision(settings: &Settings) -> Result<(), ProvisionError> {
    let broker = &settings.broker;
    let vhost = vhost_of(&broker.url);
    let api = Api::new(broker);
    let encoded = utf8_percent_encode(&vhost, NON_ALPHANUMERIC).to_string();
    api.put(&format!("vhosts/{encoded}"), json!({})).await?;
    for grant in grants() {
        let password = broker
            .passwords
            .get(&grant.service)
            .filter(|p| p.is_set())
            .ok_or_else(|| ProvisionError::NoPassword(grant.service.clone(), grant.service.to_uppercase()))?;
        let user = utf8_percent_encode(&broker.user_of(&grant.service), NON_ALPHANUMERIC).to_string();
        api.put(&format!("users/{user}"), json!({"password": password.expose(), "tags": tags_of(&grant.service)}))
            .await?;
        let permissions = json!({"configure": grant.configure, "write": grant.write, "read": grant.read});
        api.put(&format!("permissions/{encoded}/{user}"), permissions).await?;
        let topic =
            json!({"exchange": WORK_EXCHANGE, "write": grant.work_routing_keys, "read": grant.work_binding_keys});
        api.put(&format!("topic-permissions/{encoded}/{user}"), topic).await?;
    }
    api.put(&format!("policies/{encoded}/{RETENTION_POLICY}"), retention_policy(settings)).await?;
    api.put(&format!("policies/{encoded}/{DEAD_LETTERING_POLICY}"), dead_lettering_policy()).await?;
    Ok(())
}

/// Takes the administrator's own permissions on the vhost away (creating a vhost through
/// the management API grants them): it manages users, it never sends or reads messages.
pub async fn withdraw_administrator(settings: &Settings) -> Result<(), ProvisionError> {
    let broker = &settings.broker;
    let vhost = utf8_percent_encode(&vhost_of(&broker.url), NON_ALPHANUMERIC).to_string();
    let admin = utf8_percent_encode(&broker.management_user, NON_ALPHANUMERIC).to_string();
    Api::new(broker).delete(&format!("permissions/{vhost}/{admin}")).await
}

/// The broker's whole setup as RabbitMQ definitions, for a deployment that imports them
/// (`rabbitmqctl import_definitions`, or the management API) instead of running
/// `loanflow migrate`: the vhost, every service's user (without a password: set each
/// from the secret store, `rabbitmqctl change_password`), their permissions and routing
/// keys, the dead-letter retention policy, and the topology.
pub fn definitions(settings: &Settings) -> serde_json::Value {
    let broker = &settings.broker;
    let vhost = vhost_of(&broker.url);
    let grants = grants();
    let users: Vec<_> = grants
        .iter()
        .map(|g| {
            json!({"name": broker.user_of(&g.service), "password_hash": "",
                        "hashing_algorithm": "rabbit_password_hashing_sha256",
                        "tags": tags_of(&g.service).split(',').filter(|t| !t.is_empty()).collect::<Vec<_>>()})
        })
        .collect();
    let permissions: Vec<_> = grants
        .iter()
        .map(|g| {
            json!({"user": broker.user_of(&g.service), "vhost": vhost,
                        "configure": g.configure, "write": g.write, "read": g.read})
        })
        .collect();
    let topic_permissions: Vec<_> = grants
        .iter()
        .map(|g| {
            json!({"user": broker.user_of(&g.service), "vhost": vhost, "exchange": WORK_EXCHANGE,
                        "write": g.work_routing_keys, "read": g.work_binding_keys})
        })
        .collect();
    let mut retention = retention_policy(settings);
    retention["vhost"] = json!(vhost);
    retention["name"] = json!(RETENTION_POLICY);
    let mut dead_lettering = dead_lettering_policy();
    dead_lettering["vhost"] = json!(vhost);
    dead_lettering["name"] = json!(DEAD_LETTERING_POLICY);
    let (exchanges, queues, bindings) = super::Topology::new(settings).definitions(&vhost);
    json!({
        "vhosts": [{"name": vhost}],
        "users": users,
        "permissions": permissions,
        "topic_permissions": topic_permissions,
        "policies": [retention, dead_lettering],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    })
}

/// The management tags of an identity: the operator may read its vhost's queue figures
/// through the management API (the operations page); no one else uses the API.
fn tags_of(service: &str) -> &'static str {
    if service == OPERATOR {
        "management"
    } else {
        ""
    }
}

/// A queue's figures, as the operations page shows them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct QueueFigures {
    pub name: String,
    /// Ready and unacknowledged messages.
    #[serde(default)]
    pub messages: u64,
    #[serde(default)]
    pub consumers: u64,
}

/// The figures of `queues`, read through the management API as the operator.
pub async fn queue_figures(broker: &BrokerSettings, queues: &[String]) -> Result<Vec<QueueFigures>, ProvisionError> {
    let operator = broker.user_of(OPERATOR);
    let password = broker.passwords.get(OPERATOR).map(|p| p.expose().to_owned()).unwrap_or_default();
    let vhost = utf8_percent_encode(&vhost_of(&broker.url), NON_ALPHANUMERIC).to_string();
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .map_err(|e| ProvisionError::Unreachable(broker.management_url.clone(), e))?;
    let mut figures = Vec::with_capacity(queues.len());
    for queue in queues {
        let name = utf8_percent_encode(queue, NON_ALPHANUMERIC).to_string();
        let url = format!("{}/queues/{vhost}/{name}", broker.management_url.trim_end_matches('/'));
        let response = http
            .get(url)
            .basic_auth(&operator, Some(&password))
            .send()
            .await
            .map_err(|e| ProvisionError::Unreachable(broker.management_url.clone(), e))?;
        if !response.status().is_success() {
            return Err(ProvisionError::Refused(format!("queue {queue}"), response.status()));
        }
        let found: QueueFigures =
            response.json().await.map_err(|e| ProvisionError::Unreachable(broker.management_url.clone(), e))?;
        figures.push(found);
    }
    Ok(figures)
}

const RETENTION_POLICY: &str = "loanflow-dead-letter-retention";

/// Dead letters hold personal data: the broker drops them after the retention. A
/// policy, not a queue argument, so that changing it needs no redeclaration.
fn retention_policy(settings: &Settings) -> serde_json::Value {
    let ttl_ms = settings.retention.dead_letter_seconds.saturating_mul(1000);
    json!({
        "pattern": format!("^{}$", DEAD_LETTER_QUEUE.replace('.', "\\.")),
        "apply-to": "queues",
        "priority": 1,
        "definition": {"message-ttl": ttl_ms},
    })
}

const DEAD_LETTERING_POLICY: &str = "loanflow-at-least-once-dead-lettering";

/// What a quorum queue dead-letters (a message past its delivery limit, to the
/// dead-letter queue) it hands on at least once: it keeps the message until the
/// target has confirmed it. RabbitMQ's default, at most once, drops it when the target
/// cannot take it at that moment (its leader lost with a cluster node). At-least-once
/// needs `reject-publish` overflow (no length limit is set, so nothing is ever
/// rejected). The dead-letter queue keeps its own policy (its retention): it
/// dead-letters nothing.
fn dead_lettering_policy() -> serde_json::Value {
    json!({
        "pattern": "^loanflow\\.(step\\.|intake\\.status$)",
        "apply-to": "queues",
        "priority": 1,
        "definition": {"dead-letter-strategy": "at-least-once", "overflow": "reject-publish"},
    })
}

/// Deletes every service's user (a test's own, at its end).
pub async fn remove_users(broker: &BrokerSettings) -> Result<(), ProvisionError> {
    let api = Api::new(broker);
    for grant in grants() {
        let user = utf8_percent_encode(&broker.user_of(&grant.service), NON_ALPHANUMERIC).to_string();
        api.delete(&format!("users/{user}")).await?;
    }
    Ok(())
}

/// Passwords for every identity, made at random (a test's users, say).
pub fn random_passwords() -> BTreeMap<String, crate::secret::Secret> {
    grants().into_iter().map(|g| (g.service, crate::secret::Secret::new(crate::secret::new_token()))).collect()
}

struct Api<'a> {
    http: reqwest::Client,
    broker: &'a BrokerSettings,
}

impl<'a> Api<'a> {
    fn new(broker: &'a BrokerSettings) -> Api<'a> {
        Api { http: reqwest::Client::new(), broker }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.broker.management_url.trim_end_matches('/'))
    }

    async fn put(&self, path: &str, body: serde_json::Value) -> Result<(), ProvisionError> {
        let request = self.http.put(self.url(path)).json(&body);
        self.send(path, request).await
    }

    async fn delete(&self, path: &str) -> Result<(), ProvisionError> {
        self.send(path, self.http.delete(self.url(path))).await
    }

    async fn send(&self, path: &str, request: reqwest::RequestBuilder) -> Result<(), ProvisionError> {
        let admin = &self.broker.management_user;
        let response = request
            .basic_auth(admin, Some(self.broker.management_password.expose()))
            .send()
            .await
            .map_err(|e| ProvisionError::Unreachable(self.broker.management_url.clone(), e))?;
        let status = response.status();
        let gone_already = status == reqwest::StatusCode::NOT_FOUND && !path.starts_with("vhosts/");
        if status.is_success() || gone_already {
            Ok(())
        } else {
            Err(ProvisionError::Refused(path.split('/').next().unwrap_or(path).to_owned(), status))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vhosts_are_read_from_the_url() {
        assert_eq!(vhost_of("amqp://127.0.0.1:5672/%2f"), "/");
        assert_eq!(vhost_of("amqp://127.0.0.1:5672"), "/");
        assert_eq!(vhost_of("amqp://127.0.0.1:5672/loanflow"), "loanflow");
        assert_eq!(vhost_of("amqps://broker:5671/loanflow-test-1?heartbeat=10"), "loanflow-test-1");
    }

    #[test]
    fn only_setup_configures_and_no_one_but_a_level_routes_work_to_the_ledger() {
        let all = grants();
        for grant in &all {
            let configures = grant.configure != "^$";
            assert_eq!(configures, grant.service == SETUP, "{grant:?}");
        }
        let keys = |service: &str| all.iter().find(|g| g.service == service).unwrap().work_routing_keys.clone();
        assert!(!keys(INTAKE).contains(LEDGER_STEP), "the intake routes work to levels only");
        assert_eq!(keys(LEDGER), "^$");
        assert!(keys(&level("manager")).contains(LEDGER_STEP));
        let ledger_senders = senders_for(Queue::Ledger);
        assert!(!ledger_senders.contains(&INTAKE.to_owned()) && ledger_senders.contains(&level("kyc")));
    }
}
