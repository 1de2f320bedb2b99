//! The dead-letter queue, for operators: list what is there (reference, level, reason,
//! attempts, age: never the body, which holds personal data) and replay messages to
//! the queue they came from, with a fresh retry budget.
//!
//! Reading a quorum queue and handing a message back counts a delivery, and the queue
//! drops a message past its delivery limit: a list that returned what it read would
//! destroy each letter after a few listings. So every letter read is settled at once:
//! replayed to its origin, or put back as a fresh copy at the end of the queue (same
//! body and headers, confirmed by the broker before the original is acked). The order
//! of the letters is kept; a crash in between can leave a letter twice, never lose it.
//!
//! Dead letters carry personal data, so they are kept for `retention.dead_letter_seconds`
//! only: the setup step puts a message TTL on the queue (a broker policy), and each copy
//! a listing puts back expires when its original would have, so listing never extends it.

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::Channel;
use serde::Serialize;

use crate::broker::{
    self, header_string, header_u64, BrokerError, Publisher, ATTEMPTS_HEADER, DEAD_AT_HEADER, DEAD_LETTER_QUEUE,
    ORIGIN_HEADER, REASON_HEADER, REFERENCE_HEADER,
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

/// Connects as the operator, the one user that reads the dead letters and replays them.
async fn open(settings: &Settings) -> Result<(lapin::Connection, Channel, Publisher), BrokerError> {
    let broker = settings.broker.acting_as(broker::access::OPERATOR);
    let conn = broker::connect(&broker).await?;
    let channel = conn.create_channel().await?;
    let publisher = Publisher::open(&conn, broker.user()).await?;
    Ok((conn, channel, publisher))
}

async fn drain(channel: &Channel) -> Result<Vec<Delivery>, BrokerError> {
    let mut held = Vec::new();
    while let Some(message) = channel.basic_get(DEAD_LETTER_QUEUE.into(), BasicGetOptions { no_ack: false }).await? {
        held.push(message.delivery);
    }
    Ok(held)
}

/// What becomes of one letter read.
enum Settle {
    Keep,
    Replay,
}

/// Reads every dead letter, settles each as `decide` says, and returns them all.
async fn rotate<F>(settings: &Settings, mut decide: F) -> Result<Vec<DeadLetter>, BrokerError>
where
    F: FnMut(&DeadLetter) -> Settle,
{
    let (conn, channel, publisher) = open(settings).await?;
    let now = chrono::Utc::now().timestamp();
    let retention_ms = settings.retention.dead_letter_seconds.saturating_mul(1000);
    let mut letters = Vec::new();
    for delivery in drain(&channel).await? {
        let letter = describe(&delivery, now);
        // Its retention runs from when it died, however often it is listed.
        let age_ms = letter.age_seconds.map_or(0, |s| u64::try_from(s).unwrap_or(0).saturating_mul(1000));
        let remaining_ms = retention_ms.saturating_sub(age_ms);
        if remaining_ms == 0 {
            delivery.ack(BasicAckOptions::default()).await?;
            tracing::info!(reference = %letter.reference, "dead letter past its retention, removed");
            continue;
        }
        let replay = matches!(decide(&letter), Settle::Replay) && letter.origin_queue != "-";
        if replay {
            // Through the default exchange, straight to the origin queue; without the
            // attempts header, so it gets a fresh retry budget.
            let mut headers = FieldTable::default();
            headers.insert("x-loanflow-replayed".into(), AMQPValue::Boolean(true));
            let origin = letter.origin_queue.as_str();
            broker::republish(&publisher, &delivery.properties, &delivery.data, ("", origin), headers, None).await?;
            tracing::info!(reference = %letter.reference, queue = %letter.origin_queue, "dead letter replayed");
        } else {
            // Back at the end of the queue, everything it carried kept, expiring when the
            // original would have (the broker dead-lettered it without our timestamp:
            // from now).
            let mut headers = delivery.properties.headers().clone().unwrap_or_default();
            if letter.age_seconds.is_none() {
                headers.insert(DEAD_AT_HEADER.into(), AMQPValue::LongLongInt(now));
            }
            let (props, data, into) = (&delivery.properties, &delivery.data, ("", DEAD_LETTER_QUEUE));
            broker::republish(&publisher, props, data, into, headers, Some(remaining_ms)).await?;
        }
        delivery.ack(BasicAckOptions::default()).await?;
        letters.push(letter);
    }
    publisher.close().await;
    let _ = channel.close(200, "bye".into()).await;
    let _ = conn.close(200, "bye".into()).await;
    Ok(letters)
}

/// Every dead letter, oldest first. Listing loses none, however often it runs.
pub async fn list(settings: &Settings) -> Result<Vec<DeadLetter>, BrokerError> {
    rotate(settings, |_| Settle::Keep).await
}

/// Replays the dead letters of `reference` (all of them when `None`) to their origin
/// queues. Returns how many were replayed.
pub async fn replay(settings: &Settings, reference: Option<&str>) -> Result<usize, BrokerError> {
    let mut replayed = 0;
    rotate(settings, |letter| {
        if reference.is_none_or(|r| r == letter.reference) && letter.origin_queue != "-" {
            replayed += 1;
            Settle::Replay
        } else {
            Settle::Keep
        }
    })
    .await?;
    Ok(replayed)
}
