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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;

    /// On tokio's paused clock: the sweep runs at once, then once per period, a failed
    /// round is simply followed by the next, and shutdown ends it.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_runs_at_start_then_every_period_until_shutdown() {
        let rounds = Arc::new(AtomicUsize::new(0));
        let stop = CancellationToken::new();
        let counted = rounds.clone();
        let task = tokio::spawn(super::every(Duration::from_secs(3600), "test", stop.clone(), move || {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            async move {
                if n == 1 {
                    Err(crate::db::DbError::Unavailable("down for a round".into()))
                } else {
                    Ok(n)
                }
            }
        }));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 1, "once at start");
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 2, "once an hour later");
        tokio::time::sleep(Duration::from_secs(2 * 3600)).await;
        assert_eq!(rounds.load(Ordering::SeqCst), 4, "a failed round does not stop it");
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("stops at shutdown").unwrap();
    }
}
