//! Seeded fault plans. One `u64` seed sets the topology (three gateways, or
//! two and a witness), the placement mode, the number of tunnels, the kind
//! of failure and every time and target in it.

use std::time::Duration;

use crate::record::NodeId;

/// A small deterministic generator (SplitMix64): the plan must not depend
/// on any library's notion of randomness, which may change between versions.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform in `[lo, hi)` milliseconds.
    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo))
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Which node a fault hits, resolved when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The node that holds tunnel 0's address.
    Owner,
    /// The Raft leader.
    Leader,
    /// A gateway that is neither the owner nor the leader, if there is one.
    Bystander,
    /// The witness, or gateway 3.
    Third,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// kill -9; restarted `down` later with its disk.
    Crash { target: Target, down: Duration },
    /// Cut from the other members (its outer link and LAN stay up).
    ClusterPartition { target: Target, lasting: Duration },
    /// Every link to and from it held (nothing arrives or leaves), then
    /// released all at once: what a frozen process looks like from outside.
    Freeze { target: Target, lasting: Duration },
    /// Nothing gets from `target` to the other members; the other way works.
    OneWay { target: Target, lasting: Duration },
    /// The members split in two: `side` (a bitmask of member ids, bit
    /// id-1) cannot reach the others. Outer links stay up.
    Split { side: u64, lasting: Duration },
    /// The outer path delays each datagram by up to `max`, so ESP arrives
    /// out of order.
    OuterJitter { max: Duration, lasting: Duration },
    /// Slow links between the members.
    ClusterDelay {
        latency: Duration,
        lasting: Duration,
    },
    /// Lossy outer path between the peer and every gateway.
    OuterLoss { percent: u64, lasting: Duration },
    /// `tandemctl handover` of tunnel 0 to another gateway.
    Handover,
    /// `tandemctl drain` of tunnel 0's owner.
    Drain,
    /// The peer rekeys tunnel 0's child SA, or its IKE SA.
    Rekey { ike: bool },
    /// An attacker on the outer segment resends the peer's last ESP.
    Replay,
}

impl Fault {
    pub fn is_planned(&self) -> bool {
        matches!(self, Fault::Handover | Fault::Drain)
    }
}

/// The families a seed picked from when the first regression seeds were
/// recorded; families added later are drawn after everything else, so that
/// a recorded seed keeps its plan.
const FIRST_KINDS: u64 = 12;

/// The scenario families a seed picks from; the stats table is per family.
pub const KINDS: [&str; 14] = [
    "kill-owner",
    "kill-leader",
    "partition-owner",
    "freeze-owner",
    "one-way-owner",
    "handover",
    "drain",
    "rekey-into-kill",
    "double-failure",
    "outer-loss",
    "slow-cluster",
    "replay-after-kill",
    "split",
    "outer-jitter",
];

#[derive(Debug, Clone)]
pub struct Plan {
    pub seed: u64,
    pub kind: &'static str,
    pub gateways: u64,
    pub witness: bool,
    pub active_active: bool,
    pub tunnels: u8,
    /// Each member's clock rate, within +-3 % of true (DESIGN.md's lease
    /// margin is 5 % each way).
    pub clock_rates: Vec<f64>,
    /// Faults with their time from the start of the fault phase.
    pub faults: Vec<(Duration, Fault)>,
}

impl Plan {
    pub fn members(&self) -> u64 {
        self.gateways + u64::from(self.witness)
    }

    pub fn from_seed(seed: u64) -> Plan {
        let mut r = Rng::new(seed);
        let mut kind = KINDS[r.below(FIRST_KINDS) as usize];
        let witness = r.chance(33);
        let gateways = if witness { 2 } else { 3 };
        let active_active = r.chance(30);
        let tunnels = if active_active || r.chance(25) { 2 } else { 1 };
        let at = r.millis(0, 500);
        let down = r.millis(1500, 4000);
        let lasting = r.millis(800, 3000);
        let owner_or_leader = if r.chance(50) {
            Target::Owner
        } else {
            Target::Leader
        };
        let mut faults = match kind {
            "kill-owner" => vec![(
                at,
                Fault::Crash {
                    target: Target::Owner,
                    down,
                },
            )],
            "kill-leader" => vec![(
                at,
                Fault::Crash {
                    target: Target::Leader,
                    down,
                },
            )],
            "partition-owner" => vec![(
                at,
                Fault::ClusterPartition {
                    target: Target::Owner,
                    lasting,
                },
            )],
            "freeze-owner" => vec![(
                at,
                Fault::Freeze {
                    target: Target::Owner,
                    lasting,
                },
            )],
            "one-way-owner" => vec![(
                at,
                Fault::OneWay {
                    target: owner_or_leader,
                    lasting,
                },
            )],
            "handover" => vec![(at, Fault::Handover)],
            "drain" => vec![(at, Fault::Drain)],
            "rekey-into-kill" => {
                let ike = r.chance(50);
                vec![
                    (at, Fault::Rekey { ike }),
                    (
                        at + r.millis(0, 30),
                        Fault::Crash {
                            target: Target::Owner,
                            down,
                        },
                    ),
                ]
            }
            "double-failure" => {
                let second = at + r.millis(100, 1500);
                vec![
                    (
                        at,
                        Fault::Crash {
                            target: Target::Owner,
                            down,
                        },
                    ),
                    (
                        second,
                        if r.chance(50) {
                            Fault::Crash {
                                target: Target::Owner,
                                down,
                            }
                        } else {
                            Fault::ClusterPartition {
                                target: Target::Owner,
                                lasting,
                            }
                        },
                    ),
                ]
            }
            "outer-loss" => vec![(
                at,
                Fault::OuterLoss {
                    percent: 5 + r.below(25),
                    lasting,
                },
            )],
            "slow-cluster" => vec![(
                at,
                Fault::ClusterDelay {
                    latency: r.millis(20, 120),
                    lasting,
                },
            )],
            _ => vec![
                (
                    at,
                    Fault::Crash {
                        target: Target::Owner,
                        down,
                    },
                ),
                (at + r.millis(500, 1500), Fault::Replay),
            ],
        };
        // Now and then a second, unrelated trouble in the same run.
        if r.chance(20) {
            let extra = match r.below(3) {
                0 => Fault::Rekey { ike: r.chance(50) },
                1 => Fault::Crash {
                    target: Target::Bystander,
                    down,
                },
                _ => Fault::OuterLoss {
                    percent: 5,
                    lasting,
                },
            };
            faults.push((r.millis(0, 2000), extra));
            faults.sort_by_key(|(t, _)| *t);
        }
        let clock_rates = (0..gateways + u64::from(witness))
            .map(|_| 0.97 + r.below(61) as f64 / 1000.0)
            .collect();
        // Families added after the first twelve, one chance in seven, from
        // a stream of their own.
        let mut r = Rng::new(seed ^ 0x5eed);
        if r.chance(14) {
            kind = KINDS[(FIRST_KINDS + r.below(KINDS.len() as u64 - FIRST_KINDS)) as usize];
            let at = r.millis(0, 500);
            let lasting = r.millis(800, 3000);
            faults = match kind {
                "split" => {
                    let members = gateways + u64::from(witness);
                    // Any proper, non-empty subset.
                    let side = 1 + r.below((1 << members) - 2);
                    vec![(at, Fault::Split { side, lasting })]
                }
                "outer-jitter" => vec![(
                    at,
                    Fault::OuterJitter {
                        max: r.millis(5, 40),
                        lasting,
                    },
                )],
                _ => Vec::new(),
            };
        }
        Plan {
            seed,
            kind,
            gateways,
            witness,
            active_active,
            tunnels,
            clock_rates,
            faults,
        }
    }

    /// Is `node` the witness?
    pub fn is_witness(&self, node: NodeId) -> bool {
        self.witness && node == self.members()
    }
}
