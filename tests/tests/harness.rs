//! Proves the real-peer harness itself: two stock strongSwans through it, so a
//! failure in the Tandem interop tests points at Tandem, not at the plumbing.

use std::time::Duration;

use tandem_tests::{Charon, PeerConfig, SiteToSite, iperf3, ping, serial};

#[test]
fn strongswan_to_strongswan_through_the_harness() -> anyhow::Result<()> {
    let _serial = serial();
    let net = SiteToSite::new()?;
    let base = PeerConfig {
        name: "h".into(),
        local_addr: SiteToSite::PEER_OUTER.into(),
        remote_addr: SiteToSite::GW_OUTER.into(),
        psk: "harness-test-secret-0123".into(),
        ike_proposal: "aes256gcm16-prfsha256-curve25519".into(),
        esp_proposal: "aes256gcm16".into(),
        local_ts: SiteToSite::PEER_NET.into(),
        remote_ts: SiteToSite::GW_NET.into(),
        ike_rekey: "4h".into(),
        child_rekey: "6s".into(),
        dpd_delay: "0s".into(),
        initiate: false,
    };
    let gw_side = PeerConfig {
        local_addr: SiteToSite::GW_OUTER.into(),
        remote_addr: SiteToSite::PEER_OUTER.into(),
        local_ts: SiteToSite::GW_NET.into(),
        remote_ts: SiteToSite::PEER_NET.into(),
        child_rekey: "1h".into(),
        ..base.clone()
    };
    let _gw = Charon::start(&net.gw, net.dir.path(), &gw_side)?;
    let peer = Charon::start(&net.peer, net.dir.path(), &base)?;
    peer.initiate("h")?;

    let p = ping(
        &net.peer,
        SiteToSite::PEER_INNER,
        SiteToSite::GW_INNER,
        50,
        Duration::from_millis(10),
    )?;
    assert_eq!(
        p.lost(),
        0,
        "ping through strongSwan<->strongSwan lost packets"
    );
    let up = iperf3(
        &net.gw,
        SiteToSite::GW_INNER,
        &net.peer,
        SiteToSite::PEER_INNER,
        2,
        net.dir.path(),
    )?;
    println!("strongSwan<->strongSwan iperf3 peer->gw: {up:.0} Mbit/s");

    let first = peer.sas()?[0].children[0].spi_in.clone();
    std::thread::sleep(Duration::from_secs(8));
    let sas = peer.sas()?;
    assert!(
        sas[0].children.iter().all(|c| c.spi_in != first),
        "child SA was not rekeyed after its 6 s rekey_time: {sas:?}\n{}",
        peer.log_tail(30)
    );
    peer.terminate_ike("h")?;
    assert!(peer.sas()?.is_empty());
    Ok(())
}
