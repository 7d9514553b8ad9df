//! Parsing and emitting [`Message`]s.
//!
//! Parsing walks the datagram with a [`Reader`], a cursor whose every access is
//! bounds-checked, so no input can make it panic; every `Vec` it fills grows by at
//! most one element per consumed byte group, so allocations stay bounded by the
//! datagram. Emitting writes into one `Vec` and patches lengths afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tandem_crypto::{CryptoError, SaCipher, SecureRandom};

use super::{
    Auth, Delete, ExchangeType, Header, Identity, KeyExchange, MAX_MESSAGE_LEN, MAX_PAYLOADS,
    Message, Notify, Payload, Proposal, ProtocolId, Spi, TrafficSelector, Transform, payload_type,
};

/// Why a datagram is not a valid IKEv2 message. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("truncated: needed {needed} bytes, had {had}")]
    Truncated { needed: usize, had: usize },
    #[error("IKE major version {0} is not 2")]
    UnsupportedVersion(u8),
    #[error("invalid syntax: {0}")]
    InvalidSyntax(&'static str),
    #[error("more than {} payloads", super::MAX_PAYLOADS)]
    TooManyPayloads,
    #[error("message is encrypted; decrypt it with the IKE SA's keys")]
    Encrypted,
    #[error("message has no Encrypted payload")]
    NotEncrypted,
    #[error("encrypted payload: {0}")]
    Crypto(#[from] CryptoError),
}

/// IKE header version byte: major 2, minor 0 (RFC 7296 section 3.1).
const VERSION: u8 = 0x20;
/// Header flags (RFC 7296 section 3.1). The Version flag (0x10) is never set by
/// IKEv2 implementations and ignored on receipt, like the reserved bits.
const FLAG_INITIATOR: u8 = 0x08;
const FLAG_RESPONSE: u8 = 0x20;
/// Critical bit of the generic payload header (RFC 7296 section 3.2).
const CRITICAL: u8 = 0x80;
/// Generic payload header: next payload, flags, 2-byte length.
const GENERIC_HEADER_LEN: usize = 4;
/// Offset of the IV in an encrypted message: the IKE header then the SK payload's
/// generic header. Everything before it is authenticated but not encrypted.
const SK_HEADER_END: usize = Header::LEN + GENERIC_HEADER_LEN;

/// Proposal and transform substructure "last or more" values (RFC 7296 3.3.1-2).
const LAST: u8 = 0;
const MORE_PROPOSALS: u8 = 2;
const MORE_TRANSFORMS: u8 = 3;
/// Attribute Format bit: set for the 2-byte TV form (RFC 7296 section 3.3.5).
const ATTR_TV: u16 = 0x8000;
const ATTR_KEY_LENGTH: u16 = 14;

/// Traffic selector types and their fixed lengths (RFC 7296 section 3.13.1).
const TS_IPV4_ADDR_RANGE: u8 = 7;
const TS_IPV4_LEN: usize = 16;
const TS_IPV6_ADDR_RANGE: u8 = 8;
const TS_IPV6_LEN: usize = 40;

/// Nonce length bounds (RFC 7296 section 3.9).
const NONCE_MIN: usize = 16;
const NONCE_MAX: usize = 256;

impl Header {
    /// Length of the fixed header on the wire.
    pub const LEN: usize = 28;

    /// Parses and checks the fixed header only: enough to demultiplex a datagram to
    /// an IKE SA before spending any work on it.
    pub fn parse(datagram: &[u8]) -> Result<Header, DecodeError> {
        parse_header(datagram).map(|(header, _)| header)
    }

    fn emit(&self, out: &mut Vec<u8>, next_payload: u8) {
        let mut flags = 0;
        if self.initiator {
            flags |= FLAG_INITIATOR;
        }
        if self.response {
            flags |= FLAG_RESPONSE;
        }
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.extend_from_slice(&[next_payload, VERSION, self.exchange.to_u8(), flags]);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        // Patched by `finish_header` once the whole message is written.
        out.extend_from_slice(&[0; 4]);
    }
}

/// The header and the type of the first payload.
fn parse_header(datagram: &[u8]) -> Result<(Header, u8), DecodeError> {
    let mut r = Reader::new(datagram);
    if datagram.len() < Header::LEN {
        return Err(DecodeError::Truncated {
            needed: Header::LEN,
            had: datagram.len(),
        });
    }
    let spi_i = r.u64()?;
    let spi_r = r.u64()?;
    let next_payload = r.u8()?;
    let version = r.u8()?;
    // Checked before anything else so that an IKEv1 peer gets a clear error
    // whatever the rest of its datagram looks like.
    let major = version >> 4;
    if major != VERSION >> 4 {
        return Err(DecodeError::UnsupportedVersion(major));
    }
    let exchange = ExchangeType::from_u8(r.u8()?);
    let flags = r.u8()?;
    let message_id = r.u32()?;
    let length = usize::try_from(r.u32()?).unwrap_or(usize::MAX);
    if length < Header::LEN {
        return Err(DecodeError::InvalidSyntax("length field below header size"));
    }
    if length > MAX_MESSAGE_LEN {
        return Err(DecodeError::InvalidSyntax(
            "length field above maximum message size",
        ));
    }
    if length > datagram.len() {
        return Err(DecodeError::Truncated {
            needed: length,
            had: datagram.len(),
        });
    }
    if length < datagram.len() {
        return Err(DecodeError::InvalidSyntax(
            "datagram longer than length field",
        ));
    }
    let header = Header {
        spi_i,
        spi_r,
        exchange,
        initiator: flags & FLAG_INITIATOR != 0,
        response: flags & FLAG_RESPONSE != 0,
        message_id,
    };
    Ok((header, next_payload))
}

impl Message {
    /// Parses an unencrypted message (IKE_SA_INIT, or an unprotected notify).
    /// Returns [`DecodeError::Encrypted`] when the message carries an SK payload.
    pub fn parse(datagram: &[u8]) -> Result<Message, DecodeError> {
        let (header, first) = parse_header(datagram)?;
        let body = datagram.get(Header::LEN..).unwrap_or_default();
        let payloads = parse_chain(first, body, Chain::Clear)?;
        Ok(Message { header, payloads })
    }

    /// Verifies, decrypts and parses a message whose payloads are inside an SK
    /// payload, with the sender's direction of the IKE SA keys.
    pub fn decrypt(datagram: &[u8], cipher: &SaCipher) -> Result<Message, DecodeError> {
        let (header, first) = parse_header(datagram)?;
        if first != payload_type::SK {
            // Walk the clear chain anyway: a chain that reaches SK later, or a
            // fragment, is malformed rather than merely unencrypted.
            let body = datagram.get(Header::LEN..).unwrap_or_default();
            parse_chain(first, body, Chain::Clear)?;
            return Err(DecodeError::NotEncrypted);
        }
        let mut r = Reader::new(datagram.get(Header::LEN..).unwrap_or_default());
        // The SK payload's next-payload field names the first inner payload, so
        // nothing can be chained after SK: its length must run to the end.
        let inner_first = r.u8()?;
        r.u8()?; // critical bit and reserved: SK is known, so both are ignored
        let sk_len = usize::from(r.u16()?);
        if sk_len < GENERIC_HEADER_LEN {
            return Err(DecodeError::InvalidSyntax("payload length below 4"));
        }
        if Header::LEN + sk_len != datagram.len() {
            return Err(DecodeError::InvalidSyntax(
                "SK payload does not end the message",
            ));
        }
        // Bounded by the header check: datagram.len() <= MAX_MESSAGE_LEN.
        let mut packet = datagram.to_vec();
        let range = cipher.open(&mut packet, SK_HEADER_END, None)?;
        let padded = packet
            .get(range)
            .ok_or(DecodeError::Crypto(CryptoError::Truncated))?;
        let (&pad_len, rest) = padded
            .split_last()
            .ok_or(DecodeError::InvalidSyntax("empty encrypted payload"))?;
        let inner_len = rest
            .len()
            .checked_sub(usize::from(pad_len))
            .ok_or(DecodeError::InvalidSyntax("pad length exceeds plaintext"))?;
        let inner = rest.get(..inner_len).unwrap_or_default();
        let payloads = parse_chain(inner_first, inner, Chain::Inner)?;
        Ok(Message { header, payloads })
    }

    /// Emits the message with its payloads in the clear (IKE_SA_INIT).
    ///
    /// Our own messages are far below [`MAX_MESSAGE_LEN`]; a caller building a
    /// larger one is a bug, caught by `debug_assert` (lengths saturate in release).
    pub fn emit(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buffer_len_hint());
        self.header.emit(&mut out, first_type(&self.payloads));
        emit_chain(&self.payloads, &mut out);
        finish_header(&mut out);
        out
    }

    /// Emits the message with every payload inside one SK payload, sealed with our
    /// direction of the IKE SA keys. The IV seed is drawn from `rng`.
    pub fn emit_encrypted(&self, cipher: &SaCipher, rng: &mut dyn SecureRandom) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.buffer_len_hint() + 64);
        self.header.emit(&mut out, payload_type::SK);
        out.extend_from_slice(&[first_type(&self.payloads), 0, 0, 0]);
        out.resize(out.len() + cipher.iv_len(), 0);
        let plaintext_start = out.len();
        emit_chain(&self.payloads, &mut out);
        // Pad so that plaintext, padding and the Pad Length byte fill whole blocks
        // (RFC 7296 section 3.14); the padding content is ours to choose.
        let unpadded = out.len() - plaintext_start + 1;
        let pad_len = unpadded.next_multiple_of(cipher.block_len()) - unpadded;
        out.resize(out.len() + pad_len, 0);
        out.push(u8::try_from(pad_len).unwrap_or(u8::MAX));
        out.resize(out.len() + cipher.icv_len(), 0);
        let sk_len = len_u16(out.len() - Header::LEN);
        out[Header::LEN + 2..SK_HEADER_END].copy_from_slice(&sk_len.to_be_bytes());
        finish_header(&mut out);
        // The layout was built just above to the cipher's own iv/block/icv sizes,
        // so sealing can only fail on a bug; sending the plaintext instead would
        // be far worse than stopping.
        #[allow(clippy::expect_used)]
        cipher
            .seal(&mut out, SK_HEADER_END, rng.next_u64(), None)
            .expect("SK payload laid out for this cipher");
        out
    }

    /// A capacity guess that avoids most reallocation while emitting.
    fn buffer_len_hint(&self) -> usize {
        Header::LEN + self.payloads.len() * 64
    }
}

impl Payload {
    /// The payload type number this payload is emitted with (RFC 7296 section 3.2).
    pub fn payload_type(&self) -> u8 {
        match self {
            Payload::Sa(_) => payload_type::SA,
            Payload::Ke(_) => payload_type::KE,
            Payload::IdI(_) => payload_type::IDI,
            Payload::IdR(_) => payload_type::IDR,
            Payload::Auth(_) => payload_type::AUTH,
            Payload::Nonce(_) => payload_type::NONCE,
            Payload::Notify(_) => payload_type::NOTIFY,
            Payload::Delete(_) => payload_type::DELETE,
            Payload::VendorId(_) => payload_type::VENDOR_ID,
            Payload::TsI(_) => payload_type::TSI,
            Payload::TsR(_) => payload_type::TSR,
            Payload::Unknown { payload_type, .. } => *payload_type,
        }
    }
}

/// Where a payload chain sits, which decides what meeting an SK payload means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chain {
    /// Directly after the IKE header.
    Clear,
    /// Inside a decrypted SK payload.
    Inner,
}

fn parse_chain(first: u8, bytes: &[u8], chain: Chain) -> Result<Vec<Payload>, DecodeError> {
    let mut r = Reader::new(bytes);
    let mut payloads = Vec::new();
    let mut next = first;
    while next != payload_type::NONE {
        match next {
            payload_type::SK => {
                return Err(match chain {
                    Chain::Inner => DecodeError::InvalidSyntax("SK payload inside SK"),
                    Chain::Clear if payloads.is_empty() => DecodeError::Encrypted,
                    // In IKEv2 only IKE_SA_INIT has clear payloads, and it is
                    // never encrypted.
                    Chain::Clear => DecodeError::InvalidSyntax("payload before SK payload"),
                });
            }
            // RFC 7383 fragments: we never send IKEV2_FRAGMENTATION_SUPPORTED, so
            // a peer must not send them.
            payload_type::SKF => return Err(DecodeError::InvalidSyntax("fragmented message")),
            _ => {}
        }
        if payloads.len() == MAX_PAYLOADS {
            return Err(DecodeError::TooManyPayloads);
        }
        let this = next;
        next = r.u8()?;
        let critical = r.u8()? & CRITICAL != 0;
        let body_len = usize::from(r.u16()?)
            .checked_sub(GENERIC_HEADER_LEN)
            .ok_or(DecodeError::InvalidSyntax("payload length below 4"))?;
        let body = r
            .take(body_len)
            .map_err(|_| DecodeError::InvalidSyntax("payload length exceeds message"))?;
        payloads.push(parse_payload(this, critical, body)?);
    }
    if !r.is_empty() {
        return Err(DecodeError::InvalidSyntax("data after last payload"));
    }
    Ok(payloads)
}

fn parse_payload(kind: u8, critical: bool, body: &[u8]) -> Result<Payload, DecodeError> {
    let mut r = Reader::new(body);
    // The critical bit only matters for types we do not understand (RFC 7296
    // section 2.5), so known types drop it.
    let payload = match kind {
        payload_type::SA => Payload::Sa(parse_sa(body)?),
        payload_type::KE => {
            let group = r.u16()?;
            r.u16()?; // reserved
            Payload::Ke(KeyExchange {
                group,
                data: r.rest().to_vec(),
            })
        }
        payload_type::IDI => Payload::IdI(parse_identity(&mut r)?),
        payload_type::IDR => Payload::IdR(parse_identity(&mut r)?),
        payload_type::AUTH => {
            let method = r.u8()?;
            r.take(3)?; // reserved
            Payload::Auth(Auth {
                method,
                data: r.rest().to_vec(),
            })
        }
        payload_type::NONCE => {
            if !(NONCE_MIN..=NONCE_MAX).contains(&body.len()) {
                return Err(DecodeError::InvalidSyntax("nonce length outside 16..=256"));
            }
            Payload::Nonce(body.to_vec())
        }
        payload_type::NOTIFY => {
            let protocol = ProtocolId::from_u8(r.u8()?);
            let spi_size = r.u8()?;
            let kind = r.u16()?;
            let spi = parse_spi(&mut r, spi_size)?;
            Payload::Notify(Notify {
                protocol,
                spi,
                kind,
                data: r.rest().to_vec(),
            })
        }
        payload_type::DELETE => Payload::Delete(parse_delete(&mut r)?),
        payload_type::VENDOR_ID => Payload::VendorId(body.to_vec()),
        payload_type::TSI => Payload::TsI(parse_selectors(&mut r)?),
        payload_type::TSR => Payload::TsR(parse_selectors(&mut r)?),
        _ => Payload::Unknown {
            payload_type: kind,
            critical,
            body: body.to_vec(),
        },
    };
    Ok(payload)
}

fn parse_identity(r: &mut Reader<'_>) -> Result<Identity, DecodeError> {
    let id_type = r.u8()?;
    r.take(3)?; // reserved
    Ok(Identity {
        id_type,
        data: r.rest().to_vec(),
    })
}

fn parse_spi(r: &mut Reader<'_>, size: u8) -> Result<Spi, DecodeError> {
    match size {
        0 => Ok(Spi::None),
        4 => Ok(Spi::Child(r.u32()?)),
        8 => Ok(Spi::Ike(r.u64()?)),
        _ => Err(DecodeError::InvalidSyntax("SPI size not 0, 4 or 8")),
    }
}

fn parse_sa(body: &[u8]) -> Result<Vec<Proposal>, DecodeError> {
    let mut r = Reader::new(body);
    let mut proposals = Vec::new();
    loop {
        let more = r.u8()?;
        r.u8()?; // reserved
        let len = usize::from(r.u16()?)
            .checked_sub(4)
            .ok_or(DecodeError::InvalidSyntax("proposal length below 4"))?;
        let proposal = r
            .take(len)
            .map_err(|_| DecodeError::InvalidSyntax("proposal length exceeds SA payload"))?;
        proposals.push(parse_proposal(proposal)?);
        match more {
            LAST => break,
            MORE_PROPOSALS => {}
            _ => return Err(DecodeError::InvalidSyntax("proposal last/more not 0 or 2")),
        }
    }
    if !r.is_empty() {
        return Err(DecodeError::InvalidSyntax("data after last proposal"));
    }
    Ok(proposals)
}

/// A proposal after its last/more, reserved and length fields.
fn parse_proposal(body: &[u8]) -> Result<Proposal, DecodeError> {
    let mut r = Reader::new(body);
    let number = r.u8()?;
    let protocol = ProtocolId::from_u8(r.u8()?);
    let spi_size = r.u8()?;
    let count = r.u8()?;
    let spi = parse_spi(&mut r, spi_size)?;
    let mut transforms = Vec::new();
    for i in 0..count {
        let more = r.u8()?;
        let is_last = i + 1 == count;
        if more != if is_last { LAST } else { MORE_TRANSFORMS } {
            return Err(DecodeError::InvalidSyntax(
                "transform last/more disagrees with count",
            ));
        }
        r.u8()?; // reserved
        let len = usize::from(r.u16()?)
            .checked_sub(4)
            .ok_or(DecodeError::InvalidSyntax("transform length below 4"))?;
        let transform = r
            .take(len)
            .map_err(|_| DecodeError::InvalidSyntax("transform length exceeds proposal"))?;
        transforms.push(parse_transform(transform)?);
    }
    if !r.is_empty() {
        return Err(DecodeError::InvalidSyntax("data after last transform"));
    }
    Ok(Proposal {
        number,
        protocol,
        spi,
        transforms,
    })
}

/// A transform after its last/more, reserved and length fields.
fn parse_transform(body: &[u8]) -> Result<Transform, DecodeError> {
    let mut r = Reader::new(body);
    let transform_type = r.u8()?;
    r.u8()?; // reserved
    let id = r.u16()?;
    let mut key_len = None;
    let mut unknown_attribute = false;
    while !r.is_empty() {
        let format_and_type = r.u16()?;
        if format_and_type & ATTR_TV != 0 {
            let value = r.u16()?;
            if format_and_type & !ATTR_TV == ATTR_KEY_LENGTH && key_len.is_none() {
                key_len = Some(value);
            } else {
                // A repeated Key Length is as unusable as an unknown attribute.
                unknown_attribute = true;
            }
        } else {
            let len = usize::from(r.u16()?);
            r.take(len)?;
            unknown_attribute = true;
        }
    }
    Ok(Transform {
        transform_type,
        id,
        key_len,
        unknown_attribute,
    })
}

fn parse_delete(r: &mut Reader<'_>) -> Result<Delete, DecodeError> {
    let protocol = ProtocolId::from_u8(r.u8()?);
    let spi_size = r.u8()?;
    let count = usize::from(r.u16()?);
    let spi_bytes = match (protocol, spi_size) {
        // The IKE SA is the one the message belongs to (RFC 7296 section 3.11).
        (ProtocolId::Ike, 0) => 0,
        (ProtocolId::Esp | ProtocolId::Ah, 4) => 4,
        _ => {
            return Err(DecodeError::InvalidSyntax(
                "Delete SPI size does not fit protocol",
            ));
        }
    };
    if r.remaining() != count * spi_bytes || (spi_bytes == 0 && count != 0) {
        return Err(DecodeError::InvalidSyntax(
            "Delete SPI count does not match length",
        ));
    }
    let mut spis = Vec::new();
    while !r.is_empty() {
        spis.push(r.u32()?);
    }
    Ok(Delete { protocol, spis })
}

fn parse_selectors(r: &mut Reader<'_>) -> Result<Vec<TrafficSelector>, DecodeError> {
    let count = r.u8()?;
    r.take(3)?; // reserved
    let mut selectors = Vec::new();
    for _ in 0..count {
        let ts_type = r.u8()?;
        let ip_protocol = r.u8()?;
        let len = usize::from(r.u16()?);
        let start_port = r.u16()?;
        let end_port = r.u16()?;
        let (start, end) = match (ts_type, len) {
            (TS_IPV4_ADDR_RANGE, TS_IPV4_LEN) => (
                IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
                IpAddr::V4(Ipv4Addr::from(r.array::<4>()?)),
            ),
            (TS_IPV6_ADDR_RANGE, TS_IPV6_LEN) => (
                IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
                IpAddr::V6(Ipv6Addr::from(r.array::<16>()?)),
            ),
            (TS_IPV4_ADDR_RANGE | TS_IPV6_ADDR_RANGE, _) => {
                return Err(DecodeError::InvalidSyntax("traffic selector length"));
            }
            _ => {
                return Err(DecodeError::InvalidSyntax(
                    "unsupported traffic selector type",
                ));
            }
        };
        selectors.push(TrafficSelector {
            ip_protocol,
            start_port,
            end_port,
            start,
            end,
        });
    }
    if !r.is_empty() {
        return Err(DecodeError::InvalidSyntax(
            "data after last traffic selector",
        ));
    }
    Ok(selectors)
}

fn first_type(payloads: &[Payload]) -> u8 {
    payloads
        .first()
        .map_or(payload_type::NONE, Payload::payload_type)
}

fn emit_chain(payloads: &[Payload], out: &mut Vec<u8>) {
    for (i, payload) in payloads.iter().enumerate() {
        let next = payloads
            .get(i + 1)
            .map_or(payload_type::NONE, Payload::payload_type);
        let flags = match payload {
            Payload::Unknown { critical: true, .. } => CRITICAL,
            _ => 0,
        };
        let start = out.len();
        out.extend_from_slice(&[next, flags, 0, 0]);
        emit_body(payload, out);
        patch_len(out, start);
    }
}

/// Writes the 2-byte length of the structure starting at `start`, whose length
/// field sits at `start + 2` (payloads, proposals and transforms alike).
fn patch_len(out: &mut [u8], start: usize) {
    let len = len_u16(out.len() - start);
    out[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn len_u16(len: usize) -> u16 {
    debug_assert!(len <= usize::from(u16::MAX), "IKE structure of {len} bytes");
    u16::try_from(len).unwrap_or(u16::MAX)
}

fn finish_header(out: &mut [u8]) {
    debug_assert!(
        out.len() <= MAX_MESSAGE_LEN,
        "IKE message of {} bytes",
        out.len()
    );
    let len = u32::try_from(out.len()).unwrap_or(u32::MAX);
    out[Header::LEN - 4..Header::LEN].copy_from_slice(&len.to_be_bytes());
}

fn emit_body(payload: &Payload, out: &mut Vec<u8>) {
    match payload {
        Payload::Sa(proposals) => emit_sa(proposals, out),
        Payload::Ke(ke) => {
            out.extend_from_slice(&ke.group.to_be_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&ke.data);
        }
        Payload::IdI(id) | Payload::IdR(id) => {
            out.extend_from_slice(&[id.id_type, 0, 0, 0]);
            out.extend_from_slice(&id.data);
        }
        Payload::Auth(auth) => {
            out.extend_from_slice(&[auth.method, 0, 0, 0]);
            out.extend_from_slice(&auth.data);
        }
        Payload::Nonce(bytes) | Payload::VendorId(bytes) | Payload::Unknown { body: bytes, .. } => {
            out.extend_from_slice(bytes);
        }
        Payload::Notify(n) => {
            out.extend_from_slice(&[n.protocol.to_u8(), spi_size(n.spi)]);
            out.extend_from_slice(&n.kind.to_be_bytes());
            emit_spi(n.spi, out);
            out.extend_from_slice(&n.data);
        }
        Payload::Delete(d) => emit_delete(d, out),
        Payload::TsI(selectors) | Payload::TsR(selectors) => emit_selectors(selectors, out),
    }
}

fn spi_size(spi: Spi) -> u8 {
    match spi {
        Spi::None => 0,
        Spi::Child(_) => 4,
        Spi::Ike(_) => 8,
    }
}

fn emit_spi(spi: Spi, out: &mut Vec<u8>) {
    match spi {
        Spi::None => {}
        Spi::Child(v) => out.extend_from_slice(&v.to_be_bytes()),
        Spi::Ike(v) => out.extend_from_slice(&v.to_be_bytes()),
    }
}

fn emit_sa(proposals: &[Proposal], out: &mut Vec<u8>) {
    for (i, p) in proposals.iter().enumerate() {
        let more = if i + 1 == proposals.len() {
            LAST
        } else {
            MORE_PROPOSALS
        };
        let start = out.len();
        // The count field is one byte; a proposal never carries more than a
        // handful of transforms, so anything beyond 255 is a caller bug.
        debug_assert!(p.transforms.len() <= usize::from(u8::MAX));
        let transforms = &p.transforms[..p.transforms.len().min(usize::from(u8::MAX))];
        out.extend_from_slice(&[more, 0, 0, 0, p.number, p.protocol.to_u8(), spi_size(p.spi)]);
        out.push(u8::try_from(transforms.len()).unwrap_or(u8::MAX));
        emit_spi(p.spi, out);
        for (j, t) in transforms.iter().enumerate() {
            let more = if j + 1 == transforms.len() {
                LAST
            } else {
                MORE_TRANSFORMS
            };
            let t_start = out.len();
            out.extend_from_slice(&[more, 0, 0, 0, t.transform_type, 0]);
            out.extend_from_slice(&t.id.to_be_bytes());
            // Attributes we did not understand were not kept, so
            // `unknown_attribute` cannot be reproduced; we only ever send
            // transforms we understand.
            if let Some(key_len) = t.key_len {
                out.extend_from_slice(&(ATTR_TV | ATTR_KEY_LENGTH).to_be_bytes());
                out.extend_from_slice(&key_len.to_be_bytes());
            }
            patch_len(out, t_start);
        }
        patch_len(out, start);
    }
}

/// For `ProtocolId::Ike` the SPI list is not sent: the SPI size is 0 and the
/// message header names the SA (RFC 7296 section 3.11).
fn emit_delete(d: &Delete, out: &mut Vec<u8>) {
    let spis: &[u32] = if d.protocol == ProtocolId::Ike {
        &[]
    } else {
        &d.spis
    };
    let size = if d.protocol == ProtocolId::Ike { 0 } else { 4 };
    out.extend_from_slice(&[d.protocol.to_u8(), size]);
    out.extend_from_slice(&len_u16(spis.len()).to_be_bytes());
    for spi in spis {
        out.extend_from_slice(&spi.to_be_bytes());
    }
}

fn emit_selectors(selectors: &[TrafficSelector], out: &mut Vec<u8>) {
    debug_assert!(selectors.len() <= usize::from(u8::MAX));
    let selectors = &selectors[..selectors.len().min(usize::from(u8::MAX))];
    out.extend_from_slice(&[u8::try_from(selectors.len()).unwrap_or(u8::MAX), 0, 0, 0]);
    for ts in selectors {
        let (ts_type, len) = match (ts.start, ts.end) {
            (IpAddr::V4(_), IpAddr::V4(_)) => (TS_IPV4_ADDR_RANGE, TS_IPV4_LEN),
            // Mixed families are a caller bug; IPv4-mapped IPv6 keeps the
            // selector well-formed rather than emitting a lying length.
            _ => (TS_IPV6_ADDR_RANGE, TS_IPV6_LEN),
        };
        out.extend_from_slice(&[ts_type, ts.ip_protocol]);
        out.extend_from_slice(&len_u16(len).to_be_bytes());
        out.extend_from_slice(&ts.start_port.to_be_bytes());
        out.extend_from_slice(&ts.end_port.to_be_bytes());
        for addr in [ts.start, ts.end] {
            match (ts_type, addr) {
                (TS_IPV4_ADDR_RANGE, IpAddr::V4(a)) => out.extend_from_slice(&a.octets()),
                (_, IpAddr::V4(a)) => out.extend_from_slice(&a.to_ipv6_mapped().octets()),
                (_, IpAddr::V6(a)) => out.extend_from_slice(&a.octets()),
            }
        }
    }
}

/// A cursor over untrusted bytes: every read is bounds-checked and fails with
/// [`DecodeError::Truncated`] instead of panicking.
#[derive(Debug)]
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self { bytes, pos: 0 }
    }

    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let truncated = DecodeError::Truncated {
            needed: self.pos.saturating_add(n),
            had: self.bytes.len(),
        };
        let end = self.pos.checked_add(n).ok_or(truncated.clone())?;
        let slice = self.bytes.get(self.pos..end).ok_or(truncated)?;
        self.pos = end;
        Ok(slice)
    }

    fn rest(&mut self) -> &'a [u8] {
        let slice = self.bytes.get(self.pos..).unwrap_or_default();
        self.pos = self.bytes.len();
        slice
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }
}

#[cfg(test)]
mod tests;
