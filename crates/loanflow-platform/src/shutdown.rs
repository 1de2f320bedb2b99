//! Graceful shutdown: one token, cancelled on SIGTERM or Ctrl-C, that every task of a
//! service watches. A task stops taking new work when it fires and finishes or
//! returns what it holds before it exits.

use tokio_util::sync::CancellationToken;

/// A token cancelled when the process receives SIGINT (Ctrl-C) or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let fire = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        fire.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A started service: where it listens (if it serves HTTP) and the tasks it runs.
/// Cancel the token the service was started with, then await [`Running::stopped`].
#[derive(Debug)]
pub struct Running {
    pub addr: Option<std::net::SocketAddr>,
    tasks: tokio_util::task::TaskTracker,
}

impl Running {
    pub fn new(addr: Option<std::net::SocketAddr>, tasks: tokio_util::task::TaskTracker) -> Running {
        tasks.close();
        Running { addr, tasks }
    }

    /// Resolves once every task of the service has finished.
    pub async fn stopped(self) {
        self.tasks.wait().await;
    }
}

/// Watches services that run in one process (`loanflow all`) until they stop. Stopped
/// by `stop` (a signal), every one finishes what it holds. One that stops by itself
/// first is named in the log and in the error, the others are stopped, and the caller
/// exits non-zero: nothing dies silently while the rest carry on half a system.
pub async fn supervise(services: Vec<(String, Running)>, stop: CancellationToken) -> Result<(), String> {
    use futures_util::stream::{FuturesUnordered, StreamExt};
    let mut running: FuturesUnordered<_> = services
        .into_iter()
        .map(|(name, service)| async move {
            service.stopped().await;
            name
        })
        .collect();
    while let Some(name) = running.next().await {
        if !stop.is_cancelled() {
            tracing::error!(service = %name, "a service stopped on its own (its error is logged above); stopping the others");
            stop.cancel();
            while running.next().await.is_some() {}
            return Err(format!("{name} stopped on its own; see the log for why"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio_util::sync::CancellationToken;
    use tokio_util::task::TaskTracker;

    use super::{supervise, Running};

    /// A service whose only task runs until `stop`, or ends by itself when `dies` is set.
    fn service(stop: &CancellationToken, dies: bool) -> Running {
        let tasks = TaskTracker::new();
        let stop = stop.clone();
        tasks.spawn(async move {
            if dies {
                tokio::time::sleep(Duration::from_millis(10)).await;
            } else {
                stop.cancelled().await;
            }
        });
        Running::new(None, tasks)
    }

    #[tokio::test]
    async fn a_service_that_stops_by_itself_is_named_and_stops_the_others() {
        let stop = CancellationToken::new();
        let services = vec![("ledger".into(), service(&stop, false)), ("bureau".into(), service(&stop, true))];
        let ended = tokio::time::timeout(Duration::from_secs(5), supervise(services, stop.clone())).await;
        assert_eq!(ended.expect("the others stop too"), Err("bureau stopped on its own; see the log for why".into()));
        assert!(stop.is_cancelled(), "the others were told to stop");
    }

    #[tokio::test]
    async fn a_requested_stop_waits_for_every_service_and_is_no_error() {
        let stop = CancellationToken::new();
        let services = vec![("ledger".into(), service(&stop, false)), ("intake".into(), service(&stop, false))];
        let supervised = tokio::spawn(supervise(services, stop.clone()));
        stop.cancel();
        assert_eq!(supervised.await.unwrap(), Ok(()));
    }
}
