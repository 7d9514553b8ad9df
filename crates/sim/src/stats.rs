//! Figures from many runs: per scenario family, the distribution of the
//! traffic gap and of the probes lost.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::run::Outcome;

#[derive(Debug, Default)]
pub struct Table {
    rows: BTreeMap<&'static str, (Vec<Duration>, Vec<u64>)>,
}

fn percentile<T: Copy + Ord + Default>(sorted: &[T], p: usize) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    sorted[((sorted.len() - 1) * p) / 100]
}

impl Table {
    pub fn add(&mut self, o: &Outcome) {
        let (gaps, lost) = self.rows.entry(o.plan.kind).or_default();
        gaps.push(o.gaps.iter().copied().max().unwrap_or_default());
        lost.push(o.lost);
    }

    pub fn render(&mut self) -> String {
        let mut out = format!(
            "{:<18} {:>5} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}\n",
            "scenario", "runs", "gap p50", "gap p99", "gap max", "lost50", "lost99", "lostmax"
        );
        for (kind, (gaps, lost)) in &mut self.rows {
            gaps.sort();
            lost.sort();
            let ms = |d: Duration| format!("{:.0} ms", d.as_secs_f64() * 1000.0);
            out += &format!(
                "{:<18} {:>5} {:>9} {:>9} {:>9} {:>7} {:>7} {:>7}\n",
                kind,
                gaps.len(),
                ms(percentile(gaps, 50)),
                ms(percentile(gaps, 99)),
                ms(gaps.last().copied().unwrap_or_default()),
                percentile(lost, 50),
                percentile(lost, 99),
                lost.last().copied().unwrap_or_default()
            );
        }
        out
    }
}
