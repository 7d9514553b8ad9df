//! Raw AES-GCM throughput on ESP-sized packets, ring against RustCrypto: the figures
//! that decide `AeadBackend::default()`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tandem_crypto::{AeadBackend, aead::aes_gcm};

/// A full-size packet on a 1500-byte MTU path after ESP and outer IP overhead.
const PACKET: usize = 1400;

fn gcm(c: &mut Criterion) {
    let backends = [
        ("ring", AeadBackend::Ring),
        ("rustcrypto", AeadBackend::RustCrypto),
    ];
    for key_len in [16usize, 32] {
        let mut group = c.benchmark_group(format!("aes-{}-gcm", key_len * 8));
        group.throughput(Throughput::Bytes(PACKET as u64));
        for (name, backend) in backends {
            let key = vec![0x42u8; key_len];
            let Ok(aead) = aes_gcm(backend, &key) else {
                panic!("{name}: AES-GCM key rejected");
            };
            let nonce = [7u8; 12];
            let aad = [1u8; 8];
            let mut buf = vec![0u8; PACKET];

            group.bench_function(format!("seal/{name}"), |b| {
                b.iter(|| black_box(aead.seal_in_place(&nonce, &aad, black_box(&mut buf))))
            });

            let mut sealed = vec![0u8; PACKET];
            let tag = aead.seal_in_place(&nonce, &aad, &mut sealed);
            let mut work = sealed.clone();
            group.bench_function(format!("open/{name}"), |b| {
                b.iter(|| {
                    // Opening decrypts in place, so each round starts from the
                    // ciphertext again; the copy is a small fraction of the work.
                    work.copy_from_slice(&sealed);
                    black_box(aead.open_in_place(&nonce, &aad, black_box(&mut work), &tag))
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, gcm);
criterion_main!(benches);
