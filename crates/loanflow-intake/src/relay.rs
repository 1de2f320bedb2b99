//! The outbox relay: publishes what submissions committed to the outbox, with
//! publisher confirms, and deletes each row only once the broker has confirmed it.
//! It is the outbox's one publisher: the submission writer wakes it after every group
//! commit (so a new message leaves at once), and it polls for whatever a broker outage
//! or another intake instance left behind.
//!
//! While the broker is down the rows simply wait (submissions keep succeeding); the
//! relay reconnects with backoff and catches up. A row can be published twice (the
//! relay dies between the confirm and the delete): consumers are idempotent.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::store;
use loanflow_platform::broker::{BrokerError, FieldTable, Outgoing, Publisher, Supervisor};
use loanflow_platform::db::{blocking, DbError, PgPool};
use loanflow_platform::health::Flag;
use loanflow_platform::trace;
use loanflow_platform::Settings;

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(transparent)]
    Db(#[from] DbError),
}

pub async fn run(settings: Settings, pool: PgPool, wake: Arc<Notify>, health: Flag, shutdown: CancellationToken) {
    let poll = Duration::from_millis(settings.intake.relay_poll_ms.max(1));
    let mut supervisor = Supervisor::new(&settings.broker, "outbox relay", &health, &shutdown);
    while let Some(conn) = supervisor.connect().await {
        let session = async {
            let publisher = Publisher::open(&conn, settings.broker.user()).await?;
            health.set(true);
            loop {
                if !conn.status().connected() {
                    return Err(BrokerError::ConnectionLost);
                }
                loop {
                    match drain_once(&pool, &publisher, settings.intake.relay_batch).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(RelayError::Broker(e)) => return Err(e),
                        // The rows stay in the outbox; the next wake-up or poll tries again.
                        Err(RelayError::Db(e)) => {
                            tracing::warn!(error = %e, "outbox not read");
                            break;
                        }
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => {
                        publisher.close().await;
                        return Ok(());
                    }
                    () = wake.notified() => {}
                    () = tokio::time::sleep(poll) => {}
                }
            }
        };
        let ended = session.await;
        if !supervisor.ended(conn, ended).await {
            return;
        }
    }
}

/// Publishes one batch: every message is sent before any confirm is awaited, so a
/// batch costs one round trip. Returns how many rows were published.
async fn drain_once(pool: &PgPool, publisher: &Publisher, batch: i64) -> Result<usize, RelayError> {
    let rows = blocking(pool, move |conn| store::claim_outbox(conn, batch)).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut pending = Vec::with_capacity(rows.len());
    let mut failure = None;
    for row in &rows {
        let mut headers = FieldTable::default();
        if let Some(traceparent) = &row.traceparent {
            // The act that queued the message goes on in its publication (a producer
            // span), whose context the message carries.
            let parent = trace::context_of(Some(traceparent));
            let span = trace::message_span(trace::Messaging::Send, &row.exchange, &row.reference, parent);
            trace::inject(&span, &mut headers);
        }
        let started = publisher
            .start(Outgoing {
                exchange: &row.exchange,
                routing_key: &row.routing_key,
                reference: &row.reference,
                message_id: row.message_id,
                payload: &row.payload,
                headers,
                expiration_ms: None,
            })
            .await;
        match started {
            Ok(confirm) => pending.push((row.id, confirm)),
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let mut confirmed = Vec::with_capacity(pending.len());
    let mut unconfirmed: Vec<i64> =
        rows.iter().map(|r| r.id).filter(|id| !pending.iter().any(|(p, _)| p == id)).collect();
    for (id, confirm) in pending {
        match confirm.await {
            Ok(()) => confirmed.push(id),
            Err(e) => {
                unconfirmed.push(id);
                failure.get_or_insert(e);
            }
        }
    }
    let published = confirmed.len();
    blocking(pool, move |conn| {
        store::delete_outbox(conn, &confirmed)?;
        if unconfirmed.is_empty() {
            return Ok(());
        }
        store::release_outbox(conn, &unconfirmed)
    })
    .await?;
    match failure {
        Some(e) => Err(e.into()),
        None => {
            tracing::debug!(published, "outbox batch published");
            Ok(published)
        }
    }
}
