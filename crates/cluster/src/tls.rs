//! The cluster's PKI: a cluster CA, one certificate per member (used both as
//! TLS server and client: node-to-node gRPC is mutual TLS, invariant 6) and
//! per operator (client only), and the tonic TLS configurations built from
//! them. A peer without a certificate signed by the cluster CA cannot
//! complete a handshake; what a signed one may do is its [`Role`]'s (see
//! [`crate::trust`]).
//!
//! Layout of a PKI directory, as `tandemd cert` writes it: `ca.pem`, `ca.key`,
//! `storage.key` (the cluster storage key, see [`crate::seal`]), and
//! `NODE.pem` / `NODE.key` per node. Private keys are written 0600.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::seal::{StorageKey, read_private, write_private};
pub use crate::trust::Role;

const CA_NAME: &str = "Tandem cluster CA";
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);
const NODE_VALIDITY: Duration = Duration::from_secs(2 * 365 * 86_400);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error(
        "name {0:?}: use letters, digits, '-' and '.' (it becomes a DNS name in the certificate)"
    )]
    BadName(String),
    #[error(transparent)]
    StorageKey(#[from] crate::seal::SealError),
}

fn file_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|e| file_err(path, e))
}

fn read_key(path: &Path) -> Result<zeroize::Zeroizing<String>, TlsError> {
    let bytes = read_private(path).map_err(|e| file_err(path, e))?;
    std::str::from_utf8(&bytes)
        .map(|s| zeroize::Zeroizing::new(s.to_owned()))
        .map_err(|_| file_err(path, "not a PEM file"))
}

fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, CA_NAME);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(p)
}

fn validity(p: &mut CertificateParams, for_how_long: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // An hour of slack for nodes whose clocks run a little behind.
    p.not_before = now - time::Duration::hours(1);
    p.not_after = now + for_how_long;
}

/// Creates a new cluster CA and storage key in `dir` (which must not hold one).
pub fn init(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
    let key = KeyPair::generate()?;
    let mut params = ca_params()?;
    validity(&mut params, CA_VALIDITY);
    let cert = params.self_signed(&key)?;
    let key_path = dir.join("ca.key");
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|e| file_err(&key_path, e))?;
    let cert_path = dir.join("ca.pem");
    std::fs::write(&cert_path, cert.pem()).map_err(|e| file_err(&cert_path, e))?;
    StorageKey::generate(&dir.join("storage.key"))?;
    Ok(())
}

/// Issues `NAME.pem` / `NAME.key` in `dir`, signed by the CA there. A
/// member's name is the certificate's DNS name, which its peers verify and
/// which must be in the cluster's membership for its Raft calls to be
/// admitted; the role travels as the subject's organizational unit.
/// Returns the new certificate's serial (as [`crate::trust::Identity`] reads it).
pub fn issue(dir: &Path, name: &str, role: Role) -> Result<String, TlsError> {
    check_name(name)?;
    let ca_key_path = dir.join("ca.key");
    let ca_key = KeyPair::from_pem(&read_key(&ca_key_path)?)?;
    // The issuer is rebuilt from the CA's fixed parameters and its key: the
    // subject name and key identifier are all a signature needs.
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params
        .distinguished_name
        .push(DnType::OrganizationalUnitName, role.unit());
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    // Only members serve: an operator's certificate cannot stand in for a
    // member's listener even where a client skipped the name check.
    params.extended_key_usages = match role {
        Role::Member => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Operator | Role::Viewer => vec![ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_VALIDITY);
    let cert = params.signed_by(&key, &issuer)?;
    let key_path = dir.join(format!("{name}.key"));
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|e| file_err(&key_path, e))?;
    let cert_path = dir.join(format!("{name}.pem"));
    std::fs::write(&cert_path, cert.pem()).map_err(|e| file_err(&cert_path, e))?;
    crate::trust::Identity::from_der(cert.der())
        .map(|id| id.serial)
        .map_err(|e| file_err(&cert_path, e))
}

/// Who the certificate in a PEM file names.
pub fn identity_of(path: &Path) -> Result<crate::trust::Identity, TlsError> {
    let pem = read(path)?;
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| file_err(path, format!("not a PEM certificate: {e}")))?;
    crate::trust::Identity::from_der(&block.contents).map_err(|e| file_err(path, e))
}

/// A certificate name: it becomes a DNS name, so letters, digits, '-' and
/// '.', at most 63 of them.
pub fn check_name(name: &str) -> Result<(), TlsError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    match valid {
        true => Ok(()),
        false => Err(TlsError::BadName(name.to_owned())),
    }
}

/// A node's TLS material: the cluster CA, its certificate and key.
#[derive(Debug, Clone)]
pub struct NodeTls {
    ca: Certificate,
    identity: Identity,
}

impl NodeTls {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Ok(Self {
            ca: Certificate::from_pem(read(ca)?),
            identity: Identity::from_pem(read(cert)?, read_key(key)?.as_bytes()),
        })
    }

    /// `NODE.pem` and `NODE.key` beside `ca.pem` in a PKI directory.
    pub fn from_dir(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let at = |f: String| -> PathBuf { dir.join(f) };
        Self::load(
            &at("ca.pem".into()),
            &at(format!("{name}.pem")),
            &at(format!("{name}.key")),
        )
    }

    /// Demands a client certificate signed by the cluster CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// Trusts only the cluster CA and expects the peer to be `peer_name`.
    pub fn client(&self, peer_name: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.ca.clone())
            .identity(self.identity.clone())
            .domain_name(peer_name)
    }
}
