//! Anti-replay window with 64-bit extended sequence numbers (RFC 4303 section
//! 3.4.3 and appendix A).
//!
//! Checking and committing are separate steps: a packet is checked (and its ESN
//! high half inferred) before its ICV is verified, and only a packet that
//! verified moves the window, so forged packets cannot shift it.

/// Smallest and largest window sizes we accept, in packets.
pub const MIN_WINDOW: u32 = 64;
pub const MAX_WINDOW: u32 = 4096;

/// Why a window size was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("replay window {0} is outside {MIN_WINDOW}..={MAX_WINDOW} or not a multiple of 64")]
pub struct BadWindow(pub u32);

/// The receive window of one inbound SA.
#[derive(Debug, Clone)]
pub struct ReplayWindow {
    size: u64,
    /// Highest sequence number accepted so far (full 64 bits); 0 = none yet.
    top: u64,
    /// Bit i of the ring set = sequence number `s` with `s % size == i` seen,
    /// for `s` in `top - size + 1 ..= top`.
    bits: Vec<u64>,
}

impl ReplayWindow {
    pub fn new(size: u32) -> Result<ReplayWindow, BadWindow> {
        Self::starting_at(size, 0)
    }

    /// A window whose high-water mark is `top`: everything at or below it counts
    /// as seen. A new owner of an SA starts from the replicated mark this way,
    /// so packets replayed from before a failover are refused.
    pub fn starting_at(size: u32, top: u64) -> Result<ReplayWindow, BadWindow> {
        if !(MIN_WINDOW..=MAX_WINDOW).contains(&size) || !size.is_multiple_of(64) {
            return Err(BadWindow(size));
        }
        let words = (size / 64) as usize;
        Ok(ReplayWindow {
            size: u64::from(size),
            top,
            bits: vec![if top == 0 { 0 } else { u64::MAX }; words],
        })
    }

    /// The window size in packets.
    pub fn size(&self) -> u32 {
        self.size as u32
    }

    /// The highest sequence number accepted.
    pub fn highest(&self) -> u64 {
        self.top
    }

    /// Infers the full 64-bit sequence number of a packet carrying `low` (the
    /// 32 bits on the wire) per RFC 4303 appendix A2, and checks it is neither
    /// a duplicate nor too old. `esn` false: the high half is always zero.
    pub fn check(&self, low: u32, esn: bool) -> Option<u64> {
        let seq = if esn { self.infer(low) } else { u64::from(low) };
        if seq == 0 {
            return None;
        }
        if seq > self.top {
            return Some(seq);
        }
        if self.top - seq >= self.size {
            return None;
        }
        (!self.is_set(seq)).then_some(seq)
    }

    /// Records `seq` (from [`ReplayWindow::check`]) after its ICV verified.
    pub fn commit(&mut self, seq: u64) {
        if seq > self.top {
            let advance = seq - self.top;
            if advance >= self.size {
                self.bits.iter_mut().for_each(|w| *w = 0);
            } else {
                for s in self.top + 1..seq {
                    self.clear(s);
                }
            }
            self.top = seq;
        }
        self.set(seq);
    }

    fn infer(&self, low: u32) -> u64 {
        let top_hi = (self.top >> 32) as u32;
        let top_lo = self.top as u32;
        let bottom = self.top.saturating_sub(self.size - 1);
        let bottom_lo = bottom as u32;
        let hi = if top_hi == 0 && self.top < self.size {
            // Still in the first block: there is no earlier block to fall back
            // into, and nothing can be a whole 2^32 ahead yet.
            0
        } else if top_lo >= (self.size - 1) as u32 {
            // Window within one 2^32 block (case A).
            if low >= bottom_lo {
                top_hi
            } else {
                top_hi.wrapping_add(1)
            }
        } else {
            // Window spans a 2^32 boundary (case B).
            if low >= bottom_lo {
                top_hi.wrapping_sub(1)
            } else {
                top_hi
            }
        };
        (u64::from(hi) << 32) | u64::from(low)
    }

    fn pos(&self, seq: u64) -> (usize, u64) {
        let bit = seq % self.size;
        ((bit / 64) as usize, 1u64 << (bit % 64))
    }

    fn is_set(&self, seq: u64) -> bool {
        let (w, m) = self.pos(seq);
        self.bits.get(w).is_some_and(|word| word & m != 0)
    }

    fn set(&mut self, seq: u64) {
        let (w, m) = self.pos(seq);
        if let Some(word) = self.bits.get_mut(w) {
            *word |= m;
        }
    }

    fn clear(&mut self, seq: u64) {
        let (w, m) = self.pos(seq);
        if let Some(word) = self.bits.get_mut(w) {
            *word &= !m;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept(w: &mut ReplayWindow, low: u32, esn: bool) -> Option<u64> {
        let seq = w.check(low, esn)?;
        w.commit(seq);
        Some(seq)
    }

    #[test]
    fn duplicates_and_old_packets_refused_reordering_accepted() {
        let mut w = ReplayWindow::new(64).unwrap();
        assert_eq!(w.check(0, false), None, "sequence 0 is never valid");
        assert_eq!(accept(&mut w, 1, false), Some(1));
        assert_eq!(accept(&mut w, 1, false), None);
        assert_eq!(accept(&mut w, 10, false), Some(10));
        assert_eq!(
            accept(&mut w, 5, false),
            Some(5),
            "reordered within the window"
        );
        assert_eq!(accept(&mut w, 5, false), None);
        assert_eq!(accept(&mut w, 200, false), Some(200));
        assert_eq!(accept(&mut w, 136, false), None, "older than the window");
        assert_eq!(
            accept(&mut w, 137, false),
            Some(137),
            "oldest slot still in"
        );
        assert_eq!(w.highest(), 200);
    }

    #[test]
    fn checking_alone_does_not_move_the_window() {
        let mut w = ReplayWindow::new(64).unwrap();
        assert_eq!(w.check(1000, false), Some(1000));
        assert_eq!(
            accept(&mut w, 3, false),
            Some(3),
            "unverified 1000 must not push 3 out"
        );
    }

    #[test]
    fn large_jump_clears_stale_bits() {
        let mut w = ReplayWindow::new(64).unwrap();
        accept(&mut w, 2, false);
        assert_eq!(accept(&mut w, 70, false), Some(70));
        // 66 shares 2's ring slot; 2's bit must not make 66 look like a replay.
        assert_eq!(accept(&mut w, 66, false), Some(66));
        assert_eq!(accept(&mut w, 2, false), None);
    }

    #[test]
    fn esn_rolls_over_2_pow_32() {
        let mut w = ReplayWindow::new(128).unwrap();
        accept(&mut w, u32::MAX - 1, true);
        assert_eq!(
            accept(&mut w, 3, true),
            Some((1 << 32) | 3),
            "high half inferred +1"
        );
        assert_eq!(
            accept(&mut w, u32::MAX, true),
            Some(u64::from(u32::MAX)),
            "late packet from the old block"
        );
        assert_eq!(accept(&mut w, 3, true), None);
    }

    #[test]
    fn starting_mark_refuses_everything_before_it() {
        let mut w = ReplayWindow::starting_at(1024, 5000).unwrap();
        assert_eq!(accept(&mut w, 4999, false), None);
        assert_eq!(accept(&mut w, 5000, false), None);
        assert_eq!(accept(&mut w, 5001, false), Some(5001));
    }

    #[test]
    fn window_bounds() {
        assert!(ReplayWindow::new(32).is_err());
        assert!(ReplayWindow::new(100).is_err());
        assert!(ReplayWindow::new(8192).is_err());
        assert!(ReplayWindow::new(1024).is_ok());
        assert!(ReplayWindow::new(4096).is_ok());
    }
}
