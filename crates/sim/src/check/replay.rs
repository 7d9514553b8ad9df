//! RFC 4303 section 3.4.3 and DESIGN.md invariant 4: no packet is accepted
//! twice. A node drops what its replay window has seen; a new owner starts
//! from the replay marks synced through Raft, so a replayed packet can get
//! through only if the old owner accepted it after its last sync: the
//! documented residual. Here: a second acceptance is allowed only through a
//! different node than the first, one the tunnel moved to since, and only if
//! the first came at most [`REPLAY_RESIDUAL`] before the first node's last
//! acceptance on that tunnel (its last sync can be no later than that).

use std::time::Duration;

use super::{Checker, Context, Violation};
use crate::record::Record;

/// Replay marks are synced every 100 ms (tandemd's MARK_SYNC_TICKS x TICK);
/// a sync takes a commit. Packets accepted in the last sync period before
/// the owner stopped can be accepted once more by the next owner.
pub const REPLAY_RESIDUAL: Duration = Duration::from_millis(150);

#[derive(Debug, Default)]
pub struct Replay {
    done: usize,
}

impl Checker for Replay {
    fn check(&mut self, rec: &Record, _: &Context<'_>) -> Result<(), Violation> {
        for &(tunnel, seq) in &rec.lan_repeats[self.done..] {
            let seen = &rec.probes[&tunnel].at_lan[&seq];
            let (first_at, first_by) = seen[0];
            let Some(&(at, by)) = seen.last() else {
                continue;
            };
            let moved = rec.moves.iter().any(|&(t, i, node, up)| {
                up && i == tunnel && node == by && t >= first_at && t <= at
            });
            // When the first node last accepted anything on this tunnel.
            let served_until = rec.probes[&tunnel]
                .at_lan
                .values()
                .flatten()
                .filter(|(t, node)| *node == first_by && *t < at)
                .map(|(t, _)| *t)
                .max()
                .unwrap_or(first_at);
            let residual = first_at + REPLAY_RESIDUAL >= served_until;
            if seen.len() > 2 || by == first_by || !moved || !residual {
                return Err(Violation {
                    rule: "no packet accepted twice (RFC 4303 3.4.3, invariant 4)",
                    at,
                    what: format!(
                        "probe {seq} of tunnel {tunnel} accepted by gw{first_by} at {:.3} s and again by gw{by}",
                        first_at.as_secs_f64()
                    ),
                });
            }
        }
        self.done = rec.lan_repeats.len();
        Ok(())
    }
}
