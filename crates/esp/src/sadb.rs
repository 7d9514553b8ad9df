//! The SA database and the per-packet work: seal inner packets in place into
//! ESP, open ESP packets in place back into inner packets (RFC 4303).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;

use tandem_crypto::{AeadBackend, CryptoError, EncrAlg, IntegAlg, SaCipher, Secret};

use crate::replay::{BadWindow, ReplayWindow};
use crate::wire::{ESP_HEADER_LEN, Flow, flow};

/// Largest inner packet a [`PacketBuf`] holds (jumbo frames).
pub const MAX_INNER: usize = 9000;
/// ESP header plus the largest IV (AES-CBC).
const HEADROOM: usize = ESP_HEADER_LEN + 16;
/// Largest padding (15 for a 16-byte block), pad length, next header, largest ICV.
const TAILROOM: usize = 15 + 2 + 32;
/// Next header 59: a dummy packet (RFC 4303 section 2.6).
pub const NEXT_HEADER_DUMMY: u8 = 59;

/// Keys and algorithms of one direction of a child SA.
#[derive(Debug, Clone)]
pub struct SaParams {
    pub spi: u32,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub encr_key: Secret,
    pub integ_key: Option<Secret>,
    pub esn: bool,
}

/// A traffic selector as the dataplane matches it (RFC 7296 section 3.13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Selector {
    /// 0 means any protocol.
    pub ip_protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: IpAddr,
    pub end: IpAddr,
}

/// A child SA's traffic selectors (RFC 7296 section 2.9), from this
/// gateway's side: `local` covers the addresses behind it, `remote` those
/// behind the peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selectors {
    pub local: Vec<Selector>,
    pub remote: Vec<Selector>,
}

impl Selectors {
    /// Whether a packet from `src` to `dst` belongs to the SA: outbound,
    /// `src` is local; inbound (`reverse`), `src` is the peer's.
    fn allow(&self, f: &Flow, reverse: bool) -> bool {
        let (from, to) = match reverse {
            false => (&self.local, &self.remote),
            true => (&self.remote, &self.local),
        };
        from.iter()
            .any(|s| s.contains(f.src, f.protocol, f.src_port))
            && to.iter().any(|s| s.contains(f.dst, f.protocol, f.dst_port))
    }
}

impl Selector {
    fn contains(&self, addr: IpAddr, protocol: u8, port: u16) -> bool {
        let in_range = match (self.start, self.end, addr) {
            (IpAddr::V4(s), IpAddr::V4(e), IpAddr::V4(a)) => s <= a && a <= e,
            (IpAddr::V6(s), IpAddr::V6(e), IpAddr::V6(a)) => s <= a && a <= e,
            _ => false,
        };
        let all_ports = self.start_port == 0 && self.end_port == u16::MAX;
        in_range
            && (self.ip_protocol == 0 || self.ip_protocol == protocol)
            && (all_ports || (self.start_port..=self.end_port).contains(&port))
    }
}

/// Why a packet or an SA operation was refused. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EspError {
    #[error("no inbound SA with SPI {0:08x}")]
    UnknownSpi(u32),
    #[error("SPI {0:08x} is already installed")]
    DuplicateSpi(u32),
    #[error("replayed or too old")]
    Replay,
    #[error("integrity check failed")]
    Integrity,
    #[error("malformed ESP packet: {0}")]
    Malformed(&'static str),
    #[error("no outbound SA matches the packet's addresses")]
    NoSelectorMatch,
    /// RFC 4301 section 5.2: a decrypted packet outside its SA's traffic
    /// selectors (a peer sending for addresses it was not given).
    #[error("decrypted packet outside its SA's traffic selectors")]
    OutsideSelectors,
    /// The SA is installed here as a standby: another node owns it, and
    /// this node's replay window is not the one that counts (a replayed
    /// packet sent to every node must be accepted at most once).
    #[error("SA {0:08x} is owned by another node")]
    NotAccepting(u32),
    #[error("outbound sequence numbers exhausted up to the reserved ceiling")]
    SeqBlockExhausted,
    #[error("bad SA parameters: {0}")]
    BadParams(String),
    #[error("sequence number of SPI {0:08x} would go backwards")]
    SeqBackwards(u32),
}

impl From<BadWindow> for EspError {
    fn from(e: BadWindow) -> Self {
        EspError::BadParams(e.to_string())
    }
}

/// Counters of one SA direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SaStats {
    pub packets: u64,
    pub bytes: u64,
    pub replay_drops: u64,
    pub integrity_failures: u64,
    /// Inbound: authentic packets dropped for their inner addresses.
    pub selector_drops: u64,
    /// Inbound: packets dropped unopened because another node owns the SA.
    pub standby_drops: u64,
    /// Inbound: the replay high-water mark. Outbound: the last sequence number used.
    pub highest_seq: u64,
}

/// A reusable packet buffer with room around the inner packet for the ESP
/// header, IV, trailer and ICV, so sealing happens in place.
#[derive(Debug, Clone)]
pub struct PacketBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for PacketBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl PacketBuf {
    pub fn new() -> PacketBuf {
        PacketBuf {
            buf: vec![0; HEADROOM + MAX_INNER + TAILROOM],
            start: HEADROOM,
            end: HEADROOM,
        }
    }

    /// Where to read an inner packet into (e.g. from the TUN device).
    pub fn inner_mut(&mut self) -> &mut [u8] {
        &mut self.buf[HEADROOM..HEADROOM + MAX_INNER]
    }

    /// Marks the first `len` bytes of [`PacketBuf::inner_mut`] as the packet.
    pub fn set_inner_len(&mut self, len: usize) {
        self.start = HEADROOM;
        self.end = HEADROOM + len.min(MAX_INNER);
    }

    /// The current packet: the inner packet before sealing, ESP after.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }
}

/// Where a sealed packet goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sealed {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub spi: u32,
}

/// A verified, decrypted packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    pub spi: u32,
    /// The inner packet within the buffer given to [`Sadb::open`].
    pub inner: Range<usize>,
    /// 4 (IPv4), 41 (IPv6) or [`NEXT_HEADER_DUMMY`].
    pub next_header: u8,
}

#[derive(Debug)]
struct InboundSa {
    cipher: SaCipher,
    esn: bool,
    replay: ReplayWindow,
    selectors: Selectors,
    /// Whether packets are opened at all (see [`Sadb::set_accepting`]).
    accepting: bool,
    stats: SaStats,
}

#[derive(Debug)]
struct OutboundSa {
    /// Who installed it knows it by this (the gateway: its child's inbound
    /// SPI); the wire SPI is the peer's choice, and two peers may choose
    /// the same one.
    id: u32,
    spi: u32,
    cipher: SaCipher,
    esn: bool,
    /// Next sequence number to use; starts at 1 (RFC 4303 section 3.3.3).
    next_seq: u64,
    /// Highest sequence number this node may use (invariant 3: never reuse).
    ceiling: u64,
    selectors: Selectors,
    local: SocketAddr,
    remote: SocketAddr,
    stats: SaStats,
}

/// Every SA of a node, inbound by SPI, outbound by id in install order.
#[derive(Debug, Default)]
pub struct Sadb {
    backend: AeadBackend,
    inbound: HashMap<u32, InboundSa>,
    /// A scan over a Vec is cheaper than any index for the handful of SAs a
    /// gateway has per tunnel; newest last so a rekeyed SA wins over the old.
    outbound: Vec<OutboundSa>,
}

impl Sadb {
    pub fn new() -> Sadb {
        Self::with_backend(AeadBackend::default())
    }

    pub fn with_backend(backend: AeadBackend) -> Sadb {
        Sadb {
            backend,
            inbound: HashMap::new(),
            outbound: Vec::new(),
        }
    }

    fn cipher(&self, p: &SaParams) -> Result<SaCipher, EspError> {
        SaCipher::with_backend(
            self.backend,
            p.encr,
            p.integ,
            &p.encr_key,
            p.integ_key.as_ref(),
        )
        .map_err(|e| EspError::BadParams(e.to_string()))
    }

    /// Installs an inbound SA whose decrypted packets must lie within
    /// `selectors` (from this gateway's side: sources in `remote`,
    /// destinations in `local`).
    pub fn install_inbound(
        &mut self,
        params: SaParams,
        replay_window: u32,
        selectors: Selectors,
    ) -> Result<(), EspError> {
        if self.inbound.contains_key(&params.spi) {
            return Err(EspError::DuplicateSpi(params.spi));
        }
        let sa = InboundSa {
            cipher: self.cipher(&params)?,
            esn: params.esn,
            replay: ReplayWindow::new(replay_window)?,
            selectors,
            accepting: true,
            stats: SaStats::default(),
        };
        self.inbound.insert(params.spi, sa);
        Ok(())
    }

    /// Installs an outbound SA, known from then on by `id` (unique among
    /// this database's outbound SAs).
    pub fn install_outbound(
        &mut self,
        id: u32,
        params: SaParams,
        selectors: Selectors,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<(), EspError> {
        if self.outbound.iter().any(|sa| sa.id == id) {
            return Err(EspError::DuplicateSpi(id));
        }
        self.outbound.push(OutboundSa {
            id,
            spi: params.spi,
            cipher: self.cipher(&params)?,
            esn: params.esn,
            next_seq: 1,
            ceiling: max_seq(params.esn),
            selectors,
            local,
            remote,
            stats: SaStats::default(),
        });
        Ok(())
    }

    pub fn remove_inbound(&mut self, spi: u32) -> bool {
        self.inbound.remove(&spi).is_some()
    }

    pub fn remove_outbound(&mut self, id: u32) -> bool {
        let before = self.outbound.len();
        self.outbound.retain(|sa| sa.id != id);
        self.outbound.len() != before
    }

    /// Sets the highest sequence number the SA may use (capped at what the
    /// counter allows without ESN: it must never wrap).
    pub fn set_seq_ceiling(&mut self, id: u32, ceiling: u64) -> Result<(), EspError> {
        let sa = self.outbound_mut(id)?;
        sa.ceiling = ceiling.min(max_seq(sa.esn));
        Ok(())
    }

    /// Moves an outbound SA's next sequence number forward: a node taking
    /// over an SA starts above every number another node may have used
    /// (invariant 3). Never backward.
    pub fn advance_seq(&mut self, id: u32, next: u64) -> Result<(), EspError> {
        let sa = self.outbound_mut(id)?;
        if next < sa.next_seq {
            return Err(EspError::SeqBackwards(sa.spi));
        }
        sa.next_seq = next;
        Ok(())
    }

    fn outbound_mut(&mut self, id: u32) -> Result<&mut OutboundSa, EspError> {
        self.outbound
            .iter_mut()
            .find(|sa| sa.id == id)
            .ok_or(EspError::UnknownSpi(id))
    }

    /// An outbound SA's next sequence number and its ceiling.
    pub fn outbound_seq(&self, id: u32) -> Option<(u64, u64)> {
        self.outbound
            .iter()
            .find(|sa| sa.id == id)
            .map(|sa| (sa.next_seq, sa.ceiling))
    }

    /// Raises an inbound SA's replay high-water mark to `highest` (a node
    /// taking over starts from the replicated mark); never lowers it.
    pub fn raise_replay_mark(&mut self, spi: u32, highest: u64) -> Result<(), EspError> {
        let sa = self
            .inbound
            .get_mut(&spi)
            .ok_or(EspError::UnknownSpi(spi))?;
        if highest > sa.replay.highest() {
            sa.replay = ReplayWindow::starting_at(sa.replay.size(), highest)?;
        }
        Ok(())
    }

    /// Whether an inbound SA opens packets: a hot standby holds the SA's
    /// keys but refuses its packets, unopened, until it takes the SA over
    /// and raises its window to the replicated mark.
    pub fn set_accepting(&mut self, spi: u32, accepting: bool) -> Result<(), EspError> {
        self.inbound
            .get_mut(&spi)
            .ok_or(EspError::UnknownSpi(spi))?
            .accepting = accepting;
        Ok(())
    }

    pub fn inbound_stats(&self, spi: u32) -> Option<SaStats> {
        self.inbound.get(&spi).map(|sa| SaStats {
            highest_seq: sa.replay.highest(),
            ..sa.stats
        })
    }

    pub fn outbound_stats(&self, id: u32) -> Option<SaStats> {
        self.outbound
            .iter()
            .find(|sa| sa.id == id)
            .map(|sa| SaStats {
                highest_seq: sa.next_seq - 1,
                ..sa.stats
            })
    }

    /// Verifies and decrypts one ESP packet (a UDP-4500 payload) in place.
    pub fn open(&mut self, packet: &mut [u8]) -> Result<Opened, EspError> {
        let header = packet
            .get(..ESP_HEADER_LEN)
            .ok_or(EspError::Malformed("shorter than the ESP header"))?;
        let spi = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
        let low = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
        let sa = self
            .inbound
            .get_mut(&spi)
            .ok_or(EspError::UnknownSpi(spi))?;
        if !sa.accepting {
            sa.stats.standby_drops += 1;
            return Err(EspError::NotAccepting(spi));
        }
        let Some(seq) = sa.replay.check(low, sa.esn) else {
            sa.stats.replay_drops += 1;
            return Err(EspError::Replay);
        };
        let esn_high = sa.esn.then_some((seq >> 32) as u32);
        let plain = match sa.cipher.open(packet, ESP_HEADER_LEN, esn_high) {
            Ok(range) => range,
            Err(CryptoError::Authentication) => {
                sa.stats.integrity_failures += 1;
                return Err(EspError::Integrity);
            }
            Err(_) => return Err(EspError::Malformed("length does not fit the transform")),
        };
        let body = packet
            .get(plain.clone())
            .ok_or(EspError::Malformed("bad plaintext range"))?;
        let [.., pad_len, next_header] = *body else {
            return Err(EspError::Malformed("no ESP trailer"));
        };
        let pad_len = usize::from(pad_len);
        let inner_len = body
            .len()
            .checked_sub(2 + pad_len)
            .ok_or(EspError::Malformed("padding longer than the payload"))?;
        // RFC 4303 section 2.4: default padding is 1, 2, 3, ...; anything else
        // means a broken or hostile sender.
        let pad_ok = body[inner_len..inner_len + pad_len]
            .iter()
            .enumerate()
            .all(|(i, &b)| usize::from(b) == i + 1);
        if !pad_ok {
            return Err(EspError::Malformed("bad padding"));
        }
        // Authentic, so its sequence number is spent whatever follows.
        sa.replay.commit(seq);
        let inner = &body[..inner_len];
        if next_header != NEXT_HEADER_DUMMY
            && !flow(inner).is_some_and(|f| sa.selectors.allow(&f, true))
        {
            sa.stats.selector_drops += 1;
            return Err(EspError::OutsideSelectors);
        }
        sa.stats.packets += 1;
        sa.stats.bytes += inner_len as u64;
        Ok(Opened {
            spi,
            inner: plain.start..plain.start + inner_len,
            next_header,
        })
    }

    /// Seals each inner packet in place; `results[i]` belongs to `packets[i]`.
    pub fn seal_batch(
        &mut self,
        packets: &mut [PacketBuf],
        results: &mut Vec<Result<Sealed, EspError>>,
    ) {
        results.clear();
        for buf in packets.iter_mut() {
            results.push(self.seal(buf));
        }
    }

    fn seal(&mut self, buf: &mut PacketBuf) -> Result<Sealed, EspError> {
        let flow =
            flow(buf.data()).ok_or(EspError::Malformed("inner packet is not IPv4 or IPv6"))?;
        let sa = self
            .outbound
            .iter_mut()
            .rev()
            .find(|sa| sa.selectors.allow(&flow, false))
            .ok_or(EspError::NoSelectorMatch)?;
        if sa.next_seq > sa.ceiling {
            return Err(EspError::SeqBlockExhausted);
        }
        let seq = sa.next_seq;
        let inner_len = buf.end - buf.start;
        let block = sa.cipher.block_len();
        let padded = (inner_len + 2).div_ceil(block) * block;
        let pad_len = padded - inner_len - 2;
        let iv_len = sa.cipher.iv_len();
        let icv_len = sa.cipher.icv_len();
        let start = HEADROOM - ESP_HEADER_LEN - iv_len;
        let trailer = HEADROOM + inner_len;
        let end = HEADROOM + padded + icv_len;
        let b = &mut buf.buf;
        for (i, byte) in b[trailer..trailer + pad_len].iter_mut().enumerate() {
            *byte = (i + 1) as u8;
        }
        b[trailer + pad_len] = pad_len as u8;
        b[trailer + pad_len + 1] = flow.next_header;
        b[start..start + 4].copy_from_slice(&sa.spi.to_be_bytes());
        b[start + 4..start + 8].copy_from_slice(&(seq as u32).to_be_bytes());
        let esn_high = sa.esn.then_some((seq >> 32) as u32);
        sa.cipher
            .seal(&mut b[start..end], ESP_HEADER_LEN, seq, esn_high)
            .map_err(|e| EspError::BadParams(e.to_string()))?;
        sa.next_seq += 1;
        sa.stats.packets += 1;
        sa.stats.bytes += inner_len as u64;
        buf.start = start;
        buf.end = end;
        Ok(Sealed {
            local: sa.local,
            remote: sa.remote,
            spi: sa.spi,
        })
    }
}

/// Without ESN the 32-bit counter must not wrap (RFC 4303 section 3.3.3).
fn max_seq(esn: bool) -> u64 {
    if esn { u64::MAX } else { u64::from(u32::MAX) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: &str = "192.0.2.1:4500";
    const REMOTE: &str = "192.0.2.2:4500";

    /// What the sender of `pair` protects: 10.2/16 to 10.1/16.
    fn sender_selectors() -> Selectors {
        Selectors {
            local: any_v4([10, 2, 0, 0], [10, 2, 255, 255]),
            remote: any_v4([10, 1, 0, 0], [10, 1, 255, 255]),
        }
    }

    fn receiver_selectors() -> Selectors {
        let Selectors { local, remote } = sender_selectors();
        Selectors {
            local: remote,
            remote: local,
        }
    }

    fn any_v4(net: [u8; 4], last: [u8; 4]) -> Vec<Selector> {
        vec![Selector {
            ip_protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            start: IpAddr::from(net),
            end: IpAddr::from(last),
        }]
    }

    fn params(spi: u32, encr: EncrAlg, integ: Option<IntegAlg>, esn: bool) -> SaParams {
        SaParams {
            spi,
            encr,
            integ,
            encr_key: Secret::new(vec![0x42; encr.keymat_len()]),
            integ_key: integ.map(|i| Secret::new(vec![0x17; i.key_len()])),
            esn,
        }
    }

    /// A sender and a receiver sharing one SA.
    fn pair(encr: EncrAlg, integ: Option<IntegAlg>, esn: bool) -> (Sadb, Sadb) {
        let mut tx = Sadb::new();
        tx.install_outbound(
            0x1000,
            params(0x1000, encr, integ, esn),
            sender_selectors(),
            LOCAL.parse().unwrap(),
            REMOTE.parse().unwrap(),
        )
        .unwrap();
        let mut rx = Sadb::new();
        rx.install_inbound(params(0x1000, encr, integ, esn), 1024, receiver_selectors())
            .unwrap();
        (tx, rx)
    }

    fn inner(len: usize, fill: u8) -> PacketBuf {
        let mut buf = PacketBuf::new();
        let area = buf.inner_mut();
        area[..len].fill(fill);
        area[0] = 0x45;
        area[9] = 17;
        area[12..16].copy_from_slice(&[10, 2, 0, 1]);
        area[16..20].copy_from_slice(&[10, 1, 0, 1]);
        buf.set_inner_len(len);
        buf
    }

    fn seal_one(tx: &mut Sadb, buf: &mut PacketBuf) -> Result<Sealed, EspError> {
        let mut results = Vec::new();
        tx.seal_batch(std::slice::from_mut(buf), &mut results);
        results.remove(0)
    }

    fn transforms() -> Vec<(EncrAlg, Option<IntegAlg>)> {
        let mut all = vec![
            (EncrAlg::AesGcm16 { key_bits: 128 }, None),
            (EncrAlg::AesGcm16 { key_bits: 256 }, None),
        ];
        for key_bits in [128, 256] {
            for integ in [
                IntegAlg::HmacSha1_96,
                IntegAlg::HmacSha256_128,
                IntegAlg::HmacSha384_192,
                IntegAlg::HmacSha512_256,
            ] {
                all.push((EncrAlg::AesCbc { key_bits }, Some(integ)));
            }
        }
        all
    }

    #[test]
    fn round_trip_every_transform_with_and_without_esn() {
        for (encr, integ) in transforms() {
            for esn in [false, true] {
                let (mut tx, mut rx) = pair(encr, integ, esn);
                for len in [20, 21, 100, 1400] {
                    let mut buf = inner(len, len as u8);
                    let original = buf.data().to_vec();
                    let sealed = seal_one(&mut tx, &mut buf).unwrap();
                    assert_eq!(sealed.remote, REMOTE.parse().unwrap());
                    let mut wire = buf.data().to_vec();
                    assert_eq!(wire.len() % 4, 0, "ESP packets are 4-byte aligned");
                    let opened = rx.open(&mut wire).unwrap();
                    assert_eq!(opened.next_header, 4);
                    assert_eq!(
                        &wire[opened.inner],
                        &original[..],
                        "{encr:?} {integ:?} esn={esn}"
                    );
                }
                assert_eq!(rx.inbound_stats(0x1000).unwrap().packets, 4);
                assert_eq!(tx.outbound_stats(0x1000).unwrap().highest_seq, 4);
            }
        }
    }

    #[test]
    fn replayed_and_tampered_packets_are_refused_and_counted() {
        for (encr, integ) in transforms() {
            let (mut tx, mut rx) = pair(encr, integ, false);
            let mut buf = inner(60, 1);
            seal_one(&mut tx, &mut buf).unwrap();
            let wire = buf.data().to_vec();
            for bit in [0usize, 8 * 8, 8 * 12, 8 * (wire.len() - 1)] {
                if bit < 32 {
                    continue; // the SPI: would only miss the SA
                }
                let mut bad = wire.clone();
                bad[bit / 8] ^= 1;
                assert!(matches!(
                    rx.open(&mut bad),
                    Err(EspError::Integrity | EspError::Replay)
                ));
            }
            assert_eq!(
                rx.inbound_stats(0x1000).unwrap().highest_seq,
                0,
                "forgeries moved the window"
            );
            let mut ok = wire.clone();
            rx.open(&mut ok).unwrap();
            let mut again = wire.clone();
            assert_eq!(rx.open(&mut again), Err(EspError::Replay));
            let stats = rx.inbound_stats(0x1000).unwrap();
            assert!(
                stats.integrity_failures >= 2 && stats.replay_drops == 1,
                "{stats:?}"
            );
        }
    }

    #[test]
    fn a_takeover_moves_sequence_numbers_and_replay_marks_only_forward() {
        let (mut tx, mut rx) = pair(EncrAlg::AesGcm16 { key_bits: 128 }, None, false);
        tx.advance_seq(0x1000, 5000).unwrap();
        assert_eq!(
            tx.advance_seq(0x1000, 10),
            Err(EspError::SeqBackwards(0x1000))
        );
        let mut buf = inner(40, 0);
        seal_one(&mut tx, &mut buf).unwrap();
        assert_eq!(tx.outbound_seq(0x1000).map(|s| s.0), Some(5001));
        rx.raise_replay_mark(0x1000, 6000).unwrap();
        let mut wire = buf.data().to_vec();
        assert_eq!(rx.open(&mut wire), Err(EspError::Replay), "below the mark");
        rx.raise_replay_mark(0x1000, 10).unwrap();
        assert_eq!(rx.inbound_stats(0x1000).unwrap().highest_seq, 6000);
    }

    #[test]
    fn sequence_ceiling_is_never_crossed() {
        let (mut tx, _) = pair(EncrAlg::AesGcm16 { key_bits: 128 }, None, false);
        tx.set_seq_ceiling(0x1000, 2).unwrap();
        seal_one(&mut tx, &mut inner(40, 0)).unwrap();
        seal_one(&mut tx, &mut inner(40, 0)).unwrap();
        assert_eq!(
            seal_one(&mut tx, &mut inner(40, 0)),
            Err(EspError::SeqBlockExhausted)
        );
        tx.set_seq_ceiling(0x1000, 3).unwrap();
        let mut buf = inner(40, 0);
        seal_one(&mut tx, &mut buf).unwrap();
        assert_eq!(
            &buf.data()[4..8],
            &3u32.to_be_bytes(),
            "resumes at 3, no reuse"
        );
        tx.set_seq_ceiling(0x1000, u64::MAX).unwrap();
        assert_eq!(
            tx.outbound.first().map(|sa| sa.ceiling),
            Some(u64::from(u32::MAX))
        );
    }

    #[test]
    fn newest_matching_sa_wins_and_unmatched_packets_are_refused() {
        let (mut tx, _) = pair(EncrAlg::AesGcm16 { key_bits: 128 }, None, false);
        // Another peer chose the same wire SPI: its SA is told apart by id.
        tx.install_outbound(
            0x2000,
            params(0x1000, EncrAlg::AesGcm16 { key_bits: 128 }, None, false),
            sender_selectors(),
            LOCAL.parse().unwrap(),
            REMOTE.parse().unwrap(),
        )
        .unwrap();
        tx.advance_seq(0x2000, 77).unwrap();
        let mut newest = inner(40, 0);
        assert_eq!(seal_one(&mut tx, &mut newest).unwrap().spi, 0x1000);
        assert_eq!(&newest.data()[4..8], &77u32.to_be_bytes());
        assert!(tx.remove_outbound(0x2000));
        assert!(!tx.remove_outbound(0x2000));
        assert_eq!(tx.outbound_seq(0x1000), Some((1, u64::from(u32::MAX))));
        assert_eq!(seal_one(&mut tx, &mut inner(40, 0)).unwrap().spi, 0x1000);
        let mut other = inner(40, 0);
        other.inner_mut()[16..20].copy_from_slice(&[10, 9, 0, 1]);
        assert_eq!(
            seal_one(&mut tx, &mut other),
            Err(EspError::NoSelectorMatch)
        );
    }

    #[test]
    fn authentic_packets_outside_the_selectors_are_dropped_and_counted() {
        let (mut tx, mut rx) = pair(EncrAlg::AesGcm16 { key_bits: 128 }, None, false);
        // The sender is free to seal anything (a hostile peer's is): widen
        // what it protects, then send from outside what the receiver gave it.
        tx.outbound[0].selectors.local = any_v4([0, 0, 0, 0], [255, 255, 255, 255]);
        tx.outbound[0].selectors.remote = any_v4([0, 0, 0, 0], [255, 255, 255, 255]);
        for (src, dst, allowed) in [
            ([10, 2, 0, 9], [10, 1, 3, 4], true),
            ([10, 9, 0, 1], [10, 1, 0, 1], false),
            ([10, 2, 0, 1], [192, 0, 2, 1], false),
            ([10, 1, 0, 1], [10, 1, 0, 2], false),
        ] {
            let mut buf = inner(60, 0);
            buf.inner_mut()[12..16].copy_from_slice(&src);
            buf.inner_mut()[16..20].copy_from_slice(&dst);
            seal_one(&mut tx, &mut buf).unwrap();
            let mut wire = buf.data().to_vec();
            let opened = rx.open(&mut wire);
            assert_eq!(opened.is_ok(), allowed, "{src:?} -> {dst:?}: {opened:?}");
            if !allowed {
                assert_eq!(opened, Err(EspError::OutsideSelectors));
            }
        }
        let stats = rx.inbound_stats(0x1000).unwrap();
        assert_eq!((stats.packets, stats.selector_drops), (1, 3));
        // Not an inner IP packet at all: dropped too.
        let mut buf = inner(60, 0);
        buf.inner_mut()[0] = 0x00;
        buf.set_inner_len(60);
        assert!(seal_one(&mut tx, &mut buf).is_err(), "sender refuses it");
    }

    #[test]
    fn a_standby_opens_nothing_until_it_accepts() {
        let (mut tx, mut rx) = pair(EncrAlg::AesGcm16 { key_bits: 128 }, None, false);
        let mut buf = inner(60, 0);
        seal_one(&mut tx, &mut buf).unwrap();
        let wire = buf.data().to_vec();
        rx.set_accepting(0x1000, false).unwrap();
        assert_eq!(
            rx.open(&mut wire.clone()),
            Err(EspError::NotAccepting(0x1000))
        );
        let stats = rx.inbound_stats(0x1000).unwrap();
        assert_eq!((stats.standby_drops, stats.highest_seq), (1, 0));
        rx.set_accepting(0x1000, true).unwrap();
        assert!(rx.open(&mut wire.clone()).is_ok());
        assert_eq!(
            rx.set_accepting(0x9999, true),
            Err(EspError::UnknownSpi(0x9999))
        );
    }

    #[test]
    fn duplicate_and_unknown_spis() {
        let (_, mut rx) = pair(EncrAlg::AesGcm16 { key_bits: 128 }, None, false);
        assert_eq!(
            rx.install_inbound(
                params(0x1000, EncrAlg::AesGcm16 { key_bits: 128 }, None, false),
                1024,
                receiver_selectors(),
            ),
            Err(EspError::DuplicateSpi(0x1000))
        );
        let mut packet = [0, 0, 0x99, 0x99, 0, 0, 0, 1, 0, 0, 0, 0];
        assert_eq!(rx.open(&mut packet), Err(EspError::UnknownSpi(0x9999)));
    }

    #[test]
    fn hostile_packets_never_panic() {
        let (_, mut rx) = pair(
            EncrAlg::AesCbc { key_bits: 128 },
            Some(IntegAlg::HmacSha256_128),
            true,
        );
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..300 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            if bytes.len() >= 4 {
                bytes[..4].copy_from_slice(&0x1000u32.to_be_bytes());
            }
            assert!(rx.open(&mut bytes).is_err());
        }
    }
}
