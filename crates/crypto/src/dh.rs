//! Diffie-Hellman groups for IKEv2 key exchange, with peer public value validation.

use std::sync::LazyLock;

use crypto_bigint::modular::{FixedMontyForm, FixedMontyParams};
use crypto_bigint::{Odd, U256, U2048};
use p256::elliptic_curve::sec1::ToSec1Point;
use zeroize::Zeroizing;

use crate::{CryptoError, Secret, SecureRandom};

/// Supported DH groups (IANA "Transform Type 4"). MODP groups below 2048 bits are
/// deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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
// Lives for one exchange, so the MODP variant's size is of no consequence.
#[allow(clippy::large_enum_variant)]
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
            DhGroup::Modp2048 => modp_private(Zeroizing::new(U256::from_be_slice(
                <&[u8; 32]>::try_from(bytes).ok()?,
            ))),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::SeededRandom;

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test vector hex")
    }

    fn known(group: DhGroup, private: &str) -> DhPrivate {
        DhPrivate::from_private_bytes(group, &unhex(private)).expect("valid private value")
    }

    /// RFC 5903 section 8: both sides' public values and the shared x coordinate.
    fn check_rfc5903(group: DhGroup, i: &str, gi: &str, r: &str, gr: &str, girx: &str) {
        let (ours, theirs) = (known(group, i), known(group, r));
        assert_eq!(hex::encode(ours.public_value()), gi);
        assert_eq!(hex::encode(theirs.public_value()), gr);
        assert_eq!(
            hex::encode(ours.agree(&unhex(gr)).expect("valid").expose()),
            girx
        );
        assert_eq!(
            hex::encode(theirs.agree(&unhex(gi)).expect("valid").expose()),
            girx
        );

        // A point off the curve: the last bit of y flipped.
        let mut bad = unhex(gr);
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(matches!(
            ours.agree(&bad),
            Err(CryptoError::InvalidPublicValue { .. })
        ));
        assert!(matches!(
            ours.agree(&vec![0; group.public_len()]),
            Err(CryptoError::InvalidPublicValue { .. })
        ));
        assert!(matches!(
            ours.agree(&unhex(gr)[1..]),
            Err(CryptoError::InvalidPublicValue { .. })
        ));
    }

    #[test]
    fn ecp256_rfc5903_section_8_1() {
        check_rfc5903(
            DhGroup::Ecp256,
            "c88f01f510d9ac3f70a292daa2316de544e9aab8afe84049c62a9c57862d1433",
            "dad0b65394221cf9b051e1feca5787d098dfe637fc90b9ef945d0c3772581180\
             5271a0461cdb8252d61f1c456fa3e59ab1f45b33accf5f58389e0577b8990bb3",
            "c6ef9c5d78ae012a011164acb397ce2088685d8f06bf9be0b283ab46476bee53",
            "d12dfb5289c8d4f81208b70270398c342296970a0bccb74c736fc7554494bf63\
             56fbf3ca366cc23e8157854c13c58d6aac23f046ada30f8353e74f33039872ab",
            "d6840f6b42f6edafd13116e0e12565202fef8e9ece7dce03812464d04b9442de",
        );
    }

    #[test]
    fn ecp384_rfc5903_section_8_2() {
        check_rfc5903(
            DhGroup::Ecp384,
            "099f3c7034d4a2c699884d73a375a67f7624ef7c6b3c0f160647b67414dce655\
             e35b538041e649ee3faef896783ab194",
            "667842d7d180ac2cde6f74f37551f55755c7645c20ef73e31634fe72b4c55ee6\
             de3ac808acb4bdb4c88732aee95f41aa9482ed1fc0eeb9cafc4984625ccfc23f\
             65032149e0e144ada024181535a0f38eeb9fcff3c2c947dae69b4c634573a81c",
            "41cb0779b4bdb85d47846725fbec3c9430fab46cc8dc5060855cc9bda0aa2942\
             e0308312916b8ed2960e4bd55a7448fc",
            "e558dbef53eecde3d3fccfc1aea08a89a987475d12fd950d83cfa41732bc509d\
             0d1ac43a0336def96fda41d0774a3571dcfbec7aacf3196472169e838430367f\
             66eebe3c6e70c416dd5f0c68759dd1fff83fa40142209dff5eaad96db9e6386c",
            "11187331c279962d93d604243fd592cb9d0a926f422e47187521287e7156c5c4\
             d603135569b9e9d09cf5d4a270f59746",
        );
    }

    #[test]
    fn curve25519_rfc7748_section_6_1() {
        let alice = known(
            DhGroup::Curve25519,
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        );
        let bob = known(
            DhGroup::Curve25519,
            "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb",
        );
        let alice_pub = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a";
        let bob_pub = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f";
        let shared = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742";
        assert_eq!(hex::encode(alice.public_value()), alice_pub);
        assert_eq!(hex::encode(bob.public_value()), bob_pub);
        assert_eq!(
            hex::encode(alice.agree(&unhex(bob_pub)).expect("valid").expose()),
            shared
        );
        assert_eq!(
            hex::encode(bob.agree(&unhex(alice_pub)).expect("valid").expose()),
            shared
        );
    }

    #[test]
    fn curve25519_rejects_small_order_and_wrong_length() {
        let ours = DhPrivate::generate(DhGroup::Curve25519, &mut SeededRandom::new(1));
        // u = 0 and u = 1 are of small order: the result is all zeros.
        let mut one = [0u8; 32];
        one[0] = 1;
        assert_eq!(
            ours.agree(&[0; 32]),
            Err(CryptoError::DegenerateSharedSecret)
        );
        assert_eq!(ours.agree(&one), Err(CryptoError::DegenerateSharedSecret));
        for len in [0, 31, 33] {
            assert!(matches!(
                ours.agree(&vec![9; len]),
                Err(CryptoError::InvalidPublicValue { .. })
            ));
        }
    }

    #[test]
    fn modp2048_known_small_exponent() {
        // Exponent 3: our public value is 2^3, and a peer value of 2 gives 8.
        let ours = known(DhGroup::Modp2048, &format!("{}03", "00".repeat(31)));
        let mut eight = [0u8; 256];
        eight[255] = 8;
        assert_eq!(ours.public_value(), eight.to_vec());
        let mut two = [0u8; 256];
        two[255] = 2;
        assert_eq!(ours.agree(&two).expect("valid").expose(), &eight[..]);
    }

    #[test]
    fn modp2048_rejects_degenerate_and_malformed_values() {
        let ours = DhPrivate::generate(DhGroup::Modp2048, &mut SeededRandom::new(2));
        let p = unhex(MODP2048_PRIME);
        let mut p_minus_1 = p.clone();
        p_minus_1[255] -= 1;
        let mut one = vec![0u8; 256];
        one[255] = 1;
        for bad in [vec![0u8; 256], one, p_minus_1, p.clone(), vec![0xff; 256]] {
            assert_eq!(
                ours.agree(&bad),
                Err(CryptoError::InvalidPublicValue { group: "MODP-2048" })
            );
        }
        for len in [0, 255, 257] {
            assert!(ours.agree(&vec![2; len]).is_err(), "{len}");
        }
        let mut p_minus_2 = p;
        p_minus_2[255] -= 2;
        assert!(ours.agree(&p_minus_2).is_ok());
    }

    #[test]
    fn every_group_agrees_with_itself() {
        let mut rng = SeededRandom::new(3);
        for group in [
            DhGroup::Modp2048,
            DhGroup::Ecp256,
            DhGroup::Ecp384,
            DhGroup::Curve25519,
        ] {
            let a = DhPrivate::generate(group, &mut rng);
            let b = DhPrivate::generate(group, &mut rng);
            assert_eq!(a.group(), group);
            assert_eq!(a.public_value().len(), group.public_len());
            assert_ne!(a.public_value(), b.public_value());
            let ab = a.agree(&b.public_value()).expect("valid");
            let ba = b.agree(&a.public_value()).expect("valid");
            assert_eq!(ab, ba, "{group:?}");
            let want_len = match group {
                DhGroup::Modp2048 => 256,
                DhGroup::Ecp256 => 32,
                DhGroup::Ecp384 => 48,
                DhGroup::Curve25519 => 32,
            };
            assert_eq!(ab.len(), want_len);
        }
    }

    #[test]
    fn generation_is_deterministic_in_the_rng() {
        for group in [
            DhGroup::Modp2048,
            DhGroup::Ecp256,
            DhGroup::Ecp384,
            DhGroup::Curve25519,
        ] {
            let a = DhPrivate::generate(group, &mut SeededRandom::new(7));
            let b = DhPrivate::generate(group, &mut SeededRandom::new(7));
            assert_eq!(a.public_value(), b.public_value());
        }
    }

    #[test]
    fn debug_hides_private_value() {
        let ours = known(DhGroup::Curve25519, &"11".repeat(32));
        assert_eq!(format!("{ours:?}"), "DhPrivate { group: Curve25519, .. }");
    }
}
