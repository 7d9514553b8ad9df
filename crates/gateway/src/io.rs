//! What a gateway node does to the world besides Raft: datagrams out,
//! decrypted packets in to the protected network, and moving its tunnels'
//! addresses. tandemd's [`SystemIo`] is UDP sockets, a TUN device and
//! netlink; the failover simulator and the demo bring their own.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::net::UdpSocket;
use tun_rs::AsyncDevice;

use crate::config::Connection;
use crate::tun::Routes;
use crate::vip::TunnelAddresses;

/// Something the main loop has to react to.
#[derive(Debug)]
pub enum Input {
    /// A datagram that arrived on one of the node's IKE or NAT-T addresses.
    Udp {
        local: SocketAddr,
        remote: SocketAddr,
        data: Vec<u8>,
    },
    /// A packet from the protected network, to be sent through a tunnel.
    Inner(Vec<u8>),
}

pub trait Io: 'static {
    /// Sends one datagram from `local` (a tunnel's address) to `remote`.
    fn send_udp(
        &self,
        local: SocketAddr,
        remote: SocketAddr,
        datagram: &[u8],
    ) -> impl Future<Output = ()>;
    /// Hands a decrypted packet to the protected network.
    fn deliver(&self, packet: &[u8]) -> impl Future<Output = ()>;
    /// This node now sends for `tunnel`: its addresses come here.
    fn address_up(&self, tunnel: &str) -> impl Future<Output = ()>;
    /// This node no longer sends for `tunnel`.
    fn address_down(&self, tunnel: &str) -> impl Future<Output = ()>;
    /// This node still sends for `tunnel`, periodically while its lease
    /// holds: the addresses' lifetimes start again, and with `announce` the
    /// neighbours hear it again. (Only tandemd's addresses expire.)
    fn address_refresh(&self, _tunnel: &str, _announce: bool) -> impl Future<Output = ()> {
        async {}
    }
    /// Whether the node's outer and LAN-side links are up: a gateway that
    /// cannot reach the peer or the LAN hands its tunnels over.
    fn links_up(&self) -> impl Future<Output = bool> {
        async { true }
    }
    /// A tunnel is configured live, new or changed from `old`: its inner
    /// routes and addresses follow. (The simulator's and the demo's tunnels
    /// are fixed.)
    fn configure(&self, _conn: &Connection, _old: Option<&Connection>) -> impl Future<Output = ()> {
        async {}
    }
    /// A tunnel is removed live.
    fn unconfigure(&self, _conn: &Connection) -> impl Future<Output = ()> {
        async {}
    }
}

/// tandemd's IO: the bound UDP sockets, the TUN device and its routes, the
/// VIP movers.
pub struct SystemIo {
    pub sockets: BTreeMap<SocketAddr, Arc<UdpSocket>>,
    pub tun: Arc<AsyncDevice>,
    pub routes: Routes,
    pub addresses: TunnelAddresses,
}

impl std::fmt::Debug for SystemIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemIo")
            .field("sockets", &self.sockets.keys())
            .finish_non_exhaustive()
    }
}

impl SystemIo {
    async fn remove_routes(&self, prefixes: impl IntoIterator<Item = &(IpAddr, u8)>) {
        for &(addr, len) in prefixes {
            if let Err(e) = self.routes.remove(addr, len).await {
                tracing::warn!(error = %e, "stale route left");
            }
        }
    }
}

impl Io for SystemIo {
    async fn send_udp(&self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        let Some(socket) = self.sockets.get(&local) else {
            tracing::warn!(%local, "no socket bound for this address; datagram dropped");
            return;
        };
        if let Err(e) = socket.send_to(datagram, remote).await {
            tracing::debug!(%local, %remote, error = %e, "UDP send failed");
        }
    }

    async fn deliver(&self, packet: &[u8]) {
        if let Err(e) = self.tun.send(packet).await {
            tracing::debug!(error = %e, "TUN write failed");
        }
    }

    async fn address_up(&self, tunnel: &str) {
        self.addresses.up(tunnel).await;
    }

    async fn address_down(&self, tunnel: &str) {
        self.addresses.down(tunnel).await;
    }

    async fn links_up(&self) -> bool {
        self.addresses.links_up().await
    }

    async fn address_refresh(&self, tunnel: &str, announce: bool) {
        self.addresses.refresh(tunnel, announce).await;
    }

    async fn configure(&self, conn: &Connection, old: Option<&Connection>) {
        let before = old.map_or(&[][..], |o| &o.remote_prefixes[..]);
        self.remove_routes(before.iter().filter(|p| !conn.remote_prefixes.contains(p)))
            .await;
        for &(addr, len) in &conn.remote_prefixes {
            if let Err(e) = self.routes.add(addr, len).await {
                tracing::error!(tunnel = %conn.ike.name, error = %e, "cannot route the tunnel's prefixes");
            }
        }
        self.addresses
            .set(&conn.ike.name, Some((conn.ike.local_addr, conn.lan_addr)));
    }

    async fn unconfigure(&self, conn: &Connection) {
        self.remove_routes(&conn.remote_prefixes).await;
        self.addresses.down(&conn.ike.name).await;
        self.addresses.set(&conn.ike.name, None);
    }
}
