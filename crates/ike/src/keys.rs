//! Key derivation: SKEYSEED and the IKE SA keys (RFC 7296 section 2.14), IKE SA
//! rekeying (section 2.18) and child SA KEYMAT (section 2.17).

use tandem_crypto::{CryptoError, IntegAlg, PrfAlg, SaCipher, Secret};

use crate::config::{EspProposal, IkeProposal};

/// The seven IKE SA keys. Plain data, so an established IKE SA can be replicated.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IkeKeys {
    pub sk_d: Secret,
    pub sk_ai: Option<Secret>,
    pub sk_ar: Option<Secret>,
    pub sk_ei: Secret,
    pub sk_er: Secret,
    pub sk_pi: Secret,
    pub sk_pr: Secret,
}

/// SKEYSEED = prf(Ni | Nr, g^ir) for a new IKE SA.
pub(crate) fn skeyseed(prf: PrfAlg, ni: &[u8], nr: &[u8], g_ir: &Secret) -> Secret {
    let key = [ni, nr].concat();
    prf.prf(&key, &[g_ir.expose()])
}

/// SKEYSEED = prf(SK_d (old), g^ir (new) | Ni | Nr) for a rekeyed IKE SA, with the
/// old SA's PRF (the one SK_d belongs to; RFC 7296 erratum 4718, as strongSwan).
pub(crate) fn rekey_skeyseed(
    old_prf: PrfAlg,
    old_sk_d: &Secret,
    g_ir: &Secret,
    ni: &[u8],
    nr: &[u8],
) -> Secret {
    old_prf.prf(old_sk_d.expose(), &[g_ir.expose(), ni, nr])
}

/// {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr}
///     = prf+(SKEYSEED, Ni | Nr | SPIi | SPIr)
pub(crate) fn derive_ike_keys(
    p: &IkeProposal,
    skeyseed: &Secret,
    ni: &[u8],
    nr: &[u8],
    spi_i: u64,
    spi_r: u64,
) -> IkeKeys {
    let prf_len = p.prf.output_len();
    let a = p.integ.map_or(0, IntegAlg::key_len);
    let e = p.encr.keymat_len();
    let seed = [ni, nr, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()].concat();
    let lens = [prf_len, a, a, e, e, prf_len, prf_len];
    let total = lens.iter().sum();
    let keymat = p.prf.prf_plus(skeyseed.expose(), &seed, total);
    let mut parts = keymat
        .split(&lens)
        .unwrap_or_default()
        .into_iter()
        .map(Some)
        .collect::<Vec<_>>();
    let mut take = |i: usize| {
        parts
            .get_mut(i)
            .and_then(Option::take)
            .unwrap_or_else(|| Secret::new(Vec::new()))
    };
    let integ = |s: Secret| p.integ.map(|_| s);
    IkeKeys {
        sk_d: take(0),
        sk_ai: integ(take(1)),
        sk_ar: integ(take(2)),
        sk_ei: take(3),
        sk_er: take(4),
        sk_pi: take(5),
        sk_pr: take(6),
    }
}

impl IkeKeys {
    /// (outbound, inbound) ciphers for the SK payload from one side's view.
    pub fn ciphers(
        &self,
        p: &IkeProposal,
        initiator: bool,
    ) -> Result<(SaCipher, SaCipher), CryptoError> {
        let i = SaCipher::new(p.encr, p.integ, &self.sk_ei, self.sk_ai.as_ref())?;
        let r = SaCipher::new(p.encr, p.integ, &self.sk_er, self.sk_ar.as_ref())?;
        Ok(if initiator { (i, r) } else { (r, i) })
    }
}

/// Child SA keys, per direction, from the exchange initiator's view.
#[derive(Debug, Clone)]
pub(crate) struct ChildKeys {
    pub encr_i: Secret,
    pub integ_i: Option<Secret>,
    pub encr_r: Secret,
    pub integ_r: Option<Secret>,
}

/// KEYMAT = prf+(SK_d, [g^ir (new) |] Ni | Nr); the initiator-to-responder keys
/// come first, encryption before integrity in each direction.
pub(crate) fn derive_child_keys(
    prf: PrfAlg,
    sk_d: &Secret,
    esp: &EspProposal,
    g_ir: Option<&Secret>,
    ni: &[u8],
    nr: &[u8],
) -> ChildKeys {
    let e = esp.encr.keymat_len();
    let a = esp.integ.map_or(0, IntegAlg::key_len);
    let seed = [g_ir.map_or(&[][..], Secret::expose), ni, nr].concat();
    let keymat = prf.prf_plus(sk_d.expose(), &seed, 2 * (e + a));
    let part = |at: usize, len: usize| {
        Secret::from_slice(keymat.expose().get(at..at + len).unwrap_or_default())
    };
    let integ = |at: usize| esp.integ.map(|_| part(at, a));
    ChildKeys {
        encr_i: part(0, e),
        integ_i: integ(e),
        encr_r: part(e + a, e),
        integ_r: integ(2 * e + a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_esp_proposal, parse_ike_proposal};

    // No published IKEv2 vector covers these exact inputs; the expected values
    // were computed once with Python's hmac/hashlib (an independent HMAC-SHA256
    // and prf+ written from RFC 7296 2.13) and are checked here byte for byte.

    #[test]
    fn skeyseed_and_ike_keys_known_answer() {
        let p = parse_ike_proposal("aes128-sha256-ecp256").unwrap();
        let ni = [0x11u8; 32];
        let nr = [0x22u8; 32];
        let g_ir = Secret::from_slice(&[0x33; 32]);
        let seed = skeyseed(p.prf, &ni, &nr, &g_ir);
        assert_eq!(hex::encode(seed.expose()), SKEYSEED);
        let keys = derive_ike_keys(&p, &seed, &ni, &nr, 0x0102030405060708, 0x1112131415161718);
        assert_eq!(hex::encode(keys.sk_d.expose()), SK_D);
        assert_eq!(keys.sk_ai.as_ref().map(Secret::len), Some(32));
        assert_eq!(keys.sk_ei.len(), 16);
        assert_eq!(hex::encode(keys.sk_pr.expose()), SK_PR);
        let child = derive_child_keys(
            p.prf,
            &keys.sk_d,
            &parse_esp_proposal("aes128gcm16").unwrap(),
            None,
            &ni,
            &nr,
        );
        assert_eq!(child.encr_i.len(), 20);
        assert!(child.integ_i.is_none());
        assert_eq!(hex::encode(child.encr_r.expose()), CHILD_ENCR_R);
        let rekeyed = rekey_skeyseed(p.prf, &keys.sk_d, &g_ir, &nr, &ni);
        assert_eq!(hex::encode(rekeyed.expose()), REKEY_SKEYSEED);
    }

    #[test]
    fn gcm_ike_keys_have_no_integrity_keys_and_salted_encryption_keys() {
        let p = parse_ike_proposal("aes256gcm16-prfsha384-ecp384").unwrap();
        let g_ir = Secret::from_slice(&[1; 48]);
        let seed = skeyseed(p.prf, &[2; 32], &[3; 32], &g_ir);
        let keys = derive_ike_keys(&p, &seed, &[2; 32], &[3; 32], 1, 2);
        assert!(keys.sk_ai.is_none() && keys.sk_ar.is_none());
        assert_eq!(keys.sk_ei.len(), 36);
        assert_eq!(keys.sk_d.len(), 48);
    }

    const SKEYSEED: &str = "27d5c053aba7808dccba40fc66bfa0094129483e592db687e7345ec0550da58e";
    const SK_D: &str = "df4ad28668da8188ce5defec720ccf0c251f31cdf3a882fd5f855743dc144686";
    const SK_PR: &str = "12738b2b053adc5a7bf900db34d6f5f82b2efaecd20636b72d5a40971e1f420b";
    const CHILD_ENCR_R: &str = "afc07cb74e76051330ff1407d7155cc8514928ab";
    const REKEY_SKEYSEED: &str = "56a074e7a39461914222f25c5b53d64008681a17a901ca288d5bfc6ac61059b2";
}
