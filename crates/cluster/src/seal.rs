//! Sealing at rest (DESIGN.md invariant 6): every byte of replicated state that
//! reaches a node's disk (Raft log entries, snapshots) is encrypted and
//! authenticated with the cluster storage key, AES-256-GCM.
//!
//! Each sealed blob draws a fresh 128-bit salt and encrypts under its own subkey,
//! HMAC-SHA256(storage key, label | salt), with an all-zero nonce. A random
//! 96-bit nonce under one long-lived key would cap the key at about 2^32 blobs
//! (NIST SP 800-38D); a Raft log that records sequence-number reservations and
//! replay marks can get there, while colliding 128-bit salts is not a concern.
//! The AAD names what the blob is, so a log entry cannot be replayed as a
//! snapshot.

use std::path::Path;

use tandem_crypto::aead::aes_gcm;
use tandem_crypto::{AeadBackend, OsRandom, PrfAlg, Secret, SecureRandom};

const MAGIC: &[u8; 4] = b"TSK1";
const SALT: usize = 16;
const TAG: usize = 16;
const LABEL: &[u8] = b"tandem storage seal v1";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("storage key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("sealed data is truncated or not Tandem's")]
    Malformed,
    #[error("sealed data fails authentication (wrong storage key, or corrupted)")]
    Authentication,
}

/// The cluster storage key: 32 bytes, the same on every node. `Debug` shows a
/// fingerprint only.
#[derive(Debug, Clone)]
pub struct StorageKey(Secret);

impl StorageKey {
    pub fn from_secret(key: Secret) -> Result<Self, SealError> {
        if key.len() != 32 {
            return Err(SealError::KeyFile {
                path: "(memory)".into(),
                reason: format!("need 32 bytes, got {}", key.len()),
            });
        }
        Ok(Self(key))
    }

    /// Reads a key file: 64 hex digits (and optional trailing newline). Refused
    /// unless only its owner can read it, as ssh does for private keys.
    pub fn load(path: &Path) -> Result<Self, SealError> {
        let fail = |reason: String| SealError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let bytes = read_private(path).map_err(fail)?;
        let hex = std::str::from_utf8(&bytes)
            .map_err(|_| fail("expected 64 hex digits (32 bytes)".into()))?
            .trim();
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(fail("expected 64 hex digits (32 bytes)".into()));
        }
        let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
        for (i, byte) in key.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| fail("expected 64 hex digits (32 bytes)".into()))?;
        }
        Ok(Self(Secret::from_slice(&key)))
    }

    /// Draws a new key and writes it to `path` with mode 0600; refuses to
    /// overwrite an existing file.
    pub fn generate(path: &Path) -> Result<Self, SealError> {
        let fail = |reason: String| SealError::KeyFile {
            path: path.display().to_string(),
            reason,
        };
        let mut key = zeroize::Zeroizing::new(vec![0u8; 32]);
        OsRandom.fill(&mut key);
        let hex = zeroize::Zeroizing::new(
            key.iter().map(|b| format!("{b:02x}")).collect::<String>() + "\n",
        );
        write_private(path, hex.as_bytes()).map_err(|e| fail(e.to_string()))?;
        Ok(Self(Secret::from_slice(&key)))
    }

    pub fn fingerprint(&self) -> String {
        self.0.fingerprint()
    }

    fn subkey(&self, salt: &[u8]) -> Secret {
        PrfAlg::HmacSha256.prf(self.0.expose(), &[LABEL, salt])
    }

    /// Encrypts `plaintext`; `aad` names what it is (and must be given again to
    /// open it).
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(MAGIC.len() + SALT + plaintext.len() + TAG);
        out.extend_from_slice(MAGIC);
        let mut salt = [0u8; SALT];
        OsRandom.fill(&mut salt);
        out.extend_from_slice(&salt);
        let body = out.len();
        out.extend_from_slice(plaintext);
        let subkey = self.subkey(&salt);
        // A 32-byte key is always a valid AES-256-GCM key.
        let Ok(gcm) = aes_gcm(AeadBackend::default(), subkey.expose()) else {
            unreachable!("HMAC-SHA256 output is 32 bytes")
        };
        let tag = gcm.seal_in_place(&[0; 12], aad, &mut out[body..]);
        out.extend_from_slice(&tag);
        out
    }

    /// Decrypts a blob made by [`seal`](Self::seal) with the same `aad`. The
    /// plaintext zeroizes on drop.
    pub fn open(
        &self,
        aad: &[u8],
        sealed: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, SealError> {
        let rest = sealed.strip_prefix(MAGIC).ok_or(SealError::Malformed)?;
        if rest.len() < SALT + TAG {
            return Err(SealError::Malformed);
        }
        let (salt, rest) = rest.split_at(SALT);
        let (body, tag) = rest.split_at(rest.len() - TAG);
        let mut plain = zeroize::Zeroizing::new(body.to_vec());
        let subkey = self.subkey(salt);
        let Ok(gcm) = aes_gcm(AeadBackend::default(), subkey.expose()) else {
            unreachable!("HMAC-SHA256 output is 32 bytes")
        };
        let tag: &[u8; TAG] = tag.try_into().map_err(|_| SealError::Malformed)?;
        gcm.open_in_place(&[0; 12], aad, &mut plain, tag)
            .map_err(|_| SealError::Authentication)?;
        Ok(plain)
    }
}

/// Reads a private key file: a regular file (not a link to one, which
/// whoever can write its directory could point elsewhere) owned by this
/// process's user, that group and others cannot access, as ssh demands of
/// private keys. The checks are made on the open file, so the file read is
/// the file checked. The contents zeroize on drop.
pub fn read_private(path: &Path) -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::io::Read as _;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "is a symbolic link; name the file itself".to_owned(),
            _ => e.to_string(),
        })?;
    let meta = f.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("is not a regular file".into());
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:o} lets others read it; run chmod 600 {}",
            path.display()
        ));
    }
    // /proc/self belongs to the process's effective user (Linux, where
    // tandemd runs); without it the owner goes unchecked.
    if let Ok(me) = std::fs::metadata("/proc/self")
        && me.uid() != meta.uid()
    {
        return Err(format!(
            "owned by uid {}, not by this process's uid {}; run chown",
            meta.uid(),
            me.uid()
        ));
    }
    let mut bytes = zeroize::Zeroizing::new(Vec::new());
    f.read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Creates `path` with mode 0600 (never widening an existing file's mode: it
/// refuses to overwrite).
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> StorageKey {
        StorageKey::from_secret(Secret::new(vec![byte; 32])).unwrap()
    }

    #[test]
    fn round_trip_and_every_tamper_is_caught() {
        let k = key(7);
        let sealed = k.seal(b"log", b"sk_d and friends");
        assert_eq!(&*k.open(b"log", &sealed).unwrap(), b"sk_d and friends");
        assert!(
            !sealed.windows(4).any(|w| w == b"sk_d"),
            "plaintext visible"
        );
        assert!(matches!(
            k.open(b"snapshot", &sealed),
            Err(SealError::Authentication)
        ));
        assert!(matches!(
            key(8).open(b"log", &sealed),
            Err(SealError::Authentication)
        ));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(k.open(b"log", &bad).is_err(), "flip at {i} accepted");
        }
        assert!(matches!(
            k.open(b"log", &sealed[..20]),
            Err(SealError::Malformed)
        ));
    }

    #[test]
    fn same_plaintext_seals_differently() {
        let k = key(1);
        assert_ne!(k.seal(b"x", b"same"), k.seal(b"x", b"same"));
    }

    #[test]
    fn key_file_must_be_private_and_well_formed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.key");
        let made = StorageKey::generate(&path).unwrap();
        let loaded = StorageKey::load(&path).unwrap();
        assert_eq!(made.fingerprint(), loaded.fingerprint());
        assert!(StorageKey::generate(&path).is_err(), "never overwrites");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = StorageKey::load(&path).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let err = StorageKey::load(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        let short = dir.path().join("short.key");
        write_private(&short, b"abcd\n").unwrap();
        assert!(
            StorageKey::load(&short)
                .unwrap_err()
                .to_string()
                .contains("64 hex")
        );
    }
}
