//! What the cluster replicates of an IKE SA (DESIGN.md invariants 1 and 5): its
//! keys, SPIs, message IDs, the last response (so another node answers a
//! retransmitted request with the same bytes) and its timers. Child SAs travel
//! separately, as [`ChildSa`](crate::endpoint::ChildSa) in the endpoint's events.
//!
//! Deadlines are durations from the moment of export: records cross machines,
//! and an `Instant` means nothing on another one.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::IkeProposal;
pub use crate::keys::IkeKeys;

/// An established IKE SA, keys included. `Debug` shows key fingerprints only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IkeSaRecord {
    pub connection: String,
    pub spi_i: u64,
    pub spi_r: u64,
    /// We are the original initiator (of the SA, or of the rekey that made it).
    pub initiator: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub proposal: IkeProposal,
    pub keys: IkeKeys,
    pub next_send_id: u32,
    pub next_expected_id: u32,
    /// Message ID and bytes of the last response we sent.
    pub last_response: Option<(u32, Vec<u8>)>,
    /// Replaced by a rekey and waiting for its DELETE.
    pub rekeyed: bool,
    pub rekey_in: Duration,
    pub expire_in: Duration,
    /// The children, by our inbound SPI, with their own timers.
    pub children: Vec<ChildTimers>,
}

impl IkeSaRecord {
    /// Our SPI: how the endpoint and the cluster key an IKE SA.
    pub fn our_spi(&self) -> u64 {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }
}

/// A child SA's rekey and expiry deadlines, from the moment of export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildTimers {
    pub inbound_spi: u32,
    pub rekey_in: Duration,
    pub expire_in: Duration,
}

/// A change to the endpoint's established IKE SAs since the last
/// [`Endpoint::take_changes`](crate::endpoint::Endpoint::take_changes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum IkeSaChange {
    /// Created or changed (keys, message IDs, last response, children, timers).
    Upsert(Box<IkeSaRecord>),
    /// Gone (deleted, expired, or replaced and deleted), by our SPI.
    Removed(u64),
}
