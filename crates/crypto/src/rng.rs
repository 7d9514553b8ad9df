//! Injected randomness. Protocol code never reads a global RNG (STYLE.md 6).

/// Source of cryptographically strong random bytes.
pub trait SecureRandom {
    fn fill(&mut self, dst: &mut [u8]);

    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill(&mut b);
        u64::from_le_bytes(b)
    }
}

/// The operating system's RNG (getrandom). What `tandemd` uses.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsRandom;

impl SecureRandom for OsRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        // The OS RNG failing means the machine cannot do cryptography at all;
        // continuing with predictable bytes would be worse than stopping.
        #[allow(clippy::expect_used)]
        getrandom::fill(dst).expect("operating system RNG unavailable");
    }
}

/// Deterministic stream from a seed, for tests, the simulator and fuzzers only:
/// SHA-256 in counter mode over the seed. Never used by `tandemd` for keys.
#[derive(Debug, Clone)]
pub struct SeededRandom {
    seed: [u8; 32],
    counter: u64,
    buf: [u8; 32],
    used: usize,
}

impl SeededRandom {
    pub fn new(seed: u64) -> Self {
        use sha2::{Digest, Sha256};
        let seed: [u8; 32] = Sha256::digest(seed.to_le_bytes()).into();
        Self {
            seed,
            counter: 0,
            buf: [0; 32],
            used: 32,
        }
    }
}

impl SecureRandom for SeededRandom {
    fn fill(&mut self, dst: &mut [u8]) {
        use sha2::{Digest, Sha256};
        for byte in dst {
            if self.used == self.buf.len() {
                let mut h = Sha256::new();
                h.update(self.seed);
                h.update(self.counter.to_le_bytes());
                self.buf = h.finalize().into();
                self.counter += 1;
                self.used = 0;
            }
            *byte = self.buf[self.used];
            self.used += 1;
        }
    }
}
