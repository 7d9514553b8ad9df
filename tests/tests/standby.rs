//! Hot standby with a real peer: a stock strongSwan connects to the owning
//! gateway of a 2 + witness cluster, and the standby gateway must hold the
//! same IKE SA and child SAs (SPIs, and keys by fingerprint) as soon as they
//! are committed, its inbound ESP SAs installed, through child and IKE rekeys.
//!
//! `cargo test -p tandem-tests --test standby -- --nocapture` after
//! `cargo build -p tandem-gateway` (as root).

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tandem_tests::cluster::Cluster;
use tandem_tests::{
    BackgroundPing, Charon, PeerIkeSa, SiteToSite, check_gone, ping, serial, wait_for,
};

const CONN: &str = "site-a";
/// One commit reaches a follower with the next AppendEntries (a heartbeat is
/// 50 ms); far more than that means the standby is not following.
const ONE_COMMIT: Duration = Duration::from_secs(1);

/// The owner's replicated view, the standby's, and strongSwan's must agree:
/// strongSwan's IKE SA and installed children (SPIs crossed) are in the
/// replicated state; the standby's replicated SAs, key fingerprints
/// included, equal the owner's; and the standby has the inbound SA of each
/// child installed in its dataplane (and runs no IKE SA of its own).
fn replicated(c: &Cluster, sa: &PeerIkeSa) -> anyhow::Result<Option<String>> {
    let owner = c.view(1)?;
    let standby_status = c.node(2).status()?;
    let standby = &standby_status["cluster"];
    let ike = owner["ike_sas"].as_array().and_then(|sas| {
        sas.iter()
            .find(|s| s["spi_i"] == sa.spi_i.as_str() && s["spi_r"] == sa.spi_r.as_str())
    });
    let Some(ike) = ike else { return Ok(None) };
    let children = owner["child_sas"].as_array().context("child_sas")?;
    let installed: Vec<_> = sa
        .children
        .iter()
        .filter(|c| c.state == "INSTALLED")
        .collect();
    let all_children = installed.iter().all(|child| {
        children.iter().any(|c| {
            c["outbound_spi"] == child.spi_in.as_str() && c["inbound_spi"] == child.spi_out.as_str()
        })
    });
    let staged = standby_status["standby_child_sas"]
        .as_array()
        .context("standby_child_sas")?;
    let all_staged = children
        .iter()
        .filter(|c| c["connection"] == CONN)
        .all(|c| staged.contains(&c["inbound_spi"]));
    // Retired SAs leave the replicated state: only the live ones remain.
    let only_live =
        owner["ike_sas"].as_array().map(Vec::len) == Some(1) && children.len() == installed.len();
    let same = standby["ike_sas"] == owner["ike_sas"] && standby["child_sas"] == owner["child_sas"];
    let idle = standby_status["ike_sas"]
        .as_array()
        .is_some_and(|a| a.is_empty());
    Ok(
        (all_children && only_live && !installed.is_empty() && same && all_staged && idle).then(
            || {
                format!(
                    "IKE SA {}_{} keys {}, children {}",
                    sa.spi_i,
                    sa.spi_r,
                    ike["keys"],
                    serde_json::Value::Array(children.clone())
                )
            },
        ),
    )
}

/// Waits for `replicated` and returns how long it took.
fn wait_replicated(c: &Cluster, peer: &Charon) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let mut last = String::new();
    let what = wait_for("the standby to hold the peer's SAs", ONE_COMMIT, || {
        let sa = peer.wait_established()?;
        last = format!(
            "strongSwan: {sa:?}\nowner: {}\nstandby: {}",
            c.view(1)?,
            c.node(2).status()?
        );
        replicated(c, &sa)
    })
    .with_context(|| last.clone())?;
    Ok((start.elapsed(), what))
}

#[test]
fn the_standby_holds_the_owners_sas_within_one_commit_through_rekeys() -> anyhow::Result<()> {
    let _serial = serial();
    let net = SiteToSite::new()?;
    let dir = net.dir.path().to_path_buf();
    let mut c = Cluster::new(&dir.join("cluster"), 2, 1, 10_000)?;
    // Gateway 1 (the lowest id, so the owner) faces the peer on the standard
    // ports; gateway 2 has the same tunnel on other ports, never reached.
    let g1 = &mut c.members.get_mut(&1).unwrap().node;
    g1.ike_port = 500;
    g1.natt_port = 4500;
    let mut peer_side = net.tunnel(
        CONN,
        "aes256gcm16-prfsha256-curve25519",
        "aes256gcm16-curve25519",
    );
    let gw_side = peer_side.mirrored();
    // strongSwan drives the rekeys: a child rekey and an IKE rekey fall in the
    // 12 s phase below.
    peer_side.child_rekey = Duration::from_secs(5);
    peer_side.ike_rekey = Duration::from_secs(9);

    // Each gateway routes the peer's prefixes into its own TUN device; the
    // owner starts last so its route is the one in place.
    c.start(&net.gw, 3, None)?;
    c.start(&net.gw, 2, Some(&gw_side))?;
    c.start(&net.gw, 1, Some(&gw_side))?;
    wait_for(
        "gateway 1 to own the tunnel",
        Duration::from_secs(15),
        || {
            let s = c.node(1).status()?;
            Ok((s["owned"].as_array().is_some_and(|o| o.len() == 1)
                && c.view(2)?["owners"][CONN] == 1)
                .then_some(()))
        },
    )?;

    let peer = Charon::start(&net.peer, &dir, &peer_side)?;
    let result = (|| -> anyhow::Result<()> {
        peer.initiate(CONN)?;
        let (took, what) = wait_replicated(&c, &peer)?;
        println!("established; standby agreed after {took:?}: {what}");
        let p = ping(
            &net.peer,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            100,
            Duration::from_millis(10),
        )?;
        ensure!(p.lost() == 0, "ping through the owner lost {}", p.lost());

        let before = peer.snapshot()?;
        let bg = BackgroundPing::start(
            &net.peer,
            &dir,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            1200,
            Duration::from_millis(10),
        )?;
        let p = bg.finish(Duration::from_secs(30))?;
        ensure!(
            p.loss_percent() < 0.1,
            "rekey phase lost {} of {} pings",
            p.lost(),
            p.sent
        );
        let rekeys = peer.snapshot()?.check_rekeyed_since(&before)?;
        let (took, what) = wait_replicated(&c, &peer)?;
        println!("{rekeys}; standby agreed after {took:?}: {what}");
        Ok(())
    })()
    .with_context(|| {
        format!(
            "--- strongSwan log tail:\n{}\n--- owner log tail:\n{}\n--- standby log tail:\n{}",
            peer.log_tail(30),
            c.node(1).log_tail(30),
            c.node(2).log_tail(30)
        )
    });
    let namespaces = [net.peer.name().to_owned(), net.gw.name().to_owned()];
    let mut pids = vec![peer.pid()];
    pids.extend(c.running.values().map(|t| t.pid()));
    drop((peer, c, net));
    result?;
    check_gone(&namespaces, &pids)
}
