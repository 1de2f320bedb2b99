//! The dead-letter queue, for operators: list what is there (reference, level, reason,
//! attempts, age: never the body, which holds personal data) and replay messages to
//! the queue they came from, with a fresh retry budget.
//!
//! Messages are read with `basic.get` and left unacknowledged until the end; closing
//! the channel returns the ones not replayed to the queue, in their order.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use serde::Serialize;

use crate::broker::{
    self, header_string, header_u64, BrokerError, Publisher, Topology, ATTEMPTS_HEADER, DEAD_AT_HEADER,
    DEAD_LETTER_QUEUE, ORIGIN_HEADER, REASON_HEADER, REFERENCE_HEADER,
};
use crate::Settings;

/// One dead letter, as an operator sees it.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    pub reference: String,
    /// The queue it came from, and so where a replay sends it.
    pub origin_queue: String,
    pub reason: String,
    pub attempts: u64,
    /// Seconds since it was dead-lettered, when known.
    pub age_seconds: Option<i64>,
}

fn describe(delivery: &Delivery, now: i64) -> DeadLetter {
    let props = &delivery.properties;
    // Messages the broker dead-lettered itself (delivery limit) carry its x-death
    // headers instead of ours.
    let origin = header_string(props, ORIGIN_HEADER).or_else(|| header_string(props, "x-first-death-queue"));
    let reason = header_string(props, REASON_HEADER)
        .or_else(|| header_string(props, "x-first-death-reason").map(|r| format!("broker: {r}")));
    DeadLetter {
        reference: header_string(props, REFERENCE_HEADER).unwrap_or_else(|| "-".into()),
        origin_queue: origin.unwrap_or_else(|| "-".into()),
        reason: reason.unwrap_or_else(|| "unknown".into()),
        attempts: header_u64(props, ATTEMPTS_HEADER).unwrap_or(0),
        age_seconds: header_u64(props, DEAD_AT_HEADER).and_then(|t| i64::try_from(t).ok()).map(|t| now - t),
    }
}

async fn open(settings: &Settings) -> Result<(lapin::Connection, Channel), BrokerError> {
    let conn = broker::connect(&settings.broker).await?;
    let channel = conn.create_channel().await?;
    Topology::new(settings).declare(&channel).await?;
    Ok((conn, channel))
}

async fn drain(channel: &Channel) -> Result<Vec<Delivery>, BrokerError> {
    let mut held = Vec::new();
    while let Some(message) = channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false }).await? {
        held.push(message.delivery);
    }
    Ok(held)
}

pub async fn list(settings: &Settings) -> Result<Vec<DeadLetter>, BrokerError> {
    let (conn, channel) = open(settings).await?;
    let now = chrono::Utc::now().timestamp();
    let letters = drain(&channel).await?.iter().map(|d| describe(d, now)).collect();
    let _ = channel.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(letters)
}

/// Replays the dead letters of `reference` (all of them when `None`) to their origin
/// queues. Returns how many were replayed.
pub async fn replay(settings: &Settings, reference: Option<&str>) -> Result<usize, BrokerError> {
    let (conn, channel) = open(settings).await?;
    let publisher = Publisher::open(&conn).await?;
    let now = chrono::Utc::now().timestamp();
    let mut replayed = 0;
    for delivery in drain(&channel).await? {
        let letter = describe(&delivery, now);
        if reference.is_some_and(|r| r != letter.reference) || letter.origin_queue == "-" {
            continue;
        }
        // Through the default exchange, straight to the origin queue; without the
        // attempts header, so it gets a fresh retry budget.
        let mut headers = FieldTable::default();
        headers.insert("x-loanflow-replayed".into(), AMQPValue::Boolean(true));
        broker::republish(&publisher, &delivery.properties, &delivery.data, "", &letter.origin_queue, headers).await?;
        delivery.ack(BasicAckOptions::default()).await?;
        tracing::info!(reference = %letter.reference, queue = %letter.origin_queue, "dead letter replayed");
        replayed += 1;
    }
    publisher.close().await;
    let _ = channel.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(replayed)
}
