//! The replicated state machine: what every node knows about tunnels, SAs,
//! ownership, leases and sequence-number reservations. Applying is pure and
//! deterministic (no clock, no IO), so every node that applies the same log
//! holds the same state, and the simulator can check it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use tandem_ike::config::ConnectionConfig;
use tandem_ike::endpoint::ChildSa;
use tandem_ike::record::IkeSaRecord;

use crate::NodeId;
use crate::command::Change;
use crate::trust::Revoked;

/// The cluster's shared state. Keys live in here (zeroizing); it reaches disk
/// only sealed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Tunnels configured through the cluster, by name; `None` for one
    /// removed. Each overrides the same name in the gateways' files.
    pub tunnels: BTreeMap<String, Option<TunnelSpec>>,
    /// By the gateway's own SPI.
    pub ike_sas: BTreeMap<u64, CommittedIkeSa>,
    /// By the gateway's inbound SPI.
    pub child_sas: BTreeMap<u32, ChildSa>,
    pub leases: BTreeMap<NodeId, NodeLease>,
    /// Tunnel name to the node that sends for it.
    pub owners: BTreeMap<String, NodeId>,
    /// A child's outbound sequence numbers spoken for, by the child's
    /// inbound SPI: the one this cluster chose, so no peer can name another
    /// tunnel's reservation by choosing the same outbound SPI (invariant 9).
    pub seq_reservations: BTreeMap<u32, SeqReservation>,
    /// Inbound SPI to the highest sequence number accepted.
    pub replay_marks: BTreeMap<u32, u64>,
    /// Highest probe sequence number committed, per proposing node.
    pub probes: BTreeMap<NodeId, u64>,
    /// Certificates no member admits (see [`crate::trust`]). Last, so a
    /// snapshot written before it existed reads with none (see store).
    pub revoked: BTreeSet<Revoked>,
}

/// One tunnel's configuration, as every gateway runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSpec {
    pub ike: ConnectionConfig,
    pub replay_window: u32,
    pub initiate: bool,
    /// The LAN-side gateway address that moves with the tunnel.
    pub lan_addr: Option<std::net::IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedIkeSa {
    pub record: IkeSaRecord,
    /// The node whose endpoint committed it last.
    pub by: NodeId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeLease {
    pub at_ms: u64,
    pub duration_ms: u64,
    pub renewals: u64,
}

/// The sequence numbers of one outbound SA that are spoken for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqReservation {
    /// The owner the latest block belongs to.
    pub node: NodeId,
    /// The latest block, `from..=up_to`: reserved after every number anyone
    /// else may have used. Empty (`from > up_to`) right after the tunnel
    /// changed hands: the new owner's first block is the next one.
    pub from: u64,
    /// Every number up to this one (inclusive) is spoken for.
    pub up_to: u64,
}

/// What the state machine did with one committed command: the answer a
/// proposer gets, so it acts on what was decided, not on what it asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    pub granted: Vec<Grant>,
    /// Why the state machine refused the whole command (nothing of it was
    /// applied), if it did.
    pub refused: Option<String>,
}

/// A block of outbound sequence numbers granted to the SA's owner, for the
/// child with this inbound SPI.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub inbound_spi: u32,
    pub block: SeqReservation,
}

/// Bounds on what the replicated state holds, whoever proposes: a member
/// bug or a compromised member cannot grow every node's memory without end.
pub const MAX_TUNNELS: usize = 100_000;
pub const MAX_REVOKED: usize = 10_000;
/// Per tunnel: proposals and traffic selectors in one configuration.
const MAX_PROPOSALS: usize = 16;
const MAX_SELECTORS: usize = 64;
const MAX_NAME: usize = 64;

impl ClusterState {
    /// A tunnel changed hands: its SAs' latest blocks may be partly used by
    /// the old owner, so the new owner's blocks start after them.
    fn close_blocks(&mut self, tunnel: &str, owner: NodeId) {
        for c in self.child_sas.values().filter(|c| c.connection == tunnel) {
            if let Some(r) = self.seq_reservations.get_mut(&c.inbound_spi) {
                *r = SeqReservation {
                    node: owner,
                    from: r.up_to + 1,
                    up_to: r.up_to,
                };
            }
        }
    }

    /// Applies a whole command, or none of it: every change is checked here,
    /// on every node, whatever the proposer checked (DESIGN.md invariant 8).
    /// Refused are IKE state from a node that does not own the tunnel (an
    /// owner that lost its tunnel while cut off may still have a step in
    /// flight, and committing it would roll the new owner's IKE SA back,
    /// invariant 2), tunnels that break the configuration rules, child SAs
    /// whose SPIs are 0 or taken, and malformed revocations.
    pub fn apply_command(&mut self, changes: &[Change]) -> Outcome {
        if let Err(reason) = self.check(changes) {
            return Outcome {
                granted: Vec::new(),
                refused: Some(reason),
            };
        }
        let mut outcome = Outcome::default();
        for change in changes {
            outcome.granted.extend(self.apply(change));
        }
        outcome
    }

    fn check(&self, changes: &[Change]) -> Result<(), String> {
        // Tunnels are checked against the others as they will be when the
        // command's earlier changes have applied.
        let mut tunnels: Option<BTreeMap<&str, Option<&TunnelSpec>>> = None;
        for change in changes {
            match change {
                Change::IkeSaCommitted { by, record } => {
                    if let Some(owner) = self.owners.get(&record.connection)
                        && owner != by
                    {
                        return Err(format!(
                            "IKE state of {} from node {by}, which does not own it (node {owner} does)",
                            record.connection
                        ));
                    }
                }
                Change::TunnelUpsert(spec) => {
                    let view = tunnels.get_or_insert_with(|| {
                        self.tunnels
                            .iter()
                            .map(|(n, t)| (n.as_str(), t.as_ref()))
                            .collect()
                    });
                    let others = view
                        .iter()
                        .filter(|(n, _)| **n != spec.ike.name)
                        .filter_map(|(_, t)| *t);
                    spec.check(others)
                        .map_err(|e| format!("tunnel {:?}: {e}", spec.ike.name))?;
                    if view.len() >= MAX_TUNNELS && !view.contains_key(spec.ike.name.as_str()) {
                        return Err(format!("more than {MAX_TUNNELS} tunnels"));
                    }
                    view.insert(&spec.ike.name, Some(spec));
                }
                Change::TunnelRemove { name } => {
                    if let Some(view) = &mut tunnels {
                        view.insert(name, None);
                    }
                }
                Change::ChildSaInstalled(child) => {
                    if child.inbound_spi == 0 || child.outbound_spi == 0 {
                        return Err(format!(
                            "child SA of {} with SPI 0 (reserved, RFC 4303 2.1)",
                            child.connection
                        ));
                    }
                    if let Some(other) = self.child_sas.get(&child.inbound_spi)
                        && (other.connection != child.connection
                            || other.outbound_spi != child.outbound_spi)
                    {
                        return Err(format!(
                            "inbound SPI {:08x} of {} is taken by a child SA of {}",
                            child.inbound_spi, child.connection, other.connection
                        ));
                    }
                }
                Change::CertRevoked(entry) => {
                    if !entry.is_valid() {
                        return Err(format!("malformed revocation {entry}"));
                    }
                    if self.revoked.len() >= MAX_REVOKED && !self.revoked.contains(entry) {
                        return Err(format!("more than {MAX_REVOKED} revocations"));
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A digest of everything replicated but the leases (which every
    /// gateway renews several times a second): equal on two nodes, or
    /// before and after something, when the state is. Hex, 32 digits.
    pub fn digest(&self) -> String {
        let bytes = zeroize::Zeroizing::new(crate::command::encode(&(
            &self.tunnels,
            &self.ike_sas,
            &self.child_sas,
            &self.owners,
            &self.seq_reservations,
            &self.replay_marks,
            &self.probes,
            &self.revoked,
        )));
        let mac = tandem_crypto::PrfAlg::HmacSha256.prf(b"tandem state digest", &[&bytes]);
        mac.expose()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// Whether the cluster revoked this certificate.
    pub fn is_revoked(&self, id: &crate::trust::Identity) -> bool {
        self.revoked.iter().any(|r| r.covers(id))
    }

    /// Applies one change; returns the sequence-number block it granted, if
    /// it was a reservation the state machine accepted.
    pub fn apply(&mut self, change: &Change) -> Option<Grant> {
        match change {
            Change::TunnelUpsert(spec) => {
                self.tunnels
                    .insert(spec.ike.name.clone(), Some((**spec).clone()));
            }
            Change::TunnelRemove { name } => {
                self.tunnels.insert(name.clone(), None);
                self.owners.remove(name);
                self.ike_sas.retain(|_, sa| sa.record.connection != *name);
                let gone: Vec<u32> = self
                    .child_sas
                    .values()
                    .filter(|c| c.connection == *name)
                    .map(|c| c.inbound_spi)
                    .collect();
                for inbound_spi in gone {
                    self.apply(&Change::ChildSaDeleted { inbound_spi });
                }
            }
            Change::IkeSaCommitted { by, record } => {
                self.ike_sas.insert(
                    record.our_spi(),
                    CommittedIkeSa {
                        record: (**record).clone(),
                        by: *by,
                    },
                );
            }
            Change::IkeSaRemoved { our_spi } => {
                self.ike_sas.remove(our_spi);
            }
            Change::ChildSaInstalled(child) => {
                self.child_sas.insert(child.inbound_spi, (**child).clone());
            }
            Change::ChildSaDeleted { inbound_spi } => {
                self.child_sas.remove(inbound_spi);
                self.seq_reservations.remove(inbound_spi);
                self.replay_marks.remove(inbound_spi);
            }
            Change::LeaseRenewed {
                node,
                at_ms,
                duration_ms,
            } => {
                let lease = self.leases.entry(*node).or_insert(NodeLease {
                    at_ms: 0,
                    duration_ms: 0,
                    renewals: 0,
                });
                lease.at_ms = *at_ms;
                lease.duration_ms = *duration_ms;
                lease.renewals += 1;
            }
            Change::OwnerAssigned { tunnel, node } => {
                // The first claim wins: every gateway proposes owners for its
                // unowned tunnels, and a late duplicate must not undo a
                // transfer committed in between.
                if !self.owners.contains_key(tunnel) {
                    self.owners.insert(tunnel.clone(), *node);
                    self.close_blocks(tunnel, *node);
                }
            }
            Change::OwnerTransferred { tunnel, from, to } => {
                // Only the current owner can hand a tunnel over; a stale
                // transfer (the tunnel moved meanwhile) changes nothing.
                if self.owners.get(tunnel) == Some(from) {
                    self.owners.insert(tunnel.clone(), *to);
                    self.close_blocks(tunnel, *to);
                }
            }
            // Written by builds before WIRE_VERSION 4, which named the child
            // by its peer-chosen outbound SPI: replayed from old logs only.
            Change::SeqBlockReserved {
                outbound_spi,
                node,
                count,
            } => {
                let child = self
                    .child_sas
                    .values()
                    .find(|c| c.outbound_spi == *outbound_spi)?
                    .inbound_spi;
                return self.reserve(child, *node, *count);
            }
            Change::SeqBlockReservedFor {
                inbound_spi,
                node,
                count,
            } => return self.reserve(*inbound_spi, *node, *count),
            Change::ReplayMarkSynced {
                inbound_spi,
                highest,
            } => {
                if self.child_sas.contains_key(inbound_spi) {
                    let mark = self.replay_marks.entry(*inbound_spi).or_insert(0);
                    *mark = (*mark).max(*highest);
                }
            }
            // An instruction to the new owner, which acts on it (see
            // Change::HandoverPrepared); the transfer is what changes state.
            Change::HandoverPrepared { .. } => {}
            Change::Probe { node, seq, .. } => {
                let last = self.probes.entry(*node).or_insert(0);
                *last = (*last).max(*seq);
            }
            Change::CertRevoked(entry) => {
                self.revoked.insert(entry.clone());
            }
        }
        None
    }

    /// Invariant 3: only the SA's owner reserves, and a block starts after
    /// everything reserved before, whoever asks and whatever their view of
    /// the state was when they asked.
    fn reserve(&mut self, inbound_spi: u32, node: NodeId, count: u64) -> Option<Grant> {
        let owner = self
            .child_sas
            .get(&inbound_spi)
            .and_then(|c| self.owners.get(&c.connection));
        if owner != Some(&node) || count == 0 {
            return None;
        }
        let r = self
            .seq_reservations
            .entry(inbound_spi)
            .or_insert(SeqReservation {
                node,
                from: 1,
                up_to: 0,
            });
        let up_to = r.up_to.checked_add(count)?;
        *r = SeqReservation {
            node,
            from: r.up_to + 1,
            up_to,
        };
        Some(Grant {
            inbound_spi,
            block: *r,
        })
    }
}

impl TunnelSpec {
    /// The configuration rules every node enforces when it applies a
    /// tunnel, against the `others` it would run beside (the rules
    /// `tandemctl apply`'s member checks first, less what only that member
    /// can know, like its own listen addresses).
    pub fn check<'a>(&self, others: impl Iterator<Item = &'a TunnelSpec>) -> Result<(), String> {
        let ike = &self.ike;
        if ike.name.is_empty()
            || ike.name.len() > MAX_NAME
            || !ike.name.chars().all(|c| c.is_ascii_graphic())
        {
            return Err(format!(
                "name must be 1 to {MAX_NAME} printable characters without spaces"
            ));
        }
        if ike.psk.len() < 16 {
            return Err("psk must be at least 16 bytes".into());
        }
        for (what, n) in [
            ("ike_proposals", ike.ike_proposals.len()),
            ("esp_proposals", ike.esp_proposals.len()),
        ] {
            if !(1..=MAX_PROPOSALS).contains(&n) {
                return Err(format!("{what}: 1 to {MAX_PROPOSALS}, not {n}"));
            }
        }
        for (what, list) in [("local_ts", &ike.local_ts), ("remote_ts", &ike.remote_ts)] {
            if !(1..=MAX_SELECTORS).contains(&list.len()) {
                return Err(format!("{what}: 1 to {MAX_SELECTORS} selectors"));
            }
            if let Some(ts) = list.iter().find(|ts| !well_formed(ts)) {
                return Err(format!(
                    "{what}: malformed selector {}-{}",
                    ts.start, ts.end
                ));
            }
        }
        if !(64..=4096).contains(&self.replay_window) {
            return Err("replay_window must be between 64 and 4096".into());
        }
        if !usable(ike.local_addr) {
            return Err(format!(
                "local_addr {} is not a unicast address",
                ike.local_addr
            ));
        }
        if let Some(remote) = ike.remote_addr
            && !usable(remote)
        {
            return Err(format!("remote_addr {remote} is not a unicast address"));
        }
        if self.initiate && ike.remote_addr.is_none() {
            return Err("initiate needs a remote_addr".into());
        }
        let others: Vec<&TunnelSpec> = others.collect();
        if let Some(lan) = self.lan_addr {
            // The LAN address is added to a gateway's interface and
            // announced: it must not claim an address of a peer's network
            // or another tunnel's VIP.
            if !usable(lan) {
                return Err(format!("lan_addr {lan} is not a unicast address"));
            }
            let claimed = std::iter::once(self)
                .chain(others.iter().copied())
                .find(|t| t.ike.remote_ts.iter().any(|ts| covers(ts, lan)));
            if let Some(t) = claimed {
                return Err(format!(
                    "lan_addr {lan} lies in the remote_ts of {}",
                    t.ike.name
                ));
            }
            if let Some(t) = others.iter().find(|t| t.ike.local_addr == lan) {
                return Err(format!(
                    "lan_addr {lan} is the local_addr of {}",
                    t.ike.name
                ));
            }
        }
        for other in others {
            for a in &ike.remote_ts {
                if let Some(b) = other.ike.remote_ts.iter().find(|b| overlap(a, b)) {
                    return Err(format!(
                        "remote_ts {}-{} overlaps {}-{} of {}",
                        a.start, a.end, b.start, b.end, other.ike.name
                    ));
                }
            }
        }
        Ok(())
    }
}

type Selector = tandem_ike::message::TrafficSelector;

fn well_formed(ts: &Selector) -> bool {
    ts.start.is_ipv4() == ts.end.is_ipv4() && ts.start <= ts.end && ts.start_port <= ts.end_port
}

fn usable(addr: IpAddr) -> bool {
    !(addr.is_unspecified() || addr.is_multicast() || addr.is_loopback())
        && addr != IpAddr::V4(std::net::Ipv4Addr::BROADCAST)
}

fn covers(ts: &Selector, addr: IpAddr) -> bool {
    ts.start.is_ipv4() == addr.is_ipv4() && ts.start <= addr && addr <= ts.end
}

/// Two selectors of the same family whose address ranges meet: outbound
/// routing between their tunnels would depend on install order.
pub fn overlap(a: &Selector, b: &Selector) -> bool {
    a.start.is_ipv4() == b.start.is_ipv4() && a.start <= b.end && b.start <= a.end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(inbound: u32, outbound: u32) -> ChildSa {
        ChildSa::for_tests("site-a", inbound, outbound, &[1; 36])
    }

    #[test]
    fn reservations_and_replay_marks_never_go_backwards() {
        let mut s = ClusterState::default();
        s.apply(&Change::OwnerAssigned {
            tunnel: "site-a".into(),
            node: 1,
        });
        s.apply(&Change::ChildSaInstalled(Box::new(child(1, 2))));
        let reserve = |s: &mut ClusterState, node, count| {
            s.apply(&Change::SeqBlockReservedFor {
                inbound_spi: 1,
                node,
                count,
            })
            .map(|g| (g.block.from, g.block.up_to))
        };
        assert_eq!(reserve(&mut s, 1, 1000), Some((1, 1000)));
        assert_eq!(reserve(&mut s, 1, 500), Some((1001, 1500)));
        assert_eq!(reserve(&mut s, 1, 0), None, "an empty block is no grant");
        assert_eq!(
            reserve(&mut s, 2, 5000),
            None,
            "never by a node that does not own the SA"
        );
        assert_eq!(
            s.seq_reservations[&1],
            SeqReservation {
                node: 1,
                from: 1001,
                up_to: 1500
            },
        );
        s.apply(&Change::OwnerTransferred {
            tunnel: "site-a".into(),
            from: 1,
            to: 2,
        });
        assert_eq!(
            s.seq_reservations[&1],
            SeqReservation {
                node: 2,
                from: 1501,
                up_to: 1500
            },
            "the new owner starts after the old owner's block"
        );
        assert_eq!(reserve(&mut s, 1, 9000), None);
        assert_eq!(
            reserve(&mut s, 2, 2000),
            Some((1501, 3500)),
            "a block after everything reserved, whatever the asker knew"
        );
        assert_eq!(
            reserve(&mut s, 2, u64::MAX),
            None,
            "a block past the end of the number space is no grant"
        );
        for highest in [10, 5, 12] {
            s.apply(&Change::ReplayMarkSynced {
                inbound_spi: 1,
                highest,
            });
        }
        assert_eq!(s.replay_marks[&1], 12);
        // A mark for an unknown child is not kept.
        s.apply(&Change::ReplayMarkSynced {
            inbound_spi: 9,
            highest: 1,
        });
        assert!(!s.replay_marks.contains_key(&9));
        s.apply(&Change::ChildSaDeleted { inbound_spi: 1 });
        assert!(s.child_sas.is_empty() && s.seq_reservations.is_empty());
        assert!(s.replay_marks.is_empty());
    }

    #[test]
    fn only_the_owner_hands_a_tunnel_over() {
        let mut s = ClusterState::default();
        s.apply(&Change::OwnerAssigned {
            tunnel: "t".into(),
            node: 1,
        });
        s.apply(&Change::OwnerTransferred {
            tunnel: "t".into(),
            from: 2,
            to: 3,
        });
        assert_eq!(s.owners["t"], 1, "stale transfer ignored");
        s.apply(&Change::OwnerAssigned {
            tunnel: "t".into(),
            node: 3,
        });
        assert_eq!(s.owners["t"], 1, "a later assignment does not steal");
        s.apply(&Change::OwnerTransferred {
            tunnel: "t".into(),
            from: 1,
            to: 2,
        });
        assert_eq!(s.owners["t"], 2);
    }

    #[test]
    fn tunnels_removed_take_their_sas_and_stay_removed() {
        let mut s = ClusterState::default();
        let spec = TunnelSpec {
            ike: ConnectionConfig::for_tests("site-a"),
            replay_window: 1024,
            initiate: false,
            lan_addr: None,
        };
        s.apply(&Change::TunnelUpsert(Box::new(spec.clone())));
        assert_eq!(s.tunnels["site-a"], Some(spec));
        s.apply(&Change::OwnerAssigned {
            tunnel: "site-a".into(),
            node: 1,
        });
        s.apply(&Change::ChildSaInstalled(Box::new(child(1, 2))));
        s.apply(&Change::SeqBlockReservedFor {
            inbound_spi: 1,
            node: 1,
            count: 10,
        });
        s.apply(&Change::TunnelRemove {
            name: "site-a".into(),
        });
        assert_eq!(s.tunnels["site-a"], None, "a tombstone overrides files");
        assert!(s.owners.is_empty() && s.child_sas.is_empty() && s.seq_reservations.is_empty());
    }

    fn spec(name: &str, remote: [u8; 4]) -> TunnelSpec {
        let mut ike = ConnectionConfig::for_tests(name);
        ike.remote_ts[0].start = IpAddr::from(remote);
        ike.remote_ts[0].end = IpAddr::from([remote[0], remote[1], remote[2], 255]);
        TunnelSpec {
            ike,
            replay_window: 1024,
            initiate: false,
            lan_addr: None,
        }
    }

    fn refused(s: &mut ClusterState, changes: Vec<Change>) -> String {
        let before = s.clone();
        let outcome = s.apply_command(&changes);
        assert_eq!(*s, before, "a refused command changes nothing");
        outcome.refused.expect("refused")
    }

    #[test]
    fn one_peers_outbound_spi_cannot_name_another_tunnels_reservation() {
        let mut s = ClusterState::default();
        for (tunnel, node) in [("site-a", 1), ("site-b", 1)] {
            s.apply(&Change::OwnerAssigned {
                tunnel: tunnel.into(),
                node,
            });
        }
        s.apply(&Change::ChildSaInstalled(Box::new(child(1, 7))));
        // site-b's peer chose site-a's outbound SPI.
        let b = ChildSa::for_tests("site-b", 2, 7, &[2; 36]);
        assert!(
            s.apply_command(&[Change::ChildSaInstalled(Box::new(b))])
                .refused
                .is_none()
        );
        for inbound_spi in [1, 2] {
            s.apply(&Change::SeqBlockReservedFor {
                inbound_spi,
                node: 1,
                count: 100,
            });
        }
        s.apply(&Change::ChildSaDeleted { inbound_spi: 2 });
        assert_eq!(s.seq_reservations[&1].up_to, 100, "site-a's block stays");
        assert_eq!(s.seq_reservations.len(), 1);
        // A record from before WIRE_VERSION 4 names the child by outbound SPI.
        let legacy = s.apply(&Change::SeqBlockReserved {
            outbound_spi: 7,
            node: 1,
            count: 5,
        });
        assert_eq!(
            legacy.map(|g| (g.inbound_spi, g.block.up_to)),
            Some((1, 105))
        );
    }

    #[test]
    fn the_state_machine_checks_every_command_itself() {
        let mut s = ClusterState::default();
        s.apply(&Change::TunnelUpsert(Box::new(spec(
            "site-a",
            [10, 1, 0, 0],
        ))));
        s.apply(&Change::OwnerAssigned {
            tunnel: "site-a".into(),
            node: 1,
        });
        s.apply(&Change::ChildSaInstalled(Box::new(child(1, 2))));

        let overlapping = spec("site-b", [10, 1, 0, 0]);
        assert!(
            refused(&mut s, vec![Change::TunnelUpsert(Box::new(overlapping))]).contains("overlaps")
        );
        let mut weak = spec("site-b", [10, 2, 0, 0]);
        weak.ike.psk = tandem_crypto::Secret::new(b"short".to_vec());
        assert!(refused(&mut s, vec![Change::TunnelUpsert(Box::new(weak))]).contains("psk"));
        let mut lan = spec("site-b", [10, 2, 0, 0]);
        lan.lan_addr = Some(IpAddr::from([10, 1, 0, 9]));
        assert!(
            refused(&mut s, vec![Change::TunnelUpsert(Box::new(lan.clone()))])
                .contains("remote_ts of site-a")
        );
        lan.lan_addr = Some(IpAddr::from([127, 0, 0, 1]));
        assert!(refused(&mut s, vec![Change::TunnelUpsert(Box::new(lan))]).contains("unicast"));
        let mut window = spec("site-b", [10, 2, 0, 0]);
        window.replay_window = 1 << 20;
        assert!(
            refused(&mut s, vec![Change::TunnelUpsert(Box::new(window))]).contains("replay_window")
        );
        // Two tunnels in one command are checked against each other, and a
        // good change does not carry a bad one in.
        let both = vec![
            Change::TunnelUpsert(Box::new(spec("site-b", [10, 2, 0, 0]))),
            Change::TunnelUpsert(Box::new(spec("site-c", [10, 2, 0, 0]))),
        ];
        assert!(refused(&mut s, both).contains("site-c"));
        // Replacing a tunnel by name is not an overlap with itself.
        assert!(
            s.apply_command(&[Change::TunnelUpsert(Box::new(spec(
                "site-a",
                [10, 1, 0, 0]
            )))])
            .refused
            .is_none()
        );

        let zero = ChildSa::for_tests("site-a", 3, 0, &[1; 36]);
        assert!(refused(&mut s, vec![Change::ChildSaInstalled(Box::new(zero))]).contains("SPI 0"));
        let taken = ChildSa::for_tests("site-b", 1, 9, &[1; 36]);
        assert!(refused(&mut s, vec![Change::ChildSaInstalled(Box::new(taken))]).contains("taken"));

        let record = tandem_ike::record::IkeSaRecord::for_tests("site-a");
        let stale = Change::IkeSaCommitted {
            by: 2,
            record: Box::new(record),
        };
        assert!(refused(&mut s, vec![stale]).contains("does not own"));

        let bad = Change::CertRevoked(Revoked::Serial("not hex".into()));
        assert!(refused(&mut s, vec![bad]).contains("malformed"));
        let good = Change::CertRevoked(Revoked::Name("operator".into()));
        assert!(s.apply_command(&[good]).refused.is_none());
        assert!(s.revoked.contains(&Revoked::Name("operator".into())));
    }
}
