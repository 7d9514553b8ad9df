//! What the cluster replicates: typed changes, grouped into one command per Raft
//! entry, and the versioned encoding every entry and RPC body uses.
//!
//! Compatibility rule: variants and fields are only ever appended, and any change
//! a node of an older version could misread bumps [`WIRE_VERSION`]. A node that
//! meets a newer version than its own refuses it by name (see [`decode`]) instead
//! of applying something it does not understand.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tandem_ike::endpoint::ChildSa;
use tandem_ike::record::IkeSaRecord;

use crate::NodeId;
use crate::state::TunnelSpec;

/// Encoding version written by this build. 2: sequence reservations ask for
/// a count (they named an absolute number), tunnels carry a [`TunnelSpec`],
/// forwarded writes answer with an [`crate::Outcome`]. 3: planned handovers
/// start with [`Change::HandoverPrepared`]. 4: reservations name the child
/// by the inbound SPI this cluster chose ([`Change::SeqBlockReservedFor`]),
/// revocations ([`Change::CertRevoked`]), outcomes say what was refused, and
/// snapshots bind their metadata.
pub const WIRE_VERSION: u16 = 4;

/// One Raft entry's worth of changes, applied atomically: everything one step of
/// a gateway's IKE endpoint changed, so the reply it releases after the commit
/// never refers to half-replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub changes: Vec<Change>,
}

impl Command {
    pub fn one(change: Change) -> Self {
        Self {
            changes: vec![change],
        }
    }
}

/// A typed change to the replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A tunnel's configuration, created or replaced (keyed by name): it
    /// overrides the gateways' configuration files from then on.
    TunnelUpsert(Box<TunnelSpec>),
    /// A tunnel removed, with its SAs; files that still name it are
    /// overridden.
    TunnelRemove {
        name: String,
    },
    /// An IKE SA's state after an exchange (keyed by the gateway's SPI): keys,
    /// message IDs, the last response, timers.
    IkeSaCommitted {
        by: NodeId,
        record: Box<IkeSaRecord>,
    },
    IkeSaRemoved {
        our_spi: u64,
    },
    /// A child SA negotiated (a rekey when `replaces` is set; the old one stays
    /// until its own delete).
    ChildSaInstalled(Box<ChildSa>),
    ChildSaDeleted {
        inbound_spi: u32,
    },
    /// A node's lease, renewed for `duration_ms` from the proposer's clock
    /// reading `at_ms` (milliseconds since the Unix epoch).
    LeaseRenewed {
        node: NodeId,
        at_ms: u64,
        duration_ms: u64,
    },
    /// A tunnel's owner (the only node that sends for it), first assigned or
    /// moved after a lease lapsed.
    OwnerAssigned {
        tunnel: String,
        node: NodeId,
    },
    /// A planned handover: `from` stopped sending; `to` starts above the
    /// outbound sequence numbers `from` reserved.
    OwnerTransferred {
        tunnel: String,
        from: NodeId,
        to: NodeId,
    },
    /// Before WIRE_VERSION 4: [`Change::SeqBlockReservedFor`], naming the
    /// child by its peer-chosen outbound SPI, which two tunnels' peers can
    /// share. Only read from old logs.
    SeqBlockReserved {
        outbound_spi: u32,
        node: NodeId,
        count: u64,
    },
    /// Highest inbound sequence number accepted on a child so far.
    ReplayMarkSynced {
        inbound_spi: u32,
        highest: u64,
    },
    /// An operator's probe (`tandemd ctl probe`): proves the cluster commits
    /// and measures how fast, with `padding` making it as large as an SA.
    Probe {
        node: NodeId,
        seq: u64,
        padding: Vec<u8>,
    },
    /// A planned handover's first step: `to` takes the tunnel's addresses
    /// (so the peer and the LAN send to it), holds the LAN traffic it cannot
    /// seal yet, and proposes the [`Change::OwnerTransferred`] itself. No
    /// state: a handover that never completes leaves `from` the owner.
    HandoverPrepared {
        tunnel: String,
        from: NodeId,
        to: NodeId,
    },
    /// The next `count` outbound sequence numbers of the child whose inbound
    /// SPI (this cluster's choice) is `inbound_spi`, after every number
    /// reserved before, may be used by `node` if it owns the child's
    /// tunnel. Relative, so a node with a stale view of the state (one that
    /// just restarted) cannot be granted numbers another node used.
    SeqBlockReservedFor {
        inbound_spi: u32,
        node: NodeId,
        count: u64,
    },
    /// A certificate that no member admits from now on.
    CertRevoked(crate::trust::Revoked),
}

impl Change {
    /// The member a change speaks for, where it speaks for one: a member
    /// may forward only changes in its own name (its lease, its IKE state,
    /// its reservations, its probes); the leader refuses others.
    pub fn speaks_for(&self) -> Option<NodeId> {
        match self {
            Change::IkeSaCommitted { by, .. } => Some(*by),
            Change::LeaseRenewed { node, .. }
            | Change::SeqBlockReserved { node, .. }
            | Change::SeqBlockReservedFor { node, .. }
            | Change::Probe { node, .. } => Some(*node),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    #[error(
        "encoded by a newer Tandem (format {found}, this build reads up to {WIRE_VERSION}); upgrade this node"
    )]
    NewerVersion { found: u16 },
    #[error("empty or truncated encoding")]
    Truncated,
    #[error("undecodable: {0}")]
    Body(String),
}

/// `version (u16, little-endian) | postcard(value)`.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let out = WIRE_VERSION.to_le_bytes().to_vec();
    // postcard cannot fail on these types (no maps with non-string keys issues,
    // no unsupported serde features); an error would be a programming bug.
    match postcard::to_extend(value, out) {
        Ok(v) => v,
        Err(e) => panic!("postcard encoding failed: {e}"),
    }
}

/// The format version an encoding says it has.
pub fn version_of(bytes: &[u8]) -> Option<u16> {
    bytes
        .split_first_chunk::<2>()
        .map(|(v, _)| u16::from_le_bytes(*v))
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (version, body) = bytes
        .split_first_chunk::<2>()
        .ok_or(CodecError::Truncated)?;
    let found = u16::from_le_bytes(*version);
    if found > WIRE_VERSION {
        return Err(CodecError::NewerVersion { found });
    }
    postcard::from_bytes(body).map_err(|e| CodecError::Body(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_newer_versions_are_refused() {
        let cmd = Command::one(Change::ReplayMarkSynced {
            inbound_spi: 7,
            highest: 1 << 40,
        });
        let bytes = encode(&cmd);
        assert_eq!(decode::<Command>(&bytes).unwrap(), cmd);
        let mut newer = bytes.clone();
        newer[..2].copy_from_slice(&(WIRE_VERSION + 1).to_le_bytes());
        let err = decode::<Command>(&newer).unwrap_err();
        assert!(matches!(err, CodecError::NewerVersion { .. }));
        assert!(err.to_string().contains("upgrade this node"), "{err}");
        assert!(matches!(
            decode::<Command>(&[1]),
            Err(CodecError::Truncated)
        ));
        // An unknown variant (from a newer build that forgot to bump the
        // version) is an error, not a silently different change.
        let mut unknown = bytes;
        unknown[3] = 200;
        assert!(decode::<Command>(&unknown).is_err());
    }
}
