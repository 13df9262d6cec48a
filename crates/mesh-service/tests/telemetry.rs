//! Telemetry as operators rely on it: Cloud Logging JSON lines that carry the trace id, trace
//! context carried across services in `traceparent`, and a real OTLP/HTTP export.
#![allow(clippy::unwrap_used)] // Tests fail loudly by design.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Request};
use axum::routing::{get, post};
use mesh_service::HttpLimits;
use mesh_service::config::{LogFormat, TelemetryConfig};
use mesh_service::http::{inject_trace_context, with_layers};
use mesh_service::telemetry::{cloud_logging_layer, tracer_provider};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use serde_json::Value;
use tower::ServiceExt;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Buffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'w> tracing_subscriber::fmt::MakeWriter<'w> for Buffer {
    type Writer = Buffer;
    fn make_writer(&'w self) -> Buffer {
        self.clone()
    }
}

fn config(endpoint: Option<String>) -> TelemetryConfig {
    TelemetryConfig {
        service_name: "test-svc".into(),
        otlp_endpoint: endpoint,
        log_format: LogFormat::Json,
        log_filter: "info".into(),
        gcp_project: Some("proj".into()),
        log_to_stderr: false,
        instance: None,
    }
}

/// A subscriber with OpenTelemetry (no exporter) and Cloud Logging JSON into `buf`.
fn subscriber(buf: Buffer) -> impl tracing::Subscriber + Send + Sync {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    opentelemetry::global::set_text_map_propagator(
        opentelemetry_sdk::propagation::TraceContextPropagator::new(),
    );
    tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
        .with(cloud_logging_layer(Some("proj".into()), buf))
}

#[test]
fn log_lines_are_cloud_logging_json_with_the_trace() {
    let buf = Buffer::default();
    tracing::subscriber::with_default(subscriber(buf.clone()), || {
        let span = tracing::info_span!("work");
        let _entered = span.enter();
        tracing::warn!(peer = "a", rtt_ms = 1.5, "link degraded");
        tracing::error!("outside");
    });
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    let first = &lines[0];
    assert_eq!(first["severity"], "WARNING");
    assert_eq!(first["message"], "link degraded");
    assert_eq!(first["fields"]["peer"], "a");
    assert_eq!(first["fields"]["rtt_ms"], 1.5);
    assert_eq!(first["spans"], serde_json::json!(["work"]));
    let trace = first["logging.googleapis.com/trace"].as_str().unwrap();
    assert!(
        trace.starts_with("projects/proj/traces/")
            && trace.len() == "projects/proj/traces/".len() + 32,
        "{trace}"
    );
    assert_eq!(lines[1]["severity"], "ERROR");
    assert!(first["timestampSeconds"].as_u64().unwrap() > 1_700_000_000);
}

#[tokio::test]
async fn a_request_continues_the_callers_trace_and_passes_it_on() {
    let _guard = tracing::subscriber::set_default(subscriber(Buffer::default()));
    let app = with_layers(
        Router::new().route(
            "/hop",
            get(|| async {
                let mut outgoing = HeaderMap::new();
                inject_trace_context(&mut outgoing);
                outgoing["traceparent"].to_str().unwrap().to_string()
            }),
        ),
        &HttpLimits::default(),
    );
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let req = Request::get("/hop")
        .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
        .body(Body::empty())
        .unwrap();
    let res = app.oneshot(req).await.unwrap();
    let body = axum::body::to_bytes(res.into_body(), 1024).await.unwrap();
    let outgoing = String::from_utf8(body.to_vec()).unwrap();
    // Same trace, new span id: the next service joins the caller's trace.
    assert!(
        outgoing.starts_with(&format!("00-{trace_id}-")),
        "{outgoing}"
    );
    assert!(!outgoing.contains("00f067aa0ba902b7"), "{outgoing}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http() {
    // A real OTLP/HTTP receiver on loopback records what the exporter posts.
    let received: Arc<Mutex<Vec<(String, String, usize)>>> = Arc::default();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let sink = received.clone();
    let receiver = Router::new().route(
        "/v1/traces",
        post(move |headers: HeaderMap, body: Bytes| {
            let (sink, tx) = (sink.clone(), tx.clone());
            async move {
                let ct = headers
                    .get("content-type")
                    .map(|v| v.to_str().unwrap().to_string())
                    .unwrap_or_default();
                sink.lock()
                    .unwrap()
                    .push(("/v1/traces".into(), ct, body.len()));
                let _ = tx.send(());
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let provider = tracer_provider(&config(Some(base))).unwrap();
    let tracer = provider.tracer("test");
    let trace_id = {
        use opentelemetry::trace::Tracer as _;
        let span = tracer.start("connect a<->b");
        let cx = opentelemetry::Context::current_with_span(span);
        let id = cx.span().span_context().trace_id();
        cx.span().end();
        id
    };
    assert_ne!(trace_id, opentelemetry::trace::TraceId::INVALID);
    let flusher = provider.clone();
    tokio::task::spawn_blocking(move || flusher.force_flush())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no export arrived")
        .unwrap();
    let got = received.lock().unwrap().clone();
    assert_eq!(got[0].1, "application/x-protobuf");
    assert!(got[0].2 > 0);
    tokio::task::spawn_blocking(move || provider.shutdown())
        .await
        .unwrap()
        .unwrap();
    let _ = tracing::Span::current().context();
}
