//! Per-client-address and per-credential request rate limits (token buckets from `governor`):
//! an over-limit request gets 429 with `Retry-After`, before any work is done for it.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use mesh_service::ApiError;

use crate::auth::Principal;

/// Forget idle clients every this many requests, so the limiters' maps stay bounded by the
/// clients seen recently rather than all clients ever.
const PRUNE_EVERY: u64 = 4096;

#[derive(Debug)]
pub struct RateLimits {
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_credential: DefaultKeyedRateLimiter<String>,
    client_ip_header: Option<String>,
    seen: AtomicU64,
}

fn quota(per_second: u32) -> Quota {
    let rate = NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN);
    let burst = rate.saturating_mul(NonZeroU32::new(2).unwrap_or(NonZeroU32::MIN));
    Quota::per_second(rate).allow_burst(burst)
}

impl RateLimits {
    pub fn new(per_ip: u32, per_credential: u32, client_ip_header: Option<String>) -> Self {
        RateLimits {
            per_ip: RateLimiter::keyed(quota(per_ip)),
            per_credential: RateLimiter::keyed(quota(per_credential)),
            client_ip_header,
            seen: AtomicU64::new(0),
        }
    }

    /// The client's address: the last entry of the configured header (the one the platform's
    /// own load balancer added, which a client cannot forge), else the socket's peer.
    pub fn client_ip(&self, headers: &HeaderMap, socket: Option<SocketAddr>) -> Option<IpAddr> {
        if let Some(name) = &self.client_ip_header {
            let forwarded = headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|ip| ip.trim().parse().ok());
            if forwarded.is_some() {
                return forwarded;
            }
        }
        socket.map(|s| s.ip())
    }

    /// Takes one request from `ip`'s bucket (and the credential's, if any), or says how long
    /// to wait.
    pub fn check(&self, ip: Option<IpAddr>, who: Option<&Principal>) -> Result<(), Limited> {
        if self.seen.fetch_add(1, Ordering::Relaxed) % PRUNE_EVERY == PRUNE_EVERY - 1 {
            self.per_ip.retain_recent();
            self.per_credential.retain_recent();
        }
        let clock = DefaultClock::default();
        if let Some(ip) = ip
            && let Err(not_until) = self.per_ip.check_key(&ip)
        {
            return Err(Limited {
                what: "client address",
                retry_after_secs: not_until.wait_time_from(clock.now()).as_secs() + 1,
            });
        }
        if let Some(who) = who
            && let Err(not_until) = self.per_credential.check_key(&who.name)
        {
            return Err(Limited {
                what: "credential",
                retry_after_secs: not_until.wait_time_from(clock.now()).as_secs() + 1,
            });
        }
        Ok(())
    }
}

/// A refused request: which bucket ran dry and when to come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub what: &'static str,
    pub retry_after_secs: u64,
}

impl IntoResponse for Limited {
    fn into_response(self) -> Response {
        let mut res = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "too many requests for this {}; retry after {} s",
                self.what, self.retry_after_secs
            ),
        )
        .into_response();
        res.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from(self.retry_after_secs),
        );
        res
    }
}

/// Middleware; runs after authentication so a credential's bucket is known.
pub async fn rate_limit(
    State(limits): State<Arc<RateLimits>>,
    req: Request,
    next: Next,
) -> Response {
    let socket = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let ip = limits.client_ip(req.headers(), socket);
    let who = req.extensions().get::<Principal>();
    match limits.check(ip, who) {
        Ok(()) => next.run(req).await,
        Err(limited) => limited.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Role;

    #[test]
    fn a_burst_passes_then_the_bucket_refuses() {
        let limits = RateLimits::new(1, 1000, None);
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert!(limits.check(ip, None).is_ok());
        assert!(limits.check(ip, None).is_ok(), "burst is twice the rate");
        let refused = limits.check(ip, None).unwrap_err();
        assert_eq!(refused.what, "client address");
        assert!(refused.retry_after_secs >= 1);
        assert!(
            limits
                .check(Some(IpAddr::from([10, 0, 0, 2])), None)
                .is_ok(),
            "per address"
        );
    }

    #[test]
    fn credentials_have_their_own_bucket() {
        let limits = RateLimits::new(1000, 1, None);
        let who = Principal {
            name: "ops".into(),
            role: Role::Operator,
        };
        for ip in 1..=2u8 {
            assert!(
                limits
                    .check(Some(IpAddr::from([10, 0, 0, ip])), Some(&who))
                    .is_ok()
            );
        }
        let refused = limits
            .check(Some(IpAddr::from([10, 0, 0, 3])), Some(&who))
            .unwrap_err();
        assert_eq!(refused.what, "credential");
    }

    #[test]
    fn the_platform_header_names_the_client() {
        let limits = RateLimits::new(1, 1, Some("x-forwarded-for".into()));
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 203.0.113.9"),
        );
        let socket = Some(SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(
            limits.client_ip(&headers, socket),
            Some(IpAddr::from([203, 0, 113, 9]))
        );
        assert_eq!(
            limits.client_ip(&HeaderMap::new(), socket),
            Some(IpAddr::from([127, 0, 0, 1]))
        );
    }
}
