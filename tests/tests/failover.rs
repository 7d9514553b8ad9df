//! Unplanned takeover with a real peer: strongSwan has one tunnel to the VIP
//! of a cluster whose nodes each live in their own namespace on a shared
//! segment. The owner is killed with `kill -9` under 100 pings a second; a
//! standby must carry the tunnel within a second, with the same IKE SA (no
//! renegotiation), no replay or integrity errors at the peer, and rekeys
//! working afterwards.
//!
//! `cargo test -p tandem-tests --test failover -- --nocapture` after
//! `cargo build -p tandem-gateway` (as root).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use anyhow::{Context as _, ensure};
use std::collections::BTreeSet;
use tandem_tests::cluster::Cluster;
use tandem_tests::ha::HaSite;

use tandem_tests::{BackgroundPing, Capture, Charon, SiteToSite, Tunnel, ping, serial, wait_for};

const CONN: &str = "site-a";
const PING_INTERVAL: Duration = Duration::from_millis(10);

/// Runs `scenario` on a cluster of `gateways` + `witnesses` nodes with
/// strongSwan connected to gateway 1 (the owner), traffic checked.
fn with_cluster(
    gateways: u64,
    witnesses: u64,
    scenario: fn(&HaSite, &mut Cluster, &Charon) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let _serial = serial();
    let site = HaSite::new((gateways + witnesses) as usize)?;
    let dir = site.dir.path().to_path_buf();
    let mut c = site.cluster(gateways, witnesses, "")?;
    let mut peer_side = site.tunnel(CONN, "aes256gcm16-prfsha256-curve25519", "aes256gcm16");
    // DPD on both sides: only while idle, so it is checked after the events.
    peer_side.dpd_delay = Duration::from_secs(2);
    site.start_members(&mut c, &peer_side.mirrored())?;
    let peer = Charon::start(&site.peer, &dir, &peer_side)?;
    let result = connect(&site, &c, &peer)
        .and_then(|()| scenario(&site, &mut c, &peer))
        .with_context(|| {
            let tail = |id: u64| {
                c.running
                    .get(&id)
                    .map_or_else(|| "(not running)".to_owned(), |t| t.log_tail(30))
            };
            format!(
                "--- strongSwan log tail:\n{}\n--- node 2 log tail:\n{}",
                peer.log_tail(30),
                tail(2)
            )
        });
    tear_down(site, c, peer, result)
}

/// Stops everything (peer, members, namespaces), then reports `result`, or
/// anything left running.
fn tear_down(
    site: HaSite,
    c: Cluster,
    peer: Charon,
    result: anyhow::Result<()>,
) -> anyhow::Result<()> {
    let gone = site.tear_down(c, peer);
    result.and(gone)
}

/// strongSwan connects; the standby holds the child SA; traffic flows.
fn connect(site: &HaSite, c: &Cluster, peer: &Charon) -> anyhow::Result<()> {
    peer.initiate(CONN)?;
    peer.wait_established()?;
    wait_for(
        "the standby to hold the child SA",
        Duration::from_secs(5),
        || {
            let s = c.node(2).status()?;
            Ok(s["standby_child_sas"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
                .then_some(()))
        },
    )?;
    let p = ping(
        &site.peer,
        SiteToSite::PEER_INNER,
        SiteToSite::GW_INNER,
        50,
        PING_INTERVAL,
    )?;
    ensure!(p.lost() == 0, "ping through the owner lost {}", p.lost());
    Ok(())
}

/// 3 s of pings at 100 a second, with `action` done after the first second.
fn pings_around(
    site: &HaSite,
    action: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<tandem_tests::PingStats> {
    let bg = BackgroundPing::start(
        &site.peer,
        site.dir.path(),
        SiteToSite::PEER_INNER,
        SiteToSite::GW_INNER,
        300,
        PING_INTERVAL,
    )?;
    std::thread::sleep(Duration::from_secs(1));
    action()?;
    bg.finish(Duration::from_secs(30))
}

/// How long the replies stopped.
fn silence(p: &tandem_tests::PingStats) -> anyhow::Result<Duration> {
    p.longest_silence.context("no replies to measure a silence")
}

/// The peer still has the IKE SA it had (`before`), never renegotiated, and
/// rejected nothing; then child and IKE rekeys work with the new owner.
fn same_sa_and_rekeys_work(
    site: &HaSite,
    peer: &Charon,
    before: &tandem_tests::PeerIkeSa,
) -> anyhow::Result<()> {
    let after = peer.wait_established()?;
    ensure!(
        (after.spi_i.as_str(), after.spi_r.as_str())
            == (before.spi_i.as_str(), before.spi_r.as_str()),
        "the peer's IKE SA changed: {before:?} -> {after:?}"
    );
    let log = peer.log();
    let inits = log.matches("generating IKE_SA_INIT").count()
        + log.matches("parsed IKE_SA_INIT request").count();
    ensure!(
        inits == 1,
        "{inits} IKE_SA_INIT exchanges in the peer's log"
    );
    for bad in ["verification failed", "replay", "integrity"] {
        ensure!(
            !log.to_lowercase().contains(bad),
            "the peer's log mentions {bad:?}"
        );
    }
    for kind in ["child", "ike"] {
        peer.rekey(kind, CONN)?;
        let p = ping(
            &site.peer,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            50,
            PING_INTERVAL,
        )?;
        ensure!(p.lost() == 0, "after a {kind} rekey: {} lost", p.lost());
    }
    let rekeyed = peer.wait_established()?;
    ensure!(
        rekeyed.spi_i != before.spi_i,
        "the IKE rekey did not happen: {rekeyed:?}"
    );
    let (dpd_before, dpd_after) = peer
        .wait_for_dpd(Duration::from_secs(10))
        .context("no DPD exchange with the new owner")?;
    peer.established()?
        .context("tunnel lost while idle (DPD)")?;
    println!(
        "then child and IKE rekeys and DPD ({dpd_before:?} -> {dpd_after:?}) with the new owner"
    );
    Ok(())
}

/// Waits until the cluster has kept one term for a second with every
/// gateway's lease fresh: on a loaded machine the cluster may still hold an
/// election just after start, and owners send nothing while it does.
fn settled(c: &Cluster) -> anyhow::Result<()> {
    let mut last: Option<(u64, std::time::Instant)> = None;
    wait_for("the cluster to settle", Duration::from_secs(15), || {
        let v = c.view(3)?;
        let term = v["term"].as_u64().unwrap_or(0);
        let fresh = [1, 2].iter().all(|g| {
            v["lease_age_ms"][g.to_string()]
                .as_u64()
                .is_some_and(|age| age < 200)
        });
        match last {
            Some((t, since)) if t == term && fresh => {
                Ok((since.elapsed() >= Duration::from_secs(1)).then_some(()))
            }
            _ => {
                last = fresh.then(|| (term, std::time::Instant::now()));
                Ok(None)
            }
        }
    })
}

/// Node `i`'s Prometheus metrics, scraped from inside its namespace.
fn scrape(site: &HaSite, i: usize) -> anyhow::Result<String> {
    let url = format!("http://{}:9100/metrics", HaSite::cluster_addr(i));
    site.nodes[i - 1].run(&["curl", "-sf", "--max-time", "5", &url])
}

/// The sum of a metric's samples whose labels contain every one of `labels`.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn kill_the_owner(site: &HaSite, c: &mut Cluster, peer: &Charon) -> anyhow::Result<()> {
    let before = peer.wait_established()?;
    // The owner's metrics, while it carries the tunnel.
    let owner = scrape(site, 1)?;
    ensure!(
        metric(&owner, "tandem_tunnels_owned", &[]) == 1.0
            && metric(&owner, "tandem_esp_packets_total", &["direction=\"in\""]) > 0.0,
        "gateway 1's metrics do not show it carrying the tunnel:\n{owner}"
    );
    // kill -9 as a crash under systemd, whose ExecStopPost takes the dead
    // node's VIP down (deploy/systemd/tandemd.service).
    // An iperf3 TCP stream from the peer to a LAN host runs across the
    // crash: it must survive it (TCP retransmits through the gap).
    let (p, mbits) = std::thread::scope(|scope| {
        let stream = scope.spawn(|| {
            tandem_tests::iperf3(
                &site.lan,
                SiteToSite::GW_INNER,
                &site.peer,
                SiteToSite::PEER_INNER,
                5,
                site.dir.path(),
            )
        });
        std::thread::sleep(Duration::from_millis(500));
        let p = pings_around(site, || c.crash(&site.nodes[0], 1));
        // The new owner's metrics, twice while the TCP stream still runs:
        // a takeover counted, and its ESP counters moving.
        let new_owner = c.view(2)?["owners"][CONN].as_u64().unwrap_or(2) as usize;
        let first = scrape(site, new_owner)?;
        std::thread::sleep(Duration::from_millis(1200));
        let second = scrape(site, new_owner)?;
        let packets = |t: &str| metric(t, "tandem_esp_packets_total", &["direction=\"in\""]);
        ensure!(
            metric(&second, "tandem_takeovers_total", &["planned=\"false\""]) == 1.0
                && metric(&second, "tandem_tunnels_owned", &[]) == 1.0
                && packets(&second) > packets(&first),
            "gateway {new_owner}'s metrics do not show the takeover and traffic:\n{first}\n{second}"
        );
        // The old owner's silence as the new owner measured it: the
        // lease, an election and a commit, as the pings see it below.
        let silent = metric(&second, "tandem_takeover_silence_seconds_sum", &[]);
        ensure!(
            metric(&second, "tandem_takeover_silence_seconds_count", &[]) == 1.0
                && (0.2..1.5).contains(&silent),
            "gateway {new_owner}'s takeover silence metric:\n{second}"
        );
        println!(
            "metrics of the new owner (gateway {new_owner}): 1 unplanned takeover after {:.0} ms of silence, inbound ESP packets {} -> {} in 1.2 s",
            silent * 1000.0,
            packets(&first),
            packets(&second)
        );
        let mbits = stream
            .join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))?;
        anyhow::Ok((p?, mbits?))
    })?;
    let gap = silence(&p)?;
    println!(
        "kill -9 of the owner: {} of {} pings lost, longest silence {gap:?}; \
         an iperf3 TCP stream across it averaged {mbits:.0} Mbit/s over 5 s",
        p.lost(),
        p.sent
    );
    ensure!(
        gap < Duration::from_secs(1),
        "traffic gap {gap:?} ({} pings lost) is not under 1 s",
        p.lost()
    );
    // Whichever survivor the leader saw renew first: normally gateway 2.
    let owner = c.view(2)?["owners"][CONN].as_u64().unwrap_or(0);
    ensure!(
        owner != 1 && owner != 0,
        "tunnel owner after the kill: {owner}"
    );
    ensure!(
        site.vip_holders()?.contains(&(owner as usize)),
        "gateway {owner} does not hold the VIP: {:?}",
        site.vip_holders()?
    );

    same_sa_and_rekeys_work(site, peer, &before)
}

/// Planned handover to gateway 2, then a drain of gateway 2 (back to 1):
/// each may lose at most one ping.
fn hand_over_and_back(site: &HaSite, c: &mut Cluster, peer: &Charon) -> anyhow::Result<()> {
    let before = peer.wait_established()?;
    // The handover through the local control socket, the drain through the
    // admin gRPC API (tandemctl, from gateway 3's namespace).
    for (what, at, owner) in [
        ("handover to gateway 2", 1, 2),
        ("drain of gateway 2", 3, 1),
    ] {
        let mut report = String::new();
        let p = pings_around(site, || {
            report = if at == 1 {
                c.node(at).ctl(&["handover", CONN, "2"])?
            } else {
                c.tandemctl(&site.nodes[2], at, &["drain", "2"])?
            };
            Ok(())
        })?;
        let gap = silence(&p)?;
        println!(
            "{what}: {report}; {} of {} pings lost, longest silence {gap:?}",
            p.lost(),
            p.sent
        );
        ensure!(p.lost() <= 1, "{what} lost {} pings", p.lost());
        ensure!(
            gap < Duration::from_millis(50),
            "{what}: traffic stopped for {gap:?}"
        );
        let now = c.view(at)?["owners"][CONN].clone();
        ensure!(now == owner, "owner after the {what}: {now}");
        wait_for("the VIP to move", Duration::from_secs(2), || {
            Ok((site.vip_holders()? == [owner as usize]).then_some(()))
        })?;
    }
    let status = c.tandemctl(&site.nodes[2], 3, &["status"])?;
    println!("tandemctl status:\n{status}");
    ensure!(
        status.contains("gw1") && status.contains(CONN) && status.contains("ms"),
        "tandemctl status shows no members, lease ages or owners:\n{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&c.tandemctl(&site.nodes[2], 3, &["status", "--json"])?)?;
    ensure!(json["owners"][CONN] == 1, "tandemctl status --json: {json}");
    tandemctl_reads_and_refuses(site, c)?;
    same_sa_and_rekeys_work(site, peer, &before)
}

/// `tandemctl tunnels`, `sas` and `peer-config`, in both forms, and the
/// errors an operator meets: an unknown tunnel, a target that is not a live
/// gateway, a member that does not answer.
fn tandemctl_reads_and_refuses(site: &HaSite, c: &Cluster) -> anyhow::Result<()> {
    let ctl = |id, args: &[&str]| c.tandemctl(&site.nodes[2], id, args);
    let tunnels = ctl(3, &["tunnels"])?;
    ensure!(
        tunnels.contains(CONN) && tunnels.contains("gw1") && tunnels.contains(" ms"),
        "tandemctl tunnels:\n{tunnels}"
    );
    let json: serde_json::Value = serde_json::from_str(&ctl(3, &["tunnels", "--json"])?)?;
    ensure!(
        json[0]["tunnel"] == CONN && json[0]["owner"] == 1,
        "tandemctl tunnels --json: {json}"
    );
    let sas = ctl(1, &["sas"])?;
    println!("tandemctl sas:\n{sas}");
    ensure!(
        sas.contains(&format!("IKE SA {CONN}")) && sas.contains("established"),
        "tandemctl sas:\n{sas}"
    );
    let json: serde_json::Value = serde_json::from_str(&ctl(1, &["sas", "--json"])?)?;
    let packets = json[0]["children"][0]["inbound"]["packets"]
        .as_u64()
        .unwrap_or(0);
    ensure!(packets > 0, "tandemctl sas --json shows no traffic: {json}");
    ensure!(
        !sas.contains("key") && !json.to_string().contains("key"),
        "tandemctl sas shows something called a key:\n{sas}"
    );
    // The device's configuration, from the running cluster: what `tandemd
    // peer-config` writes from the config file (interop_strongswan loads that
    // into strongSwan).
    let swanctl = ctl(2, &["peer-config", "--tunnel", CONN])?;
    ensure!(
        swanctl == c.node(2).peer_config(CONN, "swanctl")?,
        "tandemctl peer-config differs from tandemd peer-config:\n{swanctl}"
    );
    let json: serde_json::Value = serde_json::from_str(&ctl(
        1,
        &[
            "peer-config",
            "--tunnel",
            CONN,
            "--format",
            "cisco-ios",
            "--json",
        ],
    )?)?;
    ensure!(
        json["format"] == "cisco-ios"
            && json["config"]
                .as_str()
                .is_some_and(|t| t.contains("crypto ikev2 profile")),
        "tandemctl peer-config --json: {json}"
    );
    for (args, says) in [
        (
            &["handover", "--tunnel", "no-such-tunnel", "--to", "2"][..],
            "no-such-tunnel",
        ),
        (
            &["peer-config", "--tunnel", "no-such-tunnel"][..],
            "no tunnel \"no-such-tunnel\" is configured here",
        ),
        (
            &["handover", "--tunnel", CONN, "--to", "9"][..],
            "node 9 is not a gateway with a live lease",
        ),
    ] {
        c.tandemctl_refuses(&site.nodes[2], 3, args, says)?;
    }
    let unreachable = c
        .tandemctl_at(&site.nodes[2], "198.51.100.13:1", "gw3", &["status"])
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    ensure!(
        unreachable.contains("cannot reach the admin API at 198.51.100.13:1"),
        "an unreachable member: {unreachable:?}"
    );
    println!("tandemctl tunnels, sas and their errors: as expected");
    Ok(())
}

/// The owner loses its cluster links (its outer link stays up): it must
/// fence itself before another node starts. A capture on the outer segment
/// shows, for each SA, one sender and then the other, never both, and no
/// sequence number twice. Healed, the old owner stays a standby.
fn cut_off_the_owner(site: &HaSite, c: &mut Cluster, peer: &Charon) -> anyhow::Result<()> {
    let before = peer.wait_established()?;
    let capture = Capture::start(&site.peer, "br0", site.dir.path())?;
    let p = pings_around(site, || site.cluster_link(1, false))?;
    let gap = silence(&p)?;
    let new_owner = wait_for(
        "another gateway to own the tunnel",
        Duration::from_secs(5),
        || Ok(c.view(2)?["owners"][CONN].as_u64().filter(|o| *o != 1)),
    )?;
    let seen = capture.stop()?;
    let by_sa = tandem_tests::esp_by_sa(&seen, HaSite::VIP);
    let mut senders = Vec::new();
    for (&spi, of_sa) in &by_sa {
        // In capture order the sending machine may change once, never back.
        let mut macs: Vec<&str> = of_sa.iter().map(|e| e.mac.as_str()).collect();
        macs.dedup();
        ensure!(
            macs.len() <= 2,
            "SA {spi:08x}: senders interleave: {macs:?}"
        );
        let seqs: BTreeSet<u32> = of_sa.iter().map(|e| e.seq).collect();
        ensure!(
            seqs.len() == of_sa.len(),
            "SA {spi:08x}: a sequence number went out twice"
        );
        if let [old, new] = macs[..] {
            let last_old = of_sa.iter().rev().find(|e| e.mac == old).unwrap();
            let first_new = of_sa.iter().find(|e| e.mac == new).unwrap();
            ensure!(
                first_new.seq > last_old.seq,
                "SA {spi:08x}: the new sender went back to {} after {}",
                first_new.seq,
                last_old.seq
            );
            senders.push((
                spi,
                Duration::from_micros(first_new.micros - last_old.micros),
            ));
        }
    }
    ensure!(
        !senders.is_empty(),
        "no SA changed sender in the capture ({} packets from the VIP)",
        by_sa.values().map(Vec::len).sum::<usize>()
    );
    println!(
        "owner cut off from the cluster: {} of {} pings lost, longest silence {gap:?}; \
         per SA, last packet of the old sender to first of the new: {senders:?}",
        p.lost(),
        p.sent
    );

    site.cluster_link(1, true)?;
    wait_for(
        "gateway 1 to rejoin as a standby",
        Duration::from_secs(10),
        || {
            let s = c.node(1).status()?;
            Ok((s["cluster"]["owners"][CONN] == new_owner
                && s["owned"].as_array().is_some_and(Vec::is_empty))
            .then_some(()))
        },
    )?;
    ensure!(
        site.vip_holders()? == [new_owner as usize],
        "VIP holders after healing: {:?}",
        site.vip_holders()?
    );
    same_sa_and_rekeys_work(site, peer, &before)
}

#[test]
fn three_gateways_kill9_of_the_owner_moves_the_tunnel_in_under_a_second() -> anyhow::Result<()> {
    with_cluster(3, 0, kill_the_owner)
}

#[test]
fn two_gateways_and_a_witness_kill9_of_the_owner() -> anyhow::Result<()> {
    with_cluster(2, 1, kill_the_owner)
}

#[test]
fn planned_handover_and_drain_lose_at_most_one_packet_each() -> anyhow::Result<()> {
    with_cluster(3, 0, hand_over_and_back)
}

#[test]
fn an_owner_cut_off_from_the_cluster_stops_before_another_starts() -> anyhow::Result<()> {
    with_cluster(3, 0, cut_off_the_owner)
}

/// Active-active: two tunnels (two VIPs, the peer with one connection to
/// each) dealt to gateways 1 and 2, both carrying traffic; gateway 1 crashes
/// and a survivor carries both.
#[test]
fn active_active_a_survivor_carries_both_tunnels() -> anyhow::Result<()> {
    let _serial = serial();
    let site = HaSite::new(3)?;
    let dir = site.dir.path().to_path_buf();
    let mut c = site.cluster(3, 0, "mode = \"active-active\"\n")?;
    let (ike, esp) = ("aes256gcm16-prfsha256-curve25519", "aes256gcm16");
    let peer_sides = [
        site.tunnel("site-a", ike, esp),
        site.tunnel_b("site-b", ike, esp),
    ];
    let gw_sides: Vec<_> = peer_sides.iter().map(Tunnel::mirrored).collect();
    for id in 1..=3 {
        c.start_tunnels(&site.nodes[id as usize - 1], id, &gw_sides)?;
    }
    c.leader()?;
    wait_for(
        "site-a on gateway 1 and site-b on gateway 2",
        Duration::from_secs(15),
        || {
            Ok(
                (site.holders_of(HaSite::VIP)? == [1] && site.holders_of(HaSite::VIP_B)? == [2])
                    .then_some(()),
            )
        },
    )?;
    let peer = Charon::start_many(&site.peer, &dir, &peer_sides)?;
    let flows = [
        ("site-a", SiteToSite::PEER_INNER, SiteToSite::GW_INNER),
        ("site-b", HaSite::PEER_INNER_B, HaSite::GW_INNER_B),
    ];
    let result = (|| -> anyhow::Result<()> {
        for (name, _, _) in flows {
            peer.initiate(name)?;
        }
        let up = |peer: &Charon| -> anyhow::Result<Vec<String>> {
            Ok(peer
                .list_sas()?
                .into_iter()
                .filter(|sa| {
                    sa.state == "ESTABLISHED" && sa.children.iter().any(|c| c.state == "INSTALLED")
                })
                .map(|sa| format!("{}:{}_{}", sa.name, sa.spi_i, sa.spi_r))
                .collect())
        };
        let before = wait_for("both tunnels up", Duration::from_secs(15), || {
            let sas = up(&peer)?;
            Ok((sas.len() == 2).then_some(sas))
        })?;
        wait_for("gateway 3 to stand by for both", Duration::from_secs(5), || {
            let s = c.node(3).status()?;
            Ok(s["standby_child_sas"]
                .as_array()
                .is_some_and(|a| a.len() == 2)
                .then_some(()))
        })?;
        settled(&c)?;
        for (name, src, dst) in flows {
            let p = ping(&site.peer, src, dst, 50, PING_INTERVAL)?;
            ensure!(p.lost() == 0, "{name} before the crash lost {}", p.lost());
        }
        let pings: Vec<_> = flows
            .iter()
            .map(|(_, src, dst)| BackgroundPing::start(&site.peer, &dir, src, dst, 300, PING_INTERVAL))
            .collect::<anyhow::Result<_>>()?;
        std::thread::sleep(Duration::from_secs(1));
        c.crash(&site.nodes[0], 1)?;
        for ((name, _, _), bg) in flows.iter().zip(pings) {
            let p = bg.finish(Duration::from_secs(30))?;
            let gap = silence(&p)?;
            println!(
                "active-active, gateway 1 crashed: {name} lost {} of {} pings, longest silence {gap:?}",
                p.lost(),
                p.sent
            );
            ensure!(gap < Duration::from_secs(1), "{name} stopped for {gap:?}");
        }
        let owners = c.view(2)?["owners"].clone();
        let survivor = owners["site-a"].as_u64().unwrap_or(0);
        ensure!(
            survivor != 1 && owners["site-b"] == survivor,
            "one survivor should carry both: {owners}"
        );
        ensure!(
            site.holders_of(HaSite::VIP)?.contains(&(survivor as usize))
                && site.holders_of(HaSite::VIP_B)?.contains(&(survivor as usize)),
            "gateway {survivor} lacks a VIP"
        );
        for (name, src, dst) in flows {
            let p = ping(&site.peer, src, dst, 50, PING_INTERVAL)?;
            ensure!(p.lost() == 0, "{name} on the survivor lost {}", p.lost());
        }
        let after = up(&peer)?;
        ensure!(after == before, "the peer's IKE SAs changed: {before:?} -> {after:?}");
        // A handover to the dead gateway is refused, naming it.
        c.tandemctl_refuses(
            &site.nodes[2],
            3,
            &["handover", "--tunnel", "site-a", "--to", "1"],
            "node 1 is not a gateway with a live lease",
        )?;
        Ok(())
    })()
    .with_context(|| {
        format!(
            "--- strongSwan log tail:\n{}\n--- gateway 2 log tail:\n{}",
            peer.log_tail(30),
            c.node(2).log_tail(30)
        )
    });
    tear_down(site, c, peer, result)
}

/// Live configuration through the cluster (`tandemctl apply`,
/// `remove-tunnel`), with strongSwan on the other end and traffic on the
/// tunnel that stays: bad configuration of every kind is refused by the
/// running cluster, naming the key, and changes nothing; a new tunnel comes
/// up on every gateway without a restart and carries traffic; a change of
/// its selectors reroutes every gateway; removing it takes it away
/// everywhere. site-a loses no packet meanwhile.
#[test]
fn tunnels_are_added_changed_and_removed_live_and_bad_config_changes_nothing() -> anyhow::Result<()>
{
    let _serial = serial();
    let site = HaSite::new(3)?;
    let dir = site.dir.path().to_path_buf();
    let mut c = site.cluster(3, 0, "")?;
    let (ike, esp) = ("aes256gcm16-prfsha256-curve25519", "aes256gcm16");
    let peer_sides = [
        site.tunnel(CONN, ike, esp),
        site.tunnel_b("site-b", ike, esp),
    ];
    let site_a = peer_sides[0].mirrored();
    let site_b = peer_sides[1].mirrored();
    for id in 1..=3 {
        c.start_listening(
            &site.nodes[id as usize - 1],
            id,
            std::slice::from_ref(&site_a),
            &[HaSite::VIP_B],
        )?;
    }
    c.leader()?;
    wait_for("gateway 1 to hold the VIP", Duration::from_secs(15), || {
        Ok((site.vip_holders()? == [1]).then_some(()))
    })?;
    let peer = Charon::start_many(&site.peer, &dir, &peer_sides)?;
    let result = connect(&site, &c, &peer).and_then(|()| live_changes(&site, &c, &peer, &site_b));
    tear_down(site, c, peer, result)
}

fn live_changes(site: &HaSite, c: &Cluster, peer: &Charon, site_b: &Tunnel) -> anyhow::Result<()> {
    let dir = site.dir.path();
    let site_a_sa = || -> anyhow::Result<(String, String)> {
        let sa = peer
            .list_sas()?
            .into_iter()
            .find(|sa| sa.name == CONN && sa.state == "ESTABLISHED")
            .context("site-a is not established")?;
        Ok((sa.spi_i, sa.spi_r))
    };
    let before = site_a_sa()?;
    let ctl = |args: &[&str]| c.tandemctl(&site.nodes[2], 1, args);
    let routed = |prefix: &str| -> anyhow::Result<Vec<usize>> {
        let mut on = Vec::new();
        for (i, ns) in site.nodes.iter().enumerate() {
            if ns.run(&["ip", "route", "show", prefix])?.contains(prefix) {
                on.push(i + 1);
            }
        }
        Ok(on)
    };
    let site_a_pings = BackgroundPing::start(
        &site.peer,
        dir,
        SiteToSite::PEER_INNER,
        SiteToSite::GW_INNER,
        2500,
        PING_INTERVAL,
    )?;
    let tunnels_before = ctl(&["tunnels", "--json"])?;

    // site-b's table, its key in a file beside it (mode 0600), as an
    // operator would write them; each bad variant in a file of its own.
    let psk_file = dir.join("site-b.psk");
    std::fs::write(&psk_file, format!("{}\n", site_b.psk))?;
    std::fs::set_permissions(
        &psk_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let table = site_b.tandemd_connection().replace(
        &format!("psk = \"{}\"", site_b.psk),
        "psk_file = \"site-b.psk\"",
    );
    let write = |name: &str, text: &str| -> anyhow::Result<String> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path.to_string_lossy().into_owned())
    };
    let ike = format!("ike_proposals = [\"{}\"]", site_b.ike_proposal);
    let esp = format!("esp_proposals = [\"{}\"]", site_b.esp_proposal);
    let with_ike = |p: &str| table.replace(&ike, &format!("ike_proposals = [\"{p}\"]"));
    let with_esp = |p: &str| table.replace(&esp, &format!("esp_proposals = [\"{p}\"]"));
    for (what, text, says) in [
        (
            "unknown key",
            table.replace("initiate", "colour = \"blue\"\ninitiate"),
            "colour",
        ),
        (
            "bad CIDR",
            table.replace("10.3.0.0/16", "10.3.0.0/33"),
            "remote_ts[0]",
        ),
        (
            "unknown proposal",
            with_esp("aes256gcm16-chacha"),
            "esp_proposals[0]",
        ),
        ("DES", with_ike("des-sha1-modp2048"), "ike_proposals[0]"),
        ("MD5", with_esp("aes128-md5"), "esp_proposals[0]"),
        (
            "DH group 2",
            with_ike("aes128-sha1-modp1024"),
            "ike_proposals[0]",
        ),
        (
            "DH group 1",
            with_ike("aes128-sha1-modp768"),
            "ike_proposals[0]",
        ),
        (
            "missing PSK file",
            table.replace("site-b.psk", "missing.psk"),
            "psk_file",
        ),
        (
            "overlapping selectors",
            table.replace("10.3.0.0/16", "10.1.128.0/17"),
            "overlaps",
        ),
    ] {
        let file = write("bad.toml", &text)?;
        let message = c.tandemctl_refuses(&site.nodes[2], 1, &["apply", "--file", &file], says)?;
        ensure!(
            message.contains(says) && !message.contains('\n'),
            "{what}: tandemctl apply should fail in one line naming {says:?}: {message:?}"
        );
        println!("{what}: {message}");
    }
    ensure!(
        owners(&ctl(&["tunnels", "--json"])?)? == owners(&tunnels_before)?
            && routed("10.3.0.0/16")?.is_empty(),
        "a refused apply changed something"
    );

    // Added: an owner, routes on every gateway, and strongSwan connects.
    let file = write("site-b.toml", &table)?;
    let applied = ctl(&["apply", "--file", &file])?;
    ensure!(
        applied.contains("tunnel site-b applied"),
        "tandemctl apply: {applied}"
    );
    wait_for(
        "site-b to have an owner and its VIP",
        Duration::from_secs(10),
        || {
            let owned = ctl(&["tunnels"])?.contains("site-b");
            Ok((owned && site.holders_of(HaSite::VIP_B)?.len() == 1).then_some(()))
        },
    )?;
    ensure!(
        routed("10.3.0.0/16")? == [1, 2, 3],
        "site-b's routes: {:?}",
        routed("10.3.0.0/16")?
    );
    let site_b_pings = |when: &str| -> anyhow::Result<()> {
        let p = ping(
            &site.peer,
            HaSite::PEER_INNER_B,
            HaSite::GW_INNER_B,
            50,
            PING_INTERVAL,
        )?;
        ensure!(p.lost() == 0, "site-b {when} lost {} of 50", p.lost());
        Ok(())
    };
    peer.initiate("site-b")?;
    site_b_pings("applied live")?;

    // Changed: a second prefix behind the peer, routed on every gateway;
    // the owner rekeys the child SA to propose it (strongSwan narrows it
    // away: its own config does not have it).
    let site_b_child = || -> anyhow::Result<Option<u32>> {
        Ok(peer
            .list_sas()?
            .into_iter()
            .filter(|sa| sa.name == "site-b")
            .flat_map(|sa| sa.children)
            .filter(|c| c.state == "INSTALLED")
            .map(|c| c.unique_id)
            .max())
    };
    let child_before = site_b_child()?.context("site-b has no child SA")?;
    let wider = table.replace("[\"10.3.0.0/16\"]", "[\"10.3.0.0/16\", \"10.5.0.0/16\"]");
    ctl(&["apply", "--file", &write("site-b.toml", &wider)?])?;
    wait_for(
        "every gateway to route 10.5.0.0/16",
        Duration::from_secs(5),
        || Ok((routed("10.5.0.0/16")? == [1, 2, 3]).then_some(())),
    )?;
    wait_for(
        "the owner to rekey site-b's child SA",
        Duration::from_secs(5),
        || Ok(site_b_child()?.filter(|id| *id > child_before).map(drop)),
    )?;
    site_b_pings("after its change")?;

    // Removed: gone from every gateway.
    let removed = ctl(&["remove-tunnel", "site-b"])?;
    ensure!(
        removed.contains("tunnel site-b removed"),
        "tandemctl remove-tunnel: {removed}"
    );
    wait_for(
        "site-b to be gone everywhere",
        Duration::from_secs(5),
        || {
            let gone = routed("10.3.0.0/16")?.is_empty()
                && routed("10.5.0.0/16")?.is_empty()
                && site.holders_of(HaSite::VIP_B)?.is_empty()
                && !ctl(&["tunnels"])?.contains("site-b");
            Ok(gone.then_some(()))
        },
    )?;
    c.tandemctl_refuses(
        &site.nodes[2],
        1,
        &["remove-tunnel", "site-b"],
        "no tunnel \"site-b\"",
    )?;

    let p = site_a_pings.finish(Duration::from_secs(60))?;
    println!(
        "site-a while site-b was refused, added, changed and removed: {} of {} pings lost",
        p.lost(),
        p.sent
    );
    ensure!(p.lost() == 0, "site-a lost {} pings", p.lost());
    let after = site_a_sa()?;
    ensure!(
        after == before,
        "site-a's IKE SA changed: {before:?} -> {after:?}"
    );
    Ok(())
}

/// Each tunnel and its owner, from `tandemctl tunnels --json`.
fn owners(json: &str) -> anyhow::Result<Vec<(String, u64)>> {
    let rows: Vec<serde_json::Value> = serde_json::from_str(json)?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["tunnel"].as_str().unwrap_or_default().to_owned(),
                r["owner"].as_u64().unwrap_or(0),
            )
        })
        .collect())
}
