//! Runs one seed: builds the simulated site, brings the tunnels up, plays
//! the plan's faults while checking every invariant after every step, heals
//! everything, and requires the tunnels to settle on one owner each with
//! traffic flowing and no renegotiation.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::rc::Rc;
use std::time::Duration;

use tandem_cluster::{MemoryDisk, StorageKey};
use tandem_crypto::Secret;
use tandem_gateway::config::Config;
use tandem_gateway::control::Command;

use crate::check::{self, Checker, Context, Violation};
use crate::hosts::{self, GatewaySetup, host_name};
use crate::record::{NodeId, Shared};
use crate::scenario::{Fault, Plan, Target};
use tandem_gateway::lab::{self, vip};

/// How long the tunnels may take to come up.
const SETUP_LIMIT: Duration = Duration::from_secs(15);
/// How long after the last fault heals the site must settle.
const LIVENESS_LIMIT: Duration = Duration::from_secs(20);
/// Traffic must flow this long, settled, at the end.
const SETTLED_FOR: Duration = Duration::from_secs(1);
/// A tunnel is flowing when its last echo is this recent.
const FLOWING: Duration = Duration::from_millis(100);
/// The lease the simulated gateways run with (tandemd's default), in ms.
const LEASE_MS: f64 = 600.0;

/// Breaks a rule on purpose, to show a checker can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sabotage {
    /// After giving a tunnel up, a node sends its last ESP datagrams again,
    /// as a node that ignored its lease would keep sending.
    IgnoreLease,
    /// A node sends one ESP datagram (sequence number 10) twice.
    RepeatSequence,
    /// A node answers every IKE request twice, the second time altered.
    AlterRetransmit,
    /// A node sends its first IKE response again long after.
    StaleResponse,
    /// A node hands every decrypted packet to the LAN twice.
    DeliverTwice,
    /// The members' disks are lost: nothing the peer uses is on a quorum.
    LoseDisks,
}

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub sabotage: Option<Sabotage>,
    /// Keep the whole trace (for `tandem-sim run --trace`).
    pub keep_trace: bool,
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub plan: Plan,
    pub digest: String,
    pub violation: Option<Violation>,
    /// Setup or liveness failure.
    pub stuck: Option<String>,
    /// Per tunnel: the longest time without an echo at the peer, from the
    /// first fault to the end.
    pub gaps: Vec<Duration>,
    /// Probes sent after the first fault that never came back.
    pub lost: u64,
    pub trace: Vec<String>,
}

impl Outcome {
    pub fn passed(&self) -> bool {
        self.violation.is_none() && self.stuck.is_none()
    }

    /// What failed, with the command that reproduces it; None if it passed.
    pub fn failure(&self) -> Option<String> {
        let why = match (&self.violation, &self.stuck) {
            (Some(v), _) => v.to_string(),
            (None, Some(s)) => s.clone(),
            (None, None) => return None,
        };
        Some(format!(
            "seed {} ({}): {why}
  reproduce: {}",
            self.plan.seed,
            self.plan.kind,
            self.reproduce()
        ))
    }

    /// The command that reproduces this run.
    pub fn reproduce(&self) -> String {
        format!(
            "cargo run -p tandem-sim --release -- run --seed {} --trace",
            self.plan.seed
        )
    }
}

fn gateway_toml(plan: &Plan, node: NodeId, ips: &BTreeMap<NodeId, IpAddr>) -> String {
    let witness = plan.is_witness(node);
    let mut t = format!(
        "[node]\nname = \"{}\"\ncontrol_socket = \"/nonexistent/tandemd.sock\"\n",
        host_name(node, witness)
    );
    if !witness {
        let vips: Vec<String> = (0..plan.tunnels)
            .map(|i| format!("\"{}\"", vip(i)))
            .collect();
        t += &format!("[ike]\nlisten = [{}]\n", vips.join(", "));
        for i in 0..plan.tunnels {
            t += &lab::gateway_connection(i);
        }
    }
    t += &format!(
        "[cluster]\nid = {node}\nlisten = \"{}:7400\"\ndata_dir = \"/nonexistent\"\npki_dir = \"/nonexistent\"\n\
         role = \"{}\"\nmode = \"{}\"\nlease = \"{}ms\"\n",
        ips[&node],
        if witness { "witness" } else { "gateway" },
        if plan.active_active {
            "active-active"
        } else {
            "active-standby"
        },
        // Clock drift, as the lease arithmetic sees it: a node whose clock
        // runs at `rate` counts its lease (and its renewal period, and
        // others' leases) out in 1/rate of the true time. Raft's own timers
        // run true.
        (LEASE_MS / plan.clock_rates[(node - 1) as usize]).round(),
    );
    for (id, ip) in ips {
        t += &format!(
            "[[cluster.member]]\nid = {id}\nname = \"{}\"\naddr = \"{ip}:7400\"\nwitness = {}\n",
            host_name(*id, plan.is_witness(*id)),
            plan.is_witness(*id)
        );
    }
    t
}

fn peer_toml(plan: &Plan) -> String {
    lab::peer_config(plan.tunnels, "/nonexistent/peer.sock")
}

fn parse(toml: &str) -> Result<Config, String> {
    Config::parse(toml, std::path::Path::new("/")).map_err(|e| e.to_string())
}

/// Runs `seed`'s plan.
pub fn run(seed: u64, options: &Options) -> Outcome {
    let plan = Plan::from_seed(seed);
    let shared = Shared::default();
    let mut outcome = Outcome {
        plan: plan.clone(),
        digest: String::new(),
        violation: None,
        stuck: None,
        gaps: Vec::new(),
        lost: 0,
        trace: Vec::new(),
    };
    if let Err(e) = drive(&plan, &shared, options, &mut outcome) {
        outcome.stuck.get_or_insert(e);
    }
    let rec = shared.lock();
    outcome.digest = rec.digest();
    if options.keep_trace || !outcome.passed() {
        outcome.trace = rec.lines().to_vec();
    }
    outcome
}

struct Driver<'a> {
    sim: turmoil::Sim<'a>,
    plan: &'a Plan,
    shared: &'a Shared,
    checkers: Vec<Box<dyn Checker>>,
    disks: Vec<(NodeId, MemoryDisk)>,
    key: StorageKey,
    crashed: BTreeSet<NodeId>,
}

impl Driver<'_> {
    fn now(&self) -> Duration {
        self.sim.elapsed()
    }

    fn host(&self, node: NodeId) -> String {
        host_name(node, self.plan.is_witness(node))
    }

    fn members(&self) -> Vec<String> {
        (1..=self.plan.members()).map(|n| self.host(n)).collect()
    }

    /// One step, then every invariant.
    fn step(&mut self) -> Result<(), StepError> {
        self.sim
            .step()
            .map_err(|e| StepError::Stuck(format!("a host failed: {e}")))?;
        let now = self.now();
        let rec = self.shared.lock();
        let ctx = Context {
            now,
            disks: &self.disks,
            key: &self.key,
        };
        for c in &mut self.checkers {
            c.check(&rec, &ctx).map_err(StepError::Broken)?;
        }
        Ok(())
    }

    fn step_for(&mut self, d: Duration) -> Result<(), StepError> {
        let until = self.now() + d;
        while self.now() < until {
            self.step()?;
        }
        Ok(())
    }

    /// Every tunnel's echoes are recent.
    fn flowing(&self) -> bool {
        let now = self.now();
        let rec = self.shared.lock();
        (0..self.plan.tunnels).all(|t| {
            rec.probes
                .get(&t)
                .and_then(|p| p.echoed.last())
                .is_some_and(|(at, _)| now.saturating_sub(*at) < FLOWING)
        })
    }

    /// Which node holds tunnel `t`'s address, if exactly one running node does.
    fn sole_holder(&self, t: u8) -> Option<NodeId> {
        let rec = self.shared.lock();
        let addr = IpAddr::V4(vip(t));
        let holders: Vec<NodeId> = rec
            .segment
            .holders(addr)
            .filter(|n| !self.crashed.contains(n))
            .collect();
        match holders.as_slice() {
            [one] if rec.segment.route(addr) == Some(*one) => Some(*one),
            _ => None,
        }
    }

    fn leader(&self) -> Option<NodeId> {
        let rec = self.shared.lock();
        rec.clusters
            .iter()
            .filter(|(n, _)| !self.crashed.contains(n))
            .find_map(|(_, c)| c.metrics().current_leader)
    }

    fn resolve(&self, target: Target) -> Option<NodeId> {
        let owner = self.shared.lock().segment.route(IpAddr::V4(vip(0)));
        let leader = self.leader();
        let running = (1..=self.plan.members()).filter(|n| !self.crashed.contains(n));
        match target {
            Target::Owner => owner,
            Target::Leader => leader,
            Target::Bystander => running
                .filter(|n| Some(*n) != owner && Some(*n) != leader && !self.plan.is_witness(*n))
                .last(),
            Target::Third => Some(self.plan.members()),
        }
    }

    fn crash(&mut self, node: NodeId) {
        let host = self.host(node);
        self.sim.crash(host.as_str());
        self.crashed.insert(node);
        let mut rec = self.shared.lock();
        rec.clusters.remove(&node);
        rec.controls.remove(&node);
    }

    fn restart(&mut self, node: NodeId) {
        if self.crashed.remove(&node) {
            let host = self.host(node);
            self.sim.bounce(host.as_str());
        }
    }

    fn control(&self, node: NodeId, cmd: Command) {
        let tx = self.shared.lock().controls.get(&node).cloned();
        if let Some(tx) = tx {
            let (reply, _) = tokio::sync::oneshot::channel();
            let _ = tx.try_send((cmd, reply));
        }
    }

    /// Starts `fault`; returns what undoes it and when.
    fn apply(&mut self, fault: &Fault) -> Option<(Duration, Heal)> {
        let at = self.now();
        self.shared.lock().note(at, format_args!("fault {fault:?}"));
        let others = |me: &str, all: Vec<String>| -> Vec<String> {
            all.into_iter().filter(|h| h != me).collect()
        };
        match *fault {
            Fault::Crash { target, down } => {
                let node = self.resolve(target)?;
                self.crash(node);
                Some((at + down, Heal::Restart(node)))
            }
            Fault::ClusterPartition { target, lasting } => {
                let node = self.resolve(target)?;
                let me = self.host(node);
                for other in others(&me, self.members()) {
                    self.sim.partition(me.as_str(), other.as_str());
                }
                Some((at + lasting, Heal::Links))
            }
            Fault::Freeze { target, lasting } => {
                let node = self.resolve(target)?;
                let me = self.host(node);
                let mut all = self.members();
                all.extend(["peer".to_owned(), "lan".to_owned()]);
                for other in others(&me, all) {
                    self.sim.hold(me.as_str(), other.as_str());
                }
                Some((at + lasting, Heal::Links))
            }
            Fault::OneWay { target, lasting } => {
                let node = self.resolve(target)?;
                let me = self.host(node);
                for other in others(&me, self.members()) {
                    self.sim.partition_oneway(me.as_str(), other.as_str());
                }
                Some((at + lasting, Heal::Links))
            }
            Fault::Split { side, lasting } => {
                let (a, b): (Vec<NodeId>, Vec<NodeId>) =
                    (1..=self.plan.members()).partition(|n| side & (1 << (n - 1)) != 0);
                for x in &a {
                    for y in &b {
                        self.sim
                            .partition(self.host(*x).as_str(), self.host(*y).as_str());
                    }
                }
                Some((at + lasting, Heal::Links))
            }
            Fault::OuterJitter { max, lasting } => {
                for gw in self.members() {
                    self.sim
                        .set_link_max_message_latency("peer", gw.as_str(), max);
                }
                Some((at + lasting, Heal::Links))
            }
            Fault::ClusterDelay { latency, lasting } => {
                let members = self.members();
                for a in &members {
                    for b in &members {
                        if a < b {
                            self.sim.set_link_latency(a.as_str(), b.as_str(), latency);
                        }
                    }
                }
                Some((at + lasting, Heal::Links))
            }
            Fault::OuterLoss { percent, lasting } => {
                for gw in self.members() {
                    self.sim
                        .set_link_fail_rate("peer", gw.as_str(), percent as f64 / 100.0);
                }
                Some((at + lasting, Heal::Links))
            }
            Fault::Handover => {
                let owner = self.resolve(Target::Owner)?;
                let to = (1..=self.plan.members()).find(|n| {
                    *n != owner && !self.plan.is_witness(*n) && !self.crashed.contains(n)
                })?;
                let via = self.leader().unwrap_or(owner);
                self.control(
                    via,
                    Command::Handover {
                        tunnel: "t0".into(),
                        to,
                    },
                );
                None
            }
            Fault::Drain => {
                let owner = self.resolve(Target::Owner)?;
                self.control(owner, Command::Drain(owner));
                None
            }
            Fault::Rekey { ike } => {
                let tx = self.shared.lock().peer_control.clone();
                if let Some(tx) = tx {
                    let (reply, _) = tokio::sync::oneshot::channel();
                    let cmd = if ike {
                        Command::RekeyIke("t0".into())
                    } else {
                        Command::RekeyChild("t0".into())
                    };
                    let _ = tx.try_send((cmd, reply));
                }
                None
            }
            Fault::Replay => {
                self.shared.lock().replay_now = true;
                None
            }
        }
    }

    fn heal(&mut self, heal: Heal) {
        let at = self.now();
        self.shared.lock().note(at, format_args!("heal {heal:?}"));
        match heal {
            Heal::Restart(node) => self.restart(node),
            Heal::Links => self.heal_links(),
        }
    }

    fn heal_links(&mut self) {
        let mut all = self.members();
        all.extend(["peer".to_owned(), "lan".to_owned()]);
        for a in &all {
            for b in &all {
                if a < b {
                    self.sim.set_link_fail_rate(a.as_str(), b.as_str(), 0.0);
                    self.sim
                        .set_link_latency(a.as_str(), b.as_str(), NORMAL_LATENCY);
                    self.sim.release(a.as_str(), b.as_str());
                    self.sim.repair(a.as_str(), b.as_str());
                }
            }
        }
    }
}

const NORMAL_LATENCY: Duration = Duration::from_micros(500);

#[derive(Debug, Clone, Copy)]
enum Heal {
    Restart(NodeId),
    Links,
}

enum StepError {
    Broken(Violation),
    Stuck(String),
}

fn drive(
    plan: &Plan,
    shared: &Shared,
    options: &Options,
    outcome: &mut Outcome,
) -> Result<(), String> {
    tandem_cluster::runtime::seed(plan.seed);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(2))
        .repair_rate(0.3)
        .rng_seed(plan.seed)
        .build();
    let key = StorageKey::from_secret(Secret::from_slice(&[7; 32])).map_err(|e| e.to_string())?;
    let ips: BTreeMap<NodeId, IpAddr> = (1..=plan.members())
        .map(|n| (n, sim.lookup(host_name(n, plan.is_witness(n)).as_str())))
        .collect();
    let mut disks = Vec::new();
    for node in 1..=plan.members() {
        let toml = gateway_toml(plan, node, &ips);
        parse(&toml)?;
        let disk = MemoryDisk::new().map_err(|e| e.to_string())?;
        disks.push((node, disk.clone()));
        let setup = GatewaySetup {
            node,
            toml,
            disk,
            key: key.clone(),
            shared: shared.clone(),
            seed: plan.seed,
            boots: Rc::new(Cell::new(0)),
            sabotage: options.sabotage.filter(|_| node == 1),
        };
        sim.host(host_name(node, plan.is_witness(node)).as_str(), move || {
            hosts::gateway(setup.clone())
        });
    }
    {
        let shared = shared.clone();
        sim.host("lan", move || hosts::lan(shared.clone()));
    }
    {
        let peer = parse(&peer_toml(plan))?;
        let toml = peer_toml(plan);
        drop(peer);
        let shared = shared.clone();
        let seed = plan.seed;
        sim.host("peer", move || {
            hosts::peer(toml.clone(), shared.clone(), seed)
        });
    }
    let checker_disks = if options.sabotage == Some(Sabotage::LoseDisks) {
        disks
            .iter()
            .map(|(n, _)| MemoryDisk::new().map(|d| (*n, d)))
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?
    } else {
        disks
    };
    let mut d = Driver {
        sim,
        plan,
        shared,
        checkers: check::all(),
        disks: checker_disks,
        key,
        crashed: BTreeSet::new(),
    };
    let result = phases(&mut d);
    let end = d.now();
    // Figures from the first fault on.
    let rec = shared.lock();
    let from = rec.fault_start.unwrap_or(end);
    for t in 0..plan.tunnels {
        let Some(p) = rec.probes.get(&t) else {
            continue;
        };
        let mut last = from;
        let mut gap = Duration::ZERO;
        for (at, _) in p.echoed.iter().filter(|(at, _)| *at >= from) {
            gap = gap.max(*at - last);
            last = *at;
        }
        outcome.gaps.push(gap.max(end.saturating_sub(last)));
        let echoed: BTreeSet<u64> = p.echoed.iter().map(|(_, s)| *s).collect();
        outcome.lost += p
            .sent
            .iter()
            .filter(|(s, at)| {
                **at >= from && **at + Duration::from_millis(500) < end && !echoed.contains(s)
            })
            .count() as u64;
    }
    drop(rec);
    match result {
        Ok(()) => Ok(()),
        Err(StepError::Broken(v)) => {
            outcome.violation = Some(v);
            Ok(())
        }
        Err(StepError::Stuck(s)) => Err(s),
    }
}

fn phases(d: &mut Driver<'_>) -> Result<(), StepError> {
    // Up: every tunnel established and echoing.
    while !d.flowing() {
        if d.now() > SETUP_LIMIT {
            return Err(StepError::Stuck("the tunnels did not come up".into()));
        }
        d.step()?;
    }
    d.step_for(Duration::from_millis(500))?;
    let start = d.now();
    d.shared.lock().fault_start = Some(start);
    let mut faults: VecDeque<(Duration, Fault)> = d.plan.faults.iter().cloned().collect();
    let mut heals: Vec<(Duration, Heal)> = Vec::new();
    while !faults.is_empty() || !heals.is_empty() {
        let now = d.now();
        while faults.front().is_some_and(|(at, _)| start + *at <= now) {
            if let Some((_, fault)) = faults.pop_front()
                && let Some(h) = d.apply(&fault)
            {
                heals.push(h);
            }
        }
        heals.sort_by_key(|(at, _)| *at);
        while heals.first().is_some_and(|(at, _)| *at <= now) {
            let (_, h) = heals.remove(0);
            d.heal(h);
        }
        d.step()?;
    }
    // Everything healed: settle within the limit.
    d.heal_links();
    for n in d.crashed.clone() {
        d.restart(n);
    }
    let healed = d.now();
    let mut settled_since: Option<Duration> = None;
    loop {
        d.step()?;
        let now = d.now();
        let settled = d.flowing() && (0..d.plan.tunnels).all(|t| d.sole_holder(t).is_some());
        match (settled, settled_since) {
            (true, None) => settled_since = Some(now),
            (true, Some(since)) if now - since >= SETTLED_FOR => break,
            (false, _) => settled_since = None,
            _ => {}
        }
        if now - healed > LIVENESS_LIMIT {
            let holders: Vec<_> = (0..d.plan.tunnels).map(|t| d.sole_holder(t)).collect();
            return Err(StepError::Stuck(format!(
                "not settled {LIVENESS_LIMIT:?} after healing: flowing {}, holders {holders:?}",
                d.flowing()
            )));
        }
    }
    let rec = d.shared.lock();
    if rec.peer_inits.len() != usize::from(d.plan.tunnels) {
        return Err(StepError::Stuck(format!(
            "the peer negotiated {} IKE SAs from scratch for {} tunnels",
            rec.peer_inits.len(),
            d.plan.tunnels
        )));
    }
    Ok(())
}
