//! `tandemd demo`: a whole Tandem site in one process, with no root and no
//! set-up. Three gateway nodes (each on its own runtime, as separate as
//! processes: real Raft over gRPC with mutual TLS on loopback, real ESP
//! crypto, state on disk in a temporary directory) carry two tunnels
//! active-active for a built-in customer device (a standalone node that
//! initiates both tunnels and sends probes down each, 100 a second) to a
//! host on the cloud-side LAN that echoes them. An in-process forwarder
//! stands in for the outer segment and the LAN, moving each tunnel's
//! addresses to whichever node announces them, as a VIP moves.
//!
//! The demo hands one tunnel over on purpose, then kills the node that owns
//! it, and prints what the customer's device saw: the longest silence and
//! the probes lost at each event. It succeeds only if both tunnels survived
//! both events without renegotiating.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tandem_crypto::OsRandom;
use tandem_ike::message::{ExchangeType, Header};
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::control::{Command, Request};
use crate::io::{Input, Io};
use crate::lab::{self, NodeId, PEER_IP, PROBE_EVERY, Segment};
use crate::{node, replication};

const GATEWAYS: NodeId = 3;
const TUNNELS: u8 = 2;
/// How long the tunnels may take to come up.
const SETUP_LIMIT: Duration = Duration::from_secs(30);
/// How long each event is watched.
const WATCH: Duration = Duration::from_secs(4);
/// Probes younger than this at the end of a watch are not counted lost yet.
const IN_FLIGHT: Duration = Duration::from_millis(500);
/// A tunnel is flowing when its last echo is this recent.
const FLOWING: Duration = Duration::from_millis(100);

/// One tunnel's probes, as the customer's device saw them.
#[derive(Debug, Default)]
struct Probes {
    sent: BTreeMap<u64, Instant>,
    echoed: Vec<(Instant, u64)>,
}

/// The forwarder and everything the demo measures.
#[derive(Default)]
struct World {
    segment: Segment,
    /// Each running gateway's input.
    gateways: BTreeMap<NodeId, mpsc::Sender<Input>>,
    peer: Option<mpsc::Sender<Input>>,
    probes: BTreeMap<u8, Probes>,
    /// IKE_SA_INIT requests from the customer's device, by initiator SPI.
    inits: std::collections::BTreeSet<u64>,
    /// Address moves: (when, node, tunnel, up).
    moves: Vec<(Instant, NodeId, u8, bool)>,
}

#[derive(Clone, Default)]
struct Shared(Arc<Mutex<World>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, World> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A gateway's view of the forwarder.
struct GatewayIo {
    node: NodeId,
    world: Shared,
}

impl Io for GatewayIo {
    async fn send_udp(&self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        if remote.ip() != IpAddr::V4(PEER_IP) {
            return;
        }
        let peer = self.world.lock().peer.clone();
        if let Some(peer) = peer {
            // The customer's device sees the datagram arrive from the VIP.
            let _ = peer.try_send(Input::Udp {
                local: remote,
                remote: local,
                data: datagram.to_vec(),
            });
        }
    }

    /// The LAN host echoes each probe to whichever node holds the tunnel's
    /// LAN-side address.
    async fn deliver(&self, packet: &[u8]) {
        let (Some((tunnel, ..)), Some(echo)) = (lab::read_probe(packet), lab::echo(packet)) else {
            return;
        };
        let w = self.world.lock();
        let addr = IpAddr::V4(lab::lan_addr(tunnel));
        if let Some(node) = w.segment.route(addr)
            && w.segment.holds(node, addr)
            && let Some(tx) = w.gateways.get(&node)
        {
            let _ = tx.try_send(Input::Inner(echo));
        }
    }

    async fn address_up(&self, tunnel: &str) {
        self.moved(tunnel, true);
    }

    async fn address_down(&self, tunnel: &str) {
        self.moved(tunnel, false);
    }
}

impl GatewayIo {
    fn moved(&self, tunnel: &str, up: bool) {
        let Some(i) = tunnel.strip_prefix('t').and_then(|i| i.parse().ok()) else {
            return;
        };
        let mut w = self.world.lock();
        w.segment.moved(self.node, i, up);
        w.moves.push((Instant::now(), self.node, i, up));
    }
}

/// The customer's device's view of the forwarder.
struct PeerIo {
    world: Shared,
}

impl Io for PeerIo {
    async fn send_udp(&self, local: SocketAddr, remote: SocketAddr, datagram: &[u8]) {
        let mut w = self.world.lock();
        // IKE_SA_INIT requests (on port 500, before NAT-T floats to 4500):
        // a surviving tunnel never needs another one.
        if local.port() == 500
            && let Ok(h) = Header::parse(datagram)
            && h.exchange == ExchangeType::IkeSaInit
            && !h.response
        {
            w.inits.insert(h.spi_i);
        }
        if let Some(node) = w.segment.route(remote.ip())
            && w.segment.holds(node, remote.ip())
            && let Some(tx) = w.gateways.get(&node)
        {
            let _ = tx.try_send(Input::Udp {
                local: remote,
                remote: local,
                data: datagram.to_vec(),
            });
        }
    }

    async fn deliver(&self, packet: &[u8]) {
        if let Some((tunnel, seq, ..)) = lab::read_probe(packet) {
            self.world
                .lock()
                .probes
                .entry(tunnel)
                .or_default()
                .echoed
                .push((Instant::now(), seq));
        }
    }

    // Standalone: it never moves addresses.
    async fn address_up(&self, _tunnel: &str) {}

    async fn address_down(&self, _tunnel: &str) {}
}

/// A running gateway: its thread, its control channel, its kill switch.
struct Gateway {
    control: mpsc::Sender<Request>,
    kill: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Gateway {
    /// Stops the node at once, as kill -9 would: its runtime is dropped
    /// with every task in it, mid-whatever.
    fn kill(&mut self) {
        if let Some(kill) = self.kill.take() {
            let _ = kill.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn gateway_config(dir: &Path, node: NodeId, ports: &BTreeMap<NodeId, u16>) -> String {
    let vips: Vec<String> = (0..TUNNELS)
        .map(|i| format!("\"{}\"", lab::vip(i)))
        .collect();
    let mut t = format!(
        "[node]\nname = \"gw{node}\"\ncontrol_socket = \"{}\"\n[ike]\nlisten = [{}]\n",
        dir.join(format!("gw{node}.sock")).display(),
        vips.join(", ")
    );
    for i in 0..TUNNELS {
        t += &lab::gateway_connection(i);
    }
    t += &format!(
        "[cluster]\nid = {node}\nlisten = \"127.0.0.1:{}\"\ndata_dir = \"{}\"\npki_dir = \"{}\"\n\
         role = \"gateway\"\nmode = \"active-active\"\n",
        ports[&node],
        dir.join(format!("gw{node}")).display(),
        dir.join("pki").display()
    );
    for (id, port) in ports {
        t += &format!(
            "[[cluster.member]]\nid = {id}\nname = \"gw{id}\"\naddr = \"127.0.0.1:{port}\"\n"
        );
    }
    t
}

fn start_gateway(config: Config, node: NodeId, world: &Shared) -> anyhow::Result<Gateway> {
    let (input_tx, input_rx) = mpsc::channel(4096);
    let (ctl_tx, ctl_rx) = mpsc::channel(16);
    let (kill_tx, kill_rx) = oneshot::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let world = world.clone();
    let thread = std::thread::Builder::new()
        .name(format!("gw{node}"))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!("gw{node}: runtime: {e}")));
                    return;
                }
            };
            runtime.block_on(async move {
                let Some(settings) = config.cluster.as_ref() else {
                    return;
                };
                let cluster = match replication::start(&config.node_name, settings).await {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.context(format!("gw{node}"))));
                        return;
                    }
                };
                {
                    let mut w = world.lock();
                    w.segment.booted(node);
                    w.gateways.insert(node, input_tx);
                }
                let _ = ready_tx.send(Ok(()));
                let io = GatewayIo { node, world };
                let serving = node::serve(
                    &config,
                    Some(cluster),
                    io,
                    Box::new(OsRandom),
                    (input_rx, ctl_rx),
                    std::future::pending(),
                );
                // A kill is a crash, not a graceful stop (which would hand
                // the tunnels over first): the node's future is dropped.
                tokio::select! {
                    result = serving => {
                        if let Err(e) = result {
                            eprintln!("gw{node} stopped: {e:#}");
                        }
                    }
                    _ = kill_rx => {}
                }
            });
            // Dropping the runtime here drops every task of the node.
        })?;
    ready_rx
        .recv()
        .context("a gateway thread died while starting")??;
    Ok(Gateway {
        control: ctl_tx,
        kill: Some(kill_tx),
        thread: Some(thread),
    })
}

/// What one event did to one tunnel.
struct Seen {
    gap: Duration,
    lost: usize,
    flowing: bool,
}

fn seen(world: &Shared, tunnel: u8, from: Instant, to: Instant) -> Seen {
    let w = world.lock();
    let Some(p) = w.probes.get(&tunnel) else {
        return Seen {
            gap: to - from,
            lost: 0,
            flowing: false,
        };
    };
    let mut last = from;
    let mut gap = Duration::ZERO;
    for (at, _) in p.echoed.iter().filter(|(at, _)| *at >= from && *at <= to) {
        gap = gap.max(*at - last);
        last = *at;
    }
    gap = gap.max(to - last);
    let echoed: std::collections::BTreeSet<u64> = p.echoed.iter().map(|(_, s)| *s).collect();
    let lost = p
        .sent
        .values()
        .zip(p.sent.keys())
        .filter(|(at, seq)| **at >= from && **at + IN_FLIGHT <= to && !echoed.contains(seq))
        .count();
    let flowing = p
        .echoed
        .last()
        .is_some_and(|(at, _)| to.duration_since(*at) < FLOWING);
    Seen { gap, lost, flowing }
}

fn flowing(world: &Shared) -> bool {
    let now = Instant::now();
    (0..TUNNELS).all(|t| seen(world, t, now - FLOWING, now).flowing)
}

fn owner(world: &Shared, tunnel: u8) -> Option<NodeId> {
    world.lock().segment.route(IpAddr::V4(lab::vip(tunnel)))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Runs the demo with its state in `dir`. Returns whether both tunnels survived both events.
pub fn run(dir: &Path) -> anyhow::Result<bool> {
    let started = Instant::now();
    let t = |at: Instant| at.duration_since(started).as_secs_f64();
    let pki = dir.join("pki");
    tandem_cluster::tls::init(&pki)?;
    for n in 1..=GATEWAYS {
        tandem_cluster::tls::issue(&pki, &format!("gw{n}"), tandem_cluster::tls::Role::Member)?;
    }
    let ports: BTreeMap<NodeId, u16> = (1..=GATEWAYS)
        .map(|n| free_port().map(|p| (n, p)))
        .collect::<anyhow::Result<_>>()?;
    let world = Shared::default();
    let mut gateways = BTreeMap::new();
    for n in 1..=GATEWAYS {
        let config = Config::parse(&gateway_config(dir, n, &ports), dir)?;
        gateways.insert(n, start_gateway(config, n, &world)?);
    }
    println!(
        "{:6.2} s  3 gateways up (Raft over gRPC+mTLS on 127.0.0.1:{:?}, state in {})",
        t(Instant::now()),
        ports.values().collect::<Vec<_>>(),
        dir.display()
    );

    // The customer's device starts once the cluster has placed both
    // tunnels; an IKE_SA_INIT sent earlier would wait for its retransmission.
    let setup_until = Instant::now() + SETUP_LIMIT;
    while (0..TUNNELS).any(|i| owner(&world, i).is_none()) {
        anyhow::ensure!(
            Instant::now() < setup_until,
            "the cluster placed no tunnels within {SETUP_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let peer_config = Config::parse(
        &lab::peer_config(TUNNELS, &dir.join("peer.sock").display().to_string()),
        dir,
    )?;
    let (peer_tx, peer_rx) = mpsc::channel(4096);
    let (_peer_ctl, peer_ctl_rx) = mpsc::channel(16);
    world.lock().peer = Some(peer_tx.clone());
    let peer_world = world.clone();
    runtime.spawn(async move {
        let io = PeerIo { world: peer_world };
        if let Err(e) = node::serve(
            &peer_config,
            None,
            io,
            Box::new(OsRandom),
            (peer_rx, peer_ctl_rx),
            std::future::pending(),
        )
        .await
        {
            eprintln!("the customer's device stopped: {e:#}");
        }
    });
    let probe_world = world.clone();
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(PROBE_EVERY);
        for seq in 1.. {
            tick.tick().await;
            for tunnel in 0..TUNNELS {
                probe_world
                    .lock()
                    .probes
                    .entry(tunnel)
                    .or_default()
                    .sent
                    .insert(seq, Instant::now());
                let p = lab::probe(lab::peer_inner(tunnel), lab::lan_inner(tunnel), tunnel, seq);
                if peer_tx.send(Input::Inner(p)).await.is_err() {
                    return;
                }
            }
        }
    });

    while !flowing(&world) {
        anyhow::ensure!(
            Instant::now() < setup_until,
            "the tunnels did not come up within {SETUP_LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let owners: Vec<String> = (0..TUNNELS)
        .map(|i| format!("t{i} on gw{}", owner(&world, i).unwrap_or(0)))
        .collect();
    println!(
        "{:6.2} s  the customer's device has both tunnels up ({}), probes flowing both ways",
        t(Instant::now()),
        owners.join(", ")
    );
    std::thread::sleep(Duration::from_secs(2));

    let mut results = Vec::new();
    // Event 1: a planned handover of t0 to the other gateway that does not own it.
    let from = owner(&world, 0).context("t0 has no owner")?;
    let to = (1..=GATEWAYS)
        .find(|n| *n != from && Some(*n) != owner(&world, 1))
        .unwrap_or(if from == 1 { 2 } else { 1 });
    let at = Instant::now();
    println!(
        "{:6.2} s  planned handover: tandemctl handover --tunnel t0 --to {to} (from gw{from})",
        t(at)
    );
    let (reply_tx, reply_rx) = oneshot::channel();
    gateways[&from]
        .control
        .blocking_send((
            Command::Handover {
                tunnel: "t0".into(),
                to,
            },
            reply_tx,
        ))
        .map_err(|_| anyhow::anyhow!("gw{from} is not listening"))?;
    match reply_rx.blocking_recv() {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => anyhow::bail!("the handover was refused: {e}"),
        Err(_) => anyhow::bail!("gw{from} dropped the handover"),
    }
    std::thread::sleep(WATCH);
    results.push(("planned handover", at, Instant::now()));

    // Event 2: the node that now owns t0 dies.
    let victim = owner(&world, 0).context("t0 has no owner")?;
    let at = Instant::now();
    println!(
        "{:6.2} s  kill: gw{victim} stops dead (its runtime dropped, no goodbye)",
        t(at)
    );
    if let Some(g) = gateways.get_mut(&victim) {
        g.kill();
    }
    world.lock().gateways.remove(&victim);
    std::thread::sleep(WATCH);
    results.push(("owner killed", at, Instant::now()));

    println!();
    println!("timeline of address moves (what a gratuitous ARP would announce):");
    for (at, node, tunnel, up) in world.lock().moves.iter() {
        println!(
            "{:6.2} s  gw{node} {} t{tunnel}",
            t(*at),
            if *up { "takes" } else { "gives up" }
        );
    }
    println!();
    println!(
        "{:<18} {:<7} {:>14} {:>12}  survived",
        "event", "tunnel", "longest gap", "probes lost"
    );
    let mut survived = true;
    for (name, from, to) in &results {
        for tunnel in 0..TUNNELS {
            let s = seen(&world, tunnel, *from, *to);
            survived &= s.flowing;
            println!(
                "{:<18} {:<7} {:>11.0} ms {:>12}  {}",
                name,
                format!("t{tunnel}"),
                s.gap.as_secs_f64() * 1000.0,
                s.lost,
                if s.flowing { "yes" } else { "NO" }
            );
        }
    }
    let inits = world.lock().inits.len();
    let renegotiated = inits != usize::from(TUNNELS);
    println!();
    println!(
        "the customer's device negotiated {inits} IKE SAs from scratch for {TUNNELS} tunnels: {}",
        if renegotiated {
            "it renegotiated"
        } else {
            "no renegotiation"
        }
    );
    for g in gateways.values_mut() {
        g.kill();
    }
    runtime.shutdown_background();
    Ok(survived && !renegotiated)
}

/// A directory for the demo's state under the system's temporary directory.
pub fn temp_dir() -> PathBuf {
    std::env::temp_dir().join(format!("tandem-demo-{}", std::process::id()))
}
