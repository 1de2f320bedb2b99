//! Connecting to the broker, and the one reconnect policy every long-running broker
//! client (each consumer, the outbox relay) follows: a [`Supervisor`].
//!
//! Waits between attempts grow exponentially from `broker.reconnect_initial_ms` to
//! `broker.reconnect_max_ms`, with random jitter (backon's), so that every service a
//! broker restart disconnected does not reconnect in the same instant.

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use lapin::{Connection, ConnectionProperties};
use tokio_util::sync::CancellationToken;

use super::BrokerError;
use crate::health::Flag;
use crate::settings::BrokerSettings;

/// A session that lasted this long was healthy: the next failure starts the backoff
/// from its first wait again.
const HEALTHY_AFTER: Duration = Duration::from_secs(5);

pub async fn connect(settings: &BrokerSettings) -> Result<Connection, BrokerError> {
    connect_from(settings, 0).await.map(|(conn, _)| conn)
}

/// Connects to the first of the broker's addresses that answers, trying them in order
/// from the `start`-th (round the list): a client whose node went away goes on with the
/// next one. Returns the connection and the index of the address that answered.
pub async fn connect_from(settings: &BrokerSettings, start: usize) -> Result<(Connection, usize), BrokerError> {
    let urls = settings.connection_urls();
    let mut last = None;
    for step in 0..urls.len() {
        let index = (start + step) % urls.len();
        match Connection::connect(&urls[index], ConnectionProperties::default()).await {
            Ok(conn) => {
                if urls.len() > 1 {
                    // The address without its credentials.
                    let address = settings.addresses().get(index).copied().unwrap_or_default().to_owned();
                    tracing::info!(%address, "connected to the broker");
                }
                return Ok((conn, index));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(BrokerError::ConnectionLost, BrokerError::from))
}

/// Exponential backoff with jitter between reconnection attempts.
#[derive(Debug)]
pub struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    pub fn new(settings: &BrokerSettings) -> Backoff {
        let initial = Duration::from_millis(settings.reconnect_initial_ms.max(1));
        let max = Duration::from_millis(settings.reconnect_max_ms.max(1)).max(initial);
        let builder =
            ExponentialBuilder::new().with_min_delay(initial).with_max_delay(max).with_jitter().without_max_times();
        Backoff { delays: builder.build(), builder, max }
    }

    /// The next wait: doubling from the first, capped at the maximum, plus jitter of up
    /// to the wait itself.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max)
    }

    pub fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

/// Sleeps `wait` unless `shutdown` fires first; `false` when it did.
pub async fn pause_unless_stopped(wait: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Connects, retrying with backoff until it succeeds or `shutdown` fires (then `None`).
pub async fn connect_with_backoff(settings: &BrokerSettings, shutdown: &CancellationToken) -> Option<Connection> {
    connect_with_backoff_from(settings, shutdown, 0).await.map(|(conn, _)| conn)
}

/// [`connect_with_backoff`], trying the addresses from the `start`-th; with the index of
/// the one that answered.
async fn connect_with_backoff_from(
    settings: &BrokerSettings,
    shutdown: &CancellationToken,
    start: usize,
) -> Option<(Connection, usize)> {
    let mut backoff = Backoff::new(settings);
    loop {
        match connect_from(settings, start).await {
            Ok(connected) => return Some(connected),
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

/// Keeps one broker client connected: hands out a connection, takes it back with how
/// its session ended, and decides whether and when to connect again.
///
/// ```ignore
/// let mut supervisor = Supervisor::new(&settings.broker, "outbox relay", &health, &shutdown);
/// while let Some(conn) = supervisor.connect().await {
///     let ended = session(&conn).await;
///     if !supervisor.ended(conn, ended).await { break; }
/// }
/// ```
pub struct Supervisor<'a> {
    settings: &'a BrokerSettings,
    what: &'a str,
    health: &'a Flag,
    shutdown: &'a CancellationToken,
    backoff: Backoff,
    since: Instant,
    /// The address to try first next time: after a lost connection, the one after the
    /// address that was lost (its node may be the one that went down).
    next: usize,
    current: usize,
}

impl<'a> Supervisor<'a> {
    /// `what` names the client in logs; `health` is set false whenever it is not
    /// connected (the session sets it true once it works).
    pub fn new(
        settings: &'a BrokerSettings,
        what: &'a str,
        health: &'a Flag,
        shutdown: &'a CancellationToken,
    ) -> Supervisor<'a> {
        let backoff = Backoff::new(settings);
        Supervisor { settings, what, health, shutdown, backoff, since: Instant::now(), next: 0, current: 0 }
    }

    /// A new connection, or `None` once shutdown has fired.
    pub async fn connect(&mut self) -> Option<Connection> {
        let (conn, index) = connect_with_backoff_from(self.settings, self.shutdown, self.next).await?;
        (self.current, self.since) = (index, Instant::now());
        Some(conn)
    }

    /// Closes the session's connection. `true`: connect again (after a backoff wait);
    /// `false`: stop (the session ended cleanly, or shutdown fired while waiting).
    pub async fn ended(&mut self, conn: Connection, result: Result<(), BrokerError>) -> bool {
        self.health.set(false);
        let _ = conn.close(200, "bye".into()).await;
        let Err(e) = result else { return false };
        self.next = self.current + 1;
        if self.since.elapsed() >= HEALTHY_AFTER {
            self.backoff.reset();
        }
        let wait = self.backoff.next_delay();
        tracing::warn!(client = self.what, error = %e, retry_in_ms = wait.as_millis() as u64, "lost the broker connection");
        pause_unless_stopped(wait, self.shutdown).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On tokio's paused clock: reconnection waits double from the first, are capped
    /// (plus jitter of up to the wait itself), start over after a reset, and a pause
    /// ends early when the service stops.
    #[tokio::test(start_paused = true)]
    async fn reconnection_waits_grow_are_capped_and_stop_with_the_service() {
        let mut settings = crate::Settings::defaults().unwrap().broker;
        (settings.reconnect_initial_ms, settings.reconnect_max_ms) = (100, 1000);
        let mut backoff = Backoff::new(&settings);
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        assert!(waits[0] >= Duration::from_millis(100) && waits[0] <= Duration::from_millis(200), "{waits:?}");
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(2000)), "capped (with jitter): {waits:?}");
        assert!(waits[7] >= Duration::from_millis(1000), "reaches the cap: {waits:?}");
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(200), "starts over after a healthy session");

        let stop = CancellationToken::new();
        let started = tokio::time::Instant::now();
        assert!(pause_unless_stopped(Duration::from_secs(5), &stop).await, "a full pause");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stopper.cancel();
        });
        let started = tokio::time::Instant::now();
        assert!(!pause_unless_stopped(Duration::from_secs(60), &stop).await, "cut short by the stop");
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    /// `amqps://` is switched on by the URL alone: the client speaks TLS (here to a
    /// server that does not, so the handshake fails) instead of refusing the scheme.
    #[tokio::test]
    async fn an_amqps_url_connects_over_tls() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 3];
            socket.read_exact(&mut hello).await.unwrap();
            let _ = socket.write_all(b"AMQP\x00\x00\x09\x01").await;
            hello
        });
        let mut settings = crate::Settings::defaults().unwrap().broker;
        settings.url = format!("amqps://127.0.0.1:{port}/loanflow");
        assert!(connect(&settings).await.is_err(), "no TLS server, no connection");
        let hello = server.await.unwrap();
        // A TLS record: handshake (22), protocol version 3.x.
        assert_eq!(&hello[..2], &[22, 3], "the client opened with a TLS handshake, not AMQP's header");
    }

    fn settings(initial_ms: u64, max_ms: u64) -> BrokerSettings {
        let mut s = crate::Settings::defaults().expect("defaults").broker;
        s.reconnect_initial_ms = initial_ms;
        s.reconnect_max_ms = max_ms;
        s
    }

    #[test]
    fn waits_grow_from_the_first_to_the_maximum_with_jitter_and_start_over_on_reset() {
        let mut backoff = Backoff::new(&settings(100, 1000));
        let waits: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        let ms = |d: &Duration| d.as_millis() as u64;
        assert!((100..200).contains(&ms(&waits[0])), "the first wait, jittered: {waits:?}");
        assert!((200..400).contains(&ms(&waits[1])), "then doubled: {waits:?}");
        assert!(waits[5..].iter().all(|w| (1000..2000).contains(&ms(w))), "capped at the maximum: {waits:?}");
        backoff.reset();
        assert!((100..200).contains(&ms(&backoff.next_delay())), "from the first wait again");
    }

    #[test]
    fn two_clients_do_not_wait_in_step() {
        let mut a = Backoff::new(&settings(1000, 1000));
        let mut b = Backoff::new(&settings(1000, 1000));
        let differ = (0..20).any(|_| a.next_delay() != b.next_delay());
        assert!(differ, "jitter spreads reconnections");
    }
}
