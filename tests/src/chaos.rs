//! The chaos suite (`chaos/run`): a real Tandem cluster and a real
//! strongSwan customer device in network namespaces, broken on purpose while
//! UDP probe streams (1000 a second, both ways) and a TCP stream cross the
//! tunnel, with what the customer saw reported per scenario: `report.json`,
//! a table on the terminal and a timeline picture (`timeline.svg`).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use serde_json::json;

use crate::cluster::Cluster;
use crate::ha::HaSite;
use crate::probe::{self, Flow, now_us};
use crate::{Capture, Charon, Netns, Proc, SiteToSite, Tunnel, unique, wait_for};

const CONN: &str = "site-a";
/// Probes a second, each way.
const RATE: u32 = 1000;
/// Probing before the event, and after it.
const BEFORE: Duration = Duration::from_secs(2);
const AFTER: Duration = Duration::from_secs(8);
/// How long a crashed node stays down before its service manager restarts
/// it (deploy/systemd: RestartSec=1).
const RESTART_AFTER: Duration = Duration::from_secs(1);
/// The TCP stream's pace: bulk traffic, with room left for the probes (an
/// unpaced stream fills the tunnel on this 2-core machine, and the probes
/// it crowds out would count as failover losses).
const TCP_MBITS: u32 = 10;
/// Longest wait for full redundancy after an event.
const REDUNDANCY_WAIT: Duration = Duration::from_secs(30);

/// The customer device's settings, and what a scenario must meet.
#[derive(Debug, Clone)]
pub struct Options {
    pub peer_ike_proposal: String,
    pub peer_esp_proposal: String,
    pub peer_dpd: Duration,
    pub peer_ike_lifetime: Duration,
    pub peer_child_lifetime: Duration,
    pub thresholds: Thresholds,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            peer_ike_proposal: "aes256gcm16-prfsha256-curve25519".into(),
            peer_esp_proposal: "aes256gcm16".into(),
            peer_dpd: Duration::from_secs(10),
            peer_ike_lifetime: Duration::from_secs(8 * 3600),
            peer_child_lifetime: Duration::from_secs(3600),
            thresholds: Thresholds::default(),
        }
    }
}

/// The failover issue's thresholds: planned events lose at most one probe a
/// way and stop traffic for under 50 ms; unplanned ones under 1 s.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub planned_gap: Duration,
    pub planned_lost: u64,
    pub unplanned_gap: Duration,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            planned_gap: Duration::from_millis(50),
            planned_lost: 1,
            unplanned_gap: Duration::from_secs(1),
        }
    }
}

/// A way to break the cluster.
#[derive(Debug)]
pub struct Scenario {
    pub name: &'static str,
    pub planned: bool,
    /// Members: gateways and witnesses.
    pub layout: (u64, u64),
    /// Part of `--quick`.
    pub quick: bool,
    /// Probing after the event (scenarios that wait for a peer's
    /// retransmission, or fail twice, need longer than [`AFTER`]).
    pub after: Duration,
    pub what: &'static str,
    run: fn(&mut Lab<'_>) -> anyhow::Result<()>,
}

/// Every scenario, in the order they run.
pub fn scenarios() -> Vec<Scenario> {
    vec![
        Scenario {
            name: "planned-handover",
            planned: true,
            layout: (3, 0),
            quick: true,
            after: AFTER,
            what: "tandemctl handover of the tunnel to gateway 2",
            run: |lab| lab.ctl(&["handover", "--tunnel", CONN, "--to", "2"]),
        },
        Scenario {
            name: "drain",
            planned: true,
            layout: (3, 0),
            quick: false,
            after: AFTER,
            what: "tandemctl drain of the owner",
            run: |lab| lab.ctl(&["drain", "1"]),
        },
        Scenario {
            name: "rolling-restart",
            planned: true,
            layout: (3, 0),
            quick: false,
            after: Duration::from_secs(12),
            what: "an upgrade: each gateway in turn drained, stopped (SIGTERM), restarted, and back in full redundancy",
            run: |lab| {
                for id in 1..=3 {
                    lab.ctl_at(id % 3 + 1, &["drain", &id.to_string()])?;
                    lab.cluster.stop(&lab.site.nodes[id as usize - 1], id)?;
                    lab.mark(&format!("member {id} stopped"));
                    lab.restart(id)?;
                    lab.wait_redundant()?;
                    lab.mark("redundant again");
                }
                Ok(())
            },
        },
        Scenario {
            name: "kill-owner",
            planned: false,
            layout: (3, 0),
            quick: true,
            after: AFTER,
            what: "kill -9 of the owner; its service manager restarts it 1 s later",
            run: |lab| lab.crash_and_restart(1),
        },
        Scenario {
            name: "sigstop-owner",
            planned: false,
            layout: (3, 0),
            quick: false,
            after: AFTER,
            what: "SIGSTOP of the owner for 5 s, then SIGCONT",
            run: |lab| {
                let pid = lab.cluster.node(1).pid().to_string();
                crate::run_output(std::process::Command::new("kill").args(["-STOP", &pid]))?;
                lab.mark("owner stopped");
                std::thread::sleep(Duration::from_secs(5));
                crate::run_output(std::process::Command::new("kill").args(["-CONT", &pid]))?;
                lab.mark("owner continued");
                Ok(())
            },
        },
        Scenario {
            name: "outer-link-down",
            planned: false,
            layout: (3, 0),
            quick: false,
            after: AFTER,
            what: "the owner's outer link down for 5 s (no carrier; its cluster link stays up)",
            run: |lab| {
                let owner = lab.owner()?;
                lab.site.outer_link(owner as usize, false)?;
                lab.mark(&format!("member {owner}'s outer link down"));
                std::thread::sleep(Duration::from_secs(5));
                lab.site.outer_link(owner as usize, true)?;
                lab.mark(&format!("member {owner}'s outer link up"));
                Ok(())
            },
        },
        Scenario {
            name: "partition-owner",
            planned: false,
            layout: (3, 0),
            quick: true,
            after: AFTER,
            what: "the owner's cluster link down for 5 s (its outer link stays up)",
            run: |lab| {
                lab.site.cluster_link(1, false)?;
                lab.mark("owner cut off");
                std::thread::sleep(Duration::from_secs(5));
                lab.site.cluster_link(1, true)?;
                lab.mark("owner reconnected");
                Ok(())
            },
        },
        Scenario {
            name: "kill-leader",
            planned: false,
            layout: (3, 0),
            quick: false,
            after: AFTER,
            what: "kill -9 of the Raft leader while another gateway owns the tunnel",
            run: |lab| {
                let mut leader = lab.cluster.leader()?;
                if leader == 1 {
                    // The owner leads: move the tunnel first, so the leader
                    // killed is not its owner.
                    lab.ctl(&["handover", "--tunnel", CONN, "--to", "2"])?;
                    std::thread::sleep(Duration::from_secs(1));
                    leader = lab.cluster.leader()?;
                }
                lab.crash_and_restart(leader)
            },
        },
        Scenario {
            name: "witness-lost",
            planned: false,
            layout: (2, 1),
            quick: false,
            after: AFTER,
            what: "kill -9 of the witness of 2 gateways + witness; restarted 1 s later",
            run: |lab| lab.crash_and_restart(3),
        },
        Scenario {
            name: "child-rekey-owner-lost",
            planned: false,
            layout: (3, 0),
            quick: false,
            after: Duration::from_secs(12),
            what: "the owner stops and is killed with the peer's CREATE_CHILD_SA (child rekey) unanswered; the new owner answers the retransmission",
            run: |lab| lab.fail_mid_rekey("child"),
        },
        Scenario {
            name: "ike-rekey-owner-lost",
            planned: false,
            layout: (3, 0),
            quick: false,
            after: Duration::from_secs(12),
            what: "the owner stops and is killed with the peer's CREATE_CHILD_SA (IKE rekey) unanswered; the new owner answers the retransmission",
            run: |lab| lab.fail_mid_rekey("ike"),
        },
        Scenario {
            name: "two-failures",
            planned: false,
            layout: (3, 0),
            quick: false,
            after: Duration::from_secs(12),
            what: "kill -9 of the owner, restarted 1 s later; once redundancy is back, kill -9 of the new owner",
            run: |lab| {
                let first = lab.owner()?;
                lab.crash_and_restart(first)?;
                lab.wait_redundant()?;
                lab.mark("redundant again");
                let second = lab.owner()?;
                lab.crash_and_restart(second)
            },
        },
        Scenario {
            name: "disk-wiped",
            planned: false,
            layout: (3, 0),
            quick: false,
            after: AFTER,
            what: "kill -9 of the owner, its data directory deleted, restarted 1 s later: it rejoins from the others",
            run: |lab| {
                let owner = lab.owner()?;
                lab.crash(owner)?;
                let data = &lab.cluster.members[&owner].data_dir;
                std::fs::remove_dir_all(data)
                    .with_context(|| format!("cannot delete {}", data.display()))?;
                lab.mark(&format!("member {owner}'s data deleted"));
                std::thread::sleep(RESTART_AFTER);
                lab.restart(owner)
            },
        },
    ]
}

/// What the customer saw in one scenario.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub name: String,
    pub planned: bool,
    pub what: String,
    pub gap: Duration,
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub peer_ike_sa_kept: bool,
    pub peer_replay_errors: usize,
    pub peer_integrity_errors: usize,
    pub dual_sender: Duration,
    pub redundancy_restored: Option<Duration>,
    pub tcp_mbits: Option<f64>,
    /// Every threshold missed, each naming the figure.
    pub failures: Vec<String>,
    pub timeline: Timeline,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    pub fn json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "what": self.what,
            "planned": self.planned,
            "gap_ms": ms(self.gap),
            "probes_sent": self.sent,
            "probes_lost": self.lost,
            "probes_duplicated": self.duplicated,
            "peer_ike_sa_kept": self.peer_ike_sa_kept,
            "peer_replay_errors": self.peer_replay_errors,
            "peer_integrity_errors": self.peer_integrity_errors,
            "dual_sender_ms": ms(self.dual_sender),
            "redundancy_restored_ms": self.redundancy_restored.map(ms),
            "tcp_mbit_s": self.tcp_mbits,
            "passed": self.passed(),
            "failures": self.failures,
        })
    }

    fn judge(&mut self, t: &Thresholds) {
        let mut fail = |what: String| self.failures.push(format!("{}: {what}", self.name));
        if self.planned {
            if self.gap >= t.planned_gap {
                fail(format!(
                    "gap {} ms, planned limit under {} ms",
                    ms(self.gap),
                    ms(t.planned_gap)
                ));
            }
            if self.lost > t.planned_lost * 2 {
                fail(format!(
                    "{} probes lost, planned limit {} a way",
                    self.lost, t.planned_lost
                ));
            }
        } else if self.gap >= t.unplanned_gap {
            fail(format!(
                "gap {} ms, unplanned limit under {} ms",
                ms(self.gap),
                ms(t.unplanned_gap)
            ));
        }
        if !self.peer_ike_sa_kept {
            fail("the peer's IKE SA changed (renegotiated)".into());
        }
        if self.peer_replay_errors + self.peer_integrity_errors > 0 {
            fail(format!(
                "the peer logged {} replay and {} integrity errors",
                self.peer_replay_errors, self.peer_integrity_errors
            ));
        }
        if !self.dual_sender.is_zero() {
            fail(format!(
                "two nodes sent for one SA during {} ms",
                ms(self.dual_sender)
            ));
        }
        if self.duplicated > 0 {
            fail(format!("{} probes arrived twice", self.duplicated));
        }
        if self.redundancy_restored.is_none() {
            fail(format!(
                "redundancy not restored within {} s",
                REDUNDANCY_WAIT.as_secs()
            ));
        }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// What happened when, for the picture: probe arrivals each way, which node
/// held the tunnel's address, the events the scenario caused.
#[derive(Debug, Clone, Default)]
pub struct Timeline {
    pub start_us: u64,
    pub end_us: u64,
    pub up: Vec<u64>,
    pub down: Vec<u64>,
    /// Each ESP packet sent from the tunnel's address: (time, node).
    pub senders: Vec<(u64, usize)>,
    pub events: Vec<(u64, String)>,
}

/// One scenario's site, cluster and peer, running.
#[derive(Debug)]
pub struct Lab<'a> {
    pub site: &'a HaSite,
    pub cluster: Cluster,
    pub peer: Charon,
    /// The gateways' side of the tunnel, to restart a member with.
    gw_side: Tunnel,
    events: Vec<(u64, String)>,
}

impl Lab<'_> {
    fn mark(&mut self, what: &str) {
        self.events.push((now_us(), what.to_owned()));
    }

    /// `tandemctl` against gateway 3 (which the scenarios leave running).
    fn ctl(&mut self, args: &[&str]) -> anyhow::Result<()> {
        self.ctl_at(3, args)
    }

    /// `tandemctl` against member `id`.
    fn ctl_at(&mut self, id: u64, args: &[&str]) -> anyhow::Result<()> {
        self.mark(&format!("tandemctl {}", args.join(" ")));
        let out = self
            .cluster
            .tandemctl(&self.site.nodes[id as usize - 1], id, args)?;
        self.mark(out.lines().next().unwrap_or_default());
        Ok(())
    }

    /// A crash under a service manager: kill -9, the addresses released,
    /// and a restart `RESTART_AFTER` later.
    fn crash_and_restart(&mut self, id: u64) -> anyhow::Result<()> {
        self.crash(id)?;
        std::thread::sleep(RESTART_AFTER);
        self.restart(id)
    }

    /// kill -9 and what the service manager runs after it.
    fn crash(&mut self, id: u64) -> anyhow::Result<()> {
        self.cluster.crash(&self.site.nodes[id as usize - 1], id)?;
        self.mark(&format!("member {id} killed"));
        Ok(())
    }

    fn restart(&mut self, id: u64) -> anyhow::Result<()> {
        let witness = self.cluster.members[&id].witness;
        self.cluster.start(
            &self.site.nodes[id as usize - 1],
            id,
            (!witness).then_some(&self.gw_side),
        )?;
        self.mark(&format!("member {id} restarted"));
        Ok(())
    }

    /// The tunnel's owner, as the first running gateway sees it.
    fn owner(&self) -> anyhow::Result<u64> {
        let asker = self
            .cluster
            .running
            .keys()
            .find(|id| !self.cluster.members[id].witness)
            .context("no gateway running")?;
        self.cluster.view(*asker)?["owners"][CONN]
            .as_u64()
            .context("the tunnel has no owner")
    }

    fn wait_redundant(&self) -> anyhow::Result<()> {
        wait_for("full redundancy", REDUNDANCY_WAIT, || {
            Ok(self.redundant()?.then_some(()))
        })
    }

    /// The owner stops (SIGSTOP) and the peer starts a `kind` rekey, whose
    /// request reaches a node that never answers; then the owner is killed
    /// and restarted. The peer retransmits to the tunnel's address, now the
    /// new owner's, which must complete the rekey on the same IKE SA.
    fn fail_mid_rekey(&mut self, kind: &str) -> anyhow::Result<()> {
        let count = |log: &str| {
            let c = crate::rekey_count(log);
            if kind == "ike" { c.ike } else { c.child }
        };
        let before = count(&self.peer.log());
        let owner = self.owner()?;
        let pid = self.cluster.node(owner).pid().to_string();
        crate::run_output(std::process::Command::new("kill").args(["-STOP", &pid]))?;
        self.mark(&format!("member {owner} stopped"));
        // The device's names: its IKE SA's (peer-config's connection) and
        // its child's (the tunnel's).
        let name = if kind == "ike" {
            self.peer.wait_established()?.name
        } else {
            CONN.to_owned()
        };
        let mut swanctl = self.peer.start_rekey(kind, &name)?;
        self.mark(&format!("the peer starts a {kind} rekey"));
        // The request is on the stopped owner's socket before it dies.
        std::thread::sleep(Duration::from_millis(100));
        self.crash_and_restart(owner)?;
        let done = wait_for(
            &format!("the peer's {kind} rekey"),
            Duration::from_secs(20),
            || Ok((count(&self.peer.log()) > before).then_some(())),
        );
        let _ = swanctl.kill();
        let _ = swanctl.wait();
        done?;
        self.mark(&format!("{kind} rekey completed"));
        Ok(())
    }

    /// Every member running with a live lease, and the tunnel owned by one
    /// gateway and stood by on every other.
    fn redundant(&self) -> anyhow::Result<bool> {
        let gateways: Vec<u64> = self
            .cluster
            .members
            .iter()
            .filter(|(_, m)| !m.witness)
            .map(|(id, _)| *id)
            .collect();
        if self.cluster.running.len() != self.cluster.members.len() {
            return Ok(false);
        }
        let view = self.cluster.view(gateways[0])?;
        let fresh = gateways.iter().all(|g| {
            view["lease_age_ms"][g.to_string()]
                .as_u64()
                .is_some_and(|age| age < 1000)
        });
        let Some(owner) = view["owners"][CONN].as_u64() else {
            return Ok(false);
        };
        let mut standing_by = true;
        for g in gateways.iter().filter(|g| **g != owner) {
            let s = self.cluster.node(*g).status()?;
            standing_by &= s["ready"] == true
                && s["standby_child_sas"]
                    .as_array()
                    .is_some_and(|a| !a.is_empty());
        }
        Ok(fresh && standing_by)
    }
}

/// The device's side of the tunnel every scenario runs: the gateways run its
/// mirror image.
fn peer_tunnel(site: &HaSite, o: &Options) -> Tunnel {
    let mut t = site.tunnel(CONN, &o.peer_ike_proposal, &o.peer_esp_proposal);
    t.dpd_delay = o.peer_dpd;
    t.ike_rekey = o.peer_ike_lifetime;
    t.child_rekey = o.peer_child_lifetime;
    t
}

/// One probe stream: its receiver and sender, and where the receiver writes.
struct Stream {
    recv: Proc,
    send: Proc,
    out: PathBuf,
    count: u64,
}

impl Stream {
    fn start(
        from: &Netns,
        to: &Netns,
        to_addr: &str,
        dir: &Path,
        secs: Duration,
    ) -> anyhow::Result<Stream> {
        let me = std::env::current_exe()?;
        let me = me.to_str().context("binary path")?;
        let out = dir.join(unique("probes-"));
        let bind = format!("{to_addr}:{}", probe::PORT);
        let listen_for = (secs + Duration::from_secs(3)).as_secs().to_string();
        let recv = to.spawn(
            &[
                me,
                "probe-recv",
                "--bind",
                &bind,
                "--out",
                out.to_str().context("path")?,
                "--secs",
                &listen_for,
            ],
            &dir.join(unique("probe-recv-")),
        )?;
        // The receiver binds before the first probe leaves.
        std::thread::sleep(Duration::from_millis(300));
        let count = u64::from(RATE) * secs.as_secs();
        let send = from.spawn(
            &[
                me,
                "probe-send",
                "--to",
                &bind,
                "--rate",
                &RATE.to_string(),
                "--count",
                &count.to_string(),
            ],
            &dir.join(unique("probe-send-")),
        )?;
        Ok(Stream {
            recv,
            send,
            out,
            count,
        })
    }

    fn finish(mut self) -> anyhow::Result<Flow> {
        self.send.wait(Duration::from_secs(60))?;
        self.recv.wait(Duration::from_secs(10))?;
        let text = std::fs::read_to_string(&self.out).with_context(|| {
            format!("the probe receiver wrote nothing to {}", self.out.display())
        })?;
        Ok(Flow::parse(self.count, &text))
    }
}

/// Runs one scenario from a fresh site and reports what the customer saw.
pub fn run_scenario(s: &Scenario, o: &Options) -> anyhow::Result<Outcome> {
    let site = HaSite::new((s.layout.0 + s.layout.1) as usize)?;
    let dir = site.dir.path().to_path_buf();
    let mut cluster = site.cluster(s.layout.0, s.layout.1, "")?;
    let peer_side = peer_tunnel(&site, o);
    let gw_side = peer_side.mirrored();
    site.start_members(&mut cluster, &gw_side)?;
    // The device runs the configuration Tandem writes for it (`tandemd
    // peer-config`), its key in the file that configuration names; with
    // start_action = start it connects once loaded.
    let swanctl = cluster.node(1).peer_config(CONN, "swanctl")?;
    let psk = format!("secret = \"{}\"\n", peer_side.psk);
    let peer = Charon::start_conf(
        &site.peer,
        &dir,
        &swanctl,
        &[(&format!("{CONN}.psk.conf"), &psk)],
    )?;
    let before = peer.wait_established()?;
    let (established_before, ike_rekeys_before) = {
        let log = peer.log();
        (established(&log), crate::rekey_count(&log).ike)
    };
    let mut lab = Lab {
        site: &site,
        cluster,
        peer,
        gw_side,
        events: Vec::new(),
    };
    wait_for("full redundancy before the event", REDUNDANCY_WAIT, || {
        Ok(lab.redundant()?.then_some(()))
    })?;

    let capture = Capture::start(&lab.site.peer, "br0", &dir)?;
    let secs = BEFORE + s.after;
    let up = Stream::start(
        &lab.site.peer,
        &lab.site.lan,
        SiteToSite::GW_INNER,
        &dir,
        secs,
    )?;
    let down = Stream::start(
        &lab.site.lan,
        &lab.site.peer,
        SiteToSite::PEER_INNER,
        &dir,
        secs,
    )?;
    let start_us = now_us();
    let (tcp, restored) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let site = &site;
        let tcp = scope.spawn(move || {
            crate::iperf3_paced(
                &site.lan,
                SiteToSite::GW_INNER,
                (&site.peer, SiteToSite::PEER_INNER),
                secs.as_secs() as u32 - 1,
                TCP_MBITS,
                site.dir.path(),
            )
        });
        std::thread::sleep(BEFORE);
        let event = Instant::now();
        let restored = (s.run)(&mut lab).map(|()| {
            wait_for("full redundancy", REDUNDANCY_WAIT, || {
                Ok(lab.redundant()?.then_some(()))
            })
            .ok()
            .map(|()| event.elapsed())
        });
        let tcp = tcp
            .join()
            .map_err(|_| anyhow::anyhow!("iperf3 thread panicked"))?
            .ok();
        Ok((tcp, restored?))
    })?;
    let up = up.finish()?;
    let down = down.finish()?;
    eprintln!(
        "chaos: {}: peer->LAN lost {} (longest gap {:?} at +{} ms), LAN->peer lost {} (longest gap {:?} at +{} ms)",
        s.name,
        up.lost,
        up.longest_gap,
        up.gap_from_us.saturating_sub(start_us) / 1000,
        down.lost,
        down.longest_gap,
        down.gap_from_us.saturating_sub(start_us) / 1000
    );
    let esp = capture.stop()?;
    // Who sent the tunnel's ESP, from the capture: each node by the MAC of
    // its outer interface.
    let mut macs = std::collections::BTreeMap::new();
    for (i, (ns, dev)) in site.nodes.iter().zip(&site.node_ifs).enumerate() {
        let mac = ns.run(&["cat", &format!("/sys/class/net/{dev}/address")])?;
        macs.insert(mac.trim().to_owned(), i + 1);
    }
    let senders: Vec<(u64, usize)> = esp
        .iter()
        .filter(|e| e.sent_from(HaSite::VIP))
        .filter_map(|e| Some((e.micros, *macs.get(&e.mac)?)))
        .collect();
    let after = lab.peer.wait_established()?;
    let log = lab.peer.log();
    let count = |needles: &[&str]| {
        log.lines()
            .filter(|l| needles.iter().any(|n| l.contains(n)))
            .count()
    };
    let worst = if up.longest_gap >= down.longest_gap {
        &up
    } else {
        &down
    };
    let mut outcome = Outcome {
        name: s.name.to_owned(),
        planned: s.planned,
        what: s.what.to_owned(),
        gap: worst.longest_gap,
        sent: up.sent + down.sent,
        lost: up.lost + down.lost,
        duplicated: up.duplicated + down.duplicated,
        // Never set up afresh: the IKE SA the peer has is the one it had,
        // or that one rekeyed.
        peer_ike_sa_kept: established(&log) == established_before
            && ((after.spi_i.as_str(), after.spi_r.as_str())
                == (before.spi_i.as_str(), before.spi_r.as_str())
                || crate::rekey_count(&log).ike > ike_rekeys_before),
        // What strongSwan's userspace ESP (libipsec) logs for each.
        peer_replay_errors: count(&["ESP sequence number verification failed"]),
        peer_integrity_errors: count(&["ESP decryption or ICV verification failed"]),
        dual_sender: dual_sender(&esp),
        redundancy_restored: restored,
        tcp_mbits: tcp,
        failures: Vec::new(),
        timeline: Timeline {
            start_us,
            end_us: now_us(),
            up: up.arrivals,
            down: down.arrivals,
            senders,
            events: lab.events.clone(),
        },
    };
    outcome.judge(&o.thresholds);
    let Lab { cluster, peer, .. } = lab;
    site.tear_down(cluster, peer)?;
    Ok(outcome)
}

/// IKE SAs charon set up from scratch (IKE_SA_INIT), as its log says: a
/// rekeyed one is logged as "rekeyed between" instead.
fn established(log: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("IKE_SA ") && l.contains(" established between "))
        .count()
}

/// Packets of one sender less than this apart belong to one stretch of
/// sending: at 1000 probes a second a sender that is running an SA is
/// never silent this long.
const SENDING_STRETCH_GAP: u64 = 100_000;

/// How long two machines sent ESP for the same SA from the tunnel's
/// address at once: each sender's stretches of sending (packets less than
/// [`SENDING_STRETCH_GAP`] apart), and the time two senders' stretches
/// overlap. A clean switch, and a switch back after a second failure, are
/// none.
pub fn dual_sender(seen: &[crate::EspSeen]) -> Duration {
    let mut total = 0;
    for of_sa in crate::esp_by_sa(seen, HaSite::VIP).values() {
        let mut stretches: Vec<(&str, u64, u64)> = Vec::new();
        let mut by_sender: std::collections::BTreeMap<&str, Vec<u64>> = Default::default();
        for e in of_sa {
            by_sender.entry(&e.mac).or_default().push(e.micros);
        }
        for (mac, mut times) in by_sender {
            times.sort_unstable();
            let mut start = times[0];
            for pair in times.windows(2) {
                if pair[1] - pair[0] >= SENDING_STRETCH_GAP {
                    stretches.push((mac, start, pair[0]));
                    start = pair[1];
                }
            }
            stretches.push((mac, start, times[times.len() - 1]));
        }
        for (i, a) in stretches.iter().enumerate() {
            for b in &stretches[i + 1..] {
                if a.0 != b.0 {
                    total += a.2.min(b.2).saturating_sub(a.1.max(b.1));
                }
            }
        }
    }
    Duration::from_micros(total)
}

/// Runs `chosen` scenarios (all if empty; the quick ones with `quick`),
/// writes `report.json` and `timeline.svg` to `out`, prints the table;
/// returns whether every scenario passed.
pub fn run(chosen: &[String], quick: bool, o: &Options, out: &Path) -> anyhow::Result<bool> {
    let all = scenarios();
    for name in chosen {
        ensure!(
            all.iter().any(|s| s.name == name),
            "no scenario {name:?}; there are {:?}",
            all.iter().map(|s| s.name).collect::<Vec<_>>()
        );
    }
    let picked: Vec<&Scenario> = all
        .iter()
        .filter(|s| chosen.is_empty() || chosen.iter().any(|c| c == s.name))
        .filter(|s| !quick || s.quick)
        .collect();
    std::fs::create_dir_all(out)?;
    let mut outcomes = Vec::new();
    for s in picked {
        eprintln!("chaos: {} ({})", s.name, s.what);
        let outcome = run_scenario(s, o).with_context(|| format!("scenario {}", s.name))?;
        for f in &outcome.failures {
            eprintln!("chaos: FAILED {f}");
        }
        outcomes.push(outcome);
    }
    let report = json!({
        "date": crate::run_output(std::process::Command::new("date").arg("-u").arg("+%Y-%m-%dT%H:%M:%SZ"))?.trim(),
        "machine": machine()?,
        "versions": {
            "tandem": env!("CARGO_PKG_VERSION"),
            "strongswan": crate::run_output(std::process::Command::new("dpkg-query").args(["-W", "-f", "${Version}", "strongswan-charon"]))?.trim(),
        },
        "peer": {
            "ike_proposal": o.peer_ike_proposal,
            "esp_proposal": o.peer_esp_proposal,
            "dpd_s": o.peer_dpd.as_secs(),
            "ike_lifetime_s": o.peer_ike_lifetime.as_secs(),
            "child_lifetime_s": o.peer_child_lifetime.as_secs(),
        },
        "thresholds": {
            "planned_gap_ms": ms(o.thresholds.planned_gap),
            "planned_lost_per_direction": o.thresholds.planned_lost,
            "unplanned_gap_ms": ms(o.thresholds.unplanned_gap),
        },
        "scenarios": outcomes.iter().map(Outcome::json).collect::<Vec<_>>(),
    });
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    std::fs::write(out.join("timeline.svg"), svg(&outcomes))?;
    print!("{}", table(&outcomes));
    println!(
        "report: {}, picture: {}",
        out.join("report.json").display(),
        out.join("timeline.svg").display()
    );
    Ok(outcomes.iter().all(Outcome::passed))
}

fn machine() -> anyhow::Result<String> {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = crate::run_output(std::process::Command::new("uname").arg("-sr"))?;
    Ok(format!("{cpus} CPUs, {}", kernel.trim()))
}

/// The terminal table.
pub fn table(outcomes: &[Outcome]) -> String {
    let mut t = String::from(
        "scenario                 gap ms   sent    lost  dup  IKE SA kept  dual-sender ms  redundancy ms  TCP Mbit/s  result\n",
    );
    for o in outcomes {
        let _ = writeln!(
            t,
            "{:<24} {:>6}  {:>6}  {:>6}  {:>3}  {:<11}  {:>14}  {:>13}  {:>10}  {}",
            o.name,
            ms(o.gap),
            o.sent,
            o.lost,
            o.duplicated,
            if o.peer_ike_sa_kept { "yes" } else { "NO" },
            ms(o.dual_sender),
            o.redundancy_restored
                .map_or_else(|| "-".to_owned(), |d| ms(d).to_string()),
            o.tcp_mbits
                .map_or_else(|| "-".to_owned(), |m| format!("{m:.0}")),
            if o.passed() { "pass" } else { "FAIL" },
        );
    }
    t
}

/// One panel per scenario: probe arrivals each way (bars, broken where
/// probes stopped), which node held the tunnel's address, and the events.
pub fn svg(outcomes: &[Outcome]) -> String {
    const W: f64 = 1000.0;
    const LEFT: f64 = 120.0;
    const LINE: f64 = 13.0;
    let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"];
    let mut body = String::new();
    let mut top = 20.0;
    for o in outcomes {
        let t = &o.timeline;
        let span = (t.end_us.saturating_sub(t.start_us)).max(1) as f64;
        let x = |us: u64| LEFT + (W - LEFT - 10.0) * (us.saturating_sub(t.start_us) as f64 / span);
        let s = &mut body;
        let _ = writeln!(
            s,
            "<text x=\"4\" y=\"{top}\" font-weight=\"bold\">{} — gap {} ms, {} lost, {}</text>",
            o.name,
            ms(o.gap),
            o.lost,
            if o.passed() { "pass" } else { "FAIL" }
        );
        let mut bars = |label: &str, y: f64, times: &[u64], colour: &str| {
            let _ = writeln!(s, "<text x=\"4\" y=\"{}\">{label}</text>", y + 10.0);
            for (a, b) in runs(times) {
                let _ = writeln!(
                    s,
                    "<rect x=\"{:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"12\" fill=\"{colour}\"/>",
                    x(a),
                    (x(b) - x(a)).max(0.5)
                );
            }
        };
        bars("probes peer→LAN", top + 10.0, &t.up, "#4c9a2a");
        bars("probes LAN→peer", top + 28.0, &t.down, "#4c9a2a");
        let nodes: BTreeSet<usize> = t.senders.iter().map(|(_, n)| *n).collect();
        let mut y = top + 50.0;
        for node in &nodes {
            let sent: Vec<u64> = t
                .senders
                .iter()
                .filter(|(_, n)| n == node)
                .map(|(at, _)| *at)
                .collect();
            bars(
                &format!("node {node} sends ESP"),
                y,
                &sent,
                colours[(node - 1) % colours.len()],
            );
            y += 16.0;
        }
        // A second scale, and each event as a numbered line, its text
        // listed below in two columns (events come in clusters too tight
        // to label in place).
        let axis = y + 4.0;
        for sec in 0..=(span / 1e6) as u64 {
            let tx = x(t.start_us + sec * 1_000_000);
            let _ = writeln!(
                s,
                "<line x1=\"{tx:.1}\" y1=\"{axis}\" x2=\"{tx:.1}\" y2=\"{}\" stroke=\"#999\"/><text x=\"{tx:.1}\" y=\"{}\" fill=\"#555\" text-anchor=\"middle\" font-size=\"9\">{sec}</text>",
                axis + 4.0,
                axis + 13.0
            );
        }
        let _ = writeln!(
            s,
            "<text x=\"4\" y=\"{}\" fill=\"#555\">seconds</text>",
            axis + 13.0
        );
        let listed = axis + 30.0;
        let per_column = t.events.len().div_ceil(2);
        for (k, (at, what)) in t.events.iter().enumerate() {
            let ex = x(*at);
            let _ = writeln!(
                s,
                "<line x1=\"{ex:.1}\" y1=\"{}\" x2=\"{ex:.1}\" y2=\"{axis}\" stroke=\"red\"/><text x=\"{ex:.1}\" y=\"{}\" fill=\"red\" font-size=\"9\">{}</text>",
                top + 8.0,
                top + 8.0,
                k + 1
            );
            let (col, line) = (k / per_column.max(1), k % per_column.max(1));
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" fill=\"red\">{}  +{:.2} s  {}</text>",
                4.0 + 500.0 * col as f64,
                listed + LINE * line as f64,
                k + 1,
                at.saturating_sub(t.start_us) as f64 / 1e6,
                xml_escape(what)
            );
        }
        top = listed + LINE * per_column as f64 + 25.0;
    }
    format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{W}\" height=\"{top}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n{body}</svg>\n"
    )
}

/// Times closer than 5 ms to the previous one, as (first, last) bars.
fn runs(times: &[u64]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for &t in times {
        match runs.last_mut() {
            Some((_, end)) if t.saturating_sub(*end) < 5_000 => *end = t,
            _ => runs.push((t, t)),
        }
    }
    runs
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(planned: bool, gap_ms: u64, lost: u64) -> Outcome {
        Outcome {
            name: "x".into(),
            planned,
            what: String::new(),
            gap: Duration::from_millis(gap_ms),
            sent: 20_000,
            lost,
            duplicated: 0,
            peer_ike_sa_kept: true,
            peer_replay_errors: 0,
            peer_integrity_errors: 0,
            dual_sender: Duration::ZERO,
            redundancy_restored: Some(Duration::from_secs(2)),
            tcp_mbits: None,
            failures: Vec::new(),
            timeline: Timeline::default(),
        }
    }

    #[test]
    fn thresholds_fail_a_scenario_naming_the_figure() {
        let t = Thresholds::default();
        let mut ok = outcome(true, 30, 1);
        ok.judge(&t);
        assert!(ok.passed(), "{:?}", ok.failures);
        let mut slow = outcome(true, 60, 0);
        slow.judge(&t);
        assert_eq!(slow.failures, ["x: gap 60 ms, planned limit under 50 ms"]);
        let mut unplanned = outcome(false, 600, 120);
        unplanned.judge(&t);
        assert!(unplanned.passed());
        // A deliberately tightened threshold fails the same figures.
        unplanned.judge(&Thresholds {
            unplanned_gap: Duration::from_millis(500),
            ..t
        });
        assert_eq!(
            unplanned.failures,
            ["x: gap 600 ms, unplanned limit under 500 ms"]
        );
    }

    #[test]
    fn interleaved_senders_are_measured_and_a_clean_switch_is_not() {
        let esp = |micros, mac: &str| crate::EspSeen {
            micros,
            mac: mac.into(),
            from: format!("{}.4500", HaSite::VIP),
            spi: 7,
            seq: 0,
        };
        let clean = [esp(1, "a"), esp(2, "a"), esp(500, "b"), esp(501, "b")];
        assert_eq!(dual_sender(&clean), Duration::ZERO);
        let mixed = [esp(1, "a"), esp(100, "b"), esp(350, "a"), esp(400, "b")];
        assert_eq!(dual_sender(&mixed), Duration::from_micros(250));
        // Two failovers, a to b and back to a: never both at once.
        let back = [
            esp(1, "a"),
            esp(2, "a"),
            esp(500_000, "b"),
            esp(500_001, "b"),
            esp(1_000_000, "a"),
            esp(1_000_001, "a"),
        ];
        assert_eq!(dual_sender(&back), Duration::ZERO);
    }
}
