//! Confirmed publishing: a publish counts only once the broker has confirmed it, and
//! a batch's publishes are all sent before any confirm is awaited.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use tracing::Span;
use uuid::Uuid;

use super::{
    header_string, BrokerError, CONFIRM_TIMEOUT, REFERENCE_HEADER, SENT_AT_HEADER, STATUS_EXCHANGE, WORK_EXCHANGE,
};

/// One message to publish.
#[derive(Debug)]
pub struct Outgoing<'a> {
    pub exchange: &'a str,
    pub routing_key: &'a str,
    pub reference: &'a str,
    pub message_id: Uuid,
    pub payload: &'a [u8],
    pub headers: FieldTable,
    /// Per-message time to live, if the message may expire (a dead letter's copy).
    pub expiration_ms: Option<u64>,
}

/// A channel in confirm mode. A publish counts only when the broker has confirmed it.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    /// Stamped on every message as `user_id`: the connection's own user, which the
    /// broker verifies, so consumers can tell who sent what.
    user_id: Option<String>,
    /// Set once the broker has nacked a publish, or not confirmed one in time.
    refused: Arc<AtomicBool>,
}

impl Publisher {
    /// A confirming channel on `conn`, which is connected as `user_id` (a service's
    /// broker user; `None` for a client that acts as no service).
    pub async fn open(conn: &Connection, user_id: Option<String>) -> Result<Publisher, BrokerError> {
        crate::metrics::install();
        let channel = conn.create_channel().await?;
        // Without confirms lapin answers `NotRequested`, which proves nothing.
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Publisher { channel, user_id, refused: Arc::default() })
    }

    /// Whether the broker has nacked a publish of this channel, or left one unconfirmed
    /// past [`CONFIRM_TIMEOUT`]. A channel that did may go on failing: on RabbitMQ 3.10 a
    /// channel opened while a quorum queue was electing a new leader (a cluster node
    /// lost) can keep nacking every publish to that queue. Its owner should start over
    /// on a new connection, as the consumers do.
    pub fn refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
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
        // When it left, so that its consumer can measure how long it waited in the queue.
        headers.insert(SENT_AT_HEADER.into(), AMQPValue::LongLongInt(chrono::Utc::now().timestamp_micros()));
        let mut properties = BasicProperties::default()
            // 2 = persistent: written to disk, survives a broker restart.
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(out.message_id.to_string().into())
            .with_headers(headers);
        if let Some(user) = &self.user_id {
            properties = properties.with_user_id(user.as_str().into());
        }
        if let Some(ms) = out.expiration_ms {
            properties = properties.with_expiration(ms.to_string().into());
        }
        let options = BasicPublishOptions { mandatory: true, ..BasicPublishOptions::default() };
        let confirm = self
            .channel
            .basic_publish(out.exchange.into(), out.routing_key.into(), options, out.payload, properties)
            .await?;
        let sent = std::time::Instant::now();
        let refused = self.refused.clone();
        Ok(async move {
            let Ok(confirmation) = tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await else {
                refused.store(true, Ordering::Relaxed);
                return Err(BrokerError::ConfirmTimeout(CONFIRM_TIMEOUT));
            };
            metrics::histogram!(crate::metrics::CONFIRM_WAIT).record(sent.elapsed().as_secs_f64());
            match confirmation? {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable),
                Confirmation::Nack(_) => {
                    refused.store(true, Ordering::Relaxed);
                    Err(BrokerError::Nacked)
                }
                Confirmation::NotRequested => Err(BrokerError::NotConfirmed),
            }
        })
    }
}

/// Publishes a received message again, keeping its message id and reference, and
/// waits for the confirm.
pub(crate) async fn republish(
    publisher: &Publisher,
    properties: &BasicProperties,
    payload: &[u8],
    (exchange, routing_key): (&str, &str),
    headers: FieldTable,
    expiration_ms: Option<u64>,
) -> Result<(), BrokerError> {
    start_republish(publisher, properties, payload, (exchange, routing_key), headers, expiration_ms).await?.await
}

/// Starts a [`republish`] and returns the wait for its confirm.
pub(crate) async fn start_republish(
    publisher: &Publisher,
    properties: &BasicProperties,
    payload: &[u8],
    (exchange, routing_key): (&str, &str),
    headers: FieldTable,
    expiration_ms: Option<u64>,
) -> Result<impl Future<Output = Result<(), BrokerError>> + Send + 'static, BrokerError> {
    let reference = header_string(properties, REFERENCE_HEADER).unwrap_or_default();
    let message_id =
        properties.message_id().as_ref().and_then(|id| Uuid::parse_str(id.as_str()).ok()).unwrap_or_else(Uuid::new_v4);
    let out = Outgoing { exchange, routing_key, reference: &reference, message_id, payload, headers, expiration_ms };
    publisher.start(out).await
}

/// The wait for one publish's confirm.
pub type Confirm = std::pin::Pin<Box<dyn Future<Output = Result<(), BrokerError>> + Send>>;

/// Publishes a status event for `reference` and waits for the broker's confirm; it
/// continues the trace of `cause`, the span of the work that led to it.
pub async fn send_status(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    event: loanflow_domain::messages::StatusEvent,
    cause: &Span,
) -> Result<(), BrokerError> {
    start_status(publisher, reference, event, cause).await?.await
}

/// Starts publishing a status event; returns the wait for its confirm, so that a batch's
/// events are all sent before any confirm is awaited.
pub async fn start_status(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    event: loanflow_domain::messages::StatusEvent,
    cause: &Span,
) -> Result<Confirm, BrokerError> {
    use loanflow_domain::messages::{Envelope, StatusMessage};
    let what = format!("status/{}", event.seq);
    let envelope = Envelope::new(reference.clone(), &what, chrono::Utc::now(), StatusMessage::V1(event));
    start_envelope(publisher, STATUS_EXCHANGE, "", &envelope, cause).await
}

/// Starts publishing an envelope, its reference in the reference header and the trace
/// context of `cause` in the trace headers.
async fn start_envelope<B>(
    publisher: &Publisher,
    exchange: &str,
    routing_key: &str,
    envelope: &loanflow_domain::messages::Envelope<B>,
    cause: &Span,
) -> Result<Confirm, BrokerError>
where
    B: serde::Serialize + serde::de::DeserializeOwned,
{
    let mut headers = FieldTable::default();
    crate::trace::inject(cause, &mut headers);
    let confirm = publisher
        .start(Outgoing {
            exchange,
            routing_key,
            reference: envelope.reference.as_str(),
            message_id: envelope.message_id,
            payload: &envelope.encode(),
            headers,
            expiration_ms: None,
        })
        .await?;
    Ok(Box::pin(confirm))
}

/// The most status events one message carries. A consumer's prefetch counts messages,
/// not bytes: unbounded batches would let the projection hold `prefetch` times the
/// largest batch in memory.
pub const STATUS_BATCH_MAX: usize = 32;

/// A status event to announce, with the span of the work that led to it (its trace).
pub type Announcement = (loanflow_domain::Reference, loanflow_domain::messages::StatusEvent, Span);

/// Starts publishing the status events of one delivery batch, [`STATUS_BATCH_MAX`] to a
/// message (a lone event as a plain `loan.status.v1`); returns the waits for their
/// confirms (none when there is nothing to announce). Each event carries its own trace
/// context (in the message's headers, or in its item of a batch message, whose headers
/// carry the publishing batch's).
pub async fn start_statuses(publisher: &Publisher, events: Vec<Announcement>) -> Result<Vec<Confirm>, BrokerError> {
    use loanflow_domain::messages::{Envelope, ReferencedStatus, StatusMessage};
    let mut confirms = Vec::with_capacity(events.len().div_ceil(STATUS_BATCH_MAX));
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let mut chunk: Vec<_> = events.by_ref().take(STATUS_BATCH_MAX).collect();
        if chunk.len() == 1 {
            if let Some((reference, event, cause)) = chunk.pop() {
                confirms.push(start_status(publisher, &reference, event, &cause).await?);
            }
            continue;
        }
        let first = chunk[0].0.clone();
        let batch = chunk
            .into_iter()
            .map(|(reference, event, cause)| ReferencedStatus {
                reference,
                event,
                traceparent: crate::trace::traceparent(&cause),
            })
            .collect();
        // A batch is never redelivered as the same batch (its consumer, the projection,
        // is idempotent by sequence number), so its id need not be derived.
        let envelope = Envelope {
            message_id: Uuid::new_v4(),
            reference: first,
            sent_at: chrono::Utc::now(),
            body: StatusMessage::BatchV1(batch),
        };
        confirms.push(start_envelope(publisher, STATUS_EXCHANGE, "", &envelope, &Span::current()).await?);
    }
    Ok(confirms)
}

/// Sends a work item to the step its slip points at, continuing the trace of `cause`,
/// and waits for the confirm.
pub async fn send_work(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    item: loanflow_domain::messages::WorkItem,
    cause: &Span,
) -> Result<(), BrokerError> {
    start_work(publisher, reference, item, cause).await?.await
}

/// Starts sending a work item; returns the wait for its confirm.
pub async fn start_work(
    publisher: &Publisher,
    reference: &loanflow_domain::Reference,
    item: loanflow_domain::messages::WorkItem,
    cause: &Span,
) -> Result<Confirm, BrokerError> {
    use loanflow_domain::messages::{Envelope, WorkMessage};
    let step = item.slip.current().unwrap_or_default().to_owned();
    let envelope = Envelope::new(reference.clone(), &format!("work/{step}"), chrono::Utc::now(), WorkMessage::V1(item));
    start_envelope(publisher, WORK_EXCHANGE, &step, &envelope, cause).await
}

/// Awaits every confirm; the first failure, if any.
pub async fn confirmed(confirms: Vec<Confirm>) -> Result<(), BrokerError> {
    futures_util::future::join_all(confirms).await.into_iter().collect()
}
