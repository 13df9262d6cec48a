//! When a peer's telemetry is news. A restamped entry travels to every peer of the mesh, so a
//! worker restamps its own only when something an operator would act on has moved (a link
//! appeared or went, a health changed, a quality figure moved beyond its tolerance) or when the
//! entry is due a refresh; otherwise it keeps the entry it has, and gossip carries nothing for it.
//! Tolerances are relative with an absolute floor, so the noise of a quiet loopback link (an RTT
//! of 0.2 ms against 0.3 ms) is not news while a path that doubles its RTT is.

use std::collections::HashMap;

use mesh_types::{LinkQos, PeerId, Telemetry, UnixMillis};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NewsConfig {
    /// The entry is restamped at least this often (well inside the state's expiry of an hour).
    pub refresh_ms: u64,
    /// A figure is news when it moves by more than this share of its previous value...
    pub relative: f64,
    /// ...and by more than these absolute amounts.
    pub rtt_ms: f64,
    pub jitter_ms: f64,
    pub loss_pct: f64,
    pub bitrate_kbps: f64,
}

impl Default for NewsConfig {
    fn default() -> Self {
        NewsConfig {
            refresh_ms: 10 * 60 * 1000,
            relative: 0.25,
            rtt_ms: 5.0,
            // A busy host's own scheduling moves jitter by several ms (measured: 1 to 10 ms at
            // 20 peers on 2 cores); links are degraded from 50 ms.
            jitter_ms: 20.0,
            loss_pct: 2.0,
            // Gossip and queued messages ride the same links: their bursts are not news.
            bitrate_kbps: 256.0,
        }
    }
}

/// Whether `next` is news against `prev`, stamped at `prev_ms`.
pub fn is_news(
    prev: Option<(&Telemetry, UnixMillis)>,
    next: &Telemetry,
    now_ms: UnixMillis,
    config: &NewsConfig,
) -> bool {
    let Some((prev, stamped_ms)) = prev else {
        return true;
    };
    if now_ms.saturating_sub(stamped_ms) >= config.refresh_ms || prev.region != next.region {
        return true;
    }
    if prev.links.len() != next.links.len() {
        return true;
    }
    let before: HashMap<&PeerId, _> = prev.links.iter().map(|l| (&l.peer, l)).collect();
    next.links.iter().any(|l| match before.get(&l.peer) {
        None => true,
        Some(old) => old.health != l.health || qos_moved(&old.qos, &l.qos, config),
    })
}

/// `t` with its figures rounded to what they can tell (10 µs of RTT and jitter, 0.1 % of loss,
/// 0.1 kbit/s): the digits below are noise, and every entry carries them to every peer.
pub fn compact(mut t: Telemetry) -> Telemetry {
    let round = |v: &mut Option<f64>, step: f64| {
        if let Some(x) = v.as_mut() {
            *x = (*x / step).round() * step;
            // Keep the decimal form short: 0.43 rather than 0.43000000000000005.
            *x = format!("{x:.2}").parse().unwrap_or(*x);
        }
    };
    for l in &mut t.links {
        round(&mut l.qos.rtt_ms, 0.01);
        round(&mut l.qos.probe_rtt_ms, 0.01);
        round(&mut l.qos.jitter_ms, 0.01);
        round(&mut l.qos.loss_pct, 0.1);
        round(&mut l.qos.bitrate_kbps, 0.1);
    }
    t
}

fn qos_moved(old: &LinkQos, new: &LinkQos, c: &NewsConfig) -> bool {
    let moved = |a: Option<f64>, b: Option<f64>, floor: f64| match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() > floor.max(c.relative * a.abs()),
        (None, None) => false,
        _ => true,
    };
    moved(old.rtt_ms, new.rtt_ms, c.rtt_ms)
        || moved(old.probe_rtt_ms, new.probe_rtt_ms, c.rtt_ms)
        || moved(old.jitter_ms, new.jitter_ms, c.jitter_ms)
        || moved(old.loss_pct, new.loss_pct, c.loss_pct)
        || moved(old.bitrate_kbps, new.bitrate_kbps, c.bitrate_kbps)
}

#[cfg(test)]
mod tests {
    use mesh_types::{Health, LinkSummary};

    use super::*;

    const T0: UnixMillis = 1_800_000_000_000;

    fn qos(rtt: f64, loss: f64, bitrate: f64) -> LinkQos {
        LinkQos {
            rtt_ms: Some(rtt),
            probe_rtt_ms: Some(rtt),
            jitter_ms: Some(0.1),
            loss_pct: Some(loss),
            bitrate_kbps: Some(bitrate),
            last_ts: T0,
        }
    }

    fn telemetry(links: &[(&str, Health, LinkQos)]) -> Telemetry {
        Telemetry {
            region: Some("local".into()),
            links: links
                .iter()
                .map(|(p, h, q)| LinkSummary {
                    peer: PeerId::new(*p).unwrap(),
                    health: *h,
                    qos: q.clone(),
                })
                .collect(),
        }
    }

    #[test]
    fn compact_figures_keep_what_they_can_tell() {
        let mut q = qos(0.431_199_999_999_999_97, 12.345, 8.717_149_960_695_636);
        q.jitter_ms = Some(0.083_772_163_954_410_76);
        let t = compact(telemetry(&[("b", Health::Up, q)]));
        let got = &t.links[0].qos;
        assert_eq!(
            (got.rtt_ms, got.jitter_ms, got.loss_pct, got.bitrate_kbps),
            (Some(0.43), Some(0.08), Some(12.3), Some(8.7))
        );
        assert_eq!(
            serde_json::to_string(&got.rtt_ms).unwrap(),
            "0.43",
            "short decimals on the wire"
        );
    }

    #[test]
    fn only_what_an_operator_would_act_on_is_news() {
        let c = NewsConfig::default();
        let base = telemetry(&[("b", Health::Up, qos(0.3, 0.0, 6.0))]);
        let later = T0 + 10_000;
        let cases: [(&str, Telemetry, bool); 9] = [
            ("the same figures", base.clone(), false),
            (
                "loopback noise, a new sample time",
                telemetry(&[(
                    "b",
                    Health::Up,
                    LinkQos {
                        last_ts: later,
                        ..qos(0.9, 0.0, 40.0)
                    },
                )]),
                false,
            ),
            (
                "RTT up by 50 ms",
                telemetry(&[("b", Health::Up, qos(50.3, 0.0, 6.0))]),
                true,
            ),
            (
                "loss of 10 %",
                telemetry(&[("b", Health::Up, qos(0.3, 10.0, 6.0))]),
                true,
            ),
            (
                "a gossip burst on the link",
                telemetry(&[("b", Health::Up, qos(0.3, 0.0, 200.0))]),
                false,
            ),
            (
                "a file transfer",
                telemetry(&[("b", Health::Up, qos(0.3, 0.0, 80_000.0))]),
                true,
            ),
            (
                "health degraded",
                telemetry(&[("b", Health::Degraded, qos(0.3, 0.0, 6.0))]),
                true,
            ),
            ("the link went", telemetry(&[]), true),
            (
                "another link instead",
                telemetry(&[("c", Health::Up, qos(0.3, 0.0, 6.0))]),
                true,
            ),
        ];
        for (what, next, news) in cases {
            assert_eq!(is_news(Some((&base, T0)), &next, later, &c), news, "{what}");
        }
        // Nothing stamped yet, or the refresh due: news whatever the figures.
        assert!(is_news(None, &base, later, &c));
        assert!(is_news(Some((&base, T0)), &base, T0 + c.refresh_ms, &c));
        let moved_region = Telemetry {
            region: Some("eu".into()),
            ..base.clone()
        };
        assert!(is_news(Some((&base, T0)), &moved_region, later, &c));
    }
}
