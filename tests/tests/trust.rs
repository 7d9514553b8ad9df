//! Who may call what (DESIGN.md invariant 8), against a real 3-gateway
//! cluster on the loopback of a test namespace: every certificate below is
//! signed by the cluster's own CA, so only the roles, the membership and
//! the revocations stand between it and the cluster.
//!
//! - an operator's certificate calling each Raft RPC,
//! - a member's certificate calling the admin API,
//! - a viewer calling a handover,
//! - a removed member's certificate, and revoked ones (an operator's, and a
//!   second certificate of a running member, as a rotation leaves it),
//!
//! each refused with PERMISSION_DENIED, with the replicated state (its
//! digest, the membership) and the Raft term unchanged; and the same calls
//! with the right certificates succeed, so the refusals are not a broken
//! tool. Rotation: every member gets a new certificate, restarts with it one
//! at a time, and the old ones are revoked, while the cluster keeps
//! committing.
//!
//! `cargo test -p tandem-tests --test trust -- --nocapture` after
//! `cargo build --workspace --bins` (as root).

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use tandem_tests::cluster::{Cluster, LoopbackHost};
use tandem_tests::{Tandemd, serial, wait_for};

/// What must not move while refused calls are made: the state (all but
/// leases, which renew all the time), the membership, and the term.
fn fingerprint(c: &Cluster, id: u64) -> anyhow::Result<serde_json::Value> {
    let v = c.view(id)?;
    Ok(serde_json::json!({
        "digest": v["digest"], "members": v["members"], "term": v["term"],
        "probes": v["probes"], "revoked": v["revoked"],
    }))
}

fn refused(what: &str, answer: &str, rule: &str) -> anyhow::Result<()> {
    ensure!(
        answer.contains("PermissionDenied")
            || answer.contains("PERMISSION_DENIED")
            || answer.contains("permission denied"),
        "{what}: not refused: {answer:?}"
    );
    ensure!(
        answer.contains(rule),
        "{what}: refused, but not for {rule:?}: {answer:?}"
    );
    Ok(())
}

/// tandemctl's error, which must be a refusal.
fn ctl_refused(result: anyhow::Result<String>) -> String {
    match result {
        Ok(out) => format!("accepted: {out}"),
        Err(e) => format!("{e:#}"),
    }
}

fn serial_of(issued: &str) -> anyhow::Result<String> {
    let serial = issued
        .rsplit_once("serial ")
        .map(|(_, s)| s.trim().trim_end_matches(')').to_owned())
        .context("no serial printed")?;
    Ok(serial)
}

/// A second PKI directory with the same CA: where a second certificate of
/// an existing name is issued (a rotation's new one, or a thief's copy).
fn sibling_pki(pki: &Path, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    for f in ["ca.pem", "ca.key"] {
        std::fs::copy(pki.join(f), dir.join(f))?;
    }
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(dir.join("ca.key"), std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

#[test]
fn only_members_speak_raft_operators_act_by_role_and_revoked_certificates_are_refused()
-> anyhow::Result<()> {
    let _serial = serial();
    let host = LoopbackHost::new()?;
    let mut c = Cluster::new(host.dir.path(), 3, 0, 10_000)?;
    for id in 1..=3 {
        c.start(&host.ns, id, None)?;
    }
    let leader = c.leader()?;
    let follower = leader % 3 + 1;
    let ns = &host.ns;
    let pki = c.pki.clone();
    let pki_s = pki.to_string_lossy().into_owned();
    Tandemd::tool(&[
        "cert", "issue", "--dir", &pki_s, "--role", "viewer", "auditor",
    ])?;
    let alice = Tandemd::tool(&[
        "cert", "issue", "--dir", &pki_s, "--role", "operator", "alice",
    ])?;
    let alice_serial = serial_of(&alice)?;
    // A second certificate named gw2, from the same CA.
    let pki2 = host.dir.path().join("pki2");
    sibling_pki(&pki, &pki2)?;
    let gw2_copy = Tandemd::tool(&["cert", "issue", "--dir", &pki2.to_string_lossy(), "gw2"])?;
    let gw2_copy_serial = serial_of(&gw2_copy)?;

    // The tool works: a member's certificate is admitted, in its own name.
    let ok = c.raft_call(
        ns,
        leader,
        &pki,
        &format!("gw{follower}"),
        "probe",
        follower,
    )?;
    ensure!(ok == "OK", "member gw{follower}'s own probe: {ok}");
    c.wait_probes(leader, follower, 424_242, Duration::from_secs(5))?;
    let status = c.tandemctl_as(ns, follower, &pki, "auditor", &["status", "--json"])?;
    ensure!(
        status.contains("\"leader\""),
        "a viewer reads the status: {status}"
    );

    let before = fingerprint(&c, leader)?;
    // An operator's certificate calling each Raft RPC, on the leader and a
    // follower: none reaches Raft.
    for at in [leader, follower] {
        for call in [
            "vote",
            "append",
            "snapshot",
            "probe",
            "add-learner",
            "elect",
        ] {
            let answer = c.raft_call(ns, at, &pki, "operator", call, at)?;
            refused(&format!("operator {call} at {at}"), &answer, "not-a-member")?;
        }
    }
    // A member speaks only for itself.
    let answer = c.raft_call(ns, leader, &pki, &format!("gw{follower}"), "probe", leader)?;
    refused("a probe in another member's name", &answer, "not-its-own")?;
    // A member's (and a witness's) certificate calling the admin API.
    for args in [
        &["status"][..],
        &["drain", "1"],
        &["members", "remove", "2"],
    ] {
        let answer = ctl_refused(c.tandemctl_as(ns, leader, &pki, "gw2", args));
        refused(
            &format!("member gw2: tandemctl {args:?}"),
            &answer,
            "not-an-operator",
        )?;
    }
    // A viewer calling a handover, a drain, a revocation.
    for args in [
        &["handover", "--tunnel", "t", "--to", "2"][..],
        &["drain", "1"],
        &["revoke", "operator"],
        &["members", "remove", "3"],
    ] {
        let answer = ctl_refused(c.tandemctl_as(ns, follower, &pki, "auditor", args));
        refused(&format!("viewer: tandemctl {args:?}"), &answer, "read-only")?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = fingerprint(&c, leader)?;
    ensure!(
        before == after,
        "refused calls changed the cluster:\n{before}\n{after}"
    );

    // Revocation: alice works, is revoked by serial, and is refused at once
    // by every member; the copy of gw2's certificate likewise, while gw2
    // itself (its own certificate) goes on.
    c.tandemctl_as(ns, leader, &pki, "alice", &["status"])?;
    ensure!(
        c.raft_call(ns, leader, &pki2, "gw2", "probe", 2)? == "OK",
        "the copy of gw2's certificate works before its revocation"
    );
    for serial in [&alice_serial, &gw2_copy_serial] {
        let out = c.tandemctl(ns, follower, &["revoke", &format!("serial:{serial}")])?;
        ensure!(out.contains("revoked serial"), "tandemctl revoke: {out}");
    }
    let before = fingerprint(&c, leader)?;
    for at in 1..=3 {
        let answer = ctl_refused(c.tandemctl_as(ns, at, &pki, "alice", &["status"]));
        refused(&format!("revoked alice at {at}"), &answer, "revoked")?;
        let answer = c.raft_call(ns, at, &pki2, "gw2", "probe", 2)?;
        refused(&format!("revoked gw2 copy at {at}"), &answer, "revoked")?;
    }
    c.probe(2, 10, 1, 0)
        .context("gw2 with its own certificate")?;
    let mut after = fingerprint(&c, leader)?;
    after["probes"] = before["probes"].clone();
    after["digest"] = before["digest"].clone();
    ensure!(
        before == after,
        "refused calls changed the cluster:\n{before}\n{after}"
    );

    // A removed member's certificate is refused as soon as the removal applies.
    let out = c.tandemctl(ns, leader, &["members", "remove", "3"])?;
    ensure!(out.contains("removed"), "{out}");
    wait_for(
        "member 3 out of the membership",
        Duration::from_secs(10),
        || {
            let v = c.view(leader)?;
            Ok(v["members"]
                .as_array()
                .is_some_and(|m| m.iter().all(|m| m["id"] != 3))
                .then_some(()))
        },
    )?;
    let before = fingerprint(&c, leader)?;
    for call in ["vote", "append", "probe"] {
        let answer = c.raft_call(ns, leader, &pki, "gw3", call, 3)?;
        refused(&format!("removed gw3 {call}"), &answer, "not-in-membership")?;
    }
    let after = fingerprint(&c, leader)?;
    ensure!(
        before == after,
        "a removed member changed the cluster:\n{before}\n{after}"
    );
    let refusals = c.node(leader).log();
    ensure!(
        refusals.matches("call refused").count() < 40,
        "refusals are logged at most once per identity per minute"
    );
    Ok(())
}

#[test]
fn certificates_rotate_one_member_at_a_time_and_the_old_ones_are_revoked() -> anyhow::Result<()> {
    let _serial = serial();
    let host = LoopbackHost::new()?;
    let mut c = Cluster::new(host.dir.path(), 3, 0, 10_000)?;
    for id in 1..=3 {
        c.start(&host.ns, id, None)?;
    }
    c.leader()?;
    let ns = &host.ns;
    let pki = c.pki.clone();
    let old = host.dir.path().join("old-pki");
    sibling_pki(&pki, &old)?;
    let mut old_serials = Vec::new();
    for id in 1..=3u64 {
        // Keep the old pair (for the check below), issue the new one in
        // place, restart the member with it, and see the cluster commit.
        let name = format!("gw{id}");
        for ext in ["pem", "key"] {
            std::fs::rename(
                pki.join(format!("{name}.{ext}")),
                old.join(format!("{name}.{ext}")),
            )?;
        }
        let before = c.raft_call(ns, id % 3 + 1, &old, &name, "probe", id)?;
        ensure!(before == "OK", "old certificate admitted before: {before}");
        old_serials.push(serial_of(&Tandemd::tool(&[
            "cert",
            "show",
            &old.join(format!("{name}.pem")).to_string_lossy(),
        ])?)?);
        Tandemd::tool(&["cert", "issue", "--dir", &pki.to_string_lossy(), &name])?;
        c.stop(ns, id)?;
        c.start(ns, id, None)?;
        let writer = id % 3 + 1;
        let report = c
            .probe(writer, 10, 1, 0)
            .with_context(|| format!("commits after {name} rotated"))?;
        c.wait_report(id, writer, &report, Duration::from_secs(20))?;
    }
    for serial in &old_serials {
        c.tandemctl(ns, 1, &["revoke", &format!("serial:{serial}")])?;
    }
    for id in 1..=3u64 {
        let answer = c.raft_call(ns, id % 3 + 1, &old, &format!("gw{id}"), "probe", id)?;
        refused(&format!("old gw{id}"), &answer, "revoked")?;
    }
    let report = c.probe(1, 20, 2, 0)?;
    c.wait_report(3, 1, &report, Duration::from_secs(20))?;
    c.check_same_state()
}
