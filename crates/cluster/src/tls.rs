//! The cluster's PKI: a cluster CA, one certificate per node (used both as TLS
//! server and client: node-to-node gRPC is mutual TLS, invariant 6), and the
//! tonic TLS configurations built from them. A peer without a certificate
//! signed by the cluster CA cannot complete a handshake.
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

use crate::seal::{StorageKey, check_private, write_private};

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
        "node name {0:?}: use letters, digits, '-' and '.' (it becomes a DNS name in the certificate)"
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

/// Issues `NODE.pem` / `NODE.key` in `dir`, signed by the CA there. The node's
/// name is the certificate's DNS name, which its peers verify.
pub fn issue(dir: &Path, name: &str) -> Result<(), TlsError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        && !name.starts_with(['-', '.']);
    if !valid {
        return Err(TlsError::BadName(name.to_owned()));
    }
    let ca_key_path = dir.join("ca.key");
    check_private(&ca_key_path).map_err(|e| file_err(&ca_key_path, e))?;
    let ca_key = KeyPair::from_pem(&read(&ca_key_path)?)?;
    // The issuer is rebuilt from the CA's fixed parameters and its key: the
    // subject name and key identifier are all a signature needs.
    let issuer = Issuer::new(ca_params()?, ca_key);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec![name.to_owned()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, NODE_VALIDITY);
    let cert = params.signed_by(&key, &issuer)?;
    let key_path = dir.join(format!("{name}.key"));
    write_private(&key_path, key.serialize_pem().as_bytes()).map_err(|e| file_err(&key_path, e))?;
    let cert_path = dir.join(format!("{name}.pem"));
    std::fs::write(&cert_path, cert.pem()).map_err(|e| file_err(&cert_path, e))?;
    Ok(())
}

/// A node's TLS material: the cluster CA, its certificate and key.
#[derive(Debug, Clone)]
pub struct NodeTls {
    ca: Certificate,
    identity: Identity,
}

impl NodeTls {
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        check_private(key).map_err(|e| file_err(key, e))?;
        Ok(Self {
            ca: Certificate::from_pem(read(ca)?),
            identity: Identity::from_pem(read(cert)?, read(key)?),
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
