//! RabbitMQ: topology, confirmed publishing, and supervised consumers.
//!
//! Work travels through the `loanflow.work` direct exchange, routed by step name to a
//! durable queue per step (`loanflow.step.<name>`). Status events go through the
//! `loanflow.status` fanout exchange to the intake's projection queue. Anything a
//! consumer cannot process goes, with the reason in its headers, to `loanflow.dead`
//! and its queue `loanflow.dead-letters`.
//!
//! A transient failure is retried through the broker, not by sleeping in a handler:
//! the message is published to a delay tier (`loanflow.retry.<ms>`, a fanout exchange
//! and a queue whose messages expire after that many milliseconds) with the failed
//! queue's name as routing key. On expiry the broker dead-letters it to the default
//! exchange, which routes by that key: the message returns to exactly the queue that
//! failed it (for the status queue, not to every subscriber of the fanout).
//!
//! Every service declares the whole topology on start (declarations are idempotent),
//! so the order in which services start does not matter and no message published
//! with `mandatory` is ever unroutable because its queue was not created yet.

use std::future::Future;
use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::settings::{BrokerSettings, QueueType, Settings};

mod consumer;
mod watermark;

pub use consumer::{consume, Batch};
pub use watermark::Watermark;

pub const WORK_EXCHANGE: &str = "loanflow.work";
pub const STATUS_EXCHANGE: &str = "loanflow.status";
pub const DEAD_LETTER_EXCHANGE: &str = "loanflow.dead";
pub const DEAD_LETTER_QUEUE: &str = "loanflow.dead-letters";
pub const STATUS_QUEUE: &str = "loanflow.intake.status";
/// The header that carries the loan reference, so it can be logged without decoding.
pub const REFERENCE_HEADER: &str = "reference";
pub const REASON_HEADER: &str = "x-loanflow-reason";
pub const ORIGIN_HEADER: &str = "x-loanflow-origin-queue";
/// Attempts made so far (absent on a first delivery).
pub const ATTEMPTS_HEADER: &str = "x-loanflow-attempts";
/// When a message was dead-lettered, in Unix seconds.
pub const DEAD_AT_HEADER: &str = "x-loanflow-dead-at";

pub fn retry_exchange(delay_ms: u64) -> String {
    format!("loanflow.retry.{delay_ms}")
}

/// How often a consumer checks that its connection is still up. lapin does not
/// always end a consumer's stream when the socket dies (a half-closed socket is
/// reported on the connection only), so the session watches the connection itself.
const CONNECTION_CHECK: Duration = Duration::from_millis(500);

/// The longest wait for a broker's confirm. A confirm that never comes (a connection
/// that died without saying so) must not hold a handler, or the relay, forever.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// After losing its connection, how long a session waits for its handlers to finish
/// before reconnecting anyway (their acks cannot reach the broker; it redelivers).
const ABANDON_AFTER: Duration = Duration::from_secs(5);

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
    #[error("the connection to the broker was lost")]
    ConnectionLost,
    #[error("the broker did not confirm within {0:?}")]
    ConfirmTimeout(Duration),
}

/// Everything the services declare.
#[derive(Debug, Clone)]
pub struct Topology {
    steps: Vec<String>,
    queue_type: QueueType,
    delivery_limit: u32,
    retry_tiers: Vec<u64>,
}

impl Topology {
    pub fn new(settings: &Settings) -> Topology {
        let mut steps = settings.chain.levels.clone();
        steps.push(loanflow_domain::messages::LEDGER_STEP.to_owned());
        Topology {
            steps,
            queue_type: settings.broker.queue_type,
            delivery_limit: settings.broker.delivery_limit,
            retry_tiers: settings.retry.tiers(),
        }
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
        for delay in &self.retry_tiers {
            // Classic queues: a waiting room needs TTL and dead-lettering, not replication.
            let name = retry_exchange(*delay);
            let mut args = FieldTable::default();
            args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(i64::try_from(*delay).unwrap_or(i64::MAX)));
            // "" is the default exchange: it routes the expired message by its routing
            // key, the name of the queue it came from.
            args.insert("x-dead-letter-exchange".into(), AMQPValue::LongString("".into()));
            channel.exchange_declare(name.as_str().into(), ExchangeKind::Fanout, durable_exchange, empty()).await?;
            channel.queue_declare(name.as_str().into(), durable_queue, args).await?;
            channel
                .queue_bind(name.as_str().into(), name.as_str().into(), "".into(), QueueBindOptions::default(), empty())
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
                if !pause_unless_stopped(wait, shutdown).await {
                    return None;
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

/// Sleeps `wait` unless `shutdown` fires first; `false` when it did.
pub async fn pause_unless_stopped(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
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
            let confirmation = tokio::time::timeout(CONFIRM_TIMEOUT, confirm)
                .await
                .map_err(|_| BrokerError::ConfirmTimeout(CONFIRM_TIMEOUT))??;
            match confirmation {
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
    /// Attempts already made at this message (0 on its first delivery).
    pub attempts: u32,
    pub max_attempts: u32,
}

impl Incoming {
    /// Whether a [`Disposition::Retry`] now would spend the retry budget (and so
    /// dead-letter the message): the moment a handler announces `failed`.
    pub fn is_last_attempt(&self) -> bool {
        self.attempts + 1 >= self.max_attempts
    }
}

/// What to do with a delivery once the handler is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disposition {
    /// Done: every write is committed and every outgoing message confirmed.
    Ack,
    /// Cannot ever be processed: moved to the dead-letter queue with the reason.
    DeadLetter(String),
    /// Not now (a dependency is down): back to its queue after a backoff delay that
    /// grows with each attempt; dead-lettered once the retry budget is spent.
    Retry(String),
    /// Back to the queue at once, without counting an attempt: for failures of the
    /// broker connection itself, after which the delivery cannot be settled anyway.
    Requeue,
}

pub(crate) fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub(crate) fn header_u64(properties: &BasicProperties, name: &str) -> Option<u64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        _ => None,
    }
}

/// Publishes a received message again, keeping its message id and reference, and
/// waits for the confirm.
pub(crate) async fn republish(
    publisher: &Publisher,
    properties: &BasicProperties,
    payload: &[u8],
    exchange: &str,
    routing_key: &str,
    headers: FieldTable,
) -> Result<(), BrokerError> {
    start_republish(publisher, properties, payload, exchange, routing_key, headers).await?.await
}

/// Starts a [`republish`] and returns the wait for its confirm.
pub(crate) async fn start_republish(
    publisher: &Publisher,
    properties: &BasicProperties,
    payload: &[u8],
    exchange: &str,
    routing_key: &str,
    headers: FieldTable,
) -> Result<impl Future<Output = Result<(), BrokerError>> + Send + 'static, BrokerError> {
    let reference = header_string(properties, REFERENCE_HEADER).unwrap_or_default();
    let message_id =
        properties.message_id().as_ref().and_then(|id| Uuid::parse_str(id.as_str()).ok()).unwrap_or_else(Uuid::new_v4);
    publisher.start(Outgoing { exchange, routing_key, reference: &reference, message_id, payload, headers }).await
}

/// The wait for one publish's confirm.
pub type Confirm = std::pin::Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// Publishes a status event for `reference` and waits for the broker's confirm.
pub async fn send_status(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    event: loanflow_domain::messages::StatusEvent,
) -> Result<(), BrokerError> {
    start_status(publisher, reference, event).await?.await
}

/// Starts publishing a status event; returns the wait for its confirm, so that a batch's
/// events are all sent before any confirm is awaited.
pub async fn start_status(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    event: loanflow_domain::messages::StatusEvent,
) -> Result<Confirm, BrokerError> {
    use loanflow_domain::messages::{Envelope, StatusMessage};
    let what = format!("status/{}", event.seq);
    let envelope = Envelope::new(reference.clone(), &what, chrono::Utc::now(), StatusMessage::V1(event));
    let confirm = publisher
        .start(Outgoing {
            exchange: STATUS_EXCHANGE,
            routing_key: "",
            reference: reference.as_str(),
            message_id: envelope.message_id,
            payload: &envelope.encode(),
            headers: FieldTable::default(),
        })
        .await?;
    Ok(Box::pin(confirm))
}

/// Starts publishing the status events of one delivery batch as one message (a lone
/// event as a plain `loan.status.v1`); returns the wait for its confirm. `None` when
/// there is nothing to announce.
pub async fn start_statuses(
    publisher: &Publisher,
    mut events: Vec<(loanflow_domain::Reference, loanflow_domain::messages::StatusEvent)>,
) -> Result<Option<Confirm>, BrokerError> {
    use loanflow_domain::messages::{Envelope, ReferencedStatus, StatusMessage};
    if events.len() <= 1 {
        return match events.pop() {
            Some((reference, event)) => Ok(Some(start_status(publisher, &reference, event).await?)),
            None => Ok(None),
        };
    }
    let first = events[0].0.clone();
    let batch = events.into_iter().map(|(reference, event)| ReferencedStatus { reference, event }).collect();
    // A batch is never redelivered as the same batch (its consumer, the projection,
    // is idempotent by sequence number), so its id need not be derived.
    let envelope = Envelope {
        message_id: Uuid::new_v4(),
        reference: first.clone(),
        sent_at: chrono::Utc::now(),
        body: StatusMessage::BatchV1(batch),
    };
    let confirm = publisher
        .start(Outgoing {
            exchange: STATUS_EXCHANGE,
            routing_key: "",
            reference: first.as_str(),
            message_id: envelope.message_id,
            payload: &envelope.encode(),
            headers: FieldTable::default(),
        })
        .await?;
    Ok(Some(Box::pin(confirm)))
}

/// Sends a work item to the step its slip points at, and waits for the confirm.
pub async fn send_work(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    item: loanflow_domain::messages::WorkItem,
) -> Result<(), BrokerError> {
    start_work(publisher, reference, item).await?.await
}

/// Starts sending a work item; returns the wait for its confirm.
pub async fn start_work(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    item: loanflow_domain::messages::WorkItem,
) -> Result<Confirm, BrokerError> {
    use loanflow_domain::messages::{Envelope, WorkMessage};
    let step = item.slip.current().unwrap_or_default().to_owned();
    let envelope = Envelope::new(reference.clone(), &format!("work/{step}"), chrono::Utc::now(), WorkMessage::V1(item));
    let confirm = publisher
        .start(Outgoing {
            exchange: WORK_EXCHANGE,
            routing_key: &step,
            reference: reference.as_str(),
            message_id: envelope.message_id,
            payload: &envelope.encode(),
            headers: FieldTable::default(),
        })
        .await?;
    Ok(Box::pin(confirm))
}

/// Awaits every confirm; the first failure, if any.
pub async fn confirmed(confirms: Vec<Confirm>) -> Result<(), BrokerError> {
    futures_util::future::join_all(confirms).await.into_iter().collect()
}
