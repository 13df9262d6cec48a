//! The gossiped state: a last-writer-wins map of signed entries. Each key keeps the entry with
//! the greatest `(hlc, origin, value, sig)`, a total order, so merging is commutative,
//! associative and idempotent: replicas that have seen the same entries agree, whatever order
//! they arrived in. (Signatures are checked before entries get here: see `node`.)

use std::collections::BTreeMap;

pub use mesh_types::GossipEntry as Entry;

/// Keys to their winning entries.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct State {
    entries: BTreeMap<String, Entry>,
}

impl State {
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Entry)> {
        self.entries.iter()
    }

    /// Applies one entry under its key; returns whether it changed the state.
    pub fn apply(&mut self, entry: Entry) -> bool {
        match self.entries.get(&entry.key) {
            Some(current) if !entry.supersedes(current) => false,
            _ => {
                self.entries.insert(entry.key.clone(), entry);
                true
            }
        }
    }

    /// Merges `other` into this state; returns how many keys changed.
    pub fn merge(&mut self, other: &State) -> usize {
        other
            .entries
            .values()
            .filter(|e| self.apply((*e).clone()))
            .count()
    }

    /// Forgets entries stamped before `cutoff_ms` (telemetry nobody has refreshed): bounds the
    /// state by the peers alive recently. Returns how many went.
    pub fn expire(&mut self, cutoff_ms: mesh_types::UnixMillis) -> usize {
        let before = self.entries.len();
        self.entries.retain(|_, e| e.hlc.wall_ms >= cutoff_ms);
        before - self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::seq::SliceRandom;
    use rand::{RngExt as _, SeedableRng};
    use serde_json::json;

    use mesh_types::{Hlc, PeerId};

    fn keyed(
        key: &str,
        wall_ms: u64,
        counter: u32,
        origin: &str,
        value: serde_json::Value,
    ) -> Entry {
        Entry {
            key: key.to_string(),
            hlc: Hlc { wall_ms, counter },
            origin: PeerId::new(origin).unwrap(),
            value,
            sig: String::new(),
            kid: None,
        }
    }

    fn entry(wall_ms: u64, counter: u32, origin: &str, value: serde_json::Value) -> Entry {
        keyed("k", wall_ms, counter, origin, value)
    }

    fn state(entries: &[(&str, Entry)]) -> State {
        let mut s = State::default();
        for (k, e) in entries {
            s.apply(Entry {
                key: (*k).to_string(),
                ..e.clone()
            });
        }
        s
    }

    #[test]
    fn the_latest_stamp_wins_and_ties_break_by_origin() {
        let mut s = State::default();
        assert!(s.apply(entry(10, 0, "b", json!(1))));
        assert!(!s.apply(entry(9, 5, "z", json!(2))), "older");
        assert!(
            s.apply(entry(10, 0, "c", json!(3))),
            "same stamp, greater origin"
        );
        assert!(!s.apply(entry(10, 0, "c", json!(3))), "idempotent");
        assert_eq!(s.get("k").unwrap().value, json!(3));
        assert!(s.apply(keyed("j", 1, 0, "a", json!(0))));
        assert_eq!(s.expire(5), 1, "the old key goes");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn merge_laws_hold_over_ten_thousand_delivery_orders() {
        let mut rng = StdRng::seed_from_u64(5);
        let keys = ["a", "b", "c", "d"];
        let origins = ["p1", "p2", "p3"];
        // 40 updates with colliding stamps, origins and keys.
        let updates: Vec<(String, Entry)> = (0..40)
            .map(|i| {
                let key = keys[rng.random_range(0..keys.len())].to_string();
                let e = entry(
                    rng.random_range(0..6),
                    rng.random_range(0..3),
                    origins[rng.random_range(0..origins.len())],
                    json!(i),
                );
                (key, e)
            })
            .collect();
        let mut reference: Option<State> = None;
        for _ in 0..10_000 {
            let mut order = updates.clone();
            order.shuffle(&mut rng);
            // Deliver in this order, some twice, in batches merged as whole states.
            let mut replica = State::default();
            for chunk in order.chunks(rng.random_range(1..8)) {
                let batch = state(
                    &chunk
                        .iter()
                        .map(|(k, e)| (k.as_str(), e.clone()))
                        .collect::<Vec<_>>(),
                );
                replica.merge(&batch);
                if rng.random_bool(0.2) {
                    replica.merge(&batch);
                }
            }
            match &reference {
                None => reference = Some(replica),
                Some(r) => assert_eq!(&replica, r),
            }
        }
        // And the laws, directly.
        let (x, y, z) = (
            state(&[
                ("a", entry(1, 0, "p1", json!(1))),
                ("b", entry(2, 0, "p2", json!(2))),
            ]),
            state(&[
                ("a", entry(1, 1, "p1", json!(3))),
                ("c", entry(0, 0, "p3", json!(4))),
            ]),
            state(&[("b", entry(2, 0, "p3", json!(5)))]),
        );
        let merged = |a: &State, b: &State| {
            let mut m = a.clone();
            m.merge(b);
            m
        };
        assert_eq!(merged(&x, &y), merged(&y, &x), "commutative");
        assert_eq!(
            merged(&merged(&x, &y), &z),
            merged(&x, &merged(&y, &z)),
            "associative"
        );
        assert_eq!(merged(&x, &x), x, "idempotent");
    }
}
