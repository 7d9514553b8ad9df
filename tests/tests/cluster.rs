//! Real tandemd processes forming clusters on the loopback of a test namespace:
//! durability across `kill -9`, catch-up from disk and by snapshot, online
//! membership changes, a node with a foreign certificate shut out, and a
//! 2 + witness cluster that keeps committing when a gateway dies.
//!
//! Run one with `cargo test -p tandem-tests --test cluster -- --nocapture NAME`
//! after `cargo build -p tandem-gateway` (as root).

use std::time::Duration;

use anyhow::{Context as _, ensure};
use tandem_tests::cluster::{Cluster, LoopbackHost};
use tandem_tests::serial;

const CATCH_UP: Duration = Duration::from_secs(20);

#[test]
fn quorum_writes_survive_kill9_of_any_member_and_a_restart_catches_up() -> anyhow::Result<()> {
    let _serial = serial();
    let host = LoopbackHost::new()?;
    let mut c = Cluster::new(host.dir.path(), 3, 0, 10_000)?;
    for id in 1..=3 {
        c.start(&host.ns, id, None)?;
    }
    // Kill each member in turn (the leader first): what was committed before
    // survives, the other two keep committing, the restarted one catches up.
    let mut committed = 0;
    let first_leader = c.leader()?;
    for victim in [
        first_leader,
        first_leader % 3 + 1,
        (first_leader + 1) % 3 + 1,
    ] {
        let writer = (victim % 3) + 1;
        c.probe(writer, 50, 4, 0)?;
        committed += 50;
        c.kill9(victim)?;
        let leader = c.leader()?;
        let report = c.probe(writer, 50, 4, 0)?;
        committed += 50;
        println!("member {victim} killed; leader now {leader}; 50 more commits: {report}");
        c.start(&host.ns, victim, None)?;
        c.wait_report(victim, writer, &report, CATCH_UP)?;
    }
    let total: u64 = (1..=3)
        .map(|id| {
            c.view(1)
                .map(|v| v["probes"][id.to_string()].as_u64().unwrap_or(0))
        })
        .sum::<anyhow::Result<u64>>()?;
    ensure!(
        total == committed,
        "{total} probes applied, {committed} committed"
    );
    c.check_same_state()
}

#[test]
fn a_member_down_past_a_snapshot_catches_up_by_snapshot() -> anyhow::Result<()> {
    let _serial = serial();
    let host = LoopbackHost::new()?;
    let mut c = Cluster::new(host.dir.path(), 3, 0, 100)?;
    for id in 1..=3 {
        c.start(&host.ns, id, None)?;
    }
    let leader = c.leader()?;
    let down = leader % 3 + 1;
    c.probe(leader, 20, 1, 0)?;
    c.wait_probes(down, leader, 20, CATCH_UP)?;
    c.kill9(down)?;
    let report = c.probe(leader, 400, 8, 512)?;
    let last = report["last_seq"].as_u64().context("last_seq")?;
    // The leader compacted its log past what the dead member has.
    tandem_tests::wait_for("the leader to compact its log", CATCH_UP, || {
        let v = c.view(leader)?;
        Ok((v["purged_index"].as_u64() > Some(100)).then_some(()))
    })?;
    c.start(&host.ns, down, None)?;
    c.wait_probes(down, leader, last, CATCH_UP)?;
    let v = c.view(down)?;
    ensure!(
        v["snapshot_index"].as_u64() > Some(100),
        "member {down} caught up without a snapshot: {v}"
    );
    ensure!(
        c.node(down).log().contains("snapshot"),
        "no snapshot install in member {down}'s log"
    );
    c.check_same_state()
}

#[test]
fn members_are_added_and_removed_online_and_a_foreign_certificate_is_refused() -> anyhow::Result<()>
{
    let _serial = serial();
    let host = LoopbackHost::new()?;
    let mut c = Cluster::new(host.dir.path(), 3, 0, 10_000)?;
    for id in 1..=3 {
        c.start(&host.ns, id, None)?;
    }
    let leader = c.leader()?;
    let other = leader % 3 + 1;
    // Through the admin API (tandemctl), asking a member that may not lead.
    let ctl = |at: u64, args: &[&str]| c.tandemctl(&host.ns, at, args);
    let removed = ctl(other, &["members", "remove", "3"])
        .or_else(|_| ctl(leader, &["members", "remove", "3"]))?;
    ensure!(
        removed == "member 3 removed\n",
        "tandemctl said {removed:?}"
    );
    let voters = |c: &Cluster, at: u64| -> anyhow::Result<Vec<u64>> {
        let v = c.view(at)?;
        Ok(v["members"]
            .as_array()
            .context("members")?
            .iter()
            .filter(|m| m["voter"] == true)
            .filter_map(|m| m["id"].as_u64())
            .collect())
    };
    let stayer = if leader == 3 { other } else { leader };
    tandem_tests::wait_for("member 3 removed", CATCH_UP, || {
        Ok((voters(&c, stayer)? == [1, 2]).then_some(()))
    })?;
    c.probe(stayer, 20, 2, 0)?;
    let ctl = |at: u64, args: &[&str]| c.tandemctl(&host.ns, at, args);
    let added: serde_json::Value = serde_json::from_str(&ctl(
        stayer,
        &[
            "members",
            "add",
            "--id",
            "3",
            "--name",
            "gw3",
            "--addr",
            "127.0.0.1:7403",
            "--json",
        ],
    )?)?;
    ensure!(
        added["added"] == 3 && added["name"] == "gw3",
        "tandemctl members add --json: {added}"
    );
    ensure!(voters(&c, stayer)? == [1, 2, 3], "member 3 back as a voter");
    c.wait_probes(3, stayer, 20, CATCH_UP)?;
    // What an operator gets wrong, refused with a message naming it.
    for (args, says) in [
        (&["members", "remove", "9"][..], "no member 9"),
        (
            &[
                "members",
                "add",
                "--id",
                "2",
                "--name",
                "gw2",
                "--addr",
                "127.0.0.1:7402",
            ][..],
            "member 2 exists",
        ),
        (
            &[
                "members", "add", "--id", "5", "--name", "gw5", "--addr", "nowhere",
            ][..],
            "\"nowhere\" is not HOST:PORT",
        ),
    ] {
        c.tandemctl_refuses(&host.ns, stayer, args, says)?;
    }
    ensure!(voters(&c, stayer)? == [1, 2, 3], "membership unchanged");

    // Member 4 has a certificate named gw4, from another CA.
    let rogue_pki = host.dir.path().join("rogue-pki");
    let rogue = rogue_pki.to_string_lossy().into_owned();
    tandem_tests::Tandemd::tool(&["cert", "init", "--dir", &rogue])?;
    tandem_tests::Tandemd::tool(&["cert", "issue", "--dir", &rogue, "gw4"])?;
    let mut c4 = Cluster::new(&host.dir.path().join("c4"), 4, 0, 10_000)?;
    c4.pki = rogue_pki;
    c4.start(&host.ns, 4, None)?;
    let refused = c
        .tandemctl(
            &host.ns,
            stayer,
            &[
                "members",
                "add",
                "--id",
                "4",
                "--name",
                "gw4",
                "--addr",
                "127.0.0.1:7404",
            ],
        )
        .err()
        .map(|e| format!("{e:#}"))
        .unwrap_or_default();
    ensure!(
        refused.contains("did not catch up"),
        "a member from another CA: {refused:?}"
    );
    let v = c4.view(4)?;
    ensure!(
        v["applied_index"].is_null(),
        "the foreign member received entries: {v}"
    );
    ensure!(voters(&c, stayer)? == [1, 2, 3], "membership unchanged");
    Ok(())
}

#[test]
fn two_gateways_and_a_witness_keep_committing_when_a_gateway_dies() -> anyhow::Result<()> {
    let _serial = serial();
    let host = LoopbackHost::new()?;
    let mut c = Cluster::new(host.dir.path(), 2, 1, 10_000)?;
    for id in 1..=3 {
        c.start(&host.ns, id, None)?;
    }
    c.leader()?;
    c.probe(1, 20, 2, 0)?;
    // Kill each gateway in turn; the other and the witness are a quorum.
    for (victim, writer) in [(1, 2), (2, 1)] {
        c.kill9(victim)?;
        let report = c.probe(writer, 50, 4, 0)?;
        println!("gateway {victim} killed; commits via gateway {writer}: {report}");
        c.start(&host.ns, victim, None)?;
        c.wait_report(victim, writer, &report, CATCH_UP)?;
    }
    // The witness holds the state too (it votes), but has no dataplane.
    let w = c.view(3)?;
    ensure!(w["probes"]["1"].as_u64() >= Some(20), "witness state: {w}");
    c.check_same_state()
}
