//! Picking payloads out of a parsed message and building the common ones.

use tandem_crypto::SecureRandom;

use crate::message::{
    Identity, KeyExchange, Message, Notify, Payload, Proposal, ProtocolId, Spi, TrafficSelector,
    notify,
};

/// Our nonces are 32 bytes: at least half the largest PRF key we use, as section
/// 2.10 asks, and what strongSwan sends.
pub(crate) const NONCE_LEN: usize = 32;

pub(crate) fn nonce(rng: &mut dyn SecureRandom) -> Vec<u8> {
    let mut n = vec![0; NONCE_LEN];
    rng.fill(&mut n);
    n
}

/// A fresh ESP SPI; zero is reserved (RFC 4303 section 2.1).
pub(crate) fn child_spi(rng: &mut dyn SecureRandom) -> u32 {
    loop {
        let [a, b, c, d, ..] = rng.next_u64().to_be_bytes();
        let spi = u32::from_be_bytes([a, b, c, d]);
        if spi != 0 {
            return spi;
        }
    }
}

/// A fresh IKE SPI; zero means "not yet known" in the header.
pub(crate) fn ike_spi(rng: &mut dyn SecureRandom) -> u64 {
    loop {
        let spi = rng.next_u64();
        if spi != 0 {
            return spi;
        }
    }
}

pub(crate) fn notify_payload(kind: u16, data: Vec<u8>) -> Payload {
    Payload::Notify(Notify {
        protocol: ProtocolId::Unknown(0),
        spi: Spi::None,
        kind,
        data,
    })
}

pub(crate) fn find_notify(msg: &Message, kind: u16) -> Option<&Notify> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind == kind => Some(n),
        _ => None,
    })
}

/// The first error notify (types below 16384), which makes a response a refusal.
pub(crate) fn error_notify(msg: &Message) -> Option<u16> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::Notify(n) if n.kind < notify::FIRST_STATUS => Some(n.kind),
        _ => None,
    })
}

pub(crate) fn sa(msg: &Message) -> Option<&[Proposal]> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::Sa(v) => Some(v.as_slice()),
        _ => None,
    })
}

pub(crate) fn ke(msg: &Message) -> Option<&KeyExchange> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::Ke(k) => Some(k),
        _ => None,
    })
}

pub(crate) fn nonce_of(msg: &Message) -> Option<&[u8]> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::Nonce(n) => Some(n.as_slice()),
        _ => None,
    })
}

pub(crate) fn id_i(msg: &Message) -> Option<&Identity> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::IdI(i) => Some(i),
        _ => None,
    })
}

pub(crate) fn id_r(msg: &Message) -> Option<&Identity> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::IdR(i) => Some(i),
        _ => None,
    })
}

pub(crate) fn auth(msg: &Message) -> Option<&[u8]> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::Auth(a) => Some(a.data.as_slice()),
        _ => None,
    })
}

pub(crate) fn ts_i(msg: &Message) -> Option<&[TrafficSelector]> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::TsI(t) => Some(t.as_slice()),
        _ => None,
    })
}

pub(crate) fn ts_r(msg: &Message) -> Option<&[TrafficSelector]> {
    msg.payloads.iter().find_map(|p| match p {
        Payload::TsR(t) => Some(t.as_slice()),
        _ => None,
    })
}

/// Logs the notifies of a message that we do not act on: errors loudly, status
/// notifies (USE_TRANSPORT_MODE, INITIAL_CONTACT, ...) quietly since they are
/// optional hints we may ignore.
pub(crate) fn log_notifies(msg: &Message) {
    for p in &msg.payloads {
        if let Payload::Notify(n) = p {
            if n.kind < notify::FIRST_STATUS {
                tracing::warn!(kind = n.kind, "peer sent error notify");
            } else {
                tracing::debug!(kind = n.kind, "peer sent status notify");
            }
        }
    }
}
