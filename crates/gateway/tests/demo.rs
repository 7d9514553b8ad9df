//! `tandemd demo` end to end: three gateways, a customer device, a planned
//! handover and a killed owner, in this process, without root.
#![allow(clippy::unwrap_used)]

#[test]
fn the_demo_survives_a_handover_and_a_killed_owner() {
    let dir = std::env::temp_dir().join(format!("tandem-demo-test-{}", std::process::id()));
    let survived = tandem_gateway::demo::run(&dir);
    std::fs::remove_dir_all(&dir).ok();
    assert!(
        survived.unwrap(),
        "a tunnel did not survive (see the table above)"
    );
}
