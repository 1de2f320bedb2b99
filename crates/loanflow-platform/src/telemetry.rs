//! Structured logging with `tracing`, and traces exported with OpenTelemetry.
//!
//! Every log line about an application carries its `reference` as a field; no line
//! carries personal data (the domain types redact it from their `Debug` output, and
//! request and message bodies are never logged).
//!
//! Spans are `tracing` spans. With `telemetry.otlp.endpoint` set, an OpenTelemetry layer
//! turns them into OpenTelemetry spans, exported over OTLP/HTTP in batches, and their
//! W3C trace context travels with every message ([`crate::trace`]), so that one
//! application is one trace through every service. Without it nothing is exported
//! and no trace context is sent.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::settings::{LogFormat, OtlpProtocol, OtlpSettings, TelemetrySettings};

/// The installed exporter, if any: flushed and stopped by [`Telemetry::shutdown`].
#[derive(Debug, Default)]
#[must_use = "spans not yet exported are lost unless it is shut down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Sends every finished span now (a test's way to see them without waiting).
    pub fn flush(&self) {
        if let Some(provider) = &self.provider {
            if let Err(e) = provider.force_flush() {
                tracing::warn!(error = %e, "spans not exported");
            }
        }
    }

    /// Sends what is left and stops the exporter: the last thing a process does.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider {
            if let Err(e) = provider.shutdown() {
                eprintln!("loanflow: spans not exported at shutdown: {e}");
            }
        }
    }
}

/// Installs the global subscriber: logs as `settings.format` says and, when an OTLP
/// endpoint is configured, traces exported as `service` (OpenTelemetry's `service.name`,
/// e.g. `loanflow-level-credit`). Safe to call more than once (later calls install
/// nothing and export nothing), which keeps tests that start several services in one
/// process simple.
pub fn init(settings: &TelemetrySettings, service: &str) -> Telemetry {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.filter));
    let logs = match settings.format {
        LogFormat::Json => fmt::layer().json().flatten_event(true).with_target(true).boxed(),
        LogFormat::Pretty => fmt::layer().compact().with_target(true).boxed(),
    };
    let provider = match exporter(&settings.otlp, service) {
        Ok(provider) => provider,
        Err(e) => {
            eprintln!("loanflow: traces are off: {e}");
            None
        }
    };
    let traces = provider.as_ref().map(|provider| {
        // Spans of every level reach the exporter: which are kept is the sampler's choice.
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("loanflow"))
            .with_filter(EnvFilter::new(TRACE_FILTER))
    });
    let installed = tracing_subscriber::registry().with(logs.with_filter(filter())).with(traces).try_init();
    match (installed, provider) {
        (Ok(()), provider) => Telemetry { provider },
        (Err(_), Some(provider)) => {
            // Another subscriber is installed already: this exporter would see nothing.
            let _ = provider.shutdown();
            Telemetry::default()
        }
        (Err(_), None) => Telemetry::default(),
    }
}

/// What the exporter sees: loanflow's own spans, not those of the libraries beneath it.
const TRACE_FILTER: &str =
    "info,lapin=off,h2=off,hyper=off,reqwest=off,actix_server=off,actix_web=off,opentelemetry=off";

/// The tracer provider `otlp` asks for, or `None` where tracing is off.
fn exporter(otlp: &OtlpSettings, service: &str) -> Result<Option<SdkTracerProvider>, String> {
    if otlp.endpoint.trim().is_empty() {
        return Ok(None);
    }
    let endpoint = format!("{}/v1/traces", otlp.endpoint.trim().trim_end_matches('/'));
    let protocol = match otlp.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let batches = BatchConfigBuilder::default()
        .with_scheduled_delay(std::time::Duration::from_millis(otlp.export_interval_ms.max(1)))
        .build();
    let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batches).build();
    let ratio = otlp.sample_ratio.clamp(0.0, 1.0);
    let resource = Resource::builder()
        .with_service_name(service.to_owned())
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            // Tells apart the instances of one service (three credit processes, say).
            KeyValue::new("service.instance.id", uuid::Uuid::new_v4().to_string()),
        ])
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
            .with_resource(resource)
            .build(),
    ))
}
