//! Prometheus metrics: one recorder per process (the `metrics` facade with its
//! Prometheus exporter, used as a library: no listener of its own), rendered at
//! `/metrics` on every health address and on the intake. Names follow Prometheus
//! conventions: `loanflow_…`, base units (`_seconds`), `_total` for counters.
//!
//! What the batching pipeline exposes (each labelled by `queue`): deliveries per batch
//! (`loanflow_consumer_batch_size`), how long a delivery waited in its queue
//! (`loanflow_consumer_queue_wait_seconds`), how long a batch's handler took
//! (`loanflow_consumer_handling_seconds`), deliveries by outcome
//! (`loanflow_consumer_deliveries_total`); and for every publish, the wait for the
//! broker's confirm (`loanflow_publish_confirm_seconds`); and whether each part of a
//! service is up (`loanflow_health_part_up`, labelled by `part`). Every HTTP server
//! counts and times its requests (`loanflow_http_requests_total`,
//! `loanflow_http_request_duration_seconds`, by method, route pattern and status); levels
//! count their decisions (`loanflow_decisions_total`, by level and outcome); every pool
//! times the wait for a connection (`loanflow_db_pool_wait_seconds`); the intake samples
//! its outbox (`loanflow_outbox_backlog`, `loanflow_outbox_oldest_age_seconds`).

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const BATCH_SIZE: &str = "loanflow_consumer_batch_size";
pub const QUEUE_WAIT: &str = "loanflow_consumer_queue_wait_seconds";
pub const HANDLING: &str = "loanflow_consumer_handling_seconds";
pub const DELIVERIES: &str = "loanflow_consumer_deliveries_total";
pub const CONFIRM_WAIT: &str = "loanflow_publish_confirm_seconds";
/// Requests by method, route (its pattern, not the path: no reference in a label) and
/// status, and how long they took.
pub const HTTP_REQUESTS: &str = "loanflow_http_requests_total";
pub const HTTP_DURATION: &str = "loanflow_http_request_duration_seconds";
/// Decisions made, by level and outcome.
pub const DECISIONS: &str = "loanflow_decisions_total";
/// How long work waited for a pooled database connection.
pub const POOL_WAIT: &str = "loanflow_db_pool_wait_seconds";
/// 1 while a part of a service (a consumer, the relay, the database) is up, else 0.
pub const HEALTH_PART_UP: &str = "loanflow_health_part_up";
/// Messages in the intake's outbox not yet confirmed by the broker, and the age of the
/// oldest (0 when empty): what a broker outage has piled up.
pub const OUTBOX_BACKLOG: &str = "loanflow_outbox_backlog";
pub const OUTBOX_OLDEST_AGE: &str = "loanflow_outbox_oldest_age_seconds";

const SECONDS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const SIZES: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once; later calls do nothing). Metrics recorded
/// before it is installed are not kept, so every service installs it as it starts.
pub fn install() {
    HANDLE.get_or_init(|| {
        let built = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
            .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), SIZES))
            .and_then(|b| b.install_recorder());
        match built {
            Ok(handle) => Some(handle),
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        }
    });
}

/// Every metric of this process, in Prometheus' text format.
pub fn render() -> String {
    install();
    HANDLE.get().and_then(Option::as_ref).map(PrometheusHandle::render).unwrap_or_default()
}

/// Counts and times every request of the app it wraps
/// (`App::new().wrap(actix_web::middleware::from_fn(metrics::http))`), and runs it in a
/// server span that continues the caller's trace (a `traceparent` header), except
/// health checks and metric scrapes, which would only fill traces with noise.
pub async fn http(
    req: actix_web::dev::ServiceRequest,
    next: actix_web::middleware::Next<impl actix_web::body::MessageBody>,
) -> Result<actix_web::dev::ServiceResponse<impl actix_web::body::MessageBody>, actix_web::Error> {
    install();
    let started = std::time::Instant::now();
    let method = req.method().to_string();
    let probe = req.path().starts_with("/health/") || req.path() == "/metrics";
    let span = if probe {
        tracing::Span::none()
    } else {
        let span = tracing::info_span!(
            "http",
            otel.name = %method,
            otel.kind = "server",
            http.request.method = %method,
            http.route = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        crate::trace::continue_trace(&span, crate::trace::extract_http(req.headers()));
        span
    };
    let response = tracing::Instrument::instrument(next.call(req), span.clone()).await?;
    let route = response.request().match_pattern().unwrap_or_else(|| "unmatched".to_owned());
    let status = response.status().as_u16().to_string();
    crate::trace::rename(&span, format!("{method} {route}"));
    span.record("http.route", route.as_str());
    span.record("http.response.status_code", response.status().as_u16());
    metrics::counter!(HTTP_REQUESTS, "method" => method.clone(), "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route).record(started.elapsed().as_secs_f64());
    Ok(response)
}
