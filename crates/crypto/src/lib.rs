//! Cryptographic transforms for IKEv2 and ESP.
//!
//! Everything here is deterministic given its inputs: randomness comes in through
//! [`SecureRandom`], so the IKE and ESP state machines, the simulator and the fuzzers
//! drive exactly the code that runs in production. Key material lives in [`Secret`],
//! which zeroizes on drop and never prints its bytes.
#![forbid(unsafe_code)]

pub mod aead;
pub mod cipher;
pub mod dh;
pub mod integ;
pub mod prf;
pub mod rng;
pub mod secret;

mod error;

pub use aead::{Aead, AeadBackend};
pub use cipher::{EncrAlg, SaCipher};
pub use dh::{DhGroup, DhPrivate};
pub use error::CryptoError;
pub use integ::{IntegAlg, Integrity};
pub use prf::PrfAlg;
pub use rng::{OsRandom, SecureRandom, SeededRandom};
pub use secret::Secret;
