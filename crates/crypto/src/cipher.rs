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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
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

// One `Keys` per SA direction: inline key schedules cost a little space and save a
// pointer chase per packet.
#[allow(clippy::large_enum_variant)]
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
        let body_range = self.body_range(packet.len(), header_len, esn_high)?;
        match &self.keys {
            Keys::Gcm { aead, salt } => {
                let (header, rest) = packet.split_at_mut(header_len);
                let (iv, rest) = rest.split_at_mut(GCM_IV_LEN);
                let (body, icv) = rest.split_at_mut(body_range.len());
                iv.copy_from_slice(&iv_seed.to_be_bytes());
                let nonce = gcm_nonce(salt, iv_seed.to_be_bytes());
                let mut esn_aad = [0u8; 12];
                let aad = gcm_aad(header, esn_high, &mut esn_aad);
                icv.copy_from_slice(&aead.seal_in_place(&nonce, aad, body));
            }
            Keys::Cbc { aes, integrity } => {
                let body = &mut packet[body_range.clone()];
                if !body.len().is_multiple_of(AES_BLOCK) {
                    return Err(CryptoError::BlockLength(body.len()));
                }
                let mut iv = aes::Block::default();
                iv[AES_BLOCK - 8..].copy_from_slice(&iv_seed.to_be_bytes());
                aes.encrypt_block(&mut iv);
                aes.cbc_encrypt(&iv, body);
                packet[body_range.start - AES_BLOCK..body_range.start].copy_from_slice(&iv);
                let (authed, icv) = packet.split_at_mut(body_range.end);
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
        let body_range = self.body_range(packet.len(), header_len, esn_high)?;
        match &self.keys {
            Keys::Gcm { aead, salt } => {
                let (header, rest) = packet.split_at_mut(header_len);
                let (iv, rest) = rest.split_at_mut(GCM_IV_LEN);
                let (body, icv) = rest.split_at_mut(body_range.len());
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
                let (authed, icv) = packet.split_at(body_range.end);
                let esn = esn_high.map(u32::to_be_bytes);
                integrity.verify(&[authed, esn.as_ref().map_or(&[][..], |b| &b[..])], icv)?;
                if !body_range.len().is_multiple_of(AES_BLOCK) {
                    return Err(CryptoError::BlockLength(body_range.len()));
                }
                let (head, body) = packet[..body_range.end].split_at_mut(body_range.start);
                let iv = aes::Block::try_from(&head[head.len() - AES_BLOCK..])
                    .map_err(|_| CryptoError::Truncated)?;
                aes.cbc_decrypt(&iv, body);
            }
        }
        Ok(body_range)
    }

    /// Where the padded plaintext sits, after checking the packet can hold the
    /// header, IV and ICV. All arithmetic is checked: lengths come off the wire.
    fn body_range(
        &self,
        packet_len: usize,
        header_len: usize,
        esn_high: Option<u32>,
    ) -> Result<std::ops::Range<usize>, CryptoError> {
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
        Ok(start..end)
    }
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
            // `body_range` has checked that an ESN header is exactly SPI || seq_low.
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

#[cfg(test)]
mod tests {
    use super::*;

    const INTEGS: [IntegAlg; 4] = [
        IntegAlg::HmacSha1_96,
        IntegAlg::HmacSha256_128,
        IntegAlg::HmacSha384_192,
        IntegAlg::HmacSha512_256,
    ];

    fn keymat(len: usize, fill: u8) -> Secret {
        Secret::new((0..len).map(|i| fill.wrapping_add(i as u8)).collect())
    }

    /// Every transform combination we support, each with a distinct key.
    fn all_ciphers() -> Vec<SaCipher> {
        let mut out = Vec::new();
        for key_bits in [128, 256] {
            let encr = EncrAlg::AesGcm16 { key_bits };
            for backend in [AeadBackend::Ring, AeadBackend::RustCrypto] {
                let km = keymat(encr.keymat_len(), 0x10);
                out.push(SaCipher::with_backend(backend, encr, None, &km, None).expect("valid"));
            }
            let encr = EncrAlg::AesCbc { key_bits };
            for integ in INTEGS {
                let km = keymat(encr.keymat_len(), 0x20);
                let ik = keymat(integ.key_len(), 0x30);
                out.push(SaCipher::new(encr, Some(integ), &km, Some(&ik)).expect("valid"));
            }
        }
        out
    }

    /// A packet laid out for `seal`: header, IV room, plaintext, ICV room.
    fn layout(c: &SaCipher, header: &[u8], plaintext: &[u8]) -> Vec<u8> {
        let mut p = header.to_vec();
        p.resize(header.len() + c.iv_len(), 0);
        p.extend_from_slice(plaintext);
        p.resize(p.len() + c.icv_len(), 0);
        p
    }

    fn plaintext(c: &SaCipher) -> Vec<u8> {
        (0..3 * 16 + c.block_len() % 16).map(|i| i as u8).collect()
    }

    #[test]
    fn round_trip_every_combination_with_and_without_esn() {
        let esp_header = [0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 9];
        let ike_header: Vec<u8> = (0..32).collect();
        for c in all_ciphers() {
            let pt = plaintext(&c);
            for (header, esn) in [
                (&esp_header[..], None),
                (&esp_header[..], Some(0x0102_0304)),
                (&ike_header[..], None),
            ] {
                let mut packet = layout(&c, header, &pt);
                c.seal(&mut packet, header.len(), 9, esn).expect("seal");
                let body = header.len() + c.iv_len()..packet.len() - c.icv_len();
                assert_eq!(&packet[..header.len()], header, "header untouched");
                assert_ne!(&packet[body.clone()], &pt[..], "{c:?} encrypted");
                let range = c.open(&mut packet, header.len(), esn).expect("open");
                assert_eq!(range, body);
                assert_eq!(&packet[range], &pt[..], "{c:?} {esn:?}");
            }
        }
    }

    #[test]
    fn any_flipped_bit_fails_authentication() {
        let header = [1, 2, 3, 4, 0, 0, 0, 1];
        for c in all_ciphers() {
            for esn in [None, Some(7)] {
                let mut sealed = layout(&c, &header, &plaintext(&c));
                c.seal(&mut sealed, header.len(), 1, esn).expect("seal");
                for bit in 0..sealed.len() * 8 {
                    let mut bad = sealed.clone();
                    bad[bit / 8] ^= 1 << (bit % 8);
                    assert_eq!(
                        c.open(&mut bad, header.len(), esn),
                        Err(CryptoError::Authentication),
                        "{c:?} bit {bit} esn {esn:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn esn_high_is_authenticated() {
        let header = [1, 2, 3, 4, 0, 0, 0, 1];
        for c in all_ciphers() {
            let mut sealed = layout(&c, &header, &plaintext(&c));
            c.seal(&mut sealed, header.len(), 1, Some(5)).expect("seal");
            for wrong in [None, Some(4), Some(5 | 1 << 31)] {
                let mut copy = sealed.clone();
                assert_eq!(
                    c.open(&mut copy, header.len(), wrong),
                    Err(CryptoError::Authentication),
                    "{c:?} {wrong:?}"
                );
            }
        }
    }

    #[test]
    fn short_input_never_panics() {
        for c in all_ciphers() {
            let min = 8 + c.iv_len() + c.icv_len();
            for len in 0..min {
                let mut packet = vec![0u8; len];
                assert_eq!(
                    c.open(&mut packet, 8, None),
                    Err(CryptoError::Truncated),
                    "{len}"
                );
                assert_eq!(
                    c.seal(&mut packet, 8, 0, None),
                    Err(CryptoError::Truncated),
                    "{len}"
                );
            }
            let mut packet = vec![0u8; 200];
            assert_eq!(c.open(&mut packet, 201, None), Err(CryptoError::Truncated));
            assert_eq!(
                c.open(&mut packet, usize::MAX, None),
                Err(CryptoError::Truncated)
            );
            assert_eq!(
                c.seal(&mut packet, usize::MAX - 3, 0, None),
                Err(CryptoError::Truncated)
            );
            assert_eq!(
                c.open(&mut packet, 12, Some(0)),
                Err(CryptoError::EsnHeaderLength(12))
            );
            // Header, IV and ICV but no ciphertext at all is well-formed for the
            // length checks; it must then fail authentication, not panic.
            let mut empty = vec![0u8; min];
            assert_eq!(
                c.open(&mut empty, 8, None),
                Err(CryptoError::Authentication)
            );
        }
    }

    #[test]
    fn gcm_matches_mcgrew_viega_case_4_and_16() {
        // Nonce = salt || IV: the test case's 12-byte IV split as RFC 4106 does;
        // its AAD plays the authenticated header.
        let aad = hex::decode("feedfacedeadbeeffeedfacedeadbeefabaddad2").expect("hex");
        let pt = hex::decode(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72\
             1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        )
        .expect("hex");
        let key = "feffe9928665731c6d6a8f9467308308";
        let cases = [
            (
                128,
                key.to_string(),
                "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e\
                 21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091\
                 5bc94fbc3221a5db94fae95ae7121a47",
            ),
            (
                256,
                key.repeat(2),
                "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa\
                 8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662\
                 76fc6ece0f4e1768cddf8853bb2d551b",
            ),
        ];
        for (key_bits, key, want) in cases {
            for backend in [AeadBackend::Ring, AeadBackend::RustCrypto] {
                let km = Secret::new(hex::decode(format!("{key}cafebabe")).expect("hex"));
                let encr = EncrAlg::AesGcm16 { key_bits };
                let c = SaCipher::with_backend(backend, encr, None, &km, None).expect("valid");
                let mut packet = layout(&c, &aad, &pt);
                c.seal(&mut packet, aad.len(), 0xface_dbad_deca_f888, None)
                    .expect("seal");
                assert_eq!(
                    hex::encode(&packet[aad.len()..aad.len() + 8]),
                    "facedbaddecaf888"
                );
                assert_eq!(
                    hex::encode(&packet[aad.len() + 8..]),
                    want,
                    "{key_bits} {backend:?}"
                );
            }
        }
    }

    #[test]
    fn gcm_esn_aad_is_spi_seq_high_seq_low() {
        let km = keymat(20, 1);
        let c = SaCipher::new(EncrAlg::AesGcm16 { key_bits: 128 }, None, &km, None).expect("valid");
        let header = [0xaa, 0xbb, 0xcc, 0xdd, 0x11, 0x22, 0x33, 0x44];
        let pt = [0x5a; 20];
        let mut packet = layout(&c, &header, &pt);
        c.seal(&mut packet, 8, 0x0000_0001_1122_3344, Some(1))
            .expect("seal");

        let aead = aes_gcm(AeadBackend::RustCrypto, &km.expose()[..16]).expect("key");
        let mut nonce = [0u8; 12];
        nonce[..4].copy_from_slice(&km.expose()[16..]);
        nonce[4..].copy_from_slice(&0x0000_0001_1122_3344u64.to_be_bytes());
        let mut body = pt;
        let tag = aead.seal_in_place(
            &nonce,
            &[0xaa, 0xbb, 0xcc, 0xdd, 0, 0, 0, 1, 0x11, 0x22, 0x33, 0x44],
            &mut body,
        );
        assert_eq!(&packet[16..36], &body[..]);
        assert_eq!(&packet[36..], &tag[..]);
    }

    #[test]
    fn aes_cbc_rfc3602_case_2() {
        let key = hex::decode("c286696d887c9aa0611bbb3e2025a45a").expect("hex");
        let iv = aes::Block::try_from(
            &hex::decode("562e17996d093d28ddb3ba695a2e6f58").expect("hex")[..],
        )
        .expect("16 bytes");
        let aes = CbcAes::Aes128(aes::Aes128::new_from_slice(&key).expect("key"));
        let mut data: Vec<u8> = (0..32).collect();
        aes.cbc_encrypt(&iv, &mut data);
        assert_eq!(
            hex::encode(&data),
            "d296cd94c2cccf8a3a863028b5e1dc0a7586602d253cfff91b8266bea6d61ab1"
        );
        aes.cbc_decrypt(&iv, &mut data);
        assert_eq!(data, (0..32).collect::<Vec<u8>>());
    }

    #[test]
    fn cbc_iv_is_the_encrypted_seed_and_icv_covers_seq_high() {
        let encr = EncrAlg::AesCbc { key_bits: 128 };
        let (km, ik) = (keymat(16, 3), keymat(32, 4));
        let integ = IntegAlg::HmacSha256_128;
        let c = SaCipher::new(encr, Some(integ), &km, Some(&ik)).expect("valid");
        let header = [9, 9, 9, 9, 0, 0, 0, 42];
        let mut packet = layout(&c, &header, &[0x77; 32]);
        c.seal(&mut packet, 8, 0x0102_0304_0506_0708, Some(0xa0b0_c0d0))
            .expect("seal");

        // SP 800-38A appendix C: IV = AES_K(0^64 || seed).
        let mut iv = aes::Block::default();
        iv[8..].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        aes::Aes128::new_from_slice(km.expose())
            .expect("key")
            .encrypt_block(&mut iv);
        assert_eq!(&packet[8..24], &iv[..]);

        // RFC 4303 section 3.3.2.1: seq_high is appended to the ICV input only.
        let mut icv = [0u8; 16];
        Integrity::new(integ, &ik)
            .expect("key")
            .compute(&[&packet[..56], &0xa0b0_c0d0u32.to_be_bytes()], &mut icv);
        assert_eq!(&packet[56..], &icv[..]);
    }

    #[test]
    fn cbc_block_length_errors() {
        let encr = EncrAlg::AesCbc { key_bits: 256 };
        let integ = IntegAlg::HmacSha512_256;
        let (km, ik) = (keymat(32, 5), keymat(64, 6));
        let c = SaCipher::new(encr, Some(integ), &km, Some(&ik)).expect("valid");
        let mut packet = layout(&c, &[0; 8], &[0; 17]);
        assert_eq!(
            c.seal(&mut packet, 8, 0, None),
            Err(CryptoError::BlockLength(17))
        );

        // An authentic ICV over a ciphertext of the wrong length: the length
        // error comes only after the ICV check.
        let icv_at = packet.len() - 32;
        let (authed, icv) = packet.split_at_mut(icv_at);
        Integrity::new(integ, &ik)
            .expect("key")
            .compute(&[authed], icv);
        assert_eq!(
            c.open(&mut packet, 8, None),
            Err(CryptoError::BlockLength(17))
        );
    }

    #[test]
    fn icv_lengths() {
        let lens: Vec<usize> = all_ciphers().iter().map(SaCipher::icv_len).collect();
        assert_eq!(lens, [16, 16, 12, 16, 24, 32, 16, 16, 12, 16, 24, 32]);
    }

    #[test]
    fn construction_is_validated() {
        let gcm = EncrAlg::AesGcm16 { key_bits: 128 };
        let cbc = EncrAlg::AesCbc { key_bits: 128 };
        let integ = IntegAlg::HmacSha256_128;
        let ik = keymat(32, 0);
        let err = |r: Result<SaCipher, CryptoError>| r.map(|_| ()).expect_err("must fail");

        assert_eq!(
            err(SaCipher::new(gcm, Some(integ), &keymat(20, 0), Some(&ik))),
            CryptoError::IntegrityMismatch {
                encr: "AES-128-GCM-16",
                integ_given: true
            }
        );
        assert_eq!(
            err(SaCipher::new(cbc, None, &keymat(16, 0), None)),
            CryptoError::IntegrityMismatch {
                encr: "AES-128-CBC",
                integ_given: false
            }
        );
        assert_eq!(
            err(SaCipher::new(gcm, None, &keymat(16, 0), None)),
            CryptoError::KeyLength {
                alg: "AES-128-GCM-16",
                want: 20,
                got: 16
            }
        );
        assert_eq!(
            err(SaCipher::new(cbc, Some(integ), &keymat(16, 0), None)),
            CryptoError::KeyLength {
                alg: "HMAC-SHA2-256-128",
                want: 32,
                got: 0
            }
        );
        assert!(matches!(
            err(SaCipher::new(
                cbc,
                Some(integ),
                &keymat(16, 0),
                Some(&keymat(20, 0))
            )),
            CryptoError::KeyLength {
                want: 32,
                got: 20,
                ..
            }
        ));
        let aes192 = EncrAlg::AesCbc { key_bits: 192 };
        assert!(matches!(
            err(SaCipher::new(
                aes192,
                Some(integ),
                &keymat(24, 0),
                Some(&ik)
            )),
            CryptoError::KeyLength { .. }
        ));
    }

    #[test]
    fn debug_hides_keys() {
        let c = SaCipher::new(
            EncrAlg::AesGcm16 { key_bits: 128 },
            None,
            &keymat(20, 0xab),
            None,
        )
        .expect("valid");
        assert_eq!(
            format!("{c:?}"),
            "SaCipher { encr: AesGcm16 { key_bits: 128 }, integ: None, .. }"
        );
    }
}
