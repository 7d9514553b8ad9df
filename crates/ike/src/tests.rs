//! Two endpoints talking to each other through a fake network and a fake clock
//! that jumps to the earliest deadline (like quinn's `Pair`).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tandem_crypto::{Secret, SeededRandom};

use crate::config::{
    ConnectionConfig, Limits, parse_esp_proposal, parse_identity, parse_ike_proposal,
};
use crate::endpoint::{ChildSa, CloseReason, Endpoint, Event, NegotiationFailure, Transmit};
use crate::message::TrafficSelector;

const A: &str = "192.0.2.1";
const B: &str = "198.51.100.1";

fn ts(start: &str, end: &str) -> TrafficSelector {
    TrafficSelector {
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: start.parse().unwrap(),
        end: end.parse().unwrap(),
    }
}

fn conn(local: &str, remote: &str, ike: &str, esp: &str) -> ConnectionConfig {
    let (lnet, rnet) = if local == A {
        (
            ts("10.1.0.0", "10.1.255.255"),
            ts("10.2.0.0", "10.2.255.255"),
        )
    } else {
        (
            ts("10.2.0.0", "10.2.255.255"),
            ts("10.1.0.0", "10.1.255.255"),
        )
    };
    ConnectionConfig {
        name: "tunnel".into(),
        local_addr: local.parse().unwrap(),
        remote_addr: Some(remote.parse().unwrap()),
        local_id: parse_identity(local).unwrap(),
        remote_id: parse_identity(remote).unwrap(),
        psk: Secret::from_slice(b"shared secret"),
        ike_proposals: ike
            .split(',')
            .map(|p| parse_ike_proposal(p).unwrap())
            .collect(),
        esp_proposals: esp
            .split(',')
            .map(|p| parse_esp_proposal(p).unwrap())
            .collect(),
        local_ts: vec![lnet],
        remote_ts: vec![rnet],
        ike_lifetime: Duration::from_secs(28_800),
        child_lifetime: Duration::from_secs(3_600),
        dpd_delay: Some(Duration::from_secs(30)),
    }
}

struct Pair {
    now: Instant,
    a: Endpoint,
    b: Endpoint,
    a_events: Vec<Event>,
    b_events: Vec<Event>,
    /// Datagrams to drop, counted down per sender.
    drop_from_a: usize,
    drop_from_b: usize,
    duplicate: bool,
    /// A silent peer receives nothing.
    b_silent: bool,
    transcript: Vec<Transmit>,
}

impl Pair {
    fn new(a: ConnectionConfig, b: ConnectionConfig, seed: u64) -> Self {
        Self::with_limits(a, b, seed, Limits::default())
    }

    fn with_limits(a: ConnectionConfig, b: ConnectionConfig, seed: u64, b_limits: Limits) -> Self {
        Self {
            now: Instant::now(),
            a: Endpoint::new(
                vec![a],
                Limits::default(),
                Box::new(SeededRandom::new(seed)),
            ),
            b: Endpoint::new(vec![b], b_limits, Box::new(SeededRandom::new(seed + 1))),
            a_events: Vec::new(),
            b_events: Vec::new(),
            drop_from_a: 0,
            drop_from_b: 0,
            duplicate: false,
            b_silent: false,
            transcript: Vec::new(),
        }
    }

    fn is_a(addr: SocketAddr) -> bool {
        addr.ip() == A.parse::<IpAddr>().unwrap()
    }

    /// Delivers everything queued; true if anything moved.
    fn step(&mut self) -> bool {
        let mut moved = false;
        while let Some(t) = self.a.poll_transmit() {
            moved = true;
            self.transcript.push(t.clone());
            if self.drop_from_a > 0 {
                self.drop_from_a -= 1;
                continue;
            }
            if self.b_silent {
                continue;
            }
            for _ in 0..if self.duplicate { 2 } else { 1 } {
                self.b.handle(self.now, t.remote, t.local, &t.datagram);
            }
        }
        while let Some(t) = self.b.poll_transmit() {
            moved = true;
            self.transcript.push(t.clone());
            if self.drop_from_b > 0 {
                self.drop_from_b -= 1;
                continue;
            }
            assert!(Self::is_a(t.remote));
            for _ in 0..if self.duplicate { 2 } else { 1 } {
                self.a.handle(self.now, t.remote, t.local, &t.datagram);
            }
        }
        while let Some(e) = self.a.poll_event() {
            self.a_events.push(e);
        }
        while let Some(e) = self.b.poll_event() {
            self.b_events.push(e);
        }
        moved
    }

    /// Runs the network and the clock until `limit` from now.
    fn run_for(&mut self, limit: Duration) {
        let end = self.now + limit;
        loop {
            while self.step() {}
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                }
                _ => break,
            }
        }
        self.now = end;
    }

    fn settle(&mut self) {
        while self.step() {}
    }

    fn connect(&mut self) {
        self.a.initiate(self.now, "tunnel").unwrap();
        self.settle();
    }
}

fn installed(events: &[Event]) -> Vec<&ChildSa> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaInstalled(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn deleted(events: &[Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::ChildSaDeleted { inbound_spi, .. } => Some(*inbound_spi),
            _ => None,
        })
        .collect()
}

fn closed(events: &[Event]) -> Vec<CloseReason> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::IkeSaClosed { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}

fn established(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::IkeSaEstablished { .. }))
        .count()
}

/// The two views of one child SA agree key for key.
fn assert_mirrored(a: &ChildSa, b: &ChildSa) {
    assert_eq!(a.inbound_spi, b.outbound_spi);
    assert_eq!(a.outbound_spi, b.inbound_spi);
    assert_eq!(a.inbound_encr_key, b.outbound_encr_key);
    assert_eq!(a.outbound_encr_key, b.inbound_encr_key);
    assert_eq!(a.inbound_integ_key, b.outbound_integ_key);
    assert_eq!(a.outbound_integ_key, b.inbound_integ_key);
    assert_ne!(a.inbound_encr_key, a.outbound_encr_key);
    assert_eq!((a.encr, a.integ, a.esn), (b.encr, b.integ, b.esn));
    assert_eq!(a.local_ts, b.remote_ts);
    assert_eq!(a.remote_ts, b.local_ts);
    assert_eq!((a.local.port(), a.remote.port()), (4500, 4500));
}

fn pair(ike: &str, esp: &str) -> Pair {
    Pair::new(conn(A, B, ike, esp), conn(B, A, ike, esp), 1)
}

#[test]
fn handshake_for_every_supported_combination() {
    for ike in [
        "aes128gcm16-prfsha256-curve25519",
        "aes256gcm16-prfsha384-ecp256",
        "aes256gcm16-prfsha512-ecp384",
        "aes128gcm16-prfsha256-modp2048",
        "aes128-sha1-curve25519",
        "aes128-sha256-ecp256",
        "aes256-sha384-ecp384",
        "aes256-sha512-modp2048",
    ] {
        for esp in [
            "aes128gcm16",
            "aes256gcm16-esn",
            "aes128-sha1",
            "aes256-sha256",
            "aes128-sha384",
            "aes256-sha512-esn",
        ] {
            let mut p = pair(ike, esp);
            p.connect();
            assert_eq!(established(&p.a_events), 1, "{ike} {esp}");
            assert_eq!(established(&p.b_events), 1, "{ike} {esp}");
            let (a, b) = (installed(&p.a_events), installed(&p.b_events));
            assert_eq!((a.len(), b.len()), (1, 1), "{ike} {esp}");
            assert_mirrored(a[0], b[0]);
        }
    }
}

#[test]
fn invalid_ke_payload_retries_with_the_responders_group() {
    let a = conn(
        A,
        B,
        "aes128gcm16-prfsha256-curve25519,aes128gcm16-prfsha256-ecp256",
        "aes128gcm16",
    );
    let b = conn(B, A, "aes128gcm16-prfsha256-ecp256", "aes128gcm16");
    let mut p = Pair::new(a, b, 2);
    p.connect();
    assert_eq!(established(&p.a_events), 1);
    assert_mirrored(installed(&p.a_events)[0], installed(&p.b_events)[0]);
    // The first request, the INVALID_KE_PAYLOAD, the retried request...
    assert!(p.transcript.len() >= 5);
}

#[test]
fn cookie_is_demanded_and_returned() {
    let limits = Limits {
        cookie_threshold: 0,
        max_half_open: 10,
        ..Limits::default()
    };
    let mut p = Pair::with_limits(
        conn(A, B, "aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
        conn(B, A, "aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
        3,
        limits,
    );
    p.connect();
    assert_eq!(established(&p.a_events), 1);
    assert_eq!(established(&p.b_events), 1);
    // Request, COOKIE, request with cookie, response, IKE_AUTH pair.
    assert_eq!(p.transcript.len(), 6);
    assert_eq!(
        (p.b.drops().cookie_required, p.b.drops().bad_cookie),
        (1, 0)
    );
}

/// The IKE_SA_INIT request of a handshake b demanded a cookie for, returned
/// `delay` after b issued the cookie: whether b took it, and the transcript.
fn return_cookie_after(delay: Duration) -> (bool, Vec<Vec<u8>>) {
    let ike = "aes128gcm16-prfsha256-curve25519";
    let limits = Limits {
        cookie_threshold: 0,
        cookie_secret_lifetime: Duration::from_secs(300),
        ..Limits::default()
    };
    let mut p = Pair::with_limits(
        conn(A, B, ike, "aes128gcm16"),
        conn(B, A, ike, "aes128gcm16"),
        11,
        limits,
    );
    p.a.initiate(p.now, "tunnel").unwrap();
    let first = p.a.poll_transmit().unwrap();
    p.b.handle(p.now, first.remote, first.local, &first.datagram);
    let cookie = p.b.poll_transmit().unwrap();
    p.a.handle(p.now, cookie.remote, cookie.local, &cookie.datagram);
    let with_cookie = p.a.poll_transmit().unwrap();
    p.transcript.extend([first, cookie, with_cookie.clone()]);
    p.now += delay;
    p.b.handle(
        p.now,
        with_cookie.remote,
        with_cookie.local,
        &with_cookie.datagram,
    );
    let taken = p.b.drops().bad_cookie == 0;
    // Either way the handshake completes: a stale cookie is answered with a
    // fresh one, which the initiator returns.
    p.settle();
    assert_eq!((established(&p.a_events), established(&p.b_events)), (1, 1));
    assert_eq!(p.b.drops().cookie_required, 1);
    let transcript = p.transcript.into_iter().map(|t| t.datagram).collect();
    (taken, transcript)
}

#[test]
fn a_cookie_outlives_one_secret_rotation_but_not_two() {
    let lifetime = Duration::from_secs(300);
    assert!(return_cookie_after(Duration::ZERO).0);
    assert!(
        return_cookie_after(lifetime).0,
        "issued just before a rotation"
    );
    assert!(return_cookie_after(2 * lifetime - Duration::from_secs(1)).0);
    let (taken, transcript) = return_cookie_after(2 * lifetime);
    assert!(!taken, "issued before two rotations");
    // Request, COOKIE, request, fresh COOKIE, request, response, IKE_AUTH pair.
    assert_eq!(transcript.len(), 8);
    assert_eq!(
        return_cookie_after(2 * lifetime).1,
        transcript,
        "same seed, same cookies"
    );
}

/// `n` IKE_SA_INIT requests from a, each for a new IKE SA.
fn init_requests(p: &mut Pair, n: usize) -> Vec<Transmit> {
    (0..n)
        .map(|_| {
            p.a.initiate(p.now, "tunnel").unwrap();
            p.a.poll_transmit().unwrap()
        })
        .collect()
}

/// Delivers `request` to b as if it came from `source`; how many datagrams b
/// answered with.
fn deliver_from(p: &mut Pair, source: SocketAddr, request: &Transmit) -> usize {
    p.b.handle(p.now, request.remote, source, &request.datagram);
    std::iter::from_fn(|| p.b.poll_transmit()).count()
}

#[test]
fn one_source_holds_at_most_its_share_of_half_open_sas() {
    let ike = "aes128gcm16-prfsha256-curve25519";
    let limits = Limits {
        max_half_open: 3,
        max_half_open_per_source: 2,
        ..Limits::default()
    };
    let mut responder = conn(B, A, ike, "aes128gcm16");
    responder.remote_addr = None;
    let mut p = Pair::with_limits(conn(A, B, ike, "aes128gcm16"), responder, 12, limits);
    let requests = init_requests(&mut p, 4);
    let a = requests[0].local;
    let answered: Vec<usize> = requests[..3]
        .iter()
        .map(|r| deliver_from(&mut p, a, r))
        .collect();
    assert_eq!(answered, [1, 1, 0], "the third from a is dropped");
    assert_eq!(p.b.drops().half_open_source_limit, 1);
    assert_eq!(deliver_from(&mut p, a, &requests[0]), 1, "retransmission");
    assert_eq!(p.b.drops().half_open_source_limit, 1);

    // Another source still gets in, up to the global limit.
    let other: SocketAddr = "203.0.113.9:500".parse().unwrap();
    assert_eq!(deliver_from(&mut p, other, &requests[3]), 1);
    let third: SocketAddr = "203.0.113.10:500".parse().unwrap();
    assert_eq!(deliver_from(&mut p, third, &requests[2]), 0);
    assert_eq!(p.b.drops().half_open_limit, 1);
    assert_eq!(p.b.ike_sas().count(), 3);

    // Half-open SAs time out, and their sources may start again.
    p.now += Duration::from_secs(60);
    p.b.handle_timeout(p.now);
    assert_eq!(p.b.ike_sas().count(), 0);
    assert_eq!(deliver_from(&mut p, a, &requests[2]), 1);
    assert_eq!(p.b.drops().half_open_source_limit, 1);
}

#[test]
fn a_completed_handshake_frees_its_sources_half_open_slot() {
    let limits = Limits {
        max_half_open_per_source: 1,
        ..Limits::default()
    };
    let mut p = Pair::with_limits(
        conn(A, B, "aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
        conn(B, A, "aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
        13,
        limits,
    );
    p.connect();
    p.connect();
    assert_eq!((established(&p.a_events), established(&p.b_events)), (2, 2));
    assert_eq!(p.b.drops().half_open_source_limit, 0);
}

#[test]
fn psk_mismatch_fails_authentication_on_both_sides() {
    let mut b = conn(B, A, "aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    b.psk = Secret::from_slice(b"another secret");
    let mut p = Pair::new(
        conn(A, B, "aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
        b,
        4,
    );
    p.connect();
    assert_eq!(closed(&p.a_events), [CloseReason::AuthenticationFailed]);
    assert_eq!(closed(&p.b_events), [CloseReason::AuthenticationFailed]);
    assert_eq!(p.b.drops().auth_failed, 1);
    assert!(installed(&p.a_events).is_empty() && installed(&p.b_events).is_empty());
}

#[test]
fn ike_proposal_mismatch_is_no_proposal_chosen() {
    let mut p = Pair::new(
        conn(A, B, "aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
        conn(B, A, "aes256-sha256-curve25519", "aes128gcm16"),
        5,
    );
    p.connect();
    assert_eq!(
        closed(&p.a_events),
        [CloseReason::NegotiationFailed(
            NegotiationFailure::NoProposalChosen
        )]
    );
    assert_eq!(established(&p.b_events), 0);
    assert_eq!(p.b.drops().no_proposal, 1);
}

#[test]
fn esp_proposal_mismatch_keeps_the_ike_sa() {
    let mut p = Pair::new(
        conn(A, B, "aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
        conn(B, A, "aes128gcm16-prfsha256-curve25519", "aes256-sha256"),
        6,
    );
    p.connect();
    assert_eq!((established(&p.a_events), established(&p.b_events)), (1, 1));
    assert!(installed(&p.a_events).is_empty() && installed(&p.b_events).is_empty());
}

#[test]
fn traffic_selectors_narrow_or_fail() {
    let ike = "aes128gcm16-prfsha256-curve25519";
    // The initiator asks for everything; the responder narrows to its config.
    let mut a = conn(A, B, ike, "aes128gcm16");
    a.remote_ts = vec![ts("0.0.0.0", "255.255.255.255")];
    let mut p = Pair::new(a, conn(B, A, ike, "aes128gcm16"), 7);
    p.connect();
    let child = installed(&p.a_events)[0];
    assert_eq!(child.remote_ts, [ts("10.2.0.0", "10.2.255.255")]);
    assert_mirrored(child, installed(&p.b_events)[0]);
    // Disjoint selectors: TS_UNACCEPTABLE, IKE SA kept.
    let mut a = conn(A, B, ike, "aes128gcm16");
    a.remote_ts = vec![ts("10.9.0.0", "10.9.255.255")];
    let mut p = Pair::new(a, conn(B, A, ike, "aes128gcm16"), 8);
    p.connect();
    assert_eq!((established(&p.a_events), established(&p.b_events)), (1, 1));
    assert!(installed(&p.a_events).is_empty());
}

fn rekey_child(by_a: bool, esp: &str) {
    let mut p = pair("aes128gcm16-prfsha256-curve25519", esp);
    p.connect();
    let old_a = installed(&p.a_events)[0].inbound_spi;
    let old_b = installed(&p.b_events)[0].inbound_spi;
    if by_a {
        p.a.rekey_child(p.now, "tunnel").unwrap();
    } else {
        p.b.rekey_child(p.now, "tunnel").unwrap();
    }
    p.settle();
    let (a, b) = (installed(&p.a_events), installed(&p.b_events));
    assert_eq!((a.len(), b.len()), (2, 2), "{esp}");
    assert_mirrored(a[1], b[1]);
    assert_eq!(a[1].replaces, Some(old_a));
    assert_eq!(b[1].replaces, Some(old_b));
    // Only the side that answered the rekey holds its outbound half back.
    assert_eq!(
        (a[1].outbound_waits, b[1].outbound_waits),
        (!by_a, by_a),
        "{esp}"
    );
    assert!(!a[0].outbound_waits && !b[0].outbound_waits);
    assert_ne!(a[1].inbound_encr_key, a[0].inbound_encr_key);
    assert_eq!(deleted(&p.a_events), [old_a]);
    assert_eq!(deleted(&p.b_events), [old_b]);
    let info = p.a.ike_sas().next().unwrap();
    assert_eq!(info.children.len(), 1);
}

#[test]
fn child_rekey_by_initiator_and_responder_with_and_without_pfs() {
    for esp in [
        "aes128gcm16",
        "aes128gcm16-curve25519",
        "aes256-sha256-modp2048",
    ] {
        rekey_child(true, esp);
        rekey_child(false, esp);
    }
}

#[test]
fn simultaneous_child_rekeys_leave_one_child() {
    let mut p = pair("aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    p.connect();
    p.a.rekey_child(p.now, "tunnel").unwrap();
    p.b.rekey_child(p.now, "tunnel").unwrap();
    p.settle();
    let a_children: Vec<_> = p.a.ike_sas().next().unwrap().children;
    let b_children: Vec<_> = p.b.ike_sas().next().unwrap().children;
    assert_eq!(a_children.len(), 1, "{:?}", p.a_events);
    assert_eq!(b_children.len(), 1);
    assert_eq!(a_children[0].inbound_spi, b_children[0].outbound_spi);
}

fn rekey_ike(by_a: bool) {
    let mut p = pair("aes256-sha256-ecp256", "aes128gcm16");
    p.connect();
    let child_a = installed(&p.a_events)[0].inbound_spi;
    if by_a {
        p.a.rekey_ike(p.now, "tunnel").unwrap();
    } else {
        p.b.rekey_ike(p.now, "tunnel").unwrap();
    }
    p.settle();
    for (ep, events) in [(&p.a, &p.a_events), (&p.b, &p.b_events)] {
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::IkeSaRekeyed { .. }))
        );
        assert!(closed(events).is_empty() && deleted(events).is_empty());
        let sas: Vec<_> = ep.ike_sas().collect();
        assert_eq!(sas.len(), 1, "old SA gone");
        assert_eq!(sas[0].children.len(), 1);
        assert_eq!(sas[0].next_send_id + sas[0].next_expected_id, 0);
    }
    // The children survive and work on the new SA: rekey one.
    p.a.rekey_child(p.now, "tunnel").unwrap();
    p.settle();
    assert_eq!(installed(&p.a_events)[1].replaces, Some(child_a));
    let sa = p.a.ike_sas().next().unwrap();
    assert_eq!((sa.next_send_id, sa.next_expected_id), (2, 0));
}

#[test]
fn ike_rekey_by_either_side_moves_children() {
    rekey_ike(true);
    rekey_ike(false);
}

#[test]
fn a_child_rekey_queued_behind_an_ike_rekey_moves_to_the_new_sa() {
    let mut p = pair("aes256-sha256-ecp256", "aes128gcm16");
    p.connect();
    let child_a = installed(&p.a_events)[0].inbound_spi;
    // The child rekey waits behind the outstanding IKE rekey; the old IKE SA
    // goes away before it could send it.
    p.a.rekey_ike(p.now, "tunnel").unwrap();
    p.a.rekey_child(p.now, "tunnel").unwrap();
    p.run_for(Duration::from_secs(1));
    let rekeyed = installed(&p.a_events);
    assert_eq!(rekeyed.len(), 2, "{:?}", p.a_events);
    assert_eq!(rekeyed[1].replaces, Some(child_a));
    let new_child = rekeyed[1].inbound_spi;
    let a_sa = p.a.ike_sas().next().unwrap();
    let b_sa = p.b.ike_sas().next().unwrap();
    assert_eq!((p.a.ike_sas().count(), p.b.ike_sas().count()), (1, 1));
    assert_eq!(a_sa.children.len(), 1);
    assert_eq!(a_sa.children[0].inbound_spi, new_child);
    assert_eq!(b_sa.children.len(), 1);
    assert_eq!(b_sa.children[0].outbound_spi, new_child);
}

#[test]
fn another_node_adopts_an_sa_from_its_record_and_carries_on() {
    let (ike, esp) = ("aes256gcm16-prfsha256-curve25519", "aes256gcm16");
    let mut p = pair(ike, esp);
    p.connect();
    // b asks something of a, so a's record holds a cached last response.
    p.b.rekey_child(p.now, "tunnel").unwrap();
    p.settle();
    let record =
        p.a.take_changes(p.now)
            .into_iter()
            .find_map(|c| match c {
                crate::record::IkeSaChange::Upsert(r) => Some(r),
                crate::record::IkeSaChange::Removed(_) => None,
            })
            .unwrap();
    let live = p.a.ike_sas().next().unwrap().children[0].inbound_spi;
    let children: Vec<ChildSa> = installed(&p.a_events)
        .into_iter()
        .filter(|c| c.inbound_spi == live)
        .cloned()
        .collect();
    let retransmission = p
        .transcript
        .iter()
        .rev()
        .find(|t| !Pair::is_a(t.local))
        .unwrap()
        .clone();

    // Another node with the same configuration takes over from the record.
    let mut a2 = Endpoint::new(
        vec![conn(A, B, ike, esp)],
        Limits::default(),
        Box::new(SeededRandom::new(77)),
    );
    a2.adopt(p.now, &record, children).unwrap();
    assert!(
        a2.take_changes(p.now).is_empty(),
        "adopting changes nothing"
    );
    let first_response = p
        .transcript
        .iter()
        .rev()
        .find(|t| Pair::is_a(t.local))
        .unwrap()
        .datagram
        .clone();
    p.a = a2;
    // b's retransmitted request gets the very same bytes back.
    p.a.handle(
        p.now,
        retransmission.remote,
        retransmission.local,
        &retransmission.datagram,
    );
    assert_eq!(p.a.poll_transmit().unwrap().datagram, first_response);
    // Both directions of new exchanges work with the new node.
    p.a.rekey_child(p.now, "tunnel").unwrap();
    p.settle();
    p.b.rekey_ike(p.now, "tunnel").unwrap();
    p.settle();
    p.a.rekey_ike(p.now, "tunnel").unwrap();
    p.settle();
    assert!(closed(&p.a_events).is_empty() && closed(&p.b_events).is_empty());
    let (a_sa, b_sa) = (p.a.ike_sas().next().unwrap(), p.b.ike_sas().next().unwrap());
    assert_eq!((p.a.ike_sas().count(), p.b.ike_sas().count()), (1, 1));
    assert_eq!((a_sa.spi_i, a_sa.spi_r), (b_sa.spi_i, b_sa.spi_r));
    assert_eq!(a_sa.children.len(), 1);
    assert_eq!(a_sa.children[0].inbound_spi, b_sa.children[0].outbound_spi);
    assert_ne!(
        a_sa.children[0].inbound_spi, live,
        "the adopted child was rekeyed"
    );
}

#[test]
fn a_node_that_loses_a_tunnel_forgets_it_without_reporting_it_removed() {
    let mut p = pair("aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    p.connect();
    assert!(!p.a.take_changes(p.now).is_empty());
    p.a.forget("tunnel");
    assert_eq!(p.a.ike_sas().count(), 0);
    assert!(p.a.take_changes(p.now).is_empty());
    assert!(p.a.poll_transmit().is_none(), "nothing said to the peer");
}

#[test]
fn dpd_succeeds_and_times_out() {
    let mut p = pair("aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    p.connect();
    let before = p.transcript.len();
    p.run_for(Duration::from_secs(100));
    assert!(p.transcript.len() > before, "DPD exchanges ran");
    assert!(closed(&p.a_events).is_empty() && closed(&p.b_events).is_empty());
    p.b_silent = true;
    p.run_for(Duration::from_secs(200));
    assert_eq!(closed(&p.a_events), [CloseReason::DpdTimeout]);
    assert_eq!(deleted(&p.a_events).len(), 1);
}

#[test]
fn delete_from_either_side() {
    for by_a in [true, false] {
        let mut p = pair("aes128gcm16-prfsha256-curve25519", "aes128gcm16");
        p.connect();
        let closer = if by_a { &mut p.a } else { &mut p.b };
        closer.terminate(p.now, "tunnel").unwrap();
        p.settle();
        let (mine, theirs) = if by_a {
            (&p.a_events, &p.b_events)
        } else {
            (&p.b_events, &p.a_events)
        };
        assert_eq!(closed(mine), [CloseReason::DeletedLocally]);
        assert_eq!(closed(theirs), [CloseReason::DeletedByPeer]);
        assert_eq!((deleted(mine).len(), deleted(theirs).len()), (1, 1));
        assert_eq!(p.a.ike_sas().count() + p.b.ike_sas().count(), 0);
    }
}

#[test]
fn retransmitted_request_gets_identical_response() {
    let mut p = pair("aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    p.connect();
    p.a.rekey_child(p.now, "tunnel").unwrap();
    let request = p.a.poll_transmit().unwrap();
    p.b.handle(p.now, request.remote, request.local, &request.datagram);
    let first = p.b.poll_transmit().unwrap();
    p.b.handle(p.now, request.remote, request.local, &request.datagram);
    let second = p.b.poll_transmit().unwrap();
    assert_eq!(first, second);
    assert!(p.b.poll_transmit().is_none());
    let b_installed = std::iter::from_fn(|| p.b.poll_event())
        .filter(|e| matches!(e, Event::ChildSaInstalled(_)))
        .count();
    assert_eq!(b_installed, 1, "processed once");
}

#[test]
fn lost_datagrams_are_retransmitted() {
    let mut p = pair("aes128-sha256-ecp256", "aes128gcm16");
    p.drop_from_b = 2; // IKE_SA_INIT and IKE_AUTH responses
    p.drop_from_a = 1; // the first IKE_SA_INIT request
    p.a.initiate(p.now, "tunnel").unwrap();
    p.run_for(Duration::from_secs(30));
    assert_eq!((established(&p.a_events), established(&p.b_events)), (1, 1));
    assert_mirrored(installed(&p.a_events)[0], installed(&p.b_events)[0]);
}

#[test]
fn duplicated_datagrams_are_harmless() {
    let mut p = pair("aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    p.duplicate = true;
    p.connect();
    p.a.rekey_child(p.now, "tunnel").unwrap();
    p.settle();
    p.b.rekey_ike(p.now, "tunnel").unwrap();
    p.settle();
    assert_eq!((established(&p.a_events), established(&p.b_events)), (1, 1));
    assert_eq!(installed(&p.a_events).len(), 2);
    assert!(closed(&p.a_events).is_empty() && closed(&p.b_events).is_empty());
    assert_eq!(p.a.ike_sas().next().unwrap().children.len(), 1);
}

#[test]
fn same_seed_same_transcript() {
    let run = || {
        let mut p = pair("aes256-sha512-modp2048", "aes128-sha256-curve25519");
        p.connect();
        p.run_for(Duration::from_secs(4000));
        p.transcript
            .into_iter()
            .map(|t| t.datagram)
            .collect::<Vec<_>>()
    };
    let first = run();
    assert!(first.len() > 4);
    assert_eq!(first, run());
}

#[test]
fn lifetimes_rekey_children_and_ike_sa() {
    let mut a = conn(A, B, "aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    a.child_lifetime = Duration::from_secs(600);
    a.ike_lifetime = Duration::from_secs(1000);
    let mut p = Pair::new(
        a,
        conn(B, A, "aes128gcm16-prfsha256-curve25519", "aes128gcm16"),
        9,
    );
    p.connect();
    p.run_for(Duration::from_secs(1300));
    assert!(installed(&p.a_events).len() >= 3);
    assert!(
        p.a_events
            .iter()
            .any(|e| matches!(e, Event::IkeSaRekeyed { .. }))
    );
    assert!(closed(&p.a_events).is_empty() && closed(&p.b_events).is_empty());
    assert_eq!(p.a.ike_sas().count(), 1);
    assert_eq!(p.b.ike_sas().next().unwrap().children.len(), 1);
}

#[test]
fn ikev1_and_garbage_are_dropped() {
    let mut p = pair("aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    let from: SocketAddr = "192.0.2.1:500".parse().unwrap();
    let to: SocketAddr = "198.51.100.1:500".parse().unwrap();
    let mut v1 = vec![0u8; 28];
    v1[17] = 0x10;
    v1[27] = 28;
    p.b.handle(p.now, to, from, &v1);
    p.b.handle(p.now, to, from, &[1, 2, 3]);
    p.b.handle(p.now, to, from, &[0; 200]); // major version 0
    // A well-formed header for an IKE SA b never had.
    let mut stray = vec![0u8; 28];
    stray[..8].copy_from_slice(&[9; 8]);
    stray[8..16].copy_from_slice(&[7; 8]);
    stray[16] = 46;
    stray[17] = 0x20;
    stray[18] = 37;
    stray[19] = 0x08;
    stray[27] = 28;
    p.b.handle(p.now, to, from, &stray);
    assert!(p.b.poll_transmit().is_none());
    assert_eq!(p.b.ike_sas().count(), 0);
    let drops = p.b.drops();
    assert_eq!(
        (
            drops.unsupported_version,
            drops.malformed,
            drops.unknown_spi
        ),
        (2, 1, 1)
    );
}

#[test]
fn junk_for_a_live_sa_changes_nothing_and_an_exchange_changes_it_once() {
    let mut p = pair("aes128gcm16-prfsha256-curve25519", "aes128gcm16");
    p.connect();
    p.a.take_changes(p.now);
    p.b.take_changes(p.now);

    // a's DPD request: its next message ID moved, once.
    p.now = p.a.poll_timeout().unwrap();
    p.a.handle_timeout(p.now);
    let dpd = p.a.poll_transmit().unwrap();
    assert_eq!(p.a.take_changes(p.now).len(), 1);
    p.now += Duration::from_secs(2);
    p.a.handle_timeout(p.now);
    assert_eq!(p.a.poll_transmit().unwrap(), dpd, "retransmitted");
    assert!(p.a.take_changes(p.now).is_empty(), "a retransmission");

    // Datagrams with b's SPI that are not a's request.
    let len = dpd.datagram.len();
    let with_length = |mut d: Vec<u8>| {
        let n = u32::try_from(d.len()).unwrap();
        d[24..28].copy_from_slice(&n.to_be_bytes());
        d
    };
    let mut random = dpd.datagram[..28].to_vec();
    random.extend((28..len).map(|i| u8::try_from(i * 37 % 251).unwrap()));
    let mut bad_icv = dpd.datagram.clone();
    bad_icv[len - 1] ^= 1;
    let truncated = with_length(dpd.datagram[..len - 8].to_vec());
    let cut_short = dpd.datagram[..len - 8].to_vec();
    let mut future_id = dpd.datagram.clone();
    future_id[20..24].copy_from_slice(&7u32.to_be_bytes());
    for junk in [random, bad_icv, truncated, cut_short, future_id] {
        p.b.handle(p.now, dpd.remote, dpd.local, &junk);
        assert!(p.b.poll_transmit().is_none());
        assert!(p.b.take_changes(p.now).is_empty(), "{junk:?}");
    }
    let drops = p.b.drops();
    assert_eq!(
        (drops.undecryptable, drops.malformed, drops.unexpected),
        (3, 1, 1)
    );

    // The request itself: b answers, and its message IDs and cached
    // response change, once.
    p.b.handle(p.now, dpd.remote, dpd.local, &dpd.datagram);
    let response = p.b.poll_transmit().unwrap();
    let changes = p.b.take_changes(p.now);
    assert_eq!(changes.len(), 1);
    assert!(
        matches!(&changes[0], crate::record::IkeSaChange::Upsert(r) if r.next_expected_id == 3)
    );
    p.b.handle(p.now, dpd.remote, dpd.local, &dpd.datagram);
    assert_eq!(
        p.b.poll_transmit().unwrap(),
        response,
        "the cached response"
    );
    assert!(
        p.b.take_changes(p.now).is_empty(),
        "a retransmitted request"
    );
    // Had that change not committed, the SA is reported again, once.
    let spi = match &changes[0] {
        crate::record::IkeSaChange::Upsert(r) => r.our_spi(),
        crate::record::IkeSaChange::Removed(spi) => *spi,
    };
    p.b.recommit(spi);
    assert_eq!(p.b.take_changes(p.now), changes);
    assert!(p.b.take_changes(p.now).is_empty());

    // a takes the response: what it replicates did not move with that (an
    // outstanding request is not replicated), nor with a duplicate.
    for _ in 0..2 {
        p.a.handle(p.now, response.remote, response.local, &response.datagram);
        assert!(p.a.take_changes(p.now).is_empty());
    }
    assert_eq!(p.a.drops().unexpected, 1, "the duplicate");
    assert!(closed(&p.a_events).is_empty() && closed(&p.b_events).is_empty());
}

#[test]
fn changes_report_what_the_cluster_must_commit() {
    use crate::record::IkeSaChange;
    let upserts = |c: &[IkeSaChange]| -> Vec<crate::record::IkeSaRecord> {
        c.iter()
            .filter_map(|c| match c {
                IkeSaChange::Upsert(r) => Some((**r).clone()),
                IkeSaChange::Removed(_) => None,
            })
            .collect()
    };
    let mut p = pair("aes256-sha256-ecp256", "aes128gcm16");
    p.connect();
    let (a, b) = (p.a.take_changes(p.now), p.b.take_changes(p.now));
    let (ra, rb) = (&upserts(&a)[0], &upserts(&b)[0]);
    assert_eq!(
        (a.len(), b.len()),
        (1, 1),
        "one established SA each, no half-open"
    );
    assert_eq!((ra.spi_i, ra.spi_r), (rb.spi_i, rb.spi_r));
    assert!(ra.initiator && !rb.initiator);
    assert_eq!(ra.keys, rb.keys, "both ends derived the same keys");
    assert_eq!(ra.children.len(), 1);
    assert_eq!(
        rb.last_response.as_ref().map(|r| r.0),
        Some(1),
        "IKE_AUTH response cached"
    );
    assert!(p.a.take_changes(p.now).is_empty(), "nothing new since");

    // A DPD: the message IDs move, so the responder's record changes.
    p.run_for(Duration::from_secs(40));
    let b = upserts(&p.b.take_changes(p.now));
    assert_eq!(
        b.last().map(|r| r.next_expected_id),
        Some(3),
        "IKE_AUTH was 1, the DPD 2"
    );

    // An IKE rekey: the new SA is reported, the old one removed, by our SPI.
    let old = ra.our_spi();
    p.a.rekey_ike(p.now, "tunnel").unwrap();
    p.settle();
    let a = p.a.take_changes(p.now);
    assert!(a.contains(&IkeSaChange::Removed(old)), "{a:?}");
    let new = upserts(&a);
    assert_eq!(new.len(), 1);
    assert_ne!(new[0].our_spi(), old);
    assert_eq!(new[0].children.len(), 1, "children moved to the new SA");
}
