//! The chaos suite end to end, as CI runs it: one real scenario (3 gateways,
//! strongSwan, probes both ways, TCP) whose threshold is deliberately
//! tightened, so the run must fail, name the scenario and the figure, and
//! still write its report and picture.

#![allow(clippy::unwrap_used)]

use anyhow::{Context as _, ensure};
use tandem_tests::{Tandemd, TempDir, serial};

#[test]
fn a_missed_threshold_fails_the_run_naming_the_scenario_and_the_figure() -> anyhow::Result<()> {
    let _serial = serial();
    let out = TempDir::new()?;
    let chaos = Tandemd::sibling("chaos")?;
    let run = std::process::Command::new(&chaos)
        .args(["run", "kill-owner", "--unplanned-gap-ms", "20", "--out"])
        .arg(out.path())
        .output()
        .context("cannot run chaos")?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    println!("{stdout}{stderr}");
    ensure!(!run.status.success(), "a missed threshold passed the run");
    ensure!(
        stderr.contains("FAILED kill-owner: gap ")
            && stderr.contains("unplanned limit under 20 ms"),
        "the failure does not name the scenario and the figure:\n{stderr}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("report.json"))?)?;
    let s = &report["scenarios"][0];
    for key in [
        "name",
        "gap_ms",
        "probes_sent",
        "probes_lost",
        "probes_duplicated",
        "peer_ike_sa_kept",
        "peer_replay_errors",
        "peer_integrity_errors",
        "dual_sender_ms",
        "redundancy_restored_ms",
        "passed",
    ] {
        ensure!(!s[key].is_null(), "report.json lacks {key}: {s}");
    }
    ensure!(
        s["name"] == "kill-owner" && s["passed"] == false && s["probes_sent"] == 20_000,
        "{s}"
    );
    ensure!(
        s["peer_ike_sa_kept"] == true && s["dual_sender_ms"] == 0,
        "the failover itself went wrong: {s}"
    );
    let svg = std::fs::read_to_string(out.path().join("timeline.svg"))?;
    ensure!(
        svg.starts_with("<svg") && svg.contains("kill-owner"),
        "no picture"
    );
    Ok(())
}
