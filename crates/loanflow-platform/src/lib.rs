//! What every loanflow service shares: typed settings, telemetry, the database pool
//! and migrations, the broker topology with confirmed publishing and supervised
//! consumers, and the shutdown signal. No business rule lives here.

pub mod audit;
pub mod broker;
pub mod clock;
pub mod db;
pub mod dlq;
pub mod health;
pub mod http;
pub mod metrics;
pub mod retention;
pub mod secret;
pub mod service;
pub mod settings;
pub mod shutdown;
pub mod telemetry;
pub mod trace;
pub mod twin;

pub use settings::Settings;
pub use tokio_util::sync::CancellationToken;
