//! Stateless cookies (RFC 7296 section 2.6): a responder under load answers
//! IKE_SA_INIT with a COOKIE only the requester's address can return, and
//! keeps no state until it does.
//!
//! A cookie is `<version> | HMAC-SHA256(secret, Ni | IPi | SPIi)`. The secret
//! is replaced every lifetime so that a harvested cookie stops working; the
//! previous secret still verifies, so a cookie sent just before a rotation is
//! accepted when it comes back. The version byte names the secret, so
//! verification computes one MAC, not one per secret kept.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;
use tandem_crypto::{PrfAlg, Secret, SecureRandom};

/// Shorter lifetimes would refuse cookies still on their way back.
const MIN_LIFETIME: Duration = Duration::from_secs(1);

/// One secret and the number of the lifetime it is current in.
struct Generation {
    number: u64,
    /// Zeroizes when the generation is dropped.
    secret: Secret,
}

impl Generation {
    fn draw(number: u64, rng: &mut dyn SecureRandom) -> Self {
        let mut secret = vec![0; 32];
        rng.fill(&mut secret);
        Self {
            number,
            secret: Secret::new(secret),
        }
    }

    /// The cookie's first byte. Only the current and the previous
    /// generation verify, and consecutive numbers differ in their low byte.
    fn version(&self) -> u8 {
        self.number.to_be_bytes()[7]
    }

    fn mac(&self, spi_i: u64, ni: &[u8], ip: IpAddr) -> Secret {
        let ip = match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        };
        PrfAlg::HmacSha256.prf(self.secret.expose(), &[ni, &ip, &spi_i.to_be_bytes()])
    }
}

/// The current cookie secret and the one before it.
pub(crate) struct CookieSecrets {
    lifetime: Duration,
    /// Where generation 0 starts: the first `now` seen, because the endpoint
    /// is created without one. Generation n is current from
    /// `epoch + n * lifetime` for one lifetime.
    epoch: Option<Instant>,
    current: Generation,
    previous: Option<Generation>,
}

impl std::fmt::Debug for CookieSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieSecrets")
            .field("lifetime", &self.lifetime)
            .field("generation", &self.current.number)
            .finish_non_exhaustive()
    }
}

impl CookieSecrets {
    pub fn new(lifetime: Duration, rng: &mut dyn SecureRandom) -> Self {
        Self {
            lifetime: lifetime.max(MIN_LIFETIME),
            epoch: None,
            current: Generation::draw(0, rng),
            previous: None,
        }
    }

    /// Moves to the generation `now` falls in. Rotating on use rather than
    /// on a timer gives the same cookies and wakes nobody up for it.
    pub fn rotate(&mut self, now: Instant, rng: &mut dyn SecureRandom) {
        let epoch = *self.epoch.get_or_insert(now);
        let elapsed = now.saturating_duration_since(epoch).as_nanos();
        let number = u64::try_from(elapsed / self.lifetime.as_nanos()).unwrap_or(u64::MAX);
        if number <= self.current.number {
            return;
        }
        let old = std::mem::replace(&mut self.current, Generation::draw(number, rng));
        // Only the generation right before the current one stays; an older
        // one (no request for two lifetimes) is dropped, and zeroized, now.
        self.previous = (old.number + 1 == number).then_some(old);
    }

    /// The cookie to demand from `ip` for this IKE_SA_INIT request.
    pub fn issue(&self, spi_i: u64, ni: &[u8], ip: IpAddr) -> Vec<u8> {
        let mut cookie = vec![self.current.version()];
        cookie.extend_from_slice(self.current.mac(spi_i, ni, ip).expose());
        cookie
    }

    /// Whether `cookie` was issued for this request by the current or the
    /// previous secret. Compared in constant time, so the response time does
    /// not tell a forger how many bytes it got right.
    pub fn verifies(&self, cookie: &[u8], spi_i: u64, ni: &[u8], ip: IpAddr) -> bool {
        let Some((&version, mac)) = cookie.split_first() else {
            return false;
        };
        let generation = std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|g| g.version() == version);
        generation.is_some_and(|g| g.mac(spi_i, ni, ip).expose().ct_eq(mac).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_crypto::SeededRandom;

    const LIFETIME: Duration = Duration::from_secs(300);
    const NI: &[u8] = &[7; 32];
    const SPI: u64 = 0x1122_3344_5566_7788;

    fn ip() -> IpAddr {
        "198.51.100.1".parse().unwrap()
    }

    /// A cookie issued at `t0` (where the secrets start), checked at `t0 + after`.
    fn verifies_after(after: Duration) -> bool {
        let mut rng = SeededRandom::new(1);
        let t0 = Instant::now();
        let mut secrets = CookieSecrets::new(LIFETIME, &mut rng);
        secrets.rotate(t0, &mut rng);
        let cookie = secrets.issue(SPI, NI, ip());
        secrets.rotate(t0 + after, &mut rng);
        secrets.verifies(&cookie, SPI, NI, ip())
    }

    #[test]
    fn a_cookie_survives_one_rotation_but_not_two() {
        assert!(verifies_after(Duration::ZERO));
        assert!(verifies_after(LIFETIME - Duration::from_millis(1)));
        assert!(verifies_after(LIFETIME), "issued just before a rotation");
        assert!(verifies_after(2 * LIFETIME - Duration::from_millis(1)));
        assert!(!verifies_after(2 * LIFETIME), "two rotations");
        assert!(
            !verifies_after(10 * LIFETIME),
            "long idle: both secrets new"
        );
    }

    #[test]
    fn rotation_step_by_step_keeps_exactly_one_previous_secret() {
        let mut rng = SeededRandom::new(2);
        let t0 = Instant::now();
        let mut secrets = CookieSecrets::new(LIFETIME, &mut rng);
        secrets.rotate(t0, &mut rng);
        let first = secrets.issue(SPI, NI, ip());
        secrets.rotate(t0 + LIFETIME, &mut rng);
        let second = secrets.issue(SPI, NI, ip());
        assert_ne!(first, second, "a new secret");
        assert_ne!(first[0], second[0], "and a new version");
        assert!(secrets.verifies(&first, SPI, NI, ip()));
        secrets.rotate(t0 + 2 * LIFETIME, &mut rng);
        assert!(!secrets.verifies(&first, SPI, NI, ip()));
        assert!(secrets.verifies(&second, SPI, NI, ip()));
    }

    #[test]
    fn a_wrong_cookie_does_not_verify() {
        let mut rng = SeededRandom::new(3);
        let secrets = CookieSecrets::new(LIFETIME, &mut rng);
        let cookie = secrets.issue(SPI, NI, ip());
        assert_eq!(cookie.len(), 33, "version and SHA-256 MAC");
        assert!(secrets.verifies(&cookie, SPI, NI, ip()));
        let mut flipped = cookie.clone();
        flipped[20] ^= 1;
        let mut other_version = cookie.clone();
        other_version[0] ^= 0x80;
        for bad in [
            &flipped[..],
            &other_version,
            &cookie[..32],
            &cookie[..1],
            &[],
            &[0; 33],
        ] {
            assert!(!secrets.verifies(bad, SPI, NI, ip()), "{bad:?}");
        }
        let other_ip: IpAddr = "198.51.100.2".parse().unwrap();
        assert!(!secrets.verifies(&cookie, SPI, NI, other_ip));
        assert!(!secrets.verifies(&cookie, SPI + 1, NI, ip()));
        assert!(!secrets.verifies(&cookie, SPI, &[8; 32], ip()));
        let stranger = CookieSecrets::new(LIFETIME, &mut rng);
        assert!(!stranger.verifies(&cookie, SPI, NI, ip()), "another secret");
    }

    #[test]
    fn same_seed_same_cookies() {
        let run = || {
            let mut rng = SeededRandom::new(4);
            let t0 = Instant::now();
            let mut secrets = CookieSecrets::new(LIFETIME, &mut rng);
            (0..5u32)
                .map(|i| {
                    secrets.rotate(t0 + LIFETIME * i, &mut rng);
                    secrets.issue(SPI, NI, ip())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn a_zero_lifetime_is_raised_to_the_minimum() {
        let mut rng = SeededRandom::new(5);
        let t0 = Instant::now();
        let mut secrets = CookieSecrets::new(Duration::ZERO, &mut rng);
        secrets.rotate(t0, &mut rng);
        let cookie = secrets.issue(SPI, NI, ip());
        secrets.rotate(t0 + MIN_LIFETIME / 2, &mut rng);
        assert!(secrets.verifies(&cookie, SPI, NI, ip()));
    }
}
