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
}

impl Dataplane {
    pub fn new(replay_windows: BTreeMap<String, u32>) -> Dataplane {
        Dataplane {
            sadb: Sadb::new(),
            replay_windows,
            pending_outbound: BTreeMap::new(),
            bufs: Vec::new(),
            results: Vec::new(),
        }
    }

    /// Installs a child SA. A rekeyed child's inbound half goes in at once (the
    /// peer may use it as soon as the exchange completes), but its outbound half
    /// waits until the old child is deleted: if we answered the rekey, the peer
    /// installs its inbound SA only after reading our response, and packets we
    /// seal under the new SA before then are lost. strongSwan defers its
    /// outbound switch as rekey responder for the same reason.
    pub fn install(&mut self, child: &ChildSa) -> Result<(), EspError> {
        self.sadb
            .install_inbound(inbound_params(child), self.replay_window(&child.connection))?;
        if let Some(old) = child
            .replaces
            .filter(|old| self.sadb.inbound_stats(*old).is_some())
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
                serde_json::json!({
                    "inbound_spi": format!("{:08x}", c.inbound_spi),
                    "outbound_spi": format!("{:08x}", c.outbound_spi),
                    "proposal": c.proposal,
                    "inbound": stats(self.sadb.inbound_stats(c.inbound_spi)),
                    "outbound": stats(self.sadb.outbound_stats(c.outbound_spi)),
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
