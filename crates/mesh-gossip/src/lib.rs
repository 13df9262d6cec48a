//! meshrtc's gossip rules, sans-IO: which peers a round pushes to (`select`), the trust model
//! (`trust`), per-peer rate limits from trust (`limits`), the hybrid logical clock (`hlc`), the
//! state merge (`merge`), one peer's envelope state machine (`node`), when telemetry is news
//! (`telemetry`) and a seeded simulation of a whole mesh (`sim`). Everything takes the time and
//! an `Rng` as arguments; the gossip-push job and the workers are the drivers.
//!
//! Invariant: no IO, no tasks, no clock, no OS randomness (as in mesh-types).

pub mod hlc;
pub mod limits;
pub mod merge;
pub mod node;
pub mod rounds;
pub mod select;
pub mod sim;
pub mod telemetry;
pub mod trust;

pub use select::{Candidate, Sampler, Selection, SelectionConfig, select};
