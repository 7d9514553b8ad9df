//! The protection of one direction of an SA: encryption plus integrity, as used by
//! both ESP packets and the IKE Encrypted (SK) payload.
//!
//! Both protocols lay a protected message out the same way:
//! `[authenticated header | IV | ciphertext (padded plaintext) | ICV]`
//! (ESP: header = SPI || seq; IKE: header = IKE header .. end of SK payload header).

use crate::{AeadBackend, CryptoError, IntegAlg, Secret};

/// IKEv2 encryption transforms we implement (IANA "Transform Type 1").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// ENCR_AES_CBC (12), key 128 or 256 bits. Needs a separate integrity transform.
    AesCbc { key_bits: u16 },
    /// ENCR_AES_GCM_16 (20), key 128 or 256 bits, 16-byte ICV, combined mode.
    AesGcm16 { key_bits: u16 },
}

impl EncrAlg {
    pub const ID_AES_CBC: u16 = 12;
    pub const ID_AES_GCM_16: u16 = 20;

    /// From an IKE transform ID and Key Length attribute. `None` for anything we do
    /// not implement (including weak ciphers such as DES or 3DES).
    pub fn from_transform(id: u16, key_bits: Option<u16>) -> Option<Self> {
        let key_bits = key_bits?;
        if key_bits != 128 && key_bits != 256 {
            return None;
        }
        match id {
            Self::ID_AES_CBC => Some(Self::AesCbc { key_bits }),
            Self::ID_AES_GCM_16 => Some(Self::AesGcm16 { key_bits }),
            _ => None,
        }
    }

    pub fn transform_id(self) -> u16 {
        match self {
            Self::AesCbc { .. } => Self::ID_AES_CBC,
            Self::AesGcm16 { .. } => Self::ID_AES_GCM_16,
        }
    }

    pub fn key_bits(self) -> u16 {
        match self {
            Self::AesCbc { key_bits } | Self::AesGcm16 { key_bits } => key_bits,
        }
    }

    pub fn is_aead(self) -> bool {
        matches!(self, Self::AesGcm16 { .. })
    }

    /// Bytes of KEYMAT this transform takes: the AES key, plus the 4-byte salt for
    /// GCM (RFC 4106 section 8.1, RFC 5282 section 7.1).
    pub fn keymat_len(self) -> usize {
        let key = usize::from(self.key_bits() / 8);
        if self.is_aead() { key + 4 } else { key }
    }

    /// Bytes of IV on the wire: 8 for GCM, 16 for CBC.
    pub fn iv_len(self) -> usize {
        if self.is_aead() { 8 } else { 16 }
    }

    /// What the plaintext (with padding, pad length and next header) must be a
    /// multiple of: the AES block for CBC, 4 bytes for GCM (RFC 4303 section 2.4).
    pub fn block_len(self) -> usize {
        if self.is_aead() { 4 } else { 16 }
    }
}

/// One direction's keys, ready to seal or open packets. Cheap to use per packet:
/// key schedules are expanded once here.
#[derive(Debug)]
pub struct SaCipher {
    encr: EncrAlg,
    integ: Option<IntegAlg>,
}

impl SaCipher {
    /// `encr_keymat` is `encr.keymat_len()` bytes (key then salt for GCM);
    /// `integ` must be `None` for GCM and `Some` for CBC.
    pub fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_keymat: &Secret,
        integ_key: Option<&Secret>,
    ) -> Result<Self, CryptoError> {
        Self::with_backend(AeadBackend::default(), encr, integ, encr_keymat, integ_key)
    }

    pub fn with_backend(
        backend: AeadBackend,
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_keymat: &Secret,
        integ_key: Option<&Secret>,
    ) -> Result<Self, CryptoError> {
        let _ = (backend, encr_keymat, integ_key);
        let _ = Self { encr, integ };
        unimplemented!("filled in by the crypto work")
    }

    pub fn encr(&self) -> EncrAlg {
        self.encr
    }

    pub fn integ(&self) -> Option<IntegAlg> {
        self.integ
    }

    pub fn iv_len(&self) -> usize {
        self.encr.iv_len()
    }

    pub fn block_len(&self) -> usize {
        self.encr.block_len()
    }

    /// ICV bytes: 16 for GCM, the integrity transform's truncated length for CBC.
    pub fn icv_len(&self) -> usize {
        unimplemented!("filled in by the crypto work")
    }

    /// Seals `packet` in place. Layout on entry:
    /// `packet[..header_len]` authenticated header, then `iv_len()` bytes of room for
    /// the IV, then the padded plaintext (a multiple of `block_len()`), then
    /// `icv_len()` bytes of room for the ICV.
    ///
    /// `iv_seed` must never repeat under one key: ESP passes its 64-bit sequence
    /// number, IKE a random value. GCM puts it on the wire as the IV; CBC derives an
    /// unpredictable IV by encrypting it under the key (NIST SP 800-38A appendix C).
    ///
    /// `esn_high` is ESP's extended sequence number high half. When `Some`, the
    /// header must be ESP's `SPI || seq_low` (8 bytes): GCM then authenticates
    /// `SPI || seq_high || seq_low` (RFC 4106 section 5) and HMAC appends `seq_high`
    /// after the ciphertext (RFC 4303 section 3.3.2.1).
    pub fn seal(
        &self,
        packet: &mut [u8],
        header_len: usize,
        iv_seed: u64,
        esn_high: Option<u32>,
    ) -> Result<(), CryptoError> {
        let _ = (packet, header_len, iv_seed, esn_high);
        unimplemented!("filled in by the crypto work")
    }

    /// Verifies and decrypts `packet` (same layout as [`SaCipher::seal`] on exit) in
    /// place. Returns the range of the padded plaintext within `packet`. Checks the
    /// ICV before decrypting anything (CBC) and never panics on short input.
    pub fn open(
        &self,
        packet: &mut [u8],
        header_len: usize,
        esn_high: Option<u32>,
    ) -> Result<std::ops::Range<usize>, CryptoError> {
        let _ = (packet, header_len, esn_high);
        unimplemented!("filled in by the crypto work")
    }
}
