//! The intake service: the public API that records applications and answers at once
//! with a reference, the outbox relay that hands them to the broker, and the status
//! projection that keeps each application's status current from the events the
//! other services publish.

pub mod api;
pub mod approvals;
pub mod error;
mod pages;
mod projection;
mod relay;
mod schema;
pub mod store;
mod sync;

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::{web, App, HttpServer};
use diesel_migrations::{embed_migrations, EmbeddedMigrations};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_platform::broker::{self, STATUS_QUEUE};
use loanflow_platform::db::{self, DbError};
use loanflow_platform::health::{self, Health};
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../schema/intake");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("intake database: {0}")]
    Database(#[from] DbError),
    #[error("HTTP client: {0}")]
    Client(reqwest::Error),
}

/// Migrates, binds and starts every task of the intake. Returns once it is serving.
pub async fn start(settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    let pool = db::migrated_pool(&settings.intake.database, MIGRATIONS).await?;

    let listener =
        TcpListener::bind(&settings.intake.listen).map_err(|e| StartError::Bind(settings.intake.listen.clone(), e))?;
    let addr = listener.local_addr().map_err(|e| StartError::Bind(settings.intake.listen.clone(), e))?;
    let state = api::AppState {
        pool: pool.clone(),
        chain: Arc::new(settings.chain.levels.clone()),
        relay_wake: Arc::new(Notify::new()),
        approvers: Arc::new(settings.intake.approvers.clone()),
        sync: match settings.intake.sync.enabled {
            true => Some(Arc::new(sync::SyncChain::new(settings.intake.sync.clone()).map_err(StartError::Client)?)),
            false => None,
        },
    };
    let synchronous = state.sync.is_some();
    let relay_wake = state.relay_wake.clone();
    let data = web::Data::new(state);
    let health = Health::default();
    let relay_health = health.part("outbox-relay");
    let projection_health = health.part("status-consumer");
    let health_data = web::Data::new(health);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(health_data.clone())
            .configure(health::routes)
            .configure(api::routes)
            .configure(approvals::routes)
            .configure(pages::routes)
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    // Pages load only their own script and styles; no framing.
                    .add((
                        "Content-Security-Policy",
                        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
                    ))
                    .add(("X-Content-Type-Options", "nosniff"))
                    .add(("Referrer-Policy", "same-origin")),
            )
            .default_service(web::to(api::not_found))
    })
    .workers(settings.intake.workers.max(1))
    // Signals are handled once, by the process, through the shutdown token.
    .disable_signals()
    // Requests in progress get this long to finish when the service stops.
    .shutdown_timeout(10)
    .listen(listener)
    .map_err(|e| StartError::Bind(settings.intake.listen.clone(), e))?
    .run();

    let tasks = TaskTracker::new();
    let handle = server.handle();
    tasks.spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "intake HTTP server failed");
        }
    });
    let stop = shutdown.clone();
    tasks.spawn(async move {
        stop.cancelled().await;
        // Graceful: requests in progress finish; their outbox rows are committed.
        handle.stop(true).await;
    });
    if synchronous {
        // The synchronous twin uses no broker.
        relay_health.set(true);
        projection_health.set(true);
        tracing::info!(%addr, "intake listening (synchronous twin: levels are called over HTTP)");
        return Ok(Running::new(Some(addr), tasks));
    }
    tasks.spawn(relay::run(settings.clone(), pool.clone(), relay_wake, relay_health, shutdown.clone()));
    tasks.spawn(broker::consume(
        settings,
        STATUS_QUEUE.to_owned(),
        projection_health,
        shutdown,
        move |incoming, _publisher| projection::handle(pool.clone(), incoming),
    ));
    tracing::info!(%addr, "intake listening");
    Ok(Running::new(Some(addr), tasks))
}
