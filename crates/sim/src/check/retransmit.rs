//! RFC 7296 section 2.1 and DESIGN.md invariant 5: a retransmitted request
//! gets the same response, byte for byte, whichever node answers it (the
//! last response is part of the committed IKE SA record). IKE_SA_INIT is
//! left out: half-open SAs are not replicated, so a new owner answers a
//! retried IKE_SA_INIT afresh (documented).

use std::collections::BTreeMap;

use super::{Checker, Context, Violation};
use crate::record::Record;

#[derive(Debug, Default)]
pub struct Retransmit {
    done: usize,
    /// (initiator SPI, responder SPI, message ID) -> first response digest.
    first: BTreeMap<(u64, u64, u32), ([u8; 32], u64)>,
}

impl Checker for Retransmit {
    fn check(&mut self, rec: &Record, _: &Context<'_>) -> Result<(), Violation> {
        for sent in super::responses(rec, self.done) {
            let h = &sent.header;
            if h.exchange == crate::net::ExchangeType::IkeSaInit {
                continue;
            }
            let key = (h.spi_i, h.spi_r, h.message_id);
            let (digest, by) = *self.first.entry(key).or_insert((sent.digest, sent.node));
            if digest != sent.digest {
                return Err(Violation {
                    rule: "retransmitted requests get identical responses (RFC 7296 2.1, invariant 5)",
                    at: sent.at,
                    what: format!(
                        "gw{} answered message {} on IKE SA {:016x} with other bytes than gw{by} did",
                        sent.node, h.message_id, h.spi_i
                    ),
                });
            }
        }
        self.done = rec.ike.len();
        Ok(())
    }
}
