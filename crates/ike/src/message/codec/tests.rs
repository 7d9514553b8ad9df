//! Golden bytes, round trips and hostile-input tests for the codec.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tandem_crypto::{CryptoError, EncrAlg, IntegAlg, SaCipher, Secret, SeededRandom};

use super::super::{
    Auth, Delete, ExchangeType, Header, Identity, KeyExchange, MAX_MESSAGE_LEN, MAX_PAYLOADS,
    Message, Notify, Payload, Proposal, ProtocolId, Spi, TrafficSelector, Transform, auth_method,
    esn, id_type, notify, payload_type, transform_type,
};
use super::DecodeError;

/// Hex with whitespace allowed, so golden bytes can be laid out field by field.
fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    hex::decode(s).unwrap()
}

fn header(exchange: ExchangeType) -> Header {
    Header {
        spi_i: 0x0102_0304_0506_0708,
        spi_r: 0x1112_1314_1516_1718,
        exchange,
        initiator: true,
        response: false,
        message_id: 7,
    }
}

/// Hand-assembled header for [`header`] with `next` and `len`.
fn header_bytes(exchange: u8, next: u8, len: usize) -> Vec<u8> {
    let mut out = hex("0102030405060708 1112131415161718");
    out.extend_from_slice(&[next, 0x20, exchange, 0x08]);
    out.extend_from_slice(&7u32.to_be_bytes());
    out.extend_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
    out
}

/// A clear INFORMATIONAL message carrying one payload with the given body.
fn single(kind: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = header_bytes(37, kind, 28 + 4 + body.len());
    out.extend_from_slice(&[0, flags]);
    out.extend_from_slice(&u16::try_from(4 + body.len()).unwrap().to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Parses `bytes` to exactly `payload` and emits it back to exactly `bytes`.
fn golden(kind: u8, body: &str, payload: Payload) {
    let bytes = single(kind, 0, &hex(body));
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(msg.header, header(ExchangeType::Informational));
    assert_eq!(msg.payloads, vec![payload]);
    assert_eq!(msg.emit(), bytes);
}

fn key_len_transform(transform_type: u8, id: u16, key_len: Option<u16>) -> Transform {
    Transform {
        transform_type,
        id,
        key_len,
        unknown_attribute: false,
    }
}

fn ts4(a: [u8; 4], b: [u8; 4]) -> TrafficSelector {
    TrafficSelector {
        ip_protocol: 0,
        start_port: 0,
        end_port: 65535,
        start: IpAddr::V4(Ipv4Addr::from(a)),
        end: IpAddr::V4(Ipv4Addr::from(b)),
    }
}

/// One payload of every variant, each with its less common options.
fn every_payload() -> Vec<Payload> {
    vec![
        Payload::Sa(vec![
            Proposal {
                number: 1,
                protocol: ProtocolId::Ike,
                spi: Spi::Ike(0xdead_beef_0000_0001),
                transforms: vec![
                    key_len_transform(transform_type::ENCR, 20, Some(256)),
                    key_len_transform(transform_type::PRF, 5, None),
                    key_len_transform(transform_type::DH, 31, None),
                ],
            },
            Proposal {
                number: 2,
                protocol: ProtocolId::Esp,
                spi: Spi::Child(0x0a0b_0c0d),
                transforms: vec![
                    key_len_transform(transform_type::ENCR, 12, Some(128)),
                    key_len_transform(transform_type::INTEG, 12, None),
                    key_len_transform(transform_type::ESN, esn::NO, None),
                ],
            },
            Proposal {
                number: 3,
                protocol: ProtocolId::Ah,
                spi: Spi::None,
                transforms: vec![],
            },
        ]),
        Payload::Ke(KeyExchange {
            group: 19,
            data: vec![0x5a; 64],
        }),
        Payload::IdI(Identity {
            id_type: id_type::FQDN,
            data: b"gw.example".to_vec(),
        }),
        Payload::IdR(Identity {
            id_type: id_type::IPV4_ADDR,
            data: vec![192, 0, 2, 1],
        }),
        Payload::Auth(Auth {
            method: auth_method::SHARED_KEY_MIC,
            data: vec![0xaa; 32],
        }),
        Payload::Nonce(vec![0x42; 16]),
        Payload::Notify(Notify {
            protocol: ProtocolId::Unknown(0),
            spi: Spi::None,
            kind: notify::INITIAL_CONTACT,
            data: vec![],
        }),
        Payload::Notify(Notify {
            protocol: ProtocolId::Esp,
            spi: Spi::Child(0x1234_5678),
            kind: notify::REKEY_SA,
            data: vec![],
        }),
        Payload::Notify(Notify {
            protocol: ProtocolId::Ike,
            spi: Spi::Ike(9),
            kind: notify::COOKIE,
            data: vec![1, 2, 3],
        }),
        Payload::Delete(Delete {
            protocol: ProtocolId::Ike,
            spis: vec![],
        }),
        Payload::Delete(Delete {
            protocol: ProtocolId::Esp,
            spis: vec![1, 2],
        }),
        Payload::Delete(Delete {
            protocol: ProtocolId::Ah,
            spis: vec![3],
        }),
        Payload::VendorId(b"tandem".to_vec()),
        Payload::TsI(vec![
            ts4([10, 0, 0, 0], [10, 0, 0, 255]),
            ts4([0; 4], [255; 4]),
        ]),
        Payload::TsR(vec![TrafficSelector {
            ip_protocol: 17,
            start_port: 500,
            end_port: 4500,
            start: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            end: IpAddr::V6(Ipv6Addr::from([0xff; 16])),
        }]),
        Payload::Unknown {
            payload_type: payload_type::CP,
            critical: true,
            body: vec![1, 0, 0, 0],
        },
        Payload::Unknown {
            payload_type: payload_type::CERTREQ,
            critical: false,
            body: vec![],
        },
    ]
}

fn every_payload_message() -> Message {
    Message {
        header: header(ExchangeType::CreateChildSa),
        payloads: every_payload(),
    }
}

fn gcm256() -> SaCipher {
    SaCipher::new(
        EncrAlg::AesGcm16 { key_bits: 256 },
        None,
        &Secret::new(vec![7; 36]),
        None,
    )
    .unwrap()
}

fn cbc256_sha256() -> SaCipher {
    SaCipher::new(
        EncrAlg::AesCbc { key_bits: 256 },
        Some(IntegAlg::HmacSha256_128),
        &Secret::new(vec![8; 32]),
        Some(&Secret::new(vec![9; 32])),
    )
    .unwrap()
}

/// Test-only xorshift64: deterministic garbage without an RNG dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % u64::try_from(n).unwrap()).unwrap()
    }
}

/// Parsed messages must survive emit -> parse unchanged, except for the
/// `unknown_attribute` flag whose attributes the parser does not keep.
fn assert_round_trips(msg: &Message) {
    let mut expected = msg.clone();
    for payload in &mut expected.payloads {
        if let Payload::Sa(proposals) = payload {
            for t in proposals.iter_mut().flat_map(|p| p.transforms.iter_mut()) {
                t.unknown_attribute = false;
            }
        }
    }
    assert_eq!(Message::parse(&msg.emit()).unwrap(), expected);
}

#[test]
fn ike_sa_init_request_golden() {
    let bytes = hex(&format!(
        "0102030405060708 0000000000000000 21 20 22 08 00000000 000000c8
         22 00 0028
            00 00 0024 01 01 00 03
               03 00 000c 01 00 0014 800e 0100
               03 00 0008 02 00 0005
               00 00 0008 04 00 001f
         28 00 0028 001f 0000 {ke}
         29 00 0024 {nonce}
         29 00 001c 00 00 4004 {nat_src}
         00 00 001c 00 00 4005 {nat_dst}",
        ke = "11".repeat(32),
        nonce = "22".repeat(32),
        nat_src = "33".repeat(20),
        nat_dst = "44".repeat(20),
    ));
    let expected = Message {
        header: Header {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0,
            exchange: ExchangeType::IkeSaInit,
            initiator: true,
            response: false,
            message_id: 0,
        },
        payloads: vec![
            Payload::Sa(vec![Proposal {
                number: 1,
                protocol: ProtocolId::Ike,
                spi: Spi::None,
                transforms: vec![
                    key_len_transform(transform_type::ENCR, 20, Some(256)),
                    key_len_transform(transform_type::PRF, 5, None),
                    key_len_transform(transform_type::DH, 31, None),
                ],
            }]),
            Payload::Ke(KeyExchange {
                group: 31,
                data: vec![0x11; 32],
            }),
            Payload::Nonce(vec![0x22; 32]),
            Payload::Notify(Notify {
                protocol: ProtocolId::Unknown(0),
                spi: Spi::None,
                kind: notify::NAT_DETECTION_SOURCE_IP,
                data: vec![0x33; 20],
            }),
            Payload::Notify(Notify {
                protocol: ProtocolId::Unknown(0),
                spi: Spi::None,
                kind: notify::NAT_DETECTION_DESTINATION_IP,
                data: vec![0x44; 20],
            }),
        ],
    };
    assert_eq!(Header::parse(&bytes).unwrap(), expected.header);
    assert_eq!(Message::parse(&bytes).unwrap(), expected);
    assert_eq!(expected.emit(), bytes);
}

#[test]
fn header_golden_and_flags() {
    let bytes = header_bytes(35, 0, 28);
    let parsed = Header::parse(&bytes).unwrap();
    assert_eq!(parsed, header(ExchangeType::IkeAuth));
    assert_eq!(
        Message {
            header: parsed,
            payloads: vec![]
        }
        .emit(),
        bytes
    );

    // Response flag; the Version flag and reserved bits are ignored on input
    // and never sent.
    let mut bytes = header_bytes(37, 0, 28);
    bytes[19] = 0x20 | 0x10 | 0x07;
    let parsed = Header::parse(&bytes).unwrap();
    assert!(parsed.response && !parsed.initiator);
    assert_eq!(
        Message {
            header: parsed,
            payloads: vec![]
        }
        .emit()[19],
        0x20
    );

    // Unknown exchange types are carried for the state machine to reject.
    let bytes = header_bytes(99, 0, 28);
    assert_eq!(
        Header::parse(&bytes).unwrap().exchange,
        ExchangeType::Unknown(99)
    );
}

#[test]
fn major_version_must_be_2() {
    let mut bytes = header_bytes(34, 0, 28);
    bytes[17] = 0x10;
    assert_eq!(
        Header::parse(&bytes),
        Err(DecodeError::UnsupportedVersion(1))
    );
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::UnsupportedVersion(1))
    );
    bytes[17] = 0x30;
    assert_eq!(
        Header::parse(&bytes),
        Err(DecodeError::UnsupportedVersion(3))
    );
    // A higher minor version is still IKEv2 (RFC 7296 section 2.5).
    bytes[17] = 0x21;
    assert!(Header::parse(&bytes).is_ok());
}

#[test]
fn header_length_lies_rejected() {
    let ok = header_bytes(37, 0, 28);
    assert_eq!(
        Header::parse(&ok[..27]),
        Err(DecodeError::Truncated {
            needed: 28,
            had: 27
        })
    );

    let longer = header_bytes(37, 0, 29);
    assert_eq!(
        Header::parse(&longer),
        Err(DecodeError::Truncated {
            needed: 29,
            had: 28
        })
    );

    let mut trailing = header_bytes(37, 0, 28);
    trailing.push(0);
    assert!(matches!(
        Header::parse(&trailing),
        Err(DecodeError::InvalidSyntax(_))
    ));

    let short = header_bytes(37, 0, 27);
    assert!(matches!(
        Header::parse(&short),
        Err(DecodeError::InvalidSyntax(_))
    ));

    let mut huge = header_bytes(37, 0, MAX_MESSAGE_LEN + 1);
    huge.resize(MAX_MESSAGE_LEN + 1, 0);
    assert!(matches!(
        Header::parse(&huge),
        Err(DecodeError::InvalidSyntax(_))
    ));

    let max = header_bytes(37, 0, usize::try_from(u32::MAX).unwrap());
    assert!(matches!(
        Header::parse(&max),
        Err(DecodeError::InvalidSyntax(_))
    ));
}

#[test]
fn payload_length_lies_rejected() {
    let mut bytes = single(payload_type::VENDOR_ID, 0, b"abcd");
    // Generic payload length beyond the message.
    bytes[30..32].copy_from_slice(&9u16.to_be_bytes());
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::InvalidSyntax("payload length exceeds message"))
    );
    // Below the generic header size.
    bytes[30..32].copy_from_slice(&3u16.to_be_bytes());
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::InvalidSyntax("payload length below 4"))
    );
    // Shorter than the bytes that follow: trailing data after the last payload.
    bytes[30..32].copy_from_slice(&6u16.to_be_bytes());
    assert_eq!(
        Message::parse(&bytes),
        Err(DecodeError::InvalidSyntax("data after last payload"))
    );
    // A next payload announced but absent.
    let mut bytes = single(payload_type::VENDOR_ID, 0, b"abcd");
    bytes[28] = payload_type::NONCE;
    assert!(matches!(
        Message::parse(&bytes),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn sa_golden_esp_proposal() {
    golden(
        payload_type::SA,
        "00 00 0028 01 03 04 03 0a0b0c0d
            03 00 000c 01 00 000c 800e 0100
            03 00 0008 03 00 000c
            00 00 0008 05 00 0000",
        Payload::Sa(vec![Proposal {
            number: 1,
            protocol: ProtocolId::Esp,
            spi: Spi::Child(0x0a0b_0c0d),
            transforms: vec![
                key_len_transform(transform_type::ENCR, 12, Some(256)),
                key_len_transform(transform_type::INTEG, 12, None),
                key_len_transform(transform_type::ESN, esn::NO, None),
            ],
        }]),
    );
}

#[test]
fn sa_structure_lies_rejected() {
    let cases = [
        // Proposal length beyond the payload.
        (
            "00 00 0030 01 03 04 00 0a0b0c0d",
            "proposal length exceeds SA payload",
        ),
        // Last/more neither 0 nor 2.
        (
            "01 00 000c 01 03 04 00 0a0b0c0d",
            "proposal last/more not 0 or 2",
        ),
        // Bad SPI size.
        ("00 00 000b 01 03 03 00 0a0b0c", "SPI size not 0, 4 or 8"),
        // Two transforms announced, one present.
        (
            "00 00 0010 01 01 00 02 00 00 0008 01 00 0014",
            "transform last/more disagrees with count",
        ),
        // One transform announced, two present.
        (
            "00 00 0018 01 01 00 01 03 00 0008 01 00 0014 00 00 0008 02 00 0005",
            "transform last/more disagrees with count",
        ),
        // Transform length beyond the proposal.
        (
            "00 00 0010 01 01 00 01 00 00 0009 01 00 0014",
            "transform length exceeds proposal",
        ),
        // Proposal length below its fixed header.
        ("00 00 0003 01 01 00 00", "proposal length below 4"),
    ];
    for (body, why) in cases {
        let bytes = single(payload_type::SA, 0, &hex(body));
        assert_eq!(
            Message::parse(&bytes),
            Err(DecodeError::InvalidSyntax(why)),
            "{body}"
        );
    }
    let more_without_next = single(payload_type::SA, 0, &hex("02 00 0008 01 01 00 00"));
    assert!(matches!(
        Message::parse(&more_without_next),
        Err(DecodeError::Truncated { .. })
    ));
    // An attribute whose TLV length runs past the transform.
    let bad_attr = single(
        payload_type::SA,
        0,
        &hex("00 00 0014 01 01 00 01 00 00 000c 01 00 0014 000f 0009"),
    );
    assert!(matches!(
        Message::parse(&bad_attr),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn unknown_transform_attributes_are_skipped() {
    // Key Length, then an unknown TV attribute, then a TLV attribute of 3 bytes:
    // all walked, the Key Length kept and the others flagged.
    let body = "00 00 0020 01 01 00 01
                  00 00 0018 01 00 0014 800e 0080 8001 0005 0010 0003 aabbcc";
    // Transform length: 8 fixed + 4 + 4 + 7 attribute bytes = 23.
    let mut b = hex(body);
    b[2..4].copy_from_slice(&(8u16 + 23).to_be_bytes());
    b[10..12].copy_from_slice(&23u16.to_be_bytes());
    let bytes = single(payload_type::SA, 0, &b);
    let msg = Message::parse(&bytes).unwrap();
    let Payload::Sa(proposals) = &msg.payloads[0] else {
        panic!("not an SA")
    };
    assert_eq!(
        proposals[0].transforms,
        vec![Transform {
            transform_type: transform_type::ENCR,
            id: 20,
            key_len: Some(128),
            unknown_attribute: true,
        }]
    );

    let repeated = "00 00 0018 01 01 00 01 00 00 0010 01 00 0014 800e 0080 800e 0100";
    let msg = Message::parse(&single(payload_type::SA, 0, &hex(repeated))).unwrap();
    let Payload::Sa(proposals) = &msg.payloads[0] else {
        panic!("not an SA")
    };
    assert_eq!(proposals[0].transforms[0].key_len, Some(128));
    assert!(proposals[0].transforms[0].unknown_attribute);
}

#[test]
fn ke_golden() {
    golden(
        payload_type::KE,
        "0013 0000 0102030405",
        Payload::Ke(KeyExchange {
            group: 19,
            data: vec![1, 2, 3, 4, 5],
        }),
    );
}

#[test]
fn id_golden() {
    golden(
        payload_type::IDI,
        "02 000000 67772e6578616d706c65",
        Payload::IdI(Identity {
            id_type: id_type::FQDN,
            data: b"gw.example".to_vec(),
        }),
    );
    golden(
        payload_type::IDR,
        "01 000000 c0000201",
        Payload::IdR(Identity {
            id_type: id_type::IPV4_ADDR,
            data: vec![192, 0, 2, 1],
        }),
    );
}

#[test]
fn auth_golden() {
    golden(
        payload_type::AUTH,
        "02 000000 a1a2a3a4",
        Payload::Auth(Auth {
            method: auth_method::SHARED_KEY_MIC,
            data: vec![0xa1, 0xa2, 0xa3, 0xa4],
        }),
    );
}

#[test]
fn nonce_golden_and_bounds() {
    golden(
        payload_type::NONCE,
        &"5c".repeat(16),
        Payload::Nonce(vec![0x5c; 16]),
    );
    golden(
        payload_type::NONCE,
        &"5c".repeat(256),
        Payload::Nonce(vec![0x5c; 256]),
    );
    for len in [0, 15, 257] {
        let bytes = single(payload_type::NONCE, 0, &vec![0; len]);
        assert_eq!(
            Message::parse(&bytes),
            Err(DecodeError::InvalidSyntax("nonce length outside 16..=256"))
        );
    }
}

#[test]
fn notify_golden() {
    golden(
        payload_type::NOTIFY,
        "00 00 4000",
        Payload::Notify(Notify {
            protocol: ProtocolId::Unknown(0),
            spi: Spi::None,
            kind: notify::INITIAL_CONTACT,
            data: vec![],
        }),
    );
    golden(
        payload_type::NOTIFY,
        "03 04 4009 c0ffee01",
        Payload::Notify(Notify {
            protocol: ProtocolId::Esp,
            spi: Spi::Child(0xc0ff_ee01),
            kind: notify::REKEY_SA,
            data: vec![],
        }),
    );
    golden(
        payload_type::NOTIFY,
        "01 08 0011 0102030405060708 001f",
        Payload::Notify(Notify {
            protocol: ProtocolId::Ike,
            spi: Spi::Ike(0x0102_0304_0506_0708),
            kind: notify::INVALID_KE_PAYLOAD,
            data: vec![0, 31],
        }),
    );
    let bad_spi = single(payload_type::NOTIFY, 0, &hex("03 02 4009 0001"));
    assert_eq!(
        Message::parse(&bad_spi),
        Err(DecodeError::InvalidSyntax("SPI size not 0, 4 or 8"))
    );
    let short_spi = single(payload_type::NOTIFY, 0, &hex("03 04 4009 0001"));
    assert!(matches!(
        Message::parse(&short_spi),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn delete_golden_and_consistency() {
    golden(
        payload_type::DELETE,
        "01 00 0000",
        Payload::Delete(Delete {
            protocol: ProtocolId::Ike,
            spis: vec![],
        }),
    );
    golden(
        payload_type::DELETE,
        "03 04 0002 11223344 55667788",
        Payload::Delete(Delete {
            protocol: ProtocolId::Esp,
            spis: vec![0x1122_3344, 0x5566_7788],
        }),
    );
    for (body, why) in [
        (
            "01 08 0001 0102030405060708",
            "Delete SPI size does not fit protocol",
        ),
        ("03 00 0000", "Delete SPI size does not fit protocol"),
        (
            "07 04 0001 11223344",
            "Delete SPI size does not fit protocol",
        ),
        ("01 00 0001", "Delete SPI count does not match length"),
        (
            "03 04 0003 11223344 55667788",
            "Delete SPI count does not match length",
        ),
        (
            "03 04 0001 11223344 55667788",
            "Delete SPI count does not match length",
        ),
    ] {
        let bytes = single(payload_type::DELETE, 0, &hex(body));
        assert_eq!(
            Message::parse(&bytes),
            Err(DecodeError::InvalidSyntax(why)),
            "{body}"
        );
    }
}

#[test]
fn vendor_id_golden() {
    golden(
        payload_type::VENDOR_ID,
        "74616e64656d",
        Payload::VendorId(b"tandem".to_vec()),
    );
}

#[test]
fn ts_golden_and_lengths() {
    golden(
        payload_type::TSI,
        "02 000000
         07 00 0010 0000 ffff 0a000000 0a0000ff
         07 06 0010 01bb 01bb c0000201 c0000201",
        Payload::TsI(vec![
            ts4([10, 0, 0, 0], [10, 0, 0, 255]),
            TrafficSelector {
                ip_protocol: 6,
                start_port: 443,
                end_port: 443,
                start: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
                end: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            },
        ]),
    );
    golden(
        payload_type::TSR,
        "01 000000 08 11 0028 01f4 1194
         20010db8000000000000000000000000 20010db8ffffffffffffffffffffffff",
        Payload::TsR(vec![TrafficSelector {
            ip_protocol: 17,
            start_port: 500,
            end_port: 4500,
            start: IpAddr::V6("2001:db8::".parse().unwrap()),
            end: IpAddr::V6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()),
        }]),
    );
    for (body, why) in [
        (
            "01 000000 07 00 0028 0000 ffff 0a000000 0a0000ff",
            "traffic selector length",
        ),
        (
            "01 000000 08 00 0010 0000 ffff 0a000000 0a0000ff",
            "traffic selector length",
        ),
        (
            "01 000000 09 00 0010 0000 ffff 0a000000 0a0000ff",
            "unsupported traffic selector type",
        ),
        (
            "01 000000 07 00 0010 0000 ffff 0a000000 0a0000ff 00",
            "data after last traffic selector",
        ),
    ] {
        let bytes = single(payload_type::TSR, 0, &hex(body));
        assert_eq!(
            Message::parse(&bytes),
            Err(DecodeError::InvalidSyntax(why)),
            "{body}"
        );
    }
    let missing = single(
        payload_type::TSR,
        0,
        &hex("02 000000 07 00 0010 0000 ffff 0a000000 0a0000ff"),
    );
    assert!(matches!(
        Message::parse(&missing),
        Err(DecodeError::Truncated { .. })
    ));
}

#[test]
fn critical_unknown_payload_preserved() {
    let bytes = single(payload_type::CP, 0x80, &hex("01 000000 0001 0000"));
    let msg = Message::parse(&bytes).unwrap();
    assert_eq!(
        msg.payloads,
        vec![Payload::Unknown {
            payload_type: payload_type::CP,
            critical: true,
            body: hex("01 000000 0001 0000"),
        }]
    );
    assert_eq!(msg.emit(), bytes);
    // The critical bit is meaningless on known payloads and not kept.
    let known = single(payload_type::VENDOR_ID, 0x80, b"x");
    assert_eq!(
        Message::parse(&known).unwrap().payloads,
        vec![Payload::VendorId(b"x".to_vec())]
    );
}

#[test]
fn every_variant_round_trips() {
    let msg = every_payload_message();
    let bytes = msg.emit();
    assert_eq!(Message::parse(&bytes).unwrap(), msg);
    // One variant at a time too, so each is first and last in its chain.
    for payload in every_payload() {
        let one = Message {
            header: header(ExchangeType::Informational),
            payloads: vec![payload],
        };
        assert_eq!(Message::parse(&one.emit()).unwrap(), one);
    }
}

#[test]
fn too_many_payloads_rejected() {
    let payload = Payload::VendorId(vec![1]);
    let ok = Message {
        header: header(ExchangeType::Informational),
        payloads: vec![payload.clone(); MAX_PAYLOADS],
    };
    assert_eq!(Message::parse(&ok.emit()).unwrap(), ok);
    let too_many = Message {
        header: ok.header,
        payloads: vec![payload; MAX_PAYLOADS + 1],
    };
    assert_eq!(
        Message::parse(&too_many.emit()),
        Err(DecodeError::TooManyPayloads)
    );
}

#[test]
fn truncated_prefixes_error_out() {
    let bytes = every_payload_message().emit();
    for len in 0..bytes.len() {
        let prefix = &bytes[..len];
        assert!(Message::parse(prefix).is_err(), "prefix {len}");
        // Same prefix with the header length made to agree, so the payload walk
        // rather than the header check has to notice.
        if len >= Header::LEN {
            let mut agreed = prefix.to_vec();
            agreed[24..28].copy_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            assert!(Message::parse(&agreed).is_err(), "agreed prefix {len}");
        }
    }
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut buf = Vec::new();
    for i in 0..20_000 {
        let len = rng.below(400);
        buf.clear();
        buf.extend((0..len).map(|_| rng.next() as u8));
        // Most iterations get a plausible header so the payload walk is reached.
        if i % 4 != 0 && len >= Header::LEN {
            buf[17] = 0x20;
            buf[24..28].copy_from_slice(&u32::try_from(len).unwrap().to_be_bytes());
            let kinds = [33, 34, 35, 39, 40, 41, 42, 43, 44, 45, 47, 0];
            buf[16] = kinds[rng.below(kinds.len())];
        }
        let _ = Header::parse(&buf);
        if let Ok(msg) = Message::parse(&buf) {
            assert_round_trips(&msg);
        }
    }
}

#[test]
fn mutated_messages_never_panic() {
    let valid = every_payload_message().emit();
    let mut rng = XorShift(42);
    for _ in 0..20_000 {
        let mut buf = valid.clone();
        for _ in 0..=rng.below(4) {
            let at = rng.below(buf.len());
            buf[at] = rng.next() as u8;
        }
        if let Ok(msg) = Message::parse(&buf) {
            assert_round_trips(&msg);
        }
    }
}

#[test]
fn sk_in_clear_chain() {
    let sk = single(payload_type::SK, 0, &[0; 24]);
    assert_eq!(Message::parse(&sk), Err(DecodeError::Encrypted));
    assert_eq!(
        Header::parse(&sk).unwrap().exchange,
        ExchangeType::Informational
    );

    let skf = single(payload_type::SKF, 0, &[0; 24]);
    assert_eq!(
        Message::parse(&skf),
        Err(DecodeError::InvalidSyntax("fragmented message"))
    );

    // A clear payload chained to SK.
    let mut before = single(payload_type::VENDOR_ID, 0, b"v");
    before[28] = payload_type::SK;
    before.extend_from_slice(&[0, 0, 0, 4]);
    let len = u32::try_from(before.len()).unwrap();
    before[24..28].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        Message::parse(&before),
        Err(DecodeError::InvalidSyntax("payload before SK payload"))
    );
}

// The tests below need `SaCipher`, which the crypto work fills in.

#[test]
fn encrypted_round_trip_gcm256() {
    encrypted_round_trip(&gcm256());
}

#[test]
fn encrypted_round_trip_cbc256_hmac_sha256() {
    encrypted_round_trip(&cbc256_sha256());
}

fn encrypted_round_trip(cipher: &SaCipher) {
    let mut rng = SeededRandom::new(1);
    let msg = every_payload_message();
    let bytes = msg.emit_encrypted(cipher, &mut rng);
    assert_eq!(Header::parse(&bytes).unwrap(), msg.header);
    assert_eq!(bytes[16], payload_type::SK);
    assert_eq!(
        bytes[28],
        payload_type::SA,
        "SK next payload is the first inner one"
    );
    assert_eq!(
        usize::from(u16::from_be_bytes([bytes[30], bytes[31]])),
        bytes.len() - 28
    );
    assert_eq!(Message::parse(&bytes), Err(DecodeError::Encrypted));
    assert_eq!(Message::decrypt(&bytes, cipher).unwrap(), msg);

    // An empty INFORMATIONAL (liveness check) is all padding.
    let empty = Message {
        header: header(ExchangeType::Informational),
        payloads: vec![],
    };
    let bytes = empty.emit_encrypted(cipher, &mut rng);
    assert_eq!(bytes[28], payload_type::NONE);
    assert_eq!(Message::decrypt(&bytes, cipher).unwrap(), empty);

    // Every byte is authenticated: header, SK header, IV, ciphertext and ICV.
    let bytes = msg.emit_encrypted(cipher, &mut rng);
    for at in [0, 19, 20, 29, 32, 40, bytes.len() - 20, bytes.len() - 1] {
        let mut tampered = bytes.clone();
        tampered[at] ^= 0x01;
        let result = Message::decrypt(&tampered, cipher);
        assert!(result.is_err(), "flip at {at} accepted");
        if at >= 32 {
            assert_eq!(
                result,
                Err(DecodeError::Crypto(CryptoError::Authentication)),
                "at {at}"
            );
        }
    }

    // Truncation anywhere never panics and never decrypts.
    for len in 0..bytes.len() {
        let mut prefix = bytes[..len].to_vec();
        assert!(Message::decrypt(&prefix, cipher).is_err());
        if len >= 32 {
            let l = u32::try_from(len).unwrap();
            prefix[24..28].copy_from_slice(&l.to_be_bytes());
            prefix[30..32].copy_from_slice(&u16::try_from(len - 28).unwrap().to_be_bytes());
            assert!(Message::decrypt(&prefix, cipher).is_err());
        }
    }
}

#[test]
fn decrypt_rejects_structural_errors() {
    let cipher = gcm256();
    let clear = every_payload_message().emit();
    assert_eq!(
        Message::decrypt(&clear, &cipher),
        Err(DecodeError::NotEncrypted)
    );
    let skf = single(payload_type::SKF, 0, &[0; 24]);
    assert_eq!(
        Message::decrypt(&skf, &cipher),
        Err(DecodeError::InvalidSyntax("fragmented message"))
    );
    let mut bytes = every_payload_message().emit_encrypted(&cipher, &mut SeededRandom::new(2));
    let sk_len = u16::from_be_bytes([bytes[30], bytes[31]]);
    bytes[30..32].copy_from_slice(&(sk_len - 1).to_be_bytes());
    assert_eq!(
        Message::decrypt(&bytes, &cipher),
        Err(DecodeError::InvalidSyntax(
            "SK payload does not end the message"
        ))
    );
}

/// Seals a hand-built SK plaintext, to reach the checks after decryption.
fn seal_plaintext(cipher: &SaCipher, first_inner: u8, plaintext: &[u8]) -> Vec<u8> {
    let len = 32 + cipher.iv_len() + plaintext.len() + cipher.icv_len();
    let mut out = header_bytes(37, payload_type::SK, len);
    out.extend_from_slice(&[first_inner, 0]);
    out.extend_from_slice(&u16::try_from(len - 28).unwrap().to_be_bytes());
    out.resize(32 + cipher.iv_len(), 0);
    out.extend_from_slice(plaintext);
    out.resize(len, 0);
    cipher.seal(&mut out, 32, 5, None).unwrap();
    out
}

#[test]
fn decrypted_padding_and_inner_chain_checked() {
    let cipher = cbc256_sha256();
    // Pad Length 15 is the whole block: an empty chain.
    let mut plaintext = [0u8; 16];
    plaintext[15] = 15;
    let msg = Message::decrypt(&seal_plaintext(&cipher, 0, &plaintext), &cipher).unwrap();
    assert!(msg.payloads.is_empty());
    // Pad Length 16 does not fit in 15 bytes.
    plaintext[15] = 16;
    assert_eq!(
        Message::decrypt(&seal_plaintext(&cipher, 0, &plaintext), &cipher),
        Err(DecodeError::InvalidSyntax("pad length exceeds plaintext"))
    );
    // An SK inside SK.
    let mut nested = [0u8; 16];
    nested[..4].copy_from_slice(&[0, 0, 0, 8]);
    nested[15] = 11;
    assert_eq!(
        Message::decrypt(&seal_plaintext(&cipher, payload_type::SK, &nested), &cipher),
        Err(DecodeError::InvalidSyntax("SK payload inside SK"))
    );
    // The inner chain is walked with the same checks as the clear one.
    let mut lying = [0u8; 16];
    lying[..4].copy_from_slice(&[0, 0, 0, 40]);
    lying[15] = 11;
    assert_eq!(
        Message::decrypt(
            &seal_plaintext(&cipher, payload_type::VENDOR_ID, &lying),
            &cipher
        ),
        Err(DecodeError::InvalidSyntax("payload length exceeds message"))
    );
}
