//! The one way a service serves HTTP: an actix server on a listener of its own, its
//! signals left to the process (the shutdown token stops it), stopped gracefully when
//! the token fires. Also the bearer check that guards internal endpoints.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use actix_web::http::header;
use actix_web::{web, App, HttpRequest, HttpServer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::secret::Secret;

/// How long requests in progress may take to finish once the service stops. Too short
/// cuts a request whose writes are committed before its answer is sent; too long
/// delays every stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Binds `listen` and serves the routes `configure` adds, with `workers` threads,
/// until `shutdown`. The server's tasks join `tasks`. Returns the bound address (port 0
/// picks a free one).
pub fn serve<F>(
    listen: &str,
    workers: usize,
    configure: F,
    shutdown: CancellationToken,
    tasks: &TaskTracker,
) -> std::io::Result<SocketAddr>
where
    F: Fn(&mut web::ServiceConfig) + Clone + Send + 'static,
{
    let listener = TcpListener::bind(listen)?;
    let addr = listener.local_addr()?;
    let server = HttpServer::new(move || {
        App::new().wrap(actix_web::middleware::from_fn(crate::metrics::http)).configure(configure.clone())
    })
    .workers(workers.max(1))
    // Signals are handled once, by the process, through the shutdown token.
    .disable_signals()
    .shutdown_timeout(SHUTDOWN_GRACE.as_secs())
    .listen(listener)?
    .run();
    let handle = server.handle();
    tasks.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, %addr, "HTTP server failed");
        }
    });
    tasks.spawn(async move {
        shutdown.cancelled().await;
        handle.stop(true).await;
    });
    Ok(addr)
}

/// The `Authorization: Bearer <token>` of a request, if it has one.
pub fn bearer_token(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Whether the request carries `secret` as its bearer token (constant time).
pub fn bearer_matches(req: &HttpRequest, secret: &Secret) -> bool {
    bearer_token(req).is_some_and(|token| secret.matches(token))
}
