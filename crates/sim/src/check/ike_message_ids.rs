//! RFC 7296 section 2.2 and DESIGN.md invariant 5: a responder's message IDs
//! never go backwards. Whichever node answers for an IKE SA, no response
//! carries a message ID below one already answered on that SA.

use std::collections::BTreeMap;

use super::{Checker, Context, Violation};
use crate::record::Record;

#[derive(Debug, Default)]
pub struct IkeMessageIds {
    done: usize,
    /// Highest message ID answered, per IKE SA (initiator SPI).
    top: BTreeMap<u64, u32>,
}

impl Checker for IkeMessageIds {
    fn check(&mut self, rec: &Record, _: &Context<'_>) -> Result<(), Violation> {
        for sent in super::responses(rec, self.done) {
            let h = &sent.header;
            let top = self.top.entry(h.spi_i).or_insert(h.message_id);
            if h.message_id < *top {
                return Err(Violation {
                    rule: "responder message IDs never go backwards (RFC 7296 2.2, invariant 5)",
                    at: sent.at,
                    what: format!(
                        "gw{} answered message {} on IKE SA {:016x} after message {top}",
                        sent.node, h.message_id, h.spi_i
                    ),
                });
            }
            *top = h.message_id;
        }
        self.done = rec.ike.len();
        Ok(())
    }
}
