//! RabbitMQ: topology, confirmed publishing, and supervised consumers.
//!
//! Work travels through the `loanflow.work` direct exchange, routed by step name to a
//! durable queue per step (`loanflow.step.<name>`). Status events go through the
//! `loanflow.status` fanout exchange to the intake's projection queue. Anything a
//! consumer cannot process goes, with the reason in its headers, to `loanflow.dead`
//! and its queue `loanflow.dead-letters`.
//!
//! Every service declares the whole topology on start (declarations are idempotent),
//! so the order in which services start does not matter and no message published
//! with `mandatory` is ever unroutable because its queue was not created yet.

use std::future::Future;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, Instrument};
use uuid::Uuid;

use crate::settings::{BrokerSettings, QueueType, Settings};

pub const WORK_EXCHANGE: &str = "loanflow.work";
pub const STATUS_EXCHANGE: &str = "loanflow.status";
pub const DEAD_LETTER_EXCHANGE: &str = "loanflow.dead";
pub const DEAD_LETTER_QUEUE: &str = "loanflow.dead-letters";
pub const STATUS_QUEUE: &str = "loanflow.intake.status";
/// The header that carries the loan reference, so it can be logged without decoding.
pub const REFERENCE_HEADER: &str = "reference";
pub const REASON_HEADER: &str = "x-loanflow-reason";
pub const ORIGIN_HEADER: &str = "x-loanflow-origin-queue";

pub fn step_queue(step: &str) -> String {
    format!("loanflow.step.{step}")
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker did not confirm the message (nack)")]
    Nacked,
    #[error("broker returned the message as unroutable")]
    Unroutable,
    #[error("publisher confirms are not enabled on this channel")]
    NotConfirmed,
    #[error("the consumer was cancelled by the broker")]
    ConsumerEnded,
}

/// Everything the services declare.
#[derive(Debug, Clone)]
pub struct Topology {
    steps: Vec<String>,
    queue_type: QueueType,
    delivery_limit: u32,
}

impl Topology {
    pub fn new(settings: &Settings) -> Topology {
        let mut steps = settings.chain.levels.clone();
        steps.push(loanflow_domain::messages::LEDGER_STEP.to_owned());
        Topology { steps, queue_type: settings.broker.queue_type, delivery_limit: settings.broker.delivery_limit }
    }

    fn queue_arguments(&self, dead_letter: bool) -> FieldTable {
        let mut args = FieldTable::default();
        if self.queue_type == QueueType::Quorum {
            // Replicated across a cluster's nodes; on one node still durable and safe.
            args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
            args.insert("x-delivery-limit".into(), AMQPValue::LongUInt(self.delivery_limit));
        }
        if dead_letter {
            // Messages the broker itself gives up on (delivery limit) are kept, not lost.
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString(DEAD_LETTER_EXCHANGE.into()));
        }
        args
    }

    pub async fn declare(&self, channel: &Channel) -> Result<(), BrokerError> {
        // Durable exchanges and queues survive a broker restart.
        let durable_exchange = ExchangeDeclareOptions { durable: true, ..ExchangeDeclareOptions::default() };
        let durable_queue = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
        let empty = FieldTable::default;
        channel.exchange_declare(WORK_EXCHANGE.into(), ExchangeKind::Direct, durable_exchange, empty()).await?;
        channel.exchange_declare(STATUS_EXCHANGE.into(), ExchangeKind::Fanout, durable_exchange, empty()).await?;
        channel.exchange_declare(DEAD_LETTER_EXCHANGE.into(), ExchangeKind::Fanout, durable_exchange, empty()).await?;

        channel.queue_declare(DEAD_LETTER_QUEUE.into(), durable_queue, self.queue_arguments(false)).await?;
        channel
            .queue_bind(
                DEAD_LETTER_QUEUE.into(),
                DEAD_LETTER_EXCHANGE.into(),
                "".into(),
                QueueBindOptions::default(),
                empty(),
            )
            .await?;
        for step in &self.steps {
            let queue = step_queue(step);
            channel.queue_declare(queue.as_str().into(), durable_queue, self.queue_arguments(true)).await?;
            channel
                .queue_bind(
                    queue.into(),
                    WORK_EXCHANGE.into(),
                    step.as_str().into(),
                    QueueBindOptions::default(),
                    empty(),
                )
                .await?;
        }
        channel.queue_declare(STATUS_QUEUE.into(), durable_queue, self.queue_arguments(true)).await?;
        channel
            .queue_bind(STATUS_QUEUE.into(), STATUS_EXCHANGE.into(), "".into(), QueueBindOptions::default(), empty())
            .await?;
        Ok(())
    }
}

pub async fn connect(settings: &BrokerSettings) -> Result<Connection, BrokerError> {
    Ok(Connection::connect(&settings.url, ConnectionProperties::default()).await?)
}

/// Connects, retrying with exponential backoff until it succeeds or `shutdown` fires
/// (then `None`).
pub async fn connect_with_backoff(settings: &BrokerSettings, shutdown: &CancellationToken) -> Option<Connection> {
    let mut backoff = Backoff::new(settings);
    loop {
        match connect(settings).await {
            Ok(conn) => return Some(conn),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker unreachable");
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(settings: &BrokerSettings) -> Backoff {
        let initial = Duration::from_millis(settings.reconnect_initial_ms.max(1));
        Backoff { next: initial, initial, max: Duration::from_millis(settings.reconnect_max_ms.max(1)) }
    }

    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub reference: &'a str,
    pub message_id: Uuid,
    pub payload: &'a [u8],
    pub headers: FieldTable,
}

/// A channel in confirm mode. A publish counts only when the broker has confirmed it.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(conn: &Connection) -> Result<Publisher, BrokerError> {
        let channel = conn.create_channel().await?;
        // Without confirms lapin answers `NotRequested`, which proves nothing.
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel })
    }

    /// Closes the channel, waiting for the broker's answer. Errors are ignored: a
    /// channel of a lost connection is closed already.
    pub async fn close(&self) {
        let _ = self.channel.close(200, "bye".into()).await;
    }

    /// Publishes and waits for the broker's confirm. Errors on a nack, and on a
    /// message the broker could not route (the `mandatory` flag makes it say so
    /// instead of silently dropping it).
    pub async fn publish(&self, out: Outgoing<'_>) -> Result<(), BrokerError> {
        self.start(out).await?.await
    }

    /// Starts a publish and returns the wait for its confirm, so that a batch can be
    /// sent before any confirm is awaited (one round trip per batch, not per message).
    pub async fn start(
        &self,
        out: Outgoing<'_>,
    ) -> Result<impl Future<Output = Result<(), BrokerError>> + Send + 'static, BrokerError> {
        let mut headers = out.headers;
        headers.insert(REFERENCE_HEADER.into(), AMQPValue::LongString(out.reference.into()));
        let properties = BasicProperties::default()
            // 2 = persistent: written to disk, survives a broker restart.
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(out.message_id.to_string().into())
            .with_headers(headers);
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = self
            .channel
            .basic_publish(out.exchange.into(), out.routing_key.into(), options, out.payload, properties)
            .await?;
        Ok(async move {
            match confirm.await? {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable),
                Confirmation::Nack(_) => Err(BrokerError::Nacked),
                Confirmation::NotRequested => Err(BrokerError::NotConfirmed),
            }
        })
    }
}

/// A delivered message, as a handler sees it.
#[derive(Debug)]
pub struct Incoming {
    pub data: Vec<u8>,
    /// The reference header, when present: for logs only, never trusted over the body.
    pub reference: Option<String>,
    pub redelivered: bool,
}

/// What to do with a delivery once the handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done: every write is committed and every outgoing message confirmed.
    Ack,
    /// Cannot ever be processed: moved to the dead-letter queue with the reason.
    DeadLetter(String),
    /// Not now (a dependency is down): back to the queue for another try.
    Requeue,
}

fn header_string(delivery: &Delivery, name: &str) -> Option<String> {
    let headers = delivery.properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Consumes `queue` until `shutdown`, reconnecting (with backoff) and redeclaring the
/// topology whenever the connection is lost. Each delivery is handled in its own task
/// (at most `prefetch` at once) and settled by the handler's [`Disposition`].
///
/// On shutdown it cancels the consumer first (no new deliveries), lets the handlers in
/// progress finish and settle, then closes the connection: nothing held is lost, and
/// anything not yet acked is redelivered by the broker.
pub async fn consume<F, Fut>(settings: Settings, queue: String, shutdown: CancellationToken, handler: F)
where
    F: Fn(Incoming, Publisher) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    let topology = Topology::new(&settings);
    let mut backoff = Backoff::new(&settings.broker);
    loop {
        let Some(conn) = connect_with_backoff(&settings.broker, &shutdown).await else { return };
        let result =
            consume_session(&settings, &topology, &conn, &queue, &shutdown, handler.clone(), &mut backoff).await;
        let _ = conn.close(200, "bye".into()).await;
        match result {
            Ok(()) => return,
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(%queue, error = %e, retry_in_ms = wait.as_millis() as u64, "consumer lost its connection");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

async fn consume_session<F, Fut>(
    settings: &Settings,
    topology: &Topology,
    conn: &Connection,
    queue: &str,
    shutdown: &CancellationToken,
    handler: F,
    backoff: &mut Backoff,
) -> Result<(), BrokerError>
where
    F: Fn(Incoming, Publisher) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    let channel = conn.create_channel().await?;
    topology.declare(&channel).await?;
    let publisher = Publisher::open(conn).await?;
    channel.basic_qos(settings.broker.prefetch, BasicQosOptions::default()).await?;
    let tag = format!("{queue}.{}", Uuid::new_v4().simple());
    // no_ack = false (the default): a delivery is ours until we ack it.
    let mut consumer = channel
        .basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
        .await?;
    tracing::info!(%queue, "consuming");
    backoff.reset();
    let tracker = TaskTracker::new();
    let outcome = loop {
        tokio::select! {
            () = shutdown.cancelled() => {
                let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                break Ok(());
            }
            next = consumer.next() => match next {
                None => break Err(BrokerError::ConsumerEnded),
                Some(Err(e)) => break Err(e.into()),
                Some(Ok(delivery)) => {
                    let handler = handler.clone();
                    let publisher = publisher.clone();
                    let queue = queue.to_owned();
                    tracker.spawn(async move { settle(delivery, &queue, handler, publisher).await });
                }
            }
        }
    };
    tracker.close();
    tracker.wait().await;
    // Close channels explicitly (lapin would close them on drop, racing the
    // connection's close) so that a clean stop logs no error.
    drop(consumer);
    publisher.close().await;
    let _ = channel.close(200, "bye".into()).await;
    outcome
}

async fn settle<F, Fut>(delivery: Delivery, queue: &str, handler: F, publisher: Publisher)
where
    F: Fn(Incoming, Publisher) -> Fut,
    Fut: Future<Output = Disposition>,
{
    let reference = header_string(&delivery, REFERENCE_HEADER);
    let span = info_span!("delivery", %queue, reference = reference.as_deref().unwrap_or("-"));
    async {
        let incoming = Incoming { data: delivery.data.clone(), reference, redelivered: delivery.redelivered };
        let disposition = handler(incoming, publisher.clone()).await;
        let settled = match &disposition {
            Disposition::Ack => delivery.ack(BasicAckOptions::default()).await,
            Disposition::Requeue => {
                delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
            }
            Disposition::DeadLetter(reason) => match dead_letter(&publisher, &delivery, queue, reason).await {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                Err(e) => {
                    tracing::error!(error = %e, "could not dead-letter; returning the message to its queue");
                    delivery.nack(BasicNackOptions { requeue: true, ..BasicNackOptions::default() }).await
                }
            },
        };
        // `Ok(false)`: the channel this delivery came on is gone (connection lost);
        // the broker will redeliver it, and the consumers are idempotent.
        match settled {
            Ok(true) => {}
            Ok(false) => tracing::warn!(?disposition, "delivery could not be settled; it will be redelivered"),
            Err(e) => tracing::warn!(?disposition, error = %e, "delivery could not be settled; it will be redelivered"),
        }
    }
    .instrument(span)
    .await;
}

async fn dead_letter(publisher: &Publisher, delivery: &Delivery, queue: &str, reason: &str) -> Result<(), BrokerError> {
    tracing::warn!(%reason, "dead-lettering message");
    let mut headers = FieldTable::default();
    headers.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from(reason)));
    headers.insert(ORIGIN_HEADER.into(), AMQPValue::LongString(LongString::from(queue)));
    let reference = header_string(delivery, REFERENCE_HEADER).unwrap_or_default();
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
        .unwrap_or_else(Uuid::new_v4);
    publisher
        .publish(Outgoing {
            exchange: DEAD_LETTER_EXCHANGE,
            routing_key: "",
            reference: &reference,
            message_id,
            payload: &delivery.data,
            headers,
        })
        .await
}

/// Publishes a status event for `reference` and waits for the broker's confirm.
pub async fn send_status(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    event: loanflow_domain::messages::StatusEvent,
) -> Result<(), BrokerError> {
    use loanflow_domain::messages::{Envelope, StatusMessage};
    let what = format!("status/{}", event.seq);
    let envelope = Envelope::new(reference.clone(), &what, chrono_now(), StatusMessage::V1(event));
    publisher
        .publish(Outgoing {
            exchange: STATUS_EXCHANGE,
            routing_key: "",
            reference: reference.as_str(),
            message_id: envelope.message_id,
            payload: &envelope.encode(),
            headers: FieldTable::default(),
        })
        .await
}

/// Sends a work item to the step its slip points at, and waits for the confirm.
pub async fn send_work(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    item: loanflow_domain::messages::WorkItem,
) -> Result<(), BrokerError> {
    use loanflow_domain::messages::{Envelope, WorkMessage};
    let step = item.slip.current().unwrap_or_default().to_owned();
    let envelope = Envelope::new(reference.clone(), &format!("work/{step}"), chrono_now(), WorkMessage::V1(item));
    publisher
        .publish(Outgoing {
            exchange: WORK_EXCHANGE,
            routing_key: &step,
            reference: reference.as_str(),
            message_id: envelope.message_id,
            payload: &envelope.encode(),
            headers: FieldTable::default(),
        })
        .await
}

fn chrono_now() -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now()
}
