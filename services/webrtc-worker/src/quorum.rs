//! Which side of a partition this peer is on, sans-IO: the peers it knows to be alive (registered
//! and seen within the stale window) against those it can reach right now (itself and its `up`
//! links). In the majority means reaching more than half of the known peers: operations that must
//! not run on both sides of a split (a trust recompute, an operator's change) can ask first.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Quorum {
    /// Live peers this one knows of, itself included.
    pub known: usize,
    /// Peers it reaches now, itself included.
    pub reachable: usize,
    /// `reachable` is more than half of `known`.
    pub majority: bool,
}

/// `known` counts the live registered peers (this one among them, if registered); `links_up` the
/// peers with a link up. A peer that knows of nobody else is its own majority.
pub fn quorum(known: usize, links_up: usize) -> Quorum {
    let reachable = links_up + 1;
    let known = known.max(reachable);
    Quorum {
        known,
        reachable,
        majority: 2 * reachable > known,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_than_half_is_a_majority_and_a_tie_is_not() {
        assert!(quorum(5, 2).majority); // 3 of 5
        assert!(!quorum(5, 1).majority); // 2 of 5
        assert!(!quorum(4, 1).majority); // 2 of 4: a tie, neither side may act
        assert!(quorum(4, 2).majority);
    }

    #[test]
    fn both_sides_of_a_split_cannot_both_be_the_majority() {
        for n in 1..=12 {
            for side in 0..=n {
                let a = quorum(n, side.saturating_sub(1));
                let b = quorum(n, (n - side).saturating_sub(1));
                if side > 0 && side < n {
                    assert!(!(a.majority && b.majority), "n={n} side={side}");
                }
            }
        }
    }

    #[test]
    fn a_peer_alone_in_an_unknown_mesh_is_its_own_majority() {
        assert_eq!(
            quorum(0, 0),
            Quorum {
                known: 1,
                reachable: 1,
                majority: true
            }
        );
        // Reaching more than it knows of (the registry is behind): the known count follows.
        assert_eq!(quorum(2, 3).known, 4);
    }
}
