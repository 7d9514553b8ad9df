//! ESP decapsulation on hostile UDP-4500 payloads: RFC 3948 demultiplexing then
//! SA lookup, replay check, ICV and padding checks must never panic, whatever
//! the SPI, length or contents. The input's first byte picks the SA so the
//! fuzzer reaches every transform family with and without ESN.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_crypto::{EncrAlg, IntegAlg, Secret};
use std::net::{IpAddr, Ipv4Addr};

use tandem_esp::{Datagram, SaParams, Sadb, Selector, Selectors, classify};

const SAS: [(u32, EncrAlg, Option<IntegAlg>, bool); 4] = [
    (0x100, EncrAlg::AesGcm16 { key_bits: 256 }, None, false),
    (0x101, EncrAlg::AesGcm16 { key_bits: 128 }, None, true),
    (0x102, EncrAlg::AesCbc { key_bits: 256 }, Some(IntegAlg::HmacSha256_128), false),
    (0x103, EncrAlg::AesCbc { key_bits: 128 }, Some(IntegAlg::HmacSha1_96), true),
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let mut sadb = Sadb::new();
    for (spi, encr, integ, esn) in SAS {
        let params = SaParams {
            spi,
            encr,
            integ,
            encr_key: Secret::new(vec![7; encr.keymat_len()]),
            integ_key: integ.map(|i| Secret::new(vec![9; i.key_len()])),
            esn,
        };
        // Selectors that admit only part of the address space, so both
        // outcomes of the inbound selector check are reached.
        let half = Selector {
            ip_protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            start: IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)),
            end: IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255)),
        };
        let selectors = Selectors {
            local: vec![half],
            remote: vec![half],
        };
        if sadb.install_inbound(params, 1024, selectors).is_err() {
            panic!("fixed SA rejected");
        }
    }
    let mut packet = rest.to_vec();
    if packet.len() >= 4 && pick & 1 == 1 {
        // Half the inputs aim at a real SPI, so the crypto and trailer checks run.
        let spi = SAS[usize::from(pick >> 1) % SAS.len()].0;
        packet[..4].copy_from_slice(&spi.to_be_bytes());
    }
    if let Datagram::Esp = classify(&packet) {
        if let Ok(opened) = sadb.open(&mut packet) {
            assert!(opened.inner.end <= packet.len());
        }
    }
});
