//! Moving a tunnel's address (its VIP) to the node that owns the tunnel
//! (DESIGN.md "Failover"): on Linux, add or remove the address through
//! netlink and announce it with gratuitous ARP so the segment's neighbours
//! (the peer's router) switch at once; or call an operator's hook script for
//! clouds that move addresses by API.
//!
//! A Linux VIP has a lifetime the owner renews while its lease holds, so
//! the kernel of a node that stopped without removing it (frozen, killed)
//! drops it by itself: otherwise that kernel goes on answering ARP for the
//! address and sends ARP requests from it, which turn the neighbours back
//! to a node that cannot serve them. The owner also announces its addresses
//! again with each renewal, so a neighbour turned away comes back soon.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use rtnetlink::packet_route::address::{AddressAttribute, CacheInfo};
use rtnetlink::packet_route::link::{LinkAttribute, State};

use crate::config::{Config, Vip};
use tokio::sync::{mpsc, oneshot};

/// When gratuitous ARPs go out after an address moves: at once, then again
/// in case the first crossed a neighbour's own probe, and once more after a
/// second, past Linux's neighbour `locktime` (1 s), which ignores an update
/// that comes too soon after another.
const GARP_AT: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(50),
    Duration::from_millis(250),
    Duration::from_millis(1100),
];

/// The lifetime of a Linux VIP (seconds, the kernel's unit), renewed every
/// [`REFRESH_EVERY`]: a node that stops renewing loses the address 2-3 s
/// later, when the kernel's next lifetime check finds it expired.
const LIFETIME_S: u32 = 2;
/// How often an owner renews its addresses and announces them again.
pub const REFRESH_EVERY: Duration = Duration::from_millis(500);

#[derive(Debug)]
enum VipMover {
    None,
    Linux {
        handle: rtnetlink::Handle,
        interface: String,
        ifindex: u32,
        prefix_len: u8,
        /// None without CAP_NET_RAW: addresses move, unannounced.
        garp: Option<Arc<garp::Announcer>>,
    },
    /// The operator's script, run by a worker task in the order the events
    /// came, each within [`HOOK_TIMEOUT`]: a slow or hung script never
    /// stalls the packet loop.
    Hook(mpsc::Sender<HookJob>),
}

enum HookJob {
    Run(&'static str, IpAddr),
    /// Answered once every job queued before it has run.
    Flush(oneshot::Sender<()>),
}

/// A hook still running after this is killed (and logged).
const HOOK_TIMEOUT: Duration = Duration::from_secs(10);
/// Events waiting for the hook; past this the loop waits for the worker.
const HOOK_QUEUE: usize = 1024;

impl VipMover {
    async fn new(vip: &Vip, node: &str) -> anyhow::Result<VipMover> {
        Ok(match vip {
            Vip::None => VipMover::None,
            Vip::Hook(path) => {
                let (jobs, mut queue) = mpsc::channel(HOOK_QUEUE);
                let (path, node) = (path.clone(), node.to_owned());
                tokio::spawn(async move {
                    while let Some(job) = queue.recv().await {
                        match job {
                            HookJob::Run(event, addr) => run_hook(&path, event, addr, &node).await,
                            HookJob::Flush(done) => {
                                let _ = done.send(());
                            }
                        }
                    }
                });
                VipMover::Hook(jobs)
            }
            Vip::Linux {
                interface,
                prefix_len,
            } => {
                let (handle, link) = crate::tun::link(interface)
                    .await
                    .context("the VIP interface")?;
                let mac = link
                    .attributes
                    .iter()
                    .find_map(|a| match a {
                        LinkAttribute::Address(m) => <[u8; 6]>::try_from(m.as_slice()).ok(),
                        _ => None,
                    })
                    .with_context(|| {
                        format!("VIP interface {interface} has no Ethernet address")
                    })?;
                let ifindex = link.header.index;
                let garp = match garp::Announcer::open(ifindex, mac) {
                    Ok(a) => Some(Arc::new(a)),
                    Err(e) => {
                        tracing::warn!(%interface, error = %e, "no gratuitous ARP (needs CAP_NET_RAW): neighbours learn a moved address only when they ask");
                        None
                    }
                };
                VipMover::Linux {
                    handle,
                    interface: interface.clone(),
                    ifindex,
                    prefix_len: *prefix_len,
                    garp,
                }
            }
        })
    }

    /// This node now owns `addr`.
    async fn up(&self, addr: IpAddr) {
        match self {
            VipMover::None => {}
            VipMover::Hook(jobs) => {
                let _ = jobs.send(HookJob::Run("up", addr)).await;
            }
            VipMover::Linux {
                handle,
                interface,
                ifindex,
                prefix_len,
                garp,
            } => {
                match add(handle, *ifindex, addr, *prefix_len).await {
                    Ok(()) => tracing::info!(%addr, %interface, "VIP added"),
                    Err(e) => {
                        tracing::error!(%addr, %interface, error = %e, "cannot add VIP");
                        return;
                    }
                }
                // IPv6 would want an unsolicited neighbour advertisement:
                // not done yet.
                if let (IpAddr::V4(v4), Some(garp)) = (addr, garp) {
                    announce(garp.clone(), v4, &GARP_AT);
                }
            }
        }
    }

    /// This node still owns `addr`: a new lifetime, and with `announce` one
    /// gratuitous ARP.
    async fn refresh(&self, addr: IpAddr, announce: bool) {
        let VipMover::Linux {
            handle,
            interface,
            ifindex,
            prefix_len,
            garp,
        } = self
        else {
            return;
        };
        if let Err(e) = add(handle, *ifindex, addr, *prefix_len).await {
            tracing::error!(%addr, %interface, error = %e, "cannot renew VIP");
        }
        if let (true, IpAddr::V4(v4), Some(garp)) = (announce, addr, garp)
            && let Err(e) = garp.announce(v4)
        {
            tracing::warn!(%addr, error = %e, "gratuitous ARP failed");
        }
    }

    /// Whether the interface this mover puts addresses on is up, carrier
    /// included (a pulled cable, a switch port down). Addresses that are
    /// not Linux's have no interface to check.
    async fn link_up(&self) -> bool {
        let VipMover::Linux {
            handle,
            interface,
            ifindex,
            ..
        } = self
        else {
            return true;
        };
        let link = handle
            .link()
            .get()
            .match_index(*ifindex)
            .execute()
            .try_next()
            .await;
        match link {
            Ok(Some(link)) => !link.attributes.iter().any(|a| {
                matches!(
                    a,
                    LinkAttribute::OperState(
                        State::Down | State::LowerLayerDown | State::NotPresent | State::Dormant
                    )
                )
            }),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(%interface, error = %e, "cannot read link state");
                false
            }
        }
    }

    /// Returns once every hook event queued so far has run.
    async fn flush(&self) {
        if let VipMover::Hook(jobs) = self {
            let (done, ran) = oneshot::channel();
            if jobs.send(HookJob::Flush(done)).await.is_ok() {
                let _ = ran.await;
            }
        }
    }

    /// This node no longer owns `addr`.
    async fn down(&self, addr: IpAddr) {
        match self {
            VipMover::None => {}
            VipMover::Hook(jobs) => {
                let _ = jobs.send(HookJob::Run("down", addr)).await;
            }
            VipMover::Linux {
                handle,
                interface,
                ifindex,
                ..
            } => {
                let mut found = handle
                    .address()
                    .get()
                    .set_link_index_filter(*ifindex)
                    .set_address_filter(addr)
                    .execute();
                loop {
                    match found.try_next().await {
                        Ok(Some(msg)) => {
                            let is_it = msg.attributes.iter().any(|a| {
                                matches!(a, AddressAttribute::Address(a) | AddressAttribute::Local(a) if *a == addr)
                            });
                            if !is_it {
                                continue;
                            }
                            match handle.address().del(msg).execute().await {
                                Ok(()) => tracing::info!(%addr, %interface, "VIP removed"),
                                Err(e) => {
                                    tracing::error!(%addr, %interface, error = %e, "cannot remove VIP")
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!(%addr, %interface, error = %e, "cannot list addresses");
                            break;
                        }
                    }
                }
            }
        }
    }
}

/// Sends a gratuitous ARP for `ip` at each of `at` from now.
fn announce(garp: Arc<garp::Announcer>, ip: Ipv4Addr, at: &'static [Duration]) {
    tokio::spawn(async move {
        let mut last = Duration::ZERO;
        for &when in at {
            tokio::time::sleep(when - last).await;
            last = when;
            if let Err(e) = garp.announce(ip) {
                tracing::warn!(%ip, error = %e, "gratuitous ARP failed");
            }
        }
    });
}

/// Adds `addr`, or renews it, with a lifetime of [`LIFETIME_S`].
async fn add(
    handle: &rtnetlink::Handle,
    ifindex: u32,
    addr: IpAddr,
    prefix_len: u8,
) -> Result<(), rtnetlink::Error> {
    let mut req = handle.address().add(ifindex, addr, prefix_len).replace();
    let mut lifetime = CacheInfo::default();
    lifetime.ifa_preferred = LIFETIME_S;
    lifetime.ifa_valid = LIFETIME_S;
    req.message_mut()
        .attributes
        .push(AddressAttribute::CacheInfo(lifetime));
    req.execute().await
}

/// Each tunnel's addresses that move with it: its outer address (the VIP
/// peers reach) and, if configured, the LAN-side gateway address its local
/// hosts route through.
#[derive(Debug)]
pub struct TunnelAddresses {
    outer: VipMover,
    lan: VipMover,
    /// Tunnels come and go with live configuration.
    by_tunnel: std::sync::Mutex<BTreeMap<String, (IpAddr, Option<IpAddr>)>>,
}

impl TunnelAddresses {
    /// None in a standalone node (nothing moves).
    pub async fn new(config: &Config) -> anyhow::Result<TunnelAddresses> {
        let (outer, lan) = match &config.cluster {
            Some(s) => (
                VipMover::new(&s.vip, &config.node_name).await?,
                VipMover::new(&s.lan_vip, &config.node_name)
                    .await
                    .context("the LAN-side interface")?,
            ),
            None => (VipMover::None, VipMover::None),
        };
        Ok(TunnelAddresses {
            outer,
            lan,
            by_tunnel: std::sync::Mutex::new(
                config
                    .connections
                    .iter()
                    .map(|c| (c.ike.name.clone(), (c.ike.local_addr, c.lan_addr)))
                    .collect(),
            ),
        })
    }

    fn addresses(&self, tunnel: &str) -> Option<(IpAddr, Option<IpAddr>)> {
        self.tunnels().get(tunnel).copied()
    }

    fn tunnels(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, (IpAddr, Option<IpAddr>)>> {
        self.by_tunnel
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `tunnel`'s addresses from now on (configured live), or none.
    pub fn set(&self, tunnel: &str, addresses: Option<(IpAddr, Option<IpAddr>)>) {
        match addresses {
            Some(a) => self.tunnels().insert(tunnel.to_owned(), a),
            None => self.tunnels().remove(tunnel),
        };
    }

    /// This node now sends for `tunnel`.
    pub async fn up(&self, tunnel: &str) {
        if let Some((outer, lan)) = self.addresses(tunnel) {
            self.outer.up(outer).await;
            if let Some(lan) = lan {
                self.lan.up(lan).await;
            }
        }
    }

    /// This node still sends for `tunnel` (see [`VipMover::refresh`]).
    pub async fn refresh(&self, tunnel: &str, announce: bool) {
        if let Some((outer, lan)) = self.addresses(tunnel) {
            self.outer.refresh(outer, announce).await;
            if let Some(lan) = lan {
                self.lan.refresh(lan, announce).await;
            }
        }
    }

    /// Whether the outer and the LAN-side interface are up.
    pub async fn links_up(&self) -> bool {
        self.outer.link_up().await && self.lan.link_up().await
    }

    /// This node no longer sends for `tunnel`.
    pub async fn down(&self, tunnel: &str) {
        if let Some((outer, lan)) = self.addresses(tunnel) {
            self.outer.down(outer).await;
            if let Some(lan) = lan {
                self.lan.down(lan).await;
            }
        }
    }

    /// Every tunnel's addresses down: at start, and for `tandemd release`
    /// (which exits next: it waits for the hook to have run).
    pub async fn release_all(&self) {
        let tunnels: Vec<String> = self.tunnels().keys().cloned().collect();
        for tunnel in tunnels {
            self.down(&tunnel).await;
        }
        self.outer.flush().await;
        self.lan.flush().await;
    }
}

async fn run_hook(path: &PathBuf, event: &str, addr: IpAddr, node: &str) {
    let child = tokio::process::Command::new(path)
        .arg(event)
        .arg(addr.to_string())
        .arg(node)
        .kill_on_drop(true)
        .spawn();
    let status = match child {
        Ok(mut child) => match tokio::time::timeout(HOOK_TIMEOUT, child.wait()).await {
            Ok(status) => status,
            Err(_) => {
                tracing::error!(hook = %path.display(), event, %addr, "VIP hook killed after {HOOK_TIMEOUT:?}");
                return;
            }
        },
        Err(e) => Err(e),
    };
    match status {
        Ok(s) if s.success() => {
            tracing::info!(hook = %path.display(), event, %addr, "VIP hook done")
        }
        Ok(s) => tracing::error!(hook = %path.display(), event, %addr, %s, "VIP hook failed"),
        Err(e) => {
            tracing::error!(hook = %path.display(), event, %addr, error = %e, "cannot run VIP hook")
        }
    }
}

/// Gratuitous ARP through a packet socket: the only unsafe code in Tandem,
/// here in the IO layer, because neither std nor tokio sends link-layer
/// frames.
#[allow(unsafe_code)]
mod garp {
    use std::io;
    use std::net::Ipv4Addr;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const ETH_P_ARP: u16 = 0x0806;

    /// An ARP request for `ip` from `ip` (RFC 5227 section 3), broadcast.
    fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
        let mut f = [0u8; 42];
        f[..6].fill(0xff);
        f[6..12].copy_from_slice(&mac);
        f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
        f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
        f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
        f[18] = 6;
        f[19] = 4;
        f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
        f[22..28].copy_from_slice(&mac);
        f[28..32].copy_from_slice(&ip.octets());
        // Target hardware address stays zero.
        f[38..42].copy_from_slice(&ip.octets());
        f
    }

    /// A packet socket for ARP on one interface, opened once: closing one
    /// waits for an RCU grace period, milliseconds that would stall the
    /// main loop at every announcement.
    #[derive(Debug)]
    pub struct Announcer {
        fd: OwnedFd,
        ifindex: u32,
        mac: [u8; 6],
    }

    impl Announcer {
        pub fn open(ifindex: u32, mac: [u8; 6]) -> io::Result<Announcer> {
            // SAFETY: plain socket(2); the descriptor is checked below.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    i32::from(ETH_P_ARP.to_be()),
                )
            };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: socket(2) just returned fd, and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            Ok(Announcer { fd, ifindex, mac })
        }

        /// Broadcasts one announcement of `ip`, without waiting for room
        /// in the interface's queue.
        pub fn announce(&self, ip: Ipv4Addr) -> io::Result<()> {
            let frame = frame(self.mac, ip);
            // SAFETY: sockaddr_ll is plain old data; all-zero is a valid value.
            let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            addr.sll_family = libc::AF_PACKET as u16;
            addr.sll_protocol = ETH_P_ARP.to_be();
            addr.sll_ifindex = self.ifindex as i32;
            addr.sll_halen = 6;
            addr.sll_addr[..6].fill(0xff);
            // SAFETY: the descriptor is open (owned by self); the buffer and
            // address outlive the call and the lengths are theirs.
            let sent = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast(),
                    frame.len(),
                    libc::MSG_DONTWAIT,
                    (&raw const addr).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if sent < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn frame_is_an_announcement_of_the_address() {
            let mac = [2, 0, 0, 0, 0, 1];
            let f = frame(mac, Ipv4Addr::new(192, 0, 2, 1));
            assert_eq!(&f[..6], &[0xff; 6]);
            assert_eq!(&f[12..14], &[0x08, 0x06]);
            assert_eq!(&f[22..28], &mac);
            assert_eq!(&f[28..32], &[192, 0, 2, 1], "sender is the VIP");
            assert_eq!(&f[38..42], &[192, 0, 2, 1], "and so is the target");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hook gets `up|down ADDRESS NODE`, in order, and a failing hook
    /// is logged, not fatal.
    #[tokio::test]
    async fn the_hook_is_called_with_the_event_the_address_and_the_node() {
        let dir = std::env::temp_dir().join(format!("tandem-vip-hook-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let calls = dir.join("calls");
        let hook = dir.join("hook.sh");
        std::fs::write(
            &hook,
            format!("#!/bin/sh\necho \"$@\" >> {}\n", calls.display()),
        )
        .unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o700)).unwrap();
        }
        let mover = VipMover::new(&Vip::Hook(hook), "gw2").await.unwrap();
        let addr: IpAddr = "192.0.2.1".parse().unwrap();
        mover.up(addr).await;
        mover.down(addr).await;
        let missing = VipMover::new(&Vip::Hook(dir.join("absent")), "gw2")
            .await
            .unwrap();
        missing.up(addr).await;
        missing.flush().await;
        mover.flush().await;
        assert_eq!(
            std::fs::read_to_string(&calls).unwrap(),
            "up 192.0.2.1 gw2\ndown 192.0.2.1 gw2\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
