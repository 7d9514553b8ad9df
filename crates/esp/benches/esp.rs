//! ESP seal + open of 1400-byte inner packets on one core, beside the raw AEAD
//! on the same buffers with the same copies in and out, for both AES-GCM
//! backends. The ratio ESP/raw says how
//! much the dataplane (selector lookup, padding, replay, framing) costs on top
//! of the cipher.

// A benchmark on fixed inputs: any failure is a bug to stop on at once.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tandem_crypto::aead::aes_gcm;
use tandem_crypto::{AeadBackend, EncrAlg, Secret};
use tandem_esp::{PacketBuf, SaParams, Sadb, Selector, Selectors};

const INNER: usize = 1400;
const BATCH: usize = 32;

fn selector(a: [u8; 4], b: [u8; 4]) -> Vec<Selector> {
    vec![Selector {
        ip_protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start: IpAddr::from(a),
        end: IpAddr::from(b),
    }]
}

fn params(encr: EncrAlg) -> SaParams {
    SaParams {
        spi: 0x1000,
        encr,
        integ: None,
        encr_key: Secret::new(vec![0x42; encr.keymat_len()]),
        integ_key: None,
        esn: true,
    }
}

fn inner_packet() -> PacketBuf {
    let mut buf = PacketBuf::new();
    let area = buf.inner_mut();
    area[..INNER].fill(0xab);
    area[0] = 0x45;
    area[9] = 17;
    area[12..16].copy_from_slice(&[10, 2, 0, 1]);
    area[16..20].copy_from_slice(&[10, 1, 0, 1]);
    buf.set_inner_len(INNER);
    buf
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("esp_1400B");
    group.throughput(Throughput::Bytes((INNER * BATCH) as u64));
    for (name, backend) in [
        ("ring", AeadBackend::Ring),
        ("rustcrypto", AeadBackend::RustCrypto),
    ] {
        for key_bits in [128u16, 256] {
            let encr = EncrAlg::AesGcm16 { key_bits };
            let mut tx = Sadb::with_backend(backend);
            let selectors = Selectors {
                local: selector([10, 2, 0, 0], [10, 2, 255, 255]),
                remote: selector([10, 1, 0, 0], [10, 1, 255, 255]),
            };
            tx.install_outbound(
                1,
                params(encr),
                selectors.clone(),
                "192.0.2.1:4500".parse().unwrap(),
                "192.0.2.2:4500".parse().unwrap(),
            )
            .unwrap();
            // A huge window: the bench opens every packet once, in order.
            let mut rx = Sadb::with_backend(backend);
            let reverse = Selectors {
                local: selectors.remote,
                remote: selectors.local,
            };
            rx.install_inbound(params(encr), 4096, reverse).unwrap();
            let template = inner_packet().data().to_vec();
            let mut bufs: Vec<PacketBuf> = (0..BATCH).map(|_| inner_packet()).collect();
            let mut results = Vec::with_capacity(BATCH);
            let mut wire = vec![0u8; 2048];
            group.bench_function(format!("esp_seal_open/{name}/aes{key_bits}gcm"), |b| {
                b.iter(|| {
                    // Sealing works in place: refill the inner packets as a TUN
                    // read would.
                    for buf in bufs.iter_mut() {
                        buf.inner_mut()[..INNER].copy_from_slice(&template);
                        buf.set_inner_len(INNER);
                    }
                    tx.seal_batch(&mut bufs, &mut results);
                    for buf in &bufs {
                        let data = buf.data();
                        let packet = &mut wire[..data.len()];
                        packet.copy_from_slice(data);
                        black_box(rx.open(packet).unwrap());
                    }
                });
            });

            let aead = aes_gcm(backend, &vec![0x42; usize::from(key_bits / 8)]).unwrap();
            let mut raw: Vec<Vec<u8>> = (0..BATCH).map(|_| vec![0xab; INNER]).collect();
            let raw_template = vec![0xab; INNER];
            let mut raw_wire = vec![0u8; INNER];
            let aad = [0u8; 12];
            let mut nonce = [0u8; 12];
            let mut counter = 0u64;
            group.bench_function(format!("raw_seal_open/{name}/aes{key_bits}gcm"), |b| {
                b.iter(|| {
                    // The same two copies as the ESP side (refill as a TUN
                    // read would, then receive into another buffer), so the
                    // ratio is ESP's own work and not memory traffic.
                    for buf in raw.iter_mut() {
                        buf.copy_from_slice(&raw_template);
                        counter += 1;
                        nonce[4..].copy_from_slice(&counter.to_be_bytes());
                        let tag = aead.seal_in_place(&nonce, &aad, buf);
                        raw_wire.copy_from_slice(buf);
                        aead.open_in_place(&nonce, &aad, &mut raw_wire, &tag)
                            .unwrap();
                        black_box(&raw_wire);
                    }
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
