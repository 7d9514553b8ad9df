//! The Tandem gateway node: configuration, the main loop that feeds the
//! sans-IO IKE endpoint and ESP dataplane, replication through the cluster,
//! and the IO around them (UDP sockets, TUN, VIPs) behind [`io::Io`], so the
//! failover simulator and the demo run the same node code as tandemd.

mod admin;
pub mod config;
pub mod control;
mod dataplane;
pub mod demo;
pub mod io;
pub mod lab;
pub mod node;
mod notify;
pub mod peer_config;
pub mod replication;
pub mod telemetry;
mod tun;
mod vip;
