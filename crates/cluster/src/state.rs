//! The replicated state machine: what every node knows about tunnels, SAs,
//! ownership, leases and sequence-number reservations. Applying is pure and
//! deterministic (no clock, no IO), so every node that applies the same log
//! holds the same state, and the simulator can check it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_ike::config::ConnectionConfig;
use tandem_ike::endpoint::ChildSa;
use tandem_ike::record::IkeSaRecord;

use crate::NodeId;
use crate::command::Change;

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
    /// Outbound SPI to its highest reservation.
    pub seq_reservations: BTreeMap<u32, SeqReservation>,
    /// Inbound SPI to the highest sequence number accepted.
    pub replay_marks: BTreeMap<u32, u64>,
    /// Highest probe sequence number committed, per proposing node.
    pub probes: BTreeMap<NodeId, u64>,
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
}

/// A block of outbound sequence numbers granted to the SA's owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub outbound_spi: u32,
    pub block: SeqReservation,
}

impl ClusterState {
    /// A tunnel changed hands: its SAs' latest blocks may be partly used by
    /// the old owner, so the new owner's blocks start after them.
    fn close_blocks(&mut self, tunnel: &str, owner: NodeId) {
        for c in self.child_sas.values().filter(|c| c.connection == tunnel) {
            if let Some(r) = self.seq_reservations.get_mut(&c.outbound_spi) {
                *r = SeqReservation {
                    node: owner,
                    from: r.up_to + 1,
                    up_to: r.up_to,
                };
            }
        }
    }

    /// Applies a whole command, unless it carries IKE state from a node that
    /// does not own the tunnel: an owner that lost its tunnel (its lease
    /// lapsed while it was cut off) may still have a step in flight, and
    /// committing it would roll the new owner's IKE SA back (invariant 2).
    /// Returns what it did, or `None` if it refused the command.
    pub fn apply_command(&mut self, changes: &[Change]) -> Option<Outcome> {
        let stale = changes.iter().any(|c| match c {
            Change::IkeSaCommitted { by, record } => self
                .owners
                .get(&record.connection)
                .is_some_and(|owner| owner != by),
            _ => false,
        });
        if stale {
            return None;
        }
        let mut outcome = Outcome::default();
        for change in changes {
            outcome.granted.extend(self.apply(change));
        }
        Some(outcome)
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
                if let Some(child) = self.child_sas.remove(inbound_spi) {
                    self.seq_reservations.remove(&child.outbound_spi);
                }
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
            Change::SeqBlockReserved {
                outbound_spi,
                node,
                count,
            } => {
                // Invariant 3: only the SA's owner reserves, and a block
                // starts after everything reserved before, whoever asks and
                // whatever their view of the state was when they asked.
                let owner = self
                    .child_sas
                    .values()
                    .find(|c| c.outbound_spi == *outbound_spi)
                    .and_then(|c| self.owners.get(&c.connection));
                if owner != Some(node) || *count == 0 {
                    return None;
                }
                let r = self
                    .seq_reservations
                    .entry(*outbound_spi)
                    .or_insert(SeqReservation {
                        node: *node,
                        from: 1,
                        up_to: 0,
                    });
                let up_to = r.up_to.checked_add(*count)?;
                *r = SeqReservation {
                    node: *node,
                    from: r.up_to + 1,
                    up_to,
                };
                return Some(Grant {
                    outbound_spi: *outbound_spi,
                    block: *r,
                });
            }
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
        }
        None
    }
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
            s.apply(&Change::SeqBlockReserved {
                outbound_spi: 2,
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
            s.seq_reservations[&2],
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
            s.seq_reservations[&2],
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
        s.apply(&Change::SeqBlockReserved {
            outbound_spi: 2,
            node: 1,
            count: 10,
        });
        s.apply(&Change::TunnelRemove {
            name: "site-a".into(),
        });
        assert_eq!(s.tunnels["site-a"], None, "a tombstone overrides files");
        assert!(s.owners.is_empty() && s.child_sas.is_empty() && s.seq_reservations.is_empty());
    }
}
