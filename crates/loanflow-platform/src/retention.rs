//! The retention sweep: state that only guards against redelivery (inbox entries,
//! idempotency keys) is removed once no redelivery can need it, so that those tables
//! stop growing with every application ever handled.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::db::DbError;

/// Runs `sweep` at once and then every `every`, until `shutdown`. A failure (the
/// database is away) is logged and simply tried again at the next round.
pub async fn every<F, Fut>(every: Duration, what: &'static str, shutdown: CancellationToken, mut sweep: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<usize, DbError>>,
{
    let mut rounds = tokio::time::interval(every.max(Duration::from_secs(1)));
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = rounds.tick() => {}
        }
        match sweep().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(what, removed, "retention sweep"),
            Err(e) => tracing::warn!(what, error = %e, "retention sweep failed; trying again later"),
        }
    }
}

/// The moment before which `days`-old state is forgotten.
pub fn cutoff_days(days: u32) -> chrono::DateTime<chrono::Utc> {
    chrono::Utc::now() - chrono::Duration::days(i64::from(days))
}
