//! Parsing and emitting [`Message`]s.

use tandem_crypto::{CryptoError, SaCipher, SecureRandom};

use super::{Header, Message};

/// Why a datagram is not a valid IKEv2 message. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    #[error("truncated: needed {needed} bytes, had {had}")]
    Truncated { needed: usize, had: usize },
    #[error("IKE major version {0} is not 2")]
    UnsupportedVersion(u8),
    #[error("invalid syntax: {0}")]
    InvalidSyntax(&'static str),
    #[error("more than {} payloads", super::MAX_PAYLOADS)]
    TooManyPayloads,
    #[error("message is encrypted; decrypt it with the IKE SA's keys")]
    Encrypted,
    #[error("message has no Encrypted payload")]
    NotEncrypted,
    #[error("encrypted payload: {0}")]
    Crypto(#[from] CryptoError),
}

impl Header {
    /// Length of the fixed header on the wire.
    pub const LEN: usize = 28;

    /// Parses and checks the fixed header only: enough to demultiplex a datagram to
    /// an IKE SA before spending any work on it.
    pub fn parse(datagram: &[u8]) -> Result<Header, DecodeError> {
        let _ = datagram;
        unimplemented!("filled in by the codec work")
    }
}

impl Message {
    /// Parses an unencrypted message (IKE_SA_INIT, or an unprotected notify).
    /// Returns [`DecodeError::Encrypted`] when the message carries an SK payload.
    pub fn parse(datagram: &[u8]) -> Result<Message, DecodeError> {
        let _ = datagram;
        unimplemented!("filled in by the codec work")
    }

    /// Verifies, decrypts and parses a message whose payloads are inside an SK
    /// payload, with the sender's direction of the IKE SA keys.
    pub fn decrypt(datagram: &[u8], cipher: &SaCipher) -> Result<Message, DecodeError> {
        let _ = (datagram, cipher);
        unimplemented!("filled in by the codec work")
    }

    /// Emits the message with its payloads in the clear (IKE_SA_INIT).
    pub fn emit(&self) -> Vec<u8> {
        unimplemented!("filled in by the codec work")
    }

    /// Emits the message with every payload inside one SK payload, sealed with our
    /// direction of the IKE SA keys. The IV seed is drawn from `rng`.
    pub fn emit_encrypted(&self, cipher: &SaCipher, rng: &mut dyn SecureRandom) -> Vec<u8> {
        let _ = (cipher, rng);
        unimplemented!("filled in by the codec work")
    }
}
