//! Diffie-Hellman groups for IKEv2 key exchange, with peer public value validation.

use std::sync::LazyLock;

use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, U256, U2048};
use p256::elliptic_curve::sec1::ToSec1Point;
use zeroize::Zeroizing;

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
    key: PrivateKey,
}

/// Each variant's secret zeroizes on drop: `Zeroizing` for the MODP exponent, and
/// the p256, p384 and x25519-dalek secret types wipe themselves.
enum PrivateKey {
    Modp {
        exponent: Zeroizing<U256>,
        public: U2048,
    },
    Ecp256(p256::SecretKey),
    Ecp384(p384::SecretKey),
    Curve25519(x25519_dalek::StaticSecret),
}

impl std::fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhPrivate")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

/// The 2048-bit MODP prime of RFC 3526 section 3.
const MODP2048_PRIME: &str = concat!(
    "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD1",
    "29024E088A67CC74020BBEA63B139B22514A08798E3404DD",
    "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245",
    "E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED",
    "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3D",
    "C2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F",
    "83655D23DCA3AD961C62F356208552BB9ED529077096966D",
    "670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B",
    "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9",
    "DE2BCBF6955817183995497CEA956AE515D2261898FA0510",
    "15728E5A8AACAA68FFFFFFFFFFFFFFFF",
);

/// Montgomery parameters for the MODP-2048 prime, computed on first use.
static MODP2048: LazyLock<FixedMontyParams<{ U2048::LIMBS }>> = LazyLock::new(|| {
    // The prime is public, so the variable-time setup leaks nothing.
    FixedMontyParams::new_vartime(Odd::<U2048>::from_be_hex(MODP2048_PRIME))
});

impl DhPrivate {
    pub fn generate(group: DhGroup, rng: &mut dyn SecureRandom) -> Self {
        let key = match group {
            DhGroup::Modp2048 => {
                // A 256-bit exponent gives the 128-bit security level that the
                // 2048-bit group itself tops out below (RFC 3526 section 8).
                let mut bytes = Zeroizing::new([0u8; 32]);
                rng.fill(&mut bytes[..]);
                modp_private(Zeroizing::new(U256::from_be_slice(&bytes[..])))
            }
            DhGroup::Ecp256 => PrivateKey::Ecp256(random_scalar(rng, 32, |b| {
                p256::SecretKey::from_slice(b).ok()
            })),
            DhGroup::Ecp384 => PrivateKey::Ecp384(random_scalar(rng, 48, |b| {
                p384::SecretKey::from_slice(b).ok()
            })),
            DhGroup::Curve25519 => {
                let mut bytes = Zeroizing::new([0u8; 32]);
                rng.fill(&mut bytes[..]);
                PrivateKey::Curve25519(x25519_dalek::StaticSecret::from(*bytes))
            }
        };
        Self { group, key }
    }

    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// Our public value in IKE KE payload encoding: big-endian for MODP, `x || y`
    /// without a point-format prefix for ECP (RFC 5903 section 7), the u-coordinate
    /// for Curve25519 (RFC 8031 section 3.1).
    pub fn public_value(&self) -> Vec<u8> {
        match &self.key {
            PrivateKey::Modp { public, .. } => public.to_be_bytes().to_vec(),
            // Uncompressed SEC1 is 0x04 || x || y; IKE drops the 0x04.
            PrivateKey::Ecp256(k) => k.public_key().to_sec1_point(false).as_bytes()[1..].to_vec(),
            PrivateKey::Ecp384(k) => k.public_key().to_sec1_point(false).as_bytes()[1..].to_vec(),
            PrivateKey::Curve25519(k) => x25519_dalek::PublicKey::from(k).as_bytes().to_vec(),
        }
    }

    /// Validates the peer's public value and computes the shared secret g^ir
    /// (MODP: big-endian, padded to the modulus length; ECP: the x coordinate;
    /// Curve25519: the 32 bytes, rejected if all zero).
    pub fn agree(&self, peer_public: &[u8]) -> Result<Secret, CryptoError> {
        let invalid = CryptoError::InvalidPublicValue {
            group: self.group.name(),
        };
        if peer_public.len() != self.group.public_len() {
            return Err(invalid);
        }
        match &self.key {
            PrivateKey::Modp { exponent, .. } => {
                let y = U2048::from_be_slice(peer_public);
                let p_minus_1 = MODP2048.modulus().get().wrapping_sub(&U2048::ONE);
                // 1 < y < p-1 (RFC 7296 section 5, SP 800-56A 5.6.2.3.1): the
                // excluded values would force the shared secret into {0, 1, p-1}.
                if y <= U2048::ONE || y >= p_minus_1 {
                    return Err(invalid);
                }
                let shared = Zeroizing::new(
                    FixedMontyForm::new(&y, &MODP2048)
                        .pow(&**exponent)
                        .retrieve(),
                );
                Ok(Secret::from_slice(&Zeroizing::new(shared.to_be_bytes())))
            }
            PrivateKey::Ecp256(k) => {
                let peer = p256::PublicKey::from_sec1_bytes(&uncompressed::<65>(peer_public))
                    .map_err(|_| invalid)?;
                Ok(Secret::from_slice(
                    k.diffie_hellman(&peer).raw_secret_bytes(),
                ))
            }
            PrivateKey::Ecp384(k) => {
                let peer = p384::PublicKey::from_sec1_bytes(&uncompressed::<97>(peer_public))
                    .map_err(|_| invalid)?;
                Ok(Secret::from_slice(
                    k.diffie_hellman(&peer).raw_secret_bytes(),
                ))
            }
            PrivateKey::Curve25519(k) => {
                let mut u = [0u8; 32];
                u.copy_from_slice(peer_public);
                let shared = k.diffie_hellman(&x25519_dalek::PublicKey::from(u));
                // A small-order peer point yields all zeros (RFC 7748 section 6.1,
                // RFC 8031 section 2.3).
                if !shared.was_contributory() {
                    return Err(CryptoError::DegenerateSharedSecret);
                }
                Ok(Secret::from_slice(shared.as_bytes()))
            }
        }
    }

    /// Builds a private value from known bytes, for the RFC test vectors.
    #[cfg(test)]
    fn from_private_bytes(group: DhGroup, bytes: &[u8]) -> Option<Self> {
        let key = match group {
            DhGroup::Modp2048 => modp_private(Zeroizing::new(U256::from_be_slice(bytes))),
            DhGroup::Ecp256 => PrivateKey::Ecp256(p256::SecretKey::from_slice(bytes).ok()?),
            DhGroup::Ecp384 => PrivateKey::Ecp384(p384::SecretKey::from_slice(bytes).ok()?),
            DhGroup::Curve25519 => PrivateKey::Curve25519(x25519_dalek::StaticSecret::from(
                <[u8; 32]>::try_from(bytes).ok()?,
            )),
        };
        Some(Self { group, key })
    }
}

impl DhGroup {
    fn name(self) -> &'static str {
        match self {
            Self::Modp2048 => "MODP-2048",
            Self::Ecp256 => "ECP-256",
            Self::Ecp384 => "ECP-384",
            Self::Curve25519 => "Curve25519",
        }
    }
}

fn modp_private(exponent: Zeroizing<U256>) -> PrivateKey {
    let generator = FixedMontyForm::new(&U2048::from_u8(2), &MODP2048);
    let public = generator.pow(&*exponent).retrieve();
    PrivateKey::Modp { exponent, public }
}

/// Draws field-sized random bytes until they form a valid scalar (nonzero, below
/// the group order). For P-256 and P-384 a retry is astronomically rare.
fn random_scalar<K>(
    rng: &mut dyn SecureRandom,
    len: usize,
    from_bytes: impl Fn(&[u8]) -> Option<K>,
) -> K {
    let mut bytes = Zeroizing::new([0u8; 48]);
    loop {
        rng.fill(&mut bytes[..len]);
        if let Some(key) = from_bytes(&bytes[..len]) {
            return key;
        }
    }
}

/// `0x04 || x || y`: the SEC1 uncompressed encoding of the peer's `x || y`, whose
/// length the caller has checked to be `N - 1`.
fn uncompressed<const N: usize>(x_y: &[u8]) -> [u8; N] {
    let mut point = [0u8; N];
    point[0] = 0x04;
    point[1..].copy_from_slice(x_y);
    point
}
