//! A highly available site: the customer's device (strongSwan) and several
//! gateway nodes, each node in its own namespace, all on one outer segment
//! (a bridge in the peer's namespace). The tunnel's address (the VIP) moves
//! between the nodes by netlink and gratuitous ARP; each node also has its
//! own address on the segment, which the cluster uses.

use std::process::Command;

use anyhow::Context as _;

use crate::{Netns, SiteToSite, TempDir, Tunnel, require_environment, run_output, unique};

#[derive(Debug)]
pub struct HaSite {
    // Field order is drop order: namespaces before the directory with logs.
    pub peer: Netns,
    pub nodes: Vec<Netns>,
    /// Each node's interface on the segment (inside its namespace).
    pub node_ifs: Vec<String>,
    pub dir: TempDir,
}

impl HaSite {
    /// The tunnel's address, on whichever node owns it.
    pub const VIP: &str = SiteToSite::GW_OUTER;

    /// Node `i`'s (1-based) own address on the segment.
    pub fn node_addr(i: usize) -> String {
        format!("192.0.2.{}", 10 + i)
    }

    pub fn new(nodes: usize) -> anyhow::Result<HaSite> {
        require_environment()?;
        let dir = TempDir::new()?;
        let peer = Netns::new()?;
        peer.run(&["ip", "link", "add", "br0", "type", "bridge"])?;
        peer.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/24", SiteToSite::PEER_OUTER),
            "dev",
            "br0",
        ])?;
        peer.run(&["ip", "link", "set", "br0", "up"])?;
        let mut site = HaSite {
            peer,
            nodes: Vec::new(),
            node_ifs: Vec::new(),
            dir,
        };
        setup_host(&site.peer, "br0", SiteToSite::PEER_INNER)?;
        for i in 1..=nodes {
            let ns = Netns::new()?;
            // Created in the root namespace first: names unique there too.
            let n = unique("");
            let (node_if, port) = (format!("hn{n}"), format!("hb{n}"));
            run_output(Command::new("ip").args([
                "link",
                "add",
                &node_if,
                "netns",
                ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                site.peer.name(),
            ]))?;
            site.peer
                .run(&["ip", "link", "set", &port, "master", "br0", "up"])?;
            ns.run(&[
                "ip",
                "addr",
                "add",
                &format!("{}/24", Self::node_addr(i)),
                "dev",
                &node_if,
            ])?;
            ns.run(&["ip", "link", "set", &node_if, "up"])?;
            setup_host(&ns, &node_if, SiteToSite::GW_INNER)?;
            site.nodes.push(ns);
            site.node_ifs.push(node_if);
        }
        Ok(site)
    }

    /// The peer's side of the tunnel to the VIP (long lifetimes, no DPD).
    pub fn tunnel(&self, name: &str, ike_proposal: &str, esp_proposal: &str) -> Tunnel {
        Tunnel {
            name: name.into(),
            local_addr: SiteToSite::PEER_OUTER.into(),
            remote_addr: Self::VIP.into(),
            psk: format!("{name}-psk-0123456789abcdef"),
            ike_proposal: ike_proposal.into(),
            esp_proposal: esp_proposal.into(),
            local_ts: SiteToSite::PEER_NET.into(),
            remote_ts: SiteToSite::GW_NET.into(),
            ike_rekey: std::time::Duration::from_secs(8 * 3600),
            child_rekey: std::time::Duration::from_secs(3600),
            dpd_delay: std::time::Duration::ZERO,
            initiate: false,
        }
    }

    /// Which nodes (1-based) have the VIP on their segment interface.
    pub fn vip_holders(&self) -> anyhow::Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, (ns, dev)) in self.nodes.iter().zip(&self.node_ifs).enumerate() {
            let addrs = ns
                .run(&["ip", "-4", "-o", "addr", "show", "dev", dev])
                .with_context(|| format!("addresses of node {}", i + 1))?;
            if addrs.contains(&format!(" {}/", Self::VIP)) {
                out.push(i + 1);
            }
        }
        Ok(out)
    }
}

/// The inner address on loopback, forwarding on, reverse-path filtering off
/// (decrypted packets arrive on a TUN device with a source routed elsewhere).
fn setup_host(ns: &Netns, dev: &str, inner: &str) -> anyhow::Result<()> {
    ns.run(&["ip", "addr", "add", &format!("{inner}/16"), "dev", "lo"])?;
    for conf in ["all", "default", dev] {
        ns.run(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{conf}.rp_filter=0"),
        ])?;
    }
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}
