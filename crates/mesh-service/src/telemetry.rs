//! Logs, traces and metrics. Logs are one JSON object per line in the shape Cloud Logging reads
//! (`severity`, `message`, and `logging.googleapis.com/trace` so a log line links to its trace);
//! traces and metrics go to an OTLP/HTTP collector when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, with
//! W3C trace context (`traceparent`) propagated between services. Services make their instruments
//! from `opentelemetry::global::meter` after `init`; without an endpoint they cost nothing.

use std::fmt;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value};
use std::io::Write as _;
use std::sync::OnceLock;
use tracing::field::{Field, Visit};

use tracing::dispatcher::WeakDispatch;
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_opentelemetry::get_otel_context;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?}: {reason}")]
    Filter { filter: String, reason: String },
    #[error("cannot build the OTLP exporter for {endpoint}: {reason}")]
    Exporter { endpoint: String, reason: String },
    #[error("a global tracing subscriber is already installed")]
    AlreadyInstalled,
}

/// Flushes and stops trace and metric export when dropped; keep it alive for the life of the
/// process.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: SdkTracerProvider,
    meters: Option<SdkMeterProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("trace export did not shut down cleanly: {e}");
        }
        if let Some(meters) = &self.meters
            && let Err(e) = meters.shutdown()
        {
            tracing::warn!("metric export did not shut down cleanly: {e}");
        }
    }
}

/// Installs the global subscriber: the log format chosen, the filter, and OTLP export if
/// configured. Call once, first thing in `main`.
pub fn init(config: &TelemetryConfig) -> Result<TelemetryGuard, TelemetryError> {
    let filter = EnvFilter::try_new(&config.log_filter).map_err(|e| TelemetryError::Filter {
        filter: config.log_filter.clone(),
        reason: e.to_string(),
    })?;
    let provider = tracer_provider(config)?;
    let meters = meter_provider(config)?;
    // Always on, exporting or not: spans then carry trace context, so a caller's `traceparent`
    // is continued, passed on to the services we call, and stamped on every log line.
    let otel =
        tracing_opentelemetry::layer().with_tracer(provider.tracer(config.service_name.clone()));
    let writer = if config.log_to_stderr {
        BoxMakeWriter::new(std::io::stderr)
    } else {
        BoxMakeWriter::new(std::io::stdout)
    };
    let logs = match config.log_format {
        LogFormat::Json => cloud_logging_layer(config.gcp_project.clone(), writer).boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_target(false)
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(otel)
        .with(logs)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider, meters })
}

/// `base` (the collector's base URL) with the OTLP/HTTP path for `signal` (`traces`, `metrics`),
/// as the SDK does when it reads the variable itself.
fn otlp_url(base: &str, signal: &str) -> String {
    let path = format!("/v1/{signal}");
    if base.ends_with(&path) {
        base.to_string()
    } else {
        format!("{}{path}", base.trim_end_matches('/'))
    }
}

fn exporter_error(
    endpoint: String,
) -> impl FnOnce(opentelemetry_otlp::ExporterBuildError) -> TelemetryError {
    move |e| TelemetryError::Exporter {
        endpoint,
        reason: e.to_string(),
    }
}

/// The service's resource: its name, its instance (a worker's peer id) if known, and what
/// `OTEL_RESOURCE_ATTRIBUTES` adds.
fn resource(config: &TelemetryConfig) -> opentelemetry_sdk::Resource {
    let mut builder =
        opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone());
    if let Some(instance) = &config.instance {
        builder = builder.with_attribute(opentelemetry::KeyValue::new(
            "service.instance.id",
            instance.clone(),
        ));
    }
    builder.build()
}

/// The metric pipeline: a periodic OTLP/HTTP export (every 60 s, or
/// `OTEL_METRIC_EXPORT_INTERVAL` ms) if an endpoint is configured; none otherwise, which leaves
/// the global meter a no-op.
pub fn meter_provider(
    config: &TelemetryConfig,
) -> Result<Option<SdkMeterProvider>, TelemetryError> {
    let Some(base) = &config.otlp_endpoint else {
        return Ok(None);
    };
    let endpoint = otlp_url(base, "metrics");
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(exporter_error(endpoint))?;
    let provider = SdkMeterProvider::builder()
        .with_periodic_exporter(exporter)
        .with_resource(resource(config))
        .build();
    opentelemetry::global::set_meter_provider(provider.clone());
    Ok(Some(provider))
}

/// The trace pipeline: OTLP/HTTP export if an endpoint is configured, else a provider that
/// keeps trace context without exporting anything. Also installs the W3C trace context
/// propagator, which the HTTP layers use to continue and pass on traces.
pub fn tracer_provider(config: &TelemetryConfig) -> Result<SdkTracerProvider, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let Some(base) = &config.otlp_endpoint else {
        return Ok(SdkTracerProvider::builder().build());
    };
    let endpoint = otlp_url(base, "traces");
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint.clone())
        .build()
        .map_err(exporter_error(endpoint))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource(config))
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(provider)
}

/// A layer writing Cloud Logging's structured JSON, one line per event, to `writer`.
pub fn cloud_logging_layer<W>(gcp_project: Option<String>, writer: W) -> CloudLogging<W>
where
    W: for<'w> MakeWriter<'w> + 'static,
{
    CloudLogging {
        gcp_project,
        writer,
        dispatch: OnceLock::new(),
    }
}

/// Formats events as Cloud Logging structured log lines. A layer of its own (not a fmt
/// formatter) because it must look up the span's OpenTelemetry context through the dispatcher,
/// which tracing does not lend to code running inside an event callback.
pub struct CloudLogging<W> {
    gcp_project: Option<String>,
    writer: W,
    dispatch: OnceLock<WeakDispatch>,
}

impl<W> fmt::Debug for CloudLogging<W> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudLogging")
            .field("gcp_project", &self.gcp_project)
            .finish_non_exhaustive()
    }
}

fn severity(level: &Level) -> &'static str {
    match *level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

impl<S, W> Layer<S> for CloudLogging<W>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_register_dispatch(&self, subscriber: &Dispatch) {
        let _ = self.dispatch.set(subscriber.downgrade());
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut fields = JsonFields::default();
        event.record(&mut fields);
        let mut line = Map::new();
        let meta = event.metadata();
        line.insert("severity".into(), severity(meta.level()).into());
        line.insert(
            "message".into(),
            fields
                .0
                .remove("message")
                .unwrap_or(Value::String(String::new())),
        );
        // Cloud Logging reads these two fields as the entry's timestamp. Logging is a driver
        // concern, so it may read the clock.
        #[allow(clippy::disallowed_methods)]
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        line.insert("timestampSeconds".into(), now.as_secs().into());
        line.insert("timestampNanos".into(), now.subsec_nanos().into());
        line.insert("target".into(), meta.target().into());
        if let Some(scope) = ctx.event_scope(event) {
            let spans: Vec<Value> = scope
                .from_root()
                .map(|s| Value::String(s.name().into()))
                .collect();
            line.insert("spans".into(), spans.into());
        }
        let otel = ctx
            .event_span(event)
            .zip(self.dispatch.get().and_then(WeakDispatch::upgrade));
        if let Some(cx) = otel.and_then(|(span, dispatch)| get_otel_context(&span.id(), &dispatch))
        {
            let span_cx = cx.span().span_context().clone();
            if span_cx.is_valid() {
                let trace = match &self.gcp_project {
                    Some(p) => format!("projects/{p}/traces/{}", span_cx.trace_id()),
                    None => span_cx.trace_id().to_string(),
                };
                line.insert("logging.googleapis.com/trace".into(), trace.into());
                line.insert(
                    "logging.googleapis.com/spanId".into(),
                    span_cx.span_id().to_string().into(),
                );
                line.insert(
                    "logging.googleapis.com/trace_sampled".into(),
                    span_cx.is_sampled().into(),
                );
            }
        }
        if !fields.0.is_empty() {
            line.insert("fields".into(), Value::Object(fields.0));
        }
        if let Ok(mut json) = serde_json::to_vec(&line) {
            json.push(b'\n');
            // A log line that cannot be written has nowhere better to be reported.
            let _ = self.writer.make_writer_for(meta).write_all(&json);
        }
    }
}

/// Collects an event's fields as JSON values, keeping numbers and booleans typed.
#[derive(Default)]
struct JsonFields(Map<String, Value>);

impl Visit for JsonFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        // serde_json would write NaN as null; keep it as text instead.
        let v = serde_json::Number::from_f64(value)
            .map(Value::Number)
            .unwrap_or_else(|| value.to_string().into());
        self.0.insert(field.name().into(), v);
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.0.insert(field.name().into(), value.to_string().into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}
