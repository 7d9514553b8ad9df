//! Checked views of what crosses the dataplane: UDP-4500 payloads (RFC 3948
//! section 2) and the inner IP packets whose addresses pick the outbound SA.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The one-byte NAT-keepalive payload (RFC 3948 section 2.3).
pub const NAT_KEEPALIVE: [u8; 1] = [0xff];
/// Length of the ESP header: SPI and sequence number.
pub const ESP_HEADER_LEN: usize = 8;

/// What a UDP-4500 payload is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datagram<'a> {
    /// An IKE message, after the four-byte non-ESP marker.
    Ike(&'a [u8]),
    /// A NAT keepalive: nothing to do.
    Keepalive,
    /// An ESP packet (first four bytes: a non-zero SPI).
    Esp,
}

/// Demultiplexes a UDP-4500 payload. Anything too short to be ESP is treated as
/// a keepalive-like no-op rather than an error: there is nobody to tell.
pub fn classify(udp_payload: &[u8]) -> Datagram<'_> {
    match udp_payload {
        [0, 0, 0, 0, ike @ ..] => Datagram::Ike(ike),
        p if p.len() >= ESP_HEADER_LEN => Datagram::Esp,
        _ => Datagram::Keepalive,
    }
}

/// The fields of an inner packet that traffic selectors match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Source and destination ports for TCP, UDP and SCTP first fragments;
    /// zero otherwise (selectors with port ranges then match only full ranges).
    pub src_port: u16,
    pub dst_port: u16,
    /// ESP next-header value for this packet: 4 (IPv4) or 41 (IPv6).
    pub next_header: u8,
}

/// Reads the flow of an inner IPv4 or IPv6 packet; `None` if it is not one.
pub fn flow(packet: &[u8]) -> Option<Flow> {
    let version = packet.first()? >> 4;
    let (src, dst, protocol, l4, first_fragment, next_header) = match version {
        4 => {
            let ihl = usize::from(packet.first()? & 0x0f) * 4;
            if ihl < 20 || packet.len() < ihl {
                return None;
            }
            let frag_offset = u16::from_be_bytes([*packet.get(6)?, *packet.get(7)?]) & 0x1fff;
            let src: [u8; 4] = packet.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = packet.get(16..20)?.try_into().ok()?;
            (
                IpAddr::from(Ipv4Addr::from(src)),
                IpAddr::from(Ipv4Addr::from(dst)),
                *packet.get(9)?,
                packet.get(ihl..)?,
                frag_offset == 0,
                4,
            )
        }
        6 => {
            // Extension headers are not walked: selectors with ports on IPv6
            // packets carrying them match as "no ports" (conservative).
            let src: [u8; 16] = packet.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = packet.get(24..40)?.try_into().ok()?;
            (
                IpAddr::from(Ipv6Addr::from(src)),
                IpAddr::from(Ipv6Addr::from(dst)),
                *packet.get(6)?,
                packet.get(40..)?,
                true,
                41,
            )
        }
        _ => return None,
    };
    let has_ports = first_fragment && matches!(protocol, 6 | 17 | 132);
    let (src_port, dst_port) = match (has_ports, l4.get(..4)) {
        (true, Some(p)) => (
            u16::from_be_bytes([p[0], p[1]]),
            u16::from_be_bytes([p[2], p[3]]),
        ),
        _ => (0, 0),
    };
    Some(Flow {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
        next_header,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_udp_4500_payloads() {
        assert_eq!(classify(&[0, 0, 0, 0, 1, 2]), Datagram::Ike(&[1, 2]));
        assert_eq!(classify(&NAT_KEEPALIVE), Datagram::Keepalive);
        assert_eq!(classify(&[1, 2, 3, 4, 0, 0, 0, 1]), Datagram::Esp);
        assert_eq!(classify(&[1, 2, 3]), Datagram::Keepalive);
    }

    #[test]
    fn reads_ipv4_udp_flow() {
        let mut p = vec![0u8; 28];
        p[0] = 0x45;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 2, 0, 1]);
        p[16..20].copy_from_slice(&[10, 1, 0, 1]);
        p[20..24].copy_from_slice(&[0x13, 0x88, 0x00, 0x35]);
        let f = flow(&p).unwrap();
        assert_eq!(f.src, IpAddr::from([10, 2, 0, 1]));
        assert_eq!(
            (f.protocol, f.src_port, f.dst_port, f.next_header),
            (17, 5000, 53, 4)
        );
    }

    #[test]
    fn hostile_inner_packets_do_not_panic() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..120 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = flow(&bytes);
            let _ = classify(&bytes);
        }
    }
}
