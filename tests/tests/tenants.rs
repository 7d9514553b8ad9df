//! Tenant isolation in the dataplane (DESIGN.md invariant 9), against a
//! real active-active cluster and a stock strongSwan: an ESP packet of
//! tunnel A captured on the outer network and sent again to every node's
//! tunnel address reaches the LAN zero times. The owner's replay window
//! refuses it; before Tandem checked ownership, the other gateway, whose
//! standby copy of the SA had a fresh window, accepted it once more.
//!
//! `cargo test -p tandem-tests --test tenants -- --nocapture` after
//! `cargo build --workspace --bins` (as root).

use std::time::Duration;

use anyhow::{Context as _, ensure};
use tandem_tests::ha::HaSite;
use tandem_tests::{
    BackgroundPing, Capture, Charon, RawCapture, SiteToSite, Tandemd, Tunnel, esp_by_sa, ping,
    serial, udp_payloads, wait_for,
};

#[test]
fn an_esp_packet_replayed_to_every_node_reaches_the_lan_zero_times() -> anyhow::Result<()> {
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
    let result = (|| -> anyhow::Result<()> {
        for name in ["site-a", "site-b"] {
            peer.initiate(name)?;
        }
        wait_for(
            "gateway 2 to stand by for site-a",
            Duration::from_secs(10),
            || {
                let s = c.node(2).status()?;
                Ok((s["standby_child_sas"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty()))
                .then_some(()))
            },
        )?;
        // Pings of tenant A, their ESP captured on the peer's side.
        let outer = RawCapture::start(&site.peer, "br0", &["udp", "port", "4500"], &dir)?;
        let p = ping(
            &site.peer,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            20,
            Duration::from_millis(20),
        )?;
        ensure!(
            p.received >= 18,
            "tenant A's pings before the replay: {p:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
        let frames = outer.stop()?;
        let vip: std::net::Ipv4Addr = HaSite::VIP.parse()?;
        let esp: Vec<Vec<u8>> = udp_payloads(&frames, vip, 4500)
            .into_iter()
            // ESP, not IKE (a zero non-ESP marker) nor a keepalive.
            .filter(|d| d.len() > 8 && d[..4] != [0; 4])
            .collect();
        ensure!(
            esp.len() >= 18,
            "{} ESP packets of site-a captured, in {} frames, the first {:02x?}",
            esp.len(),
            frames.len(),
            frames.first().map(|f| &f[..f.len().min(48)])
        );
        let file = dir.join("replay.hex");
        std::fs::write(
            &file,
            esp.iter()
                .map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n")
                .collect::<String>(),
        )?;

        // What reaches the LAN host from now on.
        let lan = RawCapture::start(
            &site.lan,
            "lan0",
            &["icmp", "and", "dst", "host", SiteToSite::GW_INNER],
            &dir,
        )?;
        let send = Tandemd::sibling("udp_send")?;
        for to in [HaSite::VIP, HaSite::VIP_B] {
            let sent = site.peer.run(&[
                send.to_str().context("path")?,
                "--from",
                SiteToSite::PEER_OUTER,
                "--to",
                &format!("{to}:4500"),
                &file.to_string_lossy(),
            ])?;
            println!("replayed {} ESP packets of site-a to {to}", sent.trim());
        }
        std::thread::sleep(Duration::from_millis(500));
        // The tunnel itself still works, and the capture sees what it
        // carries: each of these echo requests, and nothing else.
        let p = ping(
            &site.peer,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            10,
            Duration::from_millis(20),
        )?;
        ensure!(p.received >= 9, "tenant A's pings after the replay: {p:?}");
        std::thread::sleep(Duration::from_millis(200));
        let delivered = lan.stop()?.len() as u32;
        ensure!(
            (p.received..=p.sent).contains(&delivered),
            "{delivered} echo requests reached the LAN, for {} pings sent after the replay ({} answered): {} replayed ones got through",
            p.sent,
            p.received,
            delivered.saturating_sub(p.sent)
        );
        println!(
            "0 of {} replayed packets delivered (sent to the owner and to the other gateway); {delivered} echo requests of {} new pings did reach the LAN",
            2 * esp.len(),
            p.sent
        );
        Ok(())
    })();
    result.with_context(|| format!("--- strongSwan log tail:\n{}", peer.log_tail(30)))?;
    site.tear_down(c, peer)
}

/// The SPI both tenants' devices choose for their inbound SAs, so the
/// gateway's outbound SAs of two tunnels share it (strongSwan's
/// `charon.spi_min` and `spi_max`).
const SHARED_SPI: u32 = 0xc0ff_ee01;

/// Tenant B's device chooses tenant A's outbound SPI, then deletes its child
/// SA: A's traffic goes on, and after a kill -9 of the owner the new owner
/// continues A's SA above every sequence number used (a capture shows none
/// repeated). Before reservations were keyed by the cluster's own SPI, B's
/// delete removed A's reservation cluster-wide, and the new owner restarted
/// A's SA at 1 under the same key: a GCM nonce used twice.
#[test]
fn a_tenant_that_takes_another_tenants_spi_and_deletes_its_child_costs_it_nothing()
-> anyhow::Result<()> {
    let _serial = serial();
    let site = HaSite::new(3)?;
    let dir = site.dir.path().to_path_buf();
    let mut c = site.cluster(3, 0, "")?;
    let (ike, esp) = ("aes256gcm16-prfsha256-curve25519", "aes256gcm16");
    let a = site.tunnel("site-a", ike, esp);
    let b = Tunnel {
        local_addr: HaSite::DEVICE_B.into(),
        ..site.tunnel_b("site-b", ike, esp)
    };
    let gw_sides = [a.mirrored(), b.mirrored()];
    for id in 1..=3 {
        c.start_tunnels(&site.nodes[id as usize - 1], id, &gw_sides)?;
    }
    c.leader()?;
    wait_for(
        "gateway 1 to own both tunnels",
        Duration::from_secs(15),
        || {
            Ok(
                (site.holders_of(HaSite::VIP)? == [1] && site.holders_of(HaSite::VIP_B)? == [1])
                    .then_some(()),
            )
        },
    )?;
    let settings = format!("spi_min = {SHARED_SPI:#x}\n  spi_max = {SHARED_SPI:#x}");
    let peer_a = Charon::start_with_settings(&site.peer, &dir, &[a], &settings)?;
    let device_b = site.device_b()?;
    let peer_b = Charon::start_with_settings(&device_b, &dir, &[b], &settings)?;
    let result = (|| -> anyhow::Result<()> {
        peer_a.initiate("site-a")?;
        peer_b.initiate("site-b")?;
        let outbound = |tunnel: &str| -> anyhow::Result<Vec<String>> {
            Ok(c.view(1)?["child_sas"]
                .as_array()
                .context("child_sas")?
                .iter()
                .filter(|ch| ch["connection"] == tunnel)
                .filter_map(|ch| ch["outbound_spi"].as_str().map(str::to_owned))
                .collect())
        };
        let shared = format!("{SHARED_SPI:08x}");
        ensure!(
            outbound("site-a")? == [shared.clone()] && outbound("site-b")? == [shared.clone()],
            "both devices should have chosen SPI {shared}: site-a {:?}, site-b {:?}",
            outbound("site-a")?,
            outbound("site-b")?
        );
        // B deletes its child; A's traffic is untouched.
        let p = BackgroundPing::start(
            &site.peer,
            &dir,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            100,
            Duration::from_millis(10),
        )?;
        peer_b.terminate_child("site-b")?;
        wait_for(
            "site-b's child gone from the cluster",
            Duration::from_secs(5),
            || Ok(outbound("site-b")?.is_empty().then_some(())),
        )?;
        let p = p.finish(Duration::from_secs(10))?;
        ensure!(
            p.received + 1 >= p.sent,
            "site-a while site-b deleted its child: {p:?}"
        );
        ensure!(
            outbound("site-a")? == [shared.clone()],
            "site-a's child SA is gone"
        );

        // The owner dies: the new one must not reuse A's sequence numbers.
        let capture = Capture::start(&site.peer, "br0", &dir)?;
        let bg = BackgroundPing::start(
            &site.peer,
            &dir,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            300,
            Duration::from_millis(10),
        )?;
        std::thread::sleep(Duration::from_secs(1));
        c.crash(&site.nodes[0], 1)?;
        let p = bg.finish(Duration::from_secs(30))?;
        std::thread::sleep(Duration::from_millis(200));
        let seen = capture.stop()?;
        let by_sa = esp_by_sa(&seen, HaSite::VIP);
        let a_sa = by_sa
            .get(&SHARED_SPI)
            .context("no ESP of site-a captured")?;
        let senders: std::collections::BTreeSet<&str> =
            a_sa.iter().map(|e| e.mac.as_str()).collect();
        ensure!(
            senders.len() == 2,
            "site-a's SA should be sent by the old and the new owner: {senders:?}"
        );
        let mut seqs = std::collections::BTreeSet::new();
        let repeated: Vec<u32> = a_sa
            .iter()
            .filter(|e| !seqs.insert(e.seq))
            .map(|e| e.seq)
            .collect();
        ensure!(
            repeated.is_empty(),
            "sequence numbers repeated on site-a's SA across the takeover: {:?}",
            &repeated[..repeated.len().min(10)]
        );
        ensure!(
            p.received * 10 >= p.sent * 8,
            "site-a across the kill: {p:?}"
        );
        println!(
            "both devices chose SPI {shared}; site-b deleted its child; after a kill -9 of the owner, {} ESP packets of site-a from {} senders, none repeated; pings {}/{}",
            a_sa.len(),
            senders.len(),
            p.received,
            p.sent
        );
        Ok(())
    })();
    result.with_context(|| {
        format!(
            "--- device A's log tail:\n{}\n--- device B's log tail:\n{}",
            peer_a.log_tail(20),
            peer_b.log_tail(20)
        )
    })?;
    drop(peer_b);
    drop(device_b);
    site.tear_down(c, peer_a)
}
