//! Glue between the IKE endpoint's child SAs and the ESP SA database: installs
//! and removes SAs as IKE reports them, and runs packets through ESP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;

use tandem_esp::{
    Datagram, EspError, PacketBuf, SaParams, Sadb, Sealed, Selector, Selectors, classify,
};
use tandem_ike::endpoint::{ChildSa, IkeSaInfo};
use tandem_ike::message::TrafficSelector;

/// What a UDP-4500 datagram turned out to be.
pub enum Decapsulated {
    /// An IKE message at this range (after the non-ESP marker).
    Ike(Range<usize>),
    /// A decrypted inner IP packet at this range, for the TUN device.
    Inner(Range<usize>),
    /// A keepalive, a dummy packet, or a packet dropped (and counted) by ESP.
    Nothing,
}

pub struct Dataplane {
    sadb: Sadb,
    /// Anti-replay window per connection, from config.
    replay_windows: BTreeMap<String, u32>,
    /// Outbound halves of rekeyed children, by the inbound SPI of the child they
    /// replace, waiting for that child's deletion (see [`Dataplane::install`]).
    pending_outbound: BTreeMap<u32, ChildSa>,
    /// Reused packet buffers: sealing allocates nothing per packet.
    bufs: Vec<PacketBuf>,
    results: Vec<Result<Sealed, EspError>>,
    /// In a cluster, outbound sequence numbers are used only up to what Raft
    /// reserved for this node (invariant 3); standalone, without limit.
    gated: bool,
    /// Committed reservations by the child's inbound SPI: outbound SAs are
    /// known by it too, since peers choose outbound SPIs and two tunnels'
    /// peers may choose the same one (invariant 9).
    reserved: BTreeMap<u32, Block>,
}

/// The sequence numbers this node may use on one outbound SA: from `floor`
/// (or where it has got to) up to `ceiling`, inclusive.
#[derive(Debug, Default, Clone, Copy)]
struct Block {
    floor: u64,
    ceiling: u64,
}

impl Dataplane {
    pub fn new(
        replay_windows: BTreeMap<String, u32>,
        gated: bool,
        backend: tandem_crypto::AeadBackend,
    ) -> Dataplane {
        Dataplane {
            sadb: Sadb::with_backend(backend),
            replay_windows,
            pending_outbound: BTreeMap::new(),
            bufs: Vec::new(),
            results: Vec::new(),
            gated,
            reserved: BTreeMap::new(),
        }
    }

    /// The state machine granted `from..=up_to` of the outbound half of
    /// child `inbound_spi` to this node. A block that does not follow on
    /// from this node's last one (its first after a takeover, or one
    /// granted after another node's) leaves a gap of numbers that are not
    /// this node's: sending resumes at `from`.
    pub fn grant(&mut self, inbound_spi: u32, from: u64, up_to: u64) {
        let r = self.reserved.entry(inbound_spi).or_default();
        if from > r.ceiling.saturating_add(1) {
            r.floor = r.floor.max(from);
        }
        r.ceiling = r.ceiling.max(up_to);
        let r = *r;
        // The SA may not be installed yet (a rekey's outbound half waits):
        // install_outbound applies the block then.
        self.apply_block(inbound_spi, r);
    }

    fn apply_block(&mut self, inbound_spi: u32, block: Block) {
        if let Some((next, _)) = self.sadb.outbound_seq(inbound_spi) {
            if next < block.floor {
                let _ = self.sadb.advance_seq(inbound_spi, block.floor);
            }
            let _ = self.sadb.set_seq_ceiling(inbound_spi, block.ceiling);
        }
    }

    /// Whether this node has the outbound half of child `inbound_spi`
    /// (installed or waiting for its predecessor's deletion).
    pub fn sends_on(&self, inbound_spi: u32) -> bool {
        self.sadb.outbound_seq(inbound_spi).is_some()
            || self
                .pending_outbound
                .values()
                .any(|c| c.inbound_spi == inbound_spi)
    }

    /// Children (by inbound SPI) whose outbound halves have used half their
    /// reservation (of `block` numbers), or have none yet, and need the
    /// next one.
    pub fn refills(&self, block: u64) -> Vec<u32> {
        self.reserved
            .iter()
            .filter_map(|(&spi, r)| {
                let (next, _) = self.sadb.outbound_seq(spi)?;
                (next + block / 2 > r.ceiling).then_some(spi)
            })
            .collect()
    }

    /// The highest sequence number accepted on each of these inbound SAs.
    pub fn replay_marks(&self, inbound: Vec<u32>) -> Vec<(u32, u64)> {
        inbound
            .into_iter()
            .filter_map(|spi| Some((spi, self.sadb.inbound_stats(spi)?.highest_seq)))
            .collect()
    }

    /// Takes over a child SA another node sent for: its inbound half (a hot
    /// standby, installed already or now) starts from the replicated replay
    /// mark, its outbound half from `first_seq`, above every reservation the
    /// old owner held, and sends nothing until a new reservation is granted.
    pub fn take_over(
        &mut self,
        child: &ChildSa,
        first_seq: u64,
        replay_mark: u64,
    ) -> Result<(), EspError> {
        if self.sadb.inbound_stats(child.inbound_spi).is_none() {
            self.install_standby(child)?;
        }
        self.accept(child.inbound_spi, replay_mark)?;
        // No block yet, but one is due: a reservation that fails is asked
        // for again (see refills).
        self.reserved.insert(
            child.inbound_spi,
            Block {
                floor: first_seq,
                ceiling: 0,
            },
        );
        self.install_outbound(child)
    }

    /// Starts opening a standby SA's packets (this node takes it over, or is
    /// about to in a planned handover), with its window raised to the
    /// replicated mark first: what the owner accepted is refused here.
    pub fn accept(&mut self, inbound_spi: u32, replay_mark: u64) -> Result<(), EspError> {
        self.sadb.raise_replay_mark(inbound_spi, replay_mark)?;
        self.sadb.set_accepting(inbound_spi, true)
    }

    /// Stops opening an SA's packets: another node owns it, and only the
    /// owner's replay window counts (invariant 9: a packet replayed to
    /// every node is accepted once).
    pub fn refuse(&mut self, inbound_spi: u32) {
        let _ = self.sadb.set_accepting(inbound_spi, false);
    }

    /// Hands a child SA over to another node: stop sending, keep decrypting
    /// (packets already on their way still arrive here until the VIP moves;
    /// the caller [`refuse`](Self::refuse)s them once it has).
    pub fn hand_over(&mut self, child: &ChildSa) {
        self.sadb.remove_outbound(child.inbound_spi);
        self.reserved.remove(&child.inbound_spi);
        self.pending_outbound
            .retain(|_, c| c.inbound_spi != child.inbound_spi);
    }

    /// Installs a child SA. A rekeyed child's inbound half goes in at once (the
    /// peer may use it as soon as the exchange completes). If we answered the
    /// rekey, its outbound half waits until the old child is deleted: the peer
    /// installs its inbound SA only after reading our response, and packets we
    /// seal under the new SA before then are lost (strongSwan defers its
    /// outbound switch as rekey responder for the same reason). If we started
    /// the rekey, the new outbound half takes over at once, as the newest SA
    /// for its selectors: the peer deletes the old one when our DELETE comes,
    /// and a packet still sealed under it after that would be lost.
    pub fn install(&mut self, child: &ChildSa) -> Result<(), EspError> {
        self.install_inbound(child)?;
        if let Some(old) = child
            .replaces
            .filter(|old| child.outbound_waits && self.sadb.inbound_stats(*old).is_some())
        {
            self.pending_outbound.insert(old, child.clone());
            return Ok(());
        }
        let outbound = self.install_outbound(child);
        if outbound.is_err() {
            // Half an SA is worse than none: inbound-only would accept traffic
            // we can never answer.
            self.sadb.remove_inbound(child.inbound_spi);
        }
        outbound
    }

    /// `connection` is configured (again) with this replay window; new SAs
    /// use it.
    pub fn configure(&mut self, connection: &str, replay_window: u32) {
        self.replay_windows
            .insert(connection.to_owned(), replay_window);
    }

    /// `connection` is no longer configured (its SAs are removed already).
    pub fn unconfigure(&mut self, connection: &str) {
        self.replay_windows.remove(connection);
    }

    /// Whether `connection` is one of this node's configured tunnels.
    pub fn knows(&self, connection: &str) -> bool {
        self.replay_windows.contains_key(connection)
    }

    /// Hot standby: the inbound half of another node's child SA, keyed but
    /// opening nothing until [`accept`](Self::accept)ed. The outbound half
    /// is never installed here: a node that takes over starts it from its
    /// sequence-number reservation.
    pub fn install_standby(&mut self, child: &ChildSa) -> Result<(), EspError> {
        self.install_inbound(child)?;
        self.sadb.set_accepting(child.inbound_spi, false)
    }

    fn install_inbound(&mut self, child: &ChildSa) -> Result<(), EspError> {
        self.sadb.install_inbound(
            inbound_params(child),
            self.replay_window(&child.connection),
            selectors(child),
        )
    }

    pub fn remove_standby(&mut self, inbound_spi: u32) {
        self.sadb.remove_inbound(inbound_spi);
    }

    fn replay_window(&self, connection: &str) -> u32 {
        self.replay_windows.get(connection).copied().unwrap_or(1024)
    }

    fn install_outbound(&mut self, child: &ChildSa) -> Result<(), EspError> {
        self.install_outbound_ungated(child)?;
        if self.gated {
            let block = self
                .reserved
                .get(&child.inbound_spi)
                .copied()
                .unwrap_or_default();
            self.apply_block(child.inbound_spi, block);
        }
        Ok(())
    }

    fn install_outbound_ungated(&mut self, child: &ChildSa) -> Result<(), EspError> {
        self.sadb.install_outbound(
            child.inbound_spi,
            SaParams {
                spi: child.outbound_spi,
                encr: child.encr,
                integ: child.integ,
                encr_key: child.outbound_encr_key.clone(),
                integ_key: child.outbound_integ_key.clone(),
                esn: child.esn,
            },
            selectors(child),
            child.local,
            child.remote,
        )
    }

    /// Removes a child SA and activates the outbound half of its successor.
    pub fn remove(&mut self, inbound_spi: u32) {
        self.sadb.remove_inbound(inbound_spi);
        self.sadb.remove_outbound(inbound_spi);
        self.reserved.remove(&inbound_spi);
        // A successor deleted before it was ever activated leaves nothing behind.
        self.pending_outbound
            .retain(|_, c| c.inbound_spi != inbound_spi);
        if let Some(next) = self.pending_outbound.remove(&inbound_spi)
            && let Err(e) = self.install_outbound(&next)
        {
            tracing::error!(connection = %next.connection, error = %e, "cannot activate rekeyed child SA");
            self.sadb.remove_inbound(next.inbound_spi);
        }
    }

    /// Demultiplexes a UDP-4500 payload (RFC 3948) and decrypts ESP in place.
    pub fn decapsulate(&mut self, data: &mut [u8]) -> Decapsulated {
        let ike_start = match classify(data) {
            Datagram::Ike(ike) => data.len() - ike.len(),
            Datagram::Keepalive => return Decapsulated::Nothing,
            Datagram::Esp => {
                return match self.sadb.open(data) {
                    // Next header 59: a dummy packet (RFC 4303 2.6), traffic-flow
                    // confidentiality padding with nothing to deliver.
                    Ok(opened) if opened.next_header == 59 => Decapsulated::Nothing,
                    Ok(opened) => Decapsulated::Inner(opened.inner),
                    Err(e) => {
                        tracing::debug!(error = %e, "inbound ESP dropped");
                        Decapsulated::Nothing
                    }
                };
            }
        };
        Decapsulated::Ike(ike_start..data.len())
    }

    /// Seals inner packets from the TUN device; returns how many buffers were
    /// processed. Read the results back with [`Dataplane::sealed`].
    pub fn encapsulate(&mut self, packets: &[Vec<u8>]) -> usize {
        while self.bufs.len() < packets.len() {
            self.bufs.push(PacketBuf::new());
        }
        let mut n = 0;
        for packet in packets {
            let buf = &mut self.bufs[n];
            let area = buf.inner_mut();
            // Longer than the TUN MTU allows: cannot happen with a sane device.
            let Some(dst) = area.get_mut(..packet.len()) else {
                continue;
            };
            dst.copy_from_slice(packet);
            buf.set_inner_len(packet.len());
            n += 1;
        }
        self.sadb.seal_batch(&mut self.bufs[..n], &mut self.results);
        n
    }

    /// The `i`th result of the last [`Dataplane::encapsulate`]: where to send
    /// which bytes, or `None` if that packet was dropped.
    pub fn sealed(&self, i: usize) -> Option<(SocketAddr, SocketAddr, &[u8])> {
        match self.results.get(i)? {
            Ok(sealed) => Some((sealed.local, sealed.remote, self.bufs.get(i)?.data())),
            Err(e) => {
                tracing::trace!(error = %e, "outbound packet dropped");
                None
            }
        }
    }

    /// The `i`th packet of the last [`Dataplane::encapsulate`] if no SA's
    /// selectors matched it (it is left as it came).
    pub fn unmatched(&self, i: usize) -> Option<&[u8]> {
        match self.results.get(i)? {
            Err(tandem_esp::EspError::NoSelectorMatch) => Some(self.bufs.get(i)?.data()),
            _ => None,
        }
    }

    /// Status of one IKE SA with its children's counters, for `tandemd ctl status`.
    /// Counters of a child SA's two halves, where installed.
    pub fn sa_stats(
        &self,
        inbound_spi: u32,
    ) -> (Option<tandem_esp::SaStats>, Option<tandem_esp::SaStats>) {
        (
            self.sadb.inbound_stats(inbound_spi),
            self.sadb.outbound_stats(inbound_spi),
        )
    }

    pub fn describe(&self, sa: IkeSaInfo) -> serde_json::Value {
        let children: Vec<_> = sa
            .children
            .iter()
            .map(|c| {
                let stats = |s: Option<tandem_esp::SaStats>| {
                    s.map(|s| {
                        serde_json::json!({
                            "packets": s.packets,
                            "bytes": s.bytes,
                            "replay_drops": s.replay_drops,
                            "integrity_failures": s.integrity_failures,
                            "selector_drops": s.selector_drops,
                            "standby_drops": s.standby_drops,
                            "highest_seq": s.highest_seq,
                        })
                    })
                };
                let (inbound, outbound) = self.sa_stats(c.inbound_spi);
                serde_json::json!({
                    "inbound_spi": format!("{:08x}", c.inbound_spi),
                    "outbound_spi": format!("{:08x}", c.outbound_spi),
                    "proposal": c.proposal,
                    "inbound": stats(inbound),
                    "outbound": stats(outbound),
                })
            })
            .collect();
        serde_json::json!({
            "connection": sa.connection,
            "spi_i": format!("{:016x}", sa.spi_i),
            "spi_r": format!("{:016x}", sa.spi_r),
            "state": sa.state,
            "initiator": sa.initiator,
            "remote": sa.remote.to_string(),
            "children": children,
        })
    }
}

fn inbound_params(child: &ChildSa) -> SaParams {
    SaParams {
        spi: child.inbound_spi,
        encr: child.encr,
        integ: child.integ,
        encr_key: child.inbound_encr_key.clone(),
        integ_key: child.inbound_integ_key.clone(),
        esn: child.esn,
    }
}

/// The child's selectors from this gateway's side (local = its own).
fn selectors(child: &ChildSa) -> Selectors {
    Selectors {
        local: child.local_ts.iter().map(selector).collect(),
        remote: child.remote_ts.iter().map(selector).collect(),
    }
}

fn selector(ts: &TrafficSelector) -> Selector {
    Selector {
        ip_protocol: ts.ip_protocol,
        start_port: ts.start_port,
        end_port: ts.end_port,
        start: ts.start,
        end: ts.end,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn child() -> ChildSa {
        ChildSa::for_tests("site-a", 1, 2, &[7; 36])
    }

    #[test]
    fn a_node_sends_only_from_the_blocks_granted_to_it() {
        let mut d = Dataplane::new(
            BTreeMap::from([("site-a".to_owned(), 64)]),
            true,
            tandem_crypto::AeadBackend::default(),
        );
        // Taken over from a view where numbers up to 99 were spoken for:
        // nothing may be sent before a block is granted, and one is due.
        d.take_over(&child(), 100, 0).unwrap();
        assert_eq!(d.sadb.outbound_seq(1), Some((100, 0)));
        assert_eq!(d.refills(1000), vec![1]);
        // That view was stale: the grant starts after another node's numbers.
        d.grant(1, 5000, 5999);
        assert_eq!(d.sadb.outbound_seq(1), Some((5000, 5999)));
        // A block that follows on from this node's own does not skip.
        d.grant(1, 6000, 6999);
        assert_eq!(d.sadb.outbound_seq(1), Some((5000, 6999)));
        assert!(d.refills(1000).is_empty());
        // A block granted after another node's (the tunnel moved away and
        // back while a reservation was committing) leaves a gap.
        d.grant(1, 9000, 9999);
        assert_eq!(d.sadb.outbound_seq(1), Some((9000, 9999)));
        // Handed over: no block left, none asked for.
        d.hand_over(&child());
        assert!(d.refills(1000).is_empty());
    }
}
