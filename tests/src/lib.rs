//! Harness for tests against real processes: network namespaces, a strongSwan
//! peer (charon with kernel-libipsec, see shared/notes/strongswan-netns.md),
//! tandemd, ping and iperf3.
//!
//! Every namespace, process and directory a test makes is owned by a guard that
//! removes it on drop, panics included, so a failing test leaves nothing behind.
//! Preconditions that are not met (not root, no strongSwan) fail the test with a
//! message naming what is missing: a skipped real-peer test proves nothing.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// Real-peer tests share two cores; running them one at a time keeps their
/// throughput and loss figures meaningful.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the process-wide lock for one real-peer test (poison is ignored: a
/// failed test must not fail the ones after it).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails with a clear message unless this machine can run real-peer tests.
pub fn require_environment() -> anyhow::Result<()> {
    let uid = run_output(Command::new("id").arg("-u"))?;
    ensure!(
        uid.trim() == "0",
        "real-peer tests need root (network namespaces, TUN); run tests/run as root"
    );
    for tool in ["ip", "swanctl", "iperf3", "ping", "/usr/lib/ipsec/charon"] {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
        };
        ensure!(
            found,
            "{tool} is missing: tests/run installs it (strongSwan, iperf3, iputils-ping, iproute2)"
        );
    }
    Ok(())
}

fn run_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(unique("tandem-test-"));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace this test created.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn new() -> anyhow::Result<Netns> {
        let name = unique("tdm-");
        run_output(Command::new("ip").args(["netns", "add", &name]))
            .context("cannot create a network namespace")?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs a command in the namespace and returns its stdout; fails on non-zero exit.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        run_output(&mut self.command(args))
    }

    pub fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("cannot run {args:?} in {}", self.name))
    }

    /// Starts a long-running process in the namespace (killed by its guard).
    pub fn spawn(&self, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        let file = std::fs::File::create(log)?;
        let child = self
            .command(args)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("cannot start {args:?}"))?;
        Ok(Proc { child })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Anything still running inside (charon's helpers, a stray iperf3) would
        // keep the namespace alive; kill it by PID first.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process killed (TERM, then KILL) on drop.
#[derive(Debug)]
pub struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for it to exit; kills it after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                bail!("process {} did not exit within {timeout:?}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if !self.is_running() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(3) {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two namespaces on one segment: `peer` (the customer site, strongSwan) and `gw`
/// (the gateway), each with an inner network on its loopback.
#[derive(Debug)]
pub struct SiteToSite {
    // Field order is drop order: processes go before their namespaces.
    pub dir: TempDir,
    pub peer: Netns,
    pub gw: Netns,
}

impl SiteToSite {
    pub const GW_OUTER: &str = "192.0.2.1";
    pub const PEER_OUTER: &str = "192.0.2.2";
    pub const GW_INNER: &str = "10.2.0.1";
    pub const PEER_INNER: &str = "10.1.0.1";
    pub const GW_NET: &str = "10.2.0.0/16";
    pub const PEER_NET: &str = "10.1.0.0/16";

    pub fn new() -> anyhow::Result<SiteToSite> {
        require_environment()?;
        let dir = TempDir::new()?;
        let peer = Netns::new()?;
        let gw = Netns::new()?;
        let veth_gw = unique("vg");
        let veth_peer = unique("vp");
        run_output(Command::new("ip").args([
            "link",
            "add",
            &veth_gw,
            "netns",
            gw.name(),
            "type",
            "veth",
            "peer",
            "name",
            &veth_peer,
            "netns",
            peer.name(),
        ]))?;
        for (ns, dev, outer, inner) in [
            (&gw, &veth_gw, Self::GW_OUTER, Self::GW_INNER),
            (&peer, &veth_peer, Self::PEER_OUTER, Self::PEER_INNER),
        ] {
            ns.run(&["ip", "addr", "add", &format!("{outer}/24"), "dev", dev])?;
            ns.run(&["ip", "link", "set", dev, "up"])?;
            ns.run(&["ip", "addr", "add", &format!("{inner}/16"), "dev", "lo"])?;
            ns.run(&["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0"])?;
            ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        }
        Ok(SiteToSite { dir, peer, gw })
    }
}

/// What a strongSwan connection should look like.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub name: String,
    pub local_addr: String,
    pub remote_addr: String,
    pub psk: String,
    pub ike_proposal: String,
    pub esp_proposal: String,
    pub local_ts: String,
    pub remote_ts: String,
    /// IKE SA rekey_time, e.g. "4h" or "20s".
    pub ike_rekey: String,
    /// Child SA rekey_time.
    pub child_rekey: String,
    pub dpd_delay: String,
    pub initiate: bool,
}

/// A charon daemon in a namespace, driven through swanctl over its own vici socket.
#[derive(Debug)]
pub struct Charon {
    proc: Proc,
    dir: PathBuf,
}

impl Charon {
    pub fn start(ns: &Netns, dir: &Path, conn: &PeerConfig) -> anyhow::Result<Charon> {
        let dir = dir.join(unique("charon-"));
        std::fs::create_dir_all(dir.join("run"))?;
        let d = dir.display();
        std::fs::write(
            dir.join("strongswan.conf"),
            format!(
                "charon {{
  load_modular = yes
  install_routes = yes
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec {{ load = yes }}
    vici {{ socket = unix://{d}/run/charon.vici }}
  }}
  filelog {{
    main {{ path = {d}/charon.log
      default = 1
      ike = 2
      chd = 2
      esp = 0
      cfg = 1
      net = 1
      knl = 1
      time_format = %H:%M:%S
    }}
  }}
}}
"
            ),
        )?;
        let rand = "rand_time = 0s";
        let start = if conn.initiate { "start" } else { "none" };
        std::fs::write(
            dir.join("swanctl.conf"),
            format!(
                "connections {{
  {name} {{
    version = 2
    local_addrs = {la}
    remote_addrs = {ra}
    encap = yes
    mobike = no
    fragmentation = no
    proposals = {ikep}
    rekey_time = {ikerk}
    over_time = 10s
    {rand}
    dpd_delay = {dpd}
    local {{ auth = psk
      id = {la} }}
    remote {{ auth = psk
      id = {ra} }}
    children {{
      {name} {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {espp}
        rekey_time = {chrk}
        {rand}
        dpd_action = clear
        start_action = {start}
      }}
    }}
  }}
}}
secrets {{
  ike-{name} {{
    id-1 = {la}
    id-2 = {ra}
    secret = \"{psk}\"
  }}
}}
",
                name = conn.name,
                la = conn.local_addr,
                ra = conn.remote_addr,
                ikep = conn.ike_proposal,
                ikerk = conn.ike_rekey,
                dpd = conn.dpd_delay,
                lts = conn.local_ts,
                rts = conn.remote_ts,
                espp = conn.esp_proposal,
                chrk = conn.child_rekey,
                psk = conn.psk,
            ),
        )?;
        // charon insists on /run for its pid file and sockets: give each instance
        // its own through a private mount namespace (the mount dies with it).
        let script = format!(
            "mount --bind {d}/run /run && STRONGSWAN_CONF={d}/strongswan.conf exec /usr/lib/ipsec/charon"
        );
        let proc = ns.spawn(
            &["setsid", "unshare", "-m", "sh", "-c", &script],
            &dir.join("charon.out"),
        )?;
        let swanctl_conf = format!("{d}/swanctl.conf");
        let charon = Charon { proc, dir };
        charon.wait_for_vici()?;
        charon.swanctl(&["--load-all", "--file", &swanctl_conf])?;
        Ok(charon)
    }

    fn wait_for_vici(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.swanctl(&["--stats"]).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("charon did not open its vici socket; log:\n{}", self.log())
    }

    pub fn swanctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let uri = format!("unix://{}/run/charon.vici", self.dir.display());
        // swanctl takes --uri as an option of each command, so it goes after it.
        run_output(Command::new("swanctl").args(args).arg("--uri").arg(uri))
    }

    pub fn initiate(&self, child: &str) -> anyhow::Result<()> {
        self.swanctl(&["--initiate", "--child", child, "--timeout", "15"])
            .map(drop)
            .with_context(|| {
                format!(
                    "strongSwan could not initiate; log tail:\n{}",
                    self.log_tail(40)
                )
            })
    }

    pub fn terminate_ike(&self, name: &str) -> anyhow::Result<()> {
        self.swanctl(&["--terminate", "--ike", name, "--timeout", "10"])
            .map(drop)
    }

    /// The IKE SAs as swanctl's raw `--list-sas --raw` text is awkward to parse;
    /// the default listing is stable enough for what the tests need.
    pub fn sas(&self) -> anyhow::Result<Vec<PeerIkeSa>> {
        Ok(parse_list_sas(&self.swanctl(&["--list-sas"])?))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn is_running(&mut self) -> bool {
        self.proc.is_running()
    }
}

/// One IKE SA as strongSwan lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIkeSa {
    pub unique_id: u32,
    pub state: String,
    pub spi_i: String,
    pub spi_r: String,
    pub children: Vec<PeerChildSa>,
}

/// One child SA as strongSwan lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChildSa {
    pub state: String,
    pub spi_in: String,
    pub spi_out: String,
    pub packets_in: u64,
    pub packets_out: u64,
}

/// Parses `swanctl --list-sas` output:
/// ```text
/// site-a: #1, ESTABLISHED, IKEv2, 0123456789abcdef_i* fedcba9876543210_r
///   ...
///   site-a: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
///     installed 5s ago, rekeying in 3s, expires in 5s
///     in  c1234567,    840 bytes,    10 packets,     0s ago
///     out c7654321,    840 bytes,    10 packets,     0s ago
/// ```
pub fn parse_list_sas(text: &str) -> Vec<PeerIkeSa> {
    let mut sas: Vec<PeerIkeSa> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        let fields: Vec<&str> = t.split(',').map(str::trim).collect();
        if indent == 0 && t.contains(", IKEv2, ") {
            let id = fields[0]
                .split('#')
                .nth(1)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let mut spis = fields
                .get(3)
                .copied()
                .unwrap_or_default()
                .split_whitespace();
            let clean = |s: &str| {
                s.trim_end_matches(['*'])
                    .trim_end_matches("_i")
                    .trim_end_matches("_r")
                    .to_owned()
            };
            sas.push(PeerIkeSa {
                unique_id: id,
                state: fields.get(1).copied().unwrap_or_default().to_owned(),
                spi_i: clean(spis.next().unwrap_or_default()),
                spi_r: clean(spis.next().unwrap_or_default()),
                children: Vec::new(),
            });
        } else if let Some(sa) = sas.last_mut() {
            if t.contains(", reqid ") {
                sa.children.push(PeerChildSa {
                    state: fields.get(2).copied().unwrap_or_default().to_owned(),
                    spi_in: String::new(),
                    spi_out: String::new(),
                    packets_in: 0,
                    packets_out: 0,
                });
            } else if let Some(child) = sa.children.last_mut() {
                let words: Vec<&str> = t.split_whitespace().collect();
                let packets = || {
                    words
                        .iter()
                        .position(|w| w.starts_with("packets"))
                        .and_then(|i| words.get(i - 1))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0)
                };
                match words.first() {
                    Some(&"in") => {
                        child.spi_in = words.get(1).unwrap_or(&"").trim_end_matches(',').to_owned();
                        child.packets_in = packets();
                    }
                    Some(&"out") => {
                        child.spi_out =
                            words.get(1).unwrap_or(&"").trim_end_matches(',').to_owned();
                        child.packets_out = packets();
                    }
                    _ => {}
                }
            }
        }
    }
    sas
}

/// A tandemd process in a namespace with its generated config.
#[derive(Debug)]
pub struct Tandemd {
    proc: Proc,
    socket: PathBuf,
    log: PathBuf,
}

impl Tandemd {
    /// The tandemd binary built beside this test executable.
    pub fn binary() -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .context("cannot locate the target directory")?;
        let bin = profile_dir.join("tandemd");
        ensure!(
            bin.exists(),
            "{} not found: run `cargo build -p tandem-gateway` first (tests/run does)",
            bin.display()
        );
        Ok(bin)
    }

    /// Starts tandemd with `config` (TOML; `control_socket` is appended to `[node]`
    /// by this function) and waits until it is ready.
    pub fn start(ns: &Netns, dir: &Path, config: &str) -> anyhow::Result<Tandemd> {
        let dir = dir.join(unique("tandemd-"));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("tandemd.sock");
        let config = config.replacen(
            "[node]\n",
            &format!("[node]\ncontrol_socket = \"{}\"\n", socket.display()),
            1,
        );
        let config_path = dir.join("tandemd.toml");
        std::fs::write(&config_path, config)?;
        let log = dir.join("tandemd.log");
        let bin = Self::binary()?;
        let proc = ns.spawn(
            &[
                &bin.to_string_lossy(),
                "--log",
                "tandem_ike=debug,tandem_gateway=debug,info",
                "run",
                "--config",
                &config_path.to_string_lossy(),
            ],
            &log,
        )?;
        let mut tandemd = Tandemd { proc, socket, log };
        let start = Instant::now();
        while !tandemd.log().contains("tandemd ready") {
            ensure!(
                tandemd.proc.is_running(),
                "tandemd exited early; log:\n{}",
                tandemd.log()
            );
            ensure!(
                start.elapsed() < Duration::from_secs(10),
                "tandemd not ready after 10 s; log:\n{}",
                tandemd.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(tandemd)
    }

    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let bin = Self::binary()?;
        run_output(
            Command::new(bin)
                .arg("ctl")
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
        )
    }

    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        Ok(serde_json::from_str(&self.ctl(&["status"])?)?)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Result of one ping run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
}

impl PingStats {
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }
}

/// Pings `dst` from `src` inside `ns`: `count` echo requests every `interval`.
pub fn ping(
    ns: &Netns,
    src: &str,
    dst: &str,
    count: u32,
    interval: Duration,
) -> anyhow::Result<PingStats> {
    let out = ns.output(&[
        "ping",
        "-q",
        "-n",
        "-I",
        src,
        "-c",
        &count.to_string(),
        "-i",
        &format!("{:.3}", interval.as_secs_f64()),
        "-W",
        "1",
        dst,
    ])?;
    parse_ping(&String::from_utf8_lossy(&out.stdout))
}

/// A ping running in the background, for measuring loss across an event.
#[derive(Debug)]
pub struct BackgroundPing {
    proc: Proc,
    log: PathBuf,
}

impl BackgroundPing {
    pub fn start(
        ns: &Netns,
        dir: &Path,
        src: &str,
        dst: &str,
        count: u32,
        interval: Duration,
    ) -> anyhow::Result<BackgroundPing> {
        let log = dir.join(unique("ping-"));
        let proc = ns.spawn(
            &[
                "ping",
                "-q",
                "-n",
                "-I",
                src,
                "-c",
                &count.to_string(),
                "-i",
                &format!("{:.3}", interval.as_secs_f64()),
                "-W",
                "1",
                dst,
            ],
            &log,
        )?;
        Ok(BackgroundPing { proc, log })
    }

    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<PingStats> {
        self.proc.wait(timeout)?;
        parse_ping(&std::fs::read_to_string(&self.log)?)
    }
}

fn parse_ping(text: &str) -> anyhow::Result<PingStats> {
    // "200 packets transmitted, 200 received, 0% packet loss, time 2010ms"
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in:\n{text}"))?;
    let num = |word: &str| -> anyhow::Result<u32> {
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .with_context(|| format!("no {word:?} in {line:?}"))?;
        Ok(words[i - 1].parse()?)
    };
    Ok(PingStats {
        sent: num("packets")?,
        received: num("received")?,
    })
}

/// Runs an iperf3 server in `server_ns` on `server_addr` and a client in
/// `client_ns` for `secs`; returns the receiver's Mbit/s.
pub fn iperf3(
    server_ns: &Netns,
    server_addr: &str,
    client_ns: &Netns,
    client_addr: &str,
    secs: u32,
    dir: &Path,
) -> anyhow::Result<f64> {
    let port = "5201";
    let _server = server_ns.spawn(
        &["iperf3", "-s", "-1", "-B", server_addr, "-p", port],
        &dir.join(unique("iperf3-server-")),
    )?;
    let mut last_err = None;
    // The server needs a moment to listen; retry the connect briefly.
    for _ in 0..20 {
        let out = client_ns.output(&[
            "iperf3",
            "-c",
            server_addr,
            "-B",
            client_addr,
            "-p",
            port,
            "-t",
            &secs.to_string(),
            "-J",
        ])?;
        if out.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            let bps = v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .context("iperf3 JSON without end.sum_received")?;
            return Ok(bps / 1e6);
        }
        last_err = Some(String::from_utf8_lossy(&out.stdout).into_owned());
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 client failed: {}", last_err.unwrap_or_default())
}

/// A short text report line collected by a test and printed at the end.
#[derive(Debug, Default)]
pub struct Report(String);

impl Report {
    pub fn line(&mut self, text: impl std::fmt::Display) {
        let _ = writeln!(self.0, "{text}");
        println!("{text}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_swanctl_list_sas() {
        let text = "\
site-a: #1, ESTABLISHED, IKEv2, 0123456789abcdef_i* fedcba9876543210_r
  local  '192.0.2.2' @ 192.0.2.2[4500]
  remote '192.0.2.1' @ 192.0.2.1[4500]
  AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519
  established 5s ago, rekeying in 3h
  site-a: #2, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
    installed 5s ago, rekeying in 54m, expires in 60m
    in  c1234567,    840 bytes,    10 packets,     0s ago
    out c7654321,    1680 bytes,    20 packets,     0s ago
    local  10.1.0.0/16
    remote 10.2.0.0/16
";
        let sas = parse_list_sas(text);
        assert_eq!(sas.len(), 1);
        assert_eq!(sas[0].unique_id, 1);
        assert_eq!(sas[0].state, "ESTABLISHED");
        assert_eq!(sas[0].spi_i, "0123456789abcdef");
        assert_eq!(sas[0].spi_r, "fedcba9876543210");
        let c = &sas[0].children[0];
        assert_eq!(
            (c.state.as_str(), c.spi_in.as_str(), c.spi_out.as_str()),
            ("INSTALLED", "c1234567", "c7654321")
        );
        assert_eq!((c.packets_in, c.packets_out), (10, 20));
    }

    #[test]
    fn parses_ping_summary() {
        let s = parse_ping("--- 10.2.0.1 ping statistics ---\n200 packets transmitted, 198 received, 1% packet loss, time 2010ms\n").unwrap();
        assert_eq!(
            s,
            PingStats {
                sent: 200,
                received: 198
            }
        );
        assert_eq!(s.lost(), 2);
    }
}
