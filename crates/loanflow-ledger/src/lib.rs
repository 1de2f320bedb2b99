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
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_domain::booking::bookable;
use loanflow_domain::messages::{Envelope, StatusEvent, WorkItem, WorkMessage, LEDGER_STEP};
use loanflow_domain::rules::{Offer, UnderwritingPolicy};
use loanflow_domain::{Reference, Status};
use loanflow_platform::broker::{self, step_queue, Disposition, Incoming, Publisher};
use loanflow_platform::db::{self, blocking, inbox, DbError, PgPool};
use loanflow_platform::health::{self, Health};
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../schema/ledger");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("ledger database: {0}")]
    Database(#[from] DbError),
    #[error("cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("the synchronous twin needs twin.secret to be set")]
    NoTwinSecret,
}

pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    let pool = db::migrated_pool(&settings.ledger.database, MIGRATIONS).await?;
    let tasks = TaskTracker::new();
    let health = Health::default();
    let consuming = health.part("broker");
    let listen = settings.ledger.health_listen.clone();
    let addr = health::serve(&listen, health, shutdown.clone(), &tasks).map_err(|e| StartError::Listen(listen, e))?;
    let policy = settings.levels.underwriting.clone();
    tasks.spawn(broker::consume(settings, step_queue(LEDGER_STEP), consuming, shutdown, move |incoming, publisher| {
        book(pool.clone(), policy.clone(), incoming, publisher)
    }));
    tracing::info!(health = %addr, "ledger started");
    Ok(Running::new(Some(addr), tasks))
}

async fn book(pool: PgPool, policy: UnderwritingPolicy, incoming: Incoming, publisher: Publisher) -> Disposition {
    let envelope = match Envelope::<WorkMessage>::decode(&incoming.data) {
        Ok(e) => e,
        Err(e) => return Disposition::DeadLetter(e.to_string()),
    };
    let (reference, message_id) = (envelope.reference, envelope.message_id);
    let WorkMessage::V1(work) = envelope.body else {
        return Disposition::DeadLetter("an approver's decision reached the ledger".into());
    };
    if let Err(why) = bookable(&work, &policy) {
        tracing::warn!(security_event = "booking_refused", %why, "loan not booked");
        return Disposition::DeadLetter(why);
    }
    let decided = work.decisions.len();
    let offer = work.offer.clone();
    let key = reference.clone();
    let booked = blocking(&pool, move |conn| {
        if inbox::seen(conn, message_id)? {
            return Ok(None);
        }
        insert_loan(conn, &key, &work).map(Some)
    })
    .await;
    match booked {
        Ok(None) => {
            tracing::info!("duplicate delivery ignored");
            return Disposition::Ack;
        }
        Ok(Some(Booking::New)) => tracing::info!("loan booked"),
        // Booked by an earlier delivery that stopped before announcing it.
        Ok(Some(Booking::AlreadyBooked)) => tracing::info!("loan was already booked; announcing it"),
        Ok(Some(Booking::Conflict)) => {
            tracing::warn!(
                security_event = "booking_refused",
                "a loan with other terms is booked under this reference"
            );
            return Disposition::DeadLetter("a loan with other terms is already booked under this reference".into());
        }
        Err(e) => {
            tracing::warn!(error = %e, "loan not booked");
            if incoming.is_last_attempt() {
                announce(&publisher, &reference, decided, Status::Failed, None).await.ok();
            }
            return Disposition::Retry(e.to_string());
        }
    }
    if let Err(e) = announce(&publisher, &reference, decided, Status::Approved, offer).await {
        tracing::warn!(error = %e, "booked, but the status was not confirmed");
        return Disposition::Requeue;
    }
    match blocking(&pool, move |conn| inbox::record(conn, message_id)).await {
        Ok(()) => Disposition::Ack,
        Err(e) => Disposition::Retry(e.to_string()),
    }
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

/// Inserts the loan of a work item that [`bookable`] accepted, once.
pub(crate) fn insert_loan(conn: &mut PgConnection, reference: &Reference, work: &WorkItem) -> Result<Booking, DbError> {
    use schema::loans;
    let Some(offer) = &work.offer else { return Ok(Booking::Conflict) };
    let decisions = serde_json::to_value(&work.decisions).map_err(|e| DbError::Encode(e.to_string()))?;
    let inserted = diesel::insert_into(loans::table)
        .values((
            loans::reference.eq(reference.as_str()),
            loans::amount.eq(offer.amount.as_decimal()),
            loans::currency.eq(work.application.currency.code()),
            loans::annual_rate.eq(offer.annual_rate),
            loans::term_months.eq(i32::from(offer.term_months)),
            loans::monthly_payment.eq(offer.monthly_payment.as_decimal()),
            loans::decisions.eq(decisions),
            loans::submitted_at.eq(work.submitted_at),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    if inserted == 1 {
        return Ok(Booking::New);
    }
    let booked: (rust_decimal::Decimal, rust_decimal::Decimal, i32, rust_decimal::Decimal) = loans::table
        .find(reference.as_str())
        .select((loans::amount, loans::annual_rate, loans::term_months, loans::monthly_payment))
        .first(conn)?;
    let same = booked
        == (
            offer.amount.as_decimal(),
            offer.annual_rate,
            i32::from(offer.term_months),
            offer.monthly_payment.as_decimal(),
        );
    Ok(if same { Booking::AlreadyBooked } else { Booking::Conflict })
}
