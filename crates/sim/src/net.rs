//! The simulated networks. Raft runs over turmoil's TCP through the same
//! tonic transport tandemd uses (only TLS is left out). The outer segment
//! and the LAN are turmoil UDP: each datagram carries the addresses it was
//! sent from and to in a small header, and goes to whichever host holds the
//! destination address in the simulated ARP table, which moves when a node
//! brings a tunnel's addresses up (as a gratuitous ARP would).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use futures::StreamExt as _;
use tandem_cluster::transport::{Dialing, Listening};
use tandem_cluster::{Conn, Links};

/// Raft links over turmoil TCP.
#[derive(Debug)]
pub struct TurmoilLinks;

impl Links for TurmoilLinks {
    fn dial(&self, addr: &str) -> Dialing {
        let addr = addr.to_owned();
        Box::pin(async move {
            let stream = turmoil::net::TcpStream::connect(addr).await?;
            Ok(Conn::new(stream))
        })
    }

    fn listen(&self, addr: SocketAddr) -> Listening {
        Box::pin(async move {
            // turmoil binds only the unspecified address: the host has one.
            let listener =
                turmoil::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, addr.port())).await?;
            let incoming = futures::stream::unfold(listener, |listener| async move {
                let conn = listener.accept().await.map(|(s, _)| Conn::new(s));
                Some((conn, listener))
            });
            Ok(incoming.boxed())
        })
    }
}

/// The outer segment's port on every host (IKE and NAT-T share it: the
/// header says which port the datagram was for).
pub const OUTER_PORT: u16 = 4500;
/// The LAN's port on every host.
pub const LAN_PORT: u16 = 9000;

const HEADER: usize = 12;

/// Frames a datagram with the addresses it travels between (IPv4 only).
pub fn frame(from: SocketAddr, to: SocketAddr, datagram: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + datagram.len());
    for a in [from, to] {
        let ip = match a.ip() {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
        };
        out.extend_from_slice(&ip.octets());
        out.extend_from_slice(&a.port().to_be_bytes());
    }
    out.extend_from_slice(datagram);
    out
}

/// The addresses and the datagram of a framed message.
pub fn unframe(msg: &[u8]) -> Option<(SocketAddr, SocketAddr, &[u8])> {
    if msg.len() < HEADER {
        return None;
    }
    let addr = |b: &[u8]| {
        SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            u16::from_be_bytes([b[4], b[5]]),
        )
    };
    Some((addr(&msg[..6]), addr(&msg[6..12]), &msg[HEADER..]))
}

/// An ESP-in-UDP datagram's SPI and sequence number (None for IKE on port
/// 4500, which starts with the four-byte non-ESP marker, and for runts).
pub fn esp_header(port: u16, datagram: &[u8]) -> Option<(u32, u32)> {
    if port != 4500 || datagram.len() < 8 {
        return None;
    }
    let spi = u32::from_be_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]);
    if spi == 0 {
        return None;
    }
    let seq = u32::from_be_bytes([datagram[4], datagram[5], datagram[6], datagram[7]]);
    Some((spi, seq))
}

/// An IKE message's header fields, from a datagram to or from `port`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IkeHeader {
    pub spi_i: u64,
    pub spi_r: u64,
    pub exchange: u8,
    pub response: bool,
    pub message_id: u32,
}

pub fn ike_header(port: u16, datagram: &[u8]) -> Option<IkeHeader> {
    let msg = if port == 4500 {
        datagram.strip_prefix(&[0u8; 4][..])?
    } else {
        datagram
    };
    if msg.len() < 28 {
        return None;
    }
    let u64_at = |i: usize| {
        let mut b = [0; 8];
        b.copy_from_slice(&msg[i..i + 8]);
        u64::from_be_bytes(b)
    };
    Some(IkeHeader {
        spi_i: u64_at(0),
        spi_r: u64_at(8),
        exchange: msg[18],
        response: msg[19] & 0x20 != 0,
        message_id: u32::from_be_bytes([msg[20], msg[21], msg[22], msg[23]]),
    })
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
    fn frames_and_probes_round_trip() {
        let a: SocketAddr = "198.51.100.7:500"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let b: SocketAddr = "192.0.2.1:4500".parse().unwrap_or_else(|_| unreachable!());
        let f = frame(a, b, b"abc");
        assert_eq!(unframe(&f), Some((a, b, &b"abc"[..])));
        let p = probe(
            Ipv4Addr::new(10, 1, 0, 1),
            Ipv4Addr::new(10, 2, 0, 1),
            1,
            77,
        );
        assert_eq!(checksum(&p[..20]), 0, "a valid IPv4 header sums to zero");
        let e = echo(&p).unwrap_or_default();
        assert_eq!(
            read_probe(&e),
            Some((
                1,
                77,
                Ipv4Addr::new(10, 2, 0, 1),
                Ipv4Addr::new(10, 1, 0, 1)
            ))
        );
    }
}
