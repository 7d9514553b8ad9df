/// Why a cryptographic operation failed. Variants never carry key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("key has {got} bytes, {alg} needs {want}")]
    KeyLength { alg: &'static str, want: usize, got: usize },
    #[error("authentication tag or ICV mismatch")]
    Authentication,
    #[error("ciphertext length {0} is not a whole number of blocks")]
    BlockLength(usize),
    #[error("packet too short for the transform's IV and ICV")]
    Truncated,
    #[error("invalid {group} public value from peer")]
    InvalidPublicValue { group: &'static str },
    #[error("DH shared secret is degenerate")]
    DegenerateSharedSecret,
}
