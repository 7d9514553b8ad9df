//! Applying replicated commands to the state machine, as a member (or a
//! compromised one) could propose them: decoding must never panic, and
//! applying must never panic, must change nothing when it refuses, and must
//! never move a sequence reservation backwards (invariant 3) or forget a
//! revocation. The input is a run of length-prefixed command encodings,
//! applied in order to a state that starts with two tunnels and their
//! children, so the checks on real SAs are reached.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use tandem_cluster::command::{WIRE_VERSION, decode, encode};
use tandem_cluster::state::TunnelSpec;
use tandem_cluster::{Change, ClusterState, Command};
use tandem_ike::config::ConnectionConfig;
use tandem_ike::endpoint::ChildSa;

fn start() -> ClusterState {
    let mut s = ClusterState::default();
    for (name, net, node, inbound, outbound) in
        [("site-a", 1u8, 1u64, 0x100u32, 0x200u32), ("site-b", 3, 2, 0x101, 0x200)]
    {
        let mut ike = ConnectionConfig::for_tests(name);
        ike.remote_ts[0].start = [10, net, 0, 0].into();
        ike.remote_ts[0].end = [10, net, 255, 255].into();
        let spec = TunnelSpec { ike, replay_window: 1024, initiate: false, lan_addr: None };
        let setup = [
            Change::TunnelUpsert(Box::new(spec)),
            Change::OwnerAssigned { tunnel: name.into(), node },
            Change::ChildSaInstalled(Box::new(ChildSa::for_tests(name, inbound, outbound, &[7; 36]))),
            Change::SeqBlockReservedFor { inbound_spi: inbound, node, count: 1000 },
        ];
        let outcome = s.apply_command(&setup);
        assert!(outcome.refused.is_none(), "{:?}", outcome.refused);
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let mut state = start();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (body, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        // The version prefix is the codec's business, tested elsewhere: give
        // every input this build's so the fuzzer spends its time on bodies.
        let bytes = [&WIRE_VERSION.to_le_bytes()[..], body].concat();
        let Ok(cmd) = decode::<Command>(&bytes) else {
            continue;
        };
        // What decodes encodes back to something that decodes the same.
        assert_eq!(decode::<Command>(&encode(&cmd)).ok().as_ref(), Some(&cmd));
        let before = state.clone();
        let reserved: BTreeMap<u32, u64> =
            state.seq_reservations.iter().map(|(k, r)| (*k, r.up_to)).collect();
        let outcome = state.apply_command(&cmd.changes);
        if outcome.refused.is_some() {
            assert_eq!(state, before, "a refused command changed the state");
            continue;
        }
        for (spi, up_to) in reserved {
            if let Some(r) = state.seq_reservations.get(&spi) {
                assert!(r.up_to >= up_to, "reservation of {spi:08x} went backwards");
                assert!(r.from > up_to || r.from == before.seq_reservations[&spi].from);
            }
        }
        assert!(before.revoked.is_subset(&state.revoked), "a revocation was forgotten");
        for g in &outcome.granted {
            assert!(g.block.from <= g.block.up_to && g.block.from >= 1);
        }
    }
});
