//! Retransmission and lifetime schedules. Pure functions of `now` and the
//! injected rng, so tests can jump a fake clock to each deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_crypto::SecureRandom;

/// Waits after each transmission of a request: 2, 4, 8, 16 and 32 s (62 s in all,
/// close to strongSwan's default 5 retransmits), then the peer is given up.
const RETRANSMIT_WAITS: [Duration; 5] = [
    Duration::from_secs(2),
    Duration::from_secs(4),
    Duration::from_secs(8),
    Duration::from_secs(16),
    Duration::from_secs(32),
];

/// An outstanding request: the exact bytes to resend and when.
#[derive(Debug, Clone)]
pub(crate) struct Retransmit {
    pub datagram: Vec<u8>,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Transmissions so far (1 after the first send).
    sent: usize,
    pub deadline: Instant,
}

impl Retransmit {
    pub fn new(now: Instant, local: SocketAddr, remote: SocketAddr, datagram: Vec<u8>) -> Self {
        Self {
            datagram,
            local,
            remote,
            sent: 1,
            deadline: now + RETRANSMIT_WAITS[0],
        }
    }

    /// Called at `deadline`: true when the request should be sent again (the
    /// same bytes), false when the peer is to be given up.
    pub fn fire(&mut self, now: Instant) -> bool {
        match RETRANSMIT_WAITS.get(self.sent) {
            Some(wait) => {
                self.sent += 1;
                self.deadline = now + *wait;
                true
            }
            None => false,
        }
    }
}

/// Least time between the start of a rekey and the hard expiry: covers the
/// first retransmissions (2 s + 4 s + 8 s) of a lost rekey request.
pub(crate) const MIN_REKEY_GRACE: Duration = Duration::from_secs(15);

/// When to rekey and when to give up on an SA of this lifetime: rekey early by a
/// random 0-10% so that two peers with equal lifetimes rarely collide (RFC 7296
/// section 2.8.1), and expire at 110% if no rekey ever succeeded, but never
/// sooner than [`MIN_REKEY_GRACE`] after the rekey starts: the rekey exchange
/// needs room for a lost request to be retransmitted.
pub(crate) fn lifetime_deadlines(
    now: Instant,
    lifetime: Duration,
    rng: &mut dyn SecureRandom,
) -> (Instant, Instant) {
    let permille = u32::try_from(rng.next_u64() % 101).unwrap_or(0);
    let jitter = lifetime * permille / 1000;
    let grace = (lifetime / 10).max(MIN_REKEY_GRACE);
    (now + (lifetime - jitter), now + lifetime + grace)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_crypto::SeededRandom;

    #[test]
    fn retransmits_back_off_then_give_up() {
        let t0 = Instant::now();
        let a: SocketAddr = "192.0.2.1:500".parse().unwrap();
        let mut r = Retransmit::new(t0, a, a, vec![1]);
        let mut at = r.deadline;
        let mut waits = vec![at - t0];
        while r.fire(at) {
            waits.push(r.deadline - at);
            at = r.deadline;
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [2, 4, 8, 16, 32]);
    }

    #[test]
    fn lifetimes_have_bounded_jitter() {
        let t0 = Instant::now();
        let mut rng = SeededRandom::new(7);
        let life = Duration::from_secs(3600);
        for _ in 0..100 {
            let (rekey, expire) = lifetime_deadlines(t0, life, &mut rng);
            assert!(rekey <= t0 + life && rekey >= t0 + life - life / 10);
            assert_eq!(expire, t0 + life + (life / 10).max(MIN_REKEY_GRACE));
        }
    }
}
