//! A sequence-numbered UDP probe stream, by default 1000 datagrams a second,
//! so every datagram lost or duplicated across a failover is counted and the
//! longest gap between arrivals is measured to the millisecond. The sender
//! and the receiver run inside namespaces (`chaos probe-send`, `probe-recv`);
//! both stamp with the wall clock, which namespaces share.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

/// The UDP port probes go to.
pub const PORT: u16 = 9999;
/// Each datagram: sequence number, send time (µs), padding to a small
/// packet's size.
const SIZE: usize = 64;

/// Microseconds since the Unix epoch: comparable across namespaces.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Sends `count` probes to `to`, `rate` a second, on an absolute schedule
/// (a late wake-up sends what is due at once, so the rate holds on average).
pub fn send(to: SocketAddr, rate: u32, count: u64) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" })?;
    let every = Duration::from_secs(1) / rate.max(1);
    let start = Instant::now();
    let mut buf = [0u8; SIZE];
    for seq in 1..=count {
        let due = start + every * (seq - 1) as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        buf[..8].copy_from_slice(&seq.to_be_bytes());
        buf[8..16].copy_from_slice(&now_us().to_be_bytes());
        // A send that fails (no route while an address moves) is a loss
        // like any other.
        let _ = socket.send_to(&buf, to);
    }
    Ok(())
}

/// Receives probes on `bind` for `duration`, then writes one line per
/// datagram, `SEQ ARRIVAL_US`, to `out`.
pub fn receive(bind: SocketAddr, out: &Path, duration: Duration) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(bind).with_context(|| format!("cannot bind {bind}"))?;
    socket.set_read_timeout(Some(Duration::from_millis(100)))?;
    let end = Instant::now() + duration;
    let mut lines = String::new();
    let mut buf = [0u8; 2048];
    while Instant::now() < end {
        match socket.recv(&mut buf) {
            Ok(n) if n >= 8 => {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&buf[..8]);
                let _ = writeln!(lines, "{} {}", u64::from_be_bytes(seq), now_us());
            }
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
    std::fs::write(out, lines).with_context(|| format!("cannot write {}", out.display()))
}

/// What one direction of the stream saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub sent: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// The longest time between two arrivals, and when it began (µs).
    pub longest_gap: Duration,
    pub gap_from_us: u64,
    /// Arrival times (µs), in order: for the timeline.
    pub arrivals: Vec<u64>,
}

impl Flow {
    /// The receiver's lines (`SEQ ARRIVAL_US`) for a stream of `sent` probes.
    pub fn parse(sent: u64, text: &str) -> Flow {
        let mut seen: BTreeMap<u64, u64> = BTreeMap::new();
        let mut arrivals = Vec::new();
        for line in text.lines() {
            let mut words = line.split_whitespace();
            let (Some(seq), Some(at)) = (
                words.next().and_then(|w| w.parse::<u64>().ok()),
                words.next().and_then(|w| w.parse::<u64>().ok()),
            ) else {
                continue;
            };
            *seen.entry(seq).or_insert(0) += 1;
            arrivals.push(at);
        }
        arrivals.sort_unstable();
        let received = seen.keys().filter(|s| (1..=sent).contains(*s)).count() as u64;
        let duplicated = seen.values().map(|n| n - 1).sum();
        let (gap, from) = arrivals
            .windows(2)
            .map(|w| (w[1] - w[0], w[0]))
            .max()
            .unwrap_or((0, 0));
        Flow {
            sent,
            lost: sent - received,
            duplicated,
            longest_gap: Duration::from_micros(gap),
            gap_from_us: from,
            arrivals,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_duplicates_and_the_longest_gap_are_counted() {
        let text = "1 1000\n2 2000\n2 2100\n5 250000\n6 251000\nnoise\n";
        let f = Flow::parse(6, text);
        assert_eq!((f.lost, f.duplicated), (2, 1), "3 and 4 lost, 2 twice");
        assert_eq!(f.longest_gap, Duration::from_micros(247_900));
        assert_eq!(f.gap_from_us, 2100);
        assert_eq!(f.arrivals.len(), 5);
    }
}
