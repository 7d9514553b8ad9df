//! Proves the real-peer harness itself: two stock strongSwans through it, so a
//! failure in the Tandem interop tests points at Tandem, not at the plumbing.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tandem_tests::{BackgroundPing, Charon, SiteToSite, check_gone, iperf3, ping, serial};

#[test]
fn strongswan_to_strongswan_through_the_harness() -> anyhow::Result<()> {
    let _serial = serial();
    let started = Instant::now();
    let net = SiteToSite::new()?;
    let names = [net.peer.name().to_owned(), net.gw.name().to_owned()];
    let mut peer_side = net.tunnel("h", "aes256gcm16-prfsha256-curve25519", "aes256gcm16");
    // The peer drives a child rekey and an IKE rekey inside the test's ~15 s.
    peer_side.child_rekey = Duration::from_secs(5);
    peer_side.ike_rekey = Duration::from_secs(9);
    peer_side.initiate = true;
    peer_side.dpd_delay = Duration::from_secs(2);
    let mut gw_side = peer_side.mirrored();
    gw_side.child_rekey = Duration::from_secs(3600);
    gw_side.ike_rekey = Duration::from_secs(8 * 3600);
    gw_side.initiate = false;
    // The responder first, so the initiator's first IKE_SA_INIT is answered.
    let gw = Charon::start(&net.gw, net.dir.path(), &gw_side)?;
    let peer = Charon::start(&net.peer, net.dir.path(), &peer_side)?;
    let pids = [gw.pid(), peer.pid()];
    let first = peer.snapshot()?;

    for (ns, src, dst) in [
        (&net.peer, SiteToSite::PEER_INNER, SiteToSite::GW_INNER),
        (&net.gw, SiteToSite::GW_INNER, SiteToSite::PEER_INNER),
    ] {
        let p = ping(ns, src, dst, 100, Duration::from_millis(10))?;
        ensure!(
            p.lost() == 0,
            "ping {src} -> {dst} lost {} of {}",
            p.lost(),
            p.sent
        );
    }
    // swanctl's counters saw that traffic: 100 requests and 100 replies each
    // way, 84-byte IPv4 echo packets (the child rekeys only after 5 s).
    let sa = peer.established()?.context("tunnel gone after ping")?;
    let child = sa
        .children
        .iter()
        .find(|c| c.state == "INSTALLED")
        .context("no installed child")?;
    ensure!(
        child.packets_in >= 200
            && child.packets_out >= 200
            && child.bytes_in >= 200 * 84
            && child.bytes_out >= 200 * 84,
        "child SA counters missed the pings: {child:?}"
    );
    let up = iperf3(
        &net.gw,
        SiteToSite::GW_INNER,
        &net.peer,
        SiteToSite::PEER_INNER,
        3,
        net.dir.path(),
    )?;
    let down = iperf3(
        &net.peer,
        SiteToSite::PEER_INNER,
        &net.gw,
        SiteToSite::GW_INNER,
        3,
        net.dir.path(),
    )?;
    println!("strongSwan<->strongSwan iperf3: peer->gw {up:.0} Mbit/s, gw->peer {down:.0} Mbit/s");

    // Keep traffic flowing until both rekeys are due, then look at the SAs.
    let bg = BackgroundPing::start(
        &net.peer,
        net.dir.path(),
        SiteToSite::PEER_INNER,
        SiteToSite::GW_INNER,
        300,
        Duration::from_millis(10),
    )?;
    let p = bg.finish(Duration::from_secs(20))?;
    let after = peer.snapshot()?;
    ensure!(p.lost() == 0, "rekey phase lost {} of {}", p.lost(), p.sent);
    let rekeys = after
        .check_rekeyed_since(&first)
        .with_context(|| peer.log_tail(40))?;
    println!("rekeys with traffic ({} pings, 0 lost): {rekeys}", p.sent);

    // Idle: a DPD (empty INFORMATIONAL) exchange must happen and be answered.
    let (before, after) = peer.wait_for_dpd(Duration::from_secs(10))?;
    println!("DPD while idle: {before:?} -> {after:?}");
    peer.established()?.context("tunnel lost while idle")?;

    peer.terminate_ike("h")?;
    ensure!(
        peer.list_sas()?.is_empty(),
        "peer still has SAs after terminate"
    );
    ensure!(
        gw.list_sas()?.is_empty(),
        "gateway still has SAs after the peer's DELETE"
    );

    drop((peer, gw, net));
    check_gone(&names, &pids)?;
    println!("harness test took {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}
