//! Glue between the IKE endpoint's child SAs and the ESP SA database: installs
//! and removes SAs as IKE reports them, and runs packets through ESP.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Range;

use tandem_esp::{Datagram, EspError, PacketBuf, SaParams, Sadb, Sealed, Selector, classify};
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
    /// Committed reservations by outbound SPI: the highest number usable here.
    reserved: BTreeMap<u32, u64>,
}

impl Dataplane {
    pub fn new(replay_windows: BTreeMap<String, u32>, gated: bool) -> Dataplane {
        Dataplane {
            sadb: Sadb::new(),
            replay_windows,
            pending_outbound: BTreeMap::new(),
            bufs: Vec::new(),
            results: Vec::new(),
            gated,
            reserved: BTreeMap::new(),
        }
    }

    /// A reservation for `outbound_spi` up to `up_to` is committed.
    pub fn grant(&mut self, outbound_spi: u32, up_to: u64) {
        let r = self.reserved.entry(outbound_spi).or_insert(0);
        *r = (*r).max(up_to);
        let ceiling = *r;
        // The SA may not be installed yet (a rekey's outbound half waits).
        let _ = self.sadb.set_seq_ceiling(outbound_spi, ceiling);
    }

    /// Whether this node has the outbound half of an SA (installed or
    /// waiting for its predecessor's deletion).
    pub fn sends_on(&self, outbound_spi: u32) -> bool {
        self.sadb.outbound_seq(outbound_spi).is_some()
            || self
                .pending_outbound
                .values()
                .any(|c| c.outbound_spi == outbound_spi)
    }

    /// Outbound SAs that have used half their reservation, with the next
    /// reservation each needs (`block` more numbers).
    pub fn refills(&self, block: u64) -> Vec<(u32, u64)> {
        self.reserved
            .iter()
            .filter_map(|(&spi, &up_to)| {
                let (next, _) = self.sadb.outbound_seq(spi)?;
                (next + block / 2 > up_to).then_some((spi, up_to.max(next - 1) + block))
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
        self.sadb
            .raise_replay_mark(child.inbound_spi, replay_mark)?;
        self.install_outbound(child)?;
        self.sadb.advance_seq(child.outbound_spi, first_seq)
    }

    /// Hands a child SA over to another node: stop sending, keep decrypting
    /// (packets already on their way still arrive here until the VIP moves).
    pub fn hand_over(&mut self, child: &ChildSa) {
        self.sadb.remove_outbound(child.outbound_spi);
        self.reserved.remove(&child.outbound_spi);
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
        self.sadb
            .install_inbound(inbound_params(child), self.replay_window(&child.connection))?;
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

    /// Whether `connection` is one of this node's configured tunnels.
    pub fn knows(&self, connection: &str) -> bool {
        self.replay_windows.contains_key(connection)
    }

    /// Hot standby: the inbound half of another node's child SA, ready to
    /// decrypt. The outbound half is never installed here: a node that
    /// takes over starts it from its sequence-number reservation.
    pub fn install_standby(&mut self, child: &ChildSa) -> Result<(), EspError> {
        self.sadb
            .install_inbound(inbound_params(child), self.replay_window(&child.connection))
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
            let ceiling = self.reserved.get(&child.outbound_spi).copied().unwrap_or(0);
            self.sadb.set_seq_ceiling(child.outbound_spi, ceiling)?;
        }
        Ok(())
    }

    fn install_outbound_ungated(&mut self, child: &ChildSa) -> Result<(), EspError> {
        self.sadb.install_outbound(
            SaParams {
                spi: child.outbound_spi,
                encr: child.encr,
                integ: child.integ,
                encr_key: child.outbound_encr_key.clone(),
                integ_key: child.outbound_integ_key.clone(),
                esn: child.esn,
            },
            child.local_ts.iter().map(selector).collect(),
            child.remote_ts.iter().map(selector).collect(),
            child.local,
            child.remote,
        )
    }

    /// Removes a child SA and activates the outbound half of its successor.
    pub fn remove(&mut self, inbound_spi: u32, outbound_spi: u32) {
        self.sadb.remove_inbound(inbound_spi);
        self.sadb.remove_outbound(outbound_spi);
        self.reserved.remove(&outbound_spi);
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

    /// Status of one IKE SA with its children's counters, for `tandemd ctl status`.
    /// Counters of a child SA's two halves, where installed.
    pub fn sa_stats(
        &self,
        inbound_spi: u32,
        outbound_spi: u32,
    ) -> (Option<tandem_esp::SaStats>, Option<tandem_esp::SaStats>) {
        (
            self.sadb.inbound_stats(inbound_spi),
            self.sadb.outbound_stats(outbound_spi),
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
                            "highest_seq": s.highest_seq,
                        })
                    })
                };
                let (inbound, outbound) = self.sa_stats(c.inbound_spi, c.outbound_spi);
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

fn selector(ts: &TrafficSelector) -> Selector {
    Selector {
        ip_protocol: ts.ip_protocol,
        start_port: ts.start_port,
        end_port: ts.end_port,
        start: ts.start,
        end: ts.end,
    }
}
