//! The protection of one direction of an SA: encryption plus integrity, as used by
//! both ESP packets and the IKE Encrypted (SK) payload.
//!
//! Both protocols lay a protected message out the same way:
//! `[authenticated header | IV | ciphertext (padded plaintext) | ICV]`
//! (ESP: header = SPI || seq; IKE: header = IKE header .. end of SK payload header).

use aes::cipher::{BlockCipherEncrypt, BlockModeDecrypt, BlockModeEncrypt, InnerIvInit, KeyInit};

use crate::aead::{Aead, aes_gcm};
use crate::{AeadBackend, CryptoError, IntegAlg, Integrity, Secret};

/// IKEv2 encryption transforms we implement (IANA "Transform Type 1").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncrAlg {
    /// ENCR_AES_CBC (12), key 128 or 256 bits. Needs a separate integrity transform.
    AesCbc { key_bits: u16 },
    /// ENCR_AES_GCM_16 (20), key 128 or 256 bits, 16-byte ICV, combined mode.
    AesGcm16 { key_bits: u16 },
}

impl EncrAlg {
    pub const ID_AES_CBC: u16 = 12;
    pub const ID_AES_GCM_16: u16 = 20;

    /// From an IKE transform ID and Key Length attribute. `None` for anything we do
    /// not implement (including weak ciphers such as DES or 3DES).
    pub fn from_transform(id: u16, key_bits: Option<u16>) -> Option<Self> {
        let key_bits = key_bits?;
        if key_bits != 128 && key_bits != 256 {
            return None;
        }
        match id {
            Self::ID_AES_CBC => Some(Self::AesCbc { key_bits }),
            Self::ID_AES_GCM_16 => Some(Self::AesGcm16 { key_bits }),
            _ => None,
        }
    }

    pub fn transform_id(self) -> u16 {
        match self {
            Self::AesCbc { .. } => Self::ID_AES_CBC,
            Self::AesGcm16 { .. } => Self::ID_AES_GCM_16,
        }
    }

    pub fn key_bits(self) -> u16 {
        match self {
            Self::AesCbc { key_bits } | Self::AesGcm16 { key_bits } => key_bits,
        }
    }

    pub fn is_aead(self) -> bool {
        matches!(self, Self::AesGcm16 { .. })
    }

    /// Bytes of KEYMAT this transform takes: the AES key, plus the 4-byte salt for
    /// GCM (RFC 4106 section 8.1, RFC 5282 section 7.1).
    pub fn keymat_len(self) -> usize {
        let key = usize::from(self.key_bits() / 8);
        if self.is_aead() { key + 4 } else { key }
    }

    /// Bytes of IV on the wire: 8 for GCM, 16 for CBC.
    pub fn iv_len(self) -> usize {
        if self.is_aead() { 8 } else { 16 }
    }

    /// What the plaintext (with padding, pad length and next header) must be a
    /// multiple of: the AES block for CBC, 4 bytes for GCM (RFC 4303 section 2.4).
    pub fn block_len(self) -> usize {
        if self.is_aead() { 4 } else { 16 }
    }
}

/// One direction's keys, ready to seal or open packets. Cheap to use per packet:
/// key schedules are expanded once here.
pub struct SaCipher {
    encr: EncrAlg,
    integ: Option<IntegAlg>,
    keys: Keys,
}

impl std::fmt::Debug for SaCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaCipher")
            .field("encr", &self.encr)
            .field("integ", &self.integ)
            .finish_non_exhaustive()
    }
}

enum Keys {
    Gcm {
        aead: Box<dyn Aead>,
        salt: zeroize::Zeroizing<[u8; GCM_SALT_LEN]>,
    },
    Cbc {
        aes: CbcAes,
        integrity: Integrity,
    },
}

enum CbcAes {
    Aes128(aes::Aes128),
    Aes256(aes::Aes256),
}

const GCM_SALT_LEN: usize = 4;
const GCM_IV_LEN: usize = 8;
const GCM_ICV_LEN: usize = 16;
const AES_BLOCK: usize = 16;
/// `SPI || seq_low` (RFC 4303 section 2).
const ESP_HEADER_LEN: usize = 8;

impl SaCipher {
    /// `encr_keymat` is `encr.keymat_len()` bytes (key then salt for GCM);
    /// `integ` must be `None` for GCM and `Some` for CBC.
    pub fn new(
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_keymat: &Secret,
        integ_key: Option<&Secret>,
    ) -> Result<Self, CryptoError> {
        Self::with_backend(AeadBackend::default(), encr, integ, encr_keymat, integ_key)
    }

    pub fn with_backend(
        backend: AeadBackend,
        encr: EncrAlg,
        integ: Option<IntegAlg>,
        encr_keymat: &Secret,
        integ_key: Option<&Secret>,
    ) -> Result<Self, CryptoError> {
        let name = encr.name();
        let key_len = usize::from(encr.key_bits() / 8);
        if !matches!(encr.key_bits(), 128 | 256) || encr_keymat.len() != encr.keymat_len() {
            return Err(CryptoError::KeyLength {
                alg: name,
                want: encr.keymat_len(),
                got: encr_keymat.len(),
            });
        }
        let (key, salt) = encr_keymat.expose().split_at(key_len);
        let keys = match (encr, integ, integ_key) {
            (EncrAlg::AesGcm16 { .. }, None, None) => {
                let mut gcm_salt = zeroize::Zeroizing::new([0u8; GCM_SALT_LEN]);
                gcm_salt.copy_from_slice(salt);
                Keys::Gcm {
                    aead: aes_gcm(backend, key)?,
                    salt: gcm_salt,
                }
            }
            (EncrAlg::AesCbc { .. }, Some(alg), Some(integ_key)) => {
                let key_error = |_| CryptoError::KeyLength {
                    alg: name,
                    want: key_len,
                    got: key.len(),
                };
                let aes = if key_len == 16 {
                    CbcAes::Aes128(aes::Aes128::new_from_slice(key).map_err(key_error)?)
                } else {
                    CbcAes::Aes256(aes::Aes256::new_from_slice(key).map_err(key_error)?)
                };
                Keys::Cbc {
                    aes,
                    integrity: Integrity::new(alg, integ_key)?,
                }
            }
            (EncrAlg::AesCbc { .. }, Some(alg), None) => {
                return Err(CryptoError::KeyLength {
                    alg: alg.name(),
                    want: alg.key_len(),
                    got: 0,
                });
            }
            (_, _, _) => {
                return Err(CryptoError::IntegrityMismatch {
                    encr: name,
                    integ_given: integ.is_some() || integ_key.is_some(),
                });
            }
        };
        Ok(Self { encr, integ, keys })
    }

    pub fn encr(&self) -> EncrAlg {
        self.encr
    }

    pub fn integ(&self) -> Option<IntegAlg> {
        self.integ
    }

    pub fn iv_len(&self) -> usize {
        self.encr.iv_len()
    }

    pub fn block_len(&self) -> usize {
        self.encr.block_len()
    }

    /// ICV bytes: 16 for GCM, the integrity transform's truncated length for CBC.
    pub fn icv_len(&self) -> usize {
        match &self.keys {
            Keys::Gcm { .. } => GCM_ICV_LEN,
            Keys::Cbc { integrity, .. } => integrity.alg().icv_len(),
        }
    }

    /// Seals `packet` in place. Layout on entry:
    /// `packet[..header_len]` authenticated header, then `iv_len()` bytes of room for
    /// the IV, then the padded plaintext (a multiple of `block_len()`), then
    /// `icv_len()` bytes of room for the ICV.
    ///
    /// `iv_seed` must never repeat under one key: ESP passes its 64-bit sequence
    /// number, IKE a random value. GCM puts it on the wire as the IV; CBC derives an
    /// unpredictable IV by encrypting it under the key (NIST SP 800-38A appendix C).
    ///
    /// `esn_high` is ESP's extended sequence number high half. When `Some`, the
    /// header must be ESP's `SPI || seq_low` (8 bytes): GCM then authenticates
    /// `SPI || seq_high || seq_low` (RFC 4106 section 5) and HMAC appends `seq_high`
    /// after the ciphertext (RFC 4303 section 3.3.2.1).
    pub fn seal(
        &self,
        packet: &mut [u8],
        header_len: usize,
        iv_seed: u64,
        esn_high: Option<u32>,
    ) -> Result<(), CryptoError> {
        let layout = self.layout(packet.len(), header_len, esn_high)?;
        match &self.keys {
            Keys::Gcm { aead, salt } => {
                let (header, rest) = packet.split_at_mut(header_len);
                let (iv, rest) = rest.split_at_mut(GCM_IV_LEN);
                let (body, icv) = rest.split_at_mut(layout.body.len());
                iv.copy_from_slice(&iv_seed.to_be_bytes());
                let nonce = gcm_nonce(salt, iv_seed.to_be_bytes());
                let mut esn_aad = [0u8; 12];
                let aad = gcm_aad(header, esn_high, &mut esn_aad);
                icv.copy_from_slice(&aead.seal_in_place(&nonce, aad, body));
            }
            Keys::Cbc { aes, integrity } => {
                let body = &mut packet[layout.body.clone()];
                if body.len() % AES_BLOCK != 0 {
                    return Err(CryptoError::BlockLength(body.len()));
                }
                let mut iv = aes::Block::default();
                iv[AES_BLOCK - 8..].copy_from_slice(&iv_seed.to_be_bytes());
                aes.encrypt_block(&mut iv);
                aes.cbc_encrypt(&iv, body);
                packet[layout.body.start - AES_BLOCK..layout.body.start].copy_from_slice(&iv);
                let (authed, icv) = packet.split_at_mut(layout.body.end);
                let esn = esn_high.map(u32::to_be_bytes);
                integrity.compute(&[authed, esn.as_ref().map_or(&[][..], |b| &b[..])], icv);
            }
        }
        Ok(())
    }

    /// Verifies and decrypts `packet` (same layout as [`SaCipher::seal`] on exit) in
    /// place. Returns the range of the padded plaintext within `packet`. Checks the
    /// ICV before decrypting anything (CBC) and never panics on short input.
    pub fn open(
        &self,
        packet: &mut [u8],
        header_len: usize,
        esn_high: Option<u32>,
    ) -> Result<std::ops::Range<usize>, CryptoError> {
        let layout = self.layout(packet.len(), header_len, esn_high)?;
        match &self.keys {
            Keys::Gcm { aead, salt } => {
                let (header, rest) = packet.split_at_mut(header_len);
                let (iv, rest) = rest.split_at_mut(GCM_IV_LEN);
                let (body, icv) = rest.split_at_mut(layout.body.len());
                let mut wire_iv = [0u8; GCM_IV_LEN];
                wire_iv.copy_from_slice(iv);
                let nonce = gcm_nonce(salt, wire_iv);
                let mut tag = [0u8; GCM_ICV_LEN];
                tag.copy_from_slice(icv);
                let mut esn_aad = [0u8; 12];
                let aad = gcm_aad(header, esn_high, &mut esn_aad);
                aead.open_in_place(&nonce, aad, body, &tag)?;
            }
            Keys::Cbc { aes, integrity } => {
                let (authed, icv) = packet.split_at(layout.body.end);
                let esn = esn_high.map(u32::to_be_bytes);
                integrity.verify(&[authed, esn.as_ref().map_or(&[][..], |b| &b[..])], icv)?;
                if layout.body.len() % AES_BLOCK != 0 {
                    return Err(CryptoError::BlockLength(layout.body.len()));
                }
                let (head, body) = packet[..layout.body.end].split_at_mut(layout.body.start);
                let iv = aes::Block::try_from(&head[head.len() - AES_BLOCK..])
                    .map_err(|_| CryptoError::Truncated)?;
                aes.cbc_decrypt(&iv, body);
            }
        }
        Ok(layout.body)
    }

    /// Where the padded plaintext sits, after checking the packet can hold the
    /// header, IV and ICV. All arithmetic is checked: lengths come off the wire.
    fn layout(
        &self,
        packet_len: usize,
        header_len: usize,
        esn_high: Option<u32>,
    ) -> Result<Layout, CryptoError> {
        if esn_high.is_some() && header_len != ESP_HEADER_LEN {
            return Err(CryptoError::EsnHeaderLength(header_len));
        }
        let start = header_len
            .checked_add(self.iv_len())
            .ok_or(CryptoError::Truncated)?;
        let end = packet_len
            .checked_sub(self.icv_len())
            .ok_or(CryptoError::Truncated)?;
        if start > end {
            return Err(CryptoError::Truncated);
        }
        Ok(Layout { body: start..end })
    }
}

struct Layout {
    body: std::ops::Range<usize>,
}

/// RFC 4106 section 4: the salt from KEYMAT followed by the IV from the wire.
fn gcm_nonce(salt: &[u8; GCM_SALT_LEN], iv: [u8; GCM_IV_LEN]) -> [u8; 12] {
    let mut nonce = [0u8; 12];
    nonce[..GCM_SALT_LEN].copy_from_slice(salt);
    nonce[GCM_SALT_LEN..].copy_from_slice(&iv);
    nonce
}

/// The AAD: the header as is, or with ESN `SPI || seq_high || seq_low` (RFC 4106
/// section 5), assembled in `esn_buf` since seq_high is never on the wire.
fn gcm_aad<'a>(header: &'a [u8], esn_high: Option<u32>, esn_buf: &'a mut [u8; 12]) -> &'a [u8] {
    match esn_high {
        Some(high) => {
            // `layout` has checked that an ESN header is exactly SPI || seq_low.
            esn_buf[..4].copy_from_slice(&header[..4]);
            esn_buf[4..8].copy_from_slice(&high.to_be_bytes());
            esn_buf[8..].copy_from_slice(&header[4..ESP_HEADER_LEN]);
            esn_buf
        }
        None => header,
    }
}

impl CbcAes {
    fn encrypt_block(&self, block: &mut aes::Block) {
        match self {
            Self::Aes128(c) => c.encrypt_block(block),
            Self::Aes256(c) => c.encrypt_block(block),
        }
    }

    /// `data` is a whole number of blocks (checked by the caller).
    fn cbc_encrypt(&self, iv: &aes::Block, data: &mut [u8]) {
        let (blocks, _) = aes::Block::slice_as_chunks_mut(data);
        match self {
            Self::Aes128(c) => {
                cbc::Encryptor::<&aes::Aes128>::inner_iv_init(c, iv).encrypt_blocks(blocks)
            }
            Self::Aes256(c) => {
                cbc::Encryptor::<&aes::Aes256>::inner_iv_init(c, iv).encrypt_blocks(blocks)
            }
        }
    }

    /// `data` is a whole number of blocks (checked by the caller).
    fn cbc_decrypt(&self, iv: &aes::Block, data: &mut [u8]) {
        let (blocks, _) = aes::Block::slice_as_chunks_mut(data);
        match self {
            Self::Aes128(c) => {
                cbc::Decryptor::<&aes::Aes128>::inner_iv_init(c, iv).decrypt_blocks(blocks)
            }
            Self::Aes256(c) => {
                cbc::Decryptor::<&aes::Aes256>::inner_iv_init(c, iv).decrypt_blocks(blocks)
            }
        }
    }
}

impl EncrAlg {
    fn name(self) -> &'static str {
        match self {
            Self::AesCbc { key_bits: 128 } => "AES-128-CBC",
            Self::AesCbc { key_bits: 256 } => "AES-256-CBC",
            Self::AesCbc { .. } => "AES-CBC",
            Self::AesGcm16 { key_bits: 128 } => "AES-128-GCM-16",
            Self::AesGcm16 { key_bits: 256 } => "AES-256-GCM-16",
            Self::AesGcm16 { .. } => "AES-GCM-16",
        }
    }
}
