//! DESIGN.md invariant 3 and RFC 4303 section 3.3.3: an outbound sequence
//! number is never used twice under one SA, across failovers included (for
//! AES-GCM it is the nonce).

use std::collections::{BTreeMap, BTreeSet};

use super::{Checker, Context, Violation};
use crate::record::Record;

#[derive(Debug, Default)]
pub struct SequenceUnique {
    seen: BTreeMap<u32, (usize, BTreeSet<u32>)>,
}

impl Checker for SequenceUnique {
    fn check(&mut self, rec: &Record, _: &Context<'_>) -> Result<(), Violation> {
        for (spi, sends) in &rec.esp {
            let (done, used) = self.seen.entry(*spi).or_default();
            for s in &sends[*done..] {
                if !used.insert(s.seq) {
                    return Err(Violation {
                        rule: "sequence number used once (invariant 3, RFC 4303 3.3.3)",
                        at: s.at,
                        what: format!(
                            "seq {} sent twice on SPI {spi:08x} (by gw{})",
                            s.seq, s.node
                        ),
                    });
                }
            }
            *done = sends.len();
        }
        Ok(())
    }
}
