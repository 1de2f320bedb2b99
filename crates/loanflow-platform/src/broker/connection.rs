//! Connecting to the broker, and the backoff between attempts.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use super::BrokerError;
use crate::settings::BrokerSettings;

pub async fn connect(settings: &BrokerSettings) -> Result<Connection, BrokerError> {
    Ok(Connection::connect(&settings.url, ConnectionProperties::default()).await?)
}

/// Connects, retrying with exponential backoff until it succeeds or `shutdown` fires
/// (then `None`).
pub async fn connect_with_backoff(settings: &BrokerSettings, shutdown: &CancellationToken) -> Option<Connection> {
    let mut backoff = Backoff::new(settings);
    loop {
        match connect(settings).await {
            Ok(conn) => return Some(conn),
            Err(e) => {
                let wait = backoff.next_delay();
                tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64, "broker unreachable");
                if !pause_unless_stopped(wait, shutdown).await {
                    return None;
                }
            }
        }
    }
}

/// Exponential backoff between reconnection attempts.
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(settings: &BrokerSettings) -> Backoff {
        let initial = Duration::from_millis(settings.reconnect_initial_ms.max(1));
        Backoff { next: initial, initial, max: Duration::from_millis(settings.reconnect_max_ms.max(1)) }
    }

    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        now
    }

    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Sleeps `wait` unless `shutdown` fires first; `false` when it did.
pub async fn pause_unless_stopped(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}
