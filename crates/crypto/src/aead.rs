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
    /// ring's assembly AES-GCM; the faster one on this hardware (see the bench).
    #[default]
    Ring,
    /// RustCrypto's `aes-gcm`.
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
