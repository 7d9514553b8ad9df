//! The gateway's side of the cluster: starting this node's Raft member from
//! `[cluster]`, committing what the IKE endpoint changed before its datagrams
//! leave (DESIGN.md invariant 1), assigning tunnel owners, and describing the
//! replicated state for `tandemd ctl status`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tandem_cluster::node::RaftTiming;
use tandem_cluster::tls::NodeTls;
use tandem_cluster::{Change, Cluster, ClusterConfig, Command, NodeId, StorageKey};
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
}

impl Step {
    pub fn is_empty(&self) -> bool {
        self.transmits.is_empty() && self.events.is_empty()
    }
}

/// Starts this node's cluster member and bootstraps the cluster from the
/// configured voters (every node does; openraft accepts the same initial
/// membership more than once).
pub async fn start(node_name: &str, settings: &ClusterSettings) -> anyhow::Result<Arc<Cluster>> {
    let tls = NodeTls::from_dir(&settings.pki_dir, node_name)
        .with_context(|| format!("cluster TLS material in {}", settings.pki_dir.display()))?;
    let storage_key = StorageKey::load(&settings.pki_dir.join("storage.key"))?;
    let cluster = Cluster::start(ClusterConfig {
        id: settings.id,
        member: settings.members[&settings.id].clone(),
        listen: settings.listen,
        data_dir: settings.data_dir.clone(),
        tls,
        storage_key,
        timing: RaftTiming {
            snapshot_every: settings.snapshot_every,
            ..RaftTiming::default()
        },
    })
    .await?;
    cluster.initialize(settings.members.clone()).await?;
    Ok(Arc::new(cluster))
}

/// The command that replicates one step's changes; empty if it changed no SA.
pub fn command_for(node: NodeId, changes: Vec<IkeSaChange>, events: &[Event]) -> Command {
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
    mut steps: mpsc::UnboundedReceiver<(Command, Step)>,
    committed: mpsc::UnboundedSender<Step>,
) {
    while let Some((cmd, mut step)) = steps.recv().await {
        if !cmd.changes.is_empty() {
            let started = Instant::now();
            match cluster.propose(cmd).await {
                Ok(()) => {
                    tracing::debug!(took = ?started.elapsed(), "IKE state committed");
                }
                Err(e) => {
                    tracing::error!(error = %e, "IKE state not committed; its datagrams are withheld");
                    step.transmits.clear();
                }
            }
        }
        if committed.send(step).is_err() {
            return;
        }
    }
}

/// On every gateway, proposes the lowest-id gateway member as owner of each
/// configured tunnel without one. Every gateway does it, not only the leader,
/// because the leader may be a witness that has no tunnels; the state machine
/// keeps the first assignment, so the duplicates are harmless.
/// (Lease-based reassignment is the failover's job.)
pub async fn assign_owners(cluster: Arc<Cluster>, tunnels: Vec<String>) {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let Some(first) = cluster
            .members()
            .into_iter()
            .filter(|(_, m)| !m.witness)
            .map(|(id, _)| id)
            .min()
        else {
            continue;
        };
        let owners = cluster.state().owners;
        let changes: Vec<Change> = tunnels
            .iter()
            .filter(|t| !owners.contains_key(*t))
            .map(|t| Change::OwnerAssigned {
                tunnel: t.clone(),
                node: first,
            })
            .collect();
        if !changes.is_empty()
            && let Err(e) = cluster.propose(Command { changes }).await
        {
            tracing::warn!(error = %e, "cannot assign tunnel owners");
        }
    }
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
        let started = Instant::now();
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
                        let t = Instant::now();
                        cluster.propose(cmd).await.map_err(|e| e.to_string())?;
                        took.push(t.elapsed());
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
        let elapsed = started.elapsed();
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
    tokio::spawn(async move {
        let result = match cmd {
            crate::control::Command::MemberAdd(id, member) => {
                cluster.add_member(id, member, true).await
            }
            crate::control::Command::MemberRemove(id) => cluster.remove_member(id).await,
            _ => return,
        };
        let _ = reply.send(result.map(|()| "done".into()).map_err(|e| e.to_string()));
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
    serde_json::json!({
        "id": cluster.id(),
        "state": format!("{:?}", m.state),
        "leader": m.current_leader,
        "term": m.current_term,
        "applied_index": cluster.applied_index(),
        "members": members,
        "owners": state.owners,
        "probes": state.probes,
        "snapshot_index": m.snapshot.map(|s| s.index),
        "purged_index": m.purged.map(|s| s.index),
        "ike_sas": ike_sas,
        "child_sas": child_sas,
    })
}
