//! Pseudo-random functions and prf+ (RFC 7296 section 2.13).

use crate::Secret;

/// IKEv2 PRF transforms (IANA "Transform Type 2").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrfAlg {
    /// PRF_HMAC_SHA1 (2).
    HmacSha1,
    /// PRF_HMAC_SHA2_256 (5).
    HmacSha256,
    /// PRF_HMAC_SHA2_384 (6).
    HmacSha384,
    /// PRF_HMAC_SHA2_512 (7).
    HmacSha512,
}

impl PrfAlg {
    pub fn from_id(id: u16) -> Option<Self> {
        match id {
            2 => Some(Self::HmacSha1),
            5 => Some(Self::HmacSha256),
            6 => Some(Self::HmacSha384),
            7 => Some(Self::HmacSha512),
            _ => None,
        }
    }

    pub fn id(self) -> u16 {
        match self {
            Self::HmacSha1 => 2,
            Self::HmacSha256 => 5,
            Self::HmacSha384 => 6,
            Self::HmacSha512 => 7,
        }
    }

    /// Output length, which is also the preferred key length (SK_d, SK_pi, SK_pr).
    pub fn output_len(self) -> usize {
        match self {
            Self::HmacSha1 => 20,
            Self::HmacSha256 => 32,
            Self::HmacSha384 => 48,
            Self::HmacSha512 => 64,
        }
    }

    /// prf(key, parts[0] | parts[1] | ...).
    pub fn prf(self, key: &[u8], parts: &[&[u8]]) -> Secret {
        let _ = (key, parts);
        unimplemented!("filled in by the crypto work")
    }

    /// prf+(key, seed) truncated to `len` bytes. `len` must be at most
    /// 255 * output_len (RFC 7296 section 2.13); more panics, as it is a local bug.
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Secret {
        let _ = (key, seed, len);
        unimplemented!("filled in by the crypto work")
    }
}
