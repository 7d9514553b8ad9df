//! A highly available site: the customer's device (strongSwan) and several
//! gateway nodes, each node in its own namespace, all on one outer segment
//! (a bridge in the peer's namespace). The tunnel's address (the VIP) moves
//! between the nodes by netlink and gratuitous ARP. The nodes talk Raft on a
//! second segment of their own (another bridge), so a test can cut a node's
//! cluster link and leave its outer link up. Behind them is one LAN (a third
//! namespace) whose hosts route the peer's networks through a LAN-side
//! gateway address that moves with the tunnel, so a TCP connection through
//! the tunnel can outlive a takeover.

use std::process::Command;

use anyhow::Context as _;

use crate::{
    Netns, SiteToSite, TempDir, Tunnel, forwarding, inner_host, require_environment, run_output,
    unique,
};

#[derive(Debug)]
pub struct HaSite {
    // Field order is drop order: namespaces before the directory with logs.
    pub peer: Netns,
    /// The site's LAN: its hosts ([`SiteToSite::GW_INNER`], [`HaSite::GW_INNER_B`]).
    pub lan: Netns,
    /// Each node's interface on the LAN.
    pub lan_ifs: Vec<String>,
    pub nodes: Vec<Netns>,
    /// Each node's interface on the outer segment (inside its namespace).
    pub node_ifs: Vec<String>,
    /// Each node's interface on the cluster segment.
    pub cluster_ifs: Vec<String>,
    pub dir: TempDir,
}

impl HaSite {
    /// The tunnel's address, on whichever node owns it.
    pub const VIP: &str = SiteToSite::GW_OUTER;
    /// A second tunnel's address, and its inner networks (peer, gateway).
    pub const VIP_B: &str = "192.0.2.4";
    pub const PEER_INNER_B: &str = "10.3.0.1";
    pub const GW_INNER_B: &str = "10.4.0.1";
    /// The LAN-side gateway addresses of the two tunnels.
    pub const LAN_GW: &str = "10.2.255.254";
    pub const LAN_GW_B: &str = "10.4.255.254";

    /// A second customer's device on the outer segment (its own namespace,
    /// so its own strongSwan): [`HaSite::DEVICE_B`] outside,
    /// [`HaSite::PEER_INNER_B`] inside.
    pub const DEVICE_B: &str = "192.0.2.3";

    /// Makes the namespace of [`HaSite::DEVICE_B`].
    pub fn device_b(&self) -> anyhow::Result<Netns> {
        let ns = Netns::new()?;
        let outer = self.plug(&self.peer, &ns, "br0", Some(Self::DEVICE_B))?;
        inner_host(&ns, &outer, Self::PEER_INNER_B)?;
        Ok(ns)
    }

    /// Node `i`'s (1-based) address on the cluster segment.
    pub fn cluster_addr(i: usize) -> String {
        format!("198.51.100.{}", 10 + i)
    }

    /// The cluster of this site: each member on its own cluster address,
    /// facing the peer on the standard ports, moving the VIPs and LAN-side
    /// gateway addresses on its interfaces; `mode` is extra `[cluster]` lines.
    pub fn cluster(
        &self,
        gateways: u64,
        witnesses: u64,
        mode: &str,
    ) -> anyhow::Result<crate::cluster::Cluster> {
        let mut c = crate::cluster::Cluster::new(
            &self.dir.path().join("cluster"),
            gateways,
            witnesses,
            10_000,
        )?;
        for (id, m) in &mut c.members {
            let i = *id as usize;
            m.addr = Self::cluster_addr(i);
            m.node.ike_port = 500;
            m.node.natt_port = 4500;
            m.metrics = Some(format!("{}:9100", Self::cluster_addr(i)));
            m.extra = format!(
                "{mode}lease = \"400ms\"\nvip_interface = \"{}\"\nvip_prefix_len = 24\nlan_interface = \"{}\"\nlan_prefix_len = 16\n",
                self.node_ifs[i - 1],
                self.lan_ifs[i - 1]
            );
        }
        Ok(c)
    }

    /// Starts every member of `c` in its namespace, the gateways with
    /// `gw_side`, and waits for a leader and for gateway 1 to own the tunnel
    /// and hold its address.
    pub fn start_members(
        &self,
        c: &mut crate::cluster::Cluster,
        gw_side: &Tunnel,
    ) -> anyhow::Result<()> {
        let ids: Vec<u64> = c.members.keys().copied().collect();
        for id in ids {
            let witness = c.members[&id].witness;
            c.start(
                &self.nodes[id as usize - 1],
                id,
                (!witness).then_some(gw_side),
            )?;
        }
        c.leader()?;
        crate::wait_for(
            "gateway 1 to own the tunnel and hold the VIP",
            std::time::Duration::from_secs(15),
            || Ok((self.vip_holders()? == [1]).then_some(())),
        )
    }

    /// Stops everything (the peer, the members, the namespaces) and checks
    /// nothing is left running.
    pub fn tear_down(self, c: crate::cluster::Cluster, peer: crate::Charon) -> anyhow::Result<()> {
        let mut namespaces = vec![self.peer.name().to_owned(), self.lan.name().to_owned()];
        namespaces.extend(self.nodes.iter().map(|n| n.name().to_owned()));
        let mut pids = vec![peer.pid()];
        pids.extend(c.running.values().map(crate::Tandemd::pid));
        drop((peer, c, self));
        crate::check_gone(&namespaces, &pids)
    }

    /// Takes node `i`'s cluster link down (`up` false) or back up.
    pub fn cluster_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        self.nodes[i - 1]
            .run(&["ip", "link", "set", &self.cluster_ifs[i - 1], state])
            .map(drop)
    }

    /// Takes node `i`'s outer link down (`up` false) or back up, as a cable
    /// or switch port would: its bridge port, so the node sees no carrier.
    pub fn outer_link(&self, i: usize, up: bool) -> anyhow::Result<()> {
        let state = if up { "up" } else { "down" };
        // plug() names the two ends h<n> (the node's) and p<n> (the bridge's).
        let port = self.node_ifs[i - 1].replacen('h', "p", 1);
        self.peer
            .run(&["ip", "link", "set", &port, state])
            .map(drop)
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
        // The cluster segment: a bridge with no address of the peer's on it.
        peer.run(&["ip", "link", "add", "cl0", "type", "bridge"])?;
        peer.run(&["ip", "link", "set", "cl0", "up"])?;
        let lan = Netns::new()?;
        lan.run(&["ip", "link", "add", "lan0", "type", "bridge"])?;
        lan.run(&["ip", "link", "set", "lan0", "up"])?;
        for (host, gw, peer_net) in [
            (SiteToSite::GW_INNER, Self::LAN_GW, SiteToSite::PEER_NET),
            (Self::GW_INNER_B, Self::LAN_GW_B, "10.3.0.0/16"),
        ] {
            lan.run(&["ip", "addr", "add", &format!("{host}/16"), "dev", "lan0"])?;
            lan.run(&["ip", "route", "add", peer_net, "via", gw])?;
        }
        let mut site = HaSite {
            peer,
            lan,
            lan_ifs: Vec::new(),
            nodes: Vec::new(),
            node_ifs: Vec::new(),
            cluster_ifs: Vec::new(),
            dir,
        };
        inner_host(&site.peer, "br0", SiteToSite::PEER_INNER)?;
        site.peer.run(&[
            "ip",
            "addr",
            "add",
            &format!("{}/16", Self::PEER_INNER_B),
            "dev",
            "lo",
        ])?;
        for i in 1..=nodes {
            let ns = Netns::new()?;
            let node_if = site.plug(&site.peer, &ns, "br0", None)?;
            let cluster_if = site.plug(&site.peer, &ns, "cl0", Some(&Self::cluster_addr(i)))?;
            // Its own LAN addresses (the moving gateway ones come on top), so
            // a standby still delivers what it decrypts during a handover.
            let own_lan = format!("10.2.255.{}/16", 10 + i);
            let lan_if = site.plug(&site.lan, &ns, "lan0", Some(&own_lan))?;
            let own_lan_b = format!("10.4.255.{}/16", 10 + i);
            ns.run(&["ip", "addr", "add", &own_lan_b, "dev", &lan_if])?;
            forwarding(&ns, &[&node_if, &lan_if])?;
            site.nodes.push(ns);
            site.node_ifs.push(node_if);
            site.cluster_ifs.push(cluster_if);
            site.lan_ifs.push(lan_if);
        }
        Ok(site)
    }

    /// Connects `ns` to `bridge` (in `hub`) with a veth pair, `addr` (/24
    /// unless it says) on its end; returns the interface name in `ns`.
    fn plug(
        &self,
        hub: &Netns,
        ns: &Netns,
        bridge: &str,
        addr: Option<&str>,
    ) -> anyhow::Result<String> {
        // Created in the root namespace first: names unique there too.
        let n = unique("");
        let (inside, port) = (format!("h{n}"), format!("p{n}"));
        run_output(Command::new("ip").args([
            "link",
            "add",
            &inside,
            "netns",
            ns.name(),
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            hub.name(),
        ]))?;
        hub.run(&["ip", "link", "set", &port, "master", bridge, "up"])?;
        if let Some(addr) = addr {
            let addr = if addr.contains('/') {
                addr.to_owned()
            } else {
                format!("{addr}/24")
            };
            ns.run(&["ip", "addr", "add", &addr, "dev", &inside])?;
        }
        ns.run(&["ip", "link", "set", &inside, "up"])?;
        Ok(inside)
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
            lan_addr: Some(Self::LAN_GW.into()),
        }
    }

    /// The peer's side of a second tunnel, to [`HaSite::VIP_B`] with its own
    /// inner networks.
    pub fn tunnel_b(&self, name: &str, ike_proposal: &str, esp_proposal: &str) -> Tunnel {
        Tunnel {
            remote_addr: Self::VIP_B.into(),
            local_ts: "10.3.0.0/16".into(),
            remote_ts: "10.4.0.0/16".into(),
            lan_addr: Some(Self::LAN_GW_B.into()),
            ..self.tunnel(name, ike_proposal, esp_proposal)
        }
    }

    /// Which nodes (1-based) have the VIP on their segment interface.
    pub fn vip_holders(&self) -> anyhow::Result<Vec<usize>> {
        self.holders_of(Self::VIP)
    }

    /// Which nodes (1-based) have `vip` on their segment interface.
    pub fn holders_of(&self, vip: &str) -> anyhow::Result<Vec<usize>> {
        let mut out = Vec::new();
        for (i, (ns, dev)) in self.nodes.iter().zip(&self.node_ifs).enumerate() {
            let addrs = ns
                .run(&["ip", "-4", "-o", "addr", "show", "dev", dev])
                .with_context(|| format!("addresses of node {}", i + 1))?;
            if addrs.contains(&format!(" {vip}/")) {
                out.push(i + 1);
            }
        }
        Ok(out)
    }
}
