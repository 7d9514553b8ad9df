//! Tandem's replicated state: the openraft type configuration, the state machine
//! (tunnels, IKE and child SAs, ownership, leases, sequence-number reservations,
//! replay marks), its sealed on-disk store (redb), and the Raft transport over
//! tonic with mutual TLS.
#![forbid(unsafe_code)]

use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub mod command;
pub mod lease;
pub mod node;
pub mod ownership;
pub mod runtime;
pub mod seal;
pub mod state;
pub mod store;
pub mod tls;
pub mod transport;
pub mod trust;

mod network;

pub use command::{Change, Command};
pub use network::Forward;
pub use node::{Cluster, ClusterConfig, ClusterError, StateEvent};
pub use seal::StorageKey;
pub use state::{ClusterState, Grant, Outcome};
pub use store::{Disk, MemoryDisk};
pub use transport::{Conn, Links, Transport};

/// The time now, by the runtime's clock: the same as the system's monotonic
/// clock in tandemd, simulated time inside the failover simulator. Lease
/// and timer arithmetic everywhere uses it, never `Instant::now()` directly.
pub fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// How long ago `then` was, by [`now`] (`Instant::elapsed` reads the system
/// clock, which the simulator does not drive).
pub fn since(then: std::time::Instant) -> std::time::Duration {
    now().saturating_duration_since(then)
}

pub type NodeId = u64;

/// A cluster member as Raft records it in the membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The name in its certificate: others dial it with this TLS server name.
    pub name: String,
    /// `host:port` of its cluster listener.
    pub addr: String,
    /// A witness votes but has no dataplane and never owns a tunnel.
    pub witness: bool,
}

impl std::fmt::Display for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.addr)?;
        if self.witness {
            f.write_str(" (witness)")?;
        }
        Ok(())
    }
}

openraft::declare_raft_types!(
    /// Tandem's openraft types.
    pub TypeConfig:
        D = Command,
        R = state::Outcome,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = runtime::Runtime,
);

pub type Raft = openraft::Raft<TypeConfig>;
