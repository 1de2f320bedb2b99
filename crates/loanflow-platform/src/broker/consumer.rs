//! The supervised batch consumer: consumes a queue until shutdown, reconnecting with
//! backoff, and hands its handler *delivery batches*.
//!
//! A batch is what the channel has already buffered when the consumer looks
//! (`ready_chunks`): no timer, so a lone delivery at light load is handled at once, and
//! batches grow by themselves as load rises (MassTransit's batch consumer without its
//! time limit). The handler answers one [`Disposition`] per item, and each item is
//! settled on its own: a retry waits for its moment, a poison message goes to the
//! dead-letter queue, and neither takes its batch-mates with it. The hand-offs of a
//! batch are published together and their confirms awaited once; then everything
//! settled is acknowledged with a single `multiple = true` ack up to the
//! [`Watermark`], the highest tag below which nothing is still in progress (and what is
//! settled behind a delivery still waiting for its retry is acked on its own).
//!
//! A retry keeps its delivery: the consumer holds it unacknowledged through the backoff
//! delay, then hands it to the handler again (MassTransit's message retry). No copy
//! is published and the broker moves nothing, so a retry is exactly as safe as any
//! delivery in progress: if the consumer or its broker node is lost meanwhile, the
//! broker gives the message to the next consumer. (Delay queues that dead-letter back
//! on expiry depend on the broker's dead-lettering, which, across the loss of a
//! cluster node, can hold messages back for minutes or strand them: RabbitMQ's
//! at-least-once dead-lettering worker is not always restarted with a queue's new
//! leader.) While the retry budget lasts, a waiting delivery takes up a place in the
//! prefetch window: a level whose dependency is down stops taking more work than it can
//! hold, which is the back-pressure wanted.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::join_all;
use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::Acker;
use lapin::Connection;
use tokio::sync::{mpsc, Mutex, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info_span, Instrument};
use uuid::Uuid;

use super::access::Senders;
use super::{
    header_i64, header_string, header_u64, start_republish, BrokerError, Disposition, Incoming, Publisher, Supervisor,
    ABANDON_AFTER, ATTEMPTS_HEADER, CONNECTION_CHECK, DEAD_AT_HEADER, DEAD_LETTER_EXCHANGE, ORIGIN_HEADER,
    REASON_HEADER, REFERENCE_HEADER, SENT_AT_HEADER,
};
use crate::health::Flag;
use crate::metrics as names;
use crate::settings::{RetrySettings, Settings};
use crate::trace::Messaging;

/// The deliveries of one batch, as the handler sees them, in delivery order.
pub type Batch = Vec<Incoming>;

/// Deliveries held unacknowledged, by vhost, then by channel.
type Holding = std::sync::Mutex<std::collections::HashMap<String, std::collections::HashMap<Uuid, usize>>>;

/// What this process's consumers hold.
fn holding() -> &'static Holding {
    static HOLDING: std::sync::OnceLock<Holding> = std::sync::OnceLock::new();
    HOLDING.get_or_init(Default::default)
}

fn record_holding(vhost: &str, channel: Uuid, held: Option<usize>) {
    let mut all = holding().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let of_vhost = all.entry(vhost.to_owned()).or_default();
    match held {
        Some(n) => of_vhost.insert(channel, n),
        None => of_vhost.remove(&channel),
    };
}

/// Deliveries this process's consumers hold unacknowledged in `vhost` right now. Once a
/// system is idle it is 0: a delivery never settled would keep its place (and its
/// queue's prefetch slot) until the connection closed. A test harness checks it.
pub fn unacknowledged(vhost: &str) -> usize {
    let all = holding().lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    all.get(vhost).map_or(0, |channels| channels.values().sum())
}

/// Consumes `queue` until `shutdown`, reconnecting (with backoff) whenever the
/// connection is lost; `health` says whether it is consuming. Only messages from
/// `senders` reach the handler: any other is dead-lettered with the reason and logged
/// as a security event.
/// The handler gets each batch and answers one [`Disposition`] per item, in order (a
/// missing answer counts as [`Disposition::Requeue`]). At most
/// `broker.batch_concurrency` batches are handled at once.
///
/// On shutdown it cancels the consumer first (no new deliveries), lets the batches in
/// progress finish and settle, then closes the connection: nothing held is lost, and
/// anything not yet acked is redelivered by the broker.
pub async fn consume<F, Fut>(
    settings: Settings,
    queue: String,
    senders: Senders,
    health: Flag,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Batch, Publisher) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send + 'static,
{
    names::install();
    let mut supervisor = Supervisor::new(&settings.broker, &queue, &health, &shutdown);
    while let Some(conn) = supervisor.connect().await {
        let session = Session { settings: &settings, senders: &senders, conn: &conn, queue: &queue, health: &health };
        let ended = session.run(&shutdown, handler.clone()).await;
        if !supervisor.ended(conn, ended).await {
            return;
        }
    }
}

/// One connection's worth of consuming.
struct Session<'a> {
    settings: &'a Settings,
    senders: &'a Senders,
    conn: &'a Connection,
    queue: &'a str,
    health: &'a Flag,
}

/// What every batch of one channel shares.
struct Settler {
    queue: String,
    retry: RetrySettings,
    publisher: Publisher,
    senders: Senders,
    /// Where [`unacknowledged`] counts this channel's deliveries.
    vhost: String,
    channel: Uuid,
    /// Held while advancing and sending the ack, so that multiple-acks leave in tag
    /// order (an ack for a tag a later ack already covered would close the channel).
    watermark: Mutex<Watermark>,
    /// Signalled once the broker has refused one of this channel's publishes: the
    /// session ends at once rather than at its next connection check.
    refusal: Notify,
    /// Where a delivery goes back once its retry's delay is over: to the session, which
    /// hands it to the handler again.
    due: mpsc::UnboundedSender<Held>,
    /// Cancelled when the session ends: the retries still waiting give up their
    /// deliveries, which the channel's close returns to the queue.
    over: CancellationToken,
}

/// A delivery, with the attempts already made at its message.
struct Held {
    delivery: Delivery,
    attempts: u32,
}

type Watermark = super::Watermark<Acker>;

impl Session<'_> {
    async fn run<F, Fut>(&self, shutdown: &CancellationToken, handler: F) -> Result<(), BrokerError>
    where
        F: Fn(Batch, Publisher) -> Fut + Clone + Send + Sync + 'static,
        Fut: Future<Output = Vec<Disposition>> + Send + 'static,
    {
        let queue = self.queue;
        let broker = &self.settings.broker;
        let channel = self.conn.create_channel().await?;
        let publisher = Publisher::open(self.conn, broker.user()).await?;
        channel.basic_qos(broker.prefetch, BasicQosOptions::default()).await?;
        let tag = format!("{queue}.{}", Uuid::new_v4().simple());
        // no_ack = false (the default): a delivery is ours until we ack it.
        let consumer = channel
            .basic_consume(queue.into(), tag.as_str().into(), BasicConsumeOptions::default(), FieldTable::default())
            .await?;
        let mut batches = consumer.ready_chunks(usize::from(broker.batch_max.max(1)));
        tracing::info!(%queue, "consuming");
        self.health.set(true);
        // A new channel numbers its deliveries from 1 again: a new watermark.
        let (due, mut retries) = mpsc::unbounded_channel();
        let settler = Arc::new(Settler {
            queue: queue.to_owned(),
            retry: self.settings.retry.clone(),
            publisher: publisher.clone(),
            senders: self.senders.clone(),
            vhost: super::access::vhost_of(&broker.url),
            channel: Uuid::new_v4(),
            watermark: Mutex::new(Watermark::default()),
            refusal: Notify::new(),
            due,
            over: CancellationToken::new(),
        });
        let slots = Arc::new(Semaphore::new(usize::from(broker.batch_concurrency.max(1))));
        let tracker = TaskTracker::new();
        let mut check = tokio::time::interval(CONNECTION_CHECK);
        // A batch is taken only once a slot is free (while every slot is busy the channel
        // keeps buffering, so the next batch is larger); the loop never blocks, so it
        // keeps watching the connection and the shutdown signal meanwhile.
        let mut slot = None;
        let outcome = loop {
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = channel.basic_cancel(tag.as_str().into(), BasicCancelOptions::default()).await;
                    break Ok(());
                }
                _ = check.tick() => {
                    if !self.conn.status().connected() {
                        break Err(BrokerError::ConnectionLost);
                    }
                }
                // A channel that was refused once may go on being refused: start over.
                () = settler.refusal.notified() => break Err(BrokerError::PublishesRefused),
                // A retry whose delay is over: a batch of its own, outside the slots
                // (it was counted in one already, and waiting took none).
                Some(held) = retries.recv() => {
                    let (handler, settler) = (handler.clone(), settler.clone());
                    tracker.spawn(async move { settler.settle(vec![held], handler).await });
                }
                permit = slots.clone().acquire_owned(), if slot.is_none() => slot = permit.ok(),
                next = batches.next(), if slot.is_some() => {
                    let Some(items) = next else { break Err(BrokerError::ConsumerEnded) };
                    let mut deliveries = Vec::with_capacity(items.len());
                    let mut failed = None;
                    for item in items {
                        match item {
                            Ok(delivery) => deliveries.push(delivery),
                            Err(e) => failed = Some(e),
                        }
                    }
                    if !deliveries.is_empty() {
                        let mut watermark = settler.watermark.lock().await;
                        for delivery in &deliveries {
                            watermark.delivered(delivery.delivery_tag);
                        }
                        let deliveries: Vec<Held> =
                            deliveries.into_iter().map(|delivery| Held { attempts: attempts(&delivery), delivery }).collect();
                        record_holding(&settler.vhost, settler.channel, Some(watermark.outstanding()));
                        drop(watermark);
                        let (handler, settler, slot) = (handler.clone(), settler.clone(), slot.take());
                        tracker.spawn(async move {
                            settler.settle(deliveries, handler).await;
                            drop(slot);
                        });
                    }
                    if let Some(e) = failed {
                        break Err(e.into());
                    }
                }
            }
        };
        tracker.close();
        settler.over.cancel();
        if outcome.is_err() {
            // Not ready from this moment, not only once the batches in progress give up.
            self.health.set(false);
        }
        if outcome.is_ok() {
            // A clean stop: every batch finishes and settles what it holds.
            tracker.wait().await;
        } else if tokio::time::timeout(ABANDON_AFTER, tracker.wait()).await.is_err() {
            tracing::warn!(%queue, "handlers still running after the connection was lost; reconnecting anyway");
        }
        // What the channel still held goes back to the broker with it.
        record_holding(&settler.vhost, settler.channel, None);
        // Close channels explicitly (lapin would close them on drop, racing the
        // connection's close) so that a clean stop logs no error.
        drop(batches);
        publisher.close().await;
        let _ = channel.close(200, "bye".into()).await;
        outcome
    }
}

/// What became of one item once its hand-off (if any) was confirmed.
enum Settled {
    /// Handled, or safely handed on (to the dead-letter queue).
    Done,
    /// Back to its queue.
    Returned,
    /// Held for another attempt after this many milliseconds.
    Later(u64),
}

impl Settler {
    async fn settle<F, Fut>(&self, held: Vec<Held>, handler: F)
    where
        F: Fn(Batch, Publisher) -> Fut,
        Fut: Future<Output = Vec<Disposition>>,
    {
        let max_attempts = self.retry.max_attempts;
        let sender = |d: &Delivery| d.properties.user_id().as_ref().map(|u| u.to_string());
        let accepted: Vec<bool> = held.iter().map(|h| self.senders.allows(sender(&h.delivery).as_deref())).collect();
        // The batch's span begins no trace of an application: it links to each of theirs.
        let span = info_span!(
            parent: None,
            "batch",
            otel.name = %format_args!("process batch {}", self.queue),
            queue = %self.queue,
            size = held.len()
        );
        let references: Vec<Option<String>> =
            held.iter().map(|h| header_string(&h.delivery.properties, REFERENCE_HEADER)).collect();
        let items: Vec<tracing::Span> = held
            .iter()
            .zip(&references)
            .map(|(Held { delivery: d, .. }, reference)| {
                // A consumer span per delivery (OpenTelemetry's messaging conventions),
                // continuing the trace its message carries.
                let item = crate::trace::message_span(
                    Messaging::Process,
                    &self.queue,
                    reference.as_deref().unwrap_or("-"),
                    crate::trace::extract(d.properties.headers().as_ref()),
                );
                crate::trace::link(&span, &item);
                item
            })
            .collect();
        let incoming: Batch = held
            .iter()
            .zip(&accepted)
            .zip(items.iter().zip(references))
            .filter(|((_, accepted), _)| **accepted)
            .map(|((Held { delivery: d, attempts }, _), (item, reference))| Incoming {
                data: d.data.clone(),
                sender: sender(d),
                reference,
                redelivered: d.redelivered,
                attempts: *attempts,
                max_attempts,
                span: item.clone(),
            })
            .collect();
        let queue = self.queue.clone();
        ::metrics::histogram!(names::BATCH_SIZE, "queue" => queue.clone()).record(held.len() as f64);
        let now = chrono::Utc::now().timestamp_micros();
        for Held { delivery, .. } in &held {
            if let Some(sent) = header_i64(&delivery.properties, SENT_AT_HEADER) {
                let waited = (now - sent).max(0) as f64 / 1e6;
                ::metrics::histogram!(names::QUEUE_WAIT, "queue" => queue.clone()).record(waited);
            }
        }
        let started = std::time::Instant::now();
        let mut dispositions = if incoming.is_empty() {
            Vec::new().into_iter()
        } else {
            handler(incoming, self.publisher.clone()).instrument(span.clone()).await.into_iter()
        };
        ::metrics::histogram!(names::HANDLING, "queue" => queue.clone()).record(started.elapsed().as_secs_f64());

        // Hand-offs first, all of them, then one wait for their confirms.
        let mut handoffs = Vec::new();
        for ((h, accepted), item) in held.iter().zip(accepted).zip(items) {
            let disposition = if accepted {
                dispositions.next().unwrap_or(Disposition::Requeue)
            } else {
                let sender = sender(&h.delivery).unwrap_or_else(|| "nobody (no user_id)".into());
                item.in_scope(|| {
                    tracing::warn!(security_event = "message_refused", %sender, queue = %self.queue, "message from a sender that may not send it");
                });
                Disposition::DeadLetter(format!("refused: {sender} may not send to {}", self.queue))
            };
            handoffs.push(self.hand_off(h, disposition, item.clone()).instrument(item));
        }
        let settled = join_all(handoffs).await;
        // Refused by the broker (a nack, or no confirm in time), this channel may go on
        // being refused: what it could not move would come back at once, be handled
        // again and be refused again, each time counting towards its delivery limit,
        // until the broker dead-lettered it. So it is not returned here: it stays
        // unsettled (no multiple-ack passes it) and goes back to its queue once, when the
        // session that this wakes closes the channel.
        let refused = self.publisher.refused();
        if refused {
            self.refusal.notify_one();
        }

        let mut watermark = self.watermark.lock().await;
        for (h, settled) in held.into_iter().zip(settled) {
            let delivery = &h.delivery;
            match settled {
                Settled::Done => watermark.ready(delivery.delivery_tag, delivery.acker.clone()),
                Settled::Returned if refused => {}
                Settled::Returned => {
                    let requeue = BasicNackOptions { requeue: true, ..BasicNackOptions::default() };
                    log_unsettled(delivery.nack(requeue).await);
                    watermark.nacked(delivery.delivery_tag);
                }
                // Unsettled: no multiple-ack passes it meanwhile, and what settles behind
                // it is acked on its own.
                Settled::Later(delay) => {
                    watermark.waiting(delivery.delivery_tag);
                    self.wait(Held { attempts: h.attempts + 1, ..h }, delay);
                }
            }
        }
        if let Some((_, acker)) = watermark.advance() {
            // `multiple`: one ack for everything settled up to here, from this batch and
            // from batches before it that finished out of order.
            log_unsettled(acker.ack(BasicAckOptions { multiple: true }).await);
        }
        for (_, acker) in watermark.stranded() {
            log_unsettled(acker.ack(BasicAckOptions { multiple: false }).await);
        }
        record_holding(&self.vhost, self.channel, Some(watermark.outstanding()));
    }

    /// Hands `held` back to the session once `delay_ms` is over, unless the session
    /// ends first (its channel's close then returns the delivery to the queue).
    fn wait(&self, held: Held, delay_ms: u64) {
        let (due, over) = (self.due.clone(), self.over.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = over.cancelled() => {}
                () = tokio::time::sleep(std::time::Duration::from_millis(delay_ms)) => {
                    // A session that has ended no longer receives: the same as above.
                    let _ = due.send(held);
                }
            }
        });
    }

    /// Carries out one item's disposition, up to the broker's confirm of any hand-off.
    async fn hand_off(&self, held: &Held, disposition: Disposition, item: tracing::Span) -> Settled {
        let Held { delivery, attempts } = held;
        let attempts = *attempts;
        let outcome = match &disposition {
            Disposition::Ack => "ack",
            Disposition::Requeue => "requeue",
            Disposition::DeadLetter(_) => "dead_letter",
            Disposition::Retry(_) => "retry",
        };
        ::metrics::counter!(names::DELIVERIES, "queue" => self.queue.clone(), "outcome" => outcome).increment(1);
        let last_attempt = attempts + 1 >= self.retry.max_attempts;
        let moved = match &disposition {
            Disposition::Ack => return Settled::Done,
            Disposition::Requeue => return Settled::Returned,
            Disposition::DeadLetter(reason) => self.dead_letter(delivery, reason, attempts + 1, &item).await,
            Disposition::Retry(reason) if last_attempt => {
                let reason = format!("gave up after {} attempts: {reason}", attempts + 1);
                self.dead_letter(delivery, &reason, attempts + 1, &item).await
            }
            Disposition::Retry(reason) => {
                let delay = self.retry.delay_after(attempts + 1);
                tracing::info!(%reason, retry_in_ms = delay, "will retry");
                return Settled::Later(delay);
            }
        };
        match moved {
            Ok(()) => Settled::Done,
            Err(e) => {
                tracing::error!(error = %e, "could not move the message on; returning it to its queue");
                Settled::Returned
            }
        }
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        reason: &str,
        attempts: u32,
        item: &tracing::Span,
    ) -> Result<(), BrokerError> {
        tracing::warn!(%reason, "dead-lettering message");
        let mut headers = FieldTable::default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(LongString::from(reason)));
        headers.insert(ORIGIN_HEADER.into(), AMQPValue::LongString(LongString::from(self.queue.as_str())));
        headers.insert(ATTEMPTS_HEADER.into(), AMQPValue::LongUInt(attempts));
        headers.insert(DEAD_AT_HEADER.into(), AMQPValue::LongLongInt(chrono::Utc::now().timestamp()));
        self.republish(delivery, DEAD_LETTER_EXCHANGE, "", headers, item).await
    }

    async fn republish(
        &self,
        delivery: &Delivery,
        exchange: &str,
        routing_key: &str,
        mut headers: FieldTable,
        item: &tracing::Span,
    ) -> Result<(), BrokerError> {
        // A retry, or a replay of a dead letter, goes on in the trace of this attempt.
        crate::trace::inject(item, &mut headers);
        start_republish(&self.publisher, &delivery.properties, &delivery.data, (exchange, routing_key), headers, None)
            .await?
            .await
    }
}

/// Attempts already made at a delivery's message (0 on its first delivery).
fn attempts(delivery: &Delivery) -> u32 {
    header_u64(&delivery.properties, ATTEMPTS_HEADER).and_then(|n| u32::try_from(n).ok()).unwrap_or(0)
}

/// `Ok(false)` or an error: the channel the delivery came on is gone (the connection
/// was lost); the broker redelivers it, and every consumer is idempotent.
fn log_unsettled(result: Result<bool, lapin::Error>) {
    match result {
        Ok(true) => {}
        Ok(false) => tracing::warn!("delivery could not be settled; it will be redelivered"),
        Err(e) => tracing::warn!(error = %e, "delivery could not be settled; it will be redelivered"),
    }
}
