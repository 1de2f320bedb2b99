//! The ledger: the last step of every chain. It books each approved loan (terms,
//! offer, the decisions that approved it) in its own tables, exactly once however
//! often the message arrives, and only then announces the status `approved`.
//!
//! It books only what the chain approved: the offer is re-derived from the rules and
//! the application's amount, term and score ([`loanflow_domain::booking`]), and a
//! reference already booked with other terms is refused, never silently kept.

mod schema;
pub mod twin;

use chrono::Utc;
use diesel::prelude::*;
use diesel_migrations::embed_migrations;
use tokio_util::sync::CancellationToken;

use loanflow_domain::booking::bookable;
use loanflow_domain::messages::{StatusEvent, WorkItem, WorkMessage, LEDGER_STEP};
use loanflow_domain::rules::{Offer, UnderwritingPolicy};
use loanflow_domain::{Reference, Status};
use std::collections::HashSet;

use loanflow_platform::broker::access::{self, Senders};
use loanflow_platform::broker::{self, step_queue, Answers, Batch, Disposition, Publisher};
use loanflow_platform::db::{self, blocking, DbError, PgPool};
use loanflow_platform::service;
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;
use rust_decimal::Decimal;

/// The service's schema. A booked loan is never changed or removed by the service.
pub const SCHEMA: db::SchemaDefinition =
    db::SchemaDefinition { migrations: embed_migrations!("../../schema/ledger"), append_only: &["loans"] };

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("ledger database: {0}")]
    Database(#[from] DbError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error(transparent)]
    Health(#[from] service::ListenError),
    #[error("the synchronous twin needs twin.secret to be set")]
    NoTwinSecret,
}

pub async fn start(mut settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    settings.broker = settings.broker.acting_as(access::LEDGER);
    let pool = db::migrated_pool(&settings.ledger.database, SCHEMA).await?;
    let policy = settings.levels.underwriting.clone();
    let consumer = service::Consumer {
        queue: step_queue(LEDGER_STEP),
        senders: Senders::of(&settings.broker, access::Queue::Ledger),
        health_listen: settings.ledger.health_listen.clone(),
    };
    let running = service::start(
        settings,
        consumer,
        shutdown,
        |_| {},
        move |batch, publisher| book_batch(pool.clone(), policy.clone(), batch, publisher),
    )?;
    tracing::info!(health = ?running.addr, "ledger started");
    Ok(running)
}

/// Books a delivery batch: every checked loan in one statement, then every `approved`
/// event in status messages of up to 32 events, their confirms awaited together. The `loans` primary key makes a
/// redelivered booking a no-op, so the ledger needs no inbox of its own.
async fn book_batch(pool: PgPool, policy: UnderwritingPolicy, batch: Batch, publisher: Publisher) -> Vec<Disposition> {
    let mut answers = Answers::for_batch(&batch);
    let mut loans = Vec::new();
    for (index, envelope) in answers.decode::<WorkMessage>(&batch) {
        let incoming = &batch[index];
        let reference = envelope.reference;
        let WorkMessage::V1(work) = envelope.body else {
            answers.set(index, Disposition::DeadLetter("an approver's decision reached the ledger".into()));
            continue;
        };
        if let Err(why) = bookable(&work, &policy) {
            tracing::warn!(security_event = "booking_refused", %reference, %why, "loan not booked");
            answers.set(index, Disposition::DeadLetter(why));
            continue;
        }
        loans.push((index, reference, work, incoming.is_last_attempt()));
    }
    if loans.is_empty() {
        return answers.into_dispositions();
    }
    let to_book: Vec<(Reference, WorkItem)> = loans.iter().map(|(_, r, w, _)| (r.clone(), w.clone())).collect();
    let booked = blocking(&pool, move |conn| conn.transaction(|conn| insert_loans(conn, &to_book))).await;
    let bookings = match booked {
        Ok(bookings) => bookings,
        Err(e) => {
            tracing::warn!(error = %e, loans = loans.len(), "loans not booked");
            for (index, reference, work, last_attempt) in loans {
                if last_attempt {
                    announce(&publisher, &reference, work.decisions.len(), Status::Failed, None).await.ok();
                }
                answers.set(index, Disposition::Retry(e.to_string()));
            }
            return answers.into_dispositions();
        }
    };
    let mut events = Vec::new();
    let mut announced = Vec::new();
    for ((index, reference, work, _), booking) in loans.into_iter().zip(bookings) {
        match booking {
            Booking::New => tracing::info!(%reference, "loan booked"),
            // Booked by an earlier delivery that stopped before announcing it.
            Booking::AlreadyBooked => tracing::info!(%reference, "loan was already booked; announcing it"),
            Booking::Conflict => {
                tracing::warn!(security_event = "booking_refused", %reference, "a loan with other terms is booked under this reference");
                let why = "a loan with other terms is already booked under this reference";
                answers.set(index, Disposition::DeadLetter(why.into()));
                continue;
            }
        }
        let event = StatusEvent {
            offer: work.offer.clone(),
            ..StatusEvent::progress(work.decisions.len(), Status::Approved, None, Utc::now())
        }
        .with_decisions(&work.decisions);
        events.push((reference, event));
        announced.push(index);
    }
    let sent = match broker::start_statuses(&publisher, events).await {
        Ok(confirms) => broker::confirmed(confirms).await,
        Err(e) => Err(e),
    };

    let answer = match sent {
        Ok(()) => Disposition::Ack,
        Err(e) => {
            tracing::warn!(error = %e, "booked, but the status was not confirmed");
            Disposition::Requeue
        }
    };
    for index in announced {
        answers.set(index, answer.clone());
    }
    answers.into_dispositions()
}

async fn announce(
    publisher: &Publisher,
    reference: &Reference,
    decided: usize,
    status: Status,
    offer: Option<Offer>,
) -> Result<(), broker::BrokerError> {
    let event = StatusEvent { offer, ..StatusEvent::progress(decided, status, None, Utc::now()) };
    broker::send_status(publisher, reference, event).await
}

/// What an insert of a checked loan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Booking {
    New,
    /// The same loan was booked before (a redelivery).
    AlreadyBooked,
    /// Another loan is booked under this reference: refused.
    Conflict,
}

/// Inserts the loans of work items that [`bookable`] accepted, each once, in one
/// statement (rows in reference order, so concurrent batches lock alike); what each
/// insert found, in the order given. A reference booked before is compared with the
/// new terms: only a redelivery of the same loan is [`Booking::AlreadyBooked`].
pub(crate) fn insert_loans(conn: &mut PgConnection, loans: &[(Reference, WorkItem)]) -> Result<Vec<Booking>, DbError> {
    use schema::loans;
    type Terms = (String, Decimal, Decimal, i32, Decimal);
    let terms = |reference: &Reference, offer: &Offer| -> Terms {
        let term = i32::from(offer.term_months);
        (
            reference.as_str().to_owned(),
            offer.amount.as_decimal(),
            offer.annual_rate,
            term,
            offer.monthly_payment.as_decimal(),
        )
    };
    let mut rows = Vec::with_capacity(loans.len());
    let mut sorted: Vec<&(Reference, WorkItem)> = loans.iter().collect();
    sorted.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    for (reference, work) in sorted {
        let Some(offer) = &work.offer else { continue };
        let decisions = serde_json::to_value(&work.decisions).map_err(|e| DbError::Encode(e.to_string()))?;
        rows.push((
            loans::reference.eq(reference.as_str().to_owned()),
            loans::amount.eq(offer.amount.as_decimal()),
            loans::currency.eq(work.application.currency.code()),
            loans::annual_rate.eq(offer.annual_rate),
            loans::term_months.eq(i32::from(offer.term_months)),
            loans::monthly_payment.eq(offer.monthly_payment.as_decimal()),
            loans::decisions.eq(decisions),
            loans::submitted_at.eq(work.submitted_at),
        ));
    }
    let inserted: HashSet<String> = diesel::insert_into(loans::table)
        .values(rows)
        .on_conflict_do_nothing()
        .returning(loans::reference)
        .get_results::<String>(conn)?
        .into_iter()
        .collect();
    let earlier: Vec<&str> = loans.iter().map(|(r, _)| r.as_str()).filter(|r| !inserted.contains(*r)).collect();
    let booked: HashSet<Terms> = if earlier.is_empty() {
        HashSet::new()
    } else {
        loans::table
            .filter(loans::reference.eq_any(&earlier))
            .select((loans::reference, loans::amount, loans::annual_rate, loans::term_months, loans::monthly_payment))
            .load::<Terms>(conn)?
            .into_iter()
            .collect()
    };
    Ok(loans
        .iter()
        .map(|(reference, work)| match &work.offer {
            _ if inserted.contains(reference.as_str()) => Booking::New,
            Some(offer) if booked.contains(&terms(reference, offer)) => Booking::AlreadyBooked,
            _ => Booking::Conflict,
        })
        .collect())
}
