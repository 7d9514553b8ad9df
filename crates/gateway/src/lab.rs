//! A site in miniature, for `tandemd demo` and the failover simulator: the
//! addresses of a customer's device and of the tunnels, probe packets that
//! count every loss and duplicate, and an outer segment whose addresses move
//! between nodes the way a VIP does (the last node to bring an address up
//! takes it, as a gratuitous ARP would make it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

/// A node on a [`Segment`]: a gateway's cluster id.
pub type NodeId = u64;

/// Probes per tunnel and direction: one every 10 ms.
pub const PROBE_EVERY: std::time::Duration = std::time::Duration::from_millis(10);

/// The customer's device's outer address.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

/// Tunnel `i`'s address on the outer segment (its VIP).
pub fn vip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 1 + i)
}

/// Tunnel `i`'s LAN-side gateway address.
pub fn lan_addr(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, i, 254)
}

/// The probing host behind the customer's device, on tunnel `i`.
pub fn peer_inner(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, i, 1)
}

/// The host on the cloud-side LAN that echoes tunnel `i`'s probes.
pub fn lan_inner(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 2, i, 1)
}

/// The tunnel index an address belongs to (VIP or LAN-side address).
pub fn tunnel_of(addr: IpAddr) -> Option<u8> {
    let IpAddr::V4(v4) = addr else {
        return None;
    };
    let o = v4.octets();
    if o[..3] == [192, 0, 2] && o[3] >= 1 {
        Some(o[3] - 1)
    } else if o[..2] == [10, 2] && o[3] == 254 {
        Some(o[2])
    } else {
        None
    }
}

/// The gateway configuration of tunnel `i`, as `[[connection]]` TOML.
pub fn gateway_connection(i: u8) -> String {
    format!(
        "[[connection]]\nname = \"t{i}\"\nlocal_addr = \"{}\"\nremote_addr = \"{PEER_IP}\"\n\
         psk = \"lab-pre-shared-key-{i}-0123456789\"\n\
         ike_proposals = [\"aes128gcm16-prfsha256-curve25519\"]\nesp_proposals = [\"aes128gcm16\"]\n\
         local_ts = [\"10.2.{i}.0/24\"]\nremote_ts = [\"10.1.{i}.0/24\"]\nlan_addr = \"{}\"\n",
        vip(i),
        lan_addr(i)
    )
}

/// The customer's device's whole configuration for `tunnels` tunnels: a
/// standalone node that initiates each one.
pub fn peer_config(tunnels: u8, control_socket: &str) -> String {
    let mut t = format!(
        "[node]\nname = \"peer\"\ncontrol_socket = \"{control_socket}\"\n[ike]\nlisten = [\"{PEER_IP}\"]\n"
    );
    for i in 0..tunnels {
        t += &format!(
            "[[connection]]\nname = \"t{i}\"\nlocal_addr = \"{PEER_IP}\"\nremote_addr = \"{}\"\n\
             psk = \"lab-pre-shared-key-{i}-0123456789\"\n\
             ike_proposals = [\"aes128gcm16-prfsha256-curve25519\"]\nesp_proposals = [\"aes128gcm16\"]\n\
             local_ts = [\"10.1.{i}.0/24\"]\nremote_ts = [\"10.2.{i}.0/24\"]\ninitiate = true\n",
            vip(i)
        );
    }
    t
}

/// Which node each tunnel address is on.
#[derive(Debug, Default, Clone)]
pub struct Segment {
    /// Whom each address resolves to: the last node to announce it.
    arp: BTreeMap<IpAddr, NodeId>,
    /// The addresses each node has configured (it accepts datagrams for
    /// those only, as its kernel would).
    held: BTreeMap<NodeId, BTreeSet<IpAddr>>,
}

impl Segment {
    /// `node` brings tunnel `i`'s addresses up (`up`) or down.
    pub fn moved(&mut self, node: NodeId, i: u8, up: bool) {
        let held = self.held.entry(node).or_default();
        for a in [IpAddr::V4(vip(i)), IpAddr::V4(lan_addr(i))] {
            if up {
                held.insert(a);
                self.arp.insert(a, node);
            } else {
                held.remove(&a);
                if self.arp.get(&a) == Some(&node) {
                    self.arp.remove(&a);
                }
            }
        }
    }

    /// A (re)started node holds nothing (tandemd releases its addresses at
    /// start); its old announcements stay in the neighbours' caches.
    pub fn booted(&mut self, node: NodeId) {
        self.held.remove(&node);
    }

    /// Where a datagram for `addr` goes.
    pub fn route(&self, addr: IpAddr) -> Option<NodeId> {
        self.arp.get(&addr).copied()
    }

    /// Does `node` accept datagrams for `addr`?
    pub fn holds(&self, node: NodeId, addr: IpAddr) -> bool {
        self.held.get(&node).is_some_and(|h| h.contains(&addr))
    }

    /// The nodes that hold `addr`.
    pub fn holders(&self, addr: IpAddr) -> impl Iterator<Item = NodeId> + '_ {
        self.held
            .iter()
            .filter(move |(_, h)| h.contains(&addr))
            .map(|(n, _)| *n)
    }
}

/// A probe: an IPv4/UDP packet whose payload is the tunnel's index and a
/// sequence number, so every loss and duplicate can be counted.
pub fn probe(src: Ipv4Addr, dst: Ipv4Addr, tunnel: u8, seq: u64) -> Vec<u8> {
    let mut p = vec![0u8; 20 + 8 + 9];
    let len = p.len() as u16;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let sum = checksum(&p[..20]);
    p[10..12].copy_from_slice(&sum.to_be_bytes());
    p[20..22].copy_from_slice(&7000u16.to_be_bytes());
    p[22..24].copy_from_slice(&7000u16.to_be_bytes());
    p[24..26].copy_from_slice(&(len - 20).to_be_bytes());
    p[28] = tunnel;
    p[29..37].copy_from_slice(&seq.to_be_bytes());
    p
}

/// A probe's (tunnel, seq, src, dst), if `packet` is one.
pub fn read_probe(packet: &[u8]) -> Option<(u8, u64, Ipv4Addr, Ipv4Addr)> {
    if packet.len() != 37 || packet[0] != 0x45 || packet[9] != 17 {
        return None;
    }
    let mut seq = [0; 8];
    seq.copy_from_slice(&packet[29..37]);
    let ip = |i: usize| Ipv4Addr::new(packet[i], packet[i + 1], packet[i + 2], packet[i + 3]);
    Some((packet[28], u64::from_be_bytes(seq), ip(12), ip(16)))
}

/// The probe with source and destination swapped: the LAN host's echo.
pub fn echo(packet: &[u8]) -> Option<Vec<u8>> {
    let (tunnel, seq, src, dst) = read_probe(packet)?;
    Some(probe(dst, src, tunnel, seq))
}

fn checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_round_trip_and_addresses_move() {
        let p = probe(peer_inner(1), lan_inner(1), 1, 77);
        assert_eq!(checksum(&p[..20]), 0, "a valid IPv4 header sums to zero");
        let e = echo(&p).unwrap_or_default();
        assert_eq!(read_probe(&e), Some((1, 77, lan_inner(1), peer_inner(1))));
        let mut s = Segment::default();
        let v = IpAddr::V4(vip(0));
        s.moved(1, 0, true);
        s.moved(2, 0, true);
        assert_eq!(s.route(v), Some(2), "the last announcement wins");
        assert!(s.holds(1, v) && s.holds(2, v));
        s.moved(1, 0, false);
        assert_eq!(
            s.route(v),
            Some(2),
            "a node that gives up an address it lost changes nothing"
        );
        assert_eq!(tunnel_of(IpAddr::V4(lan_addr(3))), Some(3));
    }
}
