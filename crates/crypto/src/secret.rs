//! Key material that zeroizes on drop and never prints.

use zeroize::Zeroizing;

/// Owned secret bytes (keys, DH shared secrets, SKEYSEED, PSKs).
///
/// `Debug` prints the length and a short SHA-256 fingerprint, never the bytes, so a
/// `tracing` field or a panic message cannot leak a key.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    pub fn from_slice(bytes: &[u8]) -> Self {
        Self::new(bytes.to_vec())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Splits off consecutive keys of the given lengths (the way IKE and ESP carve
    /// KEYMAT). Returns `None` if there are not enough bytes.
    pub fn split(&self, lens: &[usize]) -> Option<Vec<Secret>> {
        let mut at = 0;
        let mut out = Vec::with_capacity(lens.len());
        for &len in lens {
            out.push(Secret::from_slice(self.0.get(at..at + len)?));
            at += len;
        }
        Some(out)
    }

    /// First 8 bytes of SHA-256 over the secret, hex: lets operators and tests
    /// compare keys across nodes without revealing them.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(self.expose());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Serialized, a secret is its bytes: for the cluster's replicated state only,
/// which seals them before they reach a disk and sends them only over mutual
/// TLS. Deserializing copies straight into zeroizing storage.
impl serde::Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.expose())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Bytes;
        impl<'de> serde::de::Visitor<'de> for Bytes {
            type Value = Secret;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("secret bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Secret, E> {
                Ok(Secret::from_slice(v))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Secret, A::Error> {
                let mut out =
                    Zeroizing::new(Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024)));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(Secret(out))
            }
        }
        d.deserialize_bytes(Bytes)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secret({} bytes, fp {})", self.len(), self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_length_and_fingerprint_not_bytes() {
        let secret = Secret::from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x42]);
        let shown = format!("{secret:?}");
        assert!(shown.starts_with("Secret(5 bytes, fp "), "{shown}");
        assert!(!shown.contains("dead") && !shown.contains("222") && !shown.contains("0xde"));
        assert_eq!(
            shown,
            format!("Secret(5 bytes, fp {})", secret.fingerprint())
        );
    }

    #[test]
    fn split_carves_consecutive_keys() {
        let secret = Secret::from_slice(&[1, 2, 3, 4, 5]);
        let parts = secret.split(&[2, 3]).expect("enough bytes");
        assert_eq!(parts[0].expose(), &[1, 2]);
        assert_eq!(parts[1].expose(), &[3, 4, 5]);
        assert!(secret.split(&[4, 2]).is_none());
    }
}
