//! Diffie-Hellman groups for IKEv2 key exchange, with peer public value validation.

use crate::{CryptoError, Secret, SecureRandom};

/// Supported DH groups (IANA "Transform Type 4"). MODP groups below 2048 bits are
/// deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DhGroup {
    /// 14: 2048-bit MODP (RFC 3526).
    Modp2048,
    /// 19: NIST P-256 (RFC 5903).
    Ecp256,
    /// 20: NIST P-384 (RFC 5903).
    Ecp384,
    /// 31: Curve25519 (RFC 8031).
    Curve25519,
}

impl DhGroup {
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            14 => Some(Self::Modp2048),
            19 => Some(Self::Ecp256),
            20 => Some(Self::Ecp384),
            31 => Some(Self::Curve25519),
            _ => None,
        }
    }

    pub fn id(self) -> u16 {
        match self {
            Self::Modp2048 => 14,
            Self::Ecp256 => 19,
            Self::Ecp384 => 20,
            Self::Curve25519 => 31,
        }
    }

    /// Length of the KE payload's key exchange data for this group.
    pub fn public_len(self) -> usize {
        match self {
            Self::Modp2048 => 256,
            Self::Ecp256 => 64,
            Self::Ecp384 => 96,
            Self::Curve25519 => 32,
        }
    }
}

/// Our ephemeral private value for one exchange. Zeroizes on drop.
pub struct DhPrivate {
    group: DhGroup,
}

impl std::fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhPrivate")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl DhPrivate {
    pub fn generate(group: DhGroup, rng: &mut dyn SecureRandom) -> Self {
        let _ = rng;
        let _ = Self { group };
        unimplemented!("filled in by the crypto work")
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Our public value in IKE KE payload encoding: big-endian for MODP, `x || y`
    /// without a point-format prefix for ECP (RFC 5903 section 7), the u-coordinate
    /// for Curve25519 (RFC 8031 section 3.1).
    pub fn public_value(&self) -> Vec<u8> {
        unimplemented!("filled in by the crypto work")
    }

    /// Validates the peer's public value and computes the shared secret g^ir
    /// (MODP: big-endian, padded to the modulus length; ECP: the x coordinate;
    /// Curve25519: the 32 bytes, rejected if all zero).
    pub fn agree(&self, peer_public: &[u8]) -> Result<Secret, CryptoError> {
        let _ = peer_public;
        unimplemented!("filled in by the crypto work")
    }
}
