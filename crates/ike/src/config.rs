//! Connection configuration: proposals in strongSwan's syntax, identities, limits.
//!
//! The syntax follows strongSwan's `ike=`/`esp=` proposal strings so that an
//! operator can copy the peer's configuration across unchanged. Weak algorithms
//! are refused here, at configuration time, rather than silently never matching.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use tandem_crypto::{DhGroup, EncrAlg, IntegAlg, PrfAlg, Secret};

use crate::message::{Identity, TrafficSelector, id_type};

/// One IKE SA proposal: a single algorithm of each kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct IkeProposal {
    pub encr: EncrAlg,
    /// `None` for AES-GCM, which authenticates by itself.
    pub integ: Option<IntegAlg>,
    pub prf: PrfAlg,
    pub dh: DhGroup,
}

/// One ESP (child SA) proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct EspProposal {
    pub encr: EncrAlg,
    pub integ: Option<IntegAlg>,
    /// PFS group for CREATE_CHILD_SA (new children and rekeys); never used in
    /// IKE_AUTH, whose child takes its keys from the IKE SA's exchange.
    pub dh: Option<DhGroup>,
    pub esn: bool,
}

/// Why a proposal or identity string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProposalError {
    #[error("empty proposal")]
    Empty,
    #[error("algorithm `{0}` is unsupported or weak")]
    Unsupported(String),
    #[error("`{0}` is not allowed in this kind of proposal")]
    Misplaced(String),
    #[error("more than one {kind} algorithm (`{token}`)")]
    Duplicate { kind: &'static str, token: String },
    #[error("proposal has no encryption algorithm")]
    MissingEncryption,
    #[error("AES-CBC needs an integrity algorithm (e.g. sha256)")]
    MissingIntegrity,
    #[error("AES-GCM IKE proposal needs a PRF (e.g. prfsha256)")]
    MissingPrf,
    #[error("IKE proposal needs a DH group (e.g. curve25519)")]
    MissingDh,
    #[error("AES-GCM takes no integrity algorithm (`{0}`)")]
    IntegrityWithAead(String),
    #[error("invalid identity `{0}`")]
    InvalidIdentity(String),
}

/// One tunnel as configured by the operator.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConnectionConfig {
    pub name: String,
    /// Our IKE address (the tunnel's VIP).
    pub local_addr: IpAddr,
    /// The peer; `None` accepts any address (responder only).
    pub remote_addr: Option<IpAddr>,
    pub local_id: Identity,
    pub remote_id: Identity,
    pub psk: Secret,
    pub ike_proposals: Vec<IkeProposal>,
    pub esp_proposals: Vec<EspProposal>,
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
    /// Rekey the IKE SA after this (less up to 10% jitter).
    pub ike_lifetime: Duration,
    /// Rekey child SAs after this (less up to 10% jitter).
    pub child_lifetime: Duration,
    pub dpd_delay: Option<Duration>,
}

#[cfg(feature = "testing")]
impl ConnectionConfig {
    /// Connection `name` between documentation addresses, every field set
    /// (a PSK, AES-GCM with Curve25519, 10.1.0.0/16 to 10.2.0.0/16): for the
    /// tests of the crates that store and run connections.
    #[allow(clippy::unwrap_used)]
    pub fn for_tests(name: &str) -> Self {
        let ts = |a: [u8; 2]| crate::message::TrafficSelector {
            ip_protocol: 0,
            start_port: 0,
            end_port: u16::MAX,
            start: IpAddr::from([a[0], a[1], 0, 0]),
            end: IpAddr::from([a[0], a[1], 255, 255]),
        };
        ConnectionConfig {
            name: name.to_owned(),
            local_addr: IpAddr::from([192, 0, 2, 1]),
            remote_addr: Some(IpAddr::from([198, 51, 100, 1])),
            local_id: parse_identity("192.0.2.1").unwrap(),
            remote_id: parse_identity("198.51.100.1").unwrap(),
            psk: Secret::from_slice(b"a-long-test-secret"),
            ike_proposals: vec![parse_ike_proposal("aes256gcm16-prfsha256-curve25519").unwrap()],
            esp_proposals: vec![parse_esp_proposal("aes256gcm16").unwrap()],
            local_ts: vec![ts([10, 2])],
            remote_ts: vec![ts([10, 1])],
            ike_lifetime: Duration::from_secs(28_800),
            child_lifetime: Duration::from_secs(3_600),
            dpd_delay: Some(Duration::from_secs(30)),
        }
    }
}

/// Resource limits against IKE_SA_INIT floods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Half-open SAs before IKE_SA_INIT requests must carry a COOKIE.
    pub cookie_threshold: usize,
    /// Half-open SAs beyond which IKE_SA_INIT requests are dropped.
    pub max_half_open: usize,
    /// Half-open SAs one source may hold; its further IKE_SA_INIT requests
    /// are dropped until one completes or times out (strongSwan's
    /// `block_threshold`), so one address that answers cookies cannot take
    /// every slot of `max_half_open`. An IPv6 source counts per /64: a host
    /// there picks addresses from the whole prefix at will.
    pub max_half_open_per_source: usize,
    /// How long one cookie secret is current (RFC 7296 section 2.6). The
    /// previous one still verifies for as long again, so a cookie stays
    /// valid for one to two lifetimes; at least a second is used, since a
    /// peer needs a round trip to return its cookie.
    pub cookie_secret_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            cookie_threshold: 64,
            max_half_open: 4096,
            max_half_open_per_source: 5,
            cookie_secret_lifetime: Duration::from_secs(300),
        }
    }
}

/// A proposal token, classified.
enum Token {
    Encr(EncrAlg),
    /// A bare hash: integrity, and in IKE also the PRF of the same hash.
    Hash(IntegAlg, PrfAlg),
    Prf(PrfAlg),
    Dh(DhGroup),
    Esn(bool),
}

fn token(s: &str) -> Result<Token, ProposalError> {
    let t = match s {
        "aes128" => Token::Encr(EncrAlg::AesCbc { key_bits: 128 }),
        "aes256" => Token::Encr(EncrAlg::AesCbc { key_bits: 256 }),
        "aes128gcm16" | "aes128gcm128" => Token::Encr(EncrAlg::AesGcm16 { key_bits: 128 }),
        "aes256gcm16" | "aes256gcm128" => Token::Encr(EncrAlg::AesGcm16 { key_bits: 256 }),
        "sha1" => Token::Hash(IntegAlg::HmacSha1_96, PrfAlg::HmacSha1),
        "sha256" => Token::Hash(IntegAlg::HmacSha256_128, PrfAlg::HmacSha256),
        "sha384" => Token::Hash(IntegAlg::HmacSha384_192, PrfAlg::HmacSha384),
        "sha512" => Token::Hash(IntegAlg::HmacSha512_256, PrfAlg::HmacSha512),
        "prfsha1" => Token::Prf(PrfAlg::HmacSha1),
        "prfsha256" => Token::Prf(PrfAlg::HmacSha256),
        "prfsha384" => Token::Prf(PrfAlg::HmacSha384),
        "prfsha512" => Token::Prf(PrfAlg::HmacSha512),
        "modp2048" => Token::Dh(DhGroup::Modp2048),
        "ecp256" => Token::Dh(DhGroup::Ecp256),
        "ecp384" => Token::Dh(DhGroup::Ecp384),
        "curve25519" | "x25519" => Token::Dh(DhGroup::Curve25519),
        "esn" => Token::Esn(true),
        "noesn" => Token::Esn(false),
        other => return Err(ProposalError::Unsupported(other.to_owned())),
    };
    Ok(t)
}

/// Sets `slot` once; a second algorithm of the same kind is a configuration error
/// because a Tandem proposal carries exactly one of each.
fn set_once<T>(
    slot: &mut Option<T>,
    value: T,
    kind: &'static str,
    tok: &str,
) -> Result<(), ProposalError> {
    if slot.is_some() {
        return Err(ProposalError::Duplicate {
            kind,
            token: tok.to_owned(),
        });
    }
    *slot = Some(value);
    Ok(())
}

/// Parses an IKE proposal such as `aes256gcm16-prfsha384-ecp384` or
/// `aes128-sha256-modp2048`.
pub fn parse_ike_proposal(s: &str) -> Result<IkeProposal, ProposalError> {
    let (mut encr, mut hash, mut prf, mut dh) = (None, None, None, None);
    for tok in s.trim().split('-').filter(|t| !t.is_empty()) {
        match token(&tok.to_ascii_lowercase())? {
            Token::Encr(e) => set_once(&mut encr, e, "encryption", tok)?,
            Token::Hash(i, p) => set_once(&mut hash, (i, p), "integrity", tok)?,
            Token::Prf(p) => set_once(&mut prf, p, "PRF", tok)?,
            Token::Dh(g) => set_once(&mut dh, g, "DH", tok)?,
            Token::Esn(_) => return Err(ProposalError::Misplaced(tok.to_owned())),
        }
    }
    if (encr, hash, prf, dh) == (None, None, None, None) {
        return Err(ProposalError::Empty);
    }
    let encr = encr.ok_or(ProposalError::MissingEncryption)?;
    let integ = if encr.is_aead() {
        None
    } else {
        Some(hash.ok_or(ProposalError::MissingIntegrity)?.0)
    };
    let prf = prf
        .or(hash.map(|(_, p)| p))
        .ok_or(ProposalError::MissingPrf)?;
    let dh = dh.ok_or(ProposalError::MissingDh)?;
    Ok(IkeProposal {
        encr,
        integ,
        prf,
        dh,
    })
}

/// Parses an ESP proposal such as `aes128gcm16-modp2048-esn` or `aes256-sha512`.
pub fn parse_esp_proposal(s: &str) -> Result<EspProposal, ProposalError> {
    let (mut encr, mut integ, mut dh, mut esn) = (None, None, None, None);
    let mut any = false;
    for tok in s.trim().split('-').filter(|t| !t.is_empty()) {
        any = true;
        match token(&tok.to_ascii_lowercase())? {
            Token::Encr(e) => set_once(&mut encr, e, "encryption", tok)?,
            Token::Hash(i, _) => set_once(&mut integ, (i, tok.to_owned()), "integrity", tok)?,
            Token::Dh(g) => set_once(&mut dh, g, "DH", tok)?,
            Token::Esn(e) => set_once(&mut esn, e, "ESN", tok)?,
            Token::Prf(_) => return Err(ProposalError::Misplaced(tok.to_owned())),
        }
    }
    if !any {
        return Err(ProposalError::Empty);
    }
    let encr = encr.ok_or(ProposalError::MissingEncryption)?;
    let integ = match (encr.is_aead(), integ) {
        (true, Some((_, tok))) => return Err(ProposalError::IntegrityWithAead(tok)),
        (true, None) => None,
        (false, Some((i, _))) => Some(i),
        (false, None) => return Err(ProposalError::MissingIntegrity),
    };
    Ok(EspProposal {
        encr,
        integ,
        dh,
        esn: esn.unwrap_or(false),
    })
}

fn encr_token(e: EncrAlg) -> &'static str {
    match e {
        EncrAlg::AesCbc { key_bits: 128 } => "aes128",
        EncrAlg::AesCbc { .. } => "aes256",
        EncrAlg::AesGcm16 { key_bits: 128 } => "aes128gcm16",
        EncrAlg::AesGcm16 { .. } => "aes256gcm16",
    }
}

fn hash_token(i: IntegAlg) -> &'static str {
    match i {
        IntegAlg::HmacSha1_96 => "sha1",
        IntegAlg::HmacSha256_128 => "sha256",
        IntegAlg::HmacSha384_192 => "sha384",
        IntegAlg::HmacSha512_256 => "sha512",
    }
}

fn prf_token(p: PrfAlg) -> &'static str {
    match p {
        PrfAlg::HmacSha1 => "prfsha1",
        PrfAlg::HmacSha256 => "prfsha256",
        PrfAlg::HmacSha384 => "prfsha384",
        PrfAlg::HmacSha512 => "prfsha512",
    }
}

fn dh_token(g: DhGroup) -> &'static str {
    match g {
        DhGroup::Modp2048 => "modp2048",
        DhGroup::Ecp256 => "ecp256",
        DhGroup::Ecp384 => "ecp384",
        DhGroup::Curve25519 => "curve25519",
    }
}

/// The PRF a bare hash token implies, to print `aes128-sha256-modp2048` rather
/// than the redundant `aes128-sha256-prfsha256-modp2048`.
fn implied_prf(i: IntegAlg) -> PrfAlg {
    match i {
        IntegAlg::HmacSha1_96 => PrfAlg::HmacSha1,
        IntegAlg::HmacSha256_128 => PrfAlg::HmacSha256,
        IntegAlg::HmacSha384_192 => PrfAlg::HmacSha384,
        IntegAlg::HmacSha512_256 => PrfAlg::HmacSha512,
    }
}

impl fmt::Display for IkeProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(encr_token(self.encr))?;
        if let Some(i) = self.integ {
            write!(f, "-{}", hash_token(i))?;
        }
        if self.integ.map(implied_prf) != Some(self.prf) {
            write!(f, "-{}", prf_token(self.prf))?;
        }
        write!(f, "-{}", dh_token(self.dh))
    }
}

impl fmt::Display for EspProposal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(encr_token(self.encr))?;
        if let Some(i) = self.integ {
            write!(f, "-{}", hash_token(i))?;
        }
        if let Some(g) = self.dh {
            write!(f, "-{}", dh_token(g))?;
        }
        if self.esn {
            f.write_str("-esn")?;
        }
        Ok(())
    }
}

/// Parses an identity the way strongSwan reads `leftid`/`rightid`: an IP literal
/// is an address ID, `@#hex` a key ID, `user@host` an RFC 822 address, anything
/// else an FQDN (a leading `@` only forces FQDN and is stripped).
pub fn parse_identity(s: &str) -> Result<Identity, ProposalError> {
    let s = s.trim();
    let invalid = || ProposalError::InvalidIdentity(s.to_owned());
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(match ip {
            IpAddr::V4(v4) => Identity {
                id_type: id_type::IPV4_ADDR,
                data: v4.octets().to_vec(),
            },
            IpAddr::V6(v6) => Identity {
                id_type: id_type::IPV6_ADDR,
                data: v6.octets().to_vec(),
            },
        });
    }
    if let Some(hex) = s.strip_prefix("@#") {
        return decode_hex(hex)
            .filter(|d| !d.is_empty())
            .map(|data| Identity {
                id_type: id_type::KEY_ID,
                data,
            })
            .ok_or_else(invalid);
    }
    if let Some(fqdn) = s.strip_prefix('@') {
        if fqdn.is_empty() {
            return Err(invalid());
        }
        return Ok(Identity {
            id_type: id_type::FQDN,
            data: fqdn.as_bytes().to_vec(),
        });
    }
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return Err(invalid());
    }
    let id_type = if s.contains('@') {
        id_type::RFC822_ADDR
    } else {
        id_type::FQDN
    };
    Ok(Identity {
        id_type,
        data: s.as_bytes().to_vec(),
    })
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ike_proposals_parse_and_print_back() {
        for (text, printed) in [
            (
                "aes128gcm16-prfsha256-curve25519",
                "aes128gcm16-prfsha256-curve25519",
            ),
            (
                "aes256gcm128-prfsha384-ecp384",
                "aes256gcm16-prfsha384-ecp384",
            ),
            (
                "aes256gcm16-sha384-x25519",
                "aes256gcm16-prfsha384-curve25519",
            ),
            ("aes128-sha256-modp2048", "aes128-sha256-modp2048"),
            ("aes256-sha1-ecp256", "aes256-sha1-ecp256"),
            (
                "aes256-sha512-prfsha256-ecp256",
                "aes256-sha512-prfsha256-ecp256",
            ),
        ] {
            let p = parse_ike_proposal(text).unwrap();
            assert_eq!(p.to_string(), printed, "{text}");
            assert_eq!(parse_ike_proposal(printed).unwrap(), p);
        }
        let p = parse_ike_proposal("aes128-sha384-ecp256").unwrap();
        assert_eq!(p.integ, Some(IntegAlg::HmacSha384_192));
        assert_eq!(p.prf, PrfAlg::HmacSha384);
        let p = parse_ike_proposal("aes256gcm16-prfsha512-modp2048").unwrap();
        assert_eq!(p.encr, EncrAlg::AesGcm16 { key_bits: 256 });
        assert_eq!(p.integ, None);
    }

    #[test]
    fn esp_proposals_parse_and_print_back() {
        for (text, printed) in [
            ("aes128gcm16", "aes128gcm16"),
            ("aes256gcm16-modp2048-esn", "aes256gcm16-modp2048-esn"),
            ("aes128-sha256-noesn", "aes128-sha256"),
            ("aes256-sha512-curve25519", "aes256-sha512-curve25519"),
        ] {
            let p = parse_esp_proposal(text).unwrap();
            assert_eq!(p.to_string(), printed, "{text}");
            assert_eq!(parse_esp_proposal(printed).unwrap(), p);
        }
    }

    #[test]
    fn weak_and_unknown_algorithms_are_named() {
        for (text, bad) in [
            ("3des-sha1-modp2048", "3des"),
            ("aes128-md5-modp2048", "md5"),
            ("aes128-sha256-modp1024", "modp1024"),
            ("des-sha1-modp768", "des"),
            ("aes128-sha256-modp768", "modp768"),
        ] {
            let e = parse_ike_proposal(text).unwrap_err();
            assert_eq!(e, ProposalError::Unsupported(bad.to_owned()));
            let msg = e.to_string();
            assert!(
                msg.contains(bad) && msg.contains("unsupported or weak"),
                "{msg}"
            );
        }
        assert_eq!(
            parse_esp_proposal("aes128-sha1-3des").unwrap_err(),
            ProposalError::Unsupported("3des".into())
        );
    }

    #[test]
    fn incomplete_proposals_are_rejected() {
        assert_eq!(parse_ike_proposal(""), Err(ProposalError::Empty));
        assert_eq!(
            parse_ike_proposal("aes128-modp2048"),
            Err(ProposalError::MissingIntegrity)
        );
        assert_eq!(
            parse_ike_proposal("aes128gcm16-ecp256"),
            Err(ProposalError::MissingPrf)
        );
        assert_eq!(
            parse_ike_proposal("aes128-sha256"),
            Err(ProposalError::MissingDh)
        );
        assert_eq!(
            parse_ike_proposal("sha256-ecp256"),
            Err(ProposalError::MissingEncryption)
        );
        assert!(matches!(
            parse_ike_proposal("aes128-aes256-sha1-ecp256"),
            Err(ProposalError::Duplicate { .. })
        ));
        assert!(matches!(
            parse_ike_proposal("aes128-sha1-ecp256-esn"),
            Err(ProposalError::Misplaced(_))
        ));
        assert!(matches!(
            parse_esp_proposal("aes128gcm16-sha256"),
            Err(ProposalError::IntegrityWithAead(_))
        ));
        assert!(matches!(
            parse_esp_proposal("aes128gcm16-prfsha256"),
            Err(ProposalError::Misplaced(_))
        ));
        assert_eq!(
            parse_esp_proposal("aes128"),
            Err(ProposalError::MissingIntegrity)
        );
    }

    #[test]
    fn identities() {
        let id = parse_identity("192.0.2.1").unwrap();
        assert_eq!(
            (id.id_type, id.data),
            (id_type::IPV4_ADDR, vec![192, 0, 2, 1])
        );
        let id = parse_identity("2001:db8::1").unwrap();
        assert_eq!(id.id_type, id_type::IPV6_ADDR);
        assert_eq!(id.data.len(), 16);
        let id = parse_identity("@#0a0B").unwrap();
        assert_eq!((id.id_type, id.data), (id_type::KEY_ID, vec![0x0a, 0x0b]));
        let id = parse_identity("vpn@example.com").unwrap();
        assert_eq!(id.id_type, id_type::RFC822_ADDR);
        let id = parse_identity("@gw.example.com").unwrap();
        assert_eq!(
            (id.id_type, id.data),
            (id_type::FQDN, b"gw.example.com".to_vec())
        );
        let id = parse_identity("gw.example.com").unwrap();
        assert_eq!(id.id_type, id_type::FQDN);
        for bad in ["", "@", "@#", "@#abc", "@#zz", "two words"] {
            assert!(parse_identity(bad).is_err(), "{bad:?}");
        }
    }
}
