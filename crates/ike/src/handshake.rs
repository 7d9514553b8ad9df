//! The handshake (IKE_SA_INIT then IKE_AUTH) as typed states (STYLE.md 5):
//! initiator `InitSent -> AuthSent -> IkeSa`, responder `InitReplied -> IkeSa`.
//! Each state is consumed by the message that moves it on.

use std::net::{IpAddr, SocketAddr};

use tandem_crypto::{DhPrivate, SaCipher};

use crate::auth::{auth_matches, psk_auth};
use crate::child_sa::{ChildParams, narrow};
use crate::config::{ConnectionConfig, IkeProposal};
use crate::endpoint::{CloseReason, Event, Io, NegotiationFailure};
use crate::ike_sa::{IkeSa, IkeSaParams};
use crate::keys::{IkeKeys, derive_child_keys, derive_ike_keys, skeyseed};
use crate::message::{
    Auth, ExchangeType, Header, KeyExchange, Message, Payload, auth_method, notify,
};
use crate::payloads::{
    auth, child_spi, error_notify, find_notify, id_i, id_r, ike_spi, ke, log_notifies, nonce,
    nonce_of, notify_payload, sa, ts_i, ts_r,
};
use crate::proposal::{accept_esp, accept_ike, esp_offer, ike_offer, select_esp, select_ike};
use crate::timers::Retransmit;

/// The NAT-T port both sides move to after IKE_SA_INIT (RFC 7296 section 2.23).
pub(crate) const NATT_PORT: u16 = 4500;

/// NAT_DETECTION_*_IP data: SHA-1(SPIi | SPIr | IP | port) (section 2.23).
pub(crate) fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(spi_i.to_be_bytes());
    h.update(spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => h.update(a.octets()),
        IpAddr::V6(a) => h.update(a.octets()),
    }
    h.update(addr.port().to_be_bytes());
    h.finalize().to_vec()
}

/// NAT detection payloads that always report "NAT": the source hash is over
/// random bytes, as strongSwan's `encap = yes` does, because Tandem only speaks
/// ESP-in-UDP and so needs both sides on port 4500.
fn nat_payloads(spi_i: u64, spi_r: u64, dest: SocketAddr, io: &mut Io<'_>) -> [Payload; 2] {
    let mut fake = vec![0; 20];
    io.rng.fill(&mut fake);
    [
        notify_payload(notify::NAT_DETECTION_SOURCE_IP, fake),
        notify_payload(
            notify::NAT_DETECTION_DESTINATION_IP,
            nat_hash(spi_i, spi_r, dest),
        ),
    ]
}

fn natt(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip(), NATT_PORT)
}

/// Initiator: IKE_SA_INIT request sent.
#[derive(Debug)]
pub(crate) struct InitSent {
    pub connection: String,
    pub spi_i: u64,
    ni: Vec<u8>,
    dh: DhPrivate,
    cookie: Option<Vec<u8>>,
    pub request: Retransmit,
    /// INVALID_KE_PAYLOAD retries so far; bounded so two misconfigured peers
    /// cannot bounce groups forever.
    ke_retries: u8,
}

pub(crate) enum InitOutcome {
    Retry(Box<InitSent>),
    Auth(Box<AuthSent>),
    Failed(CloseReason),
}

impl InitSent {
    pub fn start(cfg: &ConnectionConfig, remote: IpAddr, io: &mut Io<'_>) -> Option<Box<Self>> {
        let group = cfg.ike_proposals.first()?.dh;
        let spi_i = ike_spi(io.rng);
        let ni = nonce(io.rng);
        let dh = DhPrivate::generate(group, io.rng);
        let local = SocketAddr::new(cfg.local_addr, 500);
        let remote = SocketAddr::new(remote, 500);
        let mut s = Self {
            connection: cfg.name.clone(),
            spi_i,
            ni,
            dh,
            cookie: None,
            request: Retransmit::new(io.now, local, remote, Vec::new()),
            ke_retries: 0,
        };
        s.send(cfg, io);
        Some(Box::new(s))
    }

    fn send(&mut self, cfg: &ConnectionConfig, io: &mut Io<'_>) {
        let (local, remote) = (self.request.local, self.request.remote);
        let mut payloads = Vec::new();
        if let Some(c) = &self.cookie {
            payloads.push(notify_payload(notify::COOKIE, c.clone()));
        }
        payloads.push(Payload::Sa(ike_offer(
            &cfg.ike_proposals,
            crate::message::Spi::None,
        )));
        payloads.push(Payload::Ke(KeyExchange {
            group: self.dh.group().id(),
            data: self.dh.public_value(),
        }));
        payloads.push(Payload::Nonce(self.ni.clone()));
        payloads.extend(nat_payloads(self.spi_i, 0, remote, io));
        let msg = Message {
            header: Header {
                spi_i: self.spi_i,
                spi_r: 0,
                exchange: ExchangeType::IkeSaInit,
                initiator: true,
                response: false,
                message_id: 0,
            },
            payloads,
        };
        let bytes = msg.emit();
        io.send(local, remote, bytes.clone());
        self.request = Retransmit::new(io.now, local, remote, bytes);
    }

    pub fn handle_response(
        mut self: Box<Self>,
        msg: &Message,
        datagram: &[u8],
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> InitOutcome {
        if let Some(c) = find_notify(msg, notify::COOKIE) {
            if self.cookie.is_some() && self.cookie.as_deref() == Some(c.data.as_slice()) {
                return InitOutcome::Retry(self);
            }
            self.cookie = Some(c.data.clone());
            self.send(cfg, io);
            return InitOutcome::Retry(self);
        }
        if let Some(n) = find_notify(msg, notify::INVALID_KE_PAYLOAD) {
            let wanted = <[u8; 2]>::try_from(n.data.as_slice())
                .ok()
                .map(u16::from_be_bytes)
                .and_then(|id| cfg.ike_proposals.iter().find(|p| p.dh.id() == id))
                .map(|p| p.dh);
            return match wanted {
                Some(g) if self.ke_retries < 2 && g != self.dh.group() => {
                    self.ke_retries += 1;
                    self.dh = DhPrivate::generate(g, io.rng);
                    self.send(cfg, io);
                    InitOutcome::Retry(self)
                }
                _ => InitOutcome::Failed(CloseReason::NegotiationFailed(
                    NegotiationFailure::InvalidKePayload,
                )),
            };
        }
        if let Some(kind) = error_notify(msg) {
            return InitOutcome::Failed(CloseReason::NegotiationFailed(
                NegotiationFailure::from_notify(kind),
            ));
        }
        match (*self).keys(msg, datagram, cfg, io.now) {
            Some(mut auth) => {
                auth.send(cfg, io);
                InitOutcome::Auth(Box::new(auth))
            }
            None => InitOutcome::Failed(CloseReason::NegotiationFailed(
                NegotiationFailure::InvalidResponse,
            )),
        }
    }

    fn keys(
        self,
        msg: &Message,
        datagram: &[u8],
        cfg: &ConnectionConfig,
        now: std::time::Instant,
    ) -> Option<AuthSent> {
        let spi_r = msg.header.spi_r;
        if spi_r == 0 {
            return None;
        }
        let (proposal, _) = accept_ike(sa(msg)?, &cfg.ike_proposals)?;
        let k = ke(msg)
            .filter(|k| k.group == self.dh.group().id() && proposal.dh == self.dh.group())?;
        let nr = nonce_of(msg)?.to_vec();
        let g_ir = self.dh.agree(&k.data).ok()?;
        let seed = skeyseed(proposal.prf, &self.ni, &nr, &g_ir);
        let keys = derive_ike_keys(&proposal, &seed, &self.ni, &nr, self.spi_i, spi_r);
        let (cipher_out, cipher_in) = keys.ciphers(&proposal, true).ok()?;
        Some(AuthSent {
            connection: self.connection,
            spi_i: self.spi_i,
            spi_r,
            proposal,
            keys,
            cipher_out,
            cipher_in,
            ni: self.ni,
            nr,
            init_request: self.request.datagram.clone(),
            init_response: datagram.to_vec(),
            child_inbound: 0,
            request: Retransmit::new(
                now,
                natt(self.request.local),
                natt(self.request.remote),
                Vec::new(),
            ),
        })
    }
}

/// Initiator: IKE_AUTH request sent, keys derived.
#[derive(Debug)]
pub(crate) struct AuthSent {
    pub connection: String,
    pub spi_i: u64,
    pub spi_r: u64,
    proposal: IkeProposal,
    keys: IkeKeys,
    cipher_out: SaCipher,
    cipher_in: SaCipher,
    ni: Vec<u8>,
    nr: Vec<u8>,
    init_request: Vec<u8>,
    init_response: Vec<u8>,
    child_inbound: u32,
    pub request: Retransmit,
}

pub(crate) enum AuthOutcome {
    Established(Box<IkeSa>),
    Failed(CloseReason),
    Ignore(Box<AuthSent>),
}

impl AuthSent {
    /// Sends IKE_AUTH from port 4500 to port 4500 (section 2.23: we always claim
    /// a NAT, so both sides float).
    fn send(&mut self, cfg: &ConnectionConfig, io: &mut Io<'_>) {
        self.child_inbound = child_spi(io.rng);
        let auth = psk_auth(
            self.proposal.prf,
            &cfg.psk,
            &self.init_request,
            &self.nr,
            &self.keys.sk_pi,
            &cfg.local_id,
        );
        let msg = Message {
            header: Header {
                spi_i: self.spi_i,
                spi_r: self.spi_r,
                exchange: ExchangeType::IkeAuth,
                initiator: true,
                response: false,
                message_id: 1,
            },
            payloads: vec![
                Payload::IdI(cfg.local_id.clone()),
                Payload::Auth(Auth {
                    method: auth_method::SHARED_KEY_MIC,
                    data: auth.expose().to_vec(),
                }),
                Payload::Sa(esp_offer(&cfg.esp_proposals, self.child_inbound, false)),
                Payload::TsI(cfg.local_ts.clone()),
                Payload::TsR(cfg.remote_ts.clone()),
            ],
        };
        let bytes = msg.emit_encrypted(&self.cipher_out, io.rng);
        let (local, remote) = (self.request.local, self.request.remote);
        io.send(local, remote, bytes.clone());
        self.request = Retransmit::new(io.now, local, remote, bytes);
    }

    pub fn handle_response(
        self: Box<Self>,
        header: &Header,
        datagram: &[u8],
        cfg: &ConnectionConfig,
        io: &mut Io<'_>,
    ) -> AuthOutcome {
        if !header.response || header.message_id != 1 || header.exchange != ExchangeType::IkeAuth {
            io.drops.unexpected += 1;
            return AuthOutcome::Ignore(self);
        }
        let msg = match Message::decrypt(datagram, &self.cipher_in) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "undecryptable IKE_AUTH response dropped");
                io.drops.undecryptable += 1;
                return AuthOutcome::Ignore(self);
            }
        };
        if find_notify(&msg, notify::AUTHENTICATION_FAILED).is_some() {
            return AuthOutcome::Failed(CloseReason::AuthenticationFailed);
        }
        let (Some(idr), Some(peer_auth)) = (id_r(&msg), auth(&msg)) else {
            return AuthOutcome::Failed(match error_notify(&msg) {
                Some(kind) => CloseReason::NegotiationFailed(NegotiationFailure::from_notify(kind)),
                None => CloseReason::NegotiationFailed(NegotiationFailure::InvalidResponse),
            });
        };
        let expected = psk_auth(
            self.proposal.prf,
            &cfg.psk,
            &self.init_response,
            &self.ni,
            &self.keys.sk_pr,
            idr,
        );
        if *idr != cfg.remote_id || !auth_matches(&expected, peer_auth) {
            tracing::warn!(connection = %self.connection, "responder failed authentication");
            return AuthOutcome::Failed(CloseReason::AuthenticationFailed);
        }
        let (local, remote) = (self.request.local, self.request.remote);
        let params = IkeSaParams {
            connection: self.connection.clone(),
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            initiator: true,
            local,
            remote,
            proposal: self.proposal,
            keys: self.keys.clone(),
            next_send_id: 2,
            next_expected_id: 0,
        };
        let Ok(mut ike) = IkeSa::new(params, cfg, io) else {
            return AuthOutcome::Failed(CloseReason::NegotiationFailed(
                NegotiationFailure::InvalidResponse,
            ));
        };
        io.events.push_back(Event::IkeSaEstablished {
            connection: self.connection.clone(),
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            remote,
            initiator: true,
        });
        let child = (|| {
            let (proposal, outbound) = accept_esp(sa(&msg)?, &cfg.esp_proposals, false)?;
            Some((
                proposal,
                outbound,
                ts_i(&msg)?.to_vec(),
                ts_r(&msg)?.to_vec(),
            ))
        })();
        match child {
            Some((proposal, outbound, tsi, tsr)) => {
                let keys = derive_child_keys(
                    self.proposal.prf,
                    &self.keys.sk_d,
                    &proposal,
                    None,
                    &self.ni,
                    &self.nr,
                );
                let child = ChildParams {
                    connection: self.connection,
                    proposal,
                    inbound_spi: self.child_inbound,
                    outbound_spi: outbound,
                    local_ts: tsi,
                    remote_ts: tsr,
                    local,
                    remote,
                    replaces: None,
                }
                .into_child(keys, true);
                ike.install_child(child, cfg, io);
            }
            None => {
                // Section 1.2: a refused child leaves the IKE SA up.
                tracing::warn!(connection = %self.connection, "no child SA in IKE_AUTH");
                log_notifies(&msg);
            }
        }
        AuthOutcome::Established(Box::new(ike))
    }
}

/// Responder: IKE_SA_INIT answered, keys derived, waiting for IKE_AUTH.
#[derive(Debug)]
pub(crate) struct InitReplied {
    /// Connections that match the addresses; IKE_AUTH picks one by identity.
    candidates: Vec<String>,
    pub spi_i: u64,
    pub spi_r: u64,
    proposal: IkeProposal,
    keys: IkeKeys,
    cipher_in: SaCipher,
    ni: Vec<u8>,
    nr: Vec<u8>,
    init_request: Vec<u8>,
    /// Our IKE_SA_INIT response, resent for a retransmitted request.
    pub init_response: Vec<u8>,
    pub remote: SocketAddr,
    pub created: std::time::Instant,
}

/// Why an IKE_SA_INIT request did not create state; the reply (if any) is sent
/// statelessly.
pub(crate) enum InitRefusal {
    Reply(Vec<u8>),
    Drop,
}

/// A stateless IKE_SA_INIT response carrying one notify.
pub(crate) fn init_notify_reply(header: &Header, kind: u16, data: Vec<u8>) -> Vec<u8> {
    Message {
        header: Header {
            spi_r: 0,
            response: true,
            initiator: false,
            ..*header
        },
        payloads: vec![notify_payload(kind, data)],
    }
    .emit()
}

impl InitReplied {
    pub fn respond(
        msg: &Message,
        datagram: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
        configs: &[ConnectionConfig],
        io: &mut Io<'_>,
    ) -> Result<Self, InitRefusal> {
        let header = &msg.header;
        let mut candidates: Vec<&ConnectionConfig> = configs
            .iter()
            .filter(|c| c.local_addr == local.ip())
            .filter(|c| c.remote_addr.is_none_or(|r| r == remote.ip()))
            .collect();
        // A connection naming the peer's address beats a wildcard.
        candidates.sort_by_key(|c| c.remote_addr.is_none());
        if candidates.is_empty() {
            tracing::debug!(%remote, "IKE_SA_INIT for no configured connection");
            io.drops.no_connection += 1;
            return Err(InitRefusal::Reply(init_notify_reply(
                header,
                notify::NO_PROPOSAL_CHOSEN,
                Vec::new(),
            )));
        }
        let Some(offer) = sa(msg) else {
            io.drops.malformed += 1;
            return Err(InitRefusal::Drop);
        };
        let Some((reply, proposal)) = candidates
            .iter()
            .find_map(|c| select_ike(offer, &c.ike_proposals))
        else {
            tracing::debug!(%remote, "no acceptable IKE proposal");
            io.drops.no_proposal += 1;
            return Err(InitRefusal::Reply(init_notify_reply(
                header,
                notify::NO_PROPOSAL_CHOSEN,
                Vec::new(),
            )));
        };
        let (Some(k), Some(ni)) = (ke(msg), nonce_of(msg)) else {
            io.drops.malformed += 1;
            return Err(InitRefusal::Drop);
        };
        if k.group != proposal.dh.id() {
            return Err(InitRefusal::Reply(init_notify_reply(
                header,
                notify::INVALID_KE_PAYLOAD,
                proposal.dh.id().to_be_bytes().to_vec(),
            )));
        }
        let dh = DhPrivate::generate(proposal.dh, io.rng);
        let g_ir = dh.agree(&k.data).map_err(|e| {
            tracing::debug!(error = %e, "invalid KE from peer");
            io.drops.malformed += 1;
            InitRefusal::Drop
        })?;
        let spi_r = ike_spi(io.rng);
        let nr = nonce(io.rng);
        let seed = skeyseed(proposal.prf, ni, &nr, &g_ir);
        let keys = derive_ike_keys(&proposal, &seed, ni, &nr, header.spi_i, spi_r);
        let (_, cipher_in) = keys
            .ciphers(&proposal, false)
            .map_err(|_| InitRefusal::Drop)?;
        let mut payloads = vec![
            Payload::Sa(vec![reply]),
            Payload::Ke(KeyExchange {
                group: proposal.dh.id(),
                data: dh.public_value(),
            }),
            Payload::Nonce(nr.clone()),
        ];
        payloads.extend(nat_payloads(header.spi_i, spi_r, remote, io));
        let response = Message {
            header: Header {
                spi_r,
                response: true,
                initiator: false,
                ..*header
            },
            payloads,
        }
        .emit();
        io.send(local, remote, response.clone());
        let candidates = candidates
            .iter()
            .filter(|c| c.ike_proposals.contains(&proposal))
            .map(|c| c.name.clone())
            .collect();
        Ok(Self {
            candidates,
            spi_i: header.spi_i,
            spi_r,
            proposal,
            keys,
            cipher_in,
            ni: ni.to_vec(),
            nr,
            init_request: datagram.to_vec(),
            init_response: response,
            remote,
            created: io.now,
        })
    }

    /// The IKE_AUTH request. `None` when the message is not one (it is dropped and
    /// the state kept); otherwise the SA, or nothing when authentication failed.
    pub fn handle_auth(
        self: Box<Self>,
        header: &Header,
        datagram: &[u8],
        local: SocketAddr,
        remote: SocketAddr,
        configs: &[ConnectionConfig],
        io: &mut Io<'_>,
    ) -> Result<Option<Box<IkeSa>>, Box<Self>> {
        if header.response || header.message_id != 1 || header.exchange != ExchangeType::IkeAuth {
            io.drops.unexpected += 1;
            return Err(self);
        }
        let msg = match Message::decrypt(datagram, &self.cipher_in) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(error = %e, "undecryptable IKE_AUTH dropped");
                io.drops.undecryptable += 1;
                return Err(self);
            }
        };
        let idi = id_i(&msg);
        let wanted_idr = id_r(&msg);
        let cfg = configs.iter().find(|c| {
            self.candidates.contains(&c.name)
                && Some(&c.remote_id) == idi
                && wanted_idr.is_none_or(|r| *r == c.local_id)
        });
        let verified = match (cfg, idi, auth(&msg)) {
            (Some(cfg), Some(idi), Some(data)) => {
                let expected = psk_auth(
                    self.proposal.prf,
                    &cfg.psk,
                    &self.init_request,
                    &self.nr,
                    &self.keys.sk_pi,
                    idi,
                );
                auth_matches(&expected, data).then_some(cfg)
            }
            _ => None,
        };
        // Lifetimes of the SA used only to send the failure come from any
        // candidate; it is discarded right after.
        let Some(cfg) = verified.or_else(|| {
            configs
                .iter()
                .find(|c| self.candidates.first() == Some(&c.name))
        }) else {
            return Ok(None);
        };
        let params = IkeSaParams {
            connection: cfg.name.clone(),
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            initiator: false,
            local,
            remote,
            proposal: self.proposal,
            keys: self.keys.clone(),
            next_send_id: 0,
            next_expected_id: 2,
        };
        let Ok(mut ike) = IkeSa::new(params, cfg, io) else {
            return Ok(None);
        };
        if verified.is_none() {
            // Anyone can get this far with a handshake of their own: counted,
            // and announced by the IkeSaClosed event, not logged per attempt.
            tracing::debug!(%remote, connection = %cfg.name, "peer failed authentication");
            io.drops.auth_failed += 1;
            let fail = vec![notify_payload(notify::AUTHENTICATION_FAILED, Vec::new())];
            ike.respond_auth(1, fail, local, remote, io);
            io.events.push_back(Event::IkeSaClosed {
                connection: cfg.name.clone(),
                spi_i: self.spi_i,
                spi_r: self.spi_r,
                reason: CloseReason::AuthenticationFailed,
            });
            return Ok(None);
        }
        let our_auth = psk_auth(
            self.proposal.prf,
            &cfg.psk,
            &self.init_response,
            &self.ni,
            &self.keys.sk_pr,
            &cfg.local_id,
        );
        let mut payloads = vec![
            Payload::IdR(cfg.local_id.clone()),
            Payload::Auth(Auth {
                method: auth_method::SHARED_KEY_MIC,
                data: our_auth.expose().to_vec(),
            }),
        ];
        let child = self.child(&msg, cfg, local, remote, io);
        let child = match child {
            Ok((reply, child)) => {
                payloads.extend(reply);
                Some(child)
            }
            Err(kind) => {
                tracing::warn!(connection = %cfg.name, kind, "child SA in IKE_AUTH refused");
                payloads.push(notify_payload(kind, Vec::new()));
                None
            }
        };
        ike.respond_auth(1, payloads, local, remote, io);
        io.events.push_back(Event::IkeSaEstablished {
            connection: cfg.name.clone(),
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            remote,
            initiator: false,
        });
        if let Some(child) = child {
            ike.install_child(child, cfg, io);
        }
        Ok(Some(Box::new(ike)))
    }

    /// The first child SA: its reply payloads and the SA, or the error notify.
    fn child(
        &self,
        msg: &Message,
        cfg: &ConnectionConfig,
        local: SocketAddr,
        remote: SocketAddr,
        io: &mut Io<'_>,
    ) -> Result<(Vec<Payload>, crate::child_sa::ChildSa), u16> {
        let offer = sa(msg).ok_or(notify::NO_PROPOSAL_CHOSEN)?;
        let (mut reply, outbound, proposal) =
            select_esp(offer, &cfg.esp_proposals, false).ok_or(notify::NO_PROPOSAL_CHOSEN)?;
        let tsi = narrow(ts_i(msg).ok_or(notify::TS_UNACCEPTABLE)?, &cfg.remote_ts);
        let tsr = narrow(ts_r(msg).ok_or(notify::TS_UNACCEPTABLE)?, &cfg.local_ts);
        if tsi.is_empty() || tsr.is_empty() {
            return Err(notify::TS_UNACCEPTABLE);
        }
        let proposal = crate::config::EspProposal {
            dh: None,
            ..proposal
        };
        let inbound = child_spi(io.rng);
        reply.spi = crate::message::Spi::Child(inbound);
        let keys = derive_child_keys(
            self.proposal.prf,
            &self.keys.sk_d,
            &proposal,
            None,
            &self.ni,
            &self.nr,
        );
        let child = ChildParams {
            connection: cfg.name.clone(),
            proposal,
            inbound_spi: inbound,
            outbound_spi: outbound,
            local_ts: tsr.clone(),
            remote_ts: tsi.clone(),
            local,
            remote,
            replaces: None,
        }
        .into_child(keys, false);
        Ok((
            vec![
                Payload::Sa(vec![reply]),
                Payload::TsI(tsi),
                Payload::TsR(tsr),
            ],
            child,
        ))
    }
}
