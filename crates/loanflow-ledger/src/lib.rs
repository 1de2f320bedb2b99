//! The ledger: the last step of every chain. It books each approved loan (terms,
//! offer, the decisions that approved it) in its own tables, exactly once however
//! often the message arrives, and only then announces the status `approved`.
//!
//! It books only what the chain approved: the offer is re-derived from the rules and
//! the application's amount, term and score ([`loanflow_domain::booking`]), and a
//! reference already booked with other terms is refused, never silently kept.
//!
//! It also decides the race between a booking and the applicant's withdrawal: whichever
//! it records first wins, and the other is refused (a withdrawn application is never
//! booked; a withdrawal after the booking changes nothing).

mod schema;
pub mod twin;

use chrono::Utc;
use diesel::prelude::*;
use diesel_migrations::embed_migrations;
use tokio_util::sync::CancellationToken;
use tracing::Span;

use loanflow_domain::booking::bookable;
use loanflow_domain::messages::{StatusEvent, Withdrawal, WorkItem, WorkMessage, LEDGER_STEP};
use loanflow_domain::rules::{Offer, UnderwritingPolicy};
use loanflow_domain::{Reference, Status};
use std::collections::HashSet;
use std::sync::Arc;

use loanflow_platform::broker::access::{self, Senders};
use loanflow_platform::broker::{self, step_queue, Answers, Batch, Disposition, Publisher};
use loanflow_platform::db::{self, blocking, DbError, PgPool};
use loanflow_platform::service;
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;
use rust_decimal::Decimal;

/// The service's schema. A booked loan is never changed or removed by the service.
pub const SCHEMA: db::SchemaDefinition = db::SchemaDefinition {
    migrations: embed_migrations!("../../schema/ledger"),
    append_only: &["loans", "withdrawals"],
};

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
    let ledger = Arc::new(Ledger {
        pool,
        policy: settings.levels.underwriting.clone(),
        // Work to book comes from the levels; withdrawals from the intake, where the
        // applicant asks for them. Neither may send the other.
        bookers: Senders::of(&settings.broker, access::Queue::Ledger),
        withdrawers: Senders::just(&settings.broker, vec![access::INTAKE.to_owned()]),
    });
    let consumer = service::Consumer {
        queue: step_queue(LEDGER_STEP),
        senders: Senders::just(
            &settings.broker,
            access::senders_for(access::Queue::Ledger).into_iter().chain([access::INTAKE.to_owned()]).collect(),
        ),
        health_listen: settings.ledger.health_listen.clone(),
    };
    let running = service::start(
        settings,
        consumer,
        shutdown,
        |_| {},
        move |batch, publisher| {
            let ledger = ledger.clone();
            async move { ledger.handle_batch(batch, publisher).await }
        },
    )?;
    tracing::info!(health = ?running.addr, "ledger started");
    Ok(running)
}

struct Ledger {
    pool: PgPool,
    policy: UnderwritingPolicy,
    bookers: Senders,
    withdrawers: Senders,
}

/// A loan to book, from a delivery of the batch.
struct ToBook {
    index: usize,
    reference: Reference,
    work: WorkItem,
    last_attempt: bool,
    /// Its delivery's span: the application's trace.
    span: Span,
}

/// A withdrawal to record, from a delivery of the batch.
struct ToWithdraw {
    index: usize,
    reference: Reference,
    withdrawal: Withdrawal,
    span: Span,
}

impl Ledger {
    /// Handles a delivery batch in one transaction: every checked loan booked in one
    /// statement unless its application was withdrawn, every withdrawal recorded unless
    /// its loan was booked, both under a lock per reference so that a booking and a
    /// withdrawal of one application never both happen. Then every `approved` and
    /// `withdrawn` event is announced, in status messages of up to 32 events, their
    /// confirms awaited together. The primary keys make a redelivery a no-op, so the
    /// ledger needs no inbox of its own.
    async fn handle_batch(&self, batch: Batch, publisher: Publisher) -> Vec<Disposition> {
        let mut answers = Answers::for_batch(&batch);
        let mut loans = Vec::new();
        let mut withdrawals = Vec::new();
        for (index, envelope) in answers.decode::<WorkMessage>(&batch) {
            let (sender, span) = (batch[index].sender.as_deref(), batch[index].span.clone());
            let reference = envelope.reference;
            let allowed = match &envelope.body {
                WorkMessage::V1(_) => self.bookers.allows(sender),
                WorkMessage::WithdrawalV1(_) => self.withdrawers.allows(sender),
                WorkMessage::ApprovalV1(_) => true,
            };
            if !allowed {
                let sender = sender.unwrap_or("nobody");
                tracing::warn!(security_event = "message_refused", %reference, %sender, "a message from a sender that may not send it to the ledger");
                answers
                    .set(index, Disposition::DeadLetter(format!("refused: {sender} may not send this to the ledger")));
                continue;
            }
            match envelope.body {
                WorkMessage::V1(work) => match bookable(&work, &self.policy) {
                    Ok(_) => loans.push(ToBook {
                        index,
                        reference,
                        work,
                        last_attempt: batch[index].is_last_attempt(),
                        span,
                    }),
                    Err(why) => {
                        tracing::warn!(security_event = "booking_refused", %reference, %why, "loan not booked");
                        answers.set(index, Disposition::DeadLetter(why));
                    }
                },
                WorkMessage::WithdrawalV1(withdrawal) => {
                    withdrawals.push(ToWithdraw { index, reference, withdrawal, span })
                }
                WorkMessage::ApprovalV1(_) => {
                    answers.set(index, Disposition::DeadLetter("an approver's decision reached the ledger".into()))
                }
            }
        }
        if loans.is_empty() && withdrawals.is_empty() {
            return answers.into_dispositions();
        }
        let to_book: Vec<(Reference, WorkItem)> = loans.iter().map(|l| (l.reference.clone(), l.work.clone())).collect();
        let to_withdraw: Vec<(Reference, Withdrawal)> =
            withdrawals.iter().map(|w| (w.reference.clone(), w.withdrawal.clone())).collect();
        let settled =
            blocking(&self.pool, move |conn| conn.transaction(|conn| settle(conn, &to_book, &to_withdraw))).await;
        let (bookings, booked_first) = match settled {
            Ok(settled) => settled,
            Err(e) => {
                tracing::warn!(error = %e, loans = loans.len(), withdrawals = withdrawals.len(), "batch not recorded");
                for loan in loans {
                    if loan.last_attempt {
                        announce_failure(&publisher, &loan.reference, loan.work.decisions.len(), &loan.span).await;
                    }
                    answers.set(loan.index, Disposition::Retry(e.to_string()));
                }
                for w in withdrawals {
                    answers.set(w.index, Disposition::Retry(e.to_string()));
                }
                return answers.into_dispositions();
            }
        };
        let mut events = Vec::new();
        let mut announced = Vec::new();
        for (loan, booking) in loans.into_iter().zip(bookings) {
            let reference = loan.reference;
            let _entered = loan.span.enter();
            match booking {
                Booking::New => tracing::info!(%reference, "loan booked"),
                // Booked by an earlier delivery that stopped before announcing it.
                Booking::AlreadyBooked => tracing::info!(%reference, "loan was already booked; announcing it"),
                Booking::Withdrawn => {
                    tracing::info!(%reference, "not booked: the applicant withdrew the application first");
                    answers.set(loan.index, Disposition::Ack);
                    continue;
                }
                Booking::Conflict => {
                    tracing::warn!(security_event = "booking_refused", %reference, "a loan with other terms is booked under this reference");
                    let why = "a loan with other terms is already booked under this reference";
                    answers.set(loan.index, Disposition::DeadLetter(why.into()));
                    continue;
                }
            }
            let event = StatusEvent {
                offer: loan.work.offer.clone(),
                ..StatusEvent::progress(loan.work.decisions.len(), Status::Approved, None, Utc::now())
            }
            .with_decisions(&loan.work.decisions);
            drop(_entered);
            events.push((reference, event, loan.span));
            announced.push(loan.index);
        }
        for w in withdrawals {
            let _entered = w.span.enter();
            if booked_first.contains(w.reference.as_str()) {
                tracing::info!(reference = %w.reference, "withdrawal too late: the loan was booked first");
                answers.set(w.index, Disposition::Ack);
                continue;
            }
            tracing::info!(reference = %w.reference, "withdrawal recorded: the loan will never be booked");
            let event = StatusEvent::withdrawn(&w.withdrawal, Utc::now());
            drop(_entered);
            events.push((w.reference, event, w.span));
            announced.push(w.index);
        }
        let sent = match broker::start_statuses(&publisher, events).await {
            Ok(confirms) => broker::confirmed(confirms).await,
            Err(e) => Err(e),
        };
        let answer = match sent {
            Ok(()) => Disposition::Ack,
            Err(e) => {
                tracing::warn!(error = %e, "recorded, but the status was not confirmed");
                Disposition::Requeue
            }
        };
        for index in announced {
            answers.set(index, answer.clone());
        }
        answers.into_dispositions()
    }
}

/// The retry budget is spent: the application becomes `failed`.
async fn announce_failure(publisher: &Publisher, reference: &Reference, decided: usize, span: &Span) {
    if let Err(e) = announce(publisher, reference, decided, Status::Failed, None, span).await {
        tracing::warn!(error = %e, "could not announce the failure");
    }
}

/// Books the loans and records the withdrawals of one batch, in the caller's
/// transaction, under a lock per reference (taken in reference order, so that batches
/// in progress at once cannot deadlock): what each booking found, and the references
/// among the withdrawals whose loan is booked.
fn settle(
    conn: &mut PgConnection,
    loans: &[(Reference, WorkItem)],
    withdrawals: &[(Reference, Withdrawal)],
) -> Result<(Vec<Booking>, HashSet<String>), DbError> {
    use schema::withdrawals as w;
    let mut references: Vec<String> = loans
        .iter()
        .map(|(r, _)| r.as_str().to_owned())
        .chain(withdrawals.iter().map(|(r, _)| r.as_str().to_owned()))
        .collect();
    references.sort();
    references.dedup();
    diesel::sql_query(
        "SELECT pg_advisory_xact_lock(hashtextextended('loanflow.ledger/' || r, 0))          FROM unnest($1::text[]) AS r ORDER BY r",
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(&references)
    .execute(conn)?;
    let loan_refs: Vec<&str> = loans.iter().map(|(r, _)| r.as_str()).collect();
    let withdrawn: HashSet<String> = w::table
        .filter(w::reference.eq_any(&loan_refs))
        .select(w::reference)
        .load::<String>(conn)?
        .into_iter()
        .collect();
    let bookable: Vec<(Reference, WorkItem)> =
        loans.iter().filter(|(r, _)| !withdrawn.contains(r.as_str())).cloned().collect();
    let mut booked = insert_loans(conn, &bookable)?.into_iter();
    let bookings = loans
        .iter()
        .map(|(r, _)| {
            if withdrawn.contains(r.as_str()) {
                Booking::Withdrawn
            } else {
                booked.next().unwrap_or(Booking::Conflict)
            }
        })
        .collect();
    if withdrawals.is_empty() {
        return Ok((bookings, HashSet::new()));
    }
    let withdrawal_refs: Vec<&str> = withdrawals.iter().map(|(r, _)| r.as_str()).collect();
    let booked_first: HashSet<String> = schema::loans::table
        .filter(schema::loans::reference.eq_any(&withdrawal_refs))
        .select(schema::loans::reference)
        .load::<String>(conn)?
        .into_iter()
        .collect();
    let rows: Vec<_> = withdrawals
        .iter()
        .filter(|(r, _)| !booked_first.contains(r.as_str()))
        .map(|(r, wd)| {
            (w::reference.eq(r.as_str()), w::reason.eq(wd.reason.as_deref()), w::requested_at.eq(wd.requested_at))
        })
        .collect();
    if !rows.is_empty() {
        diesel::insert_into(w::table).values(rows).on_conflict_do_nothing().execute(conn)?;
    }
    Ok((bookings, booked_first))
}

async fn announce(
    publisher: &Publisher,
    reference: &Reference,
    decided: usize,
    status: Status,
    offer: Option<Offer>,
    span: &Span,
) -> Result<(), broker::BrokerError> {
    let event = StatusEvent { offer, ..StatusEvent::progress(decided, status, None, Utc::now()) };
    broker::send_status(publisher, reference, event, span).await
}

/// What an insert of a checked loan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Booking {
    New,
    /// The same loan was booked before (a redelivery).
    AlreadyBooked,
    /// Another loan is booked under this reference: refused.
    Conflict,
    /// The applicant withdrew the application before it could be booked.
    Withdrawn,
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
