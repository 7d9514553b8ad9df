/// Why a cryptographic operation failed. Variants never carry key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    #[error("key has {got} bytes, {alg} needs {want}")]
    KeyLength {
        alg: &'static str,
        want: usize,
        got: usize,
    },
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
    /// A combined-mode cipher given an integrity transform, or a plain cipher
    /// without one: a local configuration or negotiation bug, not peer input.
    #[error("{encr} {}", if *.integ_given { "takes no integrity transform" } else { "needs an integrity transform" })]
    IntegrityMismatch {
        encr: &'static str,
        integ_given: bool,
    },
    /// Extended sequence numbers are only defined for ESP's 8-byte `SPI || seq`
    /// header.
    #[error("ESN needs the 8-byte ESP header, got a {0}-byte header")]
    EsnHeaderLength(usize),
}
