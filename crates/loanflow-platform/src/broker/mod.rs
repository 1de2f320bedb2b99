//! RabbitMQ: topology ([`topology`]), connecting with backoff ([`connection`]),
//! confirmed publishing ([`publisher`]), and supervised batch consumers ([`consumer`],
//! acknowledging up to a [`watermark`]).
//!
//! Work travels through the `loanflow.work` topic exchange, routed by step name to a
//! durable queue per step (`loanflow.step.<name>`). Status events go through the
//! `loanflow.status` fanout exchange to the intake's projection queue. Anything a
//! consumer cannot process goes, with the reason in its headers, to `loanflow.dead`
//! and its queue `loanflow.dead-letters`.
//!
//! A transient failure is retried by the consumer, which holds the delivery through the
//! backoff delay and then hands it to its handler again (see [`consumer`]): the broker
//! moves nothing, so a retry is as safe as any delivery in progress.
//!
//! The topology is declared once, by the setup step (`loanflow migrate`, as the one user
//! with configure rights); services only publish and consume (see [`access`]). A
//! service started before it retries with backoff until the queues exist.

use std::time::Duration;

use lapin::types::AMQPValue;
use lapin::BasicProperties;

pub mod access;
pub mod asyncapi;
mod connection;
mod consumer;
mod publisher;
mod topology;
mod watermark;

pub use connection::{connect, connect_with_backoff, pause_unless_stopped, Backoff, Supervisor};
pub use consumer::{consume, unacknowledged, Batch};
/// A message's headers (AMQP's field table), as [`Outgoing`] takes them.
pub use lapin::types::FieldTable;
pub use publisher::{
    confirmed, send_status, send_work, start_status, start_statuses, start_work, Announcement, Confirm, Outgoing,
    Publisher,
};
pub(crate) use publisher::{republish, start_republish};
pub use topology::Topology;
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
/// When a message was published, in Unix microseconds: its consumer measures queue wait.
pub const SENT_AT_HEADER: &str = "x-loanflow-sent-at-us";
/// When a message was dead-lettered, in Unix seconds.
pub const DEAD_AT_HEADER: &str = "x-loanflow-dead-at";

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
    #[error("the broker refused or did not confirm a publish of this channel; starting over on a new connection")]
    PublishesRefused,
}

/// A delivered message, as a handler sees it.
#[derive(Debug)]
pub struct Incoming {
    pub data: Vec<u8>,
    /// The broker user that published it (`user_id`, which the broker verifies).
    pub sender: Option<String>,
    /// The reference header, when present: for logs only, never trusted over the body.
    pub reference: Option<String>,
    pub redelivered: bool,
    /// Attempts already made at this message (0 on its first delivery).
    pub attempts: u32,
    pub max_attempts: u32,
    /// This delivery's processing: it continues the trace the message carries, and
    /// carries the reference. Work done for this one delivery runs in it, and what it
    /// sends on continues its trace.
    pub span: tracing::Span,
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

/// A batch handler's answers, one per delivery, filled in as it decides. A delivery
/// left without one is requeued (at once, without counting an attempt).
#[derive(Debug)]
pub struct Answers(Vec<Option<Disposition>>);

impl Answers {
    pub fn for_batch(batch: &[Incoming]) -> Answers {
        Answers(vec![None; batch.len()])
    }

    pub fn set(&mut self, index: usize, disposition: Disposition) {
        if let Some(answer) = self.0.get_mut(index) {
            *answer = Some(disposition);
        }
    }

    /// Every delivery's envelope, with its index; a delivery that does not decode is
    /// dead-lettered with the reason (it never will).
    pub fn decode<B>(&mut self, batch: &[Incoming]) -> Vec<(usize, loanflow_domain::messages::Envelope<B>)>
    where
        B: serde::Serialize + serde::de::DeserializeOwned,
    {
        let mut decoded = Vec::with_capacity(batch.len());
        for (index, incoming) in batch.iter().enumerate() {
            match loanflow_domain::messages::Envelope::<B>::decode(&incoming.data) {
                Ok(envelope) => decoded.push((index, envelope)),
                Err(e) => self.set(index, Disposition::DeadLetter(e.to_string())),
            }
        }
        decoded
    }

    /// Answers every delivery still without one.
    pub fn fill(&mut self, mut answer: impl FnMut(usize) -> Disposition) {
        for (index, slot) in self.0.iter_mut().enumerate().filter(|(_, slot)| slot.is_none()) {
            *slot = Some(answer(index));
        }
    }

    pub fn into_dispositions(self) -> Vec<Disposition> {
        self.0.into_iter().map(|a| a.unwrap_or(Disposition::Requeue)).collect()
    }
}

pub(crate) fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

pub(crate) fn header_i64(properties: &BasicProperties, name: &str) -> Option<i64> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
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
