//! The ledger: the last step of every chain. It books each approved loan (terms,
//! offer, the decisions that approved it) in its own tables, exactly once however
//! often the message arrives, and only then announces the status `approved`.

mod schema;

use chrono::Utc;
use diesel::prelude::*;
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use actix_web::{web, HttpResponse};
use loanflow_domain::messages::{Envelope, StatusEvent, WorkItem, WorkMessage, LEDGER_STEP};
use loanflow_domain::{Outcome, Reference, Status};
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
    #[error("cannot serve health on {0}: {1}")]
    Health(String, std::io::Error),
}

pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    let pool = db::migrated_pool(&settings.ledger.database, MIGRATIONS).await?;
    let tasks = TaskTracker::new();
    let health = Health::default();
    let consuming = health.part("broker");
    let listen = settings.ledger.health_listen.clone();
    let for_http = pool.clone();
    let booking = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(web::Data::new(for_http.clone())).route("/api/loans/{reference}", web::post().to(book_http));
    };
    let addr =
        health::serve(&listen, health, booking, shutdown.clone(), &tasks).map_err(|e| StartError::Health(listen, e))?;
    tasks.spawn(broker::consume(settings, step_queue(LEDGER_STEP), consuming, shutdown, move |incoming, publisher| {
        book(pool.clone(), incoming, publisher)
    }));
    tracing::info!(health = %addr, "ledger started");
    Ok(Running::new(Some(addr), tasks))
}

async fn book(pool: PgPool, incoming: Incoming, publisher: Publisher) -> Disposition {
    let envelope = match Envelope::<WorkMessage>::decode(&incoming.data) {
        Ok(e) => e,
        Err(e) => return Disposition::DeadLetter(e.to_string()),
    };
    let (reference, message_id) = (envelope.reference, envelope.message_id);
    let WorkMessage::V1(work) = envelope.body else {
        return Disposition::DeadLetter("an approver's decision reached the ledger".into());
    };
    if let Err(why) = bookable(&work) {
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
        Ok(Some(true)) => tracing::info!("loan booked"),
        // Booked by an earlier delivery that stopped before announcing it.
        Ok(Some(false)) => tracing::info!("loan was already booked; announcing it"),
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
    offer: Option<loanflow_domain::rules::Offer>,
) -> Result<(), broker::BrokerError> {
    let event = StatusEvent { offer, ..StatusEvent::progress(decided, status, None, Utc::now()) };
    broker::send_status(publisher, reference, event).await
}

/// The synchronous twin's booking: the same checks and the same single insert as
/// the queue consumer, answered over HTTP.
async fn book_http(path: web::Path<String>, body: web::Json<WorkItem>, pool: web::Data<PgPool>) -> HttpResponse {
    let work = body.into_inner();
    let Ok(reference) = Reference::parse(&path) else {
        return HttpResponse::NotFound()
            .json(serde_json::json!({"error": "not_found", "message": "not a loan reference"}));
    };
    if let Err(why) = bookable(&work) {
        return HttpResponse::UnprocessableEntity().json(serde_json::json!({"error": "not_bookable", "message": why}));
    }
    match blocking(&pool, move |conn| insert_loan(conn, &reference, &work)).await {
        Ok(inserted) => HttpResponse::Ok().json(serde_json::json!({"booked": true, "first_time": inserted})),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": "unavailable", "message": e.to_string()})),
    }
}

/// Only a loan every level approved, with an offer, at the ledger step, is booked.
fn bookable(work: &WorkItem) -> Result<(), String> {
    if work.slip.current() != Some(LEDGER_STEP) {
        return Err(format!("message for step {:?} reached the ledger", work.slip.current()));
    }
    if work.decisions.is_empty() || work.decisions.iter().any(|d| d.outcome != Outcome::Approved) {
        return Err("only an application every level approved can be booked".into());
    }
    if work.offer.is_none() {
        return Err("an approved application reached the ledger without an offer".into());
    }
    Ok(())
}

/// Inserts the loan once; `false` if it was already booked (a redelivery).
fn insert_loan(conn: &mut PgConnection, reference: &Reference, work: &WorkItem) -> Result<bool, DbError> {
    use schema::loans;
    let Some(offer) = &work.offer else { return Ok(false) };
    let decisions = serde_json::to_value(&work.decisions).unwrap_or_default();
    let inserted = diesel::insert_into(loans::table)
        .values((
            loans::reference.eq(reference.as_str()),
            loans::amount.eq(offer.amount.as_decimal()),
            loans::currency.eq("USD"),
            loans::annual_rate.eq(offer.annual_rate),
            loans::term_months.eq(i32::from(offer.term_months)),
            loans::monthly_payment.eq(offer.monthly_payment.as_decimal()),
            loans::decisions.eq(decisions),
            loans::submitted_at.eq(work.submitted_at),
        ))
        .on_conflict_do_nothing()
        .execute(conn)?;
    Ok(inserted == 1)
}
