//! Pseudo-random functions and prf+ (RFC 7296 section 2.13).

use crate::Secret;
use crate::integ::{HashAlg, KeyedHmac};

/// IKEv2 PRF transforms (IANA "Transform Type 2").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prf_rfc4231_and_rfc2202() {
        // RFC 4231 test case 2 ("Jefe"); RFC 2202 test case 2 for SHA-1. The 4-byte
        // key also shows that PRF keys of any length are accepted.
        let data: &[&[u8]] = &[b"what do ya ", b"want for nothing?"];
        let cases = [
            (PrfAlg::HmacSha1, "effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"),
            (
                PrfAlg::HmacSha256,
                "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            ),
            (
                PrfAlg::HmacSha384,
                "af45d2e376484031617f78d2b58a6b1b9c7ef464f5a01b47e42ec3736322445e\
                 8e2240ca5e69e2c78b3239ecfab21649",
            ),
            (
                PrfAlg::HmacSha512,
                "164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554\
                 9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737",
            ),
        ];
        for (alg, want) in cases {
            let out = alg.prf(b"Jefe", data);
            assert_eq!(out.len(), alg.output_len());
            assert_eq!(hex::encode(out.expose()), want, "{alg:?}");
        }
    }

    #[test]
    fn prf_rfc4231_long_key() {
        // RFC 4231 test case 6: a 131-byte key, longer than the block, is hashed.
        let out = PrfAlg::HmacSha256.prf(
            &[0xaa; 131],
            &[b"Test Using Larger Than Block-Size Key - Hash Key First"],
        );
        assert_eq!(
            hex::encode(out.expose()),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn prf_plus_matches_hand_expansion() {
        // T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02), T3 = prf(K, T2 | S | 0x03)
        let alg = PrfAlg::HmacSha256;
        let (key, seed) = (b"key", b"seed");
        let t1 = alg.prf(key, &[seed, &[1]]);
        let t2 = alg.prf(key, &[t1.expose(), seed, &[2]]);
        let t3 = alg.prf(key, &[t2.expose(), seed, &[3]]);
        let hand = [t1.expose(), t2.expose(), t3.expose()].concat();

        let out = alg.prf_plus(key, seed, 80);
        assert_eq!(out.expose(), &hand[..80]);
        // The same expansion computed independently (Python hmac/hashlib).
        assert_eq!(
            hex::encode(out.expose()),
            "a2392e429a99b173341b368bb5ce320bfd483d89567c14ec187c2d77e3c0a208\
             ba45d21d42611712996c0cd4b329ac8681e093a8a5bbbbf0fb8c9d1cf674f742\
             3fe3d2fbd6641ff544749daa37804f04"
        );
        assert!(alg.prf_plus(key, seed, 0).is_empty());
        assert_eq!(alg.prf_plus(key, seed, 32).expose(), t1.expose());
    }

    #[test]
    fn prf_plus_maximum_length() {
        for alg in [PrfAlg::HmacSha1, PrfAlg::HmacSha512] {
            let max = 255 * alg.output_len();
            let out = alg.prf_plus(b"k", b"s", max);
            assert_eq!(out.len(), max);
            // The last block is T255, keyed with the counter byte 0xff.
            let t254 = &out.expose()[max - 2 * alg.output_len()..max - alg.output_len()];
            let t255 = alg.prf(b"k", &[t254, b"s", &[0xff]]);
            assert_eq!(&out.expose()[max - alg.output_len()..], t255.expose());
        }
    }

    #[test]
    #[should_panic(expected = "prf+ asked for")]
    fn prf_plus_past_255_blocks_panics() {
        let _ = PrfAlg::HmacSha256.prf_plus(b"k", b"s", 255 * 32 + 1);
    }
}
