//! One way to run a service that consumes a queue (each level, the ledger): its health
//! address (health and metrics only) and its supervised batch consumer, stopped by one
//! token and tracked by one task tracker.

use std::future::Future;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::broker::access::Senders;
use crate::broker::{self, Batch, Disposition, Publisher};
use crate::health::{self, Health};
use crate::shutdown::Running;
use crate::Settings;

/// A queue consumer as a service: what it consumes, from whom, and where its health is.
#[derive(Debug)]
pub struct Consumer {
    pub queue: String,
    pub senders: Senders,
    pub health_listen: String,
}

/// The health address could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {listen}: {source}")]
pub struct ListenError {
    pub listen: String,
    pub source: std::io::Error,
}

/// Starts the consumer's health address and the consumer itself. `extra` gets the task
/// tracker before the service counts as running, for its side tasks (a retention sweep).
pub fn start<F, Fut>(
    settings: Settings,
    consumer: Consumer,
    shutdown: CancellationToken,
    extra: impl FnOnce(&TaskTracker),
    handler: F,
) -> Result<Running, ListenError>
where
    F: Fn(Batch, Publisher) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send + 'static,
{
    let tasks = TaskTracker::new();
    let health = Health::default();
    let consuming = health.part("broker");
    let addr = health::serve(&consumer.health_listen, health, shutdown.clone(), &tasks)
        .map_err(|source| ListenError { listen: consumer.health_listen.clone(), source })?;
    extra(&tasks);
    tasks.spawn(broker::consume(settings, consumer.queue, consumer.senders, consuming, shutdown, handler));
    Ok(Running::new(Some(addr), tasks))
}
