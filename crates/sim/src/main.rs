//! tandem-sim: run one seed (with its trace), or soak through many.

use std::time::Instant;

use clap::{Parser, Subcommand};
use tandem_sim::run::{Options, run};
use tandem_sim::stats::Table;

#[derive(Parser)]
#[command(
    name = "tandem-sim",
    about = "Tandem's deterministic failover simulator"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one seed and print its outcome (and trace).
    Run {
        #[arg(long)]
        seed: u64,
        #[arg(long)]
        trace: bool,
        /// Log filter for the nodes' own logs, e.g. "info".
        #[arg(long)]
        log: Option<String>,
    },
    /// Run seeds FROM..FROM+SEEDS, report every failing seed and the figures.
    Soak {
        #[arg(long, default_value_t = 1000)]
        seeds: u64,
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
}

fn main() -> std::process::ExitCode {
    match Cli::parse().command {
        Cmd::Run { seed, trace, log } => {
            if let Some(filter) = log {
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
                    .with_timer(SimTime)
                    .init();
            }
            let o = run(
                seed,
                &Options {
                    keep_trace: trace,
                    ..Options::default()
                },
            );
            for line in &o.trace {
                println!("{line}");
            }
            println!("{:?}", o.plan);
            println!("trace {} gaps {:?} lost {}", o.digest, o.gaps, o.lost);
            match (&o.violation, &o.stuck) {
                (None, None) => {
                    println!("seed {seed}: passed");
                    std::process::ExitCode::SUCCESS
                }
                (Some(v), _) => {
                    println!("seed {seed}: {v}");
                    std::process::ExitCode::FAILURE
                }
                (None, Some(s)) => {
                    println!("seed {seed}: {s}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        Cmd::Soak { seeds, from } => {
            let started = Instant::now();
            let mut table = Table::default();
            let mut failed = Vec::new();
            for seed in from..from + seeds {
                let o = run(seed, &Options::default());
                table.add(&o);
                if let Some(failure) = o.failure() {
                    println!("FAILED {failure}");
                    failed.push(seed);
                }
                if (seed - from + 1) % 100 == 0 {
                    println!(
                        "{} seeds, {} failed, {:.0} s",
                        seed - from + 1,
                        failed.len(),
                        started.elapsed().as_secs_f64()
                    );
                }
            }
            print!("{}", table.render());
            println!(
                "{seeds} seeds in {:.0} s; failing: {failed:?}",
                started.elapsed().as_secs_f64()
            );
            if failed.is_empty() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
    }
}

/// Log times in simulated time.
struct SimTime;

impl tracing_subscriber::fmt::time::FormatTime for SimTime {
    fn format_time(&self, w: &mut tracing_subscriber::fmt::format::Writer<'_>) -> std::fmt::Result {
        write!(w, "{:?}", turmoil::sim_elapsed().unwrap_or_default())
    }
}
