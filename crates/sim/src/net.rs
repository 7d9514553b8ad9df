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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let a: SocketAddr = "198.51.100.7:500"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let b: SocketAddr = "192.0.2.1:4500".parse().unwrap_or_else(|_| unreachable!());
        let f = frame(a, b, b"abc");
        assert_eq!(unframe(&f), Some((a, b, &b"abc"[..])));
    }
}
