//! A stand-in for an OpenTelemetry collector: it receives what services export over
//! OTLP/HTTP as JSON (`POST /v1/traces`) and keeps every span, so that a test can follow
//! a trace. The collector is outside the system, so a test may stand in for it.
//!
//! It runs on a thread and runtime of its own: a process's exporter outlives any one
//! test's runtime.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

/// One span as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectedSpan {
    /// The exporting process's `service.name`.
    pub service: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for the root of a trace.
    pub parent_span_id: String,
    pub name: String,
    /// Every attribute, its value as text.
    pub attributes: BTreeMap<String, String>,
    /// The spans it links to, as (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl CollectedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone)]
pub struct OtlpCollector {
    endpoint: String,
    spans: Arc<Mutex<Vec<CollectedSpan>>>,
}

impl OtlpCollector {
    /// Listens on a free loopback port until the process ends.
    pub fn start() -> OtlpCollector {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("the collector listens");
        let endpoint = format!("http://{}", listener.local_addr().expect("the collector's address"));
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let kept = spans.clone();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(listener).expect("a tokio listener");
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(serve(stream, kept.clone()));
                }
            });
        });
        OtlpCollector { endpoint, spans }
    }

    /// The base address to configure as `telemetry.otlp.endpoint`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span of `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<CollectedSpan> {
        let spans = self.spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        spans.iter().filter(|s| s.trace_id == trace_id).cloned().collect()
    }

    /// Every span received so far.
    pub fn all(&self) -> Vec<CollectedSpan> {
        self.spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Waits until the spans of `trace_id` satisfy `done`, or `within` passes; returns
    /// them either way.
    pub async fn wait_for_trace(
        &self,
        trace_id: &str,
        within: Duration,
        done: impl Fn(&[CollectedSpan]) -> bool,
    ) -> Vec<CollectedSpan> {
        crate::wait_until(within, || async { done(&self.trace(trace_id)) }).await;
        self.trace(trace_id)
    }
}

/// Answers the HTTP/1.1 requests of one connection (kept alive) with 200 and an
/// empty export response, keeping the spans of each.
async fn serve(stream: TcpStream, spans: Arc<Mutex<Vec<CollectedSpan>>>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        // The request line, then headers up to the blank line.
        loop {
            line.clear();
            match reader.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        if let Ok(export) = serde_json::from_slice::<Value>(&body) {
            let received = parse(&export);
            spans.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).extend(received);
        }
        let answer = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if writer.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The spans of an OTLP/JSON `ExportTraceServiceRequest`.
fn parse(export: &Value) -> Vec<CollectedSpan> {
    let mut spans = Vec::new();
    for resource in export["resourceSpans"].as_array().into_iter().flatten() {
        let resource_attributes = attributes(&resource["resource"]["attributes"]);
        let service = resource_attributes.get("service.name").cloned().unwrap_or_default();
        for scope in resource["scopeSpans"].as_array().into_iter().flatten() {
            for span in scope["spans"].as_array().into_iter().flatten() {
                let text = |key: &str| span[key].as_str().unwrap_or_default().to_owned();
                let links = span["links"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|l| {
                        (
                            l["traceId"].as_str().unwrap_or_default().to_owned(),
                            l["spanId"].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect();
                spans.push(CollectedSpan {
                    service: service.clone(),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent_span_id: text("parentSpanId"),
                    name: text("name"),
                    attributes: attributes(&span["attributes"]),
                    links,
                });
            }
        }
    }
    spans
}

/// OTLP's key-value list as a map of text.
fn attributes(list: &Value) -> BTreeMap<String, String> {
    list.as_array()
        .into_iter()
        .flatten()
        .filter_map(|kv| {
            let key = kv["key"].as_str()?.to_owned();
            let value = kv["value"].as_object()?.values().next()?;
            Some((key, value.as_str().map_or_else(|| value.to_string(), str::to_owned)))
        })
        .collect()
}
