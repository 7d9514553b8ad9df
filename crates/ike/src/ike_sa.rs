//! An established IKE SA and the exchanges it runs: CREATE_CHILD_SA (child and
//! IKE SA rekeys) and INFORMATIONAL (DPD, deletes), in both roles.
//!
//! The SA is plain data (keys as [`Secret`]s, message IDs, the cached last
//! response, children) so that a later step can replicate it; only the outstanding
//! request's ephemeral DH value is not meant to survive a failover.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Instant;

use tandem_crypto::{DhGroup, DhPrivate, SaCipher};

use crate::child_sa::{ChildEntry, ChildParams, ChildSa, RekeyRecord, narrow};
use crate::config::{ConnectionConfig, IkeProposal};
use crate::endpoint::{CloseReason, Event, Io};
use crate::keys::{IkeKeys, derive_child_keys, derive_ike_keys, rekey_skeyseed};
use crate::message::{
    Delete, ExchangeType, Header, KeyExchange, Message, Notify, Payload, ProtocolId, Spi, notify,
};
use crate::payloads::{
    child_spi, error_notify, find_notify, ike_spi, ke, log_notifies, nonce, nonce_of,
    notify_payload, sa, ts_i, ts_r,
};
use crate::proposal::{accept_esp, accept_ike, esp_offer, ike_offer, select_esp, select_ike};
use crate::record::{ChildTimers, IkeSaRecord};
use crate::timers::{Retransmit, lifetime_deadlines};

/// Where an IKE SA is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Active,
    /// Replaced by a rekey: children moved to the successor, waiting only for the
    /// DELETE of this SA (sent by us or by the peer).
    Rekeyed,
}

/// What the endpoint must do with an SA after it handled something.
#[derive(Debug, Default)]
pub(crate) struct Flow {
    /// A new IKE SA created by a rekey.
    pub successor: Option<Box<IkeSa>>,
    /// The SA is gone; events were already emitted.
    pub remove: bool,
}

/// What an IKE SA's creator hands over.
#[derive(Debug)]
pub(crate) struct IkeSaParams {
    pub connection: String,
    pub spi_i: u64,
    pub spi_r: u64,
    pub initiator: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub proposal: IkeProposal,
    pub keys: IkeKeys,
    pub next_send_id: u32,
    pub next_expected_id: u32,
}

/// A request we want to send on this SA; one runs at a time (window size 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LocalRequest {
    Dpd,
    DeleteIke,
    DeleteChild(u32),
    RekeyChild(u32),
    RekeyIke,
}

#[derive(Debug)]
struct Outstanding {
    message_id: u32,
    retransmit: Retransmit,
    pending: Pending,
}

/// The state of our request while we wait for its response.
#[derive(Debug)]
enum Pending {
    Dpd,
    DeleteIke,
    DeleteChild(u32),
    RekeyChild(ChildRekeySent),
    RekeyIke(IkeRekeySent),
}

#[derive(Debug)]
struct ChildRekeySent {
    old_inbound: u32,
    new_inbound: u32,
    ni: Vec<u8>,
    dh: Option<DhPrivate>,
}

#[derive(Debug)]
struct IkeRekeySent {
    new_spi: u64,
    ni: Vec<u8>,
    dh: DhPrivate,
}

/// An established IKE SA.
#[derive(Debug)]
pub(crate) struct IkeSa {
    pub connection: String,
    pub spi_i: u64,
    pub spi_r: u64,
    /// We are the original initiator of this SA (the I flag we send).
    pub initiator: bool,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub proposal: IkeProposal,
    keys: IkeKeys,
    cipher_out: SaCipher,
    cipher_in: SaCipher,
    pub next_send_id: u32,
    pub next_expected_id: u32,
    /// Message ID and bytes of the last response, resent for a retransmitted request.
    last_response: Option<(u32, Vec<u8>)>,
    outstanding: Option<Outstanding>,
    queue: VecDeque<LocalRequest>,
    pub children: Vec<ChildEntry>,
    pub established_at: Instant,
    last_received: Instant,
    rekey_at: Instant,
    expire_at: Instant,
    ike_rekey_started: bool,
    pub phase: Phase,
}

/// Retry a refused rekey after this long rather than hammering the peer.
const REKEY_RETRY: std::time::Duration = std::time::Duration::from_secs(30);

impl IkeSa {
    pub fn new(
        p: IkeSaParams,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Result<Self, tandem_crypto::CryptoError> {
        let (rekey_at, expire_at) = lifetime_deadlines(io.now, cfg.ike_lifetime, io.rng);
        Self::with_deadlines(p, io.now, rekey_at, expire_at)
    }

    /// A fresh SA with nothing outstanding, no children and no cached
    /// response, established at `now`.
    fn with_deadlines(
        p: IkeSaParams,
        now: Instant,
        rekey_at: Instant,
        expire_at: Instant,
    ) -> Result<Self, tandem_crypto::CryptoError> {
        let (cipher_out, cipher_in) = p.keys.ciphers(&p.proposal, p.initiator)?;
        Ok(Self {
            connection: p.connection,
            spi_i: p.spi_i,
            spi_r: p.spi_r,
            initiator: p.initiator,
            local: p.local,
            remote: p.remote,
            proposal: p.proposal,
            keys: p.keys,
            cipher_out,
            cipher_in,
            next_send_id: p.next_send_id,
            next_expected_id: p.next_expected_id,
            last_response: None,
            outstanding: None,
            queue: VecDeque::new(),
            children: Vec::new(),
            established_at: now,
            last_received: now,
            rekey_at,
            expire_at,
            ike_rekey_started: false,
            phase: Phase::Active,
        })
    }

    /// Rebuilds an SA another node established, from its replicated record
    /// (deadlines counted from `now`) and its children's keys: what a node
    /// taking over a tunnel runs from. Nothing is outstanding: a request the
    /// old owner had in flight died with it, and the peer's retransmission of
    /// its own request gets the recorded last response.
    pub fn adopt(
        record: &IkeSaRecord,
        children: Vec<ChildSa>,
        now: Instant,
    ) -> Result<Self, tandem_crypto::CryptoError> {
        let params = IkeSaParams {
            connection: record.connection.clone(),
            spi_i: record.spi_i,
            spi_r: record.spi_r,
            initiator: record.initiator,
            local: record.local,
            remote: record.remote,
            proposal: record.proposal,
            keys: record.keys.clone(),
            next_send_id: record.next_send_id,
            next_expected_id: record.next_expected_id,
        };
        let mut sa =
            Self::with_deadlines(params, now, now + record.rekey_in, now + record.expire_in)?;
        sa.last_response = record.last_response.clone();
        sa.children = record
            .children
            .iter()
            .filter_map(|t| {
                let child = children.iter().find(|c| c.inbound_spi == t.inbound_spi)?;
                Some(ChildEntry::new(
                    child.clone(),
                    now + t.rekey_in,
                    now + t.expire_in,
                ))
            })
            .collect();
        if record.rekeyed {
            sa.phase = Phase::Rekeyed;
        }
        Ok(sa)
    }

    /// The SA as the cluster replicates it, deadlines counted from `now`.
    pub fn record(&self, now: Instant) -> IkeSaRecord {
        IkeSaRecord {
            connection: self.connection.clone(),
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            initiator: self.initiator,
            local: self.local,
            remote: self.remote,
            proposal: self.proposal,
            keys: self.keys.clone(),
            next_send_id: self.next_send_id,
            next_expected_id: self.next_expected_id,
            last_response: self.last_response.clone(),
            rekeyed: self.phase == Phase::Rekeyed,
            rekey_in: self.rekey_at.saturating_duration_since(now),
            expire_in: self.expire_at.saturating_duration_since(now),
            children: self
                .children
                .iter()
                .map(|c| ChildTimers {
                    inbound_spi: c.sa.inbound_spi,
                    rekey_in: c.rekey_at.saturating_duration_since(now),
                    expire_in: c.expire_at.saturating_duration_since(now),
                })
                .collect(),
        }
    }

    pub fn our_spi(&self) -> u64 {
        if self.initiator {
            self.spi_i
        } else {
            self.spi_r
        }
    }

    /// Adds a child SA and announces it.
    pub fn install_child(&mut self, child: ChildSa, cfg: &ConnectionConfig, io: &mut Io<'_>) {
        let (rekey_at, expire_at) = lifetime_deadlines(io.now, cfg.child_lifetime, io.rng);
        self.children
            .push(ChildEntry::new(child.clone(), rekey_at, expire_at));
        io.events.push_back(Event::ChildSaInstalled(child));
    }

    /// Queues a local request and starts it if nothing is outstanding.
    pub fn request(&mut self, req: LocalRequest, cfg: &ConnectionConfig, io: &mut Io<'_>) {
        if req == LocalRequest::DeleteIke {
            // Nothing else matters once we decided to delete the SA.
            self.queue.clear();
        }
        if !self.queue.contains(&req) {
            self.queue.push_back(req);
        }
        self.start_next(cfg, io);
    }

    /// The next time [`IkeSa::handle_timeout`] has work.
    pub fn deadline(&self, cfg: &ConnectionConfig) -> Option<Instant> {
        let mut d: Vec<Instant> = Vec::new();
        if let Some(o) = &self.outstanding {
            d.push(o.retransmit.deadline);
        }
        if self.phase == Phase::Active {
            d.push(self.expire_at);
            if !self.ike_rekey_started {
                d.push(self.rekey_at);
            }
            for c in &self.children {
                if !c.deleting {
                    d.push(c.expire_at);
                    if !c.retiring {
                        d.push(c.rekey_at);
                    }
                }
            }
            if let (Some(delay), None, true) =
                (cfg.dpd_delay, &self.outstanding, self.queue.is_empty())
            {
                d.push(self.last_received + delay);
            }
            if self.outstanding.is_none() && !self.queue.is_empty() {
                // Requests moved over from the SA this one replaced: due now
                // (any past instant is), sent once the rekey's own messages
                // are out.
                d.push(self.last_received);
            }
        }
        d.into_iter().min()
    }

    pub fn handle_timeout(&mut self, cfg: &ConnectionConfig, io: &mut Io<'_>) -> Flow {
        let now = io.now;
        if let Some(o) = &mut self.outstanding
            && o.retransmit.deadline <= now
        {
            if o.retransmit.fire(now) {
                io.send(
                    o.retransmit.local,
                    o.retransmit.remote,
                    o.retransmit.datagram.clone(),
                );
            } else {
                let reason = match o.pending {
                    Pending::Dpd => CloseReason::DpdTimeout,
                    _ => CloseReason::RetransmitsExhausted,
                };
                tracing::warn!(connection = %self.connection, ?reason, "peer unresponsive");
                self.close(reason, io);
                return Flow {
                    remove: true,
                    ..Flow::default()
                };
            }
        }
        if self.phase != Phase::Active {
            return Flow::default();
        }
        if now >= self.expire_at {
            // The rekey never succeeded: tell the peer, but do not wait for it.
            let delete = vec![Payload::Delete(Delete {
                protocol: ProtocolId::Ike,
                spis: Vec::new(),
            })];
            let id = self.next_send_id;
            let bytes = self.encrypt(ExchangeType::Informational, id, false, delete, io);
            io.send(self.local, self.remote, bytes);
            self.close(CloseReason::Expired, io);
            return Flow {
                remove: true,
                ..Flow::default()
            };
        }
        if now >= self.rekey_at && !self.ike_rekey_started {
            self.ike_rekey_started = true;
            self.queue.push_back(LocalRequest::RekeyIke);
        }
        for c in &mut self.children {
            if c.deleting {
                continue;
            }
            if now >= c.expire_at {
                c.deleting = true;
                self.queue
                    .push_back(LocalRequest::DeleteChild(c.sa.inbound_spi));
            } else if now >= c.rekey_at && !c.retiring {
                c.retiring = true;
                self.queue
                    .push_back(LocalRequest::RekeyChild(c.sa.inbound_spi));
            }
        }
        if let Some(delay) = cfg.dpd_delay
            && self.outstanding.is_none()
            && self.queue.is_empty()
            && now >= self.last_received + delay
        {
            self.queue.push_back(LocalRequest::Dpd);
        }
        self.start_next(cfg, io);
        Flow::default()
    }

    /// Emits the events of this SA going away (children first).
    pub fn close(&mut self, reason: CloseReason, io: &mut Io<'_>) {
        if self.phase != Phase::Active {
            return;
        }
        for c in self.children.drain(..) {
            io.events.push_back(Event::ChildSaDeleted {
                connection: self.connection.clone(),
                inbound_spi: c.sa.inbound_spi,
                outbound_spi: c.sa.outbound_spi,
            });
        }
        io.events.push_back(Event::IkeSaClosed {
            connection: self.connection.clone(),
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            reason,
        });
    }

    /// One datagram addressed to this SA (any exchange after IKE_AUTH, or an
    /// IKE_AUTH retransmission).
    pub fn handle(
        &mut self,
        header: &Header,
        datagram: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Flow {
        if header.initiator == self.initiator {
            tracing::debug!("message with our own I flag dropped");
            io.drops.unexpected += 1;
            return Flow::default();
        }
        if header.response {
            let Some(o) = &self.outstanding else {
                tracing::debug!(id = header.message_id, "unsolicited response dropped");
                io.drops.unexpected += 1;
                return Flow::default();
            };
            if o.message_id != header.message_id {
                tracing::debug!(id = header.message_id, "response to an old request dropped");
                io.drops.unexpected += 1;
                return Flow::default();
            }
        } else if header.message_id != self.next_expected_id
            && self.last_response.as_ref().map(|(id, _)| *id) != Some(header.message_id)
        {
            tracing::debug!(
                id = header.message_id,
                "request with unexpected message ID dropped"
            );
            io.drops.unexpected += 1;
            return Flow::default();
        }
        let msg = match Message::decrypt(datagram, &self.cipher_in) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "undecryptable message dropped");
                io.drops.undecryptable += 1;
                return Flow::default();
            }
        };
        self.last_received = io.now;
        if header.response {
            let Some(o) = self.outstanding.take() else {
                return Flow::default();
            };
            let flow = self.complete(o.pending, &msg, cfg, io);
            if !flow.remove {
                self.start_next(cfg, io);
            }
            return flow;
        }
        if let Some((id, bytes)) = &self.last_response
            && *id == header.message_id
        {
            // A retransmitted request: the same bytes, without reprocessing.
            io.send(local, remote, bytes.clone());
            return Flow::default();
        }
        self.next_expected_id = self.next_expected_id.wrapping_add(1);
        let mut flow = Flow::default();
        let reply = match header.exchange {
            ExchangeType::Informational => self.informational(&msg, &mut flow, io),
            ExchangeType::CreateChildSa => self.create_child_sa(&msg, &mut flow, cfg, io),
            other => {
                tracing::debug!(?other, "unexpected exchange on an established SA");
                vec![notify_payload(notify::INVALID_SYNTAX, Vec::new())]
            }
        };
        let bytes = self.encrypt(header.exchange, header.message_id, true, reply, io);
        self.last_response = Some((header.message_id, bytes.clone()));
        io.send(local, remote, bytes);
        if flow.remove {
            self.close(CloseReason::DeletedByPeer, io);
        }
        flow
    }

    fn encrypt(
        &self,
        exchange: ExchangeType,
        message_id: u32,
        response: bool,
        payloads: Vec<Payload>,
        io: &mut Io<'_>,
    ) -> Vec<u8> {
        let msg = Message {
            header: Header {
                spi_i: self.spi_i,
                spi_r: self.spi_r,
                exchange,
                initiator: self.initiator,
                response,
                message_id,
            },
            payloads,
        };
        msg.emit_encrypted(&self.cipher_out, io.rng)
    }

    fn send_request(
        &mut self,
        exchange: ExchangeType,
        payloads: Vec<Payload>,
        pending: Pending,
        io: &mut Io<'_>,
    ) {
        let id = self.next_send_id;
        self.next_send_id = id.wrapping_add(1);
        let bytes = self.encrypt(exchange, id, false, payloads, io);
        io.send(self.local, self.remote, bytes.clone());
        self.outstanding = Some(Outstanding {
            message_id: id,
            retransmit: Retransmit::new(io.now, self.local, self.remote, bytes),
            pending,
        });
    }

    fn start_next(&mut self, cfg: &ConnectionConfig, io: &mut Io<'_>) {
        while self.outstanding.is_none() {
            let Some(req) = self.queue.pop_front() else {
                return;
            };
            if self.phase != Phase::Active && req != LocalRequest::DeleteIke {
                continue;
            }
            match req {
                LocalRequest::Dpd => {
                    self.send_request(ExchangeType::Informational, Vec::new(), Pending::Dpd, io)
                }
                LocalRequest::DeleteIke => {
                    let p = vec![Payload::Delete(Delete {
                        protocol: ProtocolId::Ike,
                        spis: Vec::new(),
                    })];
                    self.send_request(ExchangeType::Informational, p, Pending::DeleteIke, io);
                }
                LocalRequest::DeleteChild(spi) => {
                    if self.child_index(spi).is_some() {
                        let p = vec![Payload::Delete(Delete {
                            protocol: ProtocolId::Esp,
                            spis: vec![spi],
                        })];
                        let pending = Pending::DeleteChild(spi);
                        self.send_request(ExchangeType::Informational, p, pending, io);
                    }
                }
                LocalRequest::RekeyChild(spi) => self.start_child_rekey(spi, cfg, io),
                LocalRequest::RekeyIke => {
                    let new_spi = ike_spi(io.rng);
                    let ni = nonce(io.rng);
                    let dh = DhPrivate::generate(self.proposal.dh, io.rng);
                    let p = vec![
                        Payload::Sa(ike_offer(&cfg.ike_proposals, Spi::Ike(new_spi))),
                        Payload::Nonce(ni.clone()),
                        Payload::Ke(KeyExchange {
                            group: self.proposal.dh.id(),
                            data: dh.public_value(),
                        }),
                    ];
                    let pending = Pending::RekeyIke(IkeRekeySent { new_spi, ni, dh });
                    self.send_request(ExchangeType::CreateChildSa, p, pending, io);
                }
            }
        }
    }

    fn child_index(&self, inbound: u32) -> Option<usize> {
        self.children
            .iter()
            .position(|c| c.sa.inbound_spi == inbound)
    }

    /// The PFS group we use for CREATE_CHILD_SA: the first configured one.
    fn pfs_group(cfg: &ConnectionConfig) -> Option<DhGroup> {
        cfg.esp_proposals.first().and_then(|p| p.dh)
    }

    fn start_child_rekey(&mut self, old: u32, cfg: &ConnectionConfig, io: &mut Io<'_>) {
        if self.child_index(old).is_none() {
            return;
        }
        let new_inbound = child_spi(io.rng);
        let ni = nonce(io.rng);
        let dh = Self::pfs_group(cfg).map(|g| DhPrivate::generate(g, io.rng));
        let mut p = vec![
            Payload::Notify(Notify {
                protocol: ProtocolId::Esp,
                spi: Spi::Child(old),
                kind: notify::REKEY_SA,
                data: Vec::new(),
            }),
            Payload::Sa(esp_offer(&cfg.esp_proposals, new_inbound, true)),
            Payload::Nonce(ni.clone()),
        ];
        if let Some(dh) = &dh {
            p.push(Payload::Ke(KeyExchange {
                group: dh.group().id(),
                data: dh.public_value(),
            }));
        }
        // The configured selectors, not the old child's: an operator who
        // changed them (tandemctl apply) gets them at the next rekey, which
        // RFC 7296 2.8 allows; unchanged, the peer narrows them as before.
        p.push(Payload::TsI(cfg.local_ts.clone()));
        p.push(Payload::TsR(cfg.remote_ts.clone()));
        let pending = Pending::RekeyChild(ChildRekeySent {
            old_inbound: old,
            new_inbound,
            ni,
            dh,
        });
        self.send_request(ExchangeType::CreateChildSa, p, pending, io);
    }

    /// The response to our outstanding request arrived.
    fn complete(
        &mut self,
        pending: Pending,
        msg: &Message,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Flow {
        match pending {
            Pending::Dpd => Flow::default(),
            Pending::DeleteIke => {
                self.close(CloseReason::DeletedLocally, io);
                Flow {
                    remove: true,
                    ..Flow::default()
                }
            }
            Pending::DeleteChild(spi) => {
                if let Some(i) = self.child_index(spi) {
                    let c = self.children.remove(i);
                    io.events.push_back(Event::ChildSaDeleted {
                        connection: self.connection.clone(),
                        inbound_spi: c.sa.inbound_spi,
                        outbound_spi: c.sa.outbound_spi,
                    });
                }
                Flow::default()
            }
            Pending::RekeyChild(sent) => {
                if let Err(why) = self.finish_child_rekey(sent, msg, cfg, io) {
                    tracing::warn!(connection = %self.connection, why, "child SA rekey failed");
                }
                Flow::default()
            }
            Pending::RekeyIke(sent) => match self.finish_ike_rekey(sent, msg, cfg, io) {
                Ok(new) => Flow {
                    successor: Some(Box::new(new)),
                    remove: false,
                },
                Err(why) => {
                    tracing::warn!(connection = %self.connection, why, "IKE SA rekey failed");
                    self.ike_rekey_started = false;
                    self.rekey_at = io.now + REKEY_RETRY;
                    Flow::default()
                }
            },
        }
    }

    fn finish_child_rekey(
        &mut self,
        sent: ChildRekeySent,
        msg: &Message,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Result<(), &'static str> {
        let retry = |sa: &mut Self| {
            if let Some(i) = sa.child_index(sent.old_inbound) {
                sa.children[i].retiring = false;
                sa.children[i].rekey_at = io.now + REKEY_RETRY;
            }
        };
        if error_notify(msg).is_some() {
            log_notifies(msg);
            retry(self);
            return Err("peer refused");
        }
        let parsed = (|| {
            let (proposal, outbound) = accept_esp(sa(msg)?, &cfg.esp_proposals, true)?;
            let nr = nonce_of(msg)?.to_vec();
            let g_ir = match (&sent.dh, proposal.dh) {
                (Some(dh), Some(g)) if g == dh.group() => {
                    let k = ke(msg).filter(|k| k.group == g.id())?;
                    Some(dh.agree(&k.data).ok()?)
                }
                (None, None) => None,
                _ => return None,
            };
            Some((
                proposal,
                outbound,
                nr,
                g_ir,
                ts_i(msg)?.to_vec(),
                ts_r(msg)?.to_vec(),
            ))
        })();
        let Some((proposal, outbound, nr, g_ir, tsi, tsr)) = parsed else {
            retry(self);
            return Err("invalid response");
        };
        let keys = derive_child_keys(
            self.proposal.prf,
            &self.keys.sk_d,
            &proposal,
            g_ir.as_ref(),
            &sent.ni,
            &nr,
        );
        let child = ChildParams {
            connection: self.connection.clone(),
            proposal,
            inbound_spi: sent.new_inbound,
            outbound_spi: outbound,
            local_ts: tsi,
            remote_ts: tsr,
            local: self.local,
            remote: self.remote,
            replaces: Some(sent.old_inbound),
        }
        .into_child(keys, true);
        self.install_child(child, cfg, io);
        // Section 2.8.1: if the peer rekeyed the same child meanwhile, the SA made
        // with the lowest of the four nonces is redundant and its creator deletes
        // it; the creator of the survivor deletes the old child.
        let ours = RekeyRecord {
            new_inbound: sent.new_inbound,
            ni: sent.ni,
            nr,
        };
        let theirs = self
            .child_index(sent.old_inbound)
            .and_then(|i| self.children[i].rekeyed_by_peer.clone());
        match theirs {
            Some(theirs) if ours.lowest_nonce() < theirs.lowest_nonce() => {
                tracing::info!(connection = %self.connection, "child rekey collision lost");
                self.queue
                    .push_back(LocalRequest::DeleteChild(ours.new_inbound));
                if let Some(i) = self.child_index(ours.new_inbound) {
                    self.children[i].deleting = true;
                }
            }
            _ => {
                if let Some(i) = self.child_index(sent.old_inbound) {
                    self.children[i].deleting = true;
                }
                self.queue
                    .push_back(LocalRequest::DeleteChild(sent.old_inbound));
            }
        }
        Ok(())
    }

    fn finish_ike_rekey(
        &mut self,
        sent: IkeRekeySent,
        msg: &Message,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Result<IkeSa, &'static str> {
        if error_notify(msg).is_some() {
            log_notifies(msg);
            return Err("peer refused");
        }
        let (proposal, spi) = accept_ike(sa(msg).ok_or("no SA")?, &cfg.ike_proposals)
            .ok_or("unacceptable proposal")?;
        let Spi::Ike(peer_spi) = spi else {
            return Err("no SPI in SA");
        };
        let nr = nonce_of(msg).ok_or("no nonce")?;
        let peer_ke = ke(msg)
            .filter(|k| k.group == sent.dh.group().id() && proposal.dh == sent.dh.group())
            .ok_or("KE group mismatch")?;
        let g_ir = sent.dh.agree(&peer_ke.data).map_err(|_| "invalid KE")?;
        let seed = rekey_skeyseed(self.proposal.prf, &self.keys.sk_d, &g_ir, &sent.ni, nr);
        let keys = derive_ike_keys(&proposal, &seed, &sent.ni, nr, sent.new_spi, peer_spi);
        self.successor(proposal, keys, sent.new_spi, peer_spi, true, cfg, io)
    }

    /// Builds the SA that replaces this one and moves the children over.
    #[allow(clippy::too_many_arguments)]
    fn successor(
        &mut self,
        proposal: IkeProposal,
        keys: IkeKeys,
        spi_i: u64,
        spi_r: u64,
        initiator: bool,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Result<IkeSa, &'static str> {
        let mut new = IkeSa::new(
            IkeSaParams {
                connection: self.connection.clone(),
                spi_i,
                spi_r,
                initiator,
                local: self.local,
                remote: self.remote,
                proposal,
                keys,
                next_send_id: 0,
                next_expected_id: 0,
            },
            cfg,
            io,
        )
        .map_err(|_| "cannot key the new IKE SA")?;
        new.children = std::mem::take(&mut self.children);
        io.events.push_back(Event::IkeSaRekeyed {
            connection: self.connection.clone(),
            old: (self.spi_i, self.spi_r),
            new: (spi_i, spi_r),
        });
        // Child requests queued but not yet sent move with the children: their
        // flags (retiring, deleting) stay set, so no timer would queue them
        // again and the child would run into its hard lifetime unrekeyed.
        new.queue.extend(self.queue.drain(..).filter(|r| {
            matches!(
                r,
                LocalRequest::RekeyChild(_) | LocalRequest::DeleteChild(_)
            )
        }));
        self.phase = Phase::Rekeyed;
        if initiator {
            self.queue.push_back(LocalRequest::DeleteIke);
        }
        Ok(new)
    }

    /// An INFORMATIONAL request: DPD, deletes, notifies.
    fn informational(&mut self, msg: &Message, flow: &mut Flow, io: &mut Io<'_>) -> Vec<Payload> {
        log_notifies(msg);
        let mut ours = Vec::new();
        for p in &msg.payloads {
            let Payload::Delete(d) = p else { continue };
            match d.protocol {
                ProtocolId::Ike => flow.remove = true,
                ProtocolId::Esp => {
                    for spi in &d.spis {
                        let Some(i) = self.children.iter().position(|c| c.sa.outbound_spi == *spi)
                        else {
                            continue;
                        };
                        let c = self.children.remove(i);
                        ours.push(c.sa.inbound_spi);
                        io.events.push_back(Event::ChildSaDeleted {
                            connection: self.connection.clone(),
                            inbound_spi: c.sa.inbound_spi,
                            outbound_spi: c.sa.outbound_spi,
                        });
                    }
                }
                other => tracing::debug!(?other, "delete for unsupported protocol ignored"),
            }
        }
        if flow.remove || ours.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete {
                protocol: ProtocolId::Esp,
                spis: ours,
            })]
        }
    }

    /// A CREATE_CHILD_SA request: IKE SA rekey, child rekey or new child.
    fn create_child_sa(
        &mut self,
        msg: &Message,
        flow: &mut Flow,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Vec<Payload> {
        let refuse = |kind| vec![notify_payload(kind, Vec::new())];
        if self.phase != Phase::Active {
            return refuse(notify::TEMPORARY_FAILURE);
        }
        let Some(offer) = sa(msg) else {
            return refuse(notify::INVALID_SYNTAX);
        };
        if offer.iter().any(|p| p.protocol == ProtocolId::Ike) {
            return self.respond_ike_rekey(msg, flow, cfg, io);
        }
        // Section 2.25: no child SA work while our own IKE SA rekey is under way;
        // the peer retries after ours completes.
        if matches!(&self.outstanding, Some(o) if matches!(o.pending, Pending::RekeyIke(_))) {
            return refuse(notify::TEMPORARY_FAILURE);
        }
        match self.respond_child(msg, cfg, io) {
            Ok(p) => p,
            Err(kind) => refuse(kind),
        }
    }

    fn respond_child(
        &mut self,
        msg: &Message,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Result<Vec<Payload>, u16> {
        let old = match find_notify(msg, notify::REKEY_SA) {
            Some(n) => {
                let Spi::Child(spi) = n.spi else {
                    return Err(notify::INVALID_SYNTAX);
                };
                // The peer names the SA by its inbound SPI, our outbound.
                let i = self
                    .children
                    .iter()
                    .position(|c| c.sa.outbound_spi == spi && !c.deleting)
                    .ok_or(notify::CHILD_SA_NOT_FOUND)?;
                Some(i)
            }
            None => None,
        };
        let offer = sa(msg).ok_or(notify::INVALID_SYNTAX)?;
        let (mut reply, outbound, proposal) =
            select_esp(offer, &cfg.esp_proposals, true).ok_or(notify::NO_PROPOSAL_CHOSEN)?;
        let ni = nonce_of(msg).ok_or(notify::INVALID_SYNTAX)?.to_vec();
        let tsi = narrow(ts_i(msg).ok_or(notify::INVALID_SYNTAX)?, &cfg.remote_ts);
        let tsr = narrow(ts_r(msg).ok_or(notify::INVALID_SYNTAX)?, &cfg.local_ts);
        if tsi.is_empty() || tsr.is_empty() {
            return Err(notify::TS_UNACCEPTABLE);
        }
        let mut ke_reply = None;
        let g_ir = match proposal.dh {
            Some(g) => {
                let Some(k) = ke(msg).filter(|k| k.group == g.id()) else {
                    return Ok(vec![notify_payload(
                        notify::INVALID_KE_PAYLOAD,
                        g.id().to_be_bytes().to_vec(),
                    )]);
                };
                let dh = DhPrivate::generate(g, io.rng);
                let shared = dh.agree(&k.data).map_err(|_| notify::INVALID_SYNTAX)?;
                ke_reply = Some(KeyExchange {
                    group: g.id(),
                    data: dh.public_value(),
                });
                Some(shared)
            }
            None => None,
        };
        let inbound = child_spi(io.rng);
        let nr = nonce(io.rng);
        let keys = derive_child_keys(
            self.proposal.prf,
            &self.keys.sk_d,
            &proposal,
            g_ir.as_ref(),
            &ni,
            &nr,
        );
        let replaces = old.map(|i| self.children[i].sa.inbound_spi);
        if let Some(i) = old {
            let c = &mut self.children[i];
            // The peer deletes the old child once its rekey completes.
            c.retiring = true;
            c.rekeyed_by_peer = Some(RekeyRecord {
                new_inbound: inbound,
                ni: ni.clone(),
                nr: nr.clone(),
            });
        }
        let child = ChildParams {
            connection: self.connection.clone(),
            proposal,
            inbound_spi: inbound,
            outbound_spi: outbound,
            local_ts: tsr.clone(),
            remote_ts: tsi.clone(),
            local: self.local,
            remote: self.remote,
            replaces,
        }
        .into_child(keys, false);
        self.install_child(child, cfg, io);
        reply.spi = Spi::Child(inbound);
        let mut p = vec![Payload::Sa(vec![reply]), Payload::Nonce(nr)];
        if let Some(k) = ke_reply {
            p.push(Payload::Ke(k));
        }
        p.push(Payload::TsI(tsi));
        p.push(Payload::TsR(tsr));
        Ok(p)
    }

    fn respond_ike_rekey(
        &mut self,
        msg: &Message,
        flow: &mut Flow,
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> Vec<Payload> {
        let refuse = |kind| vec![notify_payload(kind, Vec::new())];
        // Simultaneous IKE SA rekeys are refused rather than resolved by nonces
        // (section 2.8.2): our own rekey proceeds and the peer retries later.
        // The same for our other exchanges that change SAs. An outstanding DPD
        // is no conflict: refusing for it made the peer's rekeys fail whenever
        // a liveness check happened to be in flight.
        if matches!(&self.outstanding, Some(o) if !matches!(o.pending, Pending::Dpd)) {
            return refuse(notify::TEMPORARY_FAILURE);
        }
        let Some(offer) = sa(msg) else {
            return refuse(notify::INVALID_SYNTAX);
        };
        let Some((mut reply, proposal)) = select_ike(offer, &cfg.ike_proposals) else {
            return refuse(notify::NO_PROPOSAL_CHOSEN);
        };
        let peer_spi = offer
            .iter()
            .find(|p| p.number == reply.number && p.protocol == ProtocolId::Ike)
            .map(|p| p.spi);
        let (Some(Spi::Ike(peer_spi)), Some(ni)) = (peer_spi, nonce_of(msg)) else {
            return refuse(notify::INVALID_SYNTAX);
        };
        let Some(k) = ke(msg).filter(|k| k.group == proposal.dh.id()) else {
            return vec![notify_payload(
                notify::INVALID_KE_PAYLOAD,
                proposal.dh.id().to_be_bytes().to_vec(),
            )];
        };
        let dh = DhPrivate::generate(proposal.dh, io.rng);
        let Ok(g_ir) = dh.agree(&k.data) else {
            return refuse(notify::INVALID_SYNTAX);
        };
        let our_spi = ike_spi(io.rng);
        let nr = nonce(io.rng);
        let seed = rekey_skeyseed(self.proposal.prf, &self.keys.sk_d, &g_ir, ni, &nr);
        let keys = derive_ike_keys(&proposal, &seed, ni, &nr, peer_spi, our_spi);
        match self.successor(proposal, keys, peer_spi, our_spi, false, cfg, io) {
            Ok(new) => flow.successor = Some(Box::new(new)),
            Err(why) => {
                tracing::warn!(why, "IKE SA rekey refused");
                return refuse(notify::NO_PROPOSAL_CHOSEN);
            }
        }
        reply.spi = Spi::Ike(our_spi);
        vec![
            Payload::Sa(vec![reply]),
            Payload::Nonce(nr),
            Payload::Ke(KeyExchange {
                group: proposal.dh.id(),
                data: dh.public_value(),
            }),
        ]
    }

    /// Sends a response in the handshake's last exchange (IKE_AUTH) and caches it.
    pub fn respond_auth(
        &mut self,
        message_id: u32,
        payloads: Vec<Payload>,
        local: SocketAddr,
        remote: SocketAddr,
        io: &mut Io<'_>,
    ) {
        let bytes = self.encrypt(ExchangeType::IkeAuth, message_id, true, payloads, io);
        self.last_response = Some((message_id, bytes.clone()));
        io.send(local, remote, bytes);
    }
}
