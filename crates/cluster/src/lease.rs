//! Node leases (DESIGN.md invariant 2), as pure arithmetic on monotonic
//! instants so the simulator can drive it.
//!
//! A gateway renews its lease by committing `LeaseRenewed` through Raft. The
//! holder counts its lease from the moment it *sent* the renewal, and only
//! once the renewal is committed; every other node counts from the moment it
//! first *saw* the renewal (appended it to its log, or applied it if it never
//! appended it), which is later in real time. The holder stops
//! sending after `duration * (1 - drift)` of its own clock; the others wait
//! `duration * (1 + drift)` of theirs before they take its tunnels. With clock
//! rates that differ by less than `drift`, the holder has always stopped
//! before anyone else starts, whatever the network does in between.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::NodeId;

/// Lease length and the clock-rate margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    pub duration: Duration,
    /// How often the holder renews; a few renewals fit in one lease, so one
    /// slow commit does not fence a healthy node.
    pub renew_every: Duration,
    /// Relative clock-rate error tolerated between any two nodes, in parts
    /// per million. Crystal clocks differ by under 100 ppm; the default 5 %
    /// is generous, at a cost of 30 ms per side of a 600 ms lease.
    pub drift_ppm: u32,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        Self {
            duration: Duration::from_millis(600),
            renew_every: Duration::from_millis(100),
            drift_ppm: 50_000,
        }
    }
}

impl LeaseTiming {
    /// How long the holder may act on a renewal it sent.
    pub fn holder_validity(&self) -> Duration {
        self.duration.mul_f64(1.0 - f64::from(self.drift_ppm) / 1e6)
    }

    /// How long another node waits after applying a renewal.
    pub fn observer_grace(&self) -> Duration {
        self.duration.mul_f64(1.0 + f64::from(self.drift_ppm) / 1e6)
    }
}

/// This node's own lease: may it send?
#[derive(Debug, Clone, Default)]
pub struct OwnLease {
    valid_until: Option<Instant>,
}

impl OwnLease {
    /// A renewal sent at `sent` has been committed.
    pub fn renewed(&mut self, timing: &LeaseTiming, sent: Instant) {
        let until = sent + timing.holder_validity();
        // Commits may complete out of order; an older one never shortens it.
        if self.valid_until.is_none_or(|u| until > u) {
            self.valid_until = Some(until);
        }
    }

    pub fn valid(&self, now: Instant) -> bool {
        self.valid_until.is_some_and(|u| now < u)
    }

    /// When the lease lapses unless renewed (for timers and status).
    pub fn valid_until(&self) -> Option<Instant> {
        self.valid_until
    }
}

/// Every other node's lease as this node observes it, from the renewals it
/// applied. A node not seen since this one started counts as renewed at the
/// start: it may have renewed just before.
///
/// A renewal counts from when this node appended it to its log, not from
/// when it applied it: after the leader dies, its last entries are committed
/// (and applied) only once a new leader is elected, hundreds of milliseconds
/// later, and counting from then would hold a dead owner's tunnels that much
/// longer. The append still comes after the holder sent the renewal, so the
/// holder has stopped first all the same.
#[derive(Debug, Clone)]
pub struct LeaseWatch {
    started: Instant,
    seen: BTreeMap<NodeId, Instant>,
    /// Renewals in this node's log not yet applied: log index -> appended at.
    appended: BTreeMap<u64, Instant>,
}

impl LeaseWatch {
    pub fn new(started: Instant) -> Self {
        Self {
            started,
            seen: BTreeMap::new(),
            appended: BTreeMap::new(),
        }
    }

    /// The renewal at log `index` was appended here at `now`. Appending
    /// again at an index (after a truncation) replaces the earlier time.
    pub fn appended(&mut self, index: u64, now: Instant) {
        self.appended.insert(index, now);
    }

    /// The log from `index` on was truncated: those renewals may never apply.
    pub fn truncated(&mut self, index: u64) {
        self.appended.split_off(&index);
    }

    /// The renewal by `node` at log `index` was applied here at `now`; it
    /// counts from when it was appended, if this node appended it.
    pub fn observe(&mut self, node: NodeId, index: u64, now: Instant) {
        let at = self.appended.remove(&index).unwrap_or(now);
        // Applied in index order: nothing older than this is still pending.
        self.appended = self.appended.split_off(&index);
        let seen = self.seen.entry(node).or_insert(at);
        *seen = (*seen).max(at);
    }

    /// When `node`'s renewal was last seen here (or this node's start).
    pub fn last_seen(&self, node: NodeId) -> Instant {
        self.seen.get(&node).copied().unwrap_or(self.started)
    }

    /// True once `node` has certainly stopped sending.
    pub fn expired(&self, timing: &LeaseTiming, node: NodeId, now: Instant) -> bool {
        now >= self.last_seen(node) + timing.observer_grace()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_stops_before_any_observer_takes_over() {
        let t = LeaseTiming::default();
        let start = Instant::now();
        let mut own = OwnLease::default();
        let mut watch = LeaseWatch::new(start);
        assert!(!own.valid(start), "no lease before the first renewal");
        // Sent at 10 ms, committed and applied elsewhere at 12 ms, confirmed
        // to the holder at 13 ms.
        let sent = start + Duration::from_millis(10);
        watch.observe(1, 5, start + Duration::from_millis(12));
        own.renewed(&t, sent);
        let holder_stops = own.valid_until().unwrap();
        assert!(own.valid(holder_stops - Duration::from_millis(1)));
        assert!(!own.valid(holder_stops));
        assert!(!watch.expired(&t, 1, holder_stops));
        let takeover = watch.last_seen(1) + t.observer_grace();
        assert!(watch.expired(&t, 1, takeover));
        // Even if the observer's clock runs 4.9 % fast and the holder's is
        // exact, the holder's stop comes first in real time.
        let observer_real = Duration::from_millis(12) + t.observer_grace().div_f64(1.049);
        assert!(Duration::from_millis(10) + t.holder_validity() < observer_real);
    }

    #[test]
    fn an_older_renewal_never_shortens_the_lease() {
        let t = LeaseTiming::default();
        let start = Instant::now();
        let mut own = OwnLease::default();
        own.renewed(&t, start + Duration::from_millis(200));
        own.renewed(&t, start + Duration::from_millis(100));
        assert_eq!(
            own.valid_until(),
            Some(start + Duration::from_millis(200) + t.holder_validity())
        );
    }

    /// A renewal appended just before the leader died and applied after the
    /// next election counts from its append; one never appended here (it
    /// came in a snapshot, or was truncated and replaced) from its apply.
    #[test]
    fn a_renewal_counts_from_when_it_was_appended() {
        let t = LeaseTiming::default();
        let start = Instant::now();
        let ms = |n| start + Duration::from_millis(n);
        let mut watch = LeaseWatch::new(start);
        watch.appended(7, ms(10));
        watch.appended(8, ms(20));
        watch.observe(1, 7, ms(500));
        assert_eq!(watch.last_seen(1), ms(10));
        watch.truncated(8);
        watch.observe(1, 8, ms(600));
        assert_eq!(watch.last_seen(1), ms(600));
        // An entry appended but skipped by apply (not a renewal after all
        // the truncation) does not linger.
        watch.appended(9, ms(650));
        watch.observe(2, 10, ms(700));
        assert_eq!(watch.last_seen(2), ms(700));
        assert!(watch.appended.is_empty());
        // Seen times never go backwards.
        watch.appended(11, ms(50));
        watch.observe(1, 11, ms(800));
        assert_eq!(watch.last_seen(1), ms(600));
        assert!(!watch.expired(&t, 1, ms(600) + t.duration));
    }

    #[test]
    fn a_node_never_seen_counts_from_the_observers_start() {
        let t = LeaseTiming::default();
        let start = Instant::now();
        let watch = LeaseWatch::new(start);
        assert!(!watch.expired(&t, 9, start + t.duration));
        assert!(watch.expired(&t, 9, start + t.observer_grace()));
    }
}
