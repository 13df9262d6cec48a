//! One JSON error shape for every service: `{"error": {"code": "...", "message": "..."}}` with
//! the right status. Codes are stable API (proto/README.md lists them). Server faults are logged;
//! client faults are not, since clients can make them at will.

use std::borrow::Cow;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use mesh_store::{ErrorKind, StoreError};
use mesh_types::VerifyError;
use serde::Serialize;

/// An error a handler returns; becomes the JSON error response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: Cow<'static, str>,
    pub message: String,
    /// Machine-readable context beside the message (e.g. which peer and step failed).
    pub details: Option<serde_json::Value>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<&'a serde_json::Value>,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: impl Into<Cow<'static, str>>,
        message: impl Into<String>,
    ) -> Self {
        ApiError {
            status,
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }

    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = %self.code, "{}", self.message);
        }
        let body = Body {
            error: Inner {
                code: &self.code,
                message: &self.message,
                details: self.details.as_ref(),
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, code) = match e.kind() {
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
            ErrorKind::InvalidInput => (StatusCode::BAD_REQUEST, "invalid_input"),
            ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            ErrorKind::Corrupt => (StatusCode::INTERNAL_SERVER_ERROR, "store_corrupt"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<VerifyError> for ApiError {
    fn from(e: VerifyError) -> Self {
        let status = match e {
            VerifyError::MissingSignature
            | VerifyError::Malformed(_)
            | VerifyError::BadSignature
            | VerifyError::WrongSigner { .. }
            | VerifyError::Stale { .. }
            | VerifyError::FromFuture { .. } => StatusCode::UNAUTHORIZED,
            VerifyError::Replayed => StatusCode::CONFLICT,
            VerifyError::ReplayCacheFull(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        ApiError::new(status, e.code(), e.to_string())
    }
}

/// `axum::Json` whose rejections are our JSON errors: malformed or mistyped JSON is 400
/// `bad_json`, a wrong content type 415, a body over the limit 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    axum::Json<T>: FromRequest<S, Rejection = JsonRejection>,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let message = rejection.body_text();
    match rejection {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            message,
        ),
        JsonRejection::BytesRejection(_) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", message)
        }
        _ => ApiError::new(StatusCode::BAD_REQUEST, "bad_json", message),
    }
}

impl<T: Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// The stable code for an error status that reached the client without one of ours (a route
/// that does not exist, a method not allowed, a layer's time-out or body limit).
fn code_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "forbidden",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT | StatusCode::GATEWAY_TIMEOUT => "timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY => "bad_json",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_client_error() => "bad_request",
        _ => "internal",
    }
}

/// Middleware: rewrites any error response that is not already JSON into the JSON error shape,
/// keeping the original text as the message, so clients parse one shape for every failure.
pub async fn json_errors(req: Request, next: Next) -> Response {
    let response = next.run(req).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    // Bodies of these responses are short texts; anything past 1 KiB is not worth keeping.
    let text = match http_body_util::Limited::new(body, 1024).collect().await {
        Ok(collected) => String::from_utf8_lossy(&collected.to_bytes())
            .trim()
            .to_string(),
        Err(_) => String::new(),
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut rewritten = ApiError::new(status, code_for(status), message).into_response();
    // Keep headers such as Allow, Retry-After and x-request-id.
    for (name, value) in parts.headers.iter() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rewritten.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rewritten.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_failures_map_to_distinct_codes_and_statuses() {
        let check = |e: VerifyError, status: u16, code: &str| {
            let api = ApiError::from(e);
            assert_eq!((api.status.as_u16(), api.code.as_ref()), (status, code));
        };
        check(VerifyError::BadSignature, 401, "bad_signature");
        check(VerifyError::MissingSignature, 401, "missing_signature");
        check(
            VerifyError::WrongSigner {
                claimed: "a".into(),
                kid: "k".into(),
            },
            401,
            "wrong_signer",
        );
        check(
            VerifyError::Stale {
                ts: 0,
                age_ms: 1,
                window_ms: 1,
            },
            401,
            "stale_timestamp",
        );
        check(
            VerifyError::FromFuture {
                ts: 0,
                ahead_ms: 1,
                window_ms: 1,
            },
            401,
            "future_timestamp",
        );
        check(VerifyError::Replayed, 409, "replayed");
        check(VerifyError::ReplayCacheFull(1), 503, "replay_cache_full");
    }

    #[test]
    fn store_errors_map_by_kind() {
        let check =
            |e: StoreError, status: u16| assert_eq!(ApiError::from(e).status.as_u16(), status);
        check(
            StoreError::NotFound {
                what: "peer",
                id: "x".into(),
            },
            404,
        );
        check(StoreError::Conflict("x".into()), 409);
        check(StoreError::InvalidInput("x".into()), 400);
        check(StoreError::Unavailable("x".into()), 503);
        check(StoreError::Corrupt("x".into()), 500);
    }
}
