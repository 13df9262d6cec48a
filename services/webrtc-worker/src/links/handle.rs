//! The narrow handle features act on links through: what a feature may ask of the link core,
//! and nothing of how it keeps connections. `Links` implements it; a feature's unit tests give it
//! a fake.

use std::time::Duration;

use async_trait::async_trait;
use mesh_types::{Answer, Offer, PeerId};

use super::LinkView;
use crate::error::WorkerError;
use crate::transport::Channel;

#[async_trait]
pub trait LinkHandle: Send + Sync + std::fmt::Debug {
    /// This worker's peer id.
    fn id(&self) -> &PeerId;
    /// Whether any connection to `peer` exists (connected or being made).
    fn has_link(&self, peer: &PeerId) -> bool;
    /// Whether the link with `peer` is connected and was last written `up`.
    fn is_up(&self, peer: &PeerId) -> bool;
    /// Every link as `GET /links` shows it, by peer.
    fn views(&self) -> Vec<LinkView>;
    /// The generation of the connection to `peer`, if any.
    fn generation_of(&self, peer: &PeerId) -> Option<u64>;
    /// Stops the connection to `peer` if it is still this generation.
    fn stop_generation(&self, peer: &PeerId, generation: u64);
    /// How long a dial waits for its answer.
    fn dial_timeout(&self) -> Duration;
    /// A new connection to `peer`, waiting for its answer: the signed offer and its generation.
    async fn dial(&self, peer: PeerId) -> Result<(Offer, u64), WorkerError>;
    /// Completes a dial or this side's ICE restart with the peer's answer.
    async fn accept_answer(&self, answer: Answer) -> Result<(), WorkerError>;
    /// Starts an ICE restart on this generation of the link if this side may: its signed offer.
    async fn begin_ice_restart(
        &self,
        peer: &PeerId,
        generation: u64,
    ) -> Option<Result<Offer, WorkerError>>;
    /// The ICE restart could not finish: whether the link is still this generation.
    fn ice_restart_failed(&self, peer: &PeerId, generation: u64) -> bool;
    /// Sends on `channel` of the connected link with `peer`.
    async fn send_on(
        &self,
        peer: &PeerId,
        channel: Channel,
        data: &[u8],
    ) -> Result<(), WorkerError>;
}
