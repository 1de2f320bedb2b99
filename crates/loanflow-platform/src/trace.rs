//! W3C trace context across the broker and HTTP, so that one application is one trace.
//!
//! A message carries the context of the span that caused it in its headers
//! (`traceparent`, `tracestate`), as OpenTelemetry's messaging conventions say; where one
//! message carries several applications (a batch of status events), each item carries
//! its own `traceparent` and the consumer's span for the batch links to each. A consumer
//! continues each delivery's trace in a span of its own ([`crate::broker::Incoming`]'s
//! `span`), and whatever it sends on carries that span's context.
//!
//! Only spans that OpenTelemetry sees have a context: while tracing is off
//! ([`crate::telemetry`]) nothing is injected and every extraction is empty.

use std::collections::HashMap;

use lapin::types::{AMQPValue, FieldTable, LongString};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header (and item field) that carries the trace context, as W3C names it.
pub const TRACEPARENT: &str = "traceparent";
const TRACESTATE: &str = "tracestate";

fn propagator() -> &'static TraceContextPropagator {
    static PROPAGATOR: std::sync::OnceLock<TraceContextPropagator> = std::sync::OnceLock::new();
    PROPAGATOR.get_or_init(TraceContextPropagator::new)
}

/// Puts `span`'s trace context into a message's headers (nothing while tracing is off).
pub fn inject(span: &Span, headers: &mut FieldTable) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        propagator().inject_context(&cx, &mut AmqpHeaders(headers));
    }
}

/// The trace context of a message's headers (empty if it carries none).
pub fn extract(headers: Option<&FieldTable>) -> Context {
    match headers {
        Some(headers) => propagator().extract(&AmqpHeadersRef(headers)),
        None => Context::new(),
    }
}

/// `span`'s trace context as a `traceparent` value, for an item of a batch message or a
/// row that a message will be sent from later (the outbox); `None` while tracing is off.
pub fn traceparent(span: &Span) -> Option<String> {
    fields(span).remove(TRACEPARENT)
}

/// `span`'s W3C trace context as header fields (none if it has no valid context).
fn fields(span: &Span) -> HashMap<String, String> {
    let cx = span.context();
    let mut fields = HashMap::new();
    if cx.span().span_context().is_valid() {
        propagator().inject_context(&cx, &mut fields);
    }
    fields
}

/// The trace context a `traceparent` value names (empty if it names none).
pub fn context_of(traceparent: Option<&str>) -> Context {
    match traceparent {
        Some(value) => {
            let fields = HashMap::from([(TRACEPARENT.to_owned(), value.to_owned())]);
            propagator().extract(&fields)
        }
        None => Context::new(),
    }
}

/// What a message's span does, in OpenTelemetry's messaging terms.
#[derive(Debug, Clone, Copy)]
pub enum Messaging {
    /// Publishing it (a producer span).
    Send,
    /// Handling one delivery of it (a consumer span).
    Process,
}

/// The span of sending or processing one message about `reference` on `destination`
/// (an exchange, a queue), named and tagged as OpenTelemetry's messaging conventions
/// say, continuing the trace of `parent` (the act that sent it, or the message's own).
pub fn message_span(what: Messaging, destination: &str, reference: &str, parent: Context) -> Span {
    let (operation, kind) = match what {
        Messaging::Send => ("send", "producer"),
        Messaging::Process => ("process", "consumer"),
    };
    let span = tracing::info_span!(
        parent: None,
        "message",
        otel.name = %format_args!("{operation} {destination}"),
        otel.kind = kind,
        messaging.system = "rabbitmq",
        messaging.operation.name = operation,
        messaging.destination.name = destination,
        reference,
    );
    continue_trace(&span, parent);
    span
}

/// Makes `span` continue the trace of `parent` (a remote context: a message's, a
/// caller's). Must be called before the span is first entered; an empty context, or
/// tracing being off, leaves the span as it is.
pub fn continue_trace(span: &Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// Links `span` to `other` (a batch's span to each item's, an application's to the
/// decision that moved it on).
pub fn link(span: &Span, other: &Span) {
    span.add_link(other.context().span().span_context().clone());
}

/// Renames `span` once it has started (an HTTP request's, once its route is known).
pub fn rename(span: &Span, name: String) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        cx.span().update_name(name);
    }
}

/// Puts `span`'s trace context into an HTTP request's headers.
pub fn inject_http(span: &Span, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    fields(span).into_iter().fold(request, |request, (name, value)| request.header(name, value))
}

/// The trace context of an HTTP request's headers (a caller that traces).
pub fn extract_http(headers: &actix_web::http::header::HeaderMap) -> Context {
    propagator().extract(&HttpHeaders(headers))
}

struct AmqpHeaders<'a>(&'a mut FieldTable);

impl Injector for AmqpHeaders<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

struct AmqpHeadersRef<'a>(&'a FieldTable);

impl Extractor for AmqpHeadersRef<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match self.0.inner().get(key)? {
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
            AMQPValue::ShortString(s) => Some(s.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        [TRACEPARENT, TRACESTATE].into_iter().filter(|key| self.0.inner().contains_key(*key)).collect()
    }
}

struct HttpHeaders<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for HttpHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(actix_web::http::header::HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// The trace id of `span` as 32 hexadecimal digits (`None` while tracing is off).
    fn trace_id(span: &Span) -> Option<String> {
        let cx = span.context();
        let span_context = cx.span().span_context().clone();
        span_context.is_valid().then(|| span_context.trace_id().to_string())
    }

    /// Runs `f` under a subscriber whose spans OpenTelemetry sees (no exporter).
    fn traced<T>(f: impl FnOnce() -> T) -> T {
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_span_context_crosses_message_headers_and_the_next_span_continues_its_trace() {
        traced(|| {
            let sender = tracing::info_span!("send");
            let mut headers = FieldTable::default();
            inject(&sender, &mut headers);
            let value = AmqpHeadersRef(&headers).get(TRACEPARENT).map(str::to_owned);
            let value = value.expect("a traceparent header");
            assert!(value.starts_with("00-") && value.len() == 55, "W3C form: {value}");

            let receiver = tracing::info_span!("process");
            continue_trace(&receiver, extract(Some(&headers)));
            assert_eq!(trace_id(&receiver), trace_id(&sender), "the same trace");
            assert_ne!(traceparent(&receiver), traceparent(&sender), "a span of its own");
        });
    }

    #[test]
    fn an_item_traceparent_names_its_trace() {
        traced(|| {
            let item = tracing::info_span!("item");
            let parent = traceparent(&item);
            let next = tracing::info_span!("next");
            continue_trace(&next, context_of(parent.as_deref()));
            assert_eq!(trace_id(&next), trace_id(&item));
        });
    }

    #[test]
    fn without_tracing_nothing_is_injected_and_garbage_starts_no_trace() {
        let span = tracing::info_span!("untraced");
        let mut headers = FieldTable::default();
        inject(&span, &mut headers);
        assert!(headers.inner().is_empty());
        assert_eq!(traceparent(&span), None);
        traced(|| {
            let mut garbage = FieldTable::default();
            garbage.insert(TRACEPARENT.into(), AMQPValue::LongString("00-not-a-trace".into()));
            let span = tracing::info_span!("process");
            continue_trace(&span, extract(Some(&garbage)));
            continue_trace(&span, context_of(Some("\u{0}")));
            assert!(trace_id(&span).is_some(), "a fresh trace of its own");
        });
    }
}
