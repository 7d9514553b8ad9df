//! The simulated machines: gateway nodes and the witness (tandemd's own
//! node code with simulated IO), the customer's device (a standalone
//! tandemd node that initiates every tunnel, with a probe generator), and a
//! host on the cloud-side LAN that echoes every probe back.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use tandem_cluster::{Disk, MemoryDisk, StorageKey, Transport};
use tandem_crypto::SeededRandom;
use tandem_gateway::config::Config;
use tandem_gateway::io::{Input, Io};
use tandem_gateway::lab::{self, PEER_IP, PROBE_EVERY, lan_addr, lan_inner, peer_inner};
use tandem_gateway::{node, replication};
use tokio::sync::mpsc;
use turmoil::net::UdpSocket;

use crate::net::{self, ExchangeType, LAN_PORT, OUTER_PORT, TurmoilLinks};
use crate::record::{EspSent, IkeSent, NodeId, PeerUse, Shared, now};
use crate::run::Sabotage;

/// When the customer's device starts.
const PEER_START: Duration = Duration::from_millis(300);
/// How many of the peer's last ESP datagrams a replay attack resends.
const REPLAY_DEPTH: usize = 64;

pub fn host_name(node: NodeId, witness: bool) -> String {
    if witness {
        format!("w{node}")
    } else {
        format!("gw{node}")
    }
}

/// A datagram with its addresses.
type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

/// What a sabotaging node keeps to misbehave with.
#[derive(Default)]
struct Kept {
    /// Its last ESP datagrams.
    esp: VecDeque<Datagram>,
    /// Its first IKE response.
    first_response: Option<Datagram>,
}

/// What a gateway does to the simulated world.
struct GatewayIo {
    node: NodeId,
    shared: Shared,
    outer: Rc<UdpSocket>,
    lan: Rc<UdpSocket>,
    /// Tunnel name -> index.
    tunnels: BTreeMap<String, u8>,
    sabotage: Option<Sabotage>,
    /// What a sabotaging node keeps to misbehave with: its last ESP
    /// datagrams, its first IKE response.
    kept: std::cell::RefCell<Kept>,
}

impl Io for GatewayIo {
    async fn send_udp(&self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        self.send_recorded(local, remote, datagram).await;
        match self.sabotage {
            Some(Sabotage::AlterRetransmit)
                if net::ike_header(local.port(), datagram)
                    .is_some_and(|h| h.response && h.exchange != ExchangeType::IkeSaInit) =>
            {
                let mut altered = datagram.to_vec();
                if let Some(last) = altered.last_mut() {
                    *last ^= 1;
                }
                self.send_recorded(local, remote, &altered).await;
            }
            Some(Sabotage::StaleResponse) => {
                if let Some(h) = net::ike_header(local.port(), datagram)
                    && h.response
                    && h.exchange != ExchangeType::IkeSaInit
                {
                    let first = self.kept.borrow().first_response.clone();
                    match first {
                        None => {
                            self.kept.borrow_mut().first_response =
                                Some((local, remote, datagram.to_vec()))
                        }
                        Some((l, r, d)) => self.send_recorded(l, r, &d).await,
                    }
                }
            }
            Some(Sabotage::RepeatSequence)
                if net::esp_header(local.port(), datagram).is_some_and(|(_, seq)| seq == 10) =>
            {
                self.send_recorded(local, remote, datagram).await;
            }
            Some(Sabotage::IgnoreLease) if net::esp_header(local.port(), datagram).is_some() => {
                let kept = &mut self.kept.borrow_mut().esp;
                kept.push_back((local, remote, datagram.to_vec()));
                if kept.len() > 16 {
                    kept.pop_front();
                }
            }
            _ => {}
        }
    }

    async fn deliver(&self, packet: &[u8]) {
        let mut msg = vec![self.node as u8];
        msg.extend_from_slice(packet);
        let _ = self.lan.send_to(&msg, ("lan", LAN_PORT)).await;
        if self.sabotage == Some(Sabotage::DeliverTwice) {
            let _ = self.lan.send_to(&msg, ("lan", LAN_PORT)).await;
        }
    }

    async fn address_up(&self, tunnel: &str) {
        self.moved(tunnel, true);
    }

    async fn address_down(&self, tunnel: &str) {
        self.moved(tunnel, false);
        if self.sabotage == Some(Sabotage::IgnoreLease) {
            // Keep sending a while after giving the tunnel up, as a node
            // that ignored its lease would.
            let kept: Vec<_> = self.kept.borrow_mut().esp.drain(..).collect();
            let (node, shared, outer) = (self.node, self.shared.clone(), self.outer.clone());
            tokio::task::spawn_local(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                for (local, remote, d) in kept {
                    record_send(node, &shared, local, &d);
                    let _ = outer
                        .send_to(&net::frame(local, remote, &d), ("peer", OUTER_PORT))
                        .await;
                }
            });
        }
    }
}

/// Records a gateway's datagram in the trace and for the checkers.
fn record_send(node: NodeId, shared: &Shared, local: SocketAddr, datagram: &[u8]) {
    let at = now();
    let mut rec = shared.lock();
    if let Some((spi, seq)) = net::esp_header(local.port(), datagram) {
        rec.note(at, format_args!("gw{node} ESP {spi:08x} {seq}"));
        rec.esp
            .entry(spi)
            .or_default()
            .push(EspSent { at, node, seq });
    } else if let Some(header) = net::ike_header(local.port(), datagram) {
        use sha2::Digest as _;
        rec.note(
            at,
            format_args!(
                "gw{node} IKE {:?} {}{} {:016x}",
                header.exchange,
                if header.response {
                    "response "
                } else {
                    "request "
                },
                header.message_id,
                header.spi_i
            ),
        );
        rec.ike.push(IkeSent {
            at,
            node,
            header,
            digest: sha2::Sha256::digest(datagram).into(),
        });
    }
}

impl GatewayIo {
    async fn send_recorded(&self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        record_send(self.node, &self.shared, local, datagram);
        if remote.ip() == IpAddr::V4(PEER_IP) {
            let _ = self
                .outer
                .send_to(&net::frame(local, remote, datagram), ("peer", OUTER_PORT))
                .await;
        }
    }

    fn moved(&self, tunnel: &str, up: bool) {
        let Some(&i) = self.tunnels.get(tunnel) else {
            return;
        };
        let at = now();
        let mut rec = self.shared.lock();
        rec.segment.moved(self.node, i, up);
        rec.moves.push((at, i, self.node, up));
        rec.note(
            at,
            format_args!(
                "gw{} {} tunnel {i}",
                self.node,
                if up { "up" } else { "down" }
            ),
        );
    }
}

/// Does `node` hold `addr` (as its kernel would, to accept a datagram)?
fn holds(shared: &Shared, node: NodeId, addr: IpAddr) -> bool {
    shared.lock().segment.holds(node, addr)
}

/// Everything a gateway host needs; cloned into each boot.
#[derive(Clone)]
pub struct GatewaySetup {
    pub node: NodeId,
    /// The node's tandemd configuration (parsed at each boot).
    pub toml: String,
    pub disk: MemoryDisk,
    pub key: StorageKey,
    pub shared: Shared,
    pub seed: u64,
    /// Incremented on each boot, so a restarted node draws new randomness.
    pub boots: Rc<std::cell::Cell<u64>>,
    pub sabotage: Option<Sabotage>,
}

impl std::fmt::Debug for GatewaySetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewaySetup")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// One boot of a gateway node (or the witness).
pub async fn gateway(setup: GatewaySetup) -> turmoil::Result {
    let GatewaySetup {
        node,
        toml,
        disk,
        key,
        shared,
        seed,
        boots,
        sabotage,
    } = setup;
    boots.set(boots.get() + 1);
    let config = Config::parse(&toml, std::path::Path::new("/")).map_err(|e| e.to_string())?;
    let settings = config
        .cluster
        .as_ref()
        .ok_or("a gateway host needs [cluster]")?;
    let cluster = replication::join(
        settings,
        Disk::Memory(disk),
        Transport::Plain(std::sync::Arc::new(TurmoilLinks)),
        key,
    )
    .await
    .map_err(|e| e.to_string())?;
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    {
        let mut rec = shared.lock();
        rec.clusters.insert(node, cluster.clone());
        rec.controls.insert(node, ctl_tx);
        // A booting node holds no address (tandemd releases them at start).
        rec.segment.booted(node);
    }
    if settings.witness {
        node::serve_witness(&config, cluster, ctl_rx, std::future::pending()).await;
        return Ok(());
    }
    let outer = Rc::new(UdpSocket::bind(("0.0.0.0", OUTER_PORT)).await?);
    let lan = Rc::new(UdpSocket::bind(("0.0.0.0", LAN_PORT)).await?);
    let (input_tx, input_rx) = mpsc::channel(4096);
    tokio::task::spawn_local(read_outer(
        outer.clone(),
        input_tx.clone(),
        Some((node, shared.clone())),
    ));
    tokio::task::spawn_local(read_lan(lan.clone(), input_tx, node, shared.clone()));
    let tunnels = config
        .connections
        .iter()
        .enumerate()
        .map(|(i, c)| (c.ike.name.clone(), i as u8))
        .collect();
    let io = GatewayIo {
        node,
        shared,
        outer,
        lan,
        tunnels,
        sabotage,
        kept: std::cell::RefCell::default(),
    };
    let rng = Box::new(SeededRandom::new(seed ^ (node << 32) ^ (boots.get() << 48)));
    node::serve(
        &config,
        Some(cluster),
        io,
        rng,
        (input_rx, ctl_rx),
        std::future::pending(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Outer datagrams in; a gateway (`Some`) takes only those for addresses it
/// holds, as its kernel would.
async fn read_outer(
    socket: Rc<UdpSocket>,
    tx: mpsc::Sender<Input>,
    gateway: Option<(NodeId, Shared)>,
) {
    let mut buf = vec![0u8; 9216];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Some((from, to, data)) = net::unframe(&buf[..n]) else {
            continue;
        };
        if let Some((node, shared)) = &gateway
            && !holds(shared, *node, to.ip())
        {
            continue;
        }
        let input = Input::Udp {
            local: to,
            remote: from,
            data: data.to_vec(),
        };
        if tx.send(input).await.is_err() {
            return;
        }
    }
}

/// LAN packets in: echoes the LAN host sent to a tunnel's LAN-side address.
async fn read_lan(socket: Rc<UdpSocket>, tx: mpsc::Sender<Input>, node: NodeId, shared: Shared) {
    let mut buf = vec![0u8; 9216];
    loop {
        let Ok((n, _)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let Some((tunnel, ..)) = lab::read_probe(&buf[1..n]) else {
            continue;
        };
        if !holds(&shared, node, IpAddr::V4(lan_addr(tunnel))) {
            continue;
        }
        if tx.send(Input::Inner(buf[1..n].to_vec())).await.is_err() {
            return;
        }
    }
}

/// The LAN host: records each probe and which node delivered it, and echoes
/// it to whichever node holds the tunnel's LAN-side address.
pub async fn lan(shared: Shared) -> turmoil::Result {
    let socket = UdpSocket::bind(("0.0.0.0", LAN_PORT)).await?;
    let mut buf = vec![0u8; 9216];
    loop {
        let (n, _) = socket.recv_from(&mut buf).await?;
        if n < 2 {
            continue;
        }
        let via = NodeId::from(buf[0]);
        let Some((tunnel, seq, ..)) = lab::read_probe(&buf[1..n]) else {
            continue;
        };
        let at = now();
        let holder = {
            let mut rec = shared.lock();
            let seen = rec
                .probes
                .entry(tunnel)
                .or_default()
                .at_lan
                .entry(seq)
                .or_default();
            seen.push((at, via));
            if seen.len() > 1 {
                rec.lan_repeats.push((tunnel, seq));
                rec.note(
                    at,
                    format_args!("probe {seq} of tunnel {tunnel} accepted again, by gw{via}"),
                );
            }
            rec.segment.route(IpAddr::V4(lan_addr(tunnel)))
        };
        let (Some(holder), Some(echo)) = (holder, lab::echo(&buf[1..n])) else {
            continue;
        };
        let mut msg = vec![0u8];
        msg.extend_from_slice(&echo);
        let _ = socket
            .send_to(&msg, (host_name(holder, false).as_str(), LAN_PORT))
            .await;
    }
}

/// What the customer's device does to the simulated world.
struct PeerIo {
    shared: Shared,
    outer: Rc<UdpSocket>,
}

impl Io for PeerIo {
    async fn send_udp(&self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        let at = now();
        let framed = net::frame(local, remote, datagram);
        let holder = {
            let mut rec = self.shared.lock();
            if let Some((spi, _)) = net::esp_header(local.port(), datagram) {
                if rec.peer_spis.insert(spi) {
                    rec.peer_uses.push((at, PeerUse::Child(spi)));
                }
                rec.peer_esp.push_back(framed.clone());
                if rec.peer_esp.len() > REPLAY_DEPTH {
                    rec.peer_esp.pop_front();
                }
            } else if let Some(h) = net::ike_header(local.port(), datagram)
                && !h.response
            {
                if h.exchange == ExchangeType::IkeSaInit {
                    if rec.peer_inits.insert(h.spi_i, at).is_none() {
                        rec.note(at, format_args!("peer IKE_SA_INIT {:016x}", h.spi_i));
                    }
                } else if matches!(
                    h.exchange,
                    ExchangeType::CreateChildSa | ExchangeType::Informational
                ) && rec.peer_ike.insert((h.spi_i, h.spi_r))
                {
                    rec.peer_uses.push((
                        at,
                        PeerUse::Ike {
                            spi_i: h.spi_i,
                            spi_r: h.spi_r,
                        },
                    ));
                }
            }
            rec.segment.route(remote.ip())
        };
        if let Some(node) = holder {
            let _ = self
                .outer
                .send_to(&framed, (host_name(node, false).as_str(), OUTER_PORT))
                .await;
        }
    }

    async fn deliver(&self, packet: &[u8]) {
        if let Some((tunnel, seq, ..)) = lab::read_probe(packet) {
            let at = now();
            self.shared
                .lock()
                .probes
                .entry(tunnel)
                .or_default()
                .echoed
                .push((at, seq));
        }
    }

    // The peer is standalone: it never moves addresses.
    async fn address_up(&self, _tunnel: &str) {}

    async fn address_down(&self, _tunnel: &str) {}
}

/// The customer's device: initiates every tunnel, sends a probe down each
/// every [`PROBE_EVERY`], and resends old ESP when the driver asks for a
/// replay attack.
pub async fn peer(toml: String, shared: Shared, seed: u64) -> turmoil::Result {
    let config = Config::parse(&toml, std::path::Path::new("/")).map_err(|e| e.to_string())?;
    // The cluster elects and places the tunnels in about 50 ms; an
    // IKE_SA_INIT sent before that would wait for its retransmission.
    tokio::time::sleep(PEER_START).await;
    let outer = Rc::new(UdpSocket::bind(("0.0.0.0", OUTER_PORT)).await?);
    let (input_tx, input_rx) = mpsc::channel(4096);
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    shared.lock().peer_control = Some(ctl_tx);
    tokio::task::spawn_local(read_outer(outer.clone(), input_tx.clone(), None));
    let tunnels = config.connections.len() as u8;
    tokio::task::spawn_local(probes(shared.clone(), input_tx, tunnels));
    tokio::task::spawn_local(replays(shared.clone(), outer.clone()));
    let io = PeerIo { shared, outer };
    node::serve(
        &config,
        None,
        io,
        Box::new(SeededRandom::new(seed ^ 0x7065_6572)),
        (input_rx, ctl_rx),
        std::future::pending(),
    )
    .await
    .map_err(|e| e.to_string())?;
    Ok(())
}

async fn probes(shared: Shared, tx: mpsc::Sender<Input>, tunnels: u8) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    let mut seq = 0u64;
    loop {
        tick.tick().await;
        seq += 1;
        let at = now();
        for t in 0..tunnels {
            shared
                .lock()
                .probes
                .entry(t)
                .or_default()
                .sent
                .insert(seq, at);
            let p = lab::probe(peer_inner(t), lan_inner(t), t, seq);
            if tx.send(Input::Inner(p)).await.is_err() {
                return;
            }
        }
    }
}

async fn replays(shared: Shared, outer: Rc<UdpSocket>) {
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    loop {
        tick.tick().await;
        let sends: Vec<(NodeId, Vec<u8>)> = {
            let mut rec = shared.lock();
            if !std::mem::take(&mut rec.replay_now) {
                continue;
            }
            let frames: Vec<Vec<u8>> = rec.peer_esp.iter().cloned().collect();
            frames
                .into_iter()
                .filter_map(|f| {
                    let (_, to, _) = net::unframe(&f)?;
                    Some((rec.segment.route(to.ip())?, f))
                })
                .collect()
        };
        for (node, f) in sends {
            let _ = outer
                .send_to(&f, (host_name(node, false).as_str(), OUTER_PORT))
                .await;
        }
    }
}
