//! meshrtc's gossip rules, sans-IO: which peers a round pushes to (`select`), and, as they land,
//! the trust model, the hybrid logical clock and the state merge. Everything takes the time and
//! an `Rng` as arguments; the gossip-push job and the workers are the drivers.
//!
//! Invariant: no IO, no tasks, no clock, no OS randomness (as in mesh-types).

pub mod hlc;
pub mod merge;
pub mod select;
pub mod trust;

pub use select::{Candidate, Selection, SelectionConfig, select};
