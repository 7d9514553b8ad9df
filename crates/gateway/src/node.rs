//! One gateway node: binds UDP 500/4500 on the listen addresses, opens the TUN
//! device, and runs the main loop that feeds the sans-IO IKE endpoint and ESP
//! dataplane and carries out what they return.
//!
//! Socket and TUN reads happen in small reader tasks that only move bytes; all
//! protocol state lives in the one main loop, so nothing is shared or locked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tandem_crypto::OsRandom;
use tandem_ike::endpoint::{Endpoint, Event, Transmit};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tun_rs::AsyncDevice;

use crate::config::Config;
use crate::control::{self, Command, Request};
use crate::dataplane::{Dataplane, Decapsulated};
use crate::tun;

/// Largest datagram we read: IKE messages and ESP packets both fit (jumbo frames
/// included); anything longer is truncated by the kernel and then fails to parse.
const MAX_DATAGRAM: usize = 9216;
/// How many queued inputs one main-loop turn takes before it looks at timers
/// again: big enough to batch ESP work, small enough to keep IKE timely.
const BATCH: usize = 64;

/// RFC 3948 section 2.2: IKE on port 4500 is preceded by four zero bytes.
const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// Something the main loop has to react to.
enum Input {
    Udp {
        local: SocketAddr,
        remote: SocketAddr,
        data: Vec<u8>,
    },
    Tun(Vec<u8>),
}

pub async fn run(config: Config) -> anyhow::Result<()> {
    let tun_dev = Arc::new(tun::open(&config.tun_name, config.tun_mtu)?);
    let routes = tun::Routes::new(&config.tun_name).await?;
    for conn in &config.connections {
        for &(addr, len) in &conn.remote_prefixes {
            routes.add(addr, len).await?;
        }
    }

    let (input_tx, mut input_rx) = mpsc::channel::<Input>(4096);
    let mut sockets = BTreeMap::new();
    for (ike, natt) in config.ike_addrs() {
        for addr in [ike, natt] {
            let socket = Arc::new(
                UdpSocket::bind(addr)
                    .await
                    .with_context(|| format!("cannot bind UDP {addr}"))?,
            );
            tokio::spawn(read_udp(socket.clone(), addr, input_tx.clone()));
            sockets.insert(addr, socket);
        }
    }
    tokio::spawn(read_tun(tun_dev.clone(), input_tx.clone()));

    let (ctl_tx, mut ctl_rx) = mpsc::channel::<Request>(16);
    control::serve(&config.control_socket, ctl_tx)?;

    let mut node = Node {
        endpoint: Endpoint::new(
            config.connections.iter().map(|c| c.ike.clone()).collect(),
            config.limits,
            Box::new(OsRandom),
        ),
        dataplane: Dataplane::new(
            config
                .connections
                .iter()
                .map(|c| (c.ike.name.clone(), c.replay_window))
                .collect(),
        ),
        sockets,
        tun: tun_dev,
        natt_port: config.natt_port,
    };

    let now = Instant::now();
    for conn in config.connections.iter().filter(|c| c.initiate) {
        if let Err(e) = node.endpoint.initiate(now, &conn.ike.name) {
            tracing::warn!(connection = %conn.ike.name, error = %e, "cannot initiate");
        }
    }
    node.flush().await;

    tracing::info!(node = %config.node_name, connections = config.connections.len(), "tandemd ready");
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install SIGTERM handler")?;
    let mut batch = Vec::with_capacity(BATCH);
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
                node.endpoint.handle_timeout(Instant::now());
            }
            Some((cmd, reply)) = ctl_rx.recv() => {
                let _ = reply.send(node.command(cmd));
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
        node.flush().await;
    }
    tracing::info!("tandemd stopping");
    Ok(())
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
                if tx.send(Input::Tun(buf[..n].to_vec())).await.is_err() {
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

async fn send(
    sockets: &BTreeMap<SocketAddr, Arc<UdpSocket>>,
    local: SocketAddr,
    remote: SocketAddr,
    datagram: &[u8],
) {
    let Some(socket) = sockets.get(&local) else {
        tracing::warn!(%local, "no socket bound for this address; datagram dropped");
        return;
    };
    if let Err(e) = socket.send_to(datagram, remote).await {
        tracing::debug!(%local, %remote, error = %e, "UDP send failed");
    }
}

struct Node {
    endpoint: Endpoint,
    dataplane: Dataplane,
    sockets: BTreeMap<SocketAddr, Arc<UdpSocket>>,
    tun: Arc<AsyncDevice>,
    natt_port: u16,
}

impl Node {
    async fn handle_inputs(&mut self, batch: &mut Vec<Input>) {
        let now = Instant::now();
        let mut outbound = Vec::new();
        for input in batch.drain(..) {
            match input {
                Input::Udp {
                    local,
                    remote,
                    mut data,
                } => {
                    if local.port() != self.natt_port {
                        self.endpoint.handle(now, local, remote, &data);
                        continue;
                    }
                    match self.dataplane.decapsulate(&mut data) {
                        Decapsulated::Ike(range) => {
                            self.endpoint.handle(now, local, remote, &data[range]);
                        }
                        Decapsulated::Inner(range) => {
                            if let Err(e) = self.tun.send(&data[range]).await {
                                tracing::debug!(error = %e, "TUN write failed");
                            }
                        }
                        Decapsulated::Nothing => {}
                    }
                }
                Input::Tun(packet) => outbound.push(packet),
            }
        }
        if !outbound.is_empty() {
            let n = self.dataplane.encapsulate(&outbound);
            for i in 0..n {
                if let Some((local, remote, datagram)) = self.dataplane.sealed(i) {
                    send(&self.sockets, local, remote, datagram).await;
                }
            }
        }
    }

    /// Sends what the endpoint queued and applies the state changes it made.
    async fn flush(&mut self) {
        while let Some(Transmit {
            local,
            remote,
            datagram,
        }) = self.endpoint.poll_transmit()
        {
            if local.port() == self.natt_port {
                let mut framed = Vec::with_capacity(NON_ESP_MARKER.len() + datagram.len());
                framed.extend_from_slice(&NON_ESP_MARKER);
                framed.extend_from_slice(&datagram);
                send(&self.sockets, local, remote, &framed).await;
            } else {
                send(&self.sockets, local, remote, &datagram).await;
            }
        }
        while let Some(event) = self.endpoint.poll_event() {
            self.apply(event);
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
                tracing::info!(%connection, spi_i = format_args!("{spi_i:016x}"), spi_r = format_args!("{spi_r:016x}"), %remote, initiator, "IKE SA established")
            }
            Event::IkeSaRekeyed {
                connection,
                old,
                new,
            } => {
                tracing::info!(%connection, old = format_args!("{:016x}_{:016x}", old.0, old.1), new = format_args!("{:016x}_{:016x}", new.0, new.1), "IKE SA rekeyed")
            }
            Event::IkeSaClosed {
                connection,
                spi_i,
                spi_r,
                reason,
            } => {
                tracing::info!(%connection, spi_i = format_args!("{spi_i:016x}"), spi_r = format_args!("{spi_r:016x}"), ?reason, "IKE SA closed")
            }
            Event::ChildSaInstalled(child) => {
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
                self.dataplane.remove(inbound_spi, outbound_spi);
            }
        }
    }

    fn command(&mut self, cmd: Command) -> Result<String, String> {
        let now = Instant::now();
        let result = match &cmd {
            Command::Status => return Ok(self.status()),
            Command::Initiate(name) => self.endpoint.initiate(now, name),
            Command::Terminate(name) => self.endpoint.terminate(now, name),
            Command::RekeyChild(name) => self.endpoint.rekey_child(now, name),
            Command::RekeyIke(name) => self.endpoint.rekey_ike(now, name),
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
        serde_json::json!({ "ike_sas": ike_sas }).to_string()
    }
}
