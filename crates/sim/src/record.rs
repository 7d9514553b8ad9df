//! Everything a run did, as the simulated world saw it: each datagram sent
//! on the outer segment, each probe sent and received, each address moved,
//! each fault. The invariant checkers read it after every step; its event
//! lines, hashed, are the run's trace (same seed, same hash).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sha2::Digest as _;
use tandem_cluster::Cluster;
use tandem_gateway::control::Request;
use tokio::sync::mpsc;

pub use tandem_gateway::lab::NodeId;

/// An ESP datagram a gateway sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspSent {
    pub at: Duration,
    pub node: NodeId,
    pub seq: u32,
}

/// An IKE message a gateway sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSent {
    pub at: Duration,
    pub node: NodeId,
    pub header: crate::net::IkeHeader,
    /// A digest of the whole datagram, to compare retransmissions.
    pub digest: [u8; 32],
}

/// What the peer did with an SA for the first time, for the quorum check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerUse {
    /// The peer sent ESP on this SPI (the gateways' inbound SPI).
    Child(u32),
    /// The peer sent a request on this IKE SA after IKE_AUTH.
    Ike { spi_i: u64, spi_r: u64 },
}

/// One tunnel's probes.
#[derive(Debug, Default)]
pub struct Probes {
    /// Sent by the peer: seq -> when.
    pub sent: BTreeMap<u64, Duration>,
    /// Reached the LAN host: seq -> (when, through which node), every time.
    pub at_lan: BTreeMap<u64, Vec<(Duration, NodeId)>>,
    /// Echoes back at the peer: (when, seq).
    pub echoed: Vec<(Duration, u64)>,
}

#[derive(Default)]
pub struct Record {
    lines: Vec<String>,
    /// Where each tunnel address is (the simulated ARP table).
    pub segment: tandem_gateway::lab::Segment,
    /// SPIs and IKE SAs the peer has used (to spot first uses).
    pub peer_spis: std::collections::BTreeSet<u32>,
    pub peer_ike: std::collections::BTreeSet<(u64, u64)>,
    /// ESP sends by gateways, per SPI, in time order.
    pub esp: BTreeMap<u32, Vec<EspSent>>,
    /// IKE messages sent by gateways, in time order.
    pub ike: Vec<IkeSent>,
    /// SAs the peer started using, in time order, not yet checked.
    pub peer_uses: Vec<(Duration, PeerUse)>,
    /// IKE_SA_INIT requests the peer sent, by initiator SPI.
    pub peer_inits: BTreeMap<u64, Duration>,
    /// Per tunnel index.
    pub probes: BTreeMap<u8, Probes>,
    /// Probes that reached the LAN more than once, each time it happened.
    pub lan_repeats: Vec<(u8, u64)>,
    /// Address moves: (when, tunnel index, node, up).
    pub moves: Vec<(Duration, u8, NodeId, bool)>,
    /// Each running node's cluster handle and control channel.
    pub clusters: BTreeMap<NodeId, Arc<Cluster>>,
    pub controls: BTreeMap<NodeId, mpsc::Sender<Request>>,
    /// The peer's control channel.
    pub peer_control: Option<mpsc::Sender<Request>>,
    /// The last ESP datagrams the peer sent (framed), for replay attacks.
    pub peer_esp: std::collections::VecDeque<Vec<u8>>,
    /// Set by the driver: the peer host resends `peer_esp` once.
    pub replay_now: bool,
    /// When the first fault came.
    pub fault_start: Option<Duration>,
}

impl std::fmt::Debug for Record {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("lines", &self.lines.len())
            .finish_non_exhaustive()
    }
}

impl Record {
    /// Adds a line to the trace.
    pub fn note(&mut self, at: Duration, line: impl std::fmt::Display) {
        self.lines
            .push(format!("{:>9.3} {line}", at.as_secs_f64() * 1000.0));
    }

    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The trace's digest.
    pub fn digest(&self) -> String {
        let mut h = sha2::Sha256::new();
        for l in &self.lines {
            h.update(l.as_bytes());
            h.update(b"\n");
        }
        h.finalize()
            .iter()
            .take(16)
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The record, shared by every host and the driver (turmoil runs them all
/// on one thread, one at a time: the lock is never contended).
#[derive(Debug, Clone, Default)]
pub struct Shared(Arc<Mutex<Record>>);

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, Record> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Simulated time since the run started.
pub fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}
