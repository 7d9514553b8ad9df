//! Child (ESP) SAs: what the gateway installs, traffic selector narrowing, and the
//! per-child bookkeeping an IKE SA keeps for rekeying.

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use tandem_crypto::{EncrAlg, IntegAlg, Secret};

use crate::config::EspProposal;
use crate::keys::ChildKeys;
use crate::message::TrafficSelector;

/// A negotiated child SA with its keys, for the ESP dataplane. `Debug` shows key
/// fingerprints only (see [`Secret`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChildSa {
    pub connection: String,
    pub inbound_spi: u32,
    pub outbound_spi: u32,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub esn: bool,
    pub inbound_encr_key: Secret,
    pub inbound_integ_key: Option<Secret>,
    pub outbound_encr_key: Secret,
    pub outbound_integ_key: Option<Secret>,
    /// As negotiated (narrowed).
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// ESP-in-UDP endpoints.
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Inbound SPI of the child SA this one rekeys.
    pub replaces: Option<u32>,
    /// Our outbound half must wait until `replaces` is deleted: we answered
    /// this rekey, and the peer installs its inbound SA only once it has read
    /// our response. As the rekey's initiator we switch at once: the peer
    /// installed its inbound SA before it answered, and waiting would send
    /// on the old SA after the peer deleted it.
    pub outbound_waits: bool,
}

#[cfg(feature = "testing")]
impl ChildSa {
    /// An AES-GCM-256 child SA of `connection` with both keys `key` (36
    /// bytes with the salt) and no selectors, between documentation
    /// addresses: for the tests of the layers that replicate and run SAs.
    pub fn for_tests(connection: &str, inbound_spi: u32, outbound_spi: u32, key: &[u8]) -> Self {
        ChildSa {
            connection: connection.to_owned(),
            inbound_spi,
            outbound_spi,
            encr: EncrAlg::AesGcm16 { key_bits: 256 },
            integ: None,
            esn: false,
            inbound_encr_key: Secret::new(key.to_vec()),
            inbound_integ_key: None,
            outbound_encr_key: Secret::new(key.to_vec()),
            outbound_integ_key: None,
            local_ts: Vec::new(),
            remote_ts: Vec::new(),
            local: SocketAddr::from(([192, 0, 2, 1], 4500)),
            remote: SocketAddr::from(([198, 51, 100, 1], 4500)),
            replaces: None,
            outbound_waits: false,
        }
    }
}

/// Everything about a new child except its keys, gathered by the exchange.
#[derive(Debug, Clone)]
pub(crate) struct ChildParams {
    pub connection: String,
    pub proposal: EspProposal,
    pub inbound_spi: u32,
    pub outbound_spi: u32,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub replaces: Option<u32>,
}

impl ChildParams {
    /// `exchange_initiator`: we sent the request of the exchange that created this
    /// child, so the initiator-to-responder keys are our outbound keys.
    pub fn into_child(self, keys: ChildKeys, exchange_initiator: bool) -> ChildSa {
        let (out_e, out_a, in_e, in_a) = if exchange_initiator {
            (keys.encr_i, keys.integ_i, keys.encr_r, keys.integ_r)
        } else {
            (keys.encr_r, keys.integ_r, keys.encr_i, keys.integ_i)
        };
        ChildSa {
            connection: self.connection,
            inbound_spi: self.inbound_spi,
            outbound_spi: self.outbound_spi,
            encr: self.proposal.encr,
            integ: self.proposal.integ,
            esn: self.proposal.esn,
            inbound_encr_key: in_e,
            inbound_integ_key: in_a,
            outbound_encr_key: out_e,
            outbound_integ_key: out_a,
            local_ts: self.local_ts,
            remote_ts: self.remote_ts,
            local: self.local,
            remote: self.remote,
            replaces: self.replaces,
            outbound_waits: self.replaces.is_some() && !exchange_initiator,
        }
    }
}

/// A child SA as its IKE SA tracks it.
#[derive(Debug, Clone)]
pub(crate) struct ChildEntry {
    pub sa: ChildSa,
    pub rekey_at: Instant,
    pub expire_at: Instant,
    /// Set once a rekey or delete of this child is under way, so timers do not
    /// start another.
    pub retiring: bool,
    /// A DELETE for this child is queued or outstanding.
    pub deleting: bool,
    /// A rekey of this child the peer started, for collision resolution
    /// (RFC 7296 section 2.8.1): the new child's inbound SPI and both nonces.
    pub rekeyed_by_peer: Option<RekeyRecord>,
}

impl ChildEntry {
    /// A child just installed or adopted: no rekey or delete under way.
    pub fn new(sa: ChildSa, rekey_at: Instant, expire_at: Instant) -> Self {
        Self {
            sa,
            rekey_at,
            expire_at,
            retiring: false,
            deleting: false,
            rekeyed_by_peer: None,
        }
    }
}

/// One completed rekey exchange of a child, as needed to find the redundant SA.
#[derive(Debug, Clone)]
pub(crate) struct RekeyRecord {
    pub new_inbound: u32,
    pub ni: Vec<u8>,
    pub nr: Vec<u8>,
}

impl RekeyRecord {
    /// The lowest nonce this exchange used (nonces compare as big-endian byte
    /// strings, i.e. lexicographically).
    pub fn lowest_nonce(&self) -> &[u8] {
        self.ni.as_slice().min(self.nr.as_slice())
    }
}

/// Responder narrowing (RFC 7296 section 2.9): every non-empty intersection of a
/// proposed selector with a configured one, minus results contained in another.
/// Empty means TS_UNACCEPTABLE.
pub(crate) fn narrow(
    proposed: &[TrafficSelector],
    configured: &[TrafficSelector],
) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for p in proposed {
        for c in configured {
            if let Some(ts) = intersect(p, c)
                && !out.contains(&ts)
            {
                out.push(ts);
            }
        }
    }
    // strongSwan proposes the triggering packet's selector first and then the
    // range; both narrow to the range's subset, so keep only the widest.
    let snapshot = out.clone();
    out.retain(|ts| !snapshot.iter().any(|o| o != ts && contains(o, ts)));
    out
}

fn intersect(a: &TrafficSelector, b: &TrafficSelector) -> Option<TrafficSelector> {
    let ip_protocol = match (a.ip_protocol, b.ip_protocol) {
        (0, p) | (p, 0) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start_port = a.start_port.max(b.start_port);
    let end_port = a.end_port.min(b.end_port);
    let start = max_ip(a.start, b.start)?;
    let end = min_ip(a.end, b.end)?;
    (start_port <= end_port && ip_le(start, end)?).then_some(TrafficSelector {
        ip_protocol,
        start_port,
        end_port,
        start,
        end,
    })
}

/// Whether `outer` covers `inner` entirely.
pub(crate) fn contains(outer: &TrafficSelector, inner: &TrafficSelector) -> bool {
    (outer.ip_protocol == 0 || outer.ip_protocol == inner.ip_protocol)
        && outer.start_port <= inner.start_port
        && inner.end_port <= outer.end_port
        && ip_le(outer.start, inner.start) == Some(true)
        && ip_le(inner.end, outer.end) == Some(true)
}

/// Address order within one family; `None` across families.
fn ip_le(a: IpAddr, b: IpAddr) -> Option<bool> {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => Some(a <= b),
        (IpAddr::V6(a), IpAddr::V6(b)) => Some(a <= b),
        _ => None,
    }
}

fn max_ip(a: IpAddr, b: IpAddr) -> Option<IpAddr> {
    Some(if ip_le(a, b)? { b } else { a })
}

fn min_ip(a: IpAddr, b: IpAddr) -> Option<IpAddr> {
    Some(if ip_le(a, b)? { a } else { b })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(start: &str, end: &str) -> TrafficSelector {
        TrafficSelector {
            ip_protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: start.parse().unwrap(),
            end: end.parse().unwrap(),
        }
    }

    #[test]
    fn equal_and_contained_selectors_are_accepted_as_proposed() {
        let ours = [ts("10.0.0.0", "10.0.255.255")];
        assert_eq!(narrow(&ours, &ours), ours);
        let inner = [ts("10.0.1.0", "10.0.1.255")];
        assert_eq!(narrow(&inner, &ours), inner);
    }

    #[test]
    fn wider_selectors_narrow_to_ours_and_disjoint_ones_fail() {
        let ours = [ts("10.0.0.0", "10.0.255.255")];
        assert_eq!(narrow(&[ts("0.0.0.0", "255.255.255.255")], &ours), ours);
        assert!(narrow(&[ts("10.1.0.0", "10.1.255.255")], &ours).is_empty());
        assert!(narrow(&[ts("::", "ffff::")], &ours).is_empty());
    }

    #[test]
    fn strongswan_packet_selector_then_range() {
        let ours = [ts("10.0.0.0", "10.0.255.255")];
        let mut packet = ts("10.0.0.5", "10.0.0.5");
        packet.ip_protocol = 1;
        packet.start_port = 8;
        packet.end_port = 8;
        assert_eq!(
            narrow(&[packet, ts("10.0.0.0", "10.0.255.255")], &ours),
            ours
        );
        // Only the packet selector fits when the range is wider than ours in the
        // other direction; it survives on its own.
        assert_eq!(narrow(&[packet], &ours), [packet]);
    }

    #[test]
    fn protocols_and_ports_intersect() {
        let mut a = ts("10.0.0.0", "10.0.0.255");
        a.ip_protocol = 6;
        a.start_port = 100;
        a.end_port = 200;
        let mut b = ts("10.0.0.0", "10.0.0.255");
        b.start_port = 150;
        let n = narrow(&[a], &[b]);
        assert_eq!(
            (n[0].ip_protocol, n[0].start_port, n[0].end_port),
            (6, 150, 200)
        );
        b.ip_protocol = 17;
        assert!(narrow(&[a], &[b]).is_empty());
    }
}
