//! Interop with a stock strongSwan 5.9 peer (the customer's device) in network
//! namespaces: six proposal families covering every cipher family and DH group
//! Tandem implements, each with strongSwan initiating and with tandemd
//! initiating. Each case checks traffic both ways, throughput, child and IKE
//! rekeys under traffic, DPD, and a DELETE from one side.

use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use tandem_tests::{
    BackgroundPing, Charon, PeerConfig, PeerIkeSa, SiteToSite, Tandemd, iperf3, ping, serial,
};

const PSK: &str = "interop-test-secret-0123456789";
/// Short lifetimes for the side that drives rekeys: a child rekey and an IKE
/// rekey both fall inside the 12-second rekey phase.
const SHORT_CHILD: u64 = 5;
const SHORT_IKE: u64 = 9;
const DPD_SECS: u64 = 2;

struct Case {
    ike: &'static str,
    esp: &'static str,
    tandem_initiates: bool,
    delete_from_peer: bool,
}

fn tandemd_config(case: &Case) -> String {
    let (child, ike) = if case.tandem_initiates {
        (format!("{SHORT_CHILD}s"), format!("{SHORT_IKE}s"))
    } else {
        ("1h".to_owned(), "8h".to_owned())
    };
    format!(
        r#"[node]
name = "gw1"

[ike]
listen = ["{gw}"]

[tun]
name = "tandem0"

[[connection]]
name = "site-a"
local_addr = "{gw}"
remote_addr = "{peer}"
psk = "{PSK}"
ike_proposals = ["{ike_p}"]
esp_proposals = ["{esp_p}"]
local_ts = ["{gw_net}"]
remote_ts = ["{peer_net}"]
ike_lifetime = "{ike}"
child_lifetime = "{child}"
dpd_delay = "{DPD_SECS}s"
initiate = {init}
"#,
        gw = SiteToSite::GW_OUTER,
        peer = SiteToSite::PEER_OUTER,
        ike_p = case.ike,
        esp_p = case.esp,
        gw_net = SiteToSite::GW_NET,
        peer_net = SiteToSite::PEER_NET,
        init = case.tandem_initiates,
    )
}

fn peer_config(case: &Case) -> PeerConfig {
    let (child, ike) = if case.tandem_initiates {
        ("1h".to_owned(), "8h".to_owned())
    } else {
        (format!("{SHORT_CHILD}s"), format!("{SHORT_IKE}s"))
    };
    PeerConfig {
        name: "site-a".into(),
        local_addr: SiteToSite::PEER_OUTER.into(),
        remote_addr: SiteToSite::GW_OUTER.into(),
        psk: PSK.into(),
        ike_proposal: case.ike.into(),
        esp_proposal: case.esp.into(),
        local_ts: SiteToSite::PEER_NET.into(),
        remote_ts: SiteToSite::GW_NET.into(),
        ike_rekey: ike,
        child_rekey: child,
        dpd_delay: format!("{DPD_SECS}s"),
        initiate: false,
    }
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn established(peer: &Charon) -> anyhow::Result<Option<PeerIkeSa>> {
    Ok(peer
        .sas()?
        .into_iter()
        .find(|sa| sa.state == "ESTABLISHED" && sa.children.iter().any(|c| c.state == "INSTALLED")))
}

fn run(case: Case) -> anyhow::Result<()> {
    let _serial = serial();
    let net = SiteToSite::new()?;
    let dir = net.dir.path();
    let peer = Charon::start(&net.peer, dir, &peer_config(&case))?;
    let gw = Tandemd::start(&net.gw, dir, &tandemd_config(&case))?;
    let diag = |e: anyhow::Error| {
        e.context(format!(
            "strongSwan log tail:\n{}\n--- tandemd log tail:\n{}",
            peer.log_tail(40),
            gw.log()
                .lines()
                .rev()
                .take(40)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        ))
    };
    (|| -> anyhow::Result<()> {
        if !case.tandem_initiates {
            peer.initiate("site-a")?;
        }
        let first = wait_for("the tunnel", Duration::from_secs(15), || established(&peer))?;

        // Traffic both ways.
        let p = ping(
            &net.peer,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            200,
            Duration::from_millis(10),
        )?;
        ensure!(
            p.lost() == 0,
            "peer->gateway ping lost {} of {}",
            p.lost(),
            p.sent
        );
        let p = ping(
            &net.gw,
            SiteToSite::GW_INNER,
            SiteToSite::PEER_INNER,
            200,
            Duration::from_millis(10),
        )?;
        ensure!(
            p.lost() == 0,
            "gateway->peer ping lost {} of {}",
            p.lost(),
            p.sent
        );
        let up = iperf3(
            &net.gw,
            SiteToSite::GW_INNER,
            &net.peer,
            SiteToSite::PEER_INNER,
            3,
            dir,
        )?;
        let down = iperf3(
            &net.peer,
            SiteToSite::PEER_INNER,
            &net.gw,
            SiteToSite::GW_INNER,
            3,
            dir,
        )?;
        println!(
            "{} / {}: iperf3 peer->gw {up:.0} Mbit/s, gw->peer {down:.0} Mbit/s",
            case.ike, case.esp
        );

        // Rekeys under traffic: 12 s of ping at 100 per second.
        let before = established(&peer)?.context("tunnel gone before the rekey phase")?;
        let bg = BackgroundPing::start(
            &net.peer,
            dir,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            1200,
            Duration::from_millis(10),
        )?;
        let p = bg.finish(Duration::from_secs(30))?;
        let after = established(&peer)?.context("tunnel gone after the rekey phase")?;
        ensure!(
            u64::from(p.lost()) * 1000 < u64::from(p.sent),
            "rekey phase lost {} of {} pings (limit 0.1%)",
            p.lost(),
            p.sent
        );
        ensure!(
            (after.spi_i.clone(), after.spi_r.clone())
                != (before.spi_i.clone(), before.spi_r.clone())
                && (after.spi_i.clone(), after.spi_r.clone())
                    != (first.spi_i.clone(), first.spi_r.clone()),
            "no IKE rekey during the rekey phase: before {before:?}, after {after:?}"
        );
        let old_child: Vec<_> = before.children.iter().map(|c| c.spi_in.clone()).collect();
        ensure!(
            after
                .children
                .iter()
                .all(|c| !old_child.contains(&c.spi_in)),
            "no child rekey during the rekey phase: before {before:?}, after {after:?}"
        );
        println!(
            "rekey phase: {} of {} pings lost; IKE SA #{} -> #{}",
            p.lost(),
            p.sent,
            before.unique_id,
            after.unique_id
        );

        // DPD: idle long enough for both sides to probe; the SA must survive.
        let informational_before = peer.log().matches("INFORMATIONAL").count();
        std::thread::sleep(Duration::from_secs(2 * DPD_SECS + 1));
        ensure!(
            established(&peer)?.is_some(),
            "tunnel lost while idle (DPD)"
        );
        let log = peer.log();
        ensure!(
            log.matches("INFORMATIONAL").count() > informational_before
                && log.contains("INFORMATIONAL request")
                && log.contains("INFORMATIONAL response"),
            "no DPD exchange seen in strongSwan's log while idle"
        );
        let p = ping(
            &net.peer,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            20,
            Duration::from_millis(10),
        )?;
        ensure!(p.lost() == 0, "ping after DPD lost {}", p.lost());

        // DELETE from one side: both must end up without the SA.
        if case.delete_from_peer {
            peer.terminate_ike("site-a")?;
            wait_for("tandemd to drop the IKE SA", Duration::from_secs(5), || {
                let st = gw.status()?;
                Ok(st["ike_sas"]
                    .as_array()
                    .is_some_and(|a| a.is_empty())
                    .then_some(()))
            })?;
        } else {
            gw.ctl(&["terminate", "site-a"])?;
            wait_for(
                "strongSwan to drop the IKE SA",
                Duration::from_secs(5),
                || Ok(peer.sas()?.is_empty().then_some(())),
            )?;
            let st = gw.status()?;
            ensure!(
                st["ike_sas"].as_array().is_some_and(|a| a.is_empty()),
                "tandemd still lists SAs: {st}"
            );
        }
        let p = ping(
            &net.peer,
            SiteToSite::PEER_INNER,
            SiteToSite::GW_INNER,
            3,
            Duration::from_millis(50),
        )?;
        ensure!(p.received == 0, "traffic still flows after DELETE");
        Ok(())
    })()
    .map_err(diag)
}

macro_rules! interop {
    ($($name:ident: $ike:literal, $esp:literal;)*) => {
        mod strongswan_initiates {
            use super::*;
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    run(Case { ike: $ike, esp: $esp, tandem_initiates: false, delete_from_peer: true })
                }
            )*
        }
        mod tandemd_initiates {
            use super::*;
            $(
                #[test]
                fn $name() -> anyhow::Result<()> {
                    run(Case { ike: $ike, esp: $esp, tandem_initiates: true, delete_from_peer: false })
                }
            )*
        }
    };
}

interop! {
    gcm256_x25519: "aes256gcm16-prfsha256-curve25519", "aes256gcm16";
    gcm128_ecp256_pfs: "aes128gcm16-prfsha384-ecp256", "aes128gcm16-ecp256";
    cbc256_sha384_ecp384: "aes256-sha384-ecp384", "aes256-sha384";
    cbc128_sha256_modp2048_pfs: "aes128-sha256-modp2048", "aes128-sha256-modp2048";
    cbc256_sha512_x25519_esn: "aes256-sha512-curve25519", "aes256-sha512-esn";
    cbc128_sha1_modp2048: "aes128-sha1-modp2048", "aes128-sha1";
}
