//! The time human-level timers run on (claims, escalation): the system's clock, which a
//! test may move forward. The timers themselves live in the database, so a restart of
//! any service loses none; only what "now" is comes from here. The clock is shared by
//! every clone of the settings, so services started from the same settings agree.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};

#[derive(Debug, Clone, Default)]
pub struct Clock {
    /// How far ahead of the system's clock this one runs, in milliseconds.
    ahead_ms: Arc<AtomicI64>,
}

impl Clock {
    pub fn now(&self) -> DateTime<Utc> {
        Utc::now() + chrono::Duration::milliseconds(self.ahead_ms.load(Ordering::Relaxed))
    }

    /// Moves this clock (and every clone) forward, as if `by` had passed.
    pub fn advance(&self, by: std::time::Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.ahead_ms.fetch_add(ms, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_advanced_clock_is_ahead_in_every_clone() {
        let clock = Clock::default();
        let clone = clock.clone();
        clock.advance(std::time::Duration::from_secs(3600));
        let ahead = clone.now() - Utc::now();
        assert!(ahead >= chrono::Duration::minutes(59) && ahead <= chrono::Duration::minutes(61));
    }
}
