//! DESIGN.md invariant 1, commit before reply: any SA the peer believes in
//! exists on a quorum. Checked when the peer first uses an SA (its first
//! ESP datagram on a child SA, its first request on an IKE SA after
//! IKE_AUTH): by then a majority of the members' disks must hold it.

use super::{Checker, Context, Violation};
use crate::record::{PeerUse, Record};

#[derive(Debug, Default)]
pub struct Quorum {
    done: usize,
}

impl Checker for Quorum {
    fn check(&mut self, rec: &Record, ctx: &Context<'_>) -> Result<(), Violation> {
        if rec.peer_uses.len() == self.done {
            return Ok(());
        }
        let held: Vec<_> = ctx
            .disks
            .iter()
            .filter_map(|(node, disk)| {
                tandem_cluster::store::durable_sas(disk, ctx.key)
                    .ok()
                    .map(|sas| (*node, sas))
            })
            .collect();
        let quorum = ctx.disks.len() / 2 + 1;
        for (at, used) in &rec.peer_uses[self.done..] {
            let holders = held
                .iter()
                .filter(|(_, sas)| match used {
                    PeerUse::Child(spi) => sas.children.contains(spi),
                    PeerUse::Ike { spi_i, spi_r } => sas.ike.contains(&(*spi_i, *spi_r)),
                })
                .count();
            if holders < quorum {
                return Err(Violation {
                    rule: "commit before reply (invariant 1)",
                    at: *at,
                    what: format!(
                        "the peer used {used:?} held by {holders} of {} members",
                        ctx.disks.len()
                    ),
                });
            }
        }
        self.done = rec.peer_uses.len();
        Ok(())
    }
}
