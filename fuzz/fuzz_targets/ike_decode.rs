//! IKE decoding on hostile datagrams: the header check, the clear payload walk
//! and SK decryption with both cipher families must never panic, and whatever
//! parses must survive emit -> parse unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_crypto::{EncrAlg, IntegAlg, SaCipher, Secret, SeededRandom};
use tandem_ike::message::{Header, Message, Payload};

fuzz_target!(|data: &[u8]| {
    let _ = Header::parse(data);
    if let Ok(msg) = Message::parse(data) {
        assert_eq!(Message::parse(&msg.emit()).ok(), Some(normalized(msg)));
    }
    for cipher in ciphers() {
        // Forged ICVs almost never verify, but the checks before and after
        // opening (SK placement, lengths, padding) are reached either way.
        if let Ok(msg) = Message::decrypt(data, &cipher) {
            let sealed = msg.emit_encrypted(&cipher, &mut SeededRandom::new(0));
            assert_eq!(Message::decrypt(&sealed, &cipher).ok(), Some(normalized(msg)));
        }
    }
});

/// Fixed keys: a GCM and a CBC+HMAC cipher, rebuilt per input because key
/// expansion is cheap next to the parsing under test.
fn ciphers() -> [SaCipher; 2] {
    let gcm = SaCipher::new(EncrAlg::AesGcm16 { key_bits: 256 }, None, &Secret::new(vec![7; 36]), None);
    let cbc = SaCipher::new(
        EncrAlg::AesCbc { key_bits: 256 },
        Some(IntegAlg::HmacSha256_128),
        &Secret::new(vec![8; 32]),
        Some(&Secret::new(vec![9; 32])),
    );
    match (gcm, cbc) {
        (Ok(gcm), Ok(cbc)) => [gcm, cbc],
        _ => panic!("fixed test keys rejected"),
    }
}

/// The parser flags transforms with attributes it does not understand but does
/// not keep those attributes, so emitting cannot reproduce the flag.
fn normalized(mut msg: Message) -> Message {
    for payload in &mut msg.payloads {
        if let Payload::Sa(proposals) = payload {
            for t in proposals.iter_mut().flat_map(|p| p.transforms.iter_mut()) {
                t.unknown_attribute = false;
            }
        }
    }
    msg
}
