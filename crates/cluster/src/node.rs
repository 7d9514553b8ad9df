//! A running cluster member: its Raft instance, store, gRPC server, and the
//! operations the gateway and operators use (propose, bootstrap, membership).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::{RaftMetrics, SnapshotPolicy};
use tandem_rpc::raft::raft_client::RaftClient;
use tandem_rpc::raft::raft_server::RaftServer;
use tokio::sync::{Mutex, mpsc};
use tonic::transport::{Channel, Server};

use crate::lease::{LeaseTiming, LeaseWatch};
use crate::network::{Forward, Network, Service, execute, forward};
pub use crate::store::StateEvent;
use crate::store::{self, Applied, Disk};
use crate::transport::Transport;
use crate::trust::Refusals;
use crate::{Change, ClusterState, Command, Member, NodeId, Outcome, Raft, StorageKey};

/// How long a proposal may take, leader changes and forwarding included,
/// before the caller hears it failed.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Membership changes wait for a new member to catch up.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub id: NodeId,
    pub member: Member,
    pub listen: SocketAddr,
    pub disk: Disk,
    pub transport: Transport,
    pub storage_key: StorageKey,
    pub timing: RaftTiming,
}

/// How long a member that restarted waits to hear from a leader before it
/// may stand for election itself.
const QUIET_START: Duration = Duration::from_secs(2);

/// Raft timing; the defaults suit nodes on one LAN or availability zone.
#[derive(Debug, Clone, Copy)]
pub struct RaftTiming {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot (and compact the log) after this many entries.
    pub snapshot_every: u64,
}

impl Default for RaftTiming {
    fn default() -> Self {
        Self {
            // A leader change must finish well within a gateway's lease
            // (600 ms by default): a dead leader that owned tunnels holds
            // them until a new leader moves them, and healthy owners fence
            // themselves while the cluster elects. openraft's followers wait
            // `election_max` (its leader lease) plus their own timeout from
            // [min, max) after the last heartbeat, checked every 1.5
            // heartbeats: here 300-475 ms, still six heartbeats at least.
            heartbeat: Duration::from_millis(50),
            election_min: Duration::from_millis(100),
            election_max: Duration::from_millis(200),
            snapshot_every: 5_000,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    #[error("cluster config: {0}")]
    Config(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("cluster listener on {addr}: {reason}")]
    Listen { addr: SocketAddr, reason: String },
    #[error("no leader known (is a quorum of members up?)")]
    NoLeader,
    #[error("leader {leader} refused: {message}")]
    Refused { leader: String, message: String },
    #[error("leader {leader} unreachable: {reason}")]
    Unreachable { leader: String, reason: String },
    #[error("not committed within {0:?}")]
    Timeout(Duration),
    #[error("committed but refused by the state machine: {0}")]
    Rejected(String),
}

pub struct Cluster {
    id: NodeId,
    raft: Raft,
    applied: Arc<RwLock<Applied>>,
    leases: Arc<std::sync::Mutex<LeaseWatch>>,
    transport: Transport,
    /// The last lease renewal's `at_ms`.
    last_renewal: std::sync::atomic::AtomicU64,
    /// A cached channel to the leader for forwarded requests.
    leader_client: Mutex<Option<(NodeId, RaftClient<Channel>)>>,
    /// Writes are refused (to be retried) while this leader hands over.
    paused: Arc<std::sync::atomic::AtomicBool>,
    events: std::sync::Mutex<Option<mpsc::UnboundedReceiver<StateEvent>>>,
    server: tokio::task::JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Opens the store, starts Raft and serves the cluster port. A node whose
    /// data directory holds a log rejoins with it; a new one waits to be
    /// initialized or added.
    pub async fn start(cfg: ClusterConfig) -> Result<Self, ClusterError> {
        let raft_config = openraft::Config {
            cluster_name: "tandem".into(),
            heartbeat_interval: cfg.timing.heartbeat.as_millis() as u64,
            election_timeout_min: cfg.timing.election_min.as_millis() as u64,
            election_timeout_max: cfg.timing.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(cfg.timing.snapshot_every),
            max_in_snapshot_log_to_keep: 100,
            ..Default::default()
        }
        .validate()
        .map_err(|e| ClusterError::Config(e.to_string()))?;
        let (mut log, sm, events) = store::open(&cfg.disk, cfg.storage_key)
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        let had_log = openraft::storage::RaftLogStorage::get_log_state(&mut log)
            .await
            .map_err(|e| ClusterError::Storage(e.to_string()))?
            .last_log_id
            .map(|l| l.index);
        let applied = sm.applied.clone();
        let leases = sm.leases.clone();
        let network = Network {
            transport: cfg.transport.clone(),
        };
        let raft = Raft::new(cfg.id, Arc::new(raft_config), network, log, sm)
            .await
            .map_err(|e| ClusterError::Storage(e.to_string()))?;
        // A member that restarts with a log would stand for election before
        // the leader's heartbeats reach it (the leader backs off from a
        // member that was down), and its higher term deposes a healthy
        // leader: a leaderless spell in which owners' leases lapse. It
        // stands for none until it has applied an entry it did not have (so
        // a leader reached it), or for QUIET_START (the whole cluster
        // restarting); it still votes. (Its persisted vote names a leader
        // from the start, so the leader metric says nothing.)
        if let Some(had) = had_log {
            raft.runtime_config().elect(false);
            let raft = raft.clone();
            tokio::spawn(async move {
                let _ = raft
                    .wait(Some(QUIET_START))
                    .metrics(
                        |m| m.last_applied.is_some_and(|l| l.index > had),
                        "an entry from a leader",
                    )
                    .await;
                raft.runtime_config().elect(true);
            });
        }
        let listen_err = |e: &dyn std::fmt::Display| ClusterError::Listen {
            addr: cfg.listen,
            reason: e.to_string(),
        };
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut builder = Server::builder();
        if let Transport::Tls(tls) = &cfg.transport {
            builder = builder
                .tls_config(tls.server())
                .map_err(|e| ClusterError::Config(format!("TLS: {e}")))?;
        }
        let router = builder
            .tcp_nodelay(true)
            .add_service(RaftServer::new(Service {
                raft: raft.clone(),
                paused: paused.clone(),
                applied: applied.clone(),
                tls: matches!(cfg.transport, Transport::Tls(_)),
                refusals: Refusals::new("raft"),
            }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let stopped = async {
            let _ = stopped.await;
        };
        let server = match &cfg.transport {
            Transport::Tls(_) => {
                let listener = tokio::net::TcpListener::bind(cfg.listen)
                    .await
                    .map_err(|e| listen_err(&e))?;
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
                        tracing::error!(error = %e, "cluster listener stopped");
                    }
                })
            }
            Transport::Plain(links) => {
                let incoming = links.listen(cfg.listen).await.map_err(|e| listen_err(&e))?;
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
                        tracing::error!(error = %e, "cluster listener stopped");
                    }
                })
            }
        };
        Ok(Self {
            id: cfg.id,
            raft,
            applied,
            leases,
            transport: cfg.transport,
            last_renewal: std::sync::atomic::AtomicU64::new(0),
            leader_client: Mutex::new(None),
            paused,
            events: std::sync::Mutex::new(Some(events)),
            server,
            stop,
        })
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Renews this node's lease through Raft; returns when the renewal was
    /// sent, from which the lease counts once committed (see `lease`), and
    /// applied here too: by then this node's view of who owns what is at
    /// least as new as the renewal, so a node that restarted with an old log
    /// never sends for a tunnel it lost while it was down. Also returns the
    /// log index applied here by then.
    pub async fn renew_lease(&self, timing: &LeaseTiming) -> Result<(Instant, u64), ClusterError> {
        let sent = crate::now();
        // Strictly increasing, so this renewal is told apart from earlier ones.
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let applied = self.read_state(|s| s.leases.get(&self.id).map_or(0, |l| l.at_ms));
        let last = self.last_renewal.load(std::sync::atomic::Ordering::Relaxed);
        let at_ms = wall.max(applied + 1).max(last + 1);
        self.last_renewal
            .fetch_max(at_ms, std::sync::atomic::Ordering::Relaxed);
        self.propose(Command::one(Change::LeaseRenewed {
            node: self.id,
            at_ms,
            duration_ms: timing.duration.as_millis() as u64,
        }))
        .await?;
        let mut metrics = self.raft.metrics();
        while !self.read_state(|s| s.leases.get(&self.id).is_some_and(|l| l.at_ms >= at_ms)) {
            if metrics.changed().await.is_err() {
                return Err(ClusterError::NoLeader);
            }
        }
        Ok((sent, self.applied_index().unwrap_or(0)))
    }

    /// Each node's leases as this node observed them applied.
    pub fn lease_watch(&self) -> LeaseWatch {
        self.leases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Bootstraps a new cluster with these voters. Harmless on a cluster that
    /// is already initialized with the same members.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<(), ClusterError> {
        match self.raft.initialize(members).await {
            Ok(()) => Ok(()),
            Err(openraft::error::RaftError::APIError(
                openraft::error::InitializeError::NotAllowed(_),
            )) => Ok(()),
            Err(e) => Err(ClusterError::Config(e.to_string())),
        }
    }

    /// Commits a command on a quorum (forwarding to the leader if this node is
    /// not it) and returns, once the leader applied it, what applying did.
    /// A command the state machine refused (nothing of it applied) is an
    /// error naming why.
    pub async fn propose(&self, cmd: Command) -> Result<Outcome, ClusterError> {
        let outcome = self.submit(Forward::Write(cmd), PROPOSE_TIMEOUT).await?;
        match outcome.refused {
            Some(message) => Err(ClusterError::Rejected(message)),
            None => Ok(outcome),
        }
    }

    /// Adds a member: first as a learner that catches up, then as a voter
    /// (unless it is to stay a learner).
    pub async fn add_member(
        &self,
        id: NodeId,
        member: Member,
        voter: bool,
    ) -> Result<(), ClusterError> {
        self.submit(Forward::AddLearner { id, member }, MEMBERSHIP_TIMEOUT)
            .await?;
        if voter {
            let mut voters = self.voters();
            voters.insert(id);
            self.submit(Forward::ChangeVoters(voters), MEMBERSHIP_TIMEOUT)
                .await?;
        }
        Ok(())
    }

    /// Removes a member from the voters (it stops receiving the log).
    pub async fn remove_member(&self, id: NodeId) -> Result<(), ClusterError> {
        let mut voters = self.voters();
        voters.remove(&id);
        self.submit(Forward::ChangeVoters(voters), MEMBERSHIP_TIMEOUT)
            .await
            .map(drop)
    }

    /// If this node leads, has another voter stand for election and waits
    /// (up to `within`) until it leads instead: a leader that stops without
    /// this leaves the cluster without one for an election timeout, long
    /// enough for owners' leases to lapse. Writes pause meanwhile, so the
    /// candidate's log can match this node's (which votes for it only
    /// then: its own leader lease, within which openraft refuses votes,
    /// dates from its election, long past).
    pub async fn hand_leadership_over(&self, within: Duration) -> Result<(), ClusterError> {
        use std::sync::atomic::Ordering;
        if self.metrics().current_leader != Some(self.id) {
            return Ok(());
        }
        self.paused.store(true, Ordering::Relaxed);
        let result = tokio::time::timeout(within, self.elect_another(within)).await;
        self.paused.store(false, Ordering::Relaxed);
        result.map_err(|_| ClusterError::NoLeader)?
    }

    async fn elect_another(&self, within: Duration) -> Result<(), ClusterError> {
        let voters = self.voters();
        // The first voter whose log matches this node's, once what was
        // appended before the pause has replicated.
        let caught_up = |m: &RaftMetrics<NodeId, Member>| {
            let matched = m.replication.as_ref()?;
            voters.iter().copied().find(|id| {
                *id != self.id
                    && matched.get(id).copied().flatten().map(|l| l.index) == m.last_log_index
            })
        };
        let wait = self.raft.wait(Some(within));
        let metrics = wait
            .metrics(|m| caught_up(m).is_some(), "a voter caught up")
            .await
            .map_err(|_| ClusterError::NoLeader)?;
        let to = caught_up(&metrics).ok_or(ClusterError::NoLeader)?;
        let member = self
            .members()
            .remove(&to)
            .ok_or_else(|| ClusterError::Config(format!("node {to} has no address")))?;
        self.forward_to(to, &member, &Forward::Elect, PROPOSE_TIMEOUT)
            .await
            .map_err(|r| match r {
                Retry::Yes(e) | Retry::No(e) => e,
            })?;
        wait.metrics(|m| m.current_leader != Some(self.id), "another leader")
            .await
            .map(drop)
            .map_err(|_| ClusterError::NoLeader)
    }

    /// Voter ids in the last applied membership.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.read().membership.membership().voter_ids().collect()
    }

    /// Every member in the last applied membership, voters and learners.
    pub fn members(&self) -> BTreeMap<NodeId, Member> {
        self.read()
            .membership
            .membership()
            .nodes()
            .map(|(id, m)| (*id, m.clone()))
            .collect()
    }

    /// A copy of the replicated state as applied on this node.
    pub fn state(&self) -> ClusterState {
        self.read().state.clone()
    }

    /// Reads the applied state in place: for periodic checks that need a few
    /// fields, where a clone of every SA (keys included) would be waste.
    pub fn read_state<R>(&self, f: impl FnOnce(&ClusterState) -> R) -> R {
        f(&self.read().state)
    }

    /// Index of the last entry applied on this node.
    pub fn applied_index(&self) -> Option<u64> {
        self.read().last_applied.map(|l| l.index)
    }

    /// The stream of applied changes, for the one consumer that keeps this
    /// node's dataplane in step (taken once).
    pub fn take_events(&self) -> Option<mpsc::UnboundedReceiver<StateEvent>> {
        self.events.lock().ok().and_then(|mut e| e.take())
    }

    pub fn metrics(&self) -> RaftMetrics<NodeId, Member> {
        self.raft.metrics().borrow().clone()
    }

    pub async fn shutdown(self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        // A graceful stop sends GOAWAY on open connections, so peers reconnect
        // (to a restarted node) instead of talking to a stopped Raft.
        let _ = self.stop.send(());
        let mut server = self.server;
        if tokio::time::timeout(Duration::from_secs(1), &mut server)
            .await
            .is_err()
        {
            server.abort();
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Applied> {
        self.applied
            .read()
            .unwrap_or_else(|_| panic!("state machine lock poisoned"))
    }

    async fn submit(&self, fwd: Forward, timeout: Duration) -> Result<Outcome, ClusterError> {
        let mut last = ClusterError::NoLeader;
        let attempts = async {
            let mut backoff = Duration::from_millis(20);
            loop {
                let failure = match execute(&self.raft, &self.paused, &fwd).await {
                    Ok(outcome) => return Ok(outcome),
                    Err(f) => f,
                };
                match failure.not_leader {
                    None if failure.busy => {
                        last = ClusterError::Refused {
                            leader: format!("node {}", self.id),
                            message: failure.message,
                        };
                    }
                    None => {
                        return Err(ClusterError::Refused {
                            leader: format!("node {}", self.id),
                            message: failure.message,
                        });
                    }
                    Some(Some((leader, member))) if leader != self.id => {
                        match self.forward_to(leader, &member, &fwd, timeout).await {
                            Ok(outcome) => return Ok(outcome),
                            Err(Retry::No(e)) => return Err(e),
                            // The leader died or moved on: ask again.
                            Err(Retry::Yes(e)) => last = e,
                        }
                    }
                    // An election is under way (or this node was just elected).
                    Some(_) => last = ClusterError::NoLeader,
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_millis(250));
            }
        };
        let result = tokio::time::timeout(timeout, attempts).await;
        match result {
            Ok(r) => r,
            Err(_) => Err(match last {
                ClusterError::NoLeader => ClusterError::Timeout(timeout),
                other => other,
            }),
        }
    }

    async fn forward_to(
        &self,
        leader: NodeId,
        member: &Member,
        fwd: &Forward,
        timeout: Duration,
    ) -> Result<Outcome, Retry> {
        // The lock covers the cache only, never a call: forwarded requests
        // (lease renewals among them) must not queue behind one that waits
        // on a leader that just died. A tonic client clones cheaply.
        let cached = match &*self.leader_client.lock().await {
            Some((id, c)) if *id == leader => Some(c.clone()),
            _ => None,
        };
        let mut client = match cached {
            Some(c) => c,
            None => self.transport.connect(member).await.map_err(|e| {
                Retry::Yes(ClusterError::Unreachable {
                    leader: member.to_string(),
                    reason: e.to_string(),
                })
            })?,
        };
        let answer = forward(&mut client, fwd, timeout).await;
        {
            let mut cache = self.leader_client.lock().await;
            if answer.is_ok() {
                *cache = Some((leader, client));
            } else if cache.as_ref().is_some_and(|(id, _)| *id == leader) {
                // Drop a channel that failed, as before: the next call dials.
                *cache = None;
            }
        }
        match answer {
            Ok(result) => result.map_err(|f| {
                let e = ClusterError::Refused {
                    leader: member.to_string(),
                    message: f.message,
                };
                if f.not_leader.is_some() || f.busy {
                    Retry::Yes(e)
                } else {
                    Retry::No(e)
                }
            }),
            Err(reason) => Err(Retry::Yes(ClusterError::Unreachable {
                leader: member.to_string(),
                reason,
            })),
        }
    }
}

/// A failed forward: worth asking again (the leader moved or died) or final.
enum Retry {
    Yes(ClusterError),
    No(ClusterError),
}
