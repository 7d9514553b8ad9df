//! The configuration a customer puts on their own device for one tunnel, as
//! cloud VPN consoles offer it for download: strongSwan's swanctl.conf, Cisco
//! IOS (XE) CLI, or a plain list of every parameter. Rendered from the
//! tunnel's Tandem configuration, seen from the other end. The pre-shared
//! key is never part of it: each format says where it goes.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use tandem_crypto::{DhGroup, EncrAlg, IntegAlg, PrfAlg};
use tandem_ike::config::{ConnectionConfig, EspProposal, IkeProposal};
use tandem_ike::message::{Identity, TrafficSelector, id_type};

use crate::config::selector_prefix;

/// The formats `peer-config` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Swanctl,
    CiscoIos,
    Generic,
}

impl std::str::FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "swanctl" => Ok(Format::Swanctl),
            "cisco-ios" => Ok(Format::CiscoIos),
            "generic" => Ok(Format::Generic),
            other => Err(format!(
                "unknown peer-config format {other:?}: use swanctl, cisco-ios or generic"
            )),
        }
    }
}

/// The peer's configuration for `conn`, in `format`.
pub fn render(conn: &ConnectionConfig, format: Format) -> String {
    match format {
        Format::Swanctl => swanctl(conn),
        Format::CiscoIos => cisco_ios(conn),
        Format::Generic => generic(conn),
    }
}

/// The device rekeys later than Tandem, which rekeys at 90-100% of its
/// lifetimes: one side starts each rekey, so the two never collide.
fn peer_rekey(lifetime: Duration) -> u64 {
    (lifetime + lifetime / 10).as_secs().max(1)
}

/// The device's own address: Tandem's `remote_addr`, or left to the device
/// when Tandem accepts any.
fn device_addr(conn: &ConnectionConfig) -> String {
    conn.remote_addr
        .map_or_else(|| "%any".to_owned(), |a| a.to_string())
}

fn swanctl(conn: &ConnectionConfig) -> String {
    let name = &conn.name;
    let ike: Vec<String> = conn.ike_proposals.iter().map(ToString::to_string).collect();
    let esp: Vec<String> = conn.esp_proposals.iter().map(ToString::to_string).collect();
    let ts = |t: &[TrafficSelector]| t.iter().map(selector).collect::<Vec<_>>().join(",");
    let dpd = conn
        .dpd_delay
        .map_or_else(|| "0s".to_owned(), |d| format!("{}s", d.as_secs()));
    format!(
        "# strongSwan (swanctl.conf) configuration for Tandem tunnel {name}.
# Load it with: swanctl --load-all --file THIS_FILE
connections {{
  tandem-{name} {{
    version = 2
    local_addrs = {local}
    remote_addrs = {gateway}
    # Tandem speaks ESP in UDP 4500 only (RFC 3948), with or without NAT.
    encap = yes
    mobike = no
    proposals = {ike}
    # Tandem rekeys the IKE SA within {ike_life} s; this side only if it does not.
    rekey_time = {ike_rekey}s
    dpd_delay = {dpd}
    local {{
      auth = psk
      id = {local_id}
    }}
    remote {{
      auth = psk
      id = {remote_id}
    }}
    children {{
      {name} {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {esp}
        rekey_time = {child_rekey}s
        dpd_action = restart
        start_action = start
      }}
    }}
  }}
}}
secrets {{
  ike-tandem-{name} {{
    id-1 = {local_id}
    id-2 = {remote_id}
    # The pre-shared key is not in this file. Put it, as the one line
    #   secret = \"THE KEY\"
    # (the key in Tandem's psk_file for {name}), in {name}.psk.conf next to this file.
    include {name}.psk.conf
  }}
}}
",
        local = device_addr(conn),
        gateway = conn.local_addr,
        ike = ike.join(","),
        ike_life = conn.ike_lifetime.as_secs(),
        ike_rekey = peer_rekey(conn.ike_lifetime),
        local_id = identity(&conn.remote_id),
        remote_id = identity(&conn.local_id),
        lts = ts(&conn.remote_ts),
        rts = ts(&conn.local_ts),
        esp = esp.join(","),
        child_rekey = peer_rekey(conn.child_lifetime),
    )
}

fn cisco_ios(conn: &ConnectionConfig) -> String {
    let name = format!("tandem-{}", conn.name);
    let mut out = format!(
        "! Cisco IOS / IOS XE configuration for Tandem tunnel {tunnel} (IKEv2, crypto map).
! Tandem speaks ESP in UDP 4500 only (RFC 3948): the device must use UDP
! encapsulation even without NAT between it and the gateway.
! Replace OUTSIDE-INTERFACE with the interface facing {gateway}.
",
        tunnel = conn.name,
        gateway = conn.local_addr,
    );
    for (i, p) in conn.ike_proposals.iter().enumerate() {
        let _ = write!(
            out,
            "crypto ikev2 proposal {name}-{n}\n encryption {encr}\n{integ} prf {prf}\n group {dh}\n",
            n = i + 1,
            encr = cisco_encr(p.encr),
            integ = p
                .integ
                .map_or_else(String::new, |i| format!(" integrity {}\n", cisco_hash(i))),
            prf = cisco_prf(p.prf),
            dh = p.dh.id(),
        );
    }
    let _ = writeln!(out, "crypto ikev2 policy {name}");
    for i in 0..conn.ike_proposals.len() {
        let _ = writeln!(out, " proposal {name}-{}", i + 1);
    }
    let _ = write!(
        out,
        "crypto ikev2 keyring {name}
 peer {name}
  address {gateway}
  ! The key in Tandem's psk_file for {tunnel}.
  pre-shared-key THE-KEY
crypto ikev2 profile {name}
 match identity remote {remote_id}
 identity local {local_id}
 authentication remote pre-share
 authentication local pre-share
 keyring local {name}
 lifetime {ike_life}
{dpd}",
        tunnel = conn.name,
        gateway = conn.local_addr,
        remote_id = cisco_identity(&conn.local_id, true),
        local_id = cisco_identity(&conn.remote_id, false),
        ike_life = peer_rekey(conn.ike_lifetime),
        dpd = conn.dpd_delay.map_or_else(String::new, |d| format!(
            " dpd {} 5 on-demand\n",
            d.as_secs().clamp(10, 3600)
        )),
    );
    for (i, p) in conn.esp_proposals.iter().enumerate() {
        let _ = write!(
            out,
            "crypto ipsec transform-set {name}-{n} {transform}\n mode tunnel\n",
            n = i + 1,
            transform = cisco_transform(p),
        );
    }
    let _ = writeln!(out, "ip access-list extended {name}");
    for theirs in &conn.local_ts {
        for ours in &conn.remote_ts {
            let _ = writeln!(
                out,
                " permit ip {} {}",
                cisco_prefix(ours),
                cisco_prefix(theirs)
            );
        }
    }
    let transforms: Vec<String> = (1..=conn.esp_proposals.len())
        .map(|n| format!("{name}-{n}"))
        .collect();
    let _ = write!(
        out,
        "crypto map {name} 10 ipsec-isakmp
 set peer {gateway}
 set transform-set {transforms}
 set ikev2-profile {name}
{pfs} set security-association lifetime seconds {child_life}
 match address {name}
interface OUTSIDE-INTERFACE
 crypto map {name}
",
        gateway = conn.local_addr,
        transforms = transforms.join(" "),
        pfs = conn
            .esp_proposals
            .first()
            .and_then(|p| p.dh)
            .map_or_else(String::new, |g| format!(" set pfs group{}\n", g.id())),
        child_life = peer_rekey(conn.child_lifetime),
    );
    if conn.esp_proposals.iter().any(|p| p.esn) {
        out +=
            "! Tandem offers extended sequence numbers (ESN) here; IOS negotiates without them.\n";
    }
    out
}

fn generic(conn: &ConnectionConfig) -> String {
    let mut out = format!(
        "Tandem tunnel {name}: settings for the customer's device

Gateway (remote peer) address:   {gateway}
This device's address:           {device}
IKE version:                     IKEv2 (RFC 7296)
Authentication:                  pre-shared key, both sides (the key in Tandem's psk_file for {name})
This device's identity:          {local_id}
Gateway's identity:              {remote_id}
Encapsulation:                   ESP in UDP 4500 always (RFC 3948), even without NAT
",
        name = conn.name,
        gateway = conn.local_addr,
        device = device_addr(conn),
        local_id = identity(&conn.remote_id),
        remote_id = identity(&conn.local_id),
    );
    for (i, p) in conn.ike_proposals.iter().enumerate() {
        let _ = writeln!(
            out,
            "IKE proposal {}:                  {} ({})",
            i + 1,
            p,
            describe_ike(p)
        );
    }
    for (i, p) in conn.esp_proposals.iter().enumerate() {
        let _ = writeln!(
            out,
            "ESP proposal {}:                  {} ({})",
            i + 1,
            p,
            describe_esp(p)
        );
    }
    let ts = |t: &[TrafficSelector]| t.iter().map(selector).collect::<Vec<_>>().join(", ");
    let _ = write!(
        out,
        "IKE SA lifetime:                 {ike} s (Tandem rekeys first; set this device's to {ike_peer} s or more)
Child SA lifetime:               {child} s (Tandem rekeys first; set this device's to {child_peer} s or more)
Dead peer detection:             {dpd}
This device's networks:          {theirs}
Networks behind the gateway:     {ours}
",
        ike = conn.ike_lifetime.as_secs(),
        ike_peer = peer_rekey(conn.ike_lifetime),
        child = conn.child_lifetime.as_secs(),
        child_peer = peer_rekey(conn.child_lifetime),
        dpd = conn
            .dpd_delay
            .map_or_else(|| "off".to_owned(), |d| format!("every {} s", d.as_secs())),
        theirs = ts(&conn.remote_ts),
        ours = ts(&conn.local_ts),
    );
    out
}

/// An identity in the syntax strongSwan and Tandem's config both read.
fn identity(id: &Identity) -> String {
    let text = || String::from_utf8_lossy(&id.data).into_owned();
    match (id.id_type, id.data.len()) {
        (id_type::IPV4_ADDR, 4) => {
            IpAddr::from(<[u8; 4]>::try_from(id.data.as_slice()).unwrap_or_default()).to_string()
        }
        (id_type::IPV6_ADDR, 16) => {
            IpAddr::from(<[u8; 16]>::try_from(id.data.as_slice()).unwrap_or_default()).to_string()
        }
        (id_type::FQDN, _) => format!("@{}", text()),
        (id_type::RFC822_ADDR, _) => text(),
        _ => {
            let hex: String = id.data.iter().map(|b| format!("{b:02x}")).collect();
            format!("@#{hex}")
        }
    }
}

fn cisco_identity(id: &Identity, matching: bool) -> String {
    let text = identity(id);
    match id.id_type {
        id_type::IPV4_ADDR | id_type::IPV6_ADDR if matching => {
            let host = if id.id_type == id_type::IPV4_ADDR {
                "255.255.255.255"
            } else {
                "/128"
            };
            format!("address {text} {host}")
        }
        id_type::IPV4_ADDR | id_type::IPV6_ADDR => format!("address {text}"),
        id_type::FQDN => format!("fqdn {}", text.trim_start_matches('@')),
        id_type::RFC822_ADDR => format!("email {text}"),
        _ => format!("key-id {}", text.trim_start_matches("@#")),
    }
}

/// A selector as a prefix (what Tandem's config makes), else as a range.
fn selector(ts: &TrafficSelector) -> String {
    match selector_prefix(ts) {
        Some((start, len)) => format!("{start}/{len}"),
        None => format!("{}-{}", ts.start, ts.end),
    }
}

fn cisco_prefix(ts: &TrafficSelector) -> String {
    match selector_prefix(ts) {
        Some((IpAddr::V4(start), len)) => {
            let wildcard = u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
            format!("{start} {}", std::net::Ipv4Addr::from(wildcard))
        }
        _ => format!("{} ! as a range: {}", ts.start, selector(ts)),
    }
}

fn cisco_encr(e: EncrAlg) -> &'static str {
    match e {
        EncrAlg::AesCbc { key_bits: 128 } => "aes-cbc-128",
        EncrAlg::AesCbc { .. } => "aes-cbc-256",
        EncrAlg::AesGcm16 { key_bits: 128 } => "aes-gcm-128",
        EncrAlg::AesGcm16 { .. } => "aes-gcm-256",
    }
}

fn cisco_hash(i: IntegAlg) -> &'static str {
    match i {
        IntegAlg::HmacSha1_96 => "sha1",
        IntegAlg::HmacSha256_128 => "sha256",
        IntegAlg::HmacSha384_192 => "sha384",
        IntegAlg::HmacSha512_256 => "sha512",
    }
}

fn cisco_prf(p: PrfAlg) -> &'static str {
    match p {
        PrfAlg::HmacSha1 => "sha1",
        PrfAlg::HmacSha256 => "sha256",
        PrfAlg::HmacSha384 => "sha384",
        PrfAlg::HmacSha512 => "sha512",
    }
}

fn cisco_transform(p: &EspProposal) -> String {
    let encr = match p.encr {
        EncrAlg::AesCbc { key_bits } => format!("esp-aes {key_bits}"),
        EncrAlg::AesGcm16 { key_bits } => format!("esp-gcm {key_bits}"),
    };
    match p.integ {
        None => encr,
        Some(IntegAlg::HmacSha1_96) => format!("{encr} esp-sha-hmac"),
        Some(i) => format!("{encr} esp-{}-hmac", cisco_hash(i)),
    }
}

fn describe_encr(e: EncrAlg) -> String {
    match e {
        EncrAlg::AesCbc { key_bits } => format!("AES-CBC-{key_bits}"),
        EncrAlg::AesGcm16 { key_bits } => format!("AES-GCM-{key_bits} with a 16-byte ICV"),
    }
}

fn describe_dh(g: DhGroup) -> String {
    let name = match g {
        DhGroup::Modp2048 => "2048-bit MODP",
        DhGroup::Ecp256 => "NIST P-256",
        DhGroup::Ecp384 => "NIST P-384",
        DhGroup::Curve25519 => "Curve25519",
    };
    format!("DH group {} ({name})", g.id())
}

fn describe_ike(p: &IkeProposal) -> String {
    let integ = p.integ.map_or_else(String::new, |i| {
        format!(", integrity HMAC-{}", describe_hash(i))
    });
    format!(
        "encryption {}{integ}, PRF HMAC-{}, {}",
        describe_encr(p.encr),
        describe_prf(p.prf),
        describe_dh(p.dh)
    )
}

fn describe_esp(p: &EspProposal) -> String {
    let integ = p.integ.map_or_else(String::new, |i| {
        format!(", integrity HMAC-{}", describe_hash(i))
    });
    let pfs = p.dh.map_or_else(
        || "no PFS".to_owned(),
        |g| format!("PFS with {}", describe_dh(g)),
    );
    let esn = if p.esn {
        ", extended sequence numbers"
    } else {
        ""
    };
    format!("encryption {}{integ}, {pfs}{esn}", describe_encr(p.encr))
}

fn describe_hash(i: IntegAlg) -> &'static str {
    match i {
        IntegAlg::HmacSha1_96 => "SHA-1-96",
        IntegAlg::HmacSha256_128 => "SHA-256-128",
        IntegAlg::HmacSha384_192 => "SHA-384-192",
        IntegAlg::HmacSha512_256 => "SHA-512-256",
    }
}

fn describe_prf(p: PrfAlg) -> &'static str {
    match p {
        PrfAlg::HmacSha1 => "SHA-1",
        PrfAlg::HmacSha256 => "SHA-256",
        PrfAlg::HmacSha384 => "SHA-384",
        PrfAlg::HmacSha512 => "SHA-512",
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn site_a() -> ConnectionConfig {
        let text = r#"
[node]
name = "gw1"
[ike]
listen = ["192.0.2.1"]
[[connection]]
name = "site-a"
local_addr = "192.0.2.1"
remote_addr = "198.51.100.7"
remote_id = "@branch.example.com"
psk = "0123456789abcdef0123"
ike_proposals = ["aes256gcm16-prfsha256-curve25519", "aes128-sha256-modp2048"]
esp_proposals = ["aes256gcm16-ecp256", "aes128-sha1-esn"]
local_ts = ["10.2.0.0/16"]
remote_ts = ["10.1.0.0/24", "10.1.8.1/32"]
ike_lifetime = "8h"
child_lifetime = "1h"
dpd_delay = "30s"
"#;
        let cfg = crate::config::Config::parse(text, std::path::Path::new(".")).unwrap();
        cfg.connections[0].ike.clone()
    }

    #[test]
    fn swanctl_is_the_other_end_of_the_tunnel() {
        let out = render(&site_a(), Format::Swanctl);
        for line in [
            "local_addrs = 198.51.100.7",
            "remote_addrs = 192.0.2.1",
            "encap = yes",
            "proposals = aes256gcm16-prfsha256-curve25519,aes128-sha256-modp2048",
            "rekey_time = 31680s",
            "dpd_delay = 30s",
            "id = @branch.example.com",
            "id = 192.0.2.1",
            "local_ts = 10.1.0.0/24,10.1.8.1/32",
            "remote_ts = 10.2.0.0/16",
            "esp_proposals = aes256gcm16-ecp256,aes128-sha1-esn",
            "rekey_time = 3960s",
            "include site-a.psk.conf",
        ] {
            assert!(out.contains(line), "no {line:?} in\n{out}");
        }
        assert!(!out.contains("0123456789abcdef"), "the key leaked");
    }

    #[test]
    fn cisco_and_generic_name_every_parameter_and_never_the_key() {
        let conn = site_a();
        let ios = render(&conn, Format::CiscoIos);
        for line in [
            "encryption aes-gcm-256",
            "prf sha256",
            "group 31",
            "integrity sha256",
            "group 14",
            "address 192.0.2.1",
            "match identity remote address 192.0.2.1 255.255.255.255",
            "identity local fqdn branch.example.com",
            "crypto ipsec transform-set tandem-site-a-1 esp-gcm 256",
            "crypto ipsec transform-set tandem-site-a-2 esp-aes 128 esp-sha-hmac",
            " permit ip 10.1.0.0 0.0.0.255 10.2.0.0 0.0.255.255",
            " permit ip 10.1.8.1 0.0.0.0 10.2.0.0 0.0.255.255",
            " set pfs group19",
            " dpd 30 5 on-demand",
        ] {
            assert!(ios.contains(line), "no {line:?} in\n{ios}");
        }
        let generic = render(&conn, Format::Generic);
        for line in [
            "Gateway (remote peer) address:   192.0.2.1",
            "AES-GCM-256 with a 16-byte ICV, PRF HMAC-SHA-256, DH group 31 (Curve25519)",
            "PFS with DH group 19 (NIST P-256)",
            "extended sequence numbers",
            "Dead peer detection:             every 30 s",
            "This device's networks:          10.1.0.0/24, 10.1.8.1/32",
        ] {
            assert!(generic.contains(line), "no {line:?} in\n{generic}");
        }
        for out in [ios, generic] {
            assert!(!out.contains("0123456789abcdef"), "the key leaked");
        }
    }

    #[test]
    fn selectors_that_are_not_prefixes_are_ranges() {
        let ts = TrafficSelector {
            ip_protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: "10.0.0.1".parse().unwrap(),
            end: "10.0.0.5".parse().unwrap(),
        };
        assert_eq!(selector(&ts), "10.0.0.1-10.0.0.5");
        let all = TrafficSelector {
            start: "0.0.0.0".parse().unwrap(),
            end: "255.255.255.255".parse().unwrap(),
            ..ts
        };
        assert_eq!(selector(&all), "0.0.0.0/0");
        assert_eq!(cisco_prefix(&all), "0.0.0.0 255.255.255.255");
    }

    #[test]
    fn formats_parse_by_name() {
        assert_eq!("cisco-ios".parse(), Ok(Format::CiscoIos));
        assert!("juniper".parse::<Format>().unwrap_err().contains("swanctl"));
    }
}
