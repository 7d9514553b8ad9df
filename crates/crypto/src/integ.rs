//! HMAC integrity transforms (RFC 4868, RFC 2404).

use crate::{CryptoError, Secret};

/// IKEv2 integrity transforms (IANA "Transform Type 3").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum IntegAlg {
    /// AUTH_HMAC_SHA1_96 (2): for old devices only.
    HmacSha1_96,
    /// AUTH_HMAC_SHA2_256_128 (12).
    HmacSha256_128,
    /// AUTH_HMAC_SHA2_384_192 (13).
    HmacSha384_192,
    /// AUTH_HMAC_SHA2_512_256 (14).
    HmacSha512_256,
}

impl IntegAlg {
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            2 => Some(Self::HmacSha1_96),
            12 => Some(Self::HmacSha256_128),
            13 => Some(Self::HmacSha384_192),
            14 => Some(Self::HmacSha512_256),
            _ => None,
        }
    }

    pub fn id(self) -> u16 {
        match self {
            Self::HmacSha1_96 => 2,
            Self::HmacSha256_128 => 12,
            Self::HmacSha384_192 => 13,
            Self::HmacSha512_256 => 14,
        }
    }

    /// Key length: the hash output length (RFC 4868 section 2.1.1).
    pub fn key_len(self) -> usize {
        match self {
            Self::HmacSha1_96 => 20,
            Self::HmacSha256_128 => 32,
            Self::HmacSha384_192 => 48,
            Self::HmacSha512_256 => 64,
        }
    }

    /// Truncated ICV length on the wire.
    pub fn icv_len(self) -> usize {
        match self {
            Self::HmacSha1_96 => 12,
            Self::HmacSha256_128 => 16,
            Self::HmacSha384_192 => 24,
            Self::HmacSha512_256 => 32,
        }
    }
}

/// A keyed integrity transform.
#[derive(Clone)]
pub struct Integrity {
    alg: IntegAlg,
    /// HMAC with the inner and outer pads already absorbed; each ICV clones it, so
    /// the per-packet cost is the message hashing alone.
    keyed: KeyedHmac,
}

impl std::fmt::Debug for Integrity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Integrity")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Integrity {
    pub fn new(alg: IntegAlg, key: &Secret) -> Result<Self, CryptoError> {
        if key.len() != alg.key_len() {
            return Err(CryptoError::KeyLength {
                alg: alg.name(),
                want: alg.key_len(),
                got: key.len(),
            });
        }
        let hash = match alg {
            IntegAlg::HmacSha1_96 => HashAlg::Sha1,
            IntegAlg::HmacSha256_128 => HashAlg::Sha256,
            IntegAlg::HmacSha384_192 => HashAlg::Sha384,
            IntegAlg::HmacSha512_256 => HashAlg::Sha512,
        };
        Ok(Self {
            alg,
            keyed: KeyedHmac::new(hash, key.expose()),
        })
    }

    pub fn alg(&self) -> IntegAlg {
        self.alg
    }

    /// Writes the truncated ICV over the concatenation of `parts` into
    /// `out[..icv_len]`.
    pub fn compute(&self, parts: &[&[u8]], out: &mut [u8]) {
        let full = self.keyed.mac(parts);
        let icv_len = self.alg.icv_len();
        out[..icv_len].copy_from_slice(&full.as_slice()[..icv_len]);
    }

    /// Constant-time check of `icv` against the ICV over `parts`.
    pub fn verify(&self, parts: &[&[u8]], icv: &[u8]) -> Result<(), CryptoError> {
        use subtle::ConstantTimeEq;
        let full = self.keyed.mac(parts);
        let expected = &full.as_slice()[..self.alg.icv_len()];
        // Length is public (fixed per algorithm); only the contents need constant time.
        if expected.ct_eq(icv).into() {
            Ok(())
        } else {
            Err(CryptoError::Authentication)
        }
    }
}

impl IntegAlg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::HmacSha1_96 => "HMAC-SHA1-96",
            Self::HmacSha256_128 => "HMAC-SHA2-256-128",
            Self::HmacSha384_192 => "HMAC-SHA2-384-192",
            Self::HmacSha512_256 => "HMAC-SHA2-512-256",
        }
    }
}

/// The hash under an HMAC, shared by the integrity transforms and the PRFs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum HashAlg {
    Sha1,
    Sha256,
    Sha384,
    Sha512,
}

/// HMAC keyed once, for any of the hashes we use.
#[derive(Clone)]
pub(crate) enum KeyedHmac {
    Sha1(hmac::Hmac<sha1::Sha1>),
    Sha256(hmac::Hmac<sha2::Sha256>),
    Sha384(hmac::Hmac<sha2::Sha384>),
    Sha512(hmac::Hmac<sha2::Sha512>),
}

/// A full-length HMAC output, up to SHA-512's 64 bytes, kept on the stack.
pub(crate) struct MacOutput {
    bytes: zeroize::Zeroizing<[u8; 64]>,
    len: usize,
}

impl MacOutput {
    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl KeyedHmac {
    /// HMAC takes keys of any length (RFC 2104 section 2), which IKE relies on when
    /// it keys the PRF with `Ni | Nr`.
    pub(crate) fn new(hash: HashAlg, key: &[u8]) -> Self {
        fn keyed<M: hmac::KeyInit>(key: &[u8]) -> M {
            // HMAC hashes long keys and pads short ones, so every length is valid.
            #[allow(clippy::expect_used)]
            M::new_from_slice(key).expect("HMAC accepts keys of any length")
        }
        match hash {
            HashAlg::Sha1 => Self::Sha1(keyed(key)),
            HashAlg::Sha256 => Self::Sha256(keyed(key)),
            HashAlg::Sha384 => Self::Sha384(keyed(key)),
            HashAlg::Sha512 => Self::Sha512(keyed(key)),
        }
    }

    /// The untruncated MAC over the concatenation of `parts`.
    pub(crate) fn mac(&self, parts: &[&[u8]]) -> MacOutput {
        fn run<M: hmac::Mac + Clone>(keyed: &M, parts: &[&[u8]]) -> MacOutput {
            let mut mac = keyed.clone();
            for part in parts {
                mac.update(part);
            }
            let tag = mac.finalize().into_bytes();
            let mut bytes = zeroize::Zeroizing::new([0u8; 64]);
            bytes[..tag.len()].copy_from_slice(&tag);
            MacOutput {
                bytes,
                len: tag.len(),
            }
        }
        match self {
            Self::Sha1(m) => run(m, parts),
            Self::Sha256(m) => run(m, parts),
            Self::Sha384(m) => run(m, parts),
            Self::Sha512(m) => run(m, parts),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn icv(alg: IntegAlg, key: &[u8], data: &[u8]) -> Vec<u8> {
        let integ = Integrity::new(alg, &Secret::from_slice(key)).expect("key length");
        let mut out = vec![0u8; alg.icv_len()];
        integ.compute(&[data], &mut out);
        out
    }

    #[test]
    fn hmac_sha1_96_rfc2202() {
        // RFC 2202 section 3, test cases 1 and 3 (the 20-byte keys), truncated to
        // 96 bits as RFC 2404 does.
        assert_eq!(
            hex::encode(icv(IntegAlg::HmacSha1_96, &[0x0b; 20], b"Hi There")),
            "b617318655057264e28bc0b6"
        );
        assert_eq!(
            hex::encode(icv(IntegAlg::HmacSha1_96, &[0xaa; 20], &[0xdd; 50])),
            "125d7342b9ac11cd91a39af4"
        );
    }

    #[test]
    fn hmac_sha2_truncated_rfc4868() {
        // RFC 4868 section 2.7.2, test case 1: key 0x0b repeated to the key length.
        let cases = [
            (IntegAlg::HmacSha256_128, "198a607eb44bfbc69903a0f1cf2bbdc5"),
            (
                IntegAlg::HmacSha384_192,
                "b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee973",
            ),
            (
                IntegAlg::HmacSha512_256,
                "637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8",
            ),
        ];
        for (alg, want) in cases {
            let key = vec![0x0b; alg.key_len()];
            assert_eq!(hex::encode(icv(alg, &key, b"Hi There")), want, "{alg:?}");
        }
    }

    #[test]
    fn parts_are_concatenated() {
        let key = Secret::from_slice(&[7; 32]);
        let integ = Integrity::new(IntegAlg::HmacSha256_128, &key).expect("key length");
        let mut whole = [0u8; 16];
        let mut split = [0u8; 16];
        integ.compute(&[b"Hi There"], &mut whole);
        integ.compute(&[b"Hi", b"", b" There"], &mut split);
        assert_eq!(whole, split);
    }

    #[test]
    fn verify_accepts_own_icv_and_rejects_any_flip() {
        for alg in [
            IntegAlg::HmacSha1_96,
            IntegAlg::HmacSha256_128,
            IntegAlg::HmacSha384_192,
            IntegAlg::HmacSha512_256,
        ] {
            let key = Secret::new(vec![0x42; alg.key_len()]);
            let integ = Integrity::new(alg, &key).expect("key length");
            let mut out = vec![0u8; alg.icv_len()];
            integ.compute(&[b"header", b"body"], &mut out);
            assert_eq!(integ.verify(&[b"header", b"body"], &out), Ok(()));
            for bit in 0..out.len() * 8 {
                let mut bad = out.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert_eq!(
                    integ.verify(&[b"header", b"body"], &bad),
                    Err(CryptoError::Authentication)
                );
            }
            assert_eq!(
                integ.verify(&[b"header", b"body"], &out[..out.len() - 1]),
                Err(CryptoError::Authentication)
            );
            assert_eq!(
                integ.verify(&[b"header", b"bodY"], &out),
                Err(CryptoError::Authentication)
            );
        }
    }

    #[test]
    fn key_length_must_match() {
        let short = Secret::from_slice(&[1; 20]);
        assert_eq!(
            Integrity::new(IntegAlg::HmacSha256_128, &short).map(|_| ()),
            Err(CryptoError::KeyLength {
                alg: "HMAC-SHA2-256-128",
                want: 32,
                got: 20
            })
        );
    }

    #[test]
    fn debug_hides_key() {
        let integ = Integrity::new(IntegAlg::HmacSha1_96, &Secret::from_slice(&[0xab; 20]))
            .expect("key length");
        let shown = format!("{integ:?}");
        assert!(
            shown.contains("HmacSha1_96") && !shown.contains("ab, ab") && !shown.contains("171")
        );
    }
}
