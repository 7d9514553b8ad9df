//! The IKE endpoint: every IKE SA of this gateway, demultiplexed by SPI, driven
//! by datagrams, timeouts and operator commands, without any IO (STYLE.md 1).

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Instant;

use tandem_crypto::{EncrAlg, IntegAlg, SecureRandom};

pub use crate::child_sa::ChildSa;
use crate::config::{ConnectionConfig, EspProposal, Limits};
use crate::cookie::CookieSecrets;
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

/// Messages the endpoint dropped, or answered without creating state, by
/// reason, since it was created. Anyone can send these at line rate from a
/// spoofed address, so they are counted rather than logged one by one; the
/// gateway reads the counters to log a summary and export metrics (DESIGN.md
/// invariant 9: what is dropped is counted). `Copy`, so a snapshot taken at
/// one report gives the next one its deltas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DropCounters {
    /// Not a well-formed IKEv2 message (header, lengths, payloads), or one
    /// breaking its exchange's rules (an IKE_SA_INIT request with a responder
    /// SPI or without a nonce or SA payload, an invalid KE value).
    pub malformed: u64,
    /// IKEv1, or another major version than 2.
    pub unsupported_version: u64,
    /// For no IKE SA of ours.
    pub unknown_spi: u64,
    /// For one of our IKE SAs but not what it expects: a message ID outside
    /// the window, a response to no request, another exchange than the
    /// handshake's next, our own Initiator flag.
    pub unexpected: u64,
    /// Did not decrypt or failed its integrity check under the IKE SA's keys:
    /// forged, corrupted or truncated.
    pub undecryptable: u64,
    /// IKE_SA_INIT dropped because [`Limits::max_half_open`] SAs are half-open.
    pub half_open_limit: u64,
    /// IKE_SA_INIT dropped because its source holds
    /// [`Limits::max_half_open_per_source`] half-open SAs.
    pub half_open_source_limit: u64,
    /// IKE_SA_INIT without a COOKIE while cookies are demanded: answered with one.
    pub cookie_required: u64,
    /// IKE_SA_INIT whose COOKIE did not verify (forged, for another request,
    /// or older than the previous secret): answered with a fresh one.
    pub bad_cookie: u64,
    /// IKE_SA_INIT matching no configured connection: NO_PROPOSAL_CHOSEN sent.
    pub no_connection: u64,
    /// IKE_SA_INIT offering no proposal we accept: NO_PROPOSAL_CHOSEN sent.
    pub no_proposal: u64,
    /// IKE_AUTH request whose AUTH payload did not verify:
    /// AUTHENTICATION_FAILED sent.
    pub auth_failed: u64,
}

/// What SA handlers write into: the clock, the rng, the output queues and the
/// drop counters.
pub(crate) struct Io<'a> {
    pub now: Instant,
    pub rng: &'a mut dyn SecureRandom,
    pub transmits: &'a mut VecDeque<Transmit>,
    pub events: &'a mut VecDeque<Event>,
    pub drops: &'a mut DropCounters,
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

/// The responder's half-open SAs, with a count per source kept in step on
/// every insert and remove, so both limits of [`Limits`] cost O(log n). The
/// counts have at most as many entries as there are half-open SAs, which
/// `max_half_open` bounds.
#[derive(Debug, Default)]
struct HalfOpen {
    /// Our SPI by (peer, peer's SPI), to spot retransmitted IKE_SA_INIT requests.
    by_peer: BTreeMap<(SocketAddr, u64), u64>,
    per_source: BTreeMap<IpAddr, usize>,
}

impl HalfOpen {
    fn len(&self) -> usize {
        self.by_peer.len()
    }

    fn our_spi(&self, peer: SocketAddr, spi_i: u64) -> Option<u64> {
        self.by_peer.get(&(peer, spi_i)).copied()
    }

    fn held_by(&self, ip: IpAddr) -> usize {
        self.per_source.get(&source(ip)).copied().unwrap_or(0)
    }

    fn insert(&mut self, peer: SocketAddr, spi_i: u64, ours: u64) {
        if self.by_peer.insert((peer, spi_i), ours).is_none() {
            *self.per_source.entry(source(peer.ip())).or_default() += 1;
        }
    }

    fn remove(&mut self, peer: SocketAddr, spi_i: u64) {
        if self.by_peer.remove(&(peer, spi_i)).is_none() {
            return;
        }
        if let Entry::Occupied(mut held) = self.per_source.entry(source(peer.ip())) {
            if *held.get() > 1 {
                *held.get_mut() -= 1;
            } else {
                held.remove();
            }
        }
    }
}

/// What a source of half-open SAs is counted by: its address, or for IPv6
/// its /64, which one host can fill with addresses of its own choosing. An
/// IPv4-mapped IPv6 address (a dual-stack socket) counts as the IPv4 one,
/// not as part of the one /64 every such address shares.
fn source(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() & !u128::from(u64::MAX))),
        v4 => v4,
    }
}

/// The last record `take_changes` reported for an SA and when it computed
/// it: the SA changed since if it now yields another record for that instant.
#[derive(Debug)]
struct Reported {
    at: Instant,
    record: IkeSaRecord,
    /// The caller could not commit it: report the SA again, changed or not.
    uncommitted: bool,
}

/// All IKE SAs of this gateway.
pub struct Endpoint {
    connections: Vec<ConnectionConfig>,
    limits: Limits,
    rng: Box<dyn SecureRandom + Send>,
    /// Keyed by our own SPI; a BTreeMap so iteration (timeouts) is deterministic.
    sas: BTreeMap<u64, Slot>,
    half_open: HalfOpen,
    cookies: CookieSecrets,
    transmits: VecDeque<Transmit>,
    events: VecDeque<Event>,
    drops: DropCounters,
    /// Our SPIs of SAs something happened to since the last `take_changes`:
    /// candidates, reported only if their record changed.
    touched: BTreeSet<u64>,
    /// Established SAs as `take_changes` last reported them, by our SPI: a
    /// removal is reported only for an SA the caller knows, and a datagram
    /// that changed nothing (junk, a retransmission) costs no commit.
    reported: BTreeMap<u64, Reported>,
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
            drops: &mut $self.drops,
        }
    };
}

impl Endpoint {
    pub fn new(
        connections: Vec<ConnectionConfig>,
        limits: Limits,
        mut rng: Box<dyn SecureRandom + Send>,
    ) -> Self {
        let cookies = CookieSecrets::new(limits.cookie_secret_lifetime, &mut *rng);
        Self {
            connections,
            limits,
            rng,
            sas: BTreeMap::new(),
            half_open: HalfOpen::default(),
            cookies,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            drops: DropCounters::default(),
            touched: BTreeSet::new(),
            reported: BTreeMap::new(),
        }
    }

    /// What was dropped or refused so far, by reason.
    pub fn drops(&self) -> &DropCounters {
        &self.drops
    }

    fn config(&self, name: &str) -> Option<&ConnectionConfig> {
        self.connections.iter().find(|c| c.name == name)
    }

    /// One received IKE message (no non-ESP marker).
    pub fn handle(&mut self, now: Instant, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        let header = match Header::parse(datagram) {
            Ok(h) => h,
            Err(DecodeError::UnsupportedVersion(v)) => {
                tracing::debug!(%remote, version = v, "IKE datagram of another version dropped");
                self.drops.unsupported_version += 1;
                return;
            }
            Err(e) => {
                tracing::debug!(%remote, error = %e, "malformed IKE datagram dropped");
                self.drops.malformed += 1;
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
            self.drops.unknown_spi += 1;
            return;
        };
        // Only a candidate: take_changes reports the SA if its record moved.
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
                    self.drops.unexpected += 1;
                    return Some(Slot::InitSent(s));
                }
                let msg = match Message::parse(datagram) {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::debug!(error = %e, "malformed IKE_SA_INIT response dropped");
                        self.drops.malformed += 1;
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
                let (peer, spi_i) = (s.remote, s.spi_i);
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
                        self.half_open.remove(peer, spi_i);
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
            self.drops.malformed += 1;
            return;
        }
        if let Some(Slot::InitReplied(s)) = self
            .half_open
            .our_spi(remote, header.spi_i)
            .and_then(|spi| self.sas.get(&spi))
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
                self.drops.malformed += 1;
                return;
            }
        };
        // The limits come before the cookie: a request that could not be
        // admitted anyway earns no reply at all.
        let half_open = self.half_open.len();
        if half_open >= self.limits.max_half_open {
            tracing::debug!(%remote, "too many half-open IKE SAs; IKE_SA_INIT dropped");
            self.drops.half_open_limit += 1;
            return;
        }
        if self.half_open.held_by(remote.ip()) >= self.limits.max_half_open_per_source {
            tracing::debug!(%remote, "source holds too many half-open IKE SAs; IKE_SA_INIT dropped");
            self.drops.half_open_source_limit += 1;
            return;
        }
        if half_open >= self.limits.cookie_threshold {
            let Some(ni) = crate::payloads::nonce_of(&msg) else {
                self.drops.malformed += 1;
                return;
            };
            self.cookies.rotate(now, &mut *self.rng);
            let (spi_i, ip) = (header.spi_i, remote.ip());
            match find_notify(&msg, notify::COOKIE) {
                Some(c) if self.cookies.verifies(&c.data, spi_i, ni, ip) => {}
                returned => {
                    if returned.is_some() {
                        self.drops.bad_cookie += 1;
                    } else {
                        self.drops.cookie_required += 1;
                    }
                    let cookie = self.cookies.issue(spi_i, ni, ip);
                    self.transmits.push_back(Transmit {
                        local,
                        remote,
                        datagram: init_notify_reply(header, notify::COOKIE, cookie),
                    });
                    return;
                }
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
                self.half_open.insert(remote, s.spi_i, s.spi_r);
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
        let (transmits, events, drops) = (&mut self.transmits, &mut self.events, &mut self.drops);
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
            drops,
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
        let (transmits, events, drops) = (&mut self.transmits, &mut self.events, &mut self.drops);
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
            drops,
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
                self.half_open.remove(s.remote, s.spi_i);
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
    ///
    /// An SA is reported only when its record differs from the last one
    /// reported: a datagram that was junk, failed its integrity check or
    /// repeated a request already answered, or a retransmission of our own
    /// request, changes nothing the cluster holds and so costs no commit.
    pub fn take_changes(&mut self, now: Instant) -> Vec<IkeSaChange> {
        let mut out = Vec::new();
        for spi in std::mem::take(&mut self.touched) {
            match self.sas.get(&spi) {
                Some(Slot::Established(sa)) => {
                    // Comparing at the instant of the last report, the
                    // deadlines (exported as time left) compare equal unless
                    // they moved.
                    let changed = self
                        .reported
                        .get(&spi)
                        .is_none_or(|last| last.uncommitted || sa.record(last.at) != last.record);
                    if changed {
                        let record = sa.record(now);
                        out.push(IkeSaChange::Upsert(Box::new(record.clone())));
                        self.reported.insert(
                            spi,
                            Reported {
                                at: now,
                                record,
                                uncommitted: false,
                            },
                        );
                    }
                }
                _ => {
                    if self.reported.remove(&spi).is_some() {
                        out.push(IkeSaChange::Removed(spi));
                    }
                }
            }
        }
        out
    }

    /// The change last reported for our SA `spi` was not committed (the
    /// commit failed, or was never tried): the next [`take_changes`]
    /// reports the SA again even if nothing else changed, so the cluster
    /// does not keep an older record than the one the peer has seen answers
    /// from (DESIGN.md invariant 5).
    ///
    /// [`take_changes`]: Endpoint::take_changes
    pub fn recommit(&mut self, spi: u64) {
        if let Some(last) = self.reported.get_mut(&spi) {
            last.uncommitted = true;
            self.touched.insert(spi);
        }
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
        // What the SA yields, not the record given: a child whose keys did
        // not come along is left out, and reported gone with the next change.
        let reported = Reported {
            at: now,
            record: sa.record(now),
            uncommitted: false,
        };
        self.reported.insert(spi, reported);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_open_counts_per_source_follow_inserts_and_removes() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        let (v4, v4_natt) = (addr("192.0.2.7:500"), addr("192.0.2.7:4500"));
        let (v6, v6_same_64) = (
            addr("[2001:db8:1:2::1]:500"),
            addr("[2001:db8:1:2:f::9]:500"),
        );
        let v6_next_64 = addr("[2001:db8:1:3::1]:500");
        let mut h = HalfOpen::default();
        h.insert(v4, 1, 10);
        h.insert(v4_natt, 2, 11);
        h.insert(v4, 1, 10);
        assert_eq!(
            (h.len(), h.held_by(v4.ip())),
            (2, 2),
            "same SA counted once"
        );
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            h.held_by(mapped),
            2,
            "an IPv4-mapped address is the IPv4 one"
        );
        h.insert(v6, 3, 12);
        h.insert(v6_same_64, 4, 13);
        assert_eq!(h.held_by(v6.ip()), 2, "one /64, one source");
        assert_eq!(h.held_by(v6_next_64.ip()), 0);
        assert_eq!(h.our_spi(v6_same_64, 4), Some(13));
        h.remove(v4, 1);
        h.remove(v4, 1);
        assert_eq!(h.held_by(v4.ip()), 1, "removed once");
        for (peer, spi) in [(v4_natt, 2), (v6, 3), (v6_same_64, 4)] {
            h.remove(peer, spi);
        }
        assert_eq!(h.len(), 0);
        assert!(h.per_source.is_empty(), "no count left behind");
    }
}
