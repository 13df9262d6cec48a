//! Links between two peers: the canonical link id, health, and the QoS figures a worker samples.
//! On the wire and in the store: `{id, a, b, health, rttMs?, jitterMs?, lossPct?, bitrateKbps?,
//! lastTs, ts}`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{Error, PeerId, UnixMillis};

/// Separates the two peer ids in a link id; ids cannot contain `<` or `>`.
const SEPARATOR: &str = "<->";

/// `"a<->b"` with `a < b`: the same link whichever side dialled.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LinkId(String);

impl LinkId {
    /// The canonical id of the link between `x` and `y`, in either order.
    pub fn between(x: &PeerId, y: &PeerId) -> Result<Self, Error> {
        let (a, b) = ordered(x, y)?;
        Ok(LinkId(format!("{a}{SEPARATOR}{b}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The two ends, `a < b`.
    pub fn peers(&self) -> (PeerId, PeerId) {
        let (a, b) = self.0.split_once(SEPARATOR).unwrap_or_default();
        // Constructed only from validated ids, so both halves are valid.
        (
            PeerId::new(a).expect("validated link id"),
            PeerId::new(b).expect("validated link id"),
        )
    }
}

/// `(x, y)` in canonical order; a link needs two distinct peers.
pub fn ordered<'p>(x: &'p PeerId, y: &'p PeerId) -> Result<(&'p PeerId, &'p PeerId), Error> {
    match x.cmp(y) {
        std::cmp::Ordering::Less => Ok((x, y)),
        std::cmp::Ordering::Greater => Ok((y, x)),
        std::cmp::Ordering::Equal => Err(Error::SelfLink(x.to_string())),
    }
}

impl FromStr for LinkId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::InvalidLinkId(s.to_string());
        let (a, b) = s.split_once(SEPARATOR).ok_or_else(bad)?;
        let (a, b) = (
            PeerId::new(a).map_err(|_| bad())?,
            PeerId::new(b).map_err(|_| bad())?,
        );
        if a >= b {
            return Err(bad());
        }
        Ok(LinkId(s.to_string()))
    }
}

impl TryFrom<String> for LinkId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<LinkId> for String {
    fn from(id: LinkId) -> String {
        id.0
    }
}

impl fmt::Display for LinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A link's state as operators see it. Thresholds are documented in docs/ARCHITECTURE.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Up,
    Degraded,
    Down,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

impl FromStr for Health {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "up" => Ok(Health::Up),
            "degraded" => Ok(Health::Degraded),
            "down" => Ok(Health::Down),
            other => Err(Error::InvalidField {
                field: "health",
                reason: format!("{other:?} is not one of up, degraded, down"),
            }),
        }
    }
}

/// One QoS observation of a link. A figure that is unknown (or not finite) is omitted on the
/// wire, never null or NaN.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinkQos {
    /// The selected ICE candidate pair's current RTT (STUN checks), else the probe RTT.
    #[serde(default, skip_serializing_if = "unknown")]
    pub rtt_ms: Option<f64>,
    /// Mean RTT of the probe channel's ping/pong over the window: what a DataChannel message sees.
    #[serde(default, skip_serializing_if = "unknown")]
    pub probe_rtt_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "unknown")]
    pub jitter_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "unknown")]
    pub loss_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "unknown")]
    pub bitrate_kbps: Option<f64>,
    /// When this observation was made (a QoS sample or a state change), ms since the epoch.
    pub last_ts: UnixMillis,
}

fn unknown(v: &Option<f64>) -> bool {
    !matches!(v, Some(x) if x.is_finite())
}

/// A link document: one per pair of peers, whichever side wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Link {
    pub id: LinkId,
    pub a: PeerId,
    pub b: PeerId,
    pub health: Health,
    #[serde(flatten)]
    pub qos: LinkQos,
    /// When the current connection was established, ms since the epoch.
    pub ts: UnixMillis,
}

impl Link {
    /// A link between `x` and `y` in either order; the id and ends come out canonical.
    pub fn new(
        x: &PeerId,
        y: &PeerId,
        health: Health,
        qos: LinkQos,
        ts: UnixMillis,
    ) -> Result<Self, Error> {
        let (a, b) = ordered(x, y)?;
        Ok(Link {
            id: LinkId::between(a, b)?,
            a: a.clone(),
            b: b.clone(),
            health,
            qos,
            ts,
        })
    }

    /// Checks what serde cannot: the id names exactly `a` and `b`, and the figures are sane.
    pub fn validate(&self) -> Result<(), Error> {
        if self.a >= self.b || LinkId::between(&self.a, &self.b)? != self.id {
            return Err(Error::InvalidLinkId(self.id.to_string()));
        }
        let q = &self.qos;
        for (field, v) in [
            ("rttMs", q.rtt_ms),
            ("probeRttMs", q.probe_rtt_ms),
            ("jitterMs", q.jitter_ms),
            ("lossPct", q.loss_pct),
            ("bitrateKbps", q.bitrate_kbps),
        ] {
            if let Some(v) = v
                && v.is_finite()
                && v < 0.0
            {
                return Err(Error::InvalidField {
                    field,
                    reason: format!("{v} is negative"),
                });
            }
        }
        if let Some(loss) = q.loss_pct.filter(|l| l.is_finite() && *l > 100.0) {
            return Err(Error::InvalidField {
                field: "lossPct",
                reason: format!("{loss} > 100"),
            });
        }
        Ok(())
    }

    /// Whether `peer` is one of the link's ends.
    pub fn touches(&self, peer: &PeerId) -> bool {
        &self.a == peer || &self.b == peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PeerId {
        PeerId::new(s).unwrap()
    }

    #[test]
    fn ids_are_canonical_whichever_side_dials() {
        assert_eq!(LinkId::between(&p("b"), &p("a")).unwrap().as_str(), "a<->b");
        assert_eq!(LinkId::between(&p("a"), &p("b")).unwrap().as_str(), "a<->b");
        assert!(matches!(
            LinkId::between(&p("a"), &p("a")),
            Err(Error::SelfLink(_))
        ));
        let l = Link::new(&p("z"), &p("m"), Health::Up, LinkQos::default(), 1).unwrap();
        assert_eq!((l.a.as_str(), l.b.as_str()), ("m", "z"));
        assert_eq!(l.id.peers(), (p("m"), p("z")));
    }

    #[test]
    fn parsing_refuses_non_canonical_ids() {
        for bad in ["b<->a", "a<->a", "a-b", "<->b", "a<->b<->c", "a/x<->b"] {
            assert!(bad.parse::<LinkId>().is_err(), "{bad}");
        }
        assert!("a<->b".parse::<LinkId>().is_ok());
    }

    #[test]
    fn unknown_and_non_finite_figures_are_omitted() {
        let qos = LinkQos {
            rtt_ms: Some(1.5),
            jitter_ms: Some(f64::NAN),
            last_ts: 9,
            ..Default::default()
        };
        let l = Link::new(&p("a"), &p("b"), Health::Degraded, qos, 3).unwrap();
        assert_eq!(
            serde_json::to_value(&l).unwrap(),
            serde_json::json!({"id":"a<->b","a":"a","b":"b","health":"degraded","rttMs":1.5,"lastTs":9,"ts":3})
        );
    }

    #[test]
    fn validate_catches_what_serde_cannot() {
        let mut l = Link::new(&p("a"), &p("b"), Health::Up, LinkQos::default(), 1).unwrap();
        assert!(l.validate().is_ok());
        l.qos.loss_pct = Some(101.0);
        assert!(l.validate().is_err());
        l.qos.loss_pct = Some(-1.0);
        assert!(l.validate().is_err());
        let mut swapped = Link::new(&p("a"), &p("b"), Health::Up, LinkQos::default(), 1).unwrap();
        swapped.a = p("c");
        assert!(matches!(swapped.validate(), Err(Error::InvalidLinkId(_))));
    }
}
