//! IKEv2 (RFC 7296) codec and state machines, sans-IO.
//!
//! Nothing here opens a socket, reads a clock or draws from a global RNG: callers
//! pass `now`, datagrams and a [`tandem_crypto::SecureRandom`], and get back
//! datagrams to send and state changes to install (STYLE.md 1).
#![forbid(unsafe_code)]

pub mod config;
pub mod endpoint;
pub mod message;
pub mod record;

mod auth;
mod child_sa;
mod cookie;
mod handshake;
mod ike_sa;
mod keys;
mod payloads;
mod proposal;
mod timers;

#[cfg(test)]
mod tests;
