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

#[cfg(feature = "testing")]
impl IkeSaRecord {
    /// An established AES-GCM-256 IKE SA of `connection` between
    /// documentation addresses, with made-up keys: for the tests of the
    /// layers that replicate IKE state.
    #[allow(clippy::unwrap_used)]
    pub fn for_tests(connection: &str) -> Self {
        use tandem_crypto::Secret;
        let key = |b: u8| Secret::new(vec![b; 36]);
        IkeSaRecord {
            connection: connection.to_owned(),
            spi_i: 0x1111,
            spi_r: 0x2222,
            initiator: false,
            local: "192.0.2.1:500".parse().unwrap(),
            remote: "198.51.100.1:500".parse().unwrap(),
            proposal: crate::config::parse_ike_proposal("aes256gcm16-prfsha256-curve25519")
                .unwrap(),
            keys: IkeKeys {
                sk_d: key(1),
                sk_ai: None,
                sk_ar: None,
                sk_ei: key(2),
                sk_er: key(3),
                sk_pi: key(4),
                sk_pr: key(5),
            },
            next_send_id: 0,
            next_expected_id: 2,
            last_response: None,
            rekeyed: false,
            rekey_in: Duration::from_secs(3600),
            expire_in: Duration::from_secs(7200),
            children: Vec::new(),
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
