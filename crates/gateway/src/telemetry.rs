//! Prometheus metrics (`[node] metrics_listen`): what a node carries and
//! how failover went. Recorded through the `metrics` facade, so a process
//! without an exporter (the demo, the simulator) pays next to nothing.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use metrics::{counter, gauge, histogram};
use tandem_esp::SaStats;

/// Serves `/metrics` on `addr` from now on (inside a Tokio runtime).
pub fn serve(addr: SocketAddr) -> anyhow::Result<()> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .with_context(|| format!("metrics listener on {addr}"))?;
    metrics::describe_counter!(
        "tandem_esp_packets_total",
        "ESP packets by tunnel and direction"
    );
    metrics::describe_counter!(
        "tandem_esp_bytes_total",
        "ESP payload bytes by tunnel and direction"
    );
    metrics::describe_counter!(
        "tandem_esp_replay_drops_total",
        "inbound packets dropped as replays"
    );
    metrics::describe_counter!(
        "tandem_esp_integrity_failures_total",
        "inbound packets that failed authentication"
    );
    metrics::describe_counter!(
        "tandem_esp_selector_drops_total",
        "authentic inbound packets dropped for inner addresses outside their SA's traffic selectors (RFC 4301 5.2)"
    );
    metrics::describe_counter!(
        "tandem_rpc_refused_total",
        "Raft and admin calls refused, by service and rule (who may call what)"
    );
    metrics::describe_counter!(
        "tandem_dropped_total",
        "input dropped before it cost a commit or a reply, by reason (IKE junk, limits, a full commit queue, ESP outside its selectors)"
    );
    metrics::describe_counter!("tandem_takeovers_total", "tunnels this node took over");
    metrics::describe_counter!("tandem_handovers_total", "tunnels this node gave up");
    metrics::describe_gauge!(
        "tandem_lease_remaining_seconds",
        "time left on this node's lease"
    );
    metrics::describe_histogram!(
        "tandem_commit_seconds",
        "time to commit one step of IKE state through Raft"
    );
    metrics::describe_counter!(
        "tandem_ike_closed_total",
        "IKE SAs ended or failed to set up, by reason"
    );
    metrics::describe_histogram!(
        "tandem_takeover_silence_seconds",
        "how long a tunnel's previous owner had renewed no lease seen here when this node took the tunnel over"
    );
    Ok(())
}

/// Turns the dataplane's per-SA counters, which restart with every rekey,
/// into per-tunnel counters that only grow.
#[derive(Debug, Default)]
pub struct SaCounters {
    last: BTreeMap<(u32, bool), SaStats>,
}

impl SaCounters {
    /// Records what changed since the last call; `sas` is every SA now
    /// installed: (tunnel, SPI, inbound, its counters).
    pub fn update(&mut self, sas: impl IntoIterator<Item = (String, u32, bool, SaStats)>) {
        let mut seen = BTreeMap::new();
        for (tunnel, spi, inbound, now) in sas {
            let before = self.last.get(&(spi, inbound)).copied().unwrap_or_default();
            let direction = if inbound { "in" } else { "out" };
            let delta = |a: u64, b: u64| a.saturating_sub(b);
            counter!("tandem_esp_packets_total", "tunnel" => tunnel.clone(), "direction" => direction)
                .increment(delta(now.packets, before.packets));
            counter!("tandem_esp_bytes_total", "tunnel" => tunnel.clone(), "direction" => direction)
                .increment(delta(now.bytes, before.bytes));
            if inbound {
                counter!("tandem_esp_replay_drops_total", "tunnel" => tunnel.clone())
                    .increment(delta(now.replay_drops, before.replay_drops));
                counter!("tandem_esp_integrity_failures_total", "tunnel" => tunnel.clone())
                    .increment(delta(now.integrity_failures, before.integrity_failures));
                counter!("tandem_esp_selector_drops_total", "tunnel" => tunnel.clone())
                    .increment(delta(now.selector_drops, before.selector_drops));
            }
            seen.insert((spi, inbound), now);
        }
        // SAs that are gone are forgotten, or the map grows with every rekey.
        self.last = seen;
    }
}

/// Input dropped before it could cost anything (unauthenticated IKE, a full
/// commit queue, ESP outside its selectors): counted by reason as
/// `tandem_dropped_total`, and summed up in one log line at most every
/// [`DropSummary::LOG_EVERY`], never one line per datagram (a flood would
/// turn the log into its amplifier).
#[derive(Debug, Default)]
pub struct DropSummary {
    last: BTreeMap<&'static str, u64>,
    pending: BTreeMap<&'static str, u64>,
    logged_at: Option<std::time::Instant>,
}

impl DropSummary {
    pub const LOG_EVERY: Duration = Duration::from_secs(10);

    /// `totals` are counters since start, by reason.
    pub fn update(
        &mut self,
        now: std::time::Instant,
        totals: impl IntoIterator<Item = (&'static str, u64)>,
    ) {
        for (reason, total) in totals {
            let before = self.last.insert(reason, total).unwrap_or(0);
            let delta = total.saturating_sub(before);
            if delta > 0 {
                counter!("tandem_dropped_total", "reason" => reason).increment(delta);
                *self.pending.entry(reason).or_default() += delta;
            }
        }
        let due = self
            .logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= Self::LOG_EVERY);
        if due && !self.pending.is_empty() {
            let counts: Vec<String> = std::mem::take(&mut self.pending)
                .into_iter()
                .map(|(reason, n)| format!("{reason}={n}"))
                .collect();
            tracing::warn!(
                since = ?self.logged_at.map(|t| now.saturating_duration_since(t)),
                "input dropped: {}",
                counts.join(" ")
            );
            self.logged_at = Some(now);
        }
    }
}

/// The IKE endpoint's drop counters by reason, for [`DropSummary`].
pub fn ike_drops(d: &tandem_ike::endpoint::DropCounters) -> [(&'static str, u64); 12] {
    [
        ("ike_malformed", d.malformed),
        ("ike_unsupported_version", d.unsupported_version),
        ("ike_unknown_spi", d.unknown_spi),
        ("ike_unexpected", d.unexpected),
        ("ike_undecryptable", d.undecryptable),
        ("ike_half_open_limit", d.half_open_limit),
        ("ike_half_open_source_limit", d.half_open_source_limit),
        ("ike_cookie_required", d.cookie_required),
        ("ike_bad_cookie", d.bad_cookie),
        ("ike_no_connection", d.no_connection),
        ("ike_no_proposal", d.no_proposal),
        ("ike_auth_failed", d.auth_failed),
    ]
}

/// What the node carries right now.
pub fn carrying(tunnels_owned: usize, ike_sas: usize, child_sas: usize) {
    gauge!("tandem_tunnels_owned").set(tunnels_owned as f64);
    gauge!("tandem_ike_sas").set(ike_sas as f64);
    gauge!("tandem_child_sas").set(child_sas as f64);
}

/// Time left on this node's lease (0 when fenced).
pub fn lease_remaining(left: Duration) {
    gauge!("tandem_lease_remaining_seconds").set(left.as_secs_f64());
}

/// Raft's view from this node.
pub fn raft(term: u64, leader: Option<u64>, last_applied: u64) {
    gauge!("tandem_raft_term").set(term as f64);
    gauge!("tandem_raft_leader").set(leader.map_or(0.0, |l| l as f64));
    gauge!("tandem_raft_applied_index").set(last_applied as f64);
}

/// One step of IKE state committed (or not) after `took`.
pub fn committed(took: Duration, ok: bool) {
    histogram!("tandem_commit_seconds").record(took.as_secs_f64());
    if !ok {
        counter!("tandem_commit_failures_total").increment(1);
    }
}

/// This node took a tunnel over; `planned` if from a handover.
pub fn took_over(tunnel: &str, planned: bool) {
    counter!("tandem_takeovers_total", "tunnel" => tunnel.to_owned(), "planned" => planned.to_string())
        .increment(1);
}

/// This node gave a tunnel up.
pub fn handed_over(tunnel: &str) {
    counter!("tandem_handovers_total", "tunnel" => tunnel.to_owned()).increment(1);
}

/// An IKE SA ended, or failed to set up: why.
pub fn ike_closed(tunnel: &str, reason: tandem_ike::endpoint::CloseReason) {
    use tandem_ike::endpoint::{CloseReason, NegotiationFailure};
    let reason = match reason {
        CloseReason::DeletedByPeer => "deleted_by_peer",
        CloseReason::DeletedLocally => "deleted_locally",
        CloseReason::DpdTimeout => "dpd_timeout",
        CloseReason::RetransmitsExhausted => "retransmits_exhausted",
        CloseReason::AuthenticationFailed => "authentication_failed",
        CloseReason::NegotiationFailed(NegotiationFailure::NoProposalChosen) => {
            "no_proposal_chosen"
        }
        CloseReason::NegotiationFailed(NegotiationFailure::InvalidKePayload) => "invalid_ke",
        CloseReason::NegotiationFailed(NegotiationFailure::PeerError(_)) => "peer_error",
        CloseReason::NegotiationFailed(NegotiationFailure::InvalidResponse) => "invalid_response",
        CloseReason::Expired => "expired",
        _ => "other",
    };
    counter!("tandem_ike_closed_total", "tunnel" => tunnel.to_owned(), "reason" => reason)
        .increment(1);
}

/// This node took `tunnel` over from an owner that had been silent this
/// long: about the traffic gap of an unplanned takeover (the new owner
/// sends within milliseconds of this); a planned handover shows the
/// renewal period or less.
pub fn takeover_silence(tunnel: &str, silent: std::time::Duration) {
    histogram!("tandem_takeover_silence_seconds", "tunnel" => tunnel.to_owned())
        .record(silent.as_secs_f64());
}

/// An IKE event: established, rekeyed, closed.
pub fn ike_event(kind: &'static str, tunnel: &str) {
    counter!("tandem_ike_events_total", "event" => kind, "tunnel" => tunnel.to_owned())
        .increment(1);
}
