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
pub use tandem_ike::message::{ExchangeType, Header as IkeHeader};

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
/// 4500, keepalives and anything on another port).
pub fn esp_header(port: u16, datagram: &[u8]) -> Option<(u32, u32)> {
    if port != 4500 || tandem_esp::classify(datagram) != tandem_esp::Datagram::Esp {
        return None;
    }
    let word = |i: usize| {
        u32::from_be_bytes([
            datagram[i],
            datagram[i + 1],
            datagram[i + 2],
            datagram[i + 3],
        ])
    };
    Some((word(0), word(4)))
}

/// An IKE message's fixed header, from a datagram to or from `port` (after
/// the non-ESP marker on 4500), as tandem-ike parses it.
pub fn ike_header(port: u16, datagram: &[u8]) -> Option<IkeHeader> {
    let msg = match (port, tandem_esp::classify(datagram)) {
        (4500, tandem_esp::Datagram::Ike(msg)) => msg,
        (4500, _) => return None,
        _ => datagram,
    };
    IkeHeader::parse(msg).ok()
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
