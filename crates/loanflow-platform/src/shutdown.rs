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
