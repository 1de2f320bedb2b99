//! Operators' acts that the intake performs for them, each written to its audit trail:
//! today the dead-letter replay (`loanflow dlq replay`; the operations page will call
//! the same).

use loanflow_platform::audit::{self, Act};
use loanflow_platform::broker::BrokerError;
use loanflow_platform::db::{self, blocking, DbError};
use loanflow_platform::Settings;

/// Why a replay could not be done or recorded.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("replaying: {0}")]
    Broker(#[from] BrokerError),
    #[error("recording the replay in the audit trail: {0}")]
    Audit(#[from] DbError),
}

/// Replays the dead letters of `reference` (all of them without one) as `operator`, and
/// records in the intake's audit trail who replayed which, and how many.
pub async fn replay_dead_letters(
    settings: &Settings,
    operator: &str,
    reference: Option<&str>,
) -> Result<usize, ReplayError> {
    let replayed = loanflow_platform::dlq::replay(settings, reference).await?;
    let pool = db::pool(&settings.intake.database);
    let (actor, reference, now) = (format!("operator:{operator}"), reference.map(str::to_owned), settings.clock.now());
    blocking(&pool, move |conn| {
        let detail = serde_json::json!({ "replayed": replayed, "all": reference.is_none() });
        let act = Act { actor: &actor, action: "dead_letter_replay", reference: reference.as_deref(), detail };
        audit::record(conn, &act, now)
    })
    .await?;
    Ok(replayed)
}
