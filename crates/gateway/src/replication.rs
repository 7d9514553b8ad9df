//! The gateway's side of the cluster: starting this node's Raft member from
//! `[cluster]`, committing what the IKE endpoint changed before its datagrams
//! leave (DESIGN.md invariant 1), assigning tunnel owners, and describing the
//! replicated state for `tandemd ctl status`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tandem_cluster::lease::LeaseTiming;
use tandem_cluster::node::RaftTiming;
use tandem_cluster::ownership::{self, Mode};
use tandem_cluster::tls::NodeTls;
use tandem_cluster::{
    Change, Cluster, ClusterConfig, Command, Disk, Grant, NodeId, StorageKey, Transport,
};
use tandem_ike::endpoint::{Event, Transmit};
use tandem_ike::record::IkeSaChange;
use tokio::sync::mpsc;

use crate::config::ClusterSettings;

/// What one turn of the main loop produced: held back until its changes are
/// committed, then released in order.
#[derive(Debug, Default)]
pub struct Step {
    pub transmits: Vec<Transmit>,
    pub events: Vec<Event>,
    /// The sequence-number blocks the state machine granted this node with
    /// the step's child SAs, as it reported them once the step committed.
    pub grants: Vec<Grant>,
    /// The tunnels whose IKE state the step commits: it is released only if
    /// this node still owns them once it is committed.
    pub tunnels: BTreeSet<String>,
    /// Our SPIs of the IKE SAs whose records the step commits.
    pub ike_sas: Vec<u64>,
    /// Set when the commit failed: its datagrams are gone, and its IKE SAs
    /// are to be committed again with the next step.
    pub failed: bool,
}

/// Steps waiting for their commit, at most: past this a node takes no more
/// IKE datagrams (they are dropped and counted; peers retransmit) until
/// the queue drains, so a burst of IKE cannot grow memory without bound or
/// delay every reply behind a queue of seconds. Timers keep what is left
/// ([`COMMIT_HEADROOM`]).
pub const COMMIT_QUEUE: usize = 512;
pub const COMMIT_HEADROOM: usize = 64;

/// Sequence numbers reserved per Raft commit. A new owner skips what is left
/// of the old owner's block, at most this many numbers per failover; at
/// 100,000 packets a second a block lasts 0.6 s, and the next one is asked
/// for at half of it.
pub const SEQ_BLOCK: u64 = 1 << 16;

/// What background commits report to the main loop.
#[derive(Debug)]
pub enum Background {
    /// A lease renewal sent at `sent` is committed, and applied here up to
    /// log index `applied`.
    LeaseRenewed { sent: Instant, applied: u64 },
    /// A reservation is committed and granted this block.
    Reserved(Grant),
    /// A reservation for the child with this inbound SPI failed or was not
    /// granted (this node no longer owns the SA); it may be asked for again.
    ReserveFailed(u32),
}

impl Step {
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.events.is_empty()
    }
}

/// Starts this node's cluster member; the lowest-id member bootstraps the
/// cluster from the configured voters on its first start.
pub async fn start(node_name: &str, settings: &ClusterSettings) -> anyhow::Result<Arc<Cluster>> {
    let tls = NodeTls::from_dir(&settings.pki_dir, node_name)
        .with_context(|| format!("cluster TLS material in {}", settings.pki_dir.display()))?;
    let storage_key = StorageKey::load(&settings.pki_dir.join("storage.key"))?;
    join(
        settings,
        Disk::Dir(settings.data_dir.clone()),
        Transport::Tls(tls),
        storage_key,
    )
    .await
}

/// Starts this node's cluster member on `disk`, talking to the others over
/// `transport`: what [`start`] does with tandemd's files and TLS, and what
/// the failover simulator does with its own disks and links.
pub async fn join(
    settings: &ClusterSettings,
    disk: Disk,
    transport: Transport,
    storage_key: StorageKey,
) -> anyhow::Result<Arc<Cluster>> {
    let cluster = Cluster::start(ClusterConfig {
        id: settings.id,
        member: settings.members[&settings.id].clone(),
        listen: settings.listen,
        disk,
        transport,
        storage_key,
        timing: RaftTiming {
            snapshot_every: settings.snapshot_every,
            ..RaftTiming::default()
        },
    })
    .await?;
    // Only the lowest id bootstraps: when every member does, their first
    // elections compete and the cluster takes longer to settle. The others
    // learn the membership from its leader.
    if settings.members.keys().next() == Some(&settings.id) {
        cluster.initialize(settings.members.clone()).await?;
    }
    Ok(Arc::new(cluster))
}

/// The command that replicates one step's changes; empty if it changed no SA.
/// Child SAs of tunnels this node `owned` come with their first block of
/// sequence numbers; any other node may not send on them.
pub fn command_for(
    node: NodeId,
    changes: Vec<IkeSaChange>,
    events: &[Event],
    owned: &BTreeSet<String>,
) -> Command {
    let mut out: Vec<Change> = changes
        .into_iter()
        .map(|c| match c {
            IkeSaChange::Upsert(record) => Change::IkeSaCommitted { by: node, record },
            IkeSaChange::Removed(our_spi) => Change::IkeSaRemoved { our_spi },
        })
        .collect();
    for event in events {
        match event {
            Event::ChildSaInstalled(child) => {
                out.push(Change::ChildSaInstalled(Box::new(child.clone())));
                if owned.contains(&child.connection) {
                    out.push(Change::SeqBlockReservedFor {
                        inbound_spi: child.inbound_spi,
                        node,
                        count: SEQ_BLOCK,
                    });
                }
            }
            Event::ChildSaDeleted { inbound_spi, .. } => out.push(Change::ChildSaDeleted {
                inbound_spi: *inbound_spi,
            }),
            _ => {}
        }
    }
    Command { changes: out }
}

/// Commits steps one at a time, in order, and hands each back to the main loop
/// once committed. A step whose commit failed loses its datagrams: the peer
/// retransmits, the endpoint answers from its cache, and that step commits the
/// SA's record again.
pub async fn commit_steps(
    cluster: Arc<Cluster>,
    mut steps: mpsc::Receiver<(Command, Step)>,
    committed: mpsc::UnboundedSender<Step>,
) {
    while let Some((cmd, mut step)) = steps.recv().await {
        if !cmd.changes.is_empty() {
            let started = tandem_cluster::now();
            let result = cluster.propose(cmd).await;
            crate::telemetry::committed(tandem_cluster::since(started), result.is_ok());
            match result {
                Ok(outcome) => {
                    tracing::debug!(took = ?tandem_cluster::since(started), "IKE state committed");
                    step.grants = outcome.granted;
                }
                Err(e) => {
                    tracing::error!(error = %e, "IKE state not committed; its datagrams are withheld");
                    step.transmits.clear();
                    step.failed = true;
                }
            }
        }
        if committed.send(step).is_err() {
            return;
        }
    }
}

/// Tunnel ownership, on every member (a witness included: it may be the
/// leader). Every gateway proposes first owners for its configured tunnels
/// that have none (the state machine keeps the first); the leader moves the
/// tunnels of gateways whose lease it has seen lapse.
pub async fn manage_owners(
    cluster: Arc<Cluster>,
    configured: Vec<String>,
    mode: Mode,
    lease: LeaseTiming,
) {
    // Renewals stall while the cluster elects, so right after an election
    // every gateway's lease looks lapsed to the new leader; it judges only
    // once live gateways have had a renewal period to renew through it.
    let mut leader_since: Option<Instant> = None;
    loop {
        // Twice per renewal period: a lapsed lease is acted on within ~40 ms.
        tokio::time::sleep(lease.renew_every / 2).await;
        let leading = cluster.metrics().current_leader == Some(cluster.id());
        leader_since = match (leading, leader_since) {
            (true, Some(t)) => Some(t),
            (true, None) => Some(tandem_cluster::now()),
            (false, _) => None,
        };
        let voters = cluster.voters();
        let gateways: BTreeSet<NodeId> = cluster
            .members()
            .into_iter()
            .filter(|(id, m)| !m.witness && voters.contains(id))
            .map(|(id, _)| id)
            .collect();
        let judge = leader_since.is_some_and(|t| tandem_cluster::since(t) >= lease.renew_every);
        let live = judge.then(|| live_gateways(&cluster, &lease, gateways.iter().copied()));
        let (mut changes, moves) = cluster.read_state(|state| {
            (
                ownership::assign_unowned(
                    mode,
                    state,
                    &ownership::configured_tunnels(state, &configured),
                    &gateways,
                ),
                live.map(|live| ownership::reassign(mode, state, &gateways, &live))
                    .unwrap_or_default(),
            )
        });
        for m in &moves {
            tracing::warn!(?m, "moving a tunnel off a gateway whose lease lapsed");
        }
        changes.extend(moves);
        if !changes.is_empty()
            && let Err(e) = cluster.propose(Command { changes }).await
        {
            tracing::warn!(error = %e, "cannot commit tunnel owners");
        }
    }
}

/// Those of `candidates` whose lease this node has not seen lapse.
fn live_gateways(
    cluster: &Cluster,
    lease: &LeaseTiming,
    candidates: impl Iterator<Item = NodeId>,
) -> BTreeSet<NodeId> {
    let watch = cluster.lease_watch();
    let now = tandem_cluster::now();
    candidates
        .filter(|g| !watch.expired(lease, *g, now))
        .collect()
}

/// Renews this gateway's lease every `renew_every`, each renewal in its own
/// task so one slow commit does not delay the next; none while the node is
/// not `healthy` (a link down), so the cluster moves its tunnels away and
/// places none on it.
pub async fn renew_leases(
    cluster: Arc<Cluster>,
    lease: LeaseTiming,
    healthy: Arc<std::sync::atomic::AtomicBool>,
    report: mpsc::UnboundedSender<Background>,
) {
    let mut every = tokio::time::interval(lease.renew_every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        if !healthy.load(std::sync::atomic::Ordering::Relaxed) {
            continue;
        }
        let (cluster, report) = (cluster.clone(), report.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(lease.duration, cluster.renew_lease(&lease)).await {
                Ok(Ok((sent, applied))) => {
                    let _ = report.send(Background::LeaseRenewed { sent, applied });
                }
                Ok(Err(e)) => tracing::debug!(error = %e, "lease renewal failed"),
                Err(_) => tracing::debug!("lease renewal timed out"),
            }
        });
    }
}

/// Reserves the next block of outbound sequence numbers for the child
/// whose inbound SPI is `inbound_spi`
/// and reports the block the state machine granted, which is all this node
/// may use: it starts after every number reserved before, whatever this
/// node believed when it asked.
pub fn reserve(cluster: Arc<Cluster>, inbound_spi: u32, report: mpsc::UnboundedSender<Background>) {
    tokio::spawn(async move {
        let change = Change::SeqBlockReservedFor {
            inbound_spi,
            node: cluster.id(),
            count: SEQ_BLOCK,
        };
        let done = match cluster.propose(Command::one(change)).await {
            Ok(outcome) => match outcome
                .granted
                .into_iter()
                .find(|g| g.inbound_spi == inbound_spi)
            {
                Some(grant) => Background::Reserved(grant),
                None => {
                    tracing::info!(
                        inbound = format_args!("{inbound_spi:08x}"),
                        "sequence reservation not granted: the SA has another owner now"
                    );
                    Background::ReserveFailed(inbound_spi)
                }
            },
            Err(e) => {
                tracing::warn!(inbound = format_args!("{inbound_spi:08x}"), error = %e, "sequence reservation failed");
                Background::ReserveFailed(inbound_spi)
            }
        };
        let _ = report.send(done);
    });
}

/// How long a planned handover may take, from its first commit until every
/// new owner runs its tunnels; the new owner gives up holding traffic
/// after this too.
pub const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Planned handover (DESIGN.md "Failover"), make before break: commits a
/// [`Change::HandoverPrepared`] per tunnel with the final replay marks. Each
/// new owner takes the addresses at once, so the peer and the LAN send to it
/// while the old owner still runs the tunnel (it decrypts as hot standby and
/// holds what it cannot seal yet), then proposes the transfer itself (see
/// [`transfer`]). Waits until every new owner runs its tunnels. `cmd` is a
/// handover (one tunnel to one node) or a drain (every tunnel of a node to
/// wherever placement puts it among the other live gateways).
pub fn handover(
    cluster: Arc<Cluster>,
    cmd: crate::control::Command,
    marks: Vec<(u32, u64)>,
    (mode, lease): (Mode, LeaseTiming),
    reply: tokio::sync::oneshot::Sender<Result<String, String>>,
) {
    tokio::spawn(async move {
        let result = async {
            let state = cluster.state();
            let (moves, avoid): (Vec<(String, Option<NodeId>)>, _) = match cmd {
                crate::control::Command::Handover { tunnel, to } => {
                    (vec![(tunnel, Some(to))], None)
                }
                crate::control::Command::Drain(node) => (
                    state
                        .owners
                        .iter()
                        .filter(|(_, owner)| **owner == node)
                        .map(|(t, _)| (t.clone(), None))
                        .collect(),
                    Some(node),
                ),
                _ => return Err("not a handover".to_owned()),
            };
            let live = live_gateways(
                &cluster,
                &lease,
                cluster
                    .members()
                    .into_iter()
                    .filter(|(id, m)| !m.witness && Some(*id) != avoid)
                    .map(|(id, _)| id),
            );
            let tunnels: BTreeSet<String> = state.owners.keys().cloned().collect();
            let mut changes: Vec<Change> = marks
                .into_iter()
                .map(|(inbound_spi, highest)| Change::ReplayMarkSynced {
                    inbound_spi,
                    highest,
                })
                .collect();
            let mut moved = Vec::new();
            for (tunnel, to) in moves {
                let from = *state
                    .owners
                    .get(&tunnel)
                    .ok_or_else(|| format!("no tunnel {tunnel:?} has an owner"))?;
                let to = match to {
                    Some(to) if live.contains(&to) => to,
                    Some(to) => {
                        return Err(format!("node {to} is not a gateway with a live lease"));
                    }
                    None => ownership::place(mode, &tunnel, &tunnels, &live)
                        .ok_or("no other gateway has a live lease")?,
                };
                if from != to {
                    changes.push(Change::HandoverPrepared {
                        tunnel: tunnel.clone(),
                        from,
                        to,
                    });
                    moved.push((tunnel, from, to));
                }
            }
            let report: Vec<_> = moved
                .iter()
                .map(|(tunnel, from, to)| serde_json::json!({"tunnel": tunnel, "from": from, "to": to}))
                .collect();
            if moved.is_empty() {
                return Ok(serde_json::json!({ "moved": report }).to_string());
            }
            let started = tandem_cluster::now();
            cluster
                .propose(Command { changes })
                .await
                .map_err(|e| e.to_string())?;
            let pending = || -> Vec<String> {
                cluster.read_state(|s| {
                    moved
                        .iter()
                        .filter(|(tunnel, _, to)| s.owners.get(tunnel) != Some(to))
                        .map(|(tunnel, _, to)| format!("{tunnel} to node {to}"))
                        .collect()
                })
            };
            // Each entry applied here updates the metrics: no need to poll.
            if cluster
                .raft()
                .wait(Some(HANDOVER_TIMEOUT.saturating_sub(tandem_cluster::since(started))))
                .metrics(|_| pending().is_empty(), "the new owners")
                .await
                .is_err()
            {
                return Err(format!(
                    "handover not completed within {} s: {}",
                    HANDOVER_TIMEOUT.as_secs(),
                    pending().join(", ")
                ));
            }
            Ok(serde_json::json!({
                "moved": report,
                "commit_us": tandem_cluster::since(started).as_micros(),
            })
            .to_string())
        }
        .await;
        let _ = reply.send(result);
    });
}

/// The new owner's half of a planned handover: commits the transfer with its
/// first sequence-number block (so it sends as soon as it applies it, no
/// second commit in the gap), then an empty entry at once, whose append
/// carries the new commit index to every follower: the old owner (which
/// stops sending) and the new one apply the transfer within a millisecond of
/// each other instead of at the next heartbeat.
pub fn transfer(cluster: Arc<Cluster>, tunnel: String, from: NodeId, to: NodeId) {
    tokio::spawn(async move {
        let mut changes = vec![Change::OwnerTransferred {
            tunnel: tunnel.clone(),
            from,
            to,
        }];
        changes.extend(cluster.read_state(|s| {
            s.child_sas
                .values()
                .filter(|c| c.connection == tunnel)
                .map(|child| Change::SeqBlockReservedFor {
                    inbound_spi: child.inbound_spi,
                    node: to,
                    count: SEQ_BLOCK,
                })
                .collect::<Vec<_>>()
        }));
        let done = async {
            cluster.propose(Command { changes }).await?;
            cluster
                .propose(Command {
                    changes: Vec::new(),
                })
                .await
        };
        if let Err(e) = done.await {
            tracing::warn!(%tunnel, error = %e, "planned handover: transfer not committed");
        }
    });
}

/// Commits inbound replay high-water marks (invariant 4), fire and forget:
/// a lost sync only widens the residual replay window until the next one.
pub fn sync_replay_marks(cluster: Arc<Cluster>, marks: Vec<(u32, u64)>) {
    tokio::spawn(async move {
        let changes = marks
            .into_iter()
            .map(|(inbound_spi, highest)| Change::ReplayMarkSynced {
                inbound_spi,
                highest,
            })
            .collect();
        if let Err(e) = cluster.propose(Command { changes }).await {
            tracing::debug!(error = %e, "replay marks not synced");
        }
    });
}

/// Commits probe entries off the main loop and reports their latency (the
/// proposing node's view: forwarding to the leader included).
pub fn probe(
    cluster: Arc<Cluster>,
    count: u64,
    writers: u64,
    bytes: usize,
    reply: tokio::sync::oneshot::Sender<Result<String, String>>,
) {
    tokio::spawn(async move {
        let base = cluster
            .state()
            .probes
            .get(&cluster.id())
            .copied()
            .unwrap_or(0);
        let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let started = tandem_cluster::now();
        let tasks: Vec<_> = (0..writers)
            .map(|_| {
                let (cluster, next) = (cluster.clone(), next.clone());
                tokio::spawn(async move {
                    let mut took = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= count {
                            return Ok::<_, String>(took);
                        }
                        let cmd = Command::one(Change::Probe {
                            node: cluster.id(),
                            seq: base + i + 1,
                            padding: vec![0x5a; bytes],
                        });
                        let t = tandem_cluster::now();
                        cluster.propose(cmd).await.map_err(|e| e.to_string())?;
                        took.push(tandem_cluster::since(t));
                    }
                })
            })
            .collect();
        let mut took = Vec::with_capacity(count as usize);
        for task in tasks {
            match task.await {
                Ok(Ok(t)) => took.extend(t),
                Ok(Err(e)) => {
                    let _ = reply.send(Err(format!("probe commit failed: {e}")));
                    return;
                }
                Err(e) => {
                    let _ = reply.send(Err(format!("probe writer failed: {e}")));
                    return;
                }
            }
        }
        let elapsed = tandem_cluster::since(started);
        took.sort();
        let pct = |p: f64| -> u128 {
            took.get(((took.len() as f64 * p) as usize).min(took.len().saturating_sub(1)))
                .map_or(0, |d| d.as_micros())
        };
        let report = serde_json::json!({
            "count": took.len(),
            "writers": writers,
            "bytes": bytes,
            "p50_us": pct(0.50),
            "p99_us": pct(0.99),
            "max_us": took.last().map_or(0, |d| d.as_micros()),
            "commits_per_sec": (took.len() as f64 / elapsed.as_secs_f64()).round(),
            "last_seq": base + count,
        });
        let _ = reply.send(Ok(report.to_string()));
    });
}

/// Runs a membership change off the main loop and answers the operator.
pub fn change_members(
    cluster: Arc<Cluster>,
    cmd: crate::control::Command,
    reply: tokio::sync::oneshot::Sender<Result<String, String>>,
) {
    use crate::control::Command;
    tokio::spawn(async move {
        let members = cluster.members();
        let result = match cmd {
            Command::MemberAdd(id, _) if members.contains_key(&id) => Err(format!(
                "member {id} exists ({}): remove it first to replace it",
                members[&id]
            )),
            Command::MemberAdd(id, member) => {
                let added = serde_json::json!({
                    "added": id, "name": member.name, "addr": member.addr, "witness": member.witness,
                });
                cluster
                    .add_member(id, member, true)
                    .await
                    .map(|()| added.to_string())
                    .map_err(|e| e.to_string())
            }
            Command::MemberRemove(id) if !members.contains_key(&id) => Err(format!(
                "no member {id}: the members are {:?}",
                members.keys().collect::<Vec<_>>()
            )),
            Command::MemberRemove(id) => cluster
                .remove_member(id)
                .await
                .map(|()| serde_json::json!({ "removed": id }).to_string())
                .map_err(|e| e.to_string()),
            _ => return,
        };
        let _ = reply.send(result);
    });
}

/// The cluster as this node sees it, and the replicated SAs (key fingerprints,
/// never keys), for `tandemd ctl status`.
pub fn describe(cluster: &Cluster) -> serde_json::Value {
    let m = cluster.metrics();
    let voters: BTreeSet<NodeId> = cluster.voters();
    let members: Vec<_> = cluster
        .members()
        .into_iter()
        .map(|(id, member)| {
            serde_json::json!({
                "id": id,
                "name": member.name,
                "addr": member.addr,
                "witness": member.witness,
                "voter": voters.contains(&id),
            })
        })
        .collect();
    let state = cluster.state();
    let fp = |s: &tandem_crypto::Secret| s.fingerprint();
    let ike_sas: Vec<_> = state
        .ike_sas
        .values()
        .map(|sa| {
            let r = &sa.record;
            let k = &r.keys;
            serde_json::json!({
                "connection": r.connection,
                "spi_i": format!("{:016x}", r.spi_i),
                "spi_r": format!("{:016x}", r.spi_r),
                "committed_by": sa.by,
                "rekeyed": r.rekeyed,
                "next_send_id": r.next_send_id,
                "next_expected_id": r.next_expected_id,
                "last_response_id": r.last_response.as_ref().map(|(id, _)| *id),
                "keys": {
                    "sk_d": fp(&k.sk_d),
                    "sk_ei": fp(&k.sk_ei),
                    "sk_er": fp(&k.sk_er),
                    "sk_ai": k.sk_ai.as_ref().map(fp),
                    "sk_ar": k.sk_ar.as_ref().map(fp),
                    "sk_pi": fp(&k.sk_pi),
                    "sk_pr": fp(&k.sk_pr),
                },
                "children": r.children.iter().map(|c| format!("{:08x}", c.inbound_spi)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let child_sas: Vec<_> = state
        .child_sas
        .values()
        .map(|c| {
            serde_json::json!({
                "connection": c.connection,
                "inbound_spi": format!("{:08x}", c.inbound_spi),
                "outbound_spi": format!("{:08x}", c.outbound_spi),
                "keys": {
                    "inbound_encr": fp(&c.inbound_encr_key),
                    "inbound_integ": c.inbound_integ_key.as_ref().map(fp),
                    "outbound_encr": fp(&c.outbound_encr_key),
                    "outbound_integ": c.outbound_integ_key.as_ref().map(fp),
                },
            })
        })
        .collect();
    let watch = cluster.lease_watch();
    let lease_age_ms: BTreeMap<NodeId, u128> = cluster
        .members()
        .into_iter()
        .filter(|(_, m)| !m.witness)
        .map(|(id, _)| (id, tandem_cluster::since(watch.last_seen(id)).as_millis()))
        .collect();
    serde_json::json!({
        "id": cluster.id(),
        "lease_age_ms": lease_age_ms,
        "state": format!("{:?}", m.state),
        "leader": m.current_leader,
        "term": m.current_term,
        "applied_index": cluster.applied_index(),
        "members": members,
        "owners": state.owners,
        "probes": state.probes,
        "revoked": state.revoked.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "digest": state.digest(),
        "snapshot_index": m.snapshot.map(|s| s.index),
        "purged_index": m.purged.map(|s| s.index),
        "ike_sas": ike_sas,
        "child_sas": child_sas,
    })
}
