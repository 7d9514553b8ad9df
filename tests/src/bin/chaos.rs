//! The chaos suite's runner (see chaos/run): a real Tandem cluster and a
//! real strongSwan device in network namespaces, broken on purpose under
//! traffic; also the probe sender and receiver it starts in the namespaces.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tandem_tests::chaos::{self, Options, Thresholds};

#[derive(Parser)]
#[command(
    name = "chaos",
    about = "Break a Tandem cluster under traffic and report what the customer saw"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run scenarios (all, or those named) and write the report.
    Run {
        /// Scenario names; all of them if none.
        scenarios: Vec<String>,
        /// Only the quick subset (what CI runs).
        #[arg(long)]
        quick: bool,
        /// Where report.json and timeline.svg go.
        #[arg(long, default_value = "chaos-results")]
        out: PathBuf,
        /// The device's IKE proposal, in strongSwan syntax.
        #[arg(long, default_value = "aes256gcm16-prfsha256-curve25519")]
        peer_ike_proposal: String,
        #[arg(long, default_value = "aes256gcm16")]
        peer_esp_proposal: String,
        /// The device's DPD delay, seconds (0: off).
        #[arg(long, default_value_t = 10)]
        peer_dpd: u64,
        /// The tunnel's IKE SA lifetime, seconds (Tandem rekeys within it;
        /// the device's configuration, from peer-config, 10% later).
        #[arg(long, default_value_t = 8 * 3600)]
        peer_ike_lifetime: u64,
        /// The tunnel's child SA lifetime, seconds (likewise).
        #[arg(long, default_value_t = 3600)]
        peer_child_lifetime: u64,
        /// Planned events must stop traffic for less than this, ms.
        #[arg(long, default_value_t = 50)]
        planned_gap_ms: u64,
        /// Unplanned events must stop traffic for less than this, ms.
        #[arg(long, default_value_t = 1000)]
        unplanned_gap_ms: u64,
    },
    /// Send sequence-numbered probes (run inside a namespace).
    ProbeSend {
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long)]
        count: u64,
    },
    /// Receive probes and write what arrived (run inside a namespace).
    ProbeRecv {
        #[arg(long)]
        bind: SocketAddr,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        secs: u64,
    },
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Cmd::Run {
            scenarios,
            quick,
            out,
            peer_ike_proposal,
            peer_esp_proposal,
            peer_dpd,
            peer_ike_lifetime,
            peer_child_lifetime,
            planned_gap_ms,
            unplanned_gap_ms,
        } => {
            let options = Options {
                peer_ike_proposal,
                peer_esp_proposal,
                peer_dpd: Duration::from_secs(peer_dpd),
                peer_ike_lifetime: Duration::from_secs(peer_ike_lifetime),
                peer_child_lifetime: Duration::from_secs(peer_child_lifetime),
                thresholds: Thresholds {
                    planned_gap: Duration::from_millis(planned_gap_ms),
                    unplanned_gap: Duration::from_millis(unplanned_gap_ms),
                    ..Thresholds::default()
                },
            };
            chaos::run(&scenarios, quick, &options, &out).and_then(|passed| {
                if passed {
                    Ok(())
                } else {
                    Err(anyhow::anyhow!("a scenario missed its threshold (above)"))
                }
            })
        }
        Cmd::ProbeSend { to, rate, count } => tandem_tests::probe::send(to, rate, count),
        Cmd::ProbeRecv { bind, out, secs } => {
            tandem_tests::probe::receive(bind, &out, Duration::from_secs(secs))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("chaos: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
