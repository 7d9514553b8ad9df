//! The IKE endpoint: every IKE SA of this gateway, demultiplexed by SPI, driven
//! by datagrams, timeouts and operator commands, without any IO (STYLE.md 1).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use tandem_crypto::{EncrAlg, IntegAlg, PrfAlg, SecureRandom};

pub use crate::child_sa::ChildSa;
use crate::config::{ConnectionConfig, EspProposal, Limits};
use crate::handshake::{
    AuthOutcome, AuthSent, InitOutcome, InitRefusal, InitReplied, InitSent, init_notify_reply,
};
use crate::ike_sa::{Flow, IkeSa, LocalRequest, Phase};
use crate::message::{DecodeError, ExchangeType, Header, Message, notify};
use crate::payloads::find_notify;
use crate::record::{IkeSaChange, IkeSaRecord};

/// A datagram to send. No non-ESP marker: the gateway adds it on port 4500.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub datagram: Vec<u8>,
}

/// Something the gateway must act on or report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    IkeSaEstablished {
        connection: String,
        spi_i: u64,
        spi_r: u64,
        remote: SocketAddr,
        initiator: bool,
    },
    IkeSaRekeyed {
        connection: String,
        old: (u64, u64),
        new: (u64, u64),
    },
    IkeSaClosed {
        connection: String,
        spi_i: u64,
        spi_r: u64,
        reason: CloseReason,
    },
    ChildSaInstalled(ChildSa),
    ChildSaDeleted {
        connection: String,
        inbound_spi: u32,
        outbound_spi: u32,
    },
}

/// Why an IKE SA ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    DeletedByPeer,
    DeletedLocally,
    DpdTimeout,
    RetransmitsExhausted,
    AuthenticationFailed,
    NegotiationFailed(NegotiationFailure),
    Expired,
}

/// Why a handshake failed before authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NegotiationFailure {
    NoProposalChosen,
    /// The peer insists on a DH group we do not offer.
    InvalidKePayload,
    /// Another error notify from the peer (its type).
    PeerError(u16),
    /// The peer's response was malformed or inconsistent with our request.
    InvalidResponse,
}

impl NegotiationFailure {
    pub(crate) fn from_notify(kind: u16) -> Self {
        match kind {
            notify::NO_PROPOSAL_CHOSEN => Self::NoProposalChosen,
            notify::INVALID_KE_PAYLOAD => Self::InvalidKePayload,
            other => Self::PeerError(other),
        }
    }
}

/// Errors of the operator-facing entry points.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IkeError {
    #[error("no connection named {0:?}")]
    UnknownConnection(String),
    #[error("connection {0:?} has no remote address, so it can only respond")]
    NoRemoteAddress(String),
    #[error("connection {0:?} has no IKE proposal")]
    NoProposal(String),
    #[error("connection {0:?} has no established IKE SA")]
    NotEstablished(String),
    #[error("connection {0:?} has no child SA to rekey")]
    NoChildSa(String),
    #[error("the replicated IKE SA of connection {0:?} cannot be keyed")]
    BadRecord(String),
}

/// The connection a slot belongs to (a responder's half-open SA has none yet).
fn slot_connection(slot: &Slot) -> Option<&str> {
    match slot {
        Slot::InitSent(s) => Some(&s.connection),
        Slot::AuthSent(s) => Some(&s.connection),
        Slot::InitReplied(_) => None,
        Slot::Established(s) => Some(&s.connection),
    }
}

/// Status of one IKE SA, without keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IkeSaInfo {
    pub connection: String,
    pub spi_i: u64,
    pub spi_r: u64,
    /// `"connecting"`, `"authenticating"`, `"established"` or `"rekeyed"`.
    pub state: &'static str,
    pub remote: SocketAddr,
    pub initiator: bool,
    pub established_at: Option<Instant>,
    /// Next message ID we send a request with.
    pub next_send_id: u32,
    /// Message ID of the next request we expect from the peer.
    pub next_expected_id: u32,
    pub children: Vec<ChildSaInfo>,
}

/// Status of one child SA, without keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChildSaInfo {
    pub inbound_spi: u32,
    pub outbound_spi: u32,
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    pub esn: bool,
    /// The algorithms in strongSwan syntax, e.g. `aes128gcm16-esn`.
    pub proposal: String,
}

/// What SA handlers write into: the clock, the rng and the output queues.
pub(crate) struct Io<'a> {
    pub now: Instant,
    pub rng: &'a mut dyn SecureRandom,
    pub transmits: &'a mut VecDeque<Transmit>,
    pub events: &'a mut VecDeque<Event>,
}

impl Io<'_> {
    pub fn send(&mut self, local: SocketAddr, remote: SocketAddr, datagram: Vec<u8>) {
        self.transmits.push_back(Transmit {
            local,
            remote,
            datagram,
        });
    }
}

/// A responder's half-open SA is forgotten after this long without IKE_AUTH.
const HALF_OPEN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// One IKE SA in whichever state it is.
#[derive(Debug)]
enum Slot {
    InitSent(Box<InitSent>),
    AuthSent(Box<AuthSent>),
    InitReplied(Box<InitReplied>),
    Established(Box<IkeSa>),
}

/// All IKE SAs of this gateway.
pub struct Endpoint {
    connections: Vec<ConnectionConfig>,
    limits: Limits,
    rng: Box<dyn SecureRandom + Send>,
    /// Keyed by our own SPI; a BTreeMap so iteration (timeouts) is deterministic.
    sas: BTreeMap<u64, Slot>,
    /// Responder half-open SAs by (peer, peer's SPI), to spot retransmitted
    /// IKE_SA_INIT requests.
    half_open: BTreeMap<(SocketAddr, u64), u64>,
    /// Secret of the stateless cookies (section 2.6), drawn at startup.
    cookie_secret: [u8; 32],
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    /// Our SPIs of SAs touched since the last `take_changes`.
    touched: BTreeSet<u64>,
    /// Our SPIs of established SAs reported by `take_changes`, so a removal is
    /// reported only for an SA the caller knows.
    reported: BTreeSet<u64>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("connections", &self.connections.len())
            .field("sas", &self.sas.len())
            .finish_non_exhaustive()
    }
}

macro_rules! io {
    ($self:ident, $now:expr) => {
        Io {
            now: $now,
            rng: &mut *$self.rng,
            transmits: &mut $self.transmits,
            events: &mut $self.events,
        }
    };
}

impl Endpoint {
    pub fn new(
        connections: Vec<ConnectionConfig>,
        limits: Limits,
        mut rng: Box<dyn SecureRandom + Send>,
    ) -> Self {
        let mut cookie_secret = [0; 32];
        rng.fill(&mut cookie_secret);
        Self {
            connections,
            limits,
            rng,
            sas: BTreeMap::new(),
            half_open: BTreeMap::new(),
            cookie_secret,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            touched: BTreeSet::new(),
            reported: BTreeSet::new(),
        }
    }

    fn config(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }

    /// One received IKE message (no non-ESP marker).
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        let header = match Header::parse(datagram) {
            Ok(h) => h,
            Err(DecodeError::UnsupportedVersion(1)) => {
                tracing::warn!(%remote, "IKEv1 is not supported; peer must use IKEv2");
                return;
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "malformed IKE datagram dropped");
                return;
            }
        };
        if header.exchange == ExchangeType::IkeSaInit && !header.response {
            self.init_request(now, local, remote, &header, datagram);
            return;
        }
        let ours = if header.initiator {
            header.spi_r
        } else {
            header.spi_i
        };
        let Some(slot) = self.sas.remove(&ours) else {
            tracing::debug!(%remote, spi = format_args!("{ours:016x}"), "message for unknown IKE SA");
            return;
        };
        self.touched.insert(ours);
        let slot = self.dispatch(now, local, remote, &header, datagram, slot);
        if let Some(slot) = slot {
            self.sas.insert(ours, slot);
        }
    }

    fn dispatch(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        header: &Header,
        datagram: &[u8],
        slot: Slot,
    ) -> Option<Slot> {
        match slot {
            Slot::InitSent(s) => {
                if header.exchange != ExchangeType::IkeSaInit || !header.response {
                    return Some(Slot::InitSent(s));
                }
                let msg = match Message::parse(datagram) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "malformed IKE_SA_INIT response dropped");
                        return Some(Slot::InitSent(s));
                    }
                };
                let cfg = self.config(&s.connection)?.clone();
                let (spi_i, name) = (s.spi_i, s.connection.clone());
                match s.handle_response(&msg, datagram, &cfg, &mut io!(self, now)) {
                    InitOutcome::Retry(s) => Some(Slot::InitSent(s)),
                    InitOutcome::Auth(a) => Some(Slot::AuthSent(a)),
                    InitOutcome::Failed(reason) => {
                        self.closed(name, spi_i, header.spi_r, reason);
                        None
                    }
                }
            }
            Slot::AuthSent(s) => {
                let cfg = self.config(&s.connection)?.clone();
                let (spi_i, spi_r, name) = (s.spi_i, s.spi_r, s.connection.clone());
                match s.handle_response(header, datagram, &cfg, &mut io!(self, now)) {
                    AuthOutcome::Ignore(s) => Some(Slot::AuthSent(s)),
                    AuthOutcome::Established(sa) => Some(Slot::Established(sa)),
                    AuthOutcome::Failed(reason) => {
                        self.closed(name, spi_i, spi_r, reason);
                        None
                    }
                }
            }
            Slot::InitReplied(s) => {
                let key = (s.remote, s.spi_i);
                let connections = std::mem::take(&mut self.connections);
                let r = s.handle_auth(
                    header,
                    datagram,
                    local,
                    remote,
                    &connections,
                    &mut io!(self, now),
                );
                self.connections = connections;
                match r {
                    Err(s) => Some(Slot::InitReplied(s)),
                    Ok(sa) => {
                        self.half_open.remove(&key);
                        sa.map(Slot::Established)
                    }
                }
            }
            Slot::Established(mut sa) => {
                let cfg = self.config(&sa.connection)?.clone();
                let flow = sa.handle(header, datagram, local, remote, &cfg, &mut io!(self, now));
                self.apply(sa, flow)
            }
        }
    }

    /// Puts a rekey's successor in place and drops removed SAs.
    fn apply(&mut self, sa: Box<IkeSa>, flow: Flow) -> Option<Slot> {
        if let Some(new) = flow.successor {
            self.touched.insert(new.our_spi());
            self.sas.insert(new.our_spi(), Slot::Established(new));
        }
        (!flow.remove).then_some(Slot::Established(sa))
    }

    fn closed(&mut self, connection: String, spi_i: u64, spi_r: u64, reason: CloseReason) {
        tracing::warn!(%connection, ?reason, "IKE SA setup failed");
        self.events.push_back(Event::IkeSaClosed {
            connection,
            spi_i,
            spi_r,
            reason,
        });
    }

    fn cookie(&self, spi_i: u64, ni: &[u8], remote: SocketAddr) -> Vec<u8> {
        let ip = match remote.ip() {
            std::net::IpAddr::V4(a) => a.octets().to_vec(),
            std::net::IpAddr::V6(a) => a.octets().to_vec(),
        };
        PrfAlg::HmacSha256
            .prf(&self.cookie_secret, &[ni, &ip, &spi_i.to_be_bytes()])
            .expose()
            .to_vec()
    }

    fn init_request(
        &mut self,
        now: Instant,
        local: SocketAddr,
        remote: SocketAddr,
        header: &Header,
        datagram: &[u8],
    ) {
        if header.spi_r != 0 || header.message_id != 0 {
            tracing::debug!(%remote, "IKE_SA_INIT request with responder SPI dropped");
            return;
        }
        if let Some(Slot::InitReplied(s)) = self
            .half_open
            .get(&(remote, header.spi_i))
            .and_then(|spi| self.sas.get(spi))
        {
            // A retransmission: the same response, no new state.
            let response = s.init_response.clone();
            self.transmits.push_back(Transmit {
                local,
                remote,
                datagram: response,
            });
            return;
        }
        let msg = match Message::parse(datagram) {
            Ok(m) => m,
            Err(e) => {
                tracing::debug!(%remote, error = %e, "malformed IKE_SA_INIT dropped");
                return;
            }
        };
        let half_open = self.half_open.len();
        if half_open >= self.limits.max_half_open {
            tracing::warn!(%remote, "too many half-open IKE SAs; IKE_SA_INIT dropped");
            return;
        }
        if half_open >= self.limits.cookie_threshold {
            let Some(ni) = crate::payloads::nonce_of(&msg) else {
                return;
            };
            let expected = self.cookie(header.spi_i, ni, remote);
            let valid = find_notify(&msg, notify::COOKIE).is_some_and(|c| c.data == expected);
            if !valid {
                let reply = init_notify_reply(header, notify::COOKIE, expected);
                self.transmits.push_back(Transmit {
                    local,
                    remote,
                    datagram: reply,
                });
                return;
            }
        }
        let connections = std::mem::take(&mut self.connections);
        let r = InitReplied::respond(
            &msg,
            datagram,
            local,
            remote,
            &connections,
            &mut io!(self, now),
        );
        self.connections = connections;
        match r {
            Ok(s) => {
                self.half_open.insert((remote, s.spi_i), s.spi_r);
                self.sas.insert(s.spi_r, Slot::InitReplied(Box::new(s)));
            }
            Err(InitRefusal::Reply(bytes)) => self.transmits.push_back(Transmit {
                local,
                remote,
                datagram: bytes,
            }),
            Err(InitRefusal::Drop) => {
                tracing::debug!(%remote, "IKE_SA_INIT dropped");
            }
        }
    }

    /// Starts an IKE SA (and its first child) for a connection.
    pub fn initiate(&mut self, now: Instant, connection: &str) -> Result<(), IkeError> {
        let cfg = self
            .config(connection)
            .ok_or_else(|| IkeError::UnknownConnection(connection.to_owned()))?
            .clone();
        let remote = cfg
            .remote_addr
            .ok_or_else(|| IkeError::NoRemoteAddress(connection.to_owned()))?;
        let s = InitSent::start(&cfg, remote, &mut io!(self, now))
            .ok_or_else(|| IkeError::NoProposal(connection.to_owned()))?;
        self.sas.insert(s.spi_i, Slot::InitSent(s));
        Ok(())
    }

    /// Rekeys the connection's first child SA now.
    pub fn rekey_child(&mut self, now: Instant, connection: &str) -> Result<(), IkeError> {
        let rng = &mut *self.rng;
        let (transmits, events) = (&mut self.transmits, &mut self.events);
        let cfg = self
            .connections
            .iter()
            .find(|c| c.name == connection)
            .ok_or_else(|| IkeError::UnknownConnection(connection.to_owned()))?;
        let sa = active_sa(&mut self.sas, connection)?;
        let child = sa
            .children
            .iter_mut()
            .find(|c| !c.retiring && !c.deleting)
            .ok_or_else(|| IkeError::NoChildSa(connection.to_owned()))?;
        child.retiring = true;
        let spi = child.sa.inbound_spi;
        self.touched.insert(sa.our_spi());
        let mut io = Io {
            now,
            rng,
            transmits,
            events,
        };
        sa.request(LocalRequest::RekeyChild(spi), cfg, &mut io);
        Ok(())
    }

    /// Rekeys the connection's IKE SA now.
    pub fn rekey_ike(&mut self, now: Instant, connection: &str) -> Result<(), IkeError> {
        self.local_request(now, connection, LocalRequest::RekeyIke)
    }

    /// Deletes the connection's IKE SAs (and so their children).
    pub fn terminate(&mut self, now: Instant, connection: &str) -> Result<(), IkeError> {
        // A handshake in progress is simply abandoned.
        let half: Vec<u64> = self
            .sas
            .iter()
            .filter_map(|(spi, s)| match s {
                Slot::InitSent(i) if i.connection == connection => Some(*spi),
                Slot::AuthSent(a) if a.connection == connection => Some(*spi),
                _ => None,
            })
            .collect();
        let abandoned = !half.is_empty();
        for spi in half {
            if let Some(slot) = self.sas.remove(&spi) {
                let (spi_i, spi_r) = match &slot {
                    Slot::AuthSent(a) => (a.spi_i, a.spi_r),
                    _ => (spi, 0),
                };
                self.events.push_back(Event::IkeSaClosed {
                    connection: connection.to_owned(),
                    spi_i,
                    spi_r,
                    reason: CloseReason::DeletedLocally,
                });
            }
        }
        match self.local_request(now, connection, LocalRequest::DeleteIke) {
            Err(IkeError::NotEstablished(_)) if abandoned => Ok(()),
            r => r,
        }
    }

    fn local_request(
        &mut self,
        now: Instant,
        connection: &str,
        req: LocalRequest,
    ) -> Result<(), IkeError> {
        let rng = &mut *self.rng;
        let (transmits, events) = (&mut self.transmits, &mut self.events);
        let cfg = self
            .connections
            .iter()
            .find(|c| c.name == connection)
            .ok_or_else(|| IkeError::UnknownConnection(connection.to_owned()))?;
        let sa = active_sa(&mut self.sas, connection)?;
        self.touched.insert(sa.our_spi());
        let mut io = Io {
            now,
            rng,
            transmits,
            events,
        };
        sa.request(req, cfg, &mut io);
        Ok(())
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, s)| self.slot_deadline(s).is_some_and(|d| d <= now))
            .map(|(spi, _)| *spi)
            .collect();
        for spi in due {
            let Some(slot) = self.sas.remove(&spi) else {
                continue;
            };
            self.touched.insert(spi);
            if let Some(slot) = self.timeout(now, slot) {
                self.sas.insert(spi, slot);
            }
        }
    }

    fn timeout(&mut self, now: Instant, slot: Slot) -> Option<Slot> {
        match slot {
            Slot::InitSent(mut s) => {
                if s.request.fire(now) {
                    let r = &s.request;
                    self.transmits.push_back(Transmit {
                        local: r.local,
                        remote: r.remote,
                        datagram: r.datagram.clone(),
                    });
                    return Some(Slot::InitSent(s));
                }
                self.closed(s.connection, s.spi_i, 0, CloseReason::RetransmitsExhausted);
                None
            }
            Slot::AuthSent(mut s) => {
                if s.request.fire(now) {
                    let r = &s.request;
                    self.transmits.push_back(Transmit {
                        local: r.local,
                        remote: r.remote,
                        datagram: r.datagram.clone(),
                    });
                    return Some(Slot::AuthSent(s));
                }
                self.closed(
                    s.connection,
                    s.spi_i,
                    s.spi_r,
                    CloseReason::RetransmitsExhausted,
                );
                None
            }
            Slot::InitReplied(s) => {
                tracing::debug!(remote = %s.remote, "half-open IKE SA timed out");
                self.half_open.remove(&(s.remote, s.spi_i));
                None
            }
            Slot::Established(mut sa) => {
                let cfg = self.config(&sa.connection)?.clone();
                let flow = sa.handle_timeout(&cfg, &mut io!(self, now));
                self.apply(sa, flow)
            }
        }
    }

    fn slot_deadline(&self, slot: &Slot) -> Option<Instant> {
        match slot {
            Slot::InitSent(s) => Some(s.request.deadline),
            Slot::AuthSent(s) => Some(s.request.deadline),
            Slot::InitReplied(s) => Some(s.created + HALF_OPEN_TIMEOUT),
            Slot::Established(sa) => sa.deadline(self.config(&sa.connection)?),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.sas
            .values()
            .filter_map(|s| self.slot_deadline(s))
            .min()
    }

    /// What changed in the established IKE SAs since the last call: the state
    /// the cluster must commit before this step's transmits may leave (DESIGN.md
    /// invariant 1). Half-open SAs are not reported: they hold no keys the peer
    /// can use yet, and a failover during setup costs the peer one retry.
    pub fn take_changes(&mut self, now: Instant) -> Vec<IkeSaChange> {
        let mut out = Vec::new();
        for spi in std::mem::take(&mut self.touched) {
            match self.sas.get(&spi) {
                Some(Slot::Established(sa)) => {
                    self.reported.insert(spi);
                    out.push(IkeSaChange::Upsert(Box::new(sa.record(now))));
                }
                _ => {
                    if self.reported.remove(&spi) {
                        out.push(IkeSaChange::Removed(spi));
                    }
                }
            }
        }
        out
    }

    /// Takes over an IKE SA another node established (its replicated record
    /// and its children): this node now answers and sends for it. The SA is
    /// not reported as changed until an exchange changes it.
    pub fn adopt(
        &mut self,
        now: Instant,
        record: &IkeSaRecord,
        children: Vec<ChildSa>,
    ) -> Result<(), IkeError> {
        if self.config(&record.connection).is_none() {
            return Err(IkeError::UnknownConnection(record.connection.clone()));
        }
        let sa = IkeSa::adopt(record, children, now)
            .map_err(|_| IkeError::BadRecord(record.connection.clone()))?;
        let spi = record.our_spi();
        self.reported.insert(spi);
        self.sas.insert(spi, Slot::Established(Box::new(sa)));
        Ok(())
    }

    /// Adds connection `cfg`, or replaces the one of the same name: new
    /// exchanges and rekeys use it; SAs keep what they negotiated until then.
    pub fn configure(&mut self, cfg: ConnectionConfig) {
        match self.connections.iter_mut().find(|c| c.name == cfg.name) {
            Some(c) => *c = cfg,
            None => self.connections.push(cfg),
        }
    }

    /// Removes connection `name` and drops its SAs without a word to the
    /// peer, whose dead peer detection notices.
    pub fn unconfigure(&mut self, name: &str) {
        self.forget(name);
        self.connections.retain(|c| c.name != name);
    }

    /// Drops every SA of `connection` without a word to the peer and without
    /// reporting them removed: another node owns the tunnel now, and the
    /// replicated records are its.
    pub fn forget(&mut self, connection: &str) {
        let gone: Vec<u64> = self
            .sas
            .iter()
            .filter(|(_, slot)| slot_connection(slot) == Some(connection))
            .map(|(spi, _)| *spi)
            .collect();
        for spi in gone {
            self.sas.remove(&spi);
            self.touched.remove(&spi);
            self.reported.remove(&spi);
        }
    }

    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Status of every IKE SA, for operators. Never includes keys.
    pub fn ike_sas(&self) -> impl Iterator<Item = IkeSaInfo> + '_ {
        self.sas.values().map(|slot| match slot {
            Slot::InitSent(s) => IkeSaInfo {
                connection: s.connection.clone(),
                spi_i: s.spi_i,
                spi_r: 0,
                state: "connecting",
                remote: s.request.remote,
                initiator: true,
                established_at: None,
                next_send_id: 1,
                next_expected_id: 0,
                children: Vec::new(),
            },
            Slot::AuthSent(s) => IkeSaInfo {
                connection: s.connection.clone(),
                spi_i: s.spi_i,
                spi_r: s.spi_r,
                state: "authenticating",
                remote: s.request.remote,
                initiator: true,
                established_at: None,
                next_send_id: 2,
                next_expected_id: 0,
                children: Vec::new(),
            },
            Slot::InitReplied(s) => IkeSaInfo {
                connection: String::new(),
                spi_i: s.spi_i,
                spi_r: s.spi_r,
                state: "connecting",
                remote: s.remote,
                initiator: false,
                established_at: None,
                next_send_id: 0,
                next_expected_id: 1,
                children: Vec::new(),
            },
            Slot::Established(sa) => IkeSaInfo {
                connection: sa.connection.clone(),
                spi_i: sa.spi_i,
                spi_r: sa.spi_r,
                state: match sa.phase {
                    Phase::Active => "established",
                    Phase::Rekeyed => "rekeyed",
                },
                remote: sa.remote,
                initiator: sa.initiator,
                established_at: Some(sa.established_at),
                next_send_id: sa.next_send_id,
                next_expected_id: sa.next_expected_id,
                children: sa
                    .children
                    .iter()
                    .map(|c| ChildSaInfo {
                        inbound_spi: c.sa.inbound_spi,
                        outbound_spi: c.sa.outbound_spi,
                        encr: c.sa.encr,
                        integ: c.sa.integ,
                        esn: c.sa.esn,
                        proposal: EspProposal {
                            encr: c.sa.encr,
                            integ: c.sa.integ,
                            dh: None,
                            esn: c.sa.esn,
                        }
                        .to_string(),
                    })
                    .collect(),
            },
        })
    }
}

fn active_sa<'a>(
    sas: &'a mut BTreeMap<u64, Slot>,
    connection: &str,
) -> Result<&'a mut IkeSa, IkeError> {
    sas.values_mut()
        .find_map(|s| match s {
            Slot::Established(sa) if sa.connection == connection && sa.phase == Phase::Active => {
                Some(&mut **sa)
            }
            _ => None,
        })
        .ok_or_else(|| IkeError::NotEstablished(connection.to_owned()))
}
