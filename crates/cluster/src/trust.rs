//! Who is calling, and what that caller may do (DESIGN.md invariant 8,
//! STYLE.md rule 14). Every RPC handler, the Raft service's and the admin
//! API's, starts by resolving its caller's certificate to an [`Identity`]
//! and refusing what that identity may not do, before it decodes anything
//! else.
//!
//! A certificate signed by the cluster CA says who it is (its common name)
//! and in which [`Role`] (its subject's organizational unit): members
//! (gateways and witnesses) speak Raft, and only while their name is in the
//! applied membership; operators use the admin API; viewers only read it.
//! A certificate the cluster revoked ([`Revoked`], committed through Raft)
//! is refused by every member from the moment it applies the revocation.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tonic::{Request, Status};

/// What a certificate's holder is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// A gateway or witness: speaks Raft while it is in the membership.
    Member,
    /// An operator: every admin RPC.
    Operator,
    /// A read-only operator: status, tunnels, SAs and peer configuration.
    Viewer,
}

impl Role {
    const UNIT_PREFIX: &str = "tandem-";

    /// The certificate subject's organizational unit that carries it.
    pub fn unit(self) -> String {
        format!("{}{self}", Self::UNIT_PREFIX)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Member => "member",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
        })
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "member" => Ok(Role::Member),
            "operator" => Ok(Role::Operator),
            "viewer" => Ok(Role::Viewer),
            other => Err(format!(
                "unknown role {other:?}: member, operator or viewer"
            )),
        }
    }
}

/// A certificate's holder, as its certificate names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: Role,
    /// The serial number in lowercase hex, leading zeros dropped: what
    /// `tandemd cert issue` prints and `tandemctl revoke` takes.
    pub serial: String,
}

impl Identity {
    /// Reads the identity out of a DER certificate (one the TLS layer has
    /// already verified against the cluster CA). A certificate without a
    /// Tandem role was issued before roles existed, for a member: it counts
    /// as one, which admits it nowhere unless its name is in the membership.
    pub fn from_der(der: &[u8]) -> Result<Identity, String> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| format!("unreadable certificate: {e}"))?;
        let subject = cert.subject();
        let name = subject
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .ok_or("certificate has no common name")?
            .to_owned();
        let units: Vec<&str> = subject
            .iter_organizational_unit()
            .filter_map(|u| u.as_str().ok())
            .filter_map(|u| u.strip_prefix(Role::UNIT_PREFIX))
            .collect();
        let role = match units.as_slice() {
            [] => Role::Member,
            [one] => one.parse()?,
            _ => return Err("certificate names more than one role".into()),
        };
        Ok(Identity {
            name,
            role,
            serial: serial_hex(cert.raw_serial()),
        })
    }
}

impl std::fmt::Display for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}, serial {})", self.name, self.role, self.serial)
    }
}

fn serial_hex(raw: &[u8]) -> String {
    let digits: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    serial_hex_str(&digits)
}

/// A certificate no member admits any more, by serial (one certificate:
/// what a rotation revokes) or by name (every certificate of that name: a
/// stolen operator identity).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Revoked {
    Serial(String),
    Name(String),
}

impl Revoked {
    /// The longest serial a CA writes is 20 bytes (RFC 5280 4.1.2.2).
    const MAX_SERIAL_DIGITS: usize = 40;

    /// Parses what an operator typed: `serial:HEX` or `name:NAME`, or bare:
    /// hex digits (colons allowed, as openssl prints them) are a serial,
    /// anything else a name.
    pub fn parse(s: &str) -> Result<Revoked, String> {
        let s = s.trim();
        let (serial, name) = match (s.strip_prefix("serial:"), s.strip_prefix("name:")) {
            (Some(hex), _) => (Some(hex), None),
            (_, Some(name)) => (None, Some(name)),
            _ if s.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') => (Some(s), None),
            _ => (None, Some(s)),
        };
        if let Some(hex) = serial {
            let digits: String = hex
                .chars()
                .filter(|c| *c != ':')
                .collect::<String>()
                .to_ascii_lowercase();
            let entry = Revoked::Serial(serial_hex_str(&digits));
            return match entry.is_valid() && !digits.is_empty() {
                true => Ok(entry),
                false => Err(format!(
                    "{hex:?} is not a certificate serial (up to 40 hex digits)"
                )),
            };
        }
        let name = name.unwrap_or_default();
        crate::tls::check_name(name)
            .map(|()| Revoked::Name(name.to_owned()))
            .map_err(|e| e.to_string())
    }

    /// Whether this entry is well formed: the state machine refuses one that
    /// is not (a member's own checks are not trusted, invariant 8).
    pub fn is_valid(&self) -> bool {
        match self {
            Revoked::Serial(s) => {
                !s.is_empty()
                    && s.len() <= Self::MAX_SERIAL_DIGITS
                    && s.bytes()
                        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            }
            Revoked::Name(n) => crate::tls::check_name(n).is_ok(),
        }
    }

    pub fn covers(&self, id: &Identity) -> bool {
        match self {
            Revoked::Serial(s) => *s == id.serial,
            Revoked::Name(n) => *n == id.name,
        }
    }
}

fn serial_hex_str(digits: &str) -> String {
    match digits.trim_start_matches('0') {
        "" => "0".to_owned(),
        s => s.to_owned(),
    }
}

impl std::fmt::Display for Revoked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Revoked::Serial(s) => write!(f, "serial {s}"),
            Revoked::Name(n) => write!(f, "name {n}"),
        }
    }
}

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A TLS client with this certificate.
    Certified(Identity),
    /// The other end of an in-process or simulated link
    /// ([`crate::Transport::Plain`]), which has no certificates: only used
    /// where every end is one trusted process or simulation.
    InProcess,
}

impl Caller {
    /// The caller of `req`, on a server that does (`tls`) or does not run TLS.
    pub fn of<T>(req: &Request<T>, tls: bool) -> Result<Caller, Rule> {
        if !tls {
            return Ok(Caller::InProcess);
        }
        let certs = req.peer_certs().ok_or(Rule::NoCertificate)?;
        let leaf = certs.first().ok_or(Rule::NoCertificate)?;
        Identity::from_der(leaf)
            .map(Caller::Certified)
            .map_err(|_| Rule::BadCertificate)
    }
}

/// Why a call was refused: each is a label of `tandem_rpc_refused_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    NoCertificate,
    BadCertificate,
    Revoked,
    /// Raft is for member certificates.
    NotAMember,
    /// A member certificate whose name is not in the applied membership
    /// (removed, or never added).
    NotInMembership,
    /// A member forwarded a change in another member's name.
    NotItsOwn,
    /// The admin API is for operator and viewer certificates.
    NotAnOperator,
    /// A viewer may only read.
    ReadOnly,
}

impl Rule {
    pub fn label(self) -> &'static str {
        match self {
            Rule::NoCertificate => "no-certificate",
            Rule::BadCertificate => "bad-certificate",
            Rule::Revoked => "revoked",
            Rule::NotAMember => "not-a-member",
            Rule::NotInMembership => "not-in-membership",
            Rule::NotItsOwn => "not-its-own",
            Rule::NotAnOperator => "not-an-operator",
            Rule::ReadOnly => "read-only",
        }
    }

    fn explain(self) -> &'static str {
        match self {
            Rule::NoCertificate => "no client certificate",
            Rule::BadCertificate => "client certificate unreadable",
            Rule::Revoked => "certificate revoked by the cluster",
            Rule::NotAMember => "only member certificates speak Raft",
            Rule::NotInMembership => "not a member of the applied membership",
            Rule::NotItsOwn => "a member may only propose changes in its own name",
            Rule::NotAnOperator => "the admin API takes operator or viewer certificates only",
            Rule::ReadOnly => "a viewer may only read (status, tunnels, sas, peer-config)",
        }
    }
}

/// Refuses calls: a `PERMISSION_DENIED` naming the caller and the rule,
/// counted, and logged at most once per identity per [`Refusals::LOG_EVERY`]
/// (a refused caller retrying in a loop must not flood the log).
#[derive(Debug)]
pub struct Refusals {
    service: &'static str,
    logged: Mutex<BTreeMap<String, Instant>>,
}

impl Refusals {
    pub const LOG_EVERY: Duration = Duration::from_secs(60);
    /// Distinct identities remembered for rate limiting; past this, those
    /// logged longer ago than LOG_EVERY are forgotten, and if none were,
    /// refusals are counted but not logged until some are.
    const REMEMBERED: usize = 1024;

    pub fn new(service: &'static str) -> Refusals {
        Refusals {
            service,
            logged: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn refuse(&self, who: &str, rule: Rule) -> Status {
        metrics::counter!(
            "tandem_rpc_refused_total",
            "service" => self.service,
            "rule" => rule.label()
        )
        .increment(1);
        if self.first_in_a_while(who) {
            tracing::warn!(
                service = self.service,
                identity = who,
                rule = rule.label(),
                "call refused: {}",
                rule.explain()
            );
        }
        Status::permission_denied(format!("{who}: {} ({})", rule.explain(), rule.label()))
    }

    fn first_in_a_while(&self, who: &str) -> bool {
        let now = crate::now();
        let mut logged = self
            .logged
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(last) = logged.get(who)
            && now.saturating_duration_since(*last) < Self::LOG_EVERY
        {
            return false;
        }
        if logged.len() >= Self::REMEMBERED && !logged.contains_key(who) {
            logged.retain(|_, t| now.saturating_duration_since(*t) < Self::LOG_EVERY);
            if logged.len() >= Self::REMEMBERED {
                return false;
            }
        }
        logged.insert(who.to_owned(), now);
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn roles_and_serials_come_out_of_issued_certificates() {
        let dir = tempfile::tempdir().unwrap();
        crate::tls::init(dir.path()).unwrap();
        for (name, role) in [
            ("gw1", Role::Member),
            ("alice", Role::Operator),
            ("auditor", Role::Viewer),
        ] {
            let serial = crate::tls::issue(dir.path(), name, role).unwrap();
            let pem = std::fs::read(dir.path().join(format!("{name}.pem"))).unwrap();
            let der = x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents;
            let id = Identity::from_der(&der).unwrap();
            assert_eq!((id.name.as_str(), id.role), (name, role));
            assert_eq!(id.serial, serial);
            assert!(Revoked::parse(&serial).unwrap().covers(&id));
            assert!(Revoked::parse(name).unwrap().covers(&id));
        }
        assert!(Identity::from_der(b"not a certificate").is_err());
    }

    #[test]
    fn revocations_parse_as_serials_or_names() {
        assert_eq!(
            Revoked::parse("00:1A:2b").unwrap(),
            Revoked::Serial("1a2b".into())
        );
        assert_eq!(Revoked::parse("gw2").unwrap(), Revoked::Name("gw2".into()));
        assert_eq!(
            Revoked::parse("name:a1").unwrap(),
            Revoked::Name("a1".into())
        );
        assert_eq!(
            Revoked::parse("serial:0").unwrap(),
            Revoked::Serial("0".into())
        );
        assert!(Revoked::parse("serial:xyz").is_err());
        assert!(Revoked::parse("no spaces please").is_err());
        assert!(!Revoked::Serial("xyz".into()).is_valid());
        assert!(!Revoked::Serial("a".repeat(41)).is_valid());
        assert!(!Revoked::Name(String::new()).is_valid());
    }

    #[test]
    fn refusals_are_logged_once_per_identity_per_minute_and_always_denied() {
        let r = Refusals::new("test");
        assert!(r.first_in_a_while("a"));
        assert!(!r.first_in_a_while("a"));
        assert!(r.first_in_a_while("b"));
        let status = r.refuse("a", Rule::ReadOnly);
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert!(status.message().contains("a: a viewer may only read"));
        for i in 0..2 * Refusals::REMEMBERED {
            r.first_in_a_while(&format!("spoofed-{i}"));
        }
        assert!(r.logged.lock().unwrap().len() <= Refusals::REMEMBERED);
    }
}
