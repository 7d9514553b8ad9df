//! Tandem's deterministic failover simulator. The real cluster and gateway
//! code (the same `tandem_gateway::node::serve` loop and Raft over the same
//! tonic service as tandemd) runs as turmoil hosts under a simulated
//! network and clock; a seed sets the topology and the faults; the
//! invariants of DESIGN.md are checked after every step (one file each in
//! `check/`); and every run must end with each tunnel on one owner, traffic
//! flowing, and no renegotiation.
//!
//! What is simulated, not real: TLS between members (plain gRPC), disks (an
//! in-memory redb that survives a crash whole, as a synced disk would), the
//! TUN device and VIP movement (an ARP table in the world), and a freeze
//! (every link of the node held and released, while its own timers run).
//! Clocks run at one rate for every host.

pub mod check;
pub mod hosts;
pub mod net;
pub mod record;
pub mod run;
pub mod scenario;
pub mod stats;
