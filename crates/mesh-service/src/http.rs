//! The HTTP side every service shares: the layer stack, health and readiness routes, trace
//! context across services, and serving with graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Request, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mesh_store::SharedStore;
use opentelemetry::propagation::{Extractor, Injector};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::config::HttpLimits;
use crate::error::{ApiError, json_errors};

/// Wraps `router` in the shared stack. Read from the outside in, a request:
/// 1. gets an `x-request-id` if it has none (and the response echoes it);
/// 2. opens a span that continues the caller's trace (`traceparent`);
/// 3. has any non-JSON error response rewritten into our JSON error shape;
/// 4. is cut off with 503 `timeout` after `request_timeout`;
/// 5. is refused with 413 `body_too_large` past `max_body_bytes`, on a connection then closed.
pub fn with_layers(router: Router, limits: &HttpLimits) -> Router {
    router
        .layer(DefaultBodyLimit::max(limits.max_body_bytes))
        .layer(RequestBodyLimitLayer::new(limits.max_body_bytes))
        .layer(middleware::map_response(close_after_refused_body))
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            request_timeout,
        ))
        .layer(middleware::from_fn(json_errors))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(request_span))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
}

/// A 413 is sent before the rest of the body is read, so the connection cannot carry another
/// request; saying so keeps clients from reusing it and failing their next request.
async fn close_after_refused_body(mut response: Response) -> Response {
    if response.status() == StatusCode::PAYLOAD_TOO_LARGE {
        response.headers_mut().insert(
            axum::http::header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

/// Cuts off a request that runs past `limit` with 503 `timeout`, so no client waits forever.
async fn request_timeout(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!("request took longer than {} s", limit.as_secs_f64()),
        )
        .into_response(),
    }
}

fn request_span<B>(req: &Request<B>) -> Span {
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        method = %req.method(),
        path = %req.uri().path(),
        request_id = %request_id,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| {
        p.extract(&HeaderExtractor(req.headers()))
    });
    // Without a caller's trace there is nothing to continue; the span starts a new trace.
    let _ = span.set_parent(parent);
    span
}

/// Adds the current span's trace context (`traceparent`) to an outgoing request's headers, so
/// the next service's spans join the same trace.
pub fn inject_trace_context(headers: &mut HeaderMap) {
    let cx = Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut HeaderInjector(headers))
    });
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (key.parse::<axum::http::HeaderName>(), value.parse()) {
            self.0.insert(name, value);
        }
    }
}

/// `GET /healthz` (the process is alive: `ok`) and `GET /readyz` (the store answers).
pub fn health_routes(store: SharedStore) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(store)
}

async fn readyz(State(store): State<SharedStore>) -> Response {
    match store.ping().await {
        Ok(()) => axum::Json(serde_json::json!({"status": "ready"})).into_response(),
        Err(e) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("store: {e}"),
        )
        .into_response(),
    }
}

/// Binds `0.0.0.0:port`, every interface, as Cloud Run and containers expect.
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    TcpListener::bind((std::net::Ipv4Addr::UNSPECIFIED, port)).await
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// for at most `grace` before returning anyway.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    grace: Duration,
) -> std::io::Result<()> {
    let (stopping_tx, stopping_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown.await;
        let _ = stopping_tx.send(());
    });
    let deadline = async move {
        if stopping_rx.await.is_ok() {
            tokio::time::sleep(grace).await;
        } else {
            // The server ended before shutdown was asked for; let its own result through.
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        result = server => result,
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs_f64(), "requests still open after the grace period; closing them");
            Ok(())
        }
    }
}

/// Resolves on SIGTERM (Cloud Run, systemd) or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!("cannot listen for ctrl-c: {e}");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!("cannot listen for SIGTERM: {e}");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("ctrl-c received; shutting down"),
        () = terminate => tracing::info!("SIGTERM received; shutting down"),
    }
}
