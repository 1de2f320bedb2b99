//! The broker side of a test system: the harness's own connections, publishing as a
//! service would, the test's vhost, queue inspection, and a tap on the status events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};
use serde_json::{json, Value};

use loanflow_domain::messages::{Envelope, ReferencedStatus, StatusEvent, StatusMessage};
use loanflow_platform::broker::{Topology, STATUS_EXCHANGE};
use loanflow_platform::Settings;

use crate::TestSystem;

pub(crate) fn amqp_server() -> String {
    std::env::var("LOANFLOW_TEST_AMQP").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672".into())
}

pub(crate) fn management_api() -> String {
    std::env::var("LOANFLOW_TEST_RABBITMQ_API").unwrap_or_else(|_| "http://127.0.0.1:15672/api".into())
}

impl TestSystem {
    /// A connection of the test harness itself (RabbitMQ's administrator `guest`, which
    /// no service uses): to inspect queues, tap events, or forge messages.
    pub async fn amqp(&self) -> anyhow::Result<Connection> {
        let url = format!("{}/{}", amqp_server(), self.vhost);
        Ok(Connection::connect(&url, ConnectionProperties::default()).await?)
    }

    /// Publishes `payload` into one of this test's queues as `service` would: through
    /// the exchange that feeds the queue, stamped with the service's user, confirmed.
    pub async fn inject_as(
        &self,
        service: &str,
        queue: &str,
        payload: &[u8],
        properties: lapin::BasicProperties,
    ) -> anyhow::Result<()> {
        let (exchange, routing_key) = match queue.strip_prefix("loanflow.step.") {
            Some(step) => (loanflow_platform::broker::WORK_EXCHANGE, step),
            None if queue == loanflow_platform::broker::STATUS_QUEUE => (STATUS_EXCHANGE, ""),
            None => bail!("no exchange feeds {queue}"),
        };
        self.publish_as(service, exchange, routing_key, payload, properties).await
    }

    /// Publishes `payload` to `exchange` with `routing_key` as `service` would: stamped
    /// with its user, mandatory (a message no queue takes is an error), confirmed.
    pub async fn publish_as(
        &self,
        service: &str,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: lapin::BasicProperties,
    ) -> anyhow::Result<()> {
        use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
        let conn = self.amqp_as(service).await?;
        let channel = conn.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        let user = self.settings.broker.user_of(service);
        let properties = properties.with_user_id(user.as_str().into());
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = channel.basic_publish(exchange.into(), routing_key.into(), options, payload, properties).await?;
        let confirmation = confirm.await?;
        if !confirmation.is_ack() || confirmation.take_message().is_some() {
            bail!("the broker did not take the message for {exchange}/{routing_key}");
        }
        conn.close(200, "bye".into()).await?;
        Ok(())
    }

    /// A connection as one of this test's service users (`"intake"`, `"level_kyc"`,
    /// `"ledger"`, `"operator"`): to publish as that service would.
    pub async fn amqp_as(&self, service: &str) -> anyhow::Result<Connection> {
        Ok(loanflow_platform::broker::connect(&self.settings.broker.acting_as(service)).await?)
    }

    /// Ready messages in a queue of this test's vhost.
    pub async fn queue_depth(&self, queue: &str) -> u32 {
        let conn = self.amqp().await.expect("broker");
        let channel = conn.create_channel().await.expect("channel");
        let options = QueueDeclareOptions { passive: true, ..QueueDeclareOptions::default() };
        let queue = channel.queue_declare(queue.into(), options, FieldTable::default()).await.expect("queue exists");
        let _ = conn.close(200, "bye".into()).await;
        queue.message_count()
    }

    /// Starts recording every status event published in this test's vhost.
    pub async fn tap_status_events(&self) -> EventTap {
        let conn = self.amqp().await.expect("broker");
        let channel = conn.create_channel().await.expect("channel");
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions { exclusive: true, auto_delete: true, ..QueueDeclareOptions::default() },
                FieldTable::default(),
            )
            .await
            .expect("tap queue");
        let name = queue.name().clone();
        channel
            .queue_bind(
                name.clone(),
                STATUS_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("bind tap");
        let mut consumer = channel
            .basic_consume(name, "tap".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .expect("consume tap");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = events.clone();
        let task = tokio::spawn(async move {
            let _conn = conn;
            while let Some(Ok(delivery)) = consumer.next().await {
                if let Ok(env) = Envelope::<StatusMessage>::decode(&delivery.data) {
                    let mut sink = sink.lock().expect("tap lock");
                    for ReferencedStatus { reference, event, .. } in env.body.into_events(env.reference) {
                        sink.push(Tapped { reference: reference.to_string(), message_id: env.message_id, event });
                    }
                }
                let _ = delivery.ack(BasicAckOptions::default()).await;
            }
        });
        EventTap { events, task }
    }
}

/// One status event seen on the wire.
#[derive(Debug, Clone)]
pub struct Tapped {
    pub reference: String,
    pub message_id: uuid::Uuid,
    pub event: StatusEvent,
}

/// Status events seen on the wire, by reference.
pub struct EventTap {
    events: Arc<Mutex<Vec<Tapped>>>,
    task: tokio::task::JoinHandle<()>,
}

impl EventTap {
    pub fn events(&self) -> Vec<Tapped> {
        self.events.lock().expect("tap lock").clone()
    }

    /// How many decision events each reference got from `level`.
    pub fn decisions_by(&self, level: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for t in self.events() {
            if t.event.decision.as_ref().is_some_and(|d| d.level == level) {
                *counts.entry(t.reference).or_insert(0) += 1;
            }
        }
        counts
    }

    /// (reference, level) pairs whose decision events on the wire disagree. A level
    /// may announce the same decision twice under at-least-once delivery (consumers
    /// absorb it); it must never announce two different ones.
    pub fn conflicting_decisions(&self) -> Vec<(String, String)> {
        let mut seen: HashMap<(String, String), std::collections::HashSet<String>> = HashMap::new();
        for t in self.events() {
            if let Some(d) = &t.event.decision {
                let key = (t.reference, d.level.clone());
                seen.entry(key).or_default().insert(format!("{:?}/{}/{:?}", d.outcome, d.reason, d.decided_by));
            }
        }
        seen.into_iter().filter(|(_, v)| v.len() > 1).map(|(k, _)| k).collect()
    }
}

impl Drop for EventTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The broker's address, for proxies in front of it.
pub(crate) fn amqp_addr() -> anyhow::Result<std::net::SocketAddr> {
    let server = amqp_server();
    let host_port = server.rsplit('@').next().unwrap_or(&server).trim_start_matches("amqp://");
    use std::net::ToSocketAddrs;
    host_port.to_socket_addrs()?.next().context("broker address")
}

/// `url` (without credentials) with its host and port replaced by the proxy's.
pub(crate) fn proxied_amqp_url(url: &str, proxy: std::net::SocketAddr) -> String {
    let vhost = loanflow_platform::broker::access::vhost_of(url);
    let vhost = percent_encoding::utf8_percent_encode(&vhost, percent_encoding::NON_ALPHANUMERIC);
    format!("amqp://{proxy}/{vhost}")
}

/// The broker's host and port, without the harness's credentials.
pub(crate) fn broker_host() -> String {
    let server = amqp_server();
    server.rsplit('@').next().unwrap_or(&server).trim_start_matches("amqp://").to_owned()
}

/// Declares the topology as the setup user, before any service starts (the services
/// may not declare anything).
pub(crate) async fn declare_topology(settings: &Settings) -> anyhow::Result<()> {
    let setup = settings.broker.acting_as(loanflow_platform::broker::access::SETUP);
    let conn = loanflow_platform::broker::connect(&setup).await?;
    let channel = conn.create_channel().await?;
    Topology::new(settings).declare(&channel).await?;
    conn.close(200, "bye".into()).await?;
    Ok(())
}

pub(crate) async fn create_vhost(vhost: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let api = management_api();
    let put = |url: String, body: Value| http.put(url).basic_auth("guest", Some("guest")).json(&body).send();
    let response = put(format!("{api}/vhosts/{vhost}"), json!({})).await.context(
        "the RabbitMQ management API is needed to create test vhosts: run `rabbitmq-plugins enable rabbitmq_management`",
    )?;
    if !response.status().is_success() {
        bail!("creating vhost {vhost}: {}", response.status());
    }
    let response =
        put(format!("{api}/permissions/{vhost}/guest"), json!({"configure": ".*", "write": ".*", "read": ".*"}))
            .await?;
    if !response.status().is_success() {
        bail!("granting vhost {vhost}: {}", response.status());
    }
    Ok(())
}

pub(crate) async fn delete_vhost(vhost: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let mut last = None;
    for attempt in 0..5u64 {
        let result =
            http.delete(format!("{}/vhosts/{vhost}", management_api())).basic_auth("guest", Some("guest")).send().await;
        match result {
            Ok(r) if r.status().is_success() || r.status() == 404 => return Ok(()),
            Ok(r) => last = Some(anyhow::anyhow!("status {}", r.status())),
            Err(e) => last = Some(e.into()),
        }
        tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("unknown error")))
}
