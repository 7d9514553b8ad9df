//! The simulator's own acceptance: hundreds of seeds across the fault mix
//! keep every invariant and settle; one seed replays identically; each
//! checker catches its rule broken on purpose; seeds that found bugs stay
//! fixed.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tandem_sim::run::{Options, Outcome, Sabotage, run};
use tandem_sim::stats::Table;

/// Runs seeds on every core (each thread runs its own simulations).
fn run_all(seeds: std::ops::Range<u64>) -> Vec<Outcome> {
    let next = Arc::new(AtomicU64::new(seeds.start));
    let out = Arc::new(Mutex::new(Vec::new()));
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (next, out) = (next.clone(), out.clone());
            let end = seeds.end;
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= end {
                        return;
                    }
                    let o = run(seed, &Options::default());
                    out.lock().unwrap().push(o);
                }
            });
        }
    });
    let mut all = Arc::try_unwrap(out).unwrap().into_inner().unwrap();
    all.sort_by_key(|o| o.plan.seed);
    all
}

#[test]
fn five_hundred_seeds_keep_every_invariant_and_settle() {
    let outcomes = run_all(0..500);
    let mut table = Table::default();
    let mut failures = Vec::new();
    for o in &outcomes {
        table.add(o);
        failures.extend(o.failure());
    }
    println!("{}", table.render());
    assert_eq!(outcomes.len(), 500);
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_same_seed_gives_the_same_trace() {
    let options = Options {
        keep_trace: true,
        ..Options::default()
    };
    // A crash, a takeover and a restart: timers, elections and retries all
    // in play.
    let a = run(6, &options);
    let b = run(6, &options);
    assert!(
        a.trace.len() > 500,
        "a trace worth comparing: {:?}",
        a.trace
    );
    assert_eq!(a.trace, b.trace);
    assert_eq!(a.digest, b.digest);
}

/// Each checker, with its rule broken on purpose by one gateway, fails the
/// run and names the rule.
#[test]
fn every_checker_catches_its_rule_broken() {
    // Seed 1: a planned handover away from gateway 1 (the first owner),
    // after which the peer keeps the tunnel busy.
    let cases = [
        (Sabotage::IgnoreLease, 1, "one sender per SA"),
        (Sabotage::RepeatSequence, 1, "sequence number used once"),
        (Sabotage::AlterRetransmit, 1, "identical responses"),
        (Sabotage::DeliverTwice, 1, "no packet accepted twice"),
        (Sabotage::LoseDisks, 1, "commit before reply"),
        // Seed 25: the peer rekeys while gateway 1 owns the tunnel, so
        // gateway 1 answers a second request.
        (
            Sabotage::StaleResponse,
            25,
            "message IDs never go backwards",
        ),
    ];
    for (sabotage, seed, rule) in cases {
        let honest = run(seed, &Options::default());
        assert!(
            honest.passed(),
            "seed {seed} must pass unsabotaged: {honest:?}"
        );
        let o = run(
            seed,
            &Options {
                sabotage: Some(sabotage),
                ..Options::default()
            },
        );
        let v = o
            .violation
            .unwrap_or_else(|| panic!("{sabotage:?} went unnoticed (stuck: {:?})", o.stuck));
        assert!(v.rule.contains(rule), "{sabotage:?} caught as {v}");
    }
}

/// Seeds that found bugs, kept as regressions. Their plans replay the same
/// faults at the same moments; a change to plan generation that moved them
/// would show here as a different family.
#[test]
fn seeds_that_found_bugs_stay_fixed() {
    let seeds = [
        (
            6,
            "double-failure",
            "a restarted node claimed, from its old log, a tunnel it had lost",
        ),
        (
            128,
            "partition-owner",
            "a cut-off owner's late IKE commit rolled the new owner's SA back",
        ),
        (
            1017,
            "replay-after-kill",
            "a restarted owner took an old reservation for a fresh grant",
        ),
        (
            101_282,
            "replay-after-kill",
            "the replay checker counted the residual from the takeover",
        ),
        (
            302_728,
            "double-failure",
            "a restarted node took over from its old log and reused sequence numbers",
        ),
        (
            304_769,
            "double-failure",
            "a restarted node took over from its old log and reused sequence numbers",
        ),
        (
            306_676,
            "double-failure",
            "a restarted node took over from its old log and reused sequence numbers",
        ),
    ];
    for (seed, kind, bug) in seeds {
        let o = run(seed, &Options::default());
        assert_eq!(
            o.plan.kind, kind,
            "seed {seed} no longer draws the plan that found: {bug}"
        );
        assert!(
            o.passed(),
            "seed {seed} ({bug}): {:?} {:?}",
            o.violation,
            o.stuck
        );
    }
}
