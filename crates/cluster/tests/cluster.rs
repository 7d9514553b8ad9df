//! Three members in one process on loopback, real gRPC with mutual TLS and real
//! redb stores: commits, forwarding, restart from disk, catch-up by snapshot,
//! sealed data at rest, and a node from another CA shut out.

// A test: any failure is to stop on at once, with its message.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_cluster::node::RaftTiming;
use tandem_cluster::tls::{self, NodeTls};
use tandem_cluster::{
    Change, Cluster, ClusterConfig, Command, Disk, Member, NodeId, StorageKey, Transport,
};

struct Net {
    _dir: tempfile::TempDir,
    root: PathBuf,
    ports: BTreeMap<NodeId, u16>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Net {
    fn new(n: u64) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        tls::init(&root.join("pki")).unwrap();
        let mut ports = BTreeMap::new();
        for id in 1..=n {
            tls::issue(&root.join("pki"), &format!("n{id}"), tls::Role::Member).unwrap();
            ports.insert(id, free_port());
        }
        Self {
            _dir: dir,
            root,
            ports,
        }
    }

    fn member(&self, id: NodeId) -> Member {
        Member {
            name: format!("n{id}"),
            addr: format!("127.0.0.1:{}", self.ports[&id]),
            witness: false,
        }
    }

    fn members(&self) -> BTreeMap<NodeId, Member> {
        self.ports
            .keys()
            .map(|id| (*id, self.member(*id)))
            .collect()
    }

    fn data(&self, id: NodeId) -> PathBuf {
        self.root.join(format!("data-n{id}"))
    }

    fn config(&self, id: NodeId, pki: &Path) -> ClusterConfig {
        ClusterConfig {
            id,
            member: self.member(id),
            listen: self.member(id).addr.parse().unwrap(),
            disk: Disk::Dir(self.data(id)),
            transport: Transport::Tls(NodeTls::from_dir(pki, &format!("n{id}")).unwrap()),
            storage_key: StorageKey::load(&pki.join("storage.key")).unwrap(),
            timing: RaftTiming {
                snapshot_every: 50,
                ..RaftTiming::default()
            },
        }
    }

    async fn start(&self, id: NodeId) -> Cluster {
        Cluster::start(self.config(id, &self.root.join("pki")))
            .await
            .unwrap()
    }
}

fn mark(spi: u32, highest: u64) -> Command {
    Command::one(Change::TunnelRemove {
        name: format!("t{spi}-{highest}"),
    })
}

/// Waits until `node` has applied at least `index`.
async fn caught_up(node: &Cluster, index: u64) {
    for _ in 0..200 {
        if node.applied_index() >= Some(index) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!(
        "node {} stuck at {:?}, wanted {index}",
        node.id(),
        node.applied_index()
    );
}

fn key_material() -> Vec<u8> {
    // Recognisable, and long enough that a chance match is impossible.
    (0..36u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect()
}

fn child_with_key() -> Command {
    use tandem_ike::endpoint::ChildSa;
    Command::one(Change::ChildSaInstalled(Box::new(ChildSa::for_tests(
        "site-a",
        0xc0ffee,
        0xbeef,
        &key_material(),
    ))))
}

fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            hits.extend(files_containing(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            hits.push(path);
        }
    }
    hits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_survive_restarts_and_snapshots_and_stay_sealed() {
    let net = Net::new(3);
    let mut nodes: BTreeMap<NodeId, Cluster> = BTreeMap::new();
    for id in 1..=3 {
        nodes.insert(id, net.start(id).await);
    }
    nodes[&1].initialize(net.members()).await.unwrap();

    // A write on the leader or a follower commits everywhere.
    nodes[&1].propose(child_with_key()).await.unwrap();
    for id in [2, 3] {
        nodes[&id].propose(mark(id as u32, 1)).await.unwrap();
    }
    let index = nodes[&1].applied_index().unwrap();
    for node in nodes.values() {
        caught_up(node, index).await;
        assert!(node.state().child_sas.contains_key(&0xc0ffee));
    }

    // One node down: the other two keep committing. It restarts from its data
    // directory and catches up.
    let down = nodes.remove(&3).unwrap();
    down.shutdown().await;
    let survivor = &nodes[&1];
    for i in 0..10 {
        survivor.propose(mark(7, i)).await.unwrap();
    }
    nodes.insert(3, net.start(3).await);
    let index = nodes[&1].applied_index().unwrap();
    caught_up(&nodes[&3], index).await;
    assert_eq!(nodes[&3].state(), nodes[&1].state());

    // Down past a snapshot (every 50 entries, log compacted): it catches up
    // from the snapshot, since the entries it missed are gone.
    let down = nodes.remove(&2).unwrap();
    down.shutdown().await;
    for i in 0..150 {
        nodes[&1].propose(mark(9, i)).await.unwrap();
    }
    // The leader compacts on its own once no replication holds the entries;
    // with a member down that can take a while, so ask for it.
    let upto = nodes[&1].applied_index().unwrap();
    nodes[&1].raft().trigger().purge_log(upto).await.unwrap();
    let mut purged = None;
    for _ in 0..200 {
        purged = nodes[&1].metrics().purged;
        if purged.is_some_and(|p| p.index > 20) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        purged.is_some_and(|p| p.index > 20),
        "the entries node 2 missed were compacted away: {purged:?}"
    );
    nodes.insert(2, net.start(2).await);
    let index = nodes[&1].applied_index().unwrap();
    caught_up(&nodes[&2], index).await;
    assert!(
        nodes[&2].metrics().snapshot.is_some(),
        "installed a snapshot"
    );
    assert_eq!(nodes[&2].state(), nodes[&1].state());

    // Nothing under any data directory shows the key in plain text.
    for id in 1..=3 {
        let hits = files_containing(&net.data(id), &key_material());
        assert!(hits.is_empty(), "plaintext key in {hits:?}");
    }
    for (_, node) in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_from_another_ca_cannot_join() {
    let net = Net::new(2);
    let a = net.start(1).await;
    a.initialize(BTreeMap::from([(1, net.member(1))]))
        .await
        .unwrap();
    a.propose(mark(1, 1)).await.unwrap();

    // Node 2 has a certificate with the right name from a different CA.
    let rogue_pki = net.root.join("rogue-pki");
    tls::init(&rogue_pki).unwrap();
    tls::issue(&rogue_pki, "n2", tls::Role::Member).unwrap();
    let mut cfg = net.config(2, &rogue_pki);
    cfg.storage_key = StorageKey::load(&net.root.join("pki/storage.key")).unwrap();
    let rogue = Cluster::start(cfg).await.unwrap();

    let err = a.add_member(2, net.member(2), true).await.unwrap_err();
    assert!(
        err.to_string().contains("within"),
        "learner never caught up: {err}"
    );
    assert_eq!(rogue.applied_index(), None, "rogue received no entry");
    assert!(rogue.state().tunnels.is_empty());
    rogue.shutdown().await;
    a.shutdown().await;
}
