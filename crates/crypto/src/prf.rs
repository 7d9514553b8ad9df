//! Pseudo-random functions and prf+ (RFC 7296 section 2.13).

use crate::Secret;
use crate::integ::{HashAlg, KeyedHmac};

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
        Secret::from_slice(KeyedHmac::new(self.hash(), key).mac(parts).as_slice())
    }

    /// prf+(key, seed) truncated to `len` bytes. `len` must be at most
    /// 255 * output_len (RFC 7296 section 2.13); more panics, as it is a local bug.
    pub fn prf_plus(self, key: &[u8], seed: &[u8], len: usize) -> Secret {
        assert!(
            len <= 255 * self.output_len(),
            "prf+ asked for {len} bytes, more than 255 blocks of {:?}",
            self
        );
        let keyed = KeyedHmac::new(self.hash(), key);
        // Room for whole blocks up front: a reallocation would leave an unwiped copy
        // of key material behind.
        let mut out = Vec::with_capacity(len.div_ceil(self.output_len()) * self.output_len());
        // T1 = prf(K, S | 0x01), Tn = prf(K, Tn-1 | S | n); the previous block is
        // read back from `out`, so no copy of it outlives the zeroizing output.
        let mut counter: u8 = 1;
        let mut prev = 0..0;
        while out.len() < len {
            let block = keyed.mac(&[&out[prev.clone()], seed, &[counter]]);
            let start = out.len();
            out.extend_from_slice(block.as_slice());
            prev = start..out.len();
            counter = counter.wrapping_add(1);
        }
        out.truncate(len);
        Secret::new(out)
    }

    fn hash(self) -> HashAlg {
        match self {
            Self::HmacSha1 => HashAlg::Sha1,
            Self::HmacSha256 => HashAlg::Sha256,
            Self::HmacSha384 => HashAlg::Sha384,
            Self::HmacSha512 => HashAlg::Sha512,
        }
    }
}
