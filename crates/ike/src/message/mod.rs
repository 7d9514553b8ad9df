//! IKEv2 messages as plain structs, with checked parsing and emitting
//! (RFC 7296 section 3). Every parser assumes a hostile peer: lengths are checked
//! before every access and nothing allocates more than the datagram's size.

use std::net::IpAddr;

mod codec;

pub use codec::DecodeError;

/// Largest IKE message we accept or build. IKE over UDP without fragmentation
/// cannot usefully exceed a jumbo datagram; bounding it bounds every allocation.
pub const MAX_MESSAGE_LEN: usize = 65_535;
/// Most payloads in one message (inner payloads of SK included).
pub const MAX_PAYLOADS: usize = 64;

/// The fixed IKE header (RFC 7296 section 3.1). `next_payload` and `length` are
/// computed by the emitter and checked by the parser, so they are not fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub spi_i: u64,
    /// Zero in the first IKE_SA_INIT request.
    pub spi_r: u64,
    pub exchange: ExchangeType,
    /// The sender is the original initiator of the IKE SA (I flag).
    pub initiator: bool,
    /// This message is a response (R flag).
    pub response: bool,
    pub message_id: u32,
}

/// Exchange types (RFC 7296 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExchangeType {
    IkeSaInit,
    IkeAuth,
    CreateChildSa,
    Informational,
    Unknown(u8),
}

impl ExchangeType {
    pub fn from_u8(v: u8) -> Self {
        match v {
            34 => Self::IkeSaInit,
            35 => Self::IkeAuth,
            36 => Self::CreateChildSa,
            37 => Self::Informational,
            other => Self::Unknown(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::IkeSaInit => 34,
            Self::IkeAuth => 35,
            Self::CreateChildSa => 36,
            Self::Informational => 37,
            Self::Unknown(v) => v,
        }
    }
}

/// A whole IKE message. For exchanges other than IKE_SA_INIT, `payloads` are the
/// payloads inside the Encrypted (SK) payload; the emitter wraps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub payloads: Vec<Payload>,
}

/// One payload (RFC 7296 section 3.2 onwards).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Sa(Vec<Proposal>),
    Ke(KeyExchange),
    IdI(Identity),
    IdR(Identity),
    Auth(Auth),
    Nonce(Vec<u8>),
    Notify(Notify),
    Delete(Delete),
    VendorId(Vec<u8>),
    TsI(Vec<TrafficSelector>),
    TsR(Vec<TrafficSelector>),
    /// Any other payload type (CERT, CERTREQ, CP, EAP...), kept so the state
    /// machine can answer UNSUPPORTED_CRITICAL_PAYLOAD when `critical` is set.
    Unknown {
        payload_type: u8,
        critical: bool,
        body: Vec<u8>,
    },
}

/// Payload type numbers (RFC 7296 section 3.2).
pub mod payload_type {
    pub const NONE: u8 = 0;
    pub const SA: u8 = 33;
    pub const KE: u8 = 34;
    pub const IDI: u8 = 35;
    pub const IDR: u8 = 36;
    pub const CERT: u8 = 37;
    pub const CERTREQ: u8 = 38;
    pub const AUTH: u8 = 39;
    pub const NONCE: u8 = 40;
    pub const NOTIFY: u8 = 41;
    pub const DELETE: u8 = 42;
    pub const VENDOR_ID: u8 = 43;
    pub const TSI: u8 = 44;
    pub const TSR: u8 = 45;
    pub const SK: u8 = 46;
    pub const CP: u8 = 47;
    pub const EAP: u8 = 48;
    /// RFC 7383 Encrypted Fragment; we never advertise fragmentation.
    pub const SKF: u8 = 53;
}

/// Security protocol identifiers (RFC 7296 section 3.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolId {
    Ike,
    Ah,
    Esp,
    Unknown(u8),
}

impl ProtocolId {
    pub fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Ike,
            2 => Self::Ah,
            3 => Self::Esp,
            other => Self::Unknown(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Ike => 1,
            Self::Ah => 2,
            Self::Esp => 3,
            Self::Unknown(v) => v,
        }
    }
}

/// An SPI as carried in proposals and notifies: none, 4 bytes (ESP/AH) or 8 bytes
/// (IKE SA rekey).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Spi {
    None,
    Child(u32),
    Ike(u64),
}

/// One proposal of an SA payload (RFC 7296 section 3.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// 1-based, as on the wire; the responder echoes the number it chose.
    pub number: u8,
    pub protocol: ProtocolId,
    pub spi: Spi,
    pub transforms: Vec<Transform>,
}

/// Transform types (RFC 7296 section 3.3.2).
pub mod transform_type {
    pub const ENCR: u8 = 1;
    pub const PRF: u8 = 2;
    pub const INTEG: u8 = 3;
    pub const DH: u8 = 4;
    pub const ESN: u8 = 5;
}

/// One transform (RFC 7296 section 3.3.2). Only the Key Length attribute (14) is
/// understood; a transform with any other attribute is kept with
/// `unknown_attribute` set so proposal matching skips it (section 3.3.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Transform {
    pub transform_type: u8,
    pub id: u16,
    pub key_len: Option<u16>,
    pub unknown_attribute: bool,
}

/// ESN transform IDs.
pub mod esn {
    pub const NO: u16 = 0;
    pub const YES: u16 = 1;
}

/// Key Exchange payload (RFC 7296 section 3.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyExchange {
    pub group: u16,
    pub data: Vec<u8>,
}

/// Identification payload (RFC 7296 section 3.5).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    pub id_type: u8,
    pub data: Vec<u8>,
}

/// ID types.
pub mod id_type {
    pub const IPV4_ADDR: u8 = 1;
    pub const FQDN: u8 = 2;
    pub const RFC822_ADDR: u8 = 3;
    pub const IPV6_ADDR: u8 = 5;
    pub const KEY_ID: u8 = 11;
}

/// Authentication payload (RFC 7296 section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Auth {
    pub method: u8,
    pub data: Vec<u8>,
}

/// Authentication methods.
pub mod auth_method {
    pub const SHARED_KEY_MIC: u8 = 2;
}

/// Notify payload (RFC 7296 section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notify {
    /// `ProtocolId::Unknown(0)` when no SPI applies.
    pub protocol: ProtocolId,
    pub spi: Spi,
    pub kind: u16,
    pub data: Vec<u8>,
}

/// Notify message types (RFC 7296 section 3.10.1 and later RFCs).
pub mod notify {
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    pub const INVALID_IKE_SPI: u16 = 4;
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    pub const INVALID_SYNTAX: u16 = 7;
    pub const INVALID_MESSAGE_ID: u16 = 9;
    pub const INVALID_SPI: u16 = 11;
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    pub const AUTHENTICATION_FAILED: u16 = 24;
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    pub const INTERNAL_ADDRESS_FAILURE: u16 = 36;
    pub const FAILED_CP_REQUIRED: u16 = 37;
    pub const TS_UNACCEPTABLE: u16 = 38;
    pub const INVALID_SELECTORS: u16 = 39;
    pub const TEMPORARY_FAILURE: u16 = 43;
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    /// Error types are below this; status types at or above it.
    pub const FIRST_STATUS: u16 = 16384;
    pub const INITIAL_CONTACT: u16 = 16384;
    pub const SET_WINDOW_SIZE: u16 = 16385;
    pub const ADDITIONAL_TS_POSSIBLE: u16 = 16386;
    pub const IPCOMP_SUPPORTED: u16 = 16387;
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    pub const COOKIE: u16 = 16390;
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    pub const REKEY_SA: u16 = 16393;
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;
    pub const NON_FIRST_FRAGMENTS_ALSO: u16 = 16395;
    pub const MOBIKE_SUPPORTED: u16 = 16396;
    pub const IKEV2_MESSAGE_ID_SYNC_SUPPORTED: u16 = 16420;
    pub const IPSEC_REPLAY_COUNTER_SYNC_SUPPORTED: u16 = 16421;
    pub const IKEV2_FRAGMENTATION_SUPPORTED: u16 = 16430;
    pub const SIGNATURE_HASH_ALGORITHMS: u16 = 16431;
}

/// Delete payload (RFC 7296 section 3.11). For `ProtocolId::Ike` the SPI list is
/// empty (the IKE SA of the message is meant); for ESP/AH each SPI is 4 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delete {
    pub protocol: ProtocolId,
    pub spis: Vec<u32>,
}

/// One traffic selector (RFC 7296 section 3.13.1). `start` and `end` are of the
/// same address family; the TS type (7 or 8) follows from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct TrafficSelector {
    /// 0 means any protocol.
    pub ip_protocol: u8,
    pub start_port: u16,
    pub end_port: u16,
    pub start: IpAddr,
    pub end: IpAddr,
}
