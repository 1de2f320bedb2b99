//! The ledger of the synchronous twin (`loanflow twin ledger`): the same checks and
//! the same single insert as the queue consumer, answered over HTTP on the twin's own
//! listener, behind its secret. Never mounted by `loanflow ledger`.

use actix_web::{web, HttpResponse};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_domain::booking::bookable;
use loanflow_domain::messages::WorkItem;
use loanflow_domain::rules::UnderwritingPolicy;
use loanflow_domain::Reference;
use loanflow_platform::db::{self, blocking, PgPool};
use loanflow_platform::shutdown::Running;
use loanflow_platform::{twin, Settings};

use crate::{insert_loans, Booking, StartError, SCHEMA};

struct TwinLedger {
    pool: PgPool,
    policy: UnderwritingPolicy,
}

/// Migrates the ledger's schema and serves `POST /api/loans/{reference}` on `twin.listen`.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    if !settings.twin.secret.is_set() {
        return Err(StartError::NoTwinSecret);
    }
    let pool = db::migrated_pool(&settings.ledger.database, SCHEMA).await?;
    let ledger = web::Data::new(TwinLedger { pool, policy: settings.levels.underwriting.clone() });
    let routes = move |cfg: &mut web::ServiceConfig| {
        cfg.app_data(ledger.clone()).route("/loans/{reference}", web::post().to(book));
    };
    let tasks = TaskTracker::new();
    let listen = settings.twin.listen.clone();
    let addr = twin::serve(&settings.twin, 2, routes, shutdown, &tasks)
        .ok_or(StartError::NoTwinSecret)?
        .map_err(|e| StartError::Listen(listen, e))?;
    tracing::info!(%addr, "twin ledger listening");
    Ok(Running::new(Some(addr), tasks))
}

async fn book(path: web::Path<String>, body: web::Json<WorkItem>, ledger: web::Data<TwinLedger>) -> HttpResponse {
    let work = body.into_inner();
    let Ok(reference) = Reference::parse(&path) else {
        return HttpResponse::NotFound()
            .json(serde_json::json!({"error": "not_found", "message": "not a loan reference"}));
    };
    if let Err(why) = bookable(&work, &ledger.policy) {
        tracing::warn!(security_event = "booking_refused", %reference, %why, "loan not booked");
        return HttpResponse::UnprocessableEntity().json(serde_json::json!({"error": "not_bookable", "message": why}));
    }
    let booked = blocking(&ledger.pool, move |conn| insert_loans(conn, &[(reference, work)])).await;
    match booked.map(|b| b.first().copied().unwrap_or(Booking::Conflict)) {
        Ok(Booking::Conflict) => HttpResponse::Conflict().json(
            serde_json::json!({"error": "conflict", "message": "a loan with other terms is booked under this reference"}),
        ),
        Ok(booking) => HttpResponse::Ok().json(serde_json::json!({"booked": true, "first_time": booking == Booking::New})),
        Err(e) => HttpResponse::ServiceUnavailable()
            .json(serde_json::json!({"error": "unavailable", "message": e.to_string()})),
    }
}
