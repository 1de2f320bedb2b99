//! Structured logging with `tracing`.
//!
//! Every log line about an application carries its `reference` as a field; no line
//! carries personal data (the domain types redact it from their `Debug` output, and
//! request and message bodies are never logged).

use tracing_subscriber::{fmt, EnvFilter};

use crate::settings::{LogFormat, TelemetrySettings};

/// Installs the global subscriber. Safe to call more than once (later calls are
/// ignored), which keeps tests that start several services in one process simple.
pub fn init(settings: &TelemetrySettings) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}
