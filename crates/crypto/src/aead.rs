//! AES-GCM behind one small trait, with two backends (ring and RustCrypto) so the
//! ESP hot path can use the faster one and the benchmark can compare them.

use crate::CryptoError;

/// AEAD with a 12-byte nonce and a 16-byte tag (AES-GCM-16, RFC 4106 / RFC 5282).
pub trait Aead: Send + Sync + std::fmt::Debug {
    /// Encrypts `in_out` in place and returns the tag.
    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; 16];

    /// Verifies `tag` and decrypts `in_out` in place. On failure `in_out` may hold
    /// garbage and must be discarded.
    fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), CryptoError>;
}

/// Which AES-GCM implementation to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AeadBackend {
    /// ring's assembly AES-GCM; the faster one on this hardware: about 4.2 GB/s
    /// (AES-128) and 3.7 GB/s (AES-256) per core on 1400-byte packets, twice
    /// RustCrypto's figures (`cargo bench -p tandem-crypto --bench aead`).
    /// ring keeps the expanded key schedule in its own type and does not
    /// wipe it on drop (it offers no way to): the key bytes Tandem holds are
    /// wiped, the schedule derived from them is left in freed memory until
    /// reused. The default for speed; `[node] aead_backend = "rustcrypto"`
    /// where that matters more.
    #[default]
    Ring,
    /// RustCrypto's `aes-gcm`, built with its `zeroize` feature: the key
    /// schedule is wiped when the SA ends.
    RustCrypto,
}

/// Builds an AES-GCM instance for a 16- or 32-byte key (no salt).
pub fn aes_gcm(backend: AeadBackend, key: &[u8]) -> Result<Box<dyn Aead>, CryptoError> {
    let alg = match key.len() {
        16 => GcmKeySize::Aes128,
        32 => GcmKeySize::Aes256,
        got => {
            return Err(CryptoError::KeyLength {
                alg: "AES-GCM",
                want: 16,
                got,
            });
        }
    };
    Ok(match backend {
        AeadBackend::Ring => Box::new(RingGcm::new(alg, key)?),
        AeadBackend::RustCrypto => Box::new(RustCryptoGcm::new(alg, key)?),
    })
}

#[derive(Debug, Clone, Copy)]
enum GcmKeySize {
    Aes128,
    Aes256,
}

impl GcmKeySize {
    fn name(self) -> &'static str {
        match self {
            Self::Aes128 => "AES-128-GCM",
            Self::Aes256 => "AES-256-GCM",
        }
    }

    fn key_len(self) -> usize {
        match self {
            Self::Aes128 => 16,
            Self::Aes256 => 32,
        }
    }

    fn key_length_error(self, got: usize) -> CryptoError {
        CryptoError::KeyLength {
            alg: self.name(),
            want: self.key_len(),
            got,
        }
    }
}

struct RingGcm {
    key: ring::aead::LessSafeKey,
}

impl RingGcm {
    fn new(alg: GcmKeySize, key: &[u8]) -> Result<Self, CryptoError> {
        let ring_alg = match alg {
            GcmKeySize::Aes128 => &ring::aead::AES_128_GCM,
            GcmKeySize::Aes256 => &ring::aead::AES_256_GCM,
        };
        let key = ring::aead::UnboundKey::new(ring_alg, key)
            .map_err(|_| alg.key_length_error(key.len()))?;
        Ok(Self {
            key: ring::aead::LessSafeKey::new(key),
        })
    }
}

impl std::fmt::Debug for RingGcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingGcm")
            .field("alg", self.key.algorithm())
            .finish_non_exhaustive()
    }
}

impl Aead for RingGcm {
    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; 16] {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        // ring only refuses inputs beyond GCM's 64 GiB limit, which no packet or IKE
        // message reaches (both are bounded by 64 KiB).
        #[allow(clippy::expect_used)]
        let tag = self
            .key
            .seal_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), in_out)
            .expect("AES-GCM input within the 64 GiB limit");
        let mut out = [0u8; 16];
        out.copy_from_slice(tag.as_ref());
        out
    }

    fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), CryptoError> {
        let nonce = ring::aead::Nonce::assume_unique_for_key(*nonce);
        let tag = ring::aead::Tag::from(*tag);
        self.key
            .open_in_place_separate_tag(nonce, ring::aead::Aad::from(aad), tag, in_out, 0..)
            .map(|_| ())
            .map_err(|_| CryptoError::Authentication)
    }
}

enum RustCryptoGcm {
    Aes128(aes_gcm::Aes128Gcm),
    Aes256(aes_gcm::Aes256Gcm),
}

impl RustCryptoGcm {
    fn new(alg: GcmKeySize, key: &[u8]) -> Result<Self, CryptoError> {
        use aes_gcm::KeyInit;
        let err = |_| alg.key_length_error(key.len());
        Ok(match alg {
            GcmKeySize::Aes128 => {
                Self::Aes128(aes_gcm::Aes128Gcm::new_from_slice(key).map_err(err)?)
            }
            GcmKeySize::Aes256 => {
                Self::Aes256(aes_gcm::Aes256Gcm::new_from_slice(key).map_err(err)?)
            }
        })
    }
}

impl std::fmt::Debug for RustCryptoGcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alg = match self {
            Self::Aes128(_) => GcmKeySize::Aes128,
            Self::Aes256(_) => GcmKeySize::Aes256,
        };
        f.debug_struct("RustCryptoGcm")
            .field("alg", &alg.name())
            .finish_non_exhaustive()
    }
}

impl Aead for RustCryptoGcm {
    fn seal_in_place(&self, nonce: &[u8; 12], aad: &[u8], in_out: &mut [u8]) -> [u8; 16] {
        use aes_gcm::AeadInOut;
        let nonce = aes_gcm::Nonce::from(*nonce);
        let tag = match self {
            Self::Aes128(c) => c.encrypt_inout_detached(&nonce, aad, in_out.into()),
            Self::Aes256(c) => c.encrypt_inout_detached(&nonce, aad, in_out.into()),
        };
        // Fails only past GCM's 64 GiB plaintext limit, far above any packet size.
        #[allow(clippy::expect_used)]
        let tag = tag.expect("AES-GCM input within the 64 GiB limit");
        tag.into()
    }

    fn open_in_place(
        &self,
        nonce: &[u8; 12],
        aad: &[u8],
        in_out: &mut [u8],
        tag: &[u8; 16],
    ) -> Result<(), CryptoError> {
        use aes_gcm::AeadInOut;
        let nonce = aes_gcm::Nonce::from(*nonce);
        let tag = aes_gcm::Tag::from(*tag);
        match self {
            Self::Aes128(c) => c.decrypt_inout_detached(&nonce, aad, in_out.into(), &tag),
            Self::Aes256(c) => c.decrypt_inout_detached(&nonce, aad, in_out.into(), &tag),
        }
        .map_err(|_| CryptoError::Authentication)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKENDS: [AeadBackend; 2] = [AeadBackend::Ring, AeadBackend::RustCrypto];

    struct Case {
        name: &'static str,
        key: &'static str,
        iv: &'static str,
        aad: &'static str,
        plaintext: &'static str,
        ciphertext: &'static str,
        tag: &'static str,
    }

    const GCM_P: &str = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                         1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255";
    const GCM_K: &str = "feffe9928665731c6d6a8f9467308308";
    const GCM_A: &str = "feedfacedeadbeeffeedfacedeadbeefabaddad2";

    /// McGrew and Viega, "The Galois/Counter Mode of Operation", appendix B.
    const CASES: [Case; 6] = [
        Case {
            name: "2",
            key: "00000000000000000000000000000000",
            iv: "000000000000000000000000",
            aad: "",
            plaintext: "00000000000000000000000000000000",
            ciphertext: "0388dace60b6a392f328c2b971b2fe78",
            tag: "ab6e47d42cec13bdf53a67b21257bddf",
        },
        Case {
            name: "3",
            key: GCM_K,
            iv: "cafebabefacedbaddecaf888",
            aad: "",
            plaintext: GCM_P,
            ciphertext: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                         21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
            tag: "4d5c2af327cd64a62cf35abd2ba6fab4",
        },
        Case {
            name: "4",
            key: GCM_K,
            iv: "cafebabefacedbaddecaf888",
            aad: GCM_A,
            plaintext: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ciphertext: "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                         21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
            tag: "5bc94fbc3221a5db94fae95ae7121a47",
        },
        Case {
            name: "14",
            key: "0000000000000000000000000000000000000000000000000000000000000000",
            iv: "000000000000000000000000",
            aad: "",
            plaintext: "00000000000000000000000000000000",
            ciphertext: "cea7403d4d606b6e074ec5d3baf39d18",
            tag: "d0d1c8a799996bf0265b98b5d48ab919",
        },
        Case {
            name: "15",
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            aad: "",
            plaintext: GCM_P,
            ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                         8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662898015ad",
            tag: "b094dac5d93471bdec1a502270e3cc6c",
        },
        Case {
            name: "16",
            key: "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
            iv: "cafebabefacedbaddecaf888",
            aad: GCM_A,
            plaintext: "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
                        1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
            ciphertext: "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                         8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            tag: "76fc6ece0f4e1768cddf8853bb2d551b",
        },
    ];

    fn unhex(s: &str) -> Vec<u8> {
        hex::decode(s).expect("test vector hex")
    }

    #[test]
    fn gcm_known_answers_on_both_backends() {
        for case in &CASES {
            for backend in BACKENDS {
                let aead = aes_gcm(backend, &unhex(case.key)).expect("key length");
                let nonce: [u8; 12] = unhex(case.iv).try_into().expect("12-byte IV");
                let aad = unhex(case.aad);
                let mut buf = unhex(case.plaintext);
                let tag = aead.seal_in_place(&nonce, &aad, &mut buf);
                assert_eq!(
                    hex::encode(&buf),
                    case.ciphertext,
                    "case {} {backend:?}",
                    case.name
                );
                assert_eq!(hex::encode(tag), case.tag, "case {} {backend:?}", case.name);

                aead.open_in_place(&nonce, &aad, &mut buf, &tag)
                    .expect("authentic");
                assert_eq!(
                    hex::encode(&buf),
                    case.plaintext,
                    "case {} {backend:?}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn gcm_rejects_any_flipped_bit_on_both_backends() {
        let case = &CASES[2];
        for backend in BACKENDS {
            let aead = aes_gcm(backend, &unhex(case.key)).expect("key length");
            let nonce: [u8; 12] = unhex(case.iv).try_into().expect("12-byte IV");
            let aad = unhex(case.aad);
            let ciphertext = unhex(case.ciphertext);
            let tag: [u8; 16] = unhex(case.tag).try_into().expect("16-byte tag");
            let total_bits = (aad.len() + ciphertext.len() + tag.len()) * 8;
            for bit in (0..total_bits).step_by(7) {
                let (mut aad, mut ct, mut tag) = (aad.clone(), ciphertext.clone(), tag);
                let byte = bit / 8;
                let mask = 1 << (bit % 8);
                if byte < aad.len() {
                    aad[byte] ^= mask;
                } else if byte < aad.len() + ct.len() {
                    ct[byte - aad.len()] ^= mask;
                } else {
                    tag[byte - aad.len() - ct.len()] ^= mask;
                }
                assert_eq!(
                    aead.open_in_place(&nonce, &aad, &mut ct, &tag),
                    Err(CryptoError::Authentication),
                    "bit {bit} {backend:?}"
                );
            }
        }
    }

    #[test]
    fn gcm_key_lengths() {
        for backend in BACKENDS {
            for len in [0, 15, 17, 24, 31, 33] {
                assert!(
                    matches!(aes_gcm(backend, &vec![0; len]), Err(CryptoError::KeyLength { got, .. }) if got == len),
                    "{len} {backend:?}"
                );
            }
        }
    }

    #[test]
    fn default_backend_is_ring() {
        // The benchmark (benches/aead.rs) found ring faster on our hardware.
        assert_eq!(AeadBackend::default(), AeadBackend::Ring);
    }
}
