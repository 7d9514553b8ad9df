//! tandemd's TOML configuration: parsed strictly (unknown keys are errors) and
//! validated into the typed configuration the IKE endpoint takes. Every error is
//! one line that names the key and says what was expected, because the person
//! reading it is an operator with a broken gateway, not a Rust developer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tandem_cluster::state::TunnelSpec;
use tandem_crypto::Secret;
use tandem_ike::config::{
    ConnectionConfig, Limits, parse_esp_proposal, parse_identity, parse_ike_proposal,
};
use tandem_ike::message::TrafficSelector;

/// Defaults follow common cloud VPN gateways (AWS, Azure): IKE SA 8 h, child 1 h.
const DEFAULT_IKE_LIFETIME: Duration = Duration::from_secs(28_800);
const DEFAULT_CHILD_LIFETIME: Duration = Duration::from_secs(3_600);
const DEFAULT_DPD_DELAY: Duration = Duration::from_secs(30);
const DEFAULT_REPLAY_WINDOW: u32 = 1024;
const DEFAULT_TUN_NAME: &str = "tandem0";
/// 1500 minus outer IPv4 (20), UDP (8), ESP header and IV (8 + 16), the largest
/// padding and trailer (17) and ICV (32), rounded down: inner packets of this size
/// always fit one outer 1500-byte frame, so the dataplane never fragments.
const DEFAULT_TUN_MTU: u16 = 1400;
const IKE_PORT: u16 = 500;
const NATT_PORT: u16 = 4500;

/// A configuration error, already phrased for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn err(key: impl std::fmt::Display, msg: impl std::fmt::Display) -> ConfigError {
    ConfigError(format!("{key}: {msg}"))
}

/// The validated configuration of one tandemd.
#[derive(Debug)]
pub struct Config {
    pub node_name: String,
    pub control_socket: PathBuf,
    /// Where Prometheus scrapes `/metrics`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Where UDP 500 and 4500 are bound, one pair per address.
    pub listen: Vec<IpAddr>,
    pub ike_port: u16,
    pub natt_port: u16,
    pub tun_name: String,
    pub tun_mtu: u16,
    pub limits: Limits,
    /// Which AES-GCM implementation seals and opens ESP (`[node]
    /// aead_backend`): ring, twice as fast here, whose expanded key
    /// schedules are not wiped when an SA ends (ring offers no way to); or
    /// RustCrypto, which wipes them.
    pub aead_backend: tandem_crypto::AeadBackend,
    pub connections: Vec<Connection>,
    /// Absent: a standalone gateway, no replication.
    pub cluster: Option<ClusterSettings>,
}

/// The `[cluster]` section: this node's place in the Raft cluster.
#[derive(Debug)]
pub struct ClusterSettings {
    pub id: u64,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub pki_dir: PathBuf,
    pub witness: bool,
    pub snapshot_every: u64,
    /// The initial voters, the same list on every node.
    pub members: std::collections::BTreeMap<u64, tandem_cluster::Member>,
    pub mode: tandem_cluster::ownership::Mode,
    pub lease: tandem_cluster::lease::LeaseTiming,
    /// How a new owner takes over the tunnels' addresses.
    pub vip: Vip,
    /// Where the operators' gRPC API listens, if anywhere.
    pub admin_listen: Option<SocketAddr>,
    /// How the connections' `lan_addr` moves: like `vip`, on the LAN side.
    pub lan_vip: Vip,
}

/// How the tunnels' local addresses (VIPs) move to their owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vip {
    /// Nothing moves them (the addresses are reached some other way).
    None,
    /// Added to and removed from this interface through netlink, announced
    /// with gratuitous ARP.
    Linux { interface: String, prefix_len: u8 },
    /// A script called as `HOOK up|down ADDRESS NODE` (like keepalived's
    /// notify scripts), for clouds that move addresses by API.
    Hook(PathBuf),
}

/// One configured tunnel: what the IKE endpoint needs plus the dataplane settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    pub ike: ConnectionConfig,
    /// Inner prefixes behind the peer: routed into the TUN device.
    pub remote_prefixes: Vec<(IpAddr, u8)>,
    pub replay_window: u32,
    pub initiate: bool,
    /// The inner (LAN-side) gateway address the tunnel's local hosts route
    /// through; it moves with the tunnel like the VIP (cluster mode).
    pub lan_addr: Option<IpAddr>,
}

impl Connection {
    /// What the cluster replicates of this tunnel.
    pub fn spec(&self) -> TunnelSpec {
        TunnelSpec {
            ike: self.ike.clone(),
            replay_window: self.replay_window,
            initiate: self.initiate,
            lan_addr: self.lan_addr,
        }
    }

    /// A tunnel the cluster replicated (validated where it was applied).
    pub fn from_spec(spec: TunnelSpec) -> Connection {
        Connection {
            remote_prefixes: spec
                .ike
                .remote_ts
                .iter()
                .filter_map(selector_prefix)
                .collect(),
            ike: spec.ike,
            replay_window: spec.replay_window,
            initiate: spec.initiate,
            lan_addr: spec.lan_addr,
        }
    }
}

/// Where `psk_file` keys are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PskFiles {
    /// This node's disk, relative to this directory (a config file's, or
    /// the file `tandemd ctl apply` names).
    Dir(PathBuf),
    /// Sent by tandemctl, which read them on the operator's machine: by the
    /// `psk_file` value that names each.
    Sent(BTreeMap<String, Secret>),
}

impl PskFiles {
    fn read(&self, key: &str, file: &Path) -> Result<Secret, ConfigError> {
        match self {
            PskFiles::Dir(base) => read_psk_file(key, &base.join(file)),
            PskFiles::Sent(files) => files
                .get(file.to_string_lossy().as_ref())
                .map(|key| Secret::from_slice(key.expose().trim_ascii_end()))
                .ok_or_else(|| err(key, format!("{} was not sent along", file.display()))),
        }
    }
}

/// Tunnels to apply to a running cluster (`tandemctl apply`): `[[connection]]`
/// tables as in a config file, checked as strictly, against this node's
/// `listen` addresses and the tunnels it runs (`current`), which they
/// replace by name. Nothing is applied unless all of them are valid.
pub fn parse_tunnels(
    text: &str,
    psk: &PskFiles,
    listen: &[IpAddr],
    current: &[&Connection],
) -> Result<Vec<Connection>, ConfigError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawTunnels {
        #[serde(default, rename = "connection")]
        connections: Vec<RawConnection>,
    }
    let raw: RawTunnels = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
    if raw.connections.is_empty() {
        return Err(err("connection", "nothing to apply: no [[connection]]"));
    }
    validate_connections(raw.connections, psk, listen, current)
}

/// Validates `[[connection]]` tables: each by itself, their names unique,
/// and their remote selectors overlapping neither each other nor those of
/// the `current` tunnels they do not replace.
fn validate_connections(
    raws: Vec<RawConnection>,
    psk: &PskFiles,
    listen: &[IpAddr],
    current: &[&Connection],
) -> Result<Vec<Connection>, ConfigError> {
    let mut names = BTreeSet::new();
    let mut tunnels = Vec::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let key = format!("connection[{i}]");
        if !names.insert(raw.name.clone()) {
            return Err(err(
                format!("{key}.name"),
                format!("duplicate name {:?}", raw.name),
            ));
        }
        tunnels.push(raw.validate(&key, psk, listen)?);
    }
    let all: Vec<&Connection> = current
        .iter()
        .copied()
        .filter(|c| !names.contains(&c.ike.name))
        .chain(&tunnels)
        .collect();
    check_overlaps(&all)?;
    Ok(tunnels)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err(path.display(), format!("cannot read config: {e}")))?;
        Self::parse(&text, path.parent().unwrap_or(Path::new(".")))
            .map_err(|e| ConfigError(format!("{}: {}", path.display(), e.0)))
    }

    /// Parses config text; relative `psk_file` paths resolve against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        raw.validate(base)
    }

    pub fn ike_addrs(&self) -> impl Iterator<Item = (SocketAddr, SocketAddr)> + '_ {
        self.listen.iter().map(|&ip| {
            (
                SocketAddr::new(ip, self.ike_port),
                SocketAddr::new(ip, self.natt_port),
            )
        })
    }
}

/// toml's own message is several lines with a source excerpt; operators grep logs,
/// so fold it to "line N: message".
fn toml_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
    let msg = e.message().replace('\n', " ");
    match line {
        Some(line) => ConfigError(format!("line {line}: {msg}")),
        None => ConfigError(msg),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: RawNode,
    /// Required unless the node is a witness.
    ike: Option<RawIke>,
    #[serde(default)]
    tun: RawTun,
    #[serde(default, rename = "connection")]
    connections: Vec<RawConnection>,
    cluster: Option<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCluster {
    id: u64,
    listen: String,
    data_dir: PathBuf,
    pki_dir: PathBuf,
    #[serde(default)]
    role: Role,
    /// Build a snapshot (and compact the log) after this many entries.
    snapshot_every: Option<u64>,
    #[serde(default)]
    mode: tandem_cluster::ownership::Mode,
    /// How long a gateway's lease lasts, e.g. "600ms".
    lease: Option<String>,
    vip_interface: Option<String>,
    vip_prefix_len: Option<u8>,
    vip_hook: Option<PathBuf>,
    admin_listen: Option<String>,
    lan_interface: Option<String>,
    lan_prefix_len: Option<u8>,
    #[serde(rename = "member")]
    members: Vec<RawMember>,
}

#[derive(Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Role {
    #[default]
    Gateway,
    Witness,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMember {
    id: u64,
    name: String,
    addr: String,
    #[serde(default)]
    witness: bool,
}

impl RawCluster {
    fn validate(self, node_name: &str, base: &Path) -> Result<ClusterSettings, ConfigError> {
        let listen: SocketAddr = self.listen.parse().map_err(|_| {
            err(
                "cluster.listen",
                format!("{:?} is not an address like 10.0.0.1:7400", self.listen),
            )
        })?;
        let mut members = std::collections::BTreeMap::new();
        let mut names = BTreeSet::new();
        for (i, m) in self.members.into_iter().enumerate() {
            let key = format!("cluster.member[{i}]");
            if m.addr.parse::<SocketAddr>().is_err() {
                return Err(err(
                    format!("{key}.addr"),
                    format!("{:?} is not an address like 10.0.0.1:7400", m.addr),
                ));
            }
            if !names.insert(m.name.clone()) {
                return Err(err(
                    format!("{key}.name"),
                    format!("duplicate name {:?}", m.name),
                ));
            }
            let member = tandem_cluster::Member {
                name: m.name,
                addr: m.addr,
                witness: m.witness,
            };
            if members.insert(m.id, member).is_some() {
                return Err(err(format!("{key}.id"), format!("duplicate id {}", m.id)));
            }
        }
        let Some(me) = members.get(&self.id) else {
            return Err(err(
                "cluster.id",
                format!("{} is not among cluster.member ids", self.id),
            ));
        };
        if me.name != node_name {
            return Err(err(
                "node.name",
                format!(
                    "must match cluster.member {}'s name {:?} (its certificate name)",
                    self.id, me.name
                ),
            ));
        }
        let witness = self.role == Role::Witness;
        if me.witness != witness {
            return Err(err(
                "cluster.role",
                format!("disagrees with cluster.member {}'s witness flag", self.id),
            ));
        }
        if members.values().filter(|m| !m.witness).count() == 0 {
            return Err(err(
                "cluster.member",
                "needs at least one gateway (non-witness) member",
            ));
        }
        let mut lease = tandem_cluster::lease::LeaseTiming::default();
        if let Some(l) = &self.lease {
            lease.duration = parse_duration("cluster.lease", l)?;
            if lease.duration < Duration::from_millis(200) {
                return Err(err(
                    "cluster.lease",
                    "must be at least 200ms (a few renewals and a commit fit in one)",
                ));
            }
            lease.renew_every = lease.duration / 6;
        }
        let vip = match (self.vip_interface, self.vip_hook) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "cluster.vip_hook",
                    "give vip_interface or vip_hook, not both",
                ));
            }
            (Some(interface), None) => Vip::Linux {
                interface,
                prefix_len: match self.vip_prefix_len.unwrap_or(24) {
                    n @ 1..=32 => n,
                    n => return Err(err("cluster.vip_prefix_len", format!("{n} is not 1..32"))),
                },
            },
            (None, Some(hook)) => Vip::Hook(base.join(hook.clone())),
            (None, None) => Vip::None,
        };
        // The LAN side moves the way the outer side does: by netlink on its
        // own interface, or by the same hook.
        let lan_vip = match (&self.lan_interface, &vip) {
            (Some(interface), _) => Vip::Linux {
                interface: interface.clone(),
                prefix_len: match self.lan_prefix_len.unwrap_or(24) {
                    n @ 1..=32 => n,
                    n => return Err(err("cluster.lan_prefix_len", format!("{n} is not 1..32"))),
                },
            },
            (None, Vip::Hook(hook)) => Vip::Hook(hook.clone()),
            (None, _) => Vip::None,
        };
        let admin_listen = match &self.admin_listen {
            Some(a) => Some(a.parse::<SocketAddr>().map_err(|_| {
                err(
                    "cluster.admin_listen",
                    format!("{a:?} is not an address like 10.0.0.1:7500"),
                )
            })?),
            None => None,
        };
        Ok(ClusterSettings {
            id: self.id,
            admin_listen,
            lan_vip,
            mode: self.mode,
            lease,
            vip,
            listen,
            data_dir: base.join(self.data_dir),
            pki_dir: base.join(self.pki_dir),
            witness,
            snapshot_every: match self.snapshot_every {
                Some(0) => return Err(err("cluster.snapshot_every", "must be at least 1")),
                Some(n) => n,
                None => tandem_cluster::node::RaftTiming::default().snapshot_every,
            },
            members,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    name: String,
    #[serde(default = "default_control_socket")]
    control_socket: PathBuf,
    metrics_listen: Option<String>,
    aead_backend: Option<String>,
}

fn default_control_socket() -> PathBuf {
    PathBuf::from("/run/tandem/tandemd.sock")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIke {
    listen: Vec<String>,
    #[serde(default = "default_ike_port")]
    port: u16,
    #[serde(default = "default_natt_port")]
    natt_port: u16,
    cookie_threshold: Option<usize>,
    max_half_open: Option<usize>,
    max_half_open_per_source: Option<usize>,
    cookie_secret_lifetime: Option<String>,
}

fn default_ike_port() -> u16 {
    IKE_PORT
}

fn default_natt_port() -> u16 {
    NATT_PORT
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTun {
    #[serde(default = "default_tun_name")]
    name: String,
    #[serde(default = "default_tun_mtu")]
    mtu: u16,
}

impl Default for RawTun {
    fn default() -> Self {
        Self {
            name: default_tun_name(),
            mtu: default_tun_mtu(),
        }
    }
}

fn default_tun_name() -> String {
    DEFAULT_TUN_NAME.to_owned()
}

fn default_tun_mtu() -> u16 {
    DEFAULT_TUN_MTU
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConnection {
    name: String,
    local_addr: String,
    remote_addr: String,
    local_id: Option<String>,
    remote_id: Option<String>,
    psk: Option<String>,
    psk_file: Option<PathBuf>,
    ike_proposals: Vec<String>,
    esp_proposals: Vec<String>,
    local_ts: Vec<String>,
    remote_ts: Vec<String>,
    ike_lifetime: Option<String>,
    child_lifetime: Option<String>,
    dpd_delay: Option<String>,
    replay_window: Option<u32>,
    #[serde(default)]
    initiate: bool,
    lan_addr: Option<String>,
}

impl RawConfig {
    fn validate(self, base: &Path) -> Result<Config, ConfigError> {
        if self.node.name.trim().is_empty() {
            return Err(err("node.name", "must not be empty"));
        }
        let cluster = self
            .cluster
            .map(|c| c.validate(&self.node.name, base))
            .transpose()?;
        let metrics_listen = self
            .node
            .metrics_listen
            .as_deref()
            .map(|a| {
                a.parse::<SocketAddr>().map_err(|_| {
                    err(
                        "node.metrics_listen",
                        format!("{a:?} is not an address:port"),
                    )
                })
            })
            .transpose()?;
        let witness = cluster.as_ref().is_some_and(|c| c.witness);
        let ike = match (self.ike, witness) {
            (Some(ike), false) => ike,
            (None, false) => return Err(err("ike", "missing section (only a witness has none)")),
            (Some(_), true) => {
                return Err(err(
                    "ike",
                    "a witness has no dataplane; remove this section",
                ));
            }
            (None, true) => RawIke {
                listen: Vec::new(),
                port: IKE_PORT,
                natt_port: NATT_PORT,
                cookie_threshold: None,
                max_half_open: None,
                max_half_open_per_source: None,
                cookie_secret_lifetime: None,
            },
        };
        if witness && !self.connections.is_empty() {
            return Err(err(
                "connection",
                "a witness carries no tunnels; remove them",
            ));
        }
        if ike.listen.is_empty() && !witness {
            return Err(err("ike.listen", "needs at least one address"));
        }
        let listen = ike
            .listen
            .iter()
            .enumerate()
            .map(|(i, s)| parse_ip(&format!("ike.listen[{i}]"), s))
            .collect::<Result<Vec<_>, _>>()?;
        if ike.port == ike.natt_port {
            return Err(err("ike.natt_port", "must differ from ike.port"));
        }
        if self.tun.name.is_empty() || self.tun.name.len() > 15 {
            return Err(err(
                "tun.name",
                "must be 1 to 15 characters (a Linux interface name)",
            ));
        }
        if !(576..=9000).contains(&self.tun.mtu) {
            return Err(err("tun.mtu", "must be between 576 and 9000"));
        }
        let defaults = Limits::default();
        let limits = Limits {
            cookie_threshold: ike.cookie_threshold.unwrap_or(defaults.cookie_threshold),
            max_half_open: ike.max_half_open.unwrap_or(defaults.max_half_open),
            max_half_open_per_source: ike
                .max_half_open_per_source
                .unwrap_or(defaults.max_half_open_per_source),
            cookie_secret_lifetime: parse_opt_duration(
                "ike.cookie_secret_lifetime",
                &ike.cookie_secret_lifetime,
            )?
            .unwrap_or(defaults.cookie_secret_lifetime),
        };
        if limits.max_half_open_per_source == 0 {
            return Err(err(
                "ike.max_half_open_per_source",
                "must be at least 1 (0 would refuse every IKE_SA_INIT)",
            ));
        }
        let aead_backend = match self.node.aead_backend.as_deref() {
            None | Some("ring") => tandem_crypto::AeadBackend::Ring,
            Some("rustcrypto") => tandem_crypto::AeadBackend::RustCrypto,
            Some(other) => {
                return Err(err(
                    "node.aead_backend",
                    format!("{other:?}: ring or rustcrypto"),
                ));
            }
        };

        let connections = validate_connections(
            self.connections,
            &PskFiles::Dir(base.to_owned()),
            &listen,
            &[],
        )?;

        Ok(Config {
            node_name: self.node.name,
            control_socket: self.node.control_socket,
            metrics_listen,
            listen,
            ike_port: ike.port,
            natt_port: ike.natt_port,
            tun_name: self.tun.name,
            tun_mtu: self.tun.mtu,
            limits,
            aead_backend,
            connections,
            cluster,
        })
    }
}

impl RawConnection {
    fn validate(
        self,
        key: &str,
        psk: &PskFiles,
        listen: &[IpAddr],
    ) -> Result<Connection, ConfigError> {
        let k = |field: &str| format!("{key} ({}).{field}", self.name);
        if self.name.is_empty() || self.name.contains(char::is_whitespace) {
            return Err(err(k("name"), "must be non-empty and contain no spaces"));
        }
        let local_addr = parse_ip(&k("local_addr"), &self.local_addr)?;
        if !listen.contains(&local_addr) {
            return Err(err(
                k("local_addr"),
                format!("{local_addr} is not in ike.listen"),
            ));
        }
        let remote_addr = match self.remote_addr.as_str() {
            "%any" => None,
            s => Some(parse_ip(&k("remote_addr"), s)?),
        };
        if self.initiate && remote_addr.is_none() {
            return Err(err(k("initiate"), "needs a remote_addr, not %any"));
        }
        let local_id = match &self.local_id {
            Some(s) => parse_identity(s).map_err(|e| err(k("local_id"), e))?,
            None => parse_identity(&local_addr.to_string()).map_err(|e| err(k("local_id"), e))?,
        };
        let remote_id = match (&self.remote_id, remote_addr) {
            (Some(s), _) => parse_identity(s).map_err(|e| err(k("remote_id"), e))?,
            (None, Some(addr)) => {
                parse_identity(&addr.to_string()).map_err(|e| err(k("remote_id"), e))?
            }
            (None, None) => return Err(err(k("remote_id"), "required when remote_addr is %any")),
        };
        let psk = match (&self.psk, &self.psk_file) {
            (Some(_), Some(_)) => return Err(err(k("psk"), "set psk or psk_file, not both")),
            (None, None) => return Err(err(k("psk"), "missing: set psk or psk_file")),
            (Some(psk), None) => Secret::from_slice(psk.as_bytes()),
            (None, Some(file)) => psk.read(&k("psk_file"), file)?,
        };
        // RFC 7296 2.15: a PSK must be as strong as the keys it protects; short
        // human passwords make IKE_AUTH open to offline dictionary attacks.
        if psk.len() < 16 {
            return Err(err(k("psk"), "must be at least 16 bytes"));
        }
        if self.ike_proposals.is_empty() {
            return Err(err(k("ike_proposals"), "needs at least one proposal"));
        }
        let ike_proposals = self
            .ike_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse_ike_proposal(p).map_err(|e| err(k(&format!("ike_proposals[{i}]")), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if self.esp_proposals.is_empty() {
            return Err(err(k("esp_proposals"), "needs at least one proposal"));
        }
        let esp_proposals = self
            .esp_proposals
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse_esp_proposal(p).map_err(|e| err(k(&format!("esp_proposals[{i}]")), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let local = parse_prefixes(&k("local_ts"), &self.local_ts)?;
        let remote = parse_prefixes(&k("remote_ts"), &self.remote_ts)?;
        let ike_lifetime = parse_opt_duration(&k("ike_lifetime"), &self.ike_lifetime)?
            .unwrap_or(DEFAULT_IKE_LIFETIME);
        let child_lifetime = parse_opt_duration(&k("child_lifetime"), &self.child_lifetime)?
            .unwrap_or(DEFAULT_CHILD_LIFETIME);
        let dpd_delay = match self.dpd_delay.as_deref() {
            Some("0") | Some("off") => None,
            Some(s) => Some(parse_duration(&k("dpd_delay"), s)?),
            None => Some(DEFAULT_DPD_DELAY),
        };
        let replay_window = self.replay_window.unwrap_or(DEFAULT_REPLAY_WINDOW);
        if !(64..=4096).contains(&replay_window) {
            return Err(err(k("replay_window"), "must be between 64 and 4096"));
        }
        let lan_addr = match &self.lan_addr {
            Some(a) => Some(
                a.parse::<IpAddr>()
                    .map_err(|_| err(k("lan_addr"), format!("{a:?} is not an IP address")))?,
            ),
            None => None,
        };
        Ok(Connection {
            lan_addr,
            ike: ConnectionConfig {
                name: self.name.clone(),
                local_addr,
                remote_addr,
                local_id,
                remote_id,
                psk,
                ike_proposals,
                esp_proposals,
                local_ts: local.iter().map(|&(a, l)| prefix_selector(a, l)).collect(),
                remote_ts: remote.iter().map(|&(a, l)| prefix_selector(a, l)).collect(),
                ike_lifetime,
                child_lifetime,
                dpd_delay,
            },
            remote_prefixes: remote,
            replay_window,
            initiate: self.initiate,
        })
    }
}

/// Two tunnels claiming the same remote inner addresses would make outbound
/// routing ambiguous: which peer gets a packet would depend on install order.
fn check_overlaps(connections: &[&Connection]) -> Result<(), ConfigError> {
    for (i, a) in connections.iter().enumerate() {
        for b in &connections[i + 1..] {
            for &(pa, la) in &a.remote_prefixes {
                for &(pb, lb) in &b.remote_prefixes {
                    if prefixes_overlap((pa, la), (pb, lb)) {
                        return Err(err(
                            format!("connection ({}).remote_ts", b.ike.name),
                            format!("{pb}/{lb} overlaps {pa}/{la} of connection {}", a.ike.name),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

fn prefixes_overlap(a: (IpAddr, u8), b: (IpAddr, u8)) -> bool {
    let (sa, ea) = prefix_range(a.0, a.1);
    let (sb, eb) = prefix_range(b.0, b.1);
    a.0.is_ipv4() == b.0.is_ipv4() && sa <= eb && sb <= ea
}

fn prefix_range(addr: IpAddr, len: u8) -> (u128, u128) {
    let (bits, value) = match addr {
        IpAddr::V4(a) => (32u32, u128::from(u32::from(a))),
        IpAddr::V6(a) => (128u32, u128::from(a)),
    };
    let host_bits = bits - u32::from(len);
    let host_mask = if host_bits == 128 {
        u128::MAX
    } else {
        (1u128 << host_bits) - 1
    };
    (value & !host_mask, value | host_mask)
}

/// The prefix a selector covers, if it is one (a config's always are).
pub(crate) fn selector_prefix(ts: &TrafficSelector) -> Option<(IpAddr, u8)> {
    let (start, end, width) = match (ts.start, ts.end) {
        (IpAddr::V4(s), IpAddr::V4(e)) => (u128::from(u32::from(s)), u128::from(u32::from(e)), 32),
        (IpAddr::V6(s), IpAddr::V6(e)) => (u128::from(s), u128::from(e), 128),
        _ => return None,
    };
    let mask = start ^ end;
    if start & mask != 0 {
        return None;
    }
    if mask == u128::MAX {
        return Some((ts.start, 0));
    }
    let host_bits = mask + 1;
    // Width minus host bits: at most 128, so the cast cannot truncate.
    host_bits
        .is_power_of_two()
        .then(|| (ts.start, (width - host_bits.trailing_zeros()) as u8))
}

fn prefix_selector(addr: IpAddr, len: u8) -> TrafficSelector {
    let (start, end) = prefix_range(addr, len);
    let (start, end) = match addr {
        // The range came from a 32-bit address, so it fits.
        IpAddr::V4(_) => (
            IpAddr::from(std::net::Ipv4Addr::from(start as u32)),
            IpAddr::from(std::net::Ipv4Addr::from(end as u32)),
        ),
        IpAddr::V6(_) => (
            IpAddr::from(std::net::Ipv6Addr::from(start)),
            IpAddr::from(std::net::Ipv6Addr::from(end)),
        ),
    };
    TrafficSelector {
        ip_protocol: 0,
        start_port: 0,
        end_port: u16::MAX,
        start,
        end,
    }
}

fn parse_ip(key: &str, s: &str) -> Result<IpAddr, ConfigError> {
    s.parse()
        .map_err(|_| err(key, format!("{s:?} is not an IP address")))
}

fn parse_prefixes(key: &str, list: &[String]) -> Result<Vec<(IpAddr, u8)>, ConfigError> {
    if list.is_empty() {
        return Err(err(key, "needs at least one CIDR prefix"));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| parse_cidr(&format!("{key}[{i}]"), s))
        .collect()
}

/// Parses `a.b.c.d/len` (or IPv6); host bits must be zero, since a selector with
/// host bits set is almost always a typo for a different network.
fn parse_cidr(key: &str, s: &str) -> Result<(IpAddr, u8), ConfigError> {
    let bad = || err(key, format!("{s:?} is not a CIDR prefix like 10.1.0.0/16"));
    let (addr, len) = s.split_once('/').ok_or_else(bad)?;
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let len: u8 = len.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if len > max {
        return Err(bad());
    }
    let (start, _) = prefix_range(addr, len);
    let value = match addr {
        IpAddr::V4(a) => u128::from(u32::from(a)),
        IpAddr::V6(a) => u128::from(a),
    };
    if start != value {
        return Err(err(key, format!("{s:?} has host bits set")));
    }
    Ok((addr, len))
}

fn parse_opt_duration(key: &str, s: &Option<String>) -> Result<Option<Duration>, ConfigError> {
    s.as_deref().map(|s| parse_duration(key, s)).transpose()
}

/// Durations as operators write them in strongSwan and cloud consoles: `45s`,
/// `10m`, `8h`, `1d`, or bare seconds.
pub fn parse_duration(key: &str, s: &str) -> Result<Duration, ConfigError> {
    let bad = || {
        err(
            key,
            format!("{s:?} is not a duration like 500ms, 30s, 10m, 8h"),
        )
    };
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = num.parse().map_err(|_| bad())?;
    let scale = |factor: u64| n.checked_mul(factor).ok_or_else(bad);
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(scale(60)?),
        "h" => Duration::from_secs(scale(3600)?),
        "d" => Duration::from_secs(scale(86_400)?),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(err(key, "must be greater than zero"));
    }
    Ok(d)
}

fn read_psk_file(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    // A PSK readable by other users is a PSK the whole machine knows.
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(
            key,
            format!(
                "{} must not be readable by group or others (chmod 600)",
                path.display()
            ),
        ));
    }
    let bytes = std::fs::read(path)
        .map_err(|e| err(key, format!("cannot read {}: {e}", path.display())))?;
    let trimmed = bytes.trim_ascii_end();
    Ok(Secret::from_slice(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
name = "gw1"
control_socket = "/tmp/t.sock"

[ike]
listen = ["192.0.2.1"]

[[connection]]
name = "site-a"
local_addr = "192.0.2.1"
remote_addr = "192.0.2.2"
psk = "a-long-test-secret"
ike_proposals = ["aes256gcm16-prfsha256-curve25519"]
esp_proposals = ["aes256gcm16"]
local_ts = ["10.2.0.0/16"]
remote_ts = ["10.1.0.0/16"]
child_lifetime = "10m"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/nonexistent"))
    }

    fn error_of(text: &str) -> String {
        let e = parse(text)
            .expect_err("config should be rejected")
            .to_string();
        assert!(!e.contains('\n'), "error is not one line: {e}");
        e
    }

    #[test]
    fn good_config_parses_with_defaults() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node_name, "gw1");
        assert_eq!(c.tun_name, "tandem0");
        assert_eq!(c.ike_port, 500);
        let conn = &c.connections[0];
        assert_eq!(conn.ike.child_lifetime, Duration::from_secs(600));
        assert_eq!(conn.ike.ike_lifetime, DEFAULT_IKE_LIFETIME);
        assert_eq!(conn.ike.dpd_delay, Some(DEFAULT_DPD_DELAY));
        assert_eq!(conn.replay_window, 1024);
        assert_eq!(
            conn.remote_prefixes,
            vec![("10.1.0.0".parse().unwrap(), 16)]
        );
        let ts = conn.ike.remote_ts[0];
        assert_eq!(ts.start, "10.1.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(ts.end, "10.1.255.255".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn dos_limits_and_the_aead_backend_are_set_or_refused_by_name() {
        let c = parse(&GOOD.replace(
            "[ike]",
            "[ike]\nmax_half_open_per_source = 3\ncookie_secret_lifetime = \"2m\"",
        ))
        .unwrap();
        assert_eq!(c.limits.max_half_open_per_source, 3);
        assert_eq!(c.limits.cookie_secret_lifetime, Duration::from_secs(120));
        assert_eq!(c.aead_backend, tandem_crypto::AeadBackend::Ring);
        let e = error_of(&GOOD.replace("[ike]", "[ike]\nmax_half_open_per_source = 0"));
        assert!(e.contains("ike.max_half_open_per_source"), "{e}");
        let e =
            error_of(&GOOD.replace("name = \"gw1\"", "name = \"gw1\"\naead_backend = \"fast\""));
        assert!(e.contains("node.aead_backend"), "{e}");
    }

    #[test]
    fn unknown_key_is_named() {
        let e = error_of(&GOOD.replace("[ike]", "[ike]\nlisten_port = 5"));
        assert!(e.contains("listen_port"), "{e}");
    }

    #[test]
    fn bad_cidr_is_named() {
        let e = error_of(&GOOD.replace("10.1.0.0/16", "10.1.0.0/33"));
        assert!(e.contains("remote_ts[0]") && e.contains("CIDR"), "{e}");
        let e = error_of(&GOOD.replace("10.1.0.0/16", "10.1.0.1/16"));
        assert!(e.contains("host bits"), "{e}");
    }

    #[test]
    fn weak_or_unknown_proposal_is_named() {
        for bad in [
            "3des-md5-modp1024",
            "aes256-sha256-modp1024",
            "des-sha1-modp2048",
        ] {
            let e = error_of(&GOOD.replace("aes256gcm16-prfsha256-curve25519", bad));
            assert!(e.contains("ike_proposals[0]"), "{e}");
        }
        let e = error_of(&GOOD.replace("\"aes256gcm16\"", "\"aes256gcm16-md5\""));
        assert!(e.contains("esp_proposals[0]"), "{e}");
    }

    #[test]
    fn missing_psk_file_is_named() {
        let e = error_of(&GOOD.replace(
            "psk = \"a-long-test-secret\"",
            "psk_file = \"/nonexistent/psk\"",
        ));
        assert!(
            e.contains("psk_file") && e.contains("/nonexistent/psk"),
            "{e}"
        );
    }

    #[test]
    fn short_psk_rejected() {
        let e = error_of(&GOOD.replace("a-long-test-secret", "short"));
        assert!(e.contains("psk"), "{e}");
    }

    #[test]
    fn overlapping_selectors_rejected() {
        let second = GOOD
            .split("[[connection]]")
            .nth(1)
            .unwrap()
            .replace("site-a", "site-b")
            .replace("10.1.0.0/16", "10.1.128.0/17");
        let e = error_of(&format!("{GOOD}\n[[connection]]{second}"));
        assert!(e.contains("overlaps"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("k", "45").unwrap(), Duration::from_secs(45));
        assert_eq!(
            parse_duration("k", "8h").unwrap(),
            Duration::from_secs(28_800)
        );
        assert_eq!(
            parse_duration("k", "400ms").unwrap(),
            Duration::from_millis(400)
        );
        assert!(parse_duration("k", "8x").is_err());
        assert!(parse_duration("k", "0s").is_err());
        assert!(parse_duration("k", "99999999999999999999d").is_err());
    }

    #[test]
    fn tunnels_applied_live_are_checked_against_what_runs() {
        let config = parse(GOOD).unwrap();
        let current: Vec<&Connection> = config.connections.iter().collect();
        let table = GOOD.split("[[connection]]").nth(1).unwrap();
        let site_b = format!(
            "[[connection]]{}",
            table
                .replace("site-a", "site-b")
                .replace("10.1.0.0/16", "10.3.0.0/16")
        );
        let sent = PskFiles::Sent(BTreeMap::new());
        let t = parse_tunnels(&site_b, &sent, &config.listen, &current).unwrap();
        assert_eq!(t[0].ike.name, "site-b");
        assert_eq!(t[0].remote_prefixes, [("10.3.0.0".parse().unwrap(), 16)]);
        let back = Connection::from_spec(t[0].spec());
        assert_eq!(back.spec(), t[0].spec());
        assert_eq!(back.remote_prefixes, t[0].remote_prefixes);
        // Replacing site-a by name is no overlap with itself.
        let again = format!("[[connection]]{table}");
        assert!(parse_tunnels(&again, &sent, &config.listen, &current).is_ok());
        let refuse = |text: &str| {
            let e = parse_tunnels(text, &sent, &config.listen, &current)
                .expect_err("should be refused")
                .to_string();
            assert!(!e.contains('\n'), "not one line: {e}");
            e
        };
        let e = refuse(&site_b.replace("10.3.0.0/16", "10.1.7.0/24"));
        assert!(
            e.contains("(site-b).remote_ts") && e.contains("overlaps"),
            "{e}"
        );
        let e = refuse(&site_b.replace("192.0.2.1", "192.0.2.9"));
        assert!(e.contains("local_addr") && e.contains("ike.listen"), "{e}");
        let e = refuse(&site_b.replace("psk = \"a-long-test-secret\"", "psk_file = \"b.psk\""));
        assert!(e.contains("psk_file") && e.contains("b.psk"), "{e}");
        assert!(refuse("").contains("nothing to apply"));
        assert!(refuse("[node]\nname = \"x\"").contains("node"));
        let sent_key = BTreeMap::from([(
            "b.psk".to_owned(),
            Secret::from_slice(b"another-long-secret\n"),
        )]);
        let t = parse_tunnels(
            &site_b.replace("psk = \"a-long-test-secret\"", "psk_file = \"b.psk\""),
            &PskFiles::Sent(sent_key),
            &config.listen,
            &current,
        )
        .unwrap();
        assert_eq!(t[0].ike.psk, Secret::from_slice(b"another-long-secret"));
    }
}
