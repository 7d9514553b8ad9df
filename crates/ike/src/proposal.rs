//! SA payload negotiation (RFC 7296 section 2.7 and 3.3): turning our configured
//! proposals into SA payloads, choosing from a peer's offer as responder, and
//! checking a responder's choice as initiator.

use tandem_crypto::{DhGroup, EncrAlg, IntegAlg, PrfAlg};

use crate::config::{EspProposal, IkeProposal};
use crate::message::{Proposal, ProtocolId, Spi, Transform, esn, transform_type};

/// DH transform ID 0 (NONE): a peer may offer it next to real groups to say
/// PFS is optional.
const DH_NONE: u16 = 0;

fn transform(transform_type: u8, id: u16) -> Transform {
    Transform {
        transform_type,
        id,
        key_len: None,
        unknown_attribute: false,
    }
}

fn encr_transform(e: EncrAlg) -> Transform {
    Transform {
        key_len: Some(e.key_bits()),
        ..transform(transform_type::ENCR, e.transform_id())
    }
}

fn ike_transforms(p: &IkeProposal) -> Vec<Transform> {
    let mut t = vec![encr_transform(p.encr)];
    t.push(transform(transform_type::PRF, p.prf.id()));
    if let Some(i) = p.integ {
        t.push(transform(transform_type::INTEG, i.id()));
    }
    t.push(transform(transform_type::DH, p.dh.id()));
    t
}

/// `with_dh`: include the PFS group (CREATE_CHILD_SA), never in IKE_AUTH.
fn esp_transforms(p: &EspProposal, with_dh: bool) -> Vec<Transform> {
    let mut t = vec![encr_transform(p.encr)];
    if let Some(i) = p.integ {
        t.push(transform(transform_type::INTEG, i.id()));
    }
    if let (true, Some(g)) = (with_dh, p.dh) {
        t.push(transform(transform_type::DH, g.id()));
    }
    t.push(transform(
        transform_type::ESN,
        if p.esn { esn::YES } else { esn::NO },
    ));
    t
}

fn numbered(protocol: ProtocolId, spi: Spi, sets: Vec<Vec<Transform>>) -> Vec<Proposal> {
    sets.into_iter()
        .zip(1u8..)
        .map(|(transforms, number)| Proposal {
            number,
            protocol,
            spi,
            transforms,
        })
        .collect()
}

/// Our IKE SA offer; `spi` is `Spi::None` in IKE_SA_INIT and our new SPI in an
/// IKE SA rekey.
pub(crate) fn ike_offer(ours: &[IkeProposal], spi: Spi) -> Vec<Proposal> {
    numbered(
        ProtocolId::Ike,
        spi,
        ours.iter().map(ike_transforms).collect(),
    )
}

pub(crate) fn esp_offer(ours: &[EspProposal], spi: u32, with_dh: bool) -> Vec<Proposal> {
    numbered(
        ProtocolId::Esp,
        Spi::Child(spi),
        ours.iter().map(|p| esp_transforms(p, with_dh)).collect(),
    )
}

/// The peer offers `t` in this proposal (transforms with attributes we do not
/// understand never match, RFC 7296 section 3.3.6).
fn offers(peer: &Proposal, t: &Transform) -> bool {
    peer.transforms.iter().any(|p| {
        !p.unknown_attribute
            && p.transform_type == t.transform_type
            && p.id == t.id
            && p.key_len == t.key_len
    })
}

fn offers_type(peer: &Proposal, transform_type: u8) -> bool {
    peer.transforms
        .iter()
        .any(|p| p.transform_type == transform_type)
}

/// Responder: the first of the peer's proposals (in its order of preference) that
/// one of ours satisfies. Returns the reply proposal (the peer's number, no SPI;
/// the caller sets ours) and what was chosen.
pub(crate) fn select_ike(
    offered: &[Proposal],
    ours: &[IkeProposal],
) -> Option<(Proposal, IkeProposal)> {
    offered
        .iter()
        .filter(|p| p.protocol == ProtocolId::Ike)
        .find_map(|peer| {
            ours.iter().find_map(|mine| {
                let ts = ike_transforms(mine);
                // A combined-mode cipher needs no integrity transform whatever the
                // peer lists beside it.
                let all = ts.iter().all(|t| offers(peer, t));
                all.then_some({
                    (
                        Proposal {
                            number: peer.number,
                            protocol: ProtocolId::Ike,
                            spi: Spi::None,
                            transforms: ts,
                        },
                        *mine,
                    )
                })
            })
        })
}

/// Responder: chooses a child SA proposal. `with_dh` is false in IKE_AUTH, where
/// DH transforms are ignored (section 1.2), and true in CREATE_CHILD_SA, where our
/// PFS setting must match the peer's.
pub(crate) fn select_esp(
    offered: &[Proposal],
    ours: &[EspProposal],
    with_dh: bool,
) -> Option<(Proposal, u32, EspProposal)> {
    offered
        .iter()
        .filter(|p| p.protocol == ProtocolId::Esp)
        .find_map(|peer| {
            let Spi::Child(peer_spi) = peer.spi else {
                return None;
            };
            ours.iter().find_map(|mine| {
                let ts = esp_transforms(mine, with_dh);
                let mut ok = ts
                    .iter()
                    .filter(|t| t.transform_type != transform_type::ESN)
                    .all(|t| offers(peer, t));
                // A missing ESN transform means no ESN.
                ok &= if mine.esn {
                    offers(peer, &transform(transform_type::ESN, esn::YES))
                } else {
                    !offers_type(peer, transform_type::ESN)
                        || offers(peer, &transform(transform_type::ESN, esn::NO))
                };
                if with_dh && mine.dh.is_none() && offers_type(peer, transform_type::DH) {
                    ok &= offers(peer, &transform(transform_type::DH, DH_NONE));
                }
                ok.then_some({
                    (
                        Proposal {
                            number: peer.number,
                            protocol: ProtocolId::Esp,
                            spi: Spi::None,
                            transforms: ts,
                        },
                        peer_spi,
                        *mine,
                    )
                })
            })
        })
}

/// One transform of each type, as a responder's reply must carry.
struct Chosen {
    encr: Option<EncrAlg>,
    integ: Option<IntegAlg>,
    prf: Option<PrfAlg>,
    dh: Option<DhGroup>,
    esn: Option<bool>,
}

fn chosen(reply: &Proposal) -> Option<Chosen> {
    let mut c = Chosen {
        encr: None,
        integ: None,
        prf: None,
        dh: None,
        esn: None,
    };
    for t in &reply.transforms {
        if t.unknown_attribute {
            return None;
        }
        // A reply listing two transforms of one type did not choose.
        let fresh = match t.transform_type {
            transform_type::ENCR => c
                .encr
                .replace(EncrAlg::from_transform(t.id, t.key_len)?)
                .is_none(),
            transform_type::INTEG => c.integ.replace(IntegAlg::from_id(t.id)?).is_none(),
            transform_type::PRF => c.prf.replace(PrfAlg::from_id(t.id)?).is_none(),
            transform_type::DH => c.dh.replace(DhGroup::from_id(t.id)?).is_none(),
            transform_type::ESN => c.esn.replace(t.id == esn::YES).is_none(),
            _ => return None,
        };
        if !fresh {
            return None;
        }
    }
    Some(c)
}

/// Initiator: the responder's single reply proposal, accepted only if it is
/// exactly one of the proposals we offered.
pub(crate) fn accept_ike(reply: &[Proposal], ours: &[IkeProposal]) -> Option<(IkeProposal, Spi)> {
    let [reply] = reply else { return None };
    let c = chosen(reply)?;
    let p = IkeProposal {
        encr: c.encr?,
        integ: c.integ,
        prf: c.prf?,
        dh: c.dh?,
    };
    (reply.protocol == ProtocolId::Ike && ours.contains(&p)).then_some((p, reply.spi))
}

/// Initiator: the responder's child SA choice and its inbound SPI (our outbound).
pub(crate) fn accept_esp(
    reply: &[Proposal],
    ours: &[EspProposal],
    with_dh: bool,
) -> Option<(EspProposal, u32)> {
    let [reply] = reply else { return None };
    let Spi::Child(spi) = reply.spi else {
        return None;
    };
    let c = chosen(reply)?;
    let p = EspProposal {
        encr: c.encr?,
        integ: c.integ,
        dh: c.dh,
        esn: c.esn.unwrap_or(false),
    };
    let ok = ours.iter().any(|mine| {
        let dh = if with_dh { mine.dh } else { None };
        EspProposal { dh, ..*mine } == p
    });
    (reply.protocol == ProtocolId::Esp && ok).then_some((p, spi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_esp_proposal, parse_ike_proposal};

    #[test]
    fn responder_takes_the_peers_first_acceptable_proposal() {
        let ours = [
            parse_ike_proposal("aes128-sha256-modp2048").unwrap(),
            parse_ike_proposal("aes256gcm16-prfsha384-ecp384").unwrap(),
        ];
        let peer = ike_offer(
            &[
                parse_ike_proposal("aes256gcm16-prfsha512-ecp384").unwrap(),
                parse_ike_proposal("aes256gcm16-prfsha384-ecp384").unwrap(),
                parse_ike_proposal("aes128-sha256-modp2048").unwrap(),
            ],
            Spi::None,
        );
        let (reply, chosen) = select_ike(&peer, &ours).unwrap();
        assert_eq!(reply.number, 2);
        assert_eq!(chosen, ours[1]);
        assert_eq!(accept_ike(&[reply], &ours), Some((ours[1], Spi::None)));
    }

    #[test]
    fn unknown_attributes_and_missing_transforms_do_not_match() {
        let ours = [parse_ike_proposal("aes128-sha256-modp2048").unwrap()];
        let mut peer = ike_offer(&ours, Spi::None);
        peer[0].transforms[0].unknown_attribute = true;
        assert!(select_ike(&peer, &ours).is_none());
        let mut peer = ike_offer(&ours, Spi::None);
        peer[0]
            .transforms
            .retain(|t| t.transform_type != transform_type::DH);
        assert!(select_ike(&peer, &ours).is_none());
    }

    #[test]
    fn esp_pfs_and_esn() {
        let ours = [parse_esp_proposal("aes128gcm16-ecp256-esn").unwrap()];
        // IKE_AUTH: the DH group is not offered and not required.
        let offer = esp_offer(&ours, 0x1234, false);
        let (reply, spi, p) = select_esp(&offer, &ours, false).unwrap();
        assert_eq!((spi, p), (0x1234, ours[0]));
        let reply = Proposal {
            spi: Spi::Child(0x5678),
            ..reply
        };
        let (accepted, spi) = accept_esp(&[reply], &ours, false).unwrap();
        assert_eq!((accepted.dh, accepted.esn, spi), (None, true, 0x5678));
        // CREATE_CHILD_SA: the group must be there.
        assert!(select_esp(&offer, &ours, true).is_none());
        let offer = esp_offer(&ours, 1, true);
        assert_eq!(select_esp(&offer, &ours, true).unwrap().2, ours[0]);
        // No ESN on our side refuses a peer that insists on ESN.
        let noesn = [parse_esp_proposal("aes128gcm16-ecp256").unwrap()];
        assert!(select_esp(&offer, &noesn, true).is_none());
    }

    #[test]
    fn reply_must_be_one_we_offered() {
        let ours = [parse_ike_proposal("aes128-sha256-modp2048").unwrap()];
        let other = ike_offer(
            &[parse_ike_proposal("aes128-sha1-modp2048").unwrap()],
            Spi::None,
        );
        assert!(accept_ike(&other, &ours).is_none());
        let two = ike_offer(&[ours[0], ours[0]], Spi::None);
        assert!(accept_ike(&two, &ours).is_none());
    }
}
