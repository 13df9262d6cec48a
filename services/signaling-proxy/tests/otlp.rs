//! Observability end to end: a real proxy and two real workers export over OTLP/HTTP to a
//! collector this test runs. One `connect` is one trace: the proxy's spans and both workers'
//! spans share the trace id the caller sent and form one tree. The metrics the services document
//! arrive too: connect outcomes, links by health, RTT samples.
#![allow(clippy::unwrap_used, clippy::disallowed_methods)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use common::{Mesh, OPERATOR};
use mesh_testkit::process::eventually;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message as _;

#[derive(Default)]
struct Collector {
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
}

async fn traces(State(c): State<Arc<Collector>>, body: Bytes) {
    let req = ExportTraceServiceRequest::decode(body).expect("OTLP traces are protobuf");
    c.traces.lock().unwrap().push(req);
}

async fn metrics(State(c): State<Arc<Collector>>, body: Bytes) {
    let req = ExportMetricsServiceRequest::decode(body).expect("OTLP metrics are protobuf");
    c.metrics.lock().unwrap().push(req);
}

async fn collector() -> (String, Arc<Collector>) {
    let c = Arc::new(Collector::default());
    let app = Router::new()
        .route("/v1/traces", post(traces))
        .route("/v1/metrics", post(metrics))
        .with_state(c.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, c)
}

fn attr(attrs: &[KeyValue], key: &str) -> Option<String> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) => Some(s.clone()),
            _ => None,
        }
    })
}

/// A span as the test needs it: who sent it and where it sits in its trace.
#[derive(Debug, Clone)]
struct SpanSeen {
    service: String,
    instance: Option<String>,
    name: String,
    span_id: Vec<u8>,
    parent: Vec<u8>,
}

fn spans_of_trace(c: &Collector, trace_id: &[u8]) -> Vec<SpanSeen> {
    let mut out = Vec::new();
    for req in c.traces.lock().unwrap().iter() {
        for rs in &req.resource_spans {
            let attrs = rs
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            let service = attr(attrs, "service.name").unwrap_or_default();
            let instance = attr(attrs, "service.instance.id");
            for ss in &rs.scope_spans {
                for s in ss.spans.iter().filter(|s| s.trace_id == trace_id) {
                    out.push(SpanSeen {
                        service: service.clone(),
                        instance: instance.clone(),
                        name: s.name.clone(),
                        span_id: s.span_id.clone(),
                        parent: s.parent_span_id.clone(),
                    });
                }
            }
        }
    }
    out
}

/// What the metric exports say: (service, instance, metric, attributes) → the latest value
/// (a histogram's sample count).
fn metric_points(c: &Collector) -> HashMap<(String, String, String, String), f64> {
    let mut out = HashMap::new();
    for req in c.metrics.lock().unwrap().iter() {
        for rm in &req.resource_metrics {
            let attrs = rm
                .resource
                .as_ref()
                .map(|r| r.attributes.as_slice())
                .unwrap_or(&[]);
            let service = attr(attrs, "service.name").unwrap_or_default();
            let instance = attr(attrs, "service.instance.id").unwrap_or_default();
            for sm in &rm.scope_metrics {
                for m in &sm.metrics {
                    let points: Vec<(String, f64)> = match &m.data {
                        Some(metric::Data::Gauge(g)) => g
                            .data_points
                            .iter()
                            .map(|p| (labels(&p.attributes), number(&p.value)))
                            .collect(),
                        Some(metric::Data::Sum(s)) => s
                            .data_points
                            .iter()
                            .map(|p| (labels(&p.attributes), number(&p.value)))
                            .collect(),
                        Some(metric::Data::Histogram(h)) => h
                            .data_points
                            .iter()
                            .map(|p| (labels(&p.attributes), p.count as f64))
                            .collect(),
                        _ => Vec::new(),
                    };
                    for (labels, v) in points {
                        out.insert(
                            (service.clone(), instance.clone(), m.name.clone(), labels),
                            v,
                        );
                    }
                }
            }
        }
    }
    out
}

fn labels(attrs: &[KeyValue]) -> String {
    let mut l: Vec<String> = attrs
        .iter()
        .map(|kv| format!("{}={}", kv.key, attr(attrs, &kv.key).unwrap_or_default()))
        .collect();
    l.sort();
    l.join(",")
}

fn number(v: &Option<number_data_point::Value>) -> f64 {
    match v {
        Some(number_data_point::Value::AsInt(i)) => *i as f64,
        Some(number_data_point::Value::AsDouble(d)) => *d,
        None => f64::NAN,
    }
}

#[tokio::test]
async fn one_connect_is_one_trace_across_proxy_and_both_workers_and_metrics_arrive() {
    let (otlp, collected) = collector().await;
    let otel = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.as_str()),
        // Export soon rather than on the SDK's default schedule (5 s spans, 60 s metrics).
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ("OTEL_METRIC_EXPORT_INTERVAL", "300"),
    ];
    let mesh = Mesh::new(&otel);
    let _a = mesh.worker_with("otel-a", 91, &otel);
    let _b = mesh.worker_with("otel-b", 92, &otel);

    // The caller's trace: every span of the connect must carry this id.
    let trace_hex = "4bf92f3577b34da6a3ce929d0e0e4736";
    let parent_hex = "00f067aa0ba902b7";
    let (status, _, link) = mesh
        .call_with(
            reqwest::Method::POST,
            "/api/mesh-rtc/connect",
            Some(OPERATOR),
            Some(&serde_json::json!({ "a": "otel-a", "b": "otel-b" })),
            &[("traceparent", &format!("00-{trace_hex}-{parent_hex}-01"))],
        )
        .await;
    assert_eq!(status, 200, "{link}");

    let trace_id = hex_bytes(trace_hex);
    let spans = eventually(
        Duration::from_secs(30),
        "spans of the connect from the proxy and both workers",
        || {
            let spans = spans_of_trace(&collected, &trace_id);
            async move {
                let from: HashSet<(String, Option<String>)> = spans
                    .iter()
                    .map(|s| (s.service.clone(), s.instance.clone()))
                    .collect();
                let want = [
                    ("signaling-proxy".to_string(), None),
                    ("webrtc-worker".to_string(), Some("otel-a".to_string())),
                    ("webrtc-worker".to_string(), Some("otel-b".to_string())),
                ];
                want.iter().all(|w| from.contains(w)).then_some(spans)
            }
        },
    )
    .await;

    // One tree: the proxy's request span continues the caller's span, and every other span's
    // parent is a span of this trace.
    let ids: HashSet<&Vec<u8>> = spans.iter().map(|s| &s.span_id).collect();
    let roots: Vec<&SpanSeen> = spans
        .iter()
        .filter(|s| s.parent == hex_bytes(parent_hex))
        .collect();
    assert_eq!(roots.len(), 1, "{spans:#?}");
    assert_eq!(roots[0].service, "signaling-proxy");
    for s in &spans {
        assert!(
            s.parent == hex_bytes(parent_hex) || ids.contains(&s.parent),
            "span {} of {} hangs outside the trace: {spans:#?}",
            s.name,
            s.service
        );
    }
    // Both workers were called by the proxy within this trace: the dialler (dial, answer) and
    // the addressee (offer).
    for instance in ["otel-a", "otel-b"] {
        assert!(
            spans.iter().any(|s| s.instance.as_deref() == Some(instance)
                && spans
                    .iter()
                    .any(|p| p.span_id == s.parent && p.service == "signaling-proxy")),
            "no span of {instance} is a child of a proxy span: {spans:#?}"
        );
    }

    // Metrics: the connect's outcome from the proxy; each worker's link up and its RTT samples.
    let key = |service: &str, instance: &str, name: &str, labels: &str| {
        (
            service.to_string(),
            instance.to_string(),
            name.to_string(),
            labels.to_string(),
        )
    };
    eventually(Duration::from_secs(30), "the documented metrics", || {
        let points = metric_points(&collected);
        let ok = points
            .get(&key("signaling-proxy", "", "mesh.connect", "outcome=ok"))
            .is_some_and(|v| *v >= 1.0)
            && points.contains_key(&key(
                "signaling-proxy",
                "",
                "mesh.signaling.connections",
                "",
            ))
            && ["otel-a", "otel-b"].iter().all(|i| {
                points
                    .get(&key("webrtc-worker", i, "mesh.links", "health=up"))
                    .is_some_and(|v| *v == 1.0)
                    && points
                        .get(&key("webrtc-worker", i, "mesh.link.rtt", ""))
                        .is_some_and(|v| *v >= 1.0)
            });
        async move { ok.then_some(()) }
    })
    .await;
}

fn hex_bytes(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
