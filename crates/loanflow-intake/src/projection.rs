//! The status projection: consumes the status events every other service publishes
//! and keeps the intake's view of each application current.

use loanflow_domain::messages::{Envelope, StatusMessage};
use loanflow_platform::broker::{Disposition, Incoming};
use loanflow_platform::db::{blocking, PgPool};

use crate::store::{self, Applied};

pub async fn handle(pool: PgPool, incoming: Incoming) -> Disposition {
    let envelope = match Envelope::<StatusMessage>::decode(&incoming.data) {
        Ok(e) => e,
        Err(e) => return Disposition::DeadLetter(e.to_string()),
    };
    let StatusMessage::V1(event) = envelope.body;
    let reference = envelope.reference;
    let status = event.status;
    match blocking(&pool, move |conn| store::apply_event(conn, &reference, &event)).await {
        Ok(Applied::Advanced) => {
            tracing::info!(%status, "status updated");
            Disposition::Ack
        }
        Ok(Applied::Unchanged) => {
            tracing::debug!(%status, "stale or repeated status event ignored");
            Disposition::Ack
        }
        Ok(Applied::UnknownReference) => Disposition::DeadLetter("status event for an unknown reference".into()),
        Err(e) => {
            tracing::warn!(error = %e, "status event not applied");
            Disposition::Retry(e.to_string())
        }
    }
}
