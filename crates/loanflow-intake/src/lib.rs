//! The intake service: the public API that records applications and answers at once
//! with a reference, the outbox relay that hands them to the broker, and the status
//! projection that keeps each application's status current from the events the
//! other services publish.

pub mod api;
pub mod approvals;
mod body;
pub mod cases;
pub mod error;
mod escalation;
mod limits;
pub mod operations;
mod pages;
mod projection;
mod relay;
mod schema;
mod sessions;
mod sql;
pub mod state;
mod status;
pub mod store;
mod submission;
pub mod twin;
pub mod withdrawal;
mod writer;

use std::net::TcpListener;

use actix_web::{web, App, HttpServer};
use diesel_migrations::embed_migrations;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use loanflow_platform::broker::access::{self, Senders};
use loanflow_platform::broker::{self, STATUS_QUEUE};
use loanflow_platform::db::{self, DbError};
use loanflow_platform::health::{self, Health};
use loanflow_platform::http;
use loanflow_platform::shutdown::Running;
use loanflow_platform::Settings;

/// The service's schema. Applications and decisions are facts: recorded once, never changed.
pub const SCHEMA: db::SchemaDefinition = db::SchemaDefinition {
    migrations: embed_migrations!("../../schema/intake"),
    append_only: &["applications", "decisions", "withdrawals", "audit_trail"],
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {0}: {1}")]
    Bind(String, std::io::Error),
    #[error("intake database: {0}")]
    Database(#[from] DbError),
    #[error("HTTP client: {0}")]
    Client(reqwest::Error),
    #[error("the synchronous twin needs twin.secret to be set")]
    NoTwinSecret,
}

/// Migrates, binds and starts every task of the intake. Returns once it is serving.
pub async fn start(mut settings: Settings, shutdown: CancellationToken) -> Result<Running, StartError> {
    settings.broker = settings.broker.acting_as(access::INTAKE);
    let pool = db::migrated_pool(&settings.intake.database, SCHEMA).await?;
    // Ready while its database answers: that is what accepting an application takes.
    // The broker parts are reported, not required: while the broker is away the outbox
    // keeps every accepted application, so a load balancer must keep this intake in.
    let health = Health::default();
    let database_health = health.part("database");
    let relay_health = health.reported("outbox-relay");
    let projection_health = health.reported("status-consumer");
    let state = state::AppState::new(pool.clone(), &settings, None);
    let relay_wake = state.relay_wake.clone();
    let escalate_after = state.escalate_after();
    let (addr, tasks) = serve(&settings, state, health, &shutdown)?;
    tasks.spawn(relay::run(settings.clone(), pool.clone(), relay_wake, relay_health, shutdown.clone()));
    tasks.spawn(db::watch(pool.clone(), database_health, shutdown.clone()));
    tasks.spawn(sample_outbox(pool.clone(), settings.intake.database.schema.to_string(), shutdown.clone()));
    let poll = std::time::Duration::from_millis(settings.intake.escalation_poll_ms);
    tasks.spawn(escalation::run(pool.clone(), settings.clock.clone(), escalate_after, poll, shutdown.clone()));
    let (keys, hours) = (pool.clone(), settings.intake.idempotency_hours);
    let every = std::time::Duration::from_secs(settings.retention.sweep_minutes.saturating_mul(60));
    tasks.spawn(loanflow_platform::retention::every(every, "idempotency keys", shutdown.clone(), move || {
        let (keys, since) = (keys.clone(), chrono::Utc::now() - chrono::Duration::hours(i64::from(hours)));
        async move { loanflow_platform::db::blocking(&keys, move |conn| store::forget_idempotency_keys(conn, since)).await }
    }));
    let expired = pool.clone();
    tasks.spawn(loanflow_platform::retention::every(every, "approver sessions", shutdown.clone(), move || {
        let expired = expired.clone();
        async move {
            loanflow_platform::db::blocking(&expired, |conn| sessions::forget_expired(conn, chrono::Utc::now())).await
        }
    }));
    let mut status_settings = settings.clone();
    status_settings.broker.prefetch = settings.intake.status_prefetch.max(1);
    let senders = Senders::of(&status_settings.broker, access::Queue::Status);
    tasks.spawn(broker::consume(
        status_settings,
        STATUS_QUEUE.to_owned(),
        senders,
        projection_health,
        shutdown,
        move |batch, _publisher| projection::handle_batch(pool.clone(), batch),
    ));
    tracing::info!(%addr, "intake listening");
    Ok(Running::new(Some(addr), tasks))
}

/// Samples the outbox's backlog into the metrics every few seconds (apart from the
/// relay, so that the hot path runs no extra statement).
async fn sample_outbox(pool: db::PgPool, schema: String, shutdown: CancellationToken) {
    use loanflow_platform::metrics::{OUTBOX_BACKLOG, OUTBOX_OLDEST_AGE};
    let mut rounds = tokio::time::interval(std::time::Duration::from_secs(2));
    rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = rounds.tick() => {}
        }
        match db::blocking(&pool, |conn| store::outbox_backlog(conn, chrono::Utc::now())).await {
            Ok((count, age)) => {
                metrics::gauge!(OUTBOX_BACKLOG, "schema" => schema.clone()).set(count as f64);
                metrics::gauge!(OUTBOX_OLDEST_AGE, "schema" => schema.clone()).set(age);
            }
            Err(e) => tracing::debug!(error = %e, "outbox not sampled"),
        }
    }
}

/// The public API, pages and health on `intake.listen`, stopped gracefully (requests in
/// progress finish, so their outbox rows are committed) when `shutdown` fires.
fn serve(
    settings: &Settings,
    state: state::AppState,
    health: Health,
    shutdown: &CancellationToken,
) -> Result<(std::net::SocketAddr, TaskTracker), StartError> {
    let listen = &settings.intake.listen;
    let listener = TcpListener::bind(listen).map_err(|e| StartError::Bind(listen.clone(), e))?;
    let addr = listener.local_addr().map_err(|e| StartError::Bind(listen.clone(), e))?;
    let data = web::Data::new(state);
    let health_data = web::Data::new(health);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(data.clone())
            .app_data(health_data.clone())
            .configure(error::extractor_rejections)
            .configure(health::routes)
            .configure(api::routes)
            .configure(pages::routes)
            .wrap(
                actix_web::middleware::DefaultHeaders::new()
                    // Pages load only their own script and styles; no framing.
                    .add((
                        "Content-Security-Policy",
                        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
                    ))
                    .add(("X-Content-Type-Options", "nosniff"))
                    // Pages and answers carry personal data: no cache (a shared browser,
                    // a proxy) keeps a copy.
                    .add(("Cache-Control", "no-store"))
                    .add(("Referrer-Policy", "same-origin")),
            )
            .default_service(web::to(api::not_found))
            .wrap(actix_web::middleware::from_fn(loanflow_platform::metrics::http))
    })
    .workers(settings.intake.workers.max(1))
    .max_connections(settings.intake.max_connections.max(1))
    // Signals are handled once, by the process, through the shutdown token.
    .disable_signals()
    .shutdown_timeout(http::SHUTDOWN_GRACE.as_secs())
    .listen(listener)
    .map_err(|e| StartError::Bind(listen.clone(), e))?
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
        handle.stop(true).await;
    });
    Ok((addr, tasks))
}
