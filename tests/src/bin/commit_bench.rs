//! Commit latency and throughput of a 3-gateway cluster of real tandemd
//! processes on the loopback of a scratch namespace, with redb's fsync on
//! every commit: the cost every IKE state change pays before its reply leaves.
//!
//! `cargo build --release -p tandem-gateway && cargo run --release -p
//! tandem-tests --bin commit_bench` (as root: it makes a network namespace).
//! Commands carry 600 bytes, the size of an IKE SA record with its keys and
//! cached last response; each report is the proposing node's view.

use anyhow::Context as _;
use tandem_tests::cluster::{Cluster, LoopbackHost};

const SA_BYTES: usize = 600;

fn main() -> anyhow::Result<()> {
    let host = LoopbackHost::new()?;
    let mut c = Cluster::new(host.dir.path(), 3, 0, 10_000)?;
    for id in 1..=3 {
        c.start(&host.ns, id, None)?;
    }
    let leader = c.leader()?;
    let follower = leader % 3 + 1;
    // Connections, the TLS sessions and the redb files warm up first.
    c.probe(leader, 500, 1, SA_BYTES)?;
    for (what, at, count, writers) in [
        ("one writer on the leader", leader, 10_000, 1),
        ("64 writers on the leader", leader, 20_000, 64),
        ("one writer on a follower (forwarded)", follower, 2_000, 1),
    ] {
        let report = c
            .probe(at, count, writers, SA_BYTES)
            .with_context(|| what.to_owned())?;
        println!("{what}: {report}");
    }
    Ok(())
}
