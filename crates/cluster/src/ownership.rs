//! Which gateway sends for which tunnel (DESIGN.md invariant 2, "Failover"):
//! pure placement rules over the replicated state, so every node that asks
//! gets the same answer and the simulator can check them.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::command::Change;
use crate::state::ClusterState;

/// How tunnels spread over the gateways.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// One gateway (the lowest id that is up) owns every tunnel.
    #[default]
    ActiveStandby,
    /// Tunnels are dealt round-robin over the gateways in name order; a
    /// survivor takes the tunnels of a gateway that is down.
    ActiveActive,
}

/// The gateway `tunnel` belongs on among `candidates`; `tunnels` is every
/// tunnel's name (for active-active, the deal goes by position).
pub fn place(
    mode: Mode,
    tunnel: &str,
    tunnels: &BTreeSet<String>,
    candidates: &BTreeSet<NodeId>,
) -> Option<NodeId> {
    match mode {
        Mode::ActiveStandby => candidates.first().copied(),
        Mode::ActiveActive => {
            let i = tunnels.iter().position(|t| t == tunnel).unwrap_or(0);
            candidates.iter().copied().nth(i % candidates.len().max(1))
        }
    }
}

/// The tunnels a gateway runs: those of its configuration file, as the
/// cluster overrides them (added, or removed).
pub fn configured_tunnels(state: &ClusterState, files: &[String]) -> Vec<String> {
    let mut tunnels: BTreeSet<String> = files
        .iter()
        .filter(|t| !state.tunnels.contains_key(*t))
        .cloned()
        .collect();
    tunnels.extend(
        state
            .tunnels
            .iter()
            .filter(|(_, spec)| spec.is_some())
            .map(|(name, _)| name.clone()),
    );
    tunnels.into_iter().collect()
}

/// Every tunnel's name: the ones with owners and the ones configured here.
fn all_tunnels(state: &ClusterState, configured: &[String]) -> BTreeSet<String> {
    state
        .owners
        .keys()
        .cloned()
        .chain(configured.iter().cloned())
        .collect()
}

/// First owners for configured tunnels nobody owns, over all gateways (up or
/// not: a gateway that is down loses them again through its lease).
pub fn assign_unowned(
    mode: Mode,
    state: &ClusterState,
    configured: &[String],
    gateways: &BTreeSet<NodeId>,
) -> Vec<Change> {
    let tunnels = all_tunnels(state, configured);
    configured
        .iter()
        .filter(|t| !state.owners.contains_key(*t))
        .filter_map(|t| {
            place(mode, t, &tunnels, gateways).map(|node| Change::OwnerAssigned {
                tunnel: t.clone(),
                node,
            })
        })
        .collect()
}

/// On the leader: each tunnel whose owner is not `live` (its lease lapsed, or
/// it is no longer a gateway member) moves to a live gateway, its preferred
/// one if that is up.
pub fn reassign(
    mode: Mode,
    state: &ClusterState,
    gateways: &BTreeSet<NodeId>,
    live: &BTreeSet<NodeId>,
) -> Vec<Change> {
    let tunnels = all_tunnels(state, &[]);
    state
        .owners
        .iter()
        .filter(|(_, owner)| !live.contains(*owner))
        .filter_map(|(tunnel, owner)| {
            let to = place(mode, tunnel, &tunnels, gateways)
                .filter(|n| live.contains(n))
                .or_else(|| place(mode, tunnel, &tunnels, live))?;
            Some(Change::OwnerTransferred {
                tunnel: tunnel.clone(),
                from: *owner,
                to,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    fn owned(changes: &[Change], state: &mut ClusterState) {
        for c in changes {
            state.apply(c);
        }
    }

    #[test]
    fn active_standby_puts_everything_on_the_lowest_gateway_and_moves_it_all() {
        let mut s = ClusterState::default();
        let tunnels = vec!["a".to_owned(), "b".to_owned()];
        owned(
            &assign_unowned(Mode::ActiveStandby, &s, &tunnels, &set(&[1, 2])),
            &mut s,
        );
        assert_eq!(s.owners.values().copied().collect::<Vec<_>>(), [1, 1]);
        let moves = reassign(Mode::ActiveStandby, &s, &set(&[1, 2]), &set(&[2]));
        owned(&moves, &mut s);
        assert_eq!(s.owners.values().copied().collect::<Vec<_>>(), [2, 2]);
        // Gateway 1 comes back: nothing moves back by itself (no flapping).
        assert!(reassign(Mode::ActiveStandby, &s, &set(&[1, 2]), &set(&[1, 2])).is_empty());
    }

    #[test]
    fn active_active_deals_tunnels_and_a_survivor_takes_all() {
        let mut s = ClusterState::default();
        let tunnels = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        owned(
            &assign_unowned(Mode::ActiveActive, &s, &tunnels, &set(&[1, 2])),
            &mut s,
        );
        assert_eq!(s.owners.values().copied().collect::<Vec<_>>(), [1, 2, 1]);
        owned(
            &reassign(Mode::ActiveActive, &s, &set(&[1, 2]), &set(&[2])),
            &mut s,
        );
        assert_eq!(s.owners.values().copied().collect::<Vec<_>>(), [2, 2, 2]);
    }

    #[test]
    fn nobody_live_moves_nothing() {
        let mut s = ClusterState::default();
        owned(
            &assign_unowned(Mode::ActiveStandby, &s, &["a".to_owned()], &set(&[1])),
            &mut s,
        );
        assert!(reassign(Mode::ActiveStandby, &s, &set(&[1]), &set(&[])).is_empty());
    }

    #[test]
    fn the_cluster_adds_to_and_removes_from_the_files_tunnels() {
        let mut state = ClusterState::default();
        let files = ["site-a".to_owned(), "site-b".to_owned()];
        assert_eq!(configured_tunnels(&state, &files), files);
        state.tunnels.insert("site-b".into(), None);
        state.tunnels.insert(
            "site-c".into(),
            Some(crate::state::TunnelSpec {
                ike: tandem_ike::config::ConnectionConfig::for_tests("site-c"),
                replay_window: 1024,
                initiate: false,
                lan_addr: None,
            }),
        );
        assert_eq!(configured_tunnels(&state, &files), ["site-a", "site-c"]);
    }
}
