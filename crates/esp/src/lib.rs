//! ESP dataplane, sans-IO (RFC 4303, RFC 3948): an SA database that seals inner
//! packets and opens ESP packets in place, with anti-replay, 64-bit ESN and
//! traffic-selector lookup. No sockets, clocks or randomness: the gateway
//! moves the bytes, this crate decides what they become.
#![forbid(unsafe_code)]

pub mod replay;
mod sadb;
pub mod wire;

pub use sadb::{
    EspError, MAX_INNER, NEXT_HEADER_DUMMY, Opened, PacketBuf, SaParams, SaStats, Sadb, Sealed,
    Selector, Selectors,
};
pub use wire::{Datagram, NAT_KEEPALIVE, classify};
