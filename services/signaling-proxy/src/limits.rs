//! Per-client-address and per-credential request rate limits (sans-IO token buckets):
//! an over-limit request gets 429 with `Retry-After`, before any work is done for it.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use mesh_service::{ApiError, lock};
use mesh_types::rate::{Keyed, Quota};

use mesh_auth::Principal;

#[derive(Debug)]
pub struct RateLimits {
    per_ip: Mutex<Keyed<IpAddr>>,
    per_credential: Mutex<Keyed<String>>,
    client_ip_header: Option<String>,
    /// Where the buckets' time starts: the first request's instant. Any fixed start will do,
    /// since buckets only compare times with each other; this one needs no clock of its own.
    start: OnceLock<Instant>,
}

fn retry_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0)
}

impl RateLimits {
    pub fn new(per_ip: u32, per_credential: u32, client_ip_header: Option<String>) -> Self {
        RateLimits {
            per_ip: Mutex::new(Keyed::new(Quota::per_second(per_ip))),
            per_credential: Mutex::new(Keyed::new(Quota::per_second(per_credential))),
            client_ip_header,
            start: OnceLock::new(),
        }
    }

    /// The client's address: the last entry of the configured header (the one the platform's
    /// own load balancer added, which a client cannot forge), else the socket's peer. An IPv6
    /// address counts as its /64: one host usually holds a whole /64 and could rotate through it.
    pub fn client_ip(&self, headers: &HeaderMap, socket: Option<SocketAddr>) -> Option<IpAddr> {
        let forwarded = self.client_ip_header.as_ref().and_then(|name| {
            headers
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.rsplit(',').next())
                .and_then(|ip| ip.trim().parse().ok())
        });
        forwarded.or(socket.map(|s| s.ip())).map(|ip| match ip {
            IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
                let net = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(net.into())
            }
            ip => ip,
        })
    }

    /// Takes one request from `ip`'s bucket (and the credential's, if any) at `now` (time since
    /// the limiter started), or says how long to wait.
    pub fn check_at(
        &self,
        ip: Option<IpAddr>,
        who: Option<&Principal>,
        now: Duration,
    ) -> Result<(), Limited> {
        if let Some(ip) = ip
            && let Err(wait) = lock(&self.per_ip).check(&ip, now)
        {
            return Err(Limited {
                what: "client address",
                retry_after_secs: retry_secs(wait),
            });
        }
        if let Some(who) = who
            && let Err(wait) = lock(&self.per_credential).check(&who.name, now)
        {
            return Err(Limited {
                what: "credential",
                retry_after_secs: retry_secs(wait),
            });
        }
        Ok(())
    }

    /// [`check_at`](Self::check_at) at instant `now`.
    pub fn check(
        &self,
        ip: Option<IpAddr>,
        who: Option<&Principal>,
        now: Instant,
    ) -> Result<(), Limited> {
        let start = *self.start.get_or_init(|| now);
        // Saturating: a request that read the clock just before the first one was counted.
        self.check_at(ip, who, now.saturating_duration_since(start))
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
    // The limiter's driver: it reads the clock once per request and hands the buckets the
    // time as a value.
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    match limits.check(ip, who, now) {
        Ok(()) => next.run(req).await,
        Err(limited) => limited.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_auth::Role;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_passes_then_the_address_is_refused() {
        let limits = RateLimits::new(1, 1000, None);
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert!(limits.check_at(ip, None, S).is_ok());
        assert!(
            limits.check_at(ip, None, S).is_ok(),
            "burst is twice the rate"
        );
        let refused = limits.check_at(ip, None, S).unwrap_err();
        assert_eq!(
            refused,
            Limited {
                what: "client address",
                retry_after_secs: 1
            }
        );
        assert!(
            limits
                .check_at(Some(IpAddr::from([10, 0, 0, 2])), None, S)
                .is_ok()
        );
        assert!(limits.check_at(ip, None, 2 * S).is_ok(), "refilled");
    }

    #[test]
    fn time_counts_from_the_first_request() {
        // Any instant will do: the test steps from it by explicit amounts.
        #[allow(clippy::disallowed_methods)]
        let t0 = Instant::now();
        let limits = RateLimits::new(1, 1000, None);
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert!(limits.check(ip, None, t0 + S).is_ok());
        assert!(limits.check(ip, None, t0 + S).is_ok());
        assert!(limits.check(ip, None, t0 + S).is_err(), "burst spent");
        // Read before the first request was counted: no time has passed for the buckets.
        assert!(limits.check(ip, None, t0).is_err());
        assert!(limits.check(ip, None, t0 + 2 * S).is_ok(), "refilled");
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
                    .check_at(Some(IpAddr::from([10, 0, 0, ip])), Some(&who), S)
                    .is_ok()
            );
        }
        let refused = limits
            .check_at(Some(IpAddr::from([10, 0, 0, 3])), Some(&who), S)
            .unwrap_err();
        assert_eq!(refused.what, "credential");
    }

    #[test]
    fn an_ipv6_client_counts_as_its_slash_64() {
        let limits = RateLimits::new(1, 1, None);
        let at = |ip: &str| {
            limits.client_ip(
                &HeaderMap::new(),
                Some(SocketAddr::new(ip.parse().unwrap(), 9)),
            )
        };
        assert_eq!(at("2001:db8:1:2:aaaa::1"), at("2001:db8:1:2:bbbb::7"));
        assert_ne!(at("2001:db8:1:2::1"), at("2001:db8:1:3::1"));
        assert_eq!(at("192.0.2.7"), Some(IpAddr::from([192, 0, 2, 7])));
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
