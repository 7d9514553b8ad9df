//! One gateway node: binds UDP 500/4500 on the listen addresses, opens the TUN
//! device, and runs the main loop that feeds the sans-IO IKE endpoint and ESP
//! dataplane and carries out what they return.
//!
//! Socket and TUN reads happen in small reader tasks that only move bytes; all
//! protocol state lives in the one main loop, so nothing is shared or locked.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tandem_cluster::lease::{LeaseTiming, OwnLease};
use tandem_cluster::ownership::Mode;
use tandem_cluster::{Change, Cluster, NodeId, StateEvent};
use tandem_crypto::{OsRandom, SecureRandom};
use tandem_ike::endpoint::{ChildSa, Endpoint, Event, Transmit};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tun_rs::AsyncDevice;

use crate::config::{Config, Connection};
use crate::control::{self, Command, Request};
use crate::dataplane::{Dataplane, Decapsulated};
use crate::io::{Input, Io, SystemIo};
use crate::replication::{self, Background, Step};
use crate::tun;
use crate::vip::TunnelAddresses;

/// Largest datagram we read: IKE messages and ESP packets both fit (jumbo frames
/// included); anything longer is truncated by the kernel and then fails to parse.
const MAX_DATAGRAM: usize = 9216;
/// How many queued inputs one main-loop turn takes before it looks at timers
/// again: big enough to batch ESP work, small enough to keep IKE timely.
const BATCH: usize = 64;

/// RFC 3948 section 2.2: IKE on port 4500 is preceded by four zero bytes.
const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// How often a cluster node checks its lease, its sequence reservations and
/// its replay marks.
const TICK: std::time::Duration = std::time::Duration::from_millis(20);
/// How often the node's counters go to the metrics exporter.
const METRICS_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Replay marks are synced every this many ticks (100 ms).
const MARK_SYNC_TICKS: u64 = 5;

/// At most this many LAN packets are held for a planned handover (about
/// 2 s at 1,000 a second, 6 MB of full-size packets).
const HELD_MAX: usize = 4096;
/// The old owner of a planned handover that did not complete announces its
/// addresses again this long after the new owner released them.
const REANNOUNCE_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a stopping gateway waits for its tunnels to be handed over
/// (one takes tens of milliseconds; a cluster without a quorum never does
/// it, and the service manager waits for the stop).
const STOP_HANDOVER_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Each UDP socket's receive and send buffer (bytes).
const SOCKET_BUFFER: usize = 4 << 20;

/// Binds a UDP socket; in a cluster with IP_FREEBIND, so that every node
/// listens on the tunnels' addresses before the address (the VIP) is moved
/// to it.
fn bind_udp(addr: SocketAddr, freebind: bool) -> anyhow::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if freebind {
        match addr {
            SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
            SocketAddr::V6(_) => socket.set_freebind_v6(true)?,
        }
    }
    // Traffic arrives in bursts (a TCP window's worth at once) while the
    // node may be busy with a commit or a takeover: Linux's default 208 KiB
    // holds about 90 full-size ESP packets, and an overflow drops them.
    socket.set_recv_buffer_size(SOCKET_BUFFER)?;
    socket.set_send_buffer_size(SOCKET_BUFFER)?;
    let got = socket.recv_buffer_size()?;
    // Linux reports double what it grants; it grants at most rmem_max.
    if got < SOCKET_BUFFER {
        tracing::warn!(%addr, bytes = got / 2, wanted = SOCKET_BUFFER, "small UDP receive buffer: raise net.core.rmem_max (deploy/OPERATIONS.md)");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(UdpSocket::from_std(socket.into())?)
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    if let Some(addr) = config.metrics_listen {
        crate::telemetry::serve(addr)?;
    }
    let cluster = match &config.cluster {
        Some(settings) => Some(replication::start(&config.node_name, settings).await?),
        None => None,
    };
    if let Some(cluster) = &cluster
        && config.cluster.as_ref().is_some_and(|c| c.witness)
    {
        return run_witness(&config, cluster.clone()).await;
    }
    let tun_dev = Arc::new(tun::open(&config.tun_name, config.tun_mtu)?);
    let routes = tun::Routes::new(&config.tun_name).await?;
    for conn in &config.connections {
        for &(addr, len) in &conn.remote_prefixes {
            routes.add(addr, len).await?;
        }
    }

    let (input_tx, input_rx) = mpsc::channel::<Input>(4096);
    let mut sockets = BTreeMap::new();
    for (ike, natt) in config.ike_addrs() {
        for addr in [ike, natt] {
            let socket = Arc::new(
                bind_udp(addr, config.cluster.is_some())
                    .with_context(|| format!("cannot bind UDP {addr}"))?,
            );
            tokio::spawn(read_udp(socket.clone(), addr, input_tx.clone()));
            sockets.insert(addr, socket);
        }
    }
    tokio::spawn(read_tun(tun_dev.clone(), input_tx.clone()));

    let (ctl_tx, ctl_rx) = mpsc::channel::<Request>(16);
    serve_admin(&config, cluster.as_ref(), &ctl_tx).await?;
    control::serve(&config.control_socket, ctl_tx)?;
    let addresses = TunnelAddresses::new(&config).await?;
    // A node starts owning nothing: addresses left behind by a crash of this
    // process would contest the real owner's.
    addresses.release_all().await;
    let io = SystemIo {
        sockets,
        tun: tun_dev,
        routes,
        addresses,
    };
    serve(
        &config,
        cluster,
        io,
        Box::new(OsRandom),
        (input_rx, ctl_rx),
        shutdown(),
    )
    .await
}

/// SIGINT or SIGTERM.
async fn shutdown() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot install a SIGTERM handler; stopping on SIGINT only");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// A gateway's main loop, over any IO: the packets and datagrams that come
/// in on the first channel, the control commands on the second,
/// replication with `cluster` (none standalone), until `stop` completes.
pub async fn serve<I: Io>(
    config: &Config,
    cluster: Option<Arc<Cluster>>,
    io: I,
    rng: Box<dyn SecureRandom + Send>,
    (mut input_rx, mut ctl_rx): (mpsc::Receiver<Input>, mpsc::Receiver<Request>),
    stop: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    // Steps go through the commit worker in cluster mode, in order; standalone
    // they are released at once.
    let (step_tx, step_rx) = mpsc::channel(replication::COMMIT_QUEUE);
    // Unbounded but fed only by the commit worker, one step per step taken
    // from the bounded queue above.
    let (committed_tx, mut committed_rx) = mpsc::unbounded_channel();
    let (background_tx, mut background_rx) = mpsc::unbounded_channel();
    let mut state_rx = None;
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let lease_timing = config.cluster.as_ref().map(|c| c.lease).unwrap_or_default();
    if let (Some(cluster), Some(settings)) = (&cluster, &config.cluster) {
        tokio::spawn(replication::commit_steps(
            cluster.clone(),
            step_rx,
            committed_tx,
        ));
        tokio::spawn(replication::manage_owners(
            cluster.clone(),
            config
                .connections
                .iter()
                .map(|c| c.ike.name.clone())
                .collect(),
            settings.mode,
            settings.lease,
        ));
        tokio::spawn(replication::renew_leases(
            cluster.clone(),
            settings.lease,
            healthy.clone(),
            background_tx.clone(),
        ));
        state_rx = cluster.take_events();
    }
    let cluster_mode = cluster.is_some();
    let mut node = Node {
        id: config.cluster.as_ref().map_or(0, |c| c.id),
        commit: cluster.as_ref().map(|_| step_tx),
        owned: if cluster.is_some() {
            BTreeSet::new()
        } else {
            config
                .connections
                .iter()
                .map(|c| c.ike.name.clone())
                .collect()
        },
        to_initiate: config
            .connections
            .iter()
            .filter(|c| c.initiate)
            .map(|c| c.ike.name.clone())
            .collect(),
        standby: BTreeMap::new(),
        cluster,
        endpoint: Endpoint::new(
            config.connections.iter().map(|c| c.ike.clone()).collect(),
            config.limits,
            rng,
        ),
        dataplane: Dataplane::new(
            config
                .connections
                .iter()
                .map(|c| (c.ike.name.clone(), c.replay_window))
                .collect(),
            cluster_mode,
            config.aead_backend,
        ),
        io,
        natt_port: config.natt_port,
        lease: OwnLease::default(),
        lease_timing,
        replayed_to: u64::MAX,
        mode: config.cluster.as_ref().map(|c| c.mode).unwrap_or_default(),
        fenced: true,
        reserving: BTreeSet::new(),
        incoming: BTreeMap::new(),
        held: Vec::new(),
        reannounce: BTreeMap::new(),
        addresses_renewed: tandem_cluster::now(),
        healthy,
        stopping: false,
        marks_synced: BTreeMap::new(),
        background: background_tx,
        sa_counters: crate::telemetry::SaCounters::default(),
        drop_summary: crate::telemetry::DropSummary::default(),
        draining: BTreeMap::new(),
        ike_backlog_drops: 0,
        tunnels: config
            .connections
            .iter()
            .map(|c| (c.ike.name.clone(), c.clone()))
            .collect(),
        listen: config.listen.clone(),
    };

    node.initiate_owned(tandem_cluster::now());
    node.flush().await;

    tracing::info!(node = %config.node_name, connections = config.connections.len(), "tandemd ready");
    if node.cluster.is_some() {
        crate::notify::notify("STATUS=catching up with the cluster");
    } else {
        crate::notify::notify("READY=1\nSTATUS=serving");
    }
    let mut batch = Vec::with_capacity(BATCH);
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks: u64 = 0;
    let mut metrics_tick = tokio::time::interval(METRICS_EVERY);
    metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut handing_over = None;
    loop {
        let deadline = node.endpoint.poll_timeout();
        tokio::select! {
            n = input_rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    anyhow::bail!("all packet readers stopped");
                }
                node.handle_inputs(&mut batch).await;
            }
            () = sleep_until(deadline) => {
                node.endpoint.handle_timeout(tandem_cluster::now());
            }
            Some((cmd, reply)) = ctl_rx.recv() => {
                match (&node.cluster, &cmd) {
                    (Some(c), Command::MemberAdd(..) | Command::MemberRemove(_)) => {
                        replication::change_members(c.clone(), cmd, reply);
                    }
                    (Some(c), Command::Probe { count, writers, bytes }) => {
                        replication::probe(c.clone(), *count, *writers, *bytes, reply);
                    }
                    (Some(c), Command::TunnelApply { .. } | Command::TunnelRemove(_)) => {
                        let c = c.clone();
                        node.change_tunnels(c, cmd, reply);
                    }
                    (Some(c), Command::Handover { .. } | Command::Drain(_)) => {
                        let c = c.clone();
                        node.handover(c, cmd, reply);
                    }
                    _ => {
                        let _ = reply.send(node.command(cmd));
                    }
                }
            }
            Some(step) = committed_rx.recv() => {
                catch_up(&mut node, &mut state_rx).await;
                node.release(step).await;
            }
            Some(report) = background_rx.recv() => {
                // A lease renewal reports only once it is applied here: the
                // ownership it lets this node act on must be as new as it is.
                catch_up(&mut node, &mut state_rx).await;
                node.background(report, tandem_cluster::now()).await;
            }
            _ = tick.tick(), if node.cluster.is_some() => {
                ticks += 1;
                node.tick(tandem_cluster::now(), ticks.is_multiple_of(MARK_SYNC_TICKS)).await;
            }
            Some(event) = recv(&mut state_rx) => node.follow(event, tandem_cluster::now()).await,
            _ = metrics_tick.tick() => node.export_metrics(tandem_cluster::now()),
            () = &mut stop, if handing_over.is_none() => match node.begin_stop() {
                Some(answer) => handing_over = Some(answer),
                None => break,
            },
            done = async {
                tokio::time::timeout(STOP_HANDOVER_WAIT, handing_over.as_mut().expect("guarded")).await
            }, if handing_over.is_some() => {
                match done {
                    Ok(Ok(Ok(moved))) => tracing::info!(%moved, "stopping: tunnels handed over"),
                    Ok(Ok(Err(e))) => tracing::warn!(error = %e, "stopping: handover failed; the lease lapses instead"),
                    Ok(Err(_)) => {}
                    Err(_) => tracing::warn!("stopping: handover still under way; the lease lapses instead"),
                }
                break;
            }
        }
        node.flush().await;
    }
    node.finish().await;
    tracing::info!("tandemd stopping");
    crate::notify::notify("STOPPING=1");
    Ok(())
}

/// See [`Cluster::hand_leadership_over`].
async fn hand_leadership_over(cluster: &Cluster) {
    if let Err(e) = cluster
        .hand_leadership_over(std::time::Duration::from_secs(1))
        .await
    {
        tracing::warn!(error = %e, "stopping: leadership not handed over");
    }
}

/// Starts the admin gRPC API if `[cluster] admin_listen` asks for it; its
/// commands reach the main loop as the control socket's do.
async fn serve_admin(
    config: &Config,
    cluster: Option<&Arc<Cluster>>,
    commands: &mpsc::Sender<Request>,
) -> anyhow::Result<()> {
    let (Some(cluster), Some(settings)) = (cluster, &config.cluster) else {
        return Ok(());
    };
    let Some(addr) = settings.admin_listen else {
        return Ok(());
    };
    let tls = tandem_cluster::tls::NodeTls::from_dir(&settings.pki_dir, &config.node_name)?;
    crate::admin::serve(addr, &tls, cluster.clone(), commands.clone()).await
}

/// Removes this node's tunnel addresses (`tandemd release`).
pub async fn release_vips(config: &Config) -> anyhow::Result<()> {
    TunnelAddresses::new(config).await?.release_all().await;
    Ok(())
}

/// A witness: a Raft voter with no dataplane. It serves only status and
/// membership commands on its control socket.
async fn run_witness(config: &Config, cluster: Arc<Cluster>) -> anyhow::Result<()> {
    let (ctl_tx, ctl_rx) = mpsc::channel::<Request>(16);
    serve_admin(config, Some(&cluster), &ctl_tx).await?;
    control::serve(&config.control_socket, ctl_tx)?;
    serve_witness(config, cluster, ctl_rx, shutdown()).await;
    Ok(())
}

/// A witness's loop: moves tunnels off lapsed leases when it leads, and
/// answers the commands that make sense without a dataplane.
pub async fn serve_witness(
    config: &Config,
    cluster: Arc<Cluster>,
    mut ctl_rx: mpsc::Receiver<Request>,
    stop: impl std::future::Future<Output = ()>,
) {
    let timing = config
        .cluster
        .as_ref()
        .map(|c| (c.mode, c.lease))
        .unwrap_or_default();
    if let Some(settings) = &config.cluster {
        // The witness may be the leader: it moves tunnels off lapsed leases too.
        tokio::spawn(replication::manage_owners(
            cluster.clone(),
            Vec::new(),
            settings.mode,
            settings.lease,
        ));
    }
    tracing::info!(node = %config.node_name, "tandemd ready (witness)");
    crate::notify::notify("READY=1\nSTATUS=witness");
    tokio::pin!(stop);
    loop {
        tokio::select! {
            Some((cmd, reply)) = ctl_rx.recv() => match cmd {
                Command::Status => {
                    let status = serde_json::json!({ "cluster": replication::describe(&cluster) });
                    let _ = reply.send(Ok(status.to_string()));
                }
                Command::MemberAdd(..) | Command::MemberRemove(_) => {
                    replication::change_members(cluster.clone(), cmd, reply);
                }
                Command::Probe { count, writers, bytes } => {
                    replication::probe(cluster.clone(), count, writers, bytes, reply);
                }
                Command::Handover { .. } | Command::Drain(_) => {
                    replication::handover(cluster.clone(), cmd, Vec::new(), timing, reply);
                }
                _ => {
                    let _ = reply.send(Err("a witness carries no tunnels: ask a gateway".into()));
                }
            },
            () = &mut stop => break,
        }
    }
    hand_leadership_over(&cluster).await;
    tracing::info!("tandemd stopping");
    crate::notify::notify("STOPPING=1");
}

/// Follows every state change already applied, before acting on a commit:
/// what the node then does must agree with the state as of that commit.
async fn catch_up<I: Io>(
    node: &mut Node<I>,
    state_rx: &mut Option<mpsc::UnboundedReceiver<StateEvent>>,
) {
    while let Some(event) = state_rx.as_mut().and_then(|rx| rx.try_recv().ok()) {
        node.follow(event, tandem_cluster::now()).await;
    }
}

async fn recv<T>(rx: &mut Option<mpsc::UnboundedReceiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

async fn read_udp(socket: Arc<UdpSocket>, local: SocketAddr, tx: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match socket.recv_from(&mut buf).await {
            Ok((n, remote)) => {
                let input = Input::Udp {
                    local,
                    remote,
                    data: buf[..n].to_vec(),
                };
                if tx.send(input).await.is_err() {
                    return;
                }
            }
            // ICMP port unreachable from a peer that went away shows up here as an
            // error on the next read; it says nothing about our socket.
            Err(e) => tracing::debug!(%local, error = %e, "UDP receive error"),
        }
    }
}

async fn read_tun(dev: Arc<AsyncDevice>, tx: mpsc::Sender<Input>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match dev.recv(&mut buf).await {
            Ok(n) => {
                if tx.send(Input::Inner(buf[..n].to_vec())).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "TUN read failed; inner traffic stopped");
                return;
            }
        }
    }
}

struct Node<I: Io> {
    /// This node's cluster id (0 standalone).
    id: tandem_cluster::NodeId,
    cluster: Option<std::sync::Arc<Cluster>>,
    /// Where steps go to be committed (cluster mode only).
    commit: Option<mpsc::Sender<(tandem_cluster::Command, Step)>>,
    /// Tunnels this node sends for: all of them standalone, the ones the
    /// replicated state gives it in a cluster.
    owned: BTreeSet<String>,
    /// Configured initiators, started once this node owns them.
    to_initiate: BTreeSet<String>,
    /// Hot-standby child SAs of tunnels another node owns, by inbound SPI: their
    /// inbound half is in the SA database, the outbound half staged here (a new
    /// owner activates it from its sequence reservation, never from 1).
    standby: BTreeMap<u32, ChildSa>,
    endpoint: Endpoint,
    dataplane: Dataplane,
    io: I,
    natt_port: u16,
    /// This node's lease (cluster mode): it sends nothing without one.
    lease: OwnLease,
    lease_timing: LeaseTiming,
    /// Entries up to this log index are history, perhaps from before this
    /// process started; later ones were committed while it ran. Unknown
    /// (everything is history) until the first lease renewal of this
    /// process is applied here: a reservation this node made and used
    /// before a crash may reach its log only after the restart, and must
    /// not be taken for a fresh grant (invariant 3); and the ownership its
    /// old log shows may have moved on since, so it acts on none before.
    replayed_to: u64,
    mode: Mode,
    /// Last seen state of the lease, to log changes once.
    fenced: bool,
    /// Outbound SPIs with a reservation being committed.
    reserving: BTreeSet<u32>,
    /// Tunnels a planned handover is bringing to this node: it holds their
    /// addresses, and the LAN traffic it cannot seal yet, until the
    /// transfer is applied or the deadline passes.
    incoming: BTreeMap<String, Instant>,
    /// LAN packets held for `incoming` tunnels, in arrival order.
    held: Vec<Vec<u8>>,
    /// Tunnels this node is handing over in a planned handover: if it still
    /// owns one at the deadline (the new owner never took it), it announces
    /// the addresses again, which the new owner took and then released.
    reannounce: BTreeMap<String, Instant>,
    /// When the owned tunnels' addresses were last renewed.
    addresses_renewed: Instant,
    /// Whether this node's links are up and it is not stopping; it renews
    /// no lease while not (shared with the renewal task).
    healthy: Arc<std::sync::atomic::AtomicBool>,
    stopping: bool,
    /// Replay marks last synced, by inbound SPI.
    marks_synced: BTreeMap<u32, u64>,
    background: mpsc::UnboundedSender<Background>,
    sa_counters: crate::telemetry::SaCounters,
    drop_summary: crate::telemetry::DropSummary,
    /// Standby SAs of tunnels just handed over, still opened until the
    /// address has moved (packets on their way), by inbound SPI.
    draining: BTreeMap<u32, Instant>,
    /// IKE datagrams not taken while the commit queue was nearly full.
    ike_backlog_drops: u64,
    /// The tunnels this node runs: its file's, as the cluster overrides them
    /// (`tandemctl apply`, `remove-tunnel`).
    tunnels: BTreeMap<String, Connection>,
    /// The addresses UDP 500/4500 are bound on: a tunnel applied live must
    /// use one of them.
    listen: Vec<std::net::IpAddr>,
}

impl<I: Io> Node<I> {
    /// Exports what the node carries (every [`METRICS_EVERY`]).
    fn export_metrics(&mut self, now: Instant) {
        let (mut ike_sas, mut child_sas) = (0, 0);
        let mut sas = Vec::new();
        for sa in self.endpoint.ike_sas() {
            ike_sas += 1;
            child_sas += sa.children.len();
            for c in &sa.children {
                // Both halves by the inbound SPI, this cluster's choice: two
                // tunnels' peers may have chosen the same outbound SPI.
                let (inbound, outbound) = self.dataplane.sa_stats(c.inbound_spi);
                sas.extend(inbound.map(|s| (sa.connection.clone(), c.inbound_spi, true, s)));
                sas.extend(outbound.map(|s| (sa.connection.clone(), c.inbound_spi, false, s)));
            }
        }
        crate::telemetry::carrying(self.owned.len(), ike_sas, child_sas);
        let selector_drops: u64 = sas
            .iter()
            .filter(|(_, _, inbound, _)| *inbound)
            .map(|(.., s)| s.selector_drops)
            .sum();
        self.sa_counters.update(sas);
        let totals = crate::telemetry::ike_drops(self.endpoint.drops());
        self.drop_summary.update(
            now,
            totals.into_iter().chain([
                ("ike_commit_backlog", self.ike_backlog_drops),
                ("esp_outside_selectors", selector_drops),
            ]),
        );
        if let Some(cluster) = &self.cluster {
            let m = cluster.metrics();
            crate::telemetry::raft(
                m.current_term,
                m.current_leader,
                m.last_applied.map_or(0, |l| l.index),
            );
            let left = self
                .lease
                .valid_until()
                .map_or(std::time::Duration::ZERO, |until| {
                    until.saturating_duration_since(now)
                });
            crate::telemetry::lease_remaining(left);
        }
    }

    async fn handle_inputs(&mut self, batch: &mut Vec<Input>) {
        let now = tandem_cluster::now();
        let mut outbound = Vec::new();
        for input in batch.drain(..) {
            match input {
                Input::Udp {
                    local,
                    remote,
                    mut data,
                } => {
                    if local.port() != self.natt_port {
                        if self.take_ike() {
                            self.endpoint.handle(now, local, remote, &data);
                        }
                        continue;
                    }
                    match self.dataplane.decapsulate(&mut data) {
                        Decapsulated::Ike(range) => {
                            if self.take_ike() {
                                self.endpoint.handle(now, local, remote, &data[range]);
                            }
                        }
                        Decapsulated::Inner(range) => {
                            self.io.deliver(&data[range]).await;
                        }
                        Decapsulated::Nothing => {}
                    }
                }
                Input::Inner(packet) => outbound.push(packet),
            }
        }
        if !outbound.is_empty() {
            self.seal_and_send(&outbound, now).await;
        }
    }

    /// Seals and sends packets from the LAN. While a planned handover brings
    /// a tunnel here, the packets no SA matches yet are held: the LAN sends
    /// that tunnel's traffic here already, and it leaves once this node owns
    /// the tunnel.
    async fn seal_and_send(&mut self, packets: &[Vec<u8>], now: Instant) {
        if !self.may_send(now) {
            return;
        }
        let n = self.dataplane.encapsulate(packets);
        for i in 0..n {
            if let Some((local, remote, datagram)) = self.dataplane.sealed(i) {
                self.io.send_udp(local, remote, datagram).await;
            } else if !self.incoming.is_empty()
                && self.held.len() < HELD_MAX
                && let Some(inner) = self.dataplane.unmatched(i)
            {
                self.held.push(inner.to_vec());
            }
        }
    }

    /// Collects what the endpoint queued: released at once standalone, after its
    /// changes are committed in a cluster (DESIGN.md invariant 1).
    async fn flush(&mut self) {
        let mut step = Step::default();
        while let Some(t) = self.endpoint.poll_transmit() {
            step.transmits.push(t);
        }
        while let Some(e) = self.endpoint.poll_event() {
            step.events.push(e);
        }
        let Some(commit) = &self.commit else {
            self.release(step).await;
            return;
        };
        let changes = self.endpoint.take_changes(tandem_cluster::now());
        if step.is_empty() && changes.is_empty() {
            return;
        }
        let cmd = replication::command_for(self.id, changes, &step.events, &self.owned);
        for c in &cmd.changes {
            match c {
                Change::IkeSaCommitted { record, .. } => {
                    step.tunnels.insert(record.connection.clone());
                    step.ike_sas.push(record.our_spi());
                }
                Change::ChildSaInstalled(child) => {
                    step.tunnels.insert(child.connection.clone());
                }
                _ => {}
            }
        }
        // Datagrams stop being taken before the queue fills (see
        // handle_inputs), so only timers can find it full: they wait.
        if commit.send((cmd, step)).await.is_err() {
            tracing::error!("commit worker stopped; IKE replies withheld");
        }
    }

    /// Whether an IKE datagram may be handled now: not while the commit
    /// queue is nearly full (see replication::COMMIT_QUEUE).
    fn take_ike(&mut self) -> bool {
        let room = self
            .commit
            .as_ref()
            .is_none_or(|c| c.capacity() > replication::COMMIT_HEADROOM);
        if !room {
            self.ike_backlog_drops += 1;
        }
        room
    }

    /// Applies a (committed) step's events, then sends its datagrams: an SA is
    /// in place before the reply that lets the peer use it.
    async fn release(&mut self, step: Step) {
        if step.failed {
            for spi in &step.ike_sas {
                self.endpoint.recommit(*spi);
            }
        }
        // The state machine refuses IKE state from a node that lost the
        // tunnel while the step waited (its lease lapsed, another node took
        // over); so must the node itself.
        if let Some(tunnel) = step.tunnels.iter().find(|t| !self.owned.contains(*t)) {
            tracing::warn!(%tunnel, "tunnel moved away while its IKE state was being committed: step withheld");
            return;
        }
        for g in step.grants {
            self.dataplane
                .grant(g.inbound_spi, g.block.from, g.block.up_to);
        }
        for event in step.events {
            self.apply(event);
        }
        if !self.may_send(tandem_cluster::now()) {
            if !step.transmits.is_empty() {
                tracing::debug!(
                    count = step.transmits.len(),
                    "fenced: IKE datagrams withheld"
                );
            }
            return;
        }
        for Transmit {
            local,
            remote,
            datagram,
        } in step.transmits
        {
            if local.port() == self.natt_port {
                let mut framed = Vec::with_capacity(NON_ESP_MARKER.len() + datagram.len());
                framed.extend_from_slice(&NON_ESP_MARKER);
                framed.extend_from_slice(&datagram);
                self.io.send_udp(local, remote, &framed).await;
            } else {
                self.io.send_udp(local, remote, &datagram).await;
            }
        }
    }

    /// Starts the configured initiators this node owns and has not started.
    fn initiate_owned(&mut self, now: Instant) {
        let ready: Vec<String> = self
            .to_initiate
            .intersection(&self.owned)
            .cloned()
            .collect();
        for name in ready {
            self.to_initiate.remove(&name);
            if let Err(e) = self.endpoint.initiate(now, &name) {
                tracing::warn!(connection = %name, error = %e, "cannot initiate");
            }
        }
    }

    /// Follows the replicated state: ownership, and hot-standby SAs of the
    /// tunnels other nodes own (this node's own SAs come from its endpoint).
    async fn follow(&mut self, event: StateEvent, now: Instant) {
        // A snapshot or an entry this node had in its log at start is history
        // being replayed, not a change happening now.
        let mut live = false;
        let changes = match event {
            StateEvent::Applied { index, changes } => {
                live = index > self.replayed_to;
                changes
            }
            StateEvent::Reset => {
                let Some(cluster) = &self.cluster else { return };
                let state = cluster.state();
                for (spi, _) in std::mem::take(&mut self.standby) {
                    self.dataplane.remove_standby(spi);
                }
                let mut changes: Vec<Change> = state
                    .tunnels
                    .into_iter()
                    .map(|(name, spec)| match spec {
                        Some(spec) => Change::TunnelUpsert(Box::new(spec)),
                        None => Change::TunnelRemove { name },
                    })
                    .collect();
                changes.extend(
                    state
                        .owners
                        .into_iter()
                        .map(|(tunnel, node)| Change::OwnerAssigned { tunnel, node }),
                );
                changes.extend(
                    state
                        .child_sas
                        .into_values()
                        .map(|c| Change::ChildSaInstalled(Box::new(c))),
                );
                changes
            }
        };
        for change in changes {
            match change {
                // Replaying its log, a node that restarted may see itself own
                // a tunnel another node took over since; it acts on ownership
                // only once caught up (see Node::catch_up_ownership).
                Change::OwnerAssigned { tunnel, .. } if self.replayed_to != u64::MAX => {
                    self.reconcile(&tunnel, now, live).await;
                }
                Change::OwnerTransferred { tunnel, from, .. } if self.replayed_to != u64::MAX => {
                    if self.reconcile(&tunnel, now, live).await
                        && let Some(cluster) = &self.cluster
                    {
                        let silent =
                            now.saturating_duration_since(cluster.lease_watch().last_seen(from));
                        crate::telemetry::takeover_silence(&tunnel, silent);
                    }
                }
                Change::ChildSaInstalled(child) => {
                    if self.owned.contains(&child.connection)
                        || !self.dataplane.knows(&child.connection)
                    {
                        continue;
                    }
                    match self.dataplane.install_standby(&child) {
                        Ok(()) => {
                            tracing::info!(connection = %child.connection, inbound = format_args!("{:08x}", child.inbound_spi), "standby child SA installed");
                            // A rekey while a handover brings the tunnel here.
                            if self.incoming.contains_key(&child.connection) {
                                let _ = self.dataplane.accept(child.inbound_spi, 0);
                            }
                            self.standby.insert(child.inbound_spi, *child);
                        }
                        Err(e) => tracing::warn!(error = %e, "cannot install standby child SA"),
                    }
                }
                Change::ChildSaDeleted { inbound_spi } => self.drop_standby(inbound_spi),
                // Configuration is history too, replayed in order: a node
                // that restarts ends up running what the cluster last said.
                Change::TunnelUpsert(spec) => {
                    self.configure(Connection::from_spec(*spec), now, live)
                        .await;
                }
                Change::TunnelRemove { name } => self.unconfigure(&name).await,
                Change::HandoverPrepared { tunnel, from, to }
                    if live && self.replayed_to != u64::MAX =>
                {
                    self.prepare(tunnel, from, to, now).await;
                }
                _ => {}
            }
        }
        self.initiate_owned(now);
    }

    /// A planned handover's first step (see Change::HandoverPrepared): the new
    /// owner takes the addresses and proposes the transfer; the old one keeps
    /// running the tunnel until it applies the transfer.
    async fn prepare(&mut self, tunnel: String, from: NodeId, to: NodeId, now: Instant) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        if cluster.read_state(|s| s.owners.get(&tunnel) != Some(&from)) {
            return;
        }
        if to == self.id {
            if self.owned.contains(&tunnel) || !self.dataplane.knows(&tunnel) || !self.may_send(now)
            {
                return;
            }
            tracing::info!(%tunnel, from, "planned handover to this node: addresses taken, LAN traffic held until the transfer");
            self.incoming
                .insert(tunnel.clone(), now + replication::HANDOVER_TIMEOUT);
            // The peer's packets arrive here from now on: opened, from the
            // marks the old owner committed with the handover.
            let marks: Vec<(u32, u64)> = cluster.read_state(|s| {
                s.child_sas
                    .values()
                    .filter(|c| c.connection == tunnel)
                    .map(|c| {
                        (
                            c.inbound_spi,
                            s.replay_marks.get(&c.inbound_spi).copied().unwrap_or(0),
                        )
                    })
                    .collect()
            });
            for (spi, mark) in marks {
                if self.standby.contains_key(&spi)
                    && let Err(e) = self.dataplane.accept(spi, mark)
                {
                    tracing::warn!(%tunnel, error = %e, "cannot open a standby SA for the handover");
                }
            }
            self.io.address_up(&tunnel).await;
            replication::transfer(cluster, tunnel, from, to);
        } else if from == self.id && self.owned.contains(&tunnel) {
            self.reannounce.insert(
                tunnel,
                now + replication::HANDOVER_TIMEOUT + REANNOUNCE_AFTER,
            );
        }
    }

    /// Takes `tunnel` over or hands it over, as the applied state says: what
    /// the state machine made of a change, so a stale transfer (one a
    /// partitioned ex-leader proposed, forwarded after the partition healed)
    /// changes nothing there, nor here.
    /// Returns whether this node took the tunnel over.
    async fn reconcile(&mut self, tunnel: &str, now: Instant, live: bool) -> bool {
        let Some(node) = self
            .cluster
            .as_ref()
            .and_then(|c| c.read_state(|s| s.owners.get(tunnel).copied()))
        else {
            return false;
        };
        if node == self.id && self.dataplane.knows(tunnel) {
            if self.owned.insert(tunnel.to_owned()) {
                tracing::info!(%tunnel, "this node owns the tunnel");
                self.take_over(tunnel, now, live).await;
                return true;
            }
        } else if self.owned.remove(tunnel) {
            tracing::info!(%tunnel, owner = node, "tunnel owned by another node");
            self.hand_over(tunnel).await;
        }
        false
    }

    /// This process's first lease renewal is applied: the state here is now
    /// at least as new as the cluster's when it was committed, and this node
    /// takes over what that state gives it, from the reservations in it.
    async fn catch_up_ownership(&mut self, now: Instant) {
        let tunnels: Vec<String> = match &self.cluster {
            Some(c) => c.read_state(|s| s.owners.keys().cloned().collect()),
            None => return,
        };
        for tunnel in tunnels {
            self.reconcile(&tunnel, now, false).await;
        }
        self.initiate_owned(now);
    }

    /// Runs `conn`, new or changed: the endpoint's connection (new exchanges
    /// and rekeys use it), the replay window, routes and addresses. A change
    /// of selectors reaches the running child SAs by rekeying them now, if
    /// this node owns the tunnel and the change is `live`.
    async fn configure(&mut self, conn: Connection, now: Instant, live: bool) {
        let name = conn.ike.name.clone();
        let old = self.tunnels.get(&name).cloned();
        if old.as_ref() == Some(&conn) {
            return;
        }
        let owned = self.owned.contains(&name);
        let addresses = |c: &Connection| (c.ike.local_addr, c.lan_addr);
        let moved = owned
            && old
                .as_ref()
                .is_some_and(|o| addresses(o) != addresses(&conn));
        if moved {
            self.io.address_down(&name).await;
        }
        self.endpoint.configure(conn.ike.clone());
        self.dataplane.configure(&name, conn.replay_window);
        self.io.configure(&conn, old.as_ref()).await;
        if moved && self.may_send(now) {
            self.io.address_up(&name).await;
        }
        if conn.initiate && old.is_none() {
            self.to_initiate.insert(name.clone());
        }
        let selectors = |c: &Connection| (c.ike.local_ts.clone(), c.ike.remote_ts.clone());
        let reselect = old
            .as_ref()
            .is_some_and(|o| selectors(o) != selectors(&conn));
        self.tunnels.insert(name.clone(), conn);
        tracing::info!(tunnel = %name, new = old.is_none(), "tunnel configured through the cluster");
        if reselect
            && owned
            && live
            && let Err(e) = self.endpoint.rekey_child(now, &name)
        {
            tracing::info!(tunnel = %name, error = %e, "new selectors wait for the next child SA");
        }
        // The state may give this node the tunnel already.
        if old.is_none() && self.replayed_to != u64::MAX {
            self.reconcile(&name, now, false).await;
        }
    }

    /// Stops running tunnel `name`: its SAs go without a word to the peer
    /// (its dead peer detection notices), then its routes and addresses.
    async fn unconfigure(&mut self, name: &str) {
        let Some(conn) = self.tunnels.remove(name) else {
            return;
        };
        self.owned.remove(name);
        self.to_initiate.remove(name);
        let children: Vec<u32> = self
            .endpoint
            .ike_sas()
            .filter(|sa| sa.connection == name)
            .flat_map(|sa| sa.children)
            .map(|c| c.inbound_spi)
            .collect();
        for inbound in children {
            self.dataplane.remove(inbound);
        }
        let standby: Vec<u32> = self
            .standby
            .values()
            .filter(|c| c.connection == name)
            .map(|c| c.inbound_spi)
            .collect();
        for spi in standby {
            self.drop_standby(spi);
        }
        self.endpoint.unconfigure(name);
        self.dataplane.unconfigure(name);
        self.io.unconfigure(&conn).await;
        tracing::info!(tunnel = %name, "tunnel removed through the cluster");
    }

    /// `tandemctl apply` and `remove-tunnel`: checked here against what this
    /// node runs, then committed; every node (this one included) acts on the
    /// commit. Nothing is committed unless the whole request is valid.
    fn change_tunnels(
        &self,
        cluster: Arc<Cluster>,
        cmd: Command,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    ) {
        let current: Vec<&Connection> = self.tunnels.values().collect();
        // The changes to commit, and what the operator is told of them.
        let request = match cmd {
            Command::TunnelApply { text, psk } => std::str::from_utf8(text.expose())
                .map_err(|_| "the tunnels to apply are not UTF-8 text".to_owned())
                .and_then(|text| {
                    crate::config::parse_tunnels(text, &psk, &self.listen, &current)
                        .map_err(|e| e.to_string())
                })
                .map(|tunnels| {
                    let names: Vec<&str> = tunnels.iter().map(|t| t.ike.name.as_str()).collect();
                    let told = serde_json::json!({ "applied": names, "removed": [] });
                    let changes = tunnels
                        .iter()
                        .map(|t| Change::TunnelUpsert(Box::new(t.spec())))
                        .collect();
                    (changes, told)
                }),
            Command::TunnelRemove(name) if self.tunnels.contains_key(&name) => {
                let told = serde_json::json!({ "applied": [], "removed": [&name] });
                Ok((vec![Change::TunnelRemove { name }], told))
            }
            Command::TunnelRemove(name) => Err(format!(
                "no tunnel {name:?}: the tunnels are {:?}",
                self.tunnels.keys().collect::<Vec<_>>()
            )),
            _ => return,
        };
        tokio::spawn(async move {
            let result = match request {
                Ok((changes, told)) => cluster
                    .propose(tandem_cluster::Command { changes })
                    .await
                    .map(|_| told.to_string())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e),
            };
            let _ = reply.send(result);
        });
    }

    /// Starts a planned handover (or a drain) with this node's replay marks
    /// of the tunnels it owns, the freshest there are.
    fn handover(
        &self,
        cluster: Arc<Cluster>,
        cmd: Command,
        reply: tokio::sync::oneshot::Sender<Result<String, String>>,
    ) {
        let marks = self.dataplane.replay_marks(self.owned_inbound(&cluster));
        replication::handover(cluster, cmd, marks, (self.mode, self.lease_timing), reply);
    }

    /// This node may send (IKE and ESP): always standalone; in a cluster only
    /// while its lease holds (invariant 2).
    fn may_send(&self, now: Instant) -> bool {
        self.cluster.is_none() || self.lease.valid(now)
    }

    async fn background(&mut self, report: Background, now: Instant) {
        match report {
            Background::LeaseRenewed { sent, applied } => {
                // This process's first renewal: every entry after it was
                // committed while this process ran (see Node::replayed_to).
                if self.replayed_to == u64::MAX {
                    self.replayed_to = applied;
                    self.catch_up_ownership(now).await;
                    crate::notify::notify("READY=1\nSTATUS=caught up with the cluster");
                }
                self.lease.renewed(&self.lease_timing, sent);
                self.check_lease(now).await;
                self.renew_addresses(now).await;
            }
            Background::Reserved(g) => {
                self.reserving.remove(&g.inbound_spi);
                // Not if the SA was handed over after the grant: a later
                // takeover starts from the replicated reservations.
                if self.dataplane.sends_on(g.inbound_spi) {
                    self.dataplane
                        .grant(g.inbound_spi, g.block.from, g.block.up_to);
                }
            }
            Background::ReserveFailed(inbound_spi) => {
                self.reserving.remove(&inbound_spi);
            }
        }
    }

    /// Logs lease changes and moves the VIPs with them: a fenced node gives
    /// up its addresses so the new owner's gratuitous ARP is not contested.
    async fn check_lease(&mut self, now: Instant) {
        let fenced = !self.lease.valid(now);
        if fenced == self.fenced {
            return;
        }
        self.fenced = fenced;
        let owned: Vec<String> = self.owned.iter().cloned().collect();
        if fenced {
            tracing::warn!(tunnels = ?owned, "lease lapsed: fenced, sending nothing");
        } else {
            tracing::info!(tunnels = ?owned, "lease held: sending");
        }
        for tunnel in owned {
            if fenced {
                self.io.address_down(&tunnel).await;
            } else {
                self.io.address_up(&tunnel).await;
            }
        }
    }

    /// Renews the owned tunnels' addresses (see crate::vip): only on a lease
    /// renewal, so a node that cannot renew its lease lets them expire. A
    /// tunnel being handed over is not announced: the new owner has its
    /// addresses now.
    async fn renew_addresses(&mut self, now: Instant) {
        if !self.lease.valid(now)
            || now.saturating_duration_since(self.addresses_renewed) < crate::vip::REFRESH_EVERY
        {
            return;
        }
        self.addresses_renewed = now;
        for tunnel in &self.owned {
            self.io
                .address_refresh(tunnel, !self.reannounce.contains_key(tunnel))
                .await;
        }
    }

    /// The periodic work of a cluster gateway: lease, reservations ahead of
    /// need, and (when `sync_marks`) the replay marks of owned child SAs.
    async fn tick(&mut self, now: Instant, sync_marks: bool) {
        self.check_links().await;
        self.check_lease(now).await;
        self.expire_handovers(now).await;
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        for spi in self.dataplane.refills(replication::SEQ_BLOCK) {
            if self.reserving.insert(spi) {
                replication::reserve(cluster.clone(), spi, self.background.clone());
            }
        }
        if sync_marks && !self.owned.is_empty() {
            let current = self.dataplane.replay_marks(self.owned_inbound(&cluster));
            // Forget SAs that are gone, or the map grows with every rekey.
            self.marks_synced
                .retain(|spi, _| current.iter().any(|(s, _)| s == spi));
            let marks: Vec<(u32, u64)> = current
                .into_iter()
                .filter(|(spi, mark)| self.marks_synced.get(spi).is_none_or(|m| m < mark))
                .collect();
            if !marks.is_empty() {
                self.marks_synced.extend(marks.iter().copied());
                replication::sync_replay_marks(cluster, marks);
            }
        }
    }

    /// A graceful stop (SIGTERM: an upgrade, a reboot): a cluster gateway
    /// hands the tunnels it owns over first, as a drain would, and renews
    /// its lease no more so none comes back. The answer comes once the new
    /// owners run them (or the handover failed); None if there is nothing
    /// to wait for.
    fn begin_stop(&mut self) -> Option<tokio::sync::oneshot::Receiver<Result<String, String>>> {
        let cluster = self.cluster.clone()?;
        self.stopping = true;
        self.healthy
            .store(false, std::sync::atomic::Ordering::Relaxed);
        if self.owned.is_empty() {
            return None;
        }
        tracing::info!(tunnels = ?self.owned, "stopping: handing the tunnels over first");
        Some(self.drain_self(cluster))
    }

    /// Hands every tunnel this node owns to the others (a drain of itself);
    /// the answer comes once the new owners run them.
    fn drain_self(
        &self,
        cluster: Arc<Cluster>,
    ) -> tokio::sync::oneshot::Receiver<Result<String, String>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.handover(cluster, Command::Drain(self.id), reply);
        answer
    }

    /// The last of a stop: the addresses this node still holds go, and a
    /// leader hands leadership over, so the cluster need not wait an
    /// election timeout to commit (owners' lease renewals among it).
    async fn finish(&mut self) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let held: BTreeSet<String> = self
            .owned
            .iter()
            .chain(self.incoming.keys())
            .cloned()
            .collect();
        for tunnel in held {
            self.io.address_down(&tunnel).await;
        }
        hand_leadership_over(&cluster).await;
    }

    /// A gateway whose outer or LAN link goes down cannot serve its tunnels:
    /// it drains itself (a planned handover, so the others need not wait for
    /// its lease to lapse) and renews no lease until the links are back, so
    /// nothing is placed on it meanwhile.
    async fn check_links(&mut self) {
        use std::sync::atomic::Ordering;
        if self.stopping {
            return;
        }
        let up = self.io.links_up().await;
        if up == self.healthy.load(Ordering::Relaxed) {
            return;
        }
        self.healthy.store(up, Ordering::Relaxed);
        if up {
            tracing::info!("links up again: renewing the lease, standing by");
            return;
        }
        tracing::warn!(tunnels = ?self.owned, "a link is down: handing the tunnels over, no lease until it is back");
        if let (Some(cluster), false) = (self.cluster.clone(), self.owned.is_empty()) {
            let answer = self.drain_self(cluster);
            tokio::spawn(async move {
                match answer.await {
                    Ok(Ok(moved)) => tracing::info!(%moved, "drained: a link is down"),
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "drain failed; the lease lapses instead")
                    }
                    Err(_) => {}
                }
            });
        }
    }

    /// Planned handovers that did not complete in time: a new owner that never
    /// got the tunnel releases its addresses and drops what it held; the old
    /// owner, still running it, announces its addresses again.
    async fn expire_handovers(&mut self, now: Instant) {
        let due = |m: &BTreeMap<String, Instant>| -> Vec<String> {
            m.iter()
                .filter(|(_, at)| **at <= now)
                .map(|(t, _)| t.clone())
                .collect()
        };
        for tunnel in due(&self.incoming) {
            self.incoming.remove(&tunnel);
            if !self.owned.contains(&tunnel) {
                tracing::warn!(%tunnel, "planned handover to this node not completed: addresses released");
                self.io.address_down(&tunnel).await;
            }
        }
        if self.incoming.is_empty() && !self.held.is_empty() {
            tracing::warn!(count = self.held.len(), "held LAN packets dropped");
            self.held.clear();
        }
        let drained: Vec<u32> = self
            .draining
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(spi, _)| *spi)
            .collect();
        for spi in drained {
            self.draining.remove(&spi);
            if self.standby.contains_key(&spi) {
                self.dataplane.refuse(spi);
            }
        }
        for tunnel in due(&self.reannounce) {
            self.reannounce.remove(&tunnel);
            if self.owned.contains(&tunnel) && self.may_send(now) {
                tracing::warn!(%tunnel, "planned handover away from this node not completed: addresses announced again");
                self.io.address_up(&tunnel).await;
            }
        }
    }

    /// Inbound SPIs of the child SAs of the tunnels this node owns.
    fn owned_inbound(&self, cluster: &Cluster) -> Vec<u32> {
        cluster.read_state(|state| {
            state
                .child_sas
                .values()
                .filter(|c| self.owned.contains(&c.connection))
                .map(|c| c.inbound_spi)
                .collect()
        })
    }

    /// Takes over `tunnel` from the replicated state: its IKE SAs (with their
    /// message IDs and cached responses), its child SAs (sequence numbers
    /// above every reservation, replay windows from the synced marks), then
    /// its address. Outbound ESP uses the block a planned handover reserved
    /// for this node with the transfer, if this node sees that happen `live`;
    /// otherwise it waits for a reservation of its own. (Replaying its log
    /// after a restart, a node cannot know which numbers it used before.)
    async fn take_over(&mut self, tunnel: &str, now: Instant, live: bool) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let state = cluster.state();
        // A planned handover reserves the new owner's first block with the
        // transfer; a takeover after a lapsed lease does not.
        let mut planned = false;
        for sa in state
            .ike_sas
            .values()
            .filter(|sa| sa.record.connection == tunnel)
        {
            // Install order (the record's), so the newest child wins the
            // traffic selectors as it did on the old owner.
            let children: Vec<ChildSa> = sa
                .record
                .children
                .iter()
                .filter_map(|t| state.child_sas.get(&t.inbound_spi).cloned())
                .collect();
            for child in &children {
                self.standby.remove(&child.inbound_spi);
                self.draining.remove(&child.inbound_spi);
                let reserved = state.seq_reservations.get(&child.inbound_spi);
                let granted = reserved.filter(|r| live && r.node == self.id && r.from <= r.up_to);
                planned |= granted.is_some();
                let first = match (reserved, granted) {
                    (_, Some(r)) => r.from,
                    (Some(r), None) => r.up_to + 1,
                    (None, None) => 1,
                };
                let mark = state
                    .replay_marks
                    .get(&child.inbound_spi)
                    .copied()
                    .unwrap_or(0);
                match self.dataplane.take_over(child, first, mark) {
                    Ok(()) => {
                        tracing::info!(%tunnel, inbound = format_args!("{:08x}", child.inbound_spi), first_seq = first, ?granted, replay_mark = mark, "child SA taken over");
                        if let Some(r) = granted {
                            self.dataplane.grant(child.inbound_spi, r.from, r.up_to);
                        } else if self.reserving.insert(child.inbound_spi) {
                            replication::reserve(
                                cluster.clone(),
                                child.inbound_spi,
                                self.background.clone(),
                            );
                        }
                    }
                    Err(e) => tracing::error!(%tunnel, error = %e, "cannot take over child SA"),
                }
            }
            match self.endpoint.adopt(now, &sa.record, children) {
                Ok(()) => {
                    tracing::info!(%tunnel, spi_i = format_args!("{:016x}", sa.record.spi_i), spi_r = format_args!("{:016x}", sa.record.spi_r), "IKE SA taken over")
                }
                Err(e) => tracing::error!(%tunnel, error = %e, "cannot take over IKE SA"),
            }
        }
        crate::telemetry::took_over(tunnel, planned);
        if self.may_send(now) {
            self.io.address_up(tunnel).await;
        }
        if self.incoming.remove(tunnel).is_some() {
            let held = std::mem::take(&mut self.held);
            if !held.is_empty() {
                tracing::debug!(%tunnel, count = held.len(), "sending the LAN packets held for the handover");
                self.seal_and_send(&held, now).await;
            }
        }
    }

    /// Gives `tunnel` up to another node: forget its IKE SAs, stop sending
    /// ESP but keep decrypting (hot standby again), release the address.
    async fn hand_over(&mut self, tunnel: &str) {
        crate::telemetry::handed_over(tunnel);
        self.reannounce.remove(tunnel);
        self.endpoint.forget(tunnel);
        if let Some(cluster) = &self.cluster {
            let children: Vec<ChildSa> = cluster.read_state(|state| {
                state
                    .child_sas
                    .values()
                    .filter(|c| c.connection == tunnel)
                    .cloned()
                    .collect()
            });
            let until = tandem_cluster::now() + replication::HANDOVER_TIMEOUT;
            for child in children {
                self.dataplane.hand_over(&child);
                self.draining.insert(child.inbound_spi, until);
                self.standby.insert(child.inbound_spi, child);
            }
        }
        self.io.address_down(tunnel).await;
    }

    /// Only SAs this node staged as standby are removed: the same SPI may
    /// name an SA this node runs as owner, which its own IKE state retires.
    fn drop_standby(&mut self, inbound_spi: u32) {
        self.draining.remove(&inbound_spi);
        if self.standby.remove(&inbound_spi).is_some() {
            self.dataplane.remove_standby(inbound_spi);
        }
    }

    fn apply(&mut self, event: Event) {
        match event {
            Event::IkeSaEstablished {
                connection,
                spi_i,
                spi_r,
                remote,
                initiator,
            } => {
                crate::telemetry::ike_event("established", &connection);
                tracing::info!(%connection, spi_i = format_args!("{spi_i:016x}"), spi_r = format_args!("{spi_r:016x}"), %remote, initiator, "IKE SA established")
            }
            Event::IkeSaRekeyed {
                connection,
                old,
                new,
            } => {
                crate::telemetry::ike_event("rekeyed", &connection);
                tracing::info!(%connection, old = format_args!("{:016x}_{:016x}", old.0, old.1), new = format_args!("{:016x}_{:016x}", new.0, new.1), "IKE SA rekeyed")
            }
            Event::IkeSaClosed {
                connection,
                spi_i,
                spi_r,
                reason,
            } => {
                crate::telemetry::ike_event("closed", &connection);
                crate::telemetry::ike_closed(&connection, reason);
                // Anyone who completes an IKE_SA_INIT can fail IKE_AUTH as
                // often as they like: such setups are counted (the metric
                // and the drop summary), not logged one by one.
                use tandem_ike::endpoint::CloseReason;
                if matches!(
                    reason,
                    CloseReason::AuthenticationFailed | CloseReason::NegotiationFailed(_)
                ) {
                    tracing::debug!(%connection, ?reason, "IKE SA setup failed");
                } else {
                    tracing::info!(%connection, spi_i = format_args!("{spi_i:016x}"), spi_r = format_args!("{spi_r:016x}"), ?reason, "IKE SA closed")
                }
            }
            Event::ChildSaInstalled(child) => {
                if child.replaces.is_some() {
                    crate::telemetry::ike_event("child_rekeyed", &child.connection);
                }
                tracing::info!(
                    connection = %child.connection,
                    inbound = format_args!("{:08x}", child.inbound_spi),
                    outbound = format_args!("{:08x}", child.outbound_spi),
                    replaces = ?child.replaces.map(|s| format!("{s:08x}")),
                    "child SA installed"
                );
                if let Err(e) = self.dataplane.install(&child) {
                    tracing::error!(connection = %child.connection, error = %e, "cannot install child SA");
                }
            }
            Event::ChildSaDeleted {
                connection,
                inbound_spi,
                outbound_spi,
            } => {
                tracing::info!(%connection, inbound = format_args!("{inbound_spi:08x}"), outbound = format_args!("{outbound_spi:08x}"), "child SA deleted");
                self.dataplane.remove(inbound_spi);
            }
        }
    }

    fn command(&mut self, cmd: Command) -> Result<String, String> {
        let now = tandem_cluster::now();
        let result = match &cmd {
            Command::Status => return Ok(self.status()),
            Command::Initiate(name) => self.endpoint.initiate(now, name),
            Command::Terminate(name) => self.endpoint.terminate(now, name),
            Command::RekeyChild(name) => self.endpoint.rekey_child(now, name),
            Command::RekeyIke(name) => self.endpoint.rekey_ike(now, name),
            Command::PeerConfig { tunnel, format } => {
                return self
                    .tunnels
                    .get(tunnel)
                    .map(|c| crate::peer_config::render(&c.ike, *format))
                    .ok_or_else(|| format!("no tunnel {tunnel:?} is configured here"));
            }
            Command::MemberAdd(..)
            | Command::MemberRemove(_)
            | Command::TunnelApply { .. }
            | Command::TunnelRemove(_)
            | Command::Probe { .. }
            | Command::Handover { .. }
            | Command::Drain(_) => {
                return Err("this node is not in a cluster".into());
            }
        };
        result
            .map(|()| "done".to_owned())
            .map_err(|e| e.to_string())
    }

    fn status(&self) -> String {
        let ike_sas: Vec<_> = self
            .endpoint
            .ike_sas()
            .map(|sa| self.dataplane.describe(sa))
            .collect();
        match &self.cluster {
            Some(c) => serde_json::json!({
                "ike_sas": ike_sas,
                "owned": self.owned,
                // Caught up with the cluster since it started, holding a
                // lease: it may take tunnels over.
                "ready": self.replayed_to != u64::MAX && self.lease.valid(tandem_cluster::now()),
                "standby_child_sas": self.standby.keys().map(|s| format!("{s:08x}")).collect::<Vec<_>>(),
                "cluster": replication::describe(c),
            }),
            None => serde_json::json!({ "ike_sas": ike_sas }),
        }
        .to_string()
    }
}
