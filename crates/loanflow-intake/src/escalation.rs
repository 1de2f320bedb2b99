//! The escalation timer of waiting cases. It is the `awaiting` row itself (since when a
//! case waits, and whether it was escalated): this task only looks, every
//! `intake.escalation_poll_ms`, for cases older than `levels.manager.escalate_after`
//! and escalates them in one statement. Nothing waits in memory or on the broker, so a
//! restart of any service loses no timer, and several intakes may run it at once (a
//! case is escalated once, by whichever gets there first).

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use loanflow_platform::clock::Clock;
use loanflow_platform::db::{blocking, PgPool};

pub async fn run(pool: PgPool, clock: Clock, after: chrono::Duration, every: Duration, shutdown: CancellationToken) {
    let mut rounds = tokio::time::interval(every.max(Duration::from_millis(50)));
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reason = format!("waiting longer than {}: escalated", humanise(after));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = rounds.tick() => {}
        }
        let (now, reason) = (clock.now(), reason.clone());
        match blocking(&pool, move |conn| crate::cases::escalate_due(conn, now, now - after, &reason)).await {
            Ok(0) => {}
            Ok(escalated) => tracing::info!(escalated, "waiting cases escalated"),
            Err(e) => tracing::warn!(error = %e, "escalation check failed; trying again later"),
        }
    }
}

/// `4h`, `90m`, `45s`: the largest whole unit.
fn humanise(d: chrono::Duration) -> String {
    let s = d.num_seconds();
    match s {
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(super::humanise(chrono::Duration::hours(4)), "4h");
        assert_eq!(super::humanise(chrono::Duration::minutes(90)), "90m");
        assert_eq!(super::humanise(chrono::Duration::seconds(45)), "45s");
    }
}
