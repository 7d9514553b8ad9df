//! DESIGN.md invariant 2, one sender per tunnel: at no instant do two nodes
//! send ESP for the same SA. Seen on the wire: every node's sequence
//! numbers come from its own blocks, each above all blocks reserved before
//! it, so a node that sends a number below one another node already sent
//! on that SA was sending while the other was: two senders at once.

use std::collections::BTreeMap;

use super::{Checker, Context, Violation};
use crate::record::{NodeId, Record};

#[derive(Debug, Default)]
pub struct SingleSender {
    /// Per SPI: how many sends were looked at, the highest sequence number
    /// sent, and by whom.
    seen: BTreeMap<u32, (usize, u32, NodeId)>,
}

impl Checker for SingleSender {
    fn check(&mut self, rec: &Record, _: &Context<'_>) -> Result<(), Violation> {
        for (spi, sends) in &rec.esp {
            let (done, top, by) = self.seen.entry(*spi).or_insert((0, 0, 0));
            for s in &sends[*done..] {
                if s.node != *by && s.seq < *top {
                    return Err(Violation {
                        rule: "one sender per SA (invariant 2)",
                        at: s.at,
                        what: format!(
                            "gw{} sent seq {} on SPI {spi:08x} after gw{by} had sent seq {top}",
                            s.node, s.seq
                        ),
                    });
                }
                if s.seq >= *top {
                    (*top, *by) = (s.seq, s.node);
                }
            }
            *done = sends.len();
        }
        Ok(())
    }
}
