//! The status projection: consumes the status events every other service publishes
//! and keeps the intake's view of each application current.
//!
//! A delivery batch is applied in one statement ([`store::apply_events`]: one round trip, one
//! commit, for the whole batch), its rows in reference order so that two batches in
//! progress at once lock rows alike and cannot deadlock. Each event is guarded by its
//! sequence number, so the order of events across batches does not matter.

use loanflow_domain::messages::{ReferencedStatus, StatusEvent, StatusMessage};
use loanflow_domain::Reference;
use loanflow_platform::broker::{Answers, Batch, Disposition};
use loanflow_platform::db::{blocking, PgPool};

use crate::store;

pub async fn handle_batch(pool: PgPool, batch: Batch) -> Vec<Disposition> {
    let mut answers = Answers::for_batch(&batch);
    // A message may carry the events of a whole batch of another service: each event
    // remembers the delivery it came in.
    let mut events: Vec<(usize, Reference, StatusEvent)> = Vec::with_capacity(batch.len());
    // Each event's application trace gains a span for its projection, open until the
    // batch is applied.
    let mut spans = Vec::with_capacity(batch.len());
    for (index, envelope) in answers.decode::<StatusMessage>(&batch) {
        for item in envelope.body.into_events(envelope.reference) {
            spans.push(projection_span(&batch[index].span, &item));
            events.push((index, item.reference, item.event));
        }
    }
    events.sort_by(|a, b| a.1.as_str().cmp(b.1.as_str()).then(a.2.seq.cmp(&b.2.seq)));
    let applied = blocking(&pool, move |conn| {
        let together = store::apply_events(conn, events.iter().map(|(_, r, e)| (r, e)));
        Ok(match together {
            Ok(known) => events.iter().map(|(index, r, _)| (*index, Ok(known.contains(r.as_str())))).collect(),
            // One event the database refuses must not hold its batch-mates back: each
            // is tried on its own, and only what fails again is retried.
            Err(e) => {
                tracing::warn!(error = %e, events = events.len(), "status batch not applied; applying one by one");
                events
                    .iter()
                    .map(|(index, reference, event)| {
                        let known = store::apply_events(conn, [(reference, event)]);
                        (*index, known.map(|known| !known.is_empty()))
                    })
                    .collect::<Vec<_>>()
            }
        })
    })
    .await;
    drop(spans);
    match applied {
        Ok(applied) => {
            // A delivery's answer is the worst of its events': a failure retries it
            // (the events applied already are skipped by their sequence numbers), and
            // it is dead-lettered only if none of its events belongs to a known
            // application.
            let mut known = vec![false; batch.len()];
            let mut failed: Vec<Option<String>> = vec![None; batch.len()];
            for (index, applied) in applied {
                match applied {
                    Ok(true) => known[index] = true,
                    Ok(false) => tracing::warn!("status event for an unknown reference"),
                    Err(e) => failed[index] = Some(e.to_string()),
                }
            }
            answers.fill(|index| match (&failed[index], known[index]) {
                (Some(e), _) => Disposition::Retry(e.clone()),
                (None, true) => Disposition::Ack,
                (None, false) => Disposition::DeadLetter("status event for an unknown reference".into()),
            });
        }
        // No connection at all: the whole batch waits for the database.
        Err(e) => {
            tracing::warn!(error = %e, "status events not applied");
            answers.fill(|_| Disposition::Retry(e.to_string()));
        }
    }
    answers.into_dispositions()
}

/// The span of one event's projection: in its delivery's trace for a message of one
/// event, in the event's own for an item of a batch message (whose delivery's trace is
/// the publishing batch's).
fn projection_span(delivery: &tracing::Span, item: &ReferencedStatus) -> tracing::Span {
    let (reference, seq, status) = (item.reference.as_str(), item.event.seq, item.event.status.as_str());
    match &item.traceparent {
        Some(parent) => {
            let span = tracing::info_span!(parent: None, "project status", reference, seq, status);
            loanflow_platform::trace::continue_trace(&span, loanflow_platform::trace::context_of(Some(parent)));
            span
        }
        None => tracing::info_span!(parent: delivery, "project status", reference, seq, status),
    }
}
