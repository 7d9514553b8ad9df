//! The invariants of DESIGN.md, checked after every simulation step, one
//! file each. A checker reads only what the simulated world saw (the wire,
//! the LAN, the nodes' disks), never a node's own opinion of itself.

use std::time::Duration;

use crate::record::Record;

mod ike_message_ids;
mod quorum;
mod replay;
mod retransmit;
mod sequence_unique;
mod single_sender;

pub use ike_message_ids::IkeMessageIds;
pub use quorum::Quorum;
pub use replay::{REPLAY_RESIDUAL, Replay};
pub use retransmit::Retransmit;
pub use sequence_unique::SequenceUnique;
pub use single_sender::SingleSender;

/// A broken invariant: which rule, and what was seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub rule: &'static str,
    pub at: Duration,
    pub what: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} broken at {:.3} s: {}",
            self.rule,
            self.at.as_secs_f64(),
            self.what
        )
    }
}

/// One invariant, checked incrementally: each call looks at what was
/// recorded since the last.
pub trait Checker {
    fn check(&mut self, rec: &Record, ctx: &Context<'_>) -> Result<(), Violation>;
}

/// What a checker may need beyond the record.
#[derive(Debug)]
pub struct Context<'a> {
    pub now: Duration,
    /// The members' disks and the storage key, for the quorum check.
    pub disks: &'a [(crate::record::NodeId, tandem_cluster::MemoryDisk)],
    pub key: &'a tandem_cluster::StorageKey,
}

/// IKE responses the gateways sent from index `from` of the record on.
fn responses(rec: &Record, from: usize) -> impl Iterator<Item = &crate::record::IkeSent> {
    rec.ike[from..].iter().filter(|s| s.header.response)
}

/// Every checker.
pub fn all() -> Vec<Box<dyn Checker>> {
    vec![
        Box::new(SingleSender::default()),
        Box::new(SequenceUnique::default()),
        Box::new(Quorum::default()),
        Box::new(IkeMessageIds::default()),
        Box::new(Retransmit::default()),
        Box::new(Replay::default()),
    ]
}
