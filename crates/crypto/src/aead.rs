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
    let _ = (backend, key);
    unimplemented!("filled in by the crypto work")
}
