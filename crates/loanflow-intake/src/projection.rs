//! The status projection: consumes the status events every other service publishes
//! and keeps the intake's view of each application current.
//!
//! A delivery batch is applied in one transaction (one commit, one WAL flush, for the
//! whole batch), its events in reference order so that two batches in progress at once
//! lock rows alike and cannot deadlock. Each event is guarded by its sequence number,
//! so the order of events across batches does not matter.

use diesel::Connection;

use loanflow_domain::messages::{Envelope, StatusEvent, StatusMessage};
use loanflow_domain::Reference;
use loanflow_platform::broker::{Batch, Disposition};
use loanflow_platform::db::{blocking, DbError, PgPool};

use crate::store::{self, Applied};

pub async fn handle_batch(pool: PgPool, batch: Batch) -> Vec<Disposition> {
    let mut answers: Vec<Option<Disposition>> = vec![None; batch.len()];
    let mut events: Vec<(usize, Reference, StatusEvent)> = Vec::with_capacity(batch.len());
    for (index, incoming) in batch.iter().enumerate() {
        match Envelope::<StatusMessage>::decode(&incoming.data) {
            Ok(envelope) => {
                let StatusMessage::V1(event) = envelope.body;
                events.push((index, envelope.reference, event));
            }
            Err(e) => answers[index] = Some(Disposition::DeadLetter(e.to_string())),
        }
    }
    events.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()).then(a.2.seq.cmp(&b.2.seq)));
    let applied = blocking(&pool, move |conn| {
        let together: Result<Vec<Applied>, DbError> = conn.transaction(|conn| {
            events.iter().map(|(_, reference, event)| store::apply_event(conn, reference, event)).collect()
        });
        Ok(match together {
            Ok(applied) => events.iter().map(|(index, _, _)| *index).zip(applied.into_iter().map(Ok)).collect(),
            // One event the database refuses must not hold its batch-mates back: each
            // is tried on its own, and only what fails again is retried.
            Err(e) => {
                tracing::warn!(error = %e, events = events.len(), "status batch not applied; applying one by one");
                events
                    .iter()
                    .map(|(index, reference, event)| (*index, store::apply_event(conn, reference, event)))
                    .collect::<Vec<_>>()
            }
        })
    })
    .await;
    match applied {
        Ok(applied) => {
            for (index, applied) in applied {
                answers[index] = Some(match applied {
                    Ok(Applied::Advanced | Applied::Unchanged) => Disposition::Ack,
                    Ok(Applied::UnknownReference) => {
                        Disposition::DeadLetter("status event for an unknown reference".into())
                    }
                    Err(e) => Disposition::Retry(e.to_string()),
                });
            }
        }
        // No connection at all: the whole batch waits for the database.
        Err(e) => {
            tracing::warn!(error = %e, "status events not applied");
            for answer in answers.iter_mut().filter(|a| a.is_none()) {
                *answer = Some(Disposition::Retry(e.to_string()));
            }
        }
    }
    answers.into_iter().map(|a| a.unwrap_or(Disposition::Requeue)).collect()
}
