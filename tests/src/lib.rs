//! Harness for tests against real processes: network namespaces, a strongSwan
//! peer (charon with kernel-libipsec, see shared/notes/strongswan-netns.md),
//! tandemd, ping and iperf3.
//!
//! Every namespace, process and directory a test makes is owned by a guard that
//! removes it on drop, panics included, so a failing test leaves nothing behind.
//! Preconditions that are not met (not root, no strongSwan) fail the test with a
//! message naming what is missing: a skipped real-peer test proves nothing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

pub mod chaos;
pub mod cluster;
pub mod ha;
pub mod probe;

/// Real-peer tests share two cores; running them one at a time keeps their
/// throughput and loss figures meaningful (and the fixed iperf3 port free).
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds the process-wide lock for one real-peer test. Poison is ignored: a
/// failed test must not fail the ones after it.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const CHARON: &str = "/usr/lib/ipsec/charon";

/// Fails with a clear message unless this machine can run real-peer tests.
fn require_environment() -> anyhow::Result<()> {
    let uid = run_output(Command::new("id").arg("-u"))?;
    ensure!(
        uid.trim() == "0",
        "real-peer tests need root (network namespaces, TUN): run tests/run, which re-runs itself with sudo"
    );
    let mut missing = Vec::new();
    for tool in ["ip", "swanctl", "iperf3", "ping", CHARON] {
        let found = if tool.starts_with('/') {
            Path::new(tool).exists()
        } else {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !found {
            missing.push(tool);
        }
    }
    ensure!(
        missing.is_empty(),
        "missing {missing:?}: tests/run installs them (apt-get install strongswan-swanctl \
         strongswan-charon libcharon-extra-plugins libstrongswan-extra-plugins iperf3 \
         iputils-ping iproute2)"
    );
    run_output(Command::new("ip").args(["netns", "list"]))
        .context("`ip netns` does not work here: the real-peer tests need network namespaces")?;
    Ok(())
}

fn run_output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim(),
        String::from_utf8_lossy(&out.stdout).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A name unique on this machine: the pid tells which test run left it behind,
/// should anything ever leak.
fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Polls `f` every 100 ms until it yields a value; fails after `timeout`.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f()? {
            return Ok(v);
        }
        ensure!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fails unless every namespace in `namespaces` and every process in `pids`
/// is gone: what a test calls after dropping its guards.
pub fn check_gone(namespaces: &[String], pids: &[u32]) -> anyhow::Result<()> {
    let list = run_output(Command::new("ip").args(["netns", "list"]))?;
    for name in namespaces {
        ensure!(
            !list.split_whitespace().any(|n| n == name),
            "namespace {name} left behind"
        );
    }
    for pid in pids {
        // A zombie still has its /proc entry: the guards must reap, too.
        ensure!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} left behind"
        );
    }
    Ok(())
}

/// The last `lines` lines of `text`, for error messages.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
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
        // Failure messages carry the log tails; for a full post-mortem (or to
        // look at a passing run) TANDEM_KEEP_LOGS=1 keeps every log.
        if std::env::var_os("TANDEM_KEEP_LOGS").is_some() {
            eprintln!("kept {}", self.0.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A network namespace this test created, deleted on drop.
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

    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).args(args);
        cmd
    }

    /// Runs a command in the namespace and returns its stdout; fails on non-zero exit.
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        run_output(&mut self.command(args))
    }

    /// Runs a command in the namespace and returns whatever it did, exit status included.
    fn output(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.command(args)
            .output()
            .with_context(|| format!("cannot run {args:?} in {}", self.name))
    }

    /// Starts a long-running process in the namespace, stdout and stderr to `log`.
    /// `ip netns exec` execs the command, so the pid is the program's own.
    fn spawn(&self, args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        let file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
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
        // Anything still running inside (a stray ping, a child of charon) would
        // keep the namespace's devices alive; kill it by pid first.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-KILL", pid]).status();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A child process, stopped (TERM, then KILL after 3 s) and reaped on drop.
#[derive(Debug)]
struct Proc {
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if it has exited.
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for it to exit; kills it after `timeout`.
    fn wait(&mut self, timeout: Duration) -> anyhow::Result<std::process::ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if start.elapsed() > timeout {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("process {} did not exit within {timeout:?}", self.pid());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited().is_none() {
            // TERM first so charon and tandemd shut down as in production.
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            if self.wait(Duration::from_secs(3)).is_ok() {
                return;
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two namespaces on one segment: `peer` (the customer site, strongSwan) and `gw`
/// (the gateway), each with an inner network on its loopback.
#[derive(Debug)]
pub struct SiteToSite {
    // Field order is drop order: the namespaces go before the directory that
    // holds the logs of the processes inside them.
    pub peer: Netns,
    pub gw: Netns,
    gw_veth: String,
    pub dir: TempDir,
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
        // Interface names are per namespace, but the pair is created in the root
        // namespace first, so they must be unique there too (15 chars max).
        let n = unique("");
        let gw_veth = format!("tg{n}");
        let peer_veth = format!("tp{n}");
        run_output(Command::new("ip").args([
            "link",
            "add",
            &gw_veth,
            "netns",
            gw.name(),
            "type",
            "veth",
            "peer",
            "name",
            &peer_veth,
            "netns",
            peer.name(),
        ]))?;
        for (ns, dev, outer, inner) in [
            (&gw, &gw_veth, Self::GW_OUTER, Self::GW_INNER),
            (&peer, &peer_veth, Self::PEER_OUTER, Self::PEER_INNER),
        ] {
            ns.run(&["ip", "addr", "add", &format!("{outer}/24"), "dev", dev])?;
            ns.run(&["ip", "link", "set", dev, "up"])?;
            inner_host(ns, dev, inner)?;
        }
        Ok(SiteToSite {
            peer,
            gw,
            gw_veth,
            dir,
        })
    }

    /// The peer side of a site-to-site tunnel with long lifetimes and no DPD;
    /// `mirrored()` gives the gateway side.
    pub fn tunnel(&self, name: &str, ike_proposal: &str, esp_proposal: &str) -> Tunnel {
        Tunnel {
            name: name.into(),
            local_addr: Self::PEER_OUTER.into(),
            remote_addr: Self::GW_OUTER.into(),
            psk: format!("{name}-psk-0123456789abcdef"),
            ike_proposal: ike_proposal.into(),
            esp_proposal: esp_proposal.into(),
            local_ts: Self::PEER_NET.into(),
            remote_ts: Self::GW_NET.into(),
            ike_rekey: Duration::from_secs(8 * 3600),
            child_rekey: Duration::from_secs(3600),
            dpd_delay: Duration::ZERO,
            initiate: false,
            lan_addr: None,
        }
    }

    /// Packets the gateway has sent on the outer segment, to tell whether its
    /// dataplane still encrypts.
    pub fn gw_outer_tx_packets(&self) -> anyhow::Result<u64> {
        let path = format!("/sys/class/net/{}/statistics/tx_packets", self.gw_veth);
        // `ip netns exec` mounts the namespace's own /sys.
        Ok(self.gw.run(&["cat", &path])?.trim().parse()?)
    }
}

/// The inner address on loopback, forwarding on, reverse-path filtering off
/// on `dev`: decrypted packets arrive on a TUN device with a source the
/// kernel would route elsewhere, and strict filtering drops them.
fn inner_host(ns: &Netns, dev: &str, inner: &str) -> anyhow::Result<()> {
    ns.run(&["ip", "addr", "add", &format!("{inner}/16"), "dev", "lo"])?;
    forwarding(ns, &[dev])
}

/// Forwarding on, reverse-path filtering off on `devs` (see [`inner_host`]).
fn forwarding(ns: &Netns, devs: &[&str]) -> anyhow::Result<()> {
    for conf in ["all", "default"].iter().chain(devs) {
        ns.run(&[
            "sysctl",
            "-qw",
            &format!("net.ipv4.conf.{conf}.rp_filter=0"),
        ])?;
    }
    ns.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
    Ok(())
}

/// One side of a tunnel, rendered as swanctl.conf for strongSwan or as a
/// `[[connection]]` for tandemd.
#[derive(Debug, Clone)]
pub struct Tunnel {
    pub name: String,
    pub local_addr: String,
    pub remote_addr: String,
    pub psk: String,
    /// In strongSwan syntax, which tandemd accepts too.
    pub ike_proposal: String,
    pub esp_proposal: String,
    pub local_ts: String,
    pub remote_ts: String,
    /// When this side rekeys the IKE SA.
    pub ike_rekey: Duration,
    /// When this side rekeys the child SA.
    pub child_rekey: Duration,
    /// Zero: no DPD.
    pub dpd_delay: Duration,
    /// Initiate as soon as the configuration is loaded.
    pub initiate: bool,
    /// tandemd only: the LAN-side gateway address that moves with the tunnel.
    pub lan_addr: Option<String>,
}

impl Tunnel {
    /// The other end of the same tunnel.
    pub fn mirrored(&self) -> Tunnel {
        Tunnel {
            local_addr: self.remote_addr.clone(),
            remote_addr: self.local_addr.clone(),
            local_ts: self.remote_ts.clone(),
            remote_ts: self.local_ts.clone(),
            ..self.clone()
        }
    }

    /// This tunnel's `connections` entry and its `secrets` entry.
    fn swanctl_parts(&self) -> (String, String) {
        let secs = |d: Duration| format!("{}s", d.as_secs());
        // Hard lifetimes above the rekey times by at least 15 s: a rekey must
        // survive one lost datagram, which strongSwan retransmits after 4 s and
        // again 7.2 s later. With only 3 s of margin, a lost rekey request let
        // the old IKE SA reach its hard lifetime mid-exchange, and strongSwan
        // then moved the queued IKE_DELETE onto the new SA, closing it. A rekey
        // that never happens still shows: the tests check each one happened.
        let over = |d: Duration| secs((d / 10).max(Duration::from_secs(15)));
        let child_life =
            secs(self.child_rekey + (self.child_rekey / 10).max(Duration::from_secs(15)));
        let start = if self.initiate { "start" } else { "none" };
        let connection = format!(
            "  {name} {{
    version = 2
    local_addrs = {la}
    remote_addrs = {ra}
    # ESP in UDP 4500 even without NAT: what Tandem's dataplane speaks.
    encap = yes
    mobike = no
    fragmentation = no
    proposals = {ikep}
    rekey_time = {ike_rekey}
    over_time = {ike_over}
    # No jitter: the tests time their rekey phase to the configured values.
    rand_time = 0s
    dpd_delay = {dpd}
    local {{
      auth = psk
      id = {la}
    }}
    remote {{
      auth = psk
      id = {ra}
    }}
    children {{
      {name} {{
        local_ts = {lts}
        remote_ts = {rts}
        esp_proposals = {espp}
        rekey_time = {child_rekey}
        life_time = {child_life}
        rand_time = 0s
        start_action = {start}
      }}
    }}
  }}
",
            name = self.name,
            la = self.local_addr,
            ra = self.remote_addr,
            ikep = self.ike_proposal,
            ike_rekey = secs(self.ike_rekey),
            ike_over = over(self.ike_rekey),
            dpd = secs(self.dpd_delay),
            lts = self.local_ts,
            rts = self.remote_ts,
            espp = self.esp_proposal,
            child_rekey = secs(self.child_rekey),
        );
        let secret = format!(
            "  ike-{name} {{
    id-1 = {la}
    id-2 = {ra}
    secret = \"{psk}\"
  }}
",
            name = self.name,
            la = self.local_addr,
            ra = self.remote_addr,
            psk = self.psk,
        );
        (connection, secret)
    }

    /// swanctl.conf with these tunnels.
    fn swanctl_conf(tunnels: &[Tunnel]) -> String {
        let (connections, secrets): (Vec<String>, Vec<String>) =
            tunnels.iter().map(Tunnel::swanctl_parts).unzip();
        format!(
            "connections {{\n{}}}\nsecrets {{\n{}}}\n",
            connections.concat(),
            secrets.concat()
        )
    }

    /// tandemd's config for this tunnel, as the node `who`.
    pub fn tandemd_conf(&self, control_socket: &Path, who: &GatewayNode) -> String {
        Self::tandemd_conf_many(std::slice::from_ref(self), control_socket, who)
    }

    /// tandemd's config for these tunnels, as the node `who`: it listens on
    /// each tunnel's local address.
    pub fn tandemd_conf_many(
        tunnels: &[Tunnel],
        control_socket: &Path,
        who: &GatewayNode,
    ) -> String {
        let mut listen: Vec<String> = tunnels
            .iter()
            .map(|t| format!("\"{}\"", t.local_addr))
            .collect();
        listen.dedup();
        let mut out = format!(
            "[node]
name = \"{node}\"
control_socket = \"{sock}\"

[ike]
listen = [{listen}]
port = {ike_port}
natt_port = {natt_port}

[tun]
name = \"{tun}\"
mtu = 1400
",
            sock = control_socket.display(),
            node = who.name,
            listen = listen.join(", "),
            ike_port = who.ike_port,
            natt_port = who.natt_port,
            tun = who.tun,
        );
        for t in tunnels {
            out += &t.tandemd_connection();
        }
        out
    }

    /// This tunnel as one `[[connection]]` table of tandemd's config.
    pub fn tandemd_connection(&self) -> String {
        let secs = |d: Duration| format!("\"{}s\"", d.as_secs());
        let dpd = if self.dpd_delay.is_zero() {
            "\"off\"".to_owned()
        } else {
            secs(self.dpd_delay)
        };
        format!(
            "
[[connection]]
name = \"{name}\"
local_addr = \"{la}\"
remote_addr = \"{ra}\"
local_id = \"{la}\"
remote_id = \"{ra}\"
psk = \"{psk}\"
ike_proposals = [\"{ikep}\"]
esp_proposals = [\"{espp}\"]
local_ts = [\"{lts}\"]
remote_ts = [\"{rts}\"]
ike_lifetime = {ike}
child_lifetime = {child}
dpd_delay = {dpd}
initiate = {init}
{lan}",
            lan = self
                .lan_addr
                .as_ref()
                .map_or_else(String::new, |a| format!("lan_addr = \"{a}\"\n")),
            name = self.name,
            la = self.local_addr,
            ra = self.remote_addr,
            psk = self.psk,
            ikep = self.ike_proposal,
            espp = self.esp_proposal,
            lts = self.local_ts,
            rts = self.remote_ts,
            ike = secs(self.ike_rekey),
            child = secs(self.child_rekey),
            init = self.initiate,
        )
    }
}

/// A charon daemon in a namespace, driven through swanctl over its own vici socket.
#[derive(Debug)]
pub struct Charon {
    proc: Proc,
    dir: PathBuf,
}

impl Charon {
    /// Starts charon in `ns` with one connection, `tunnel`, loaded.
    pub fn start(ns: &Netns, dir: &Path, tunnel: &Tunnel) -> anyhow::Result<Charon> {
        Self::start_many(ns, dir, std::slice::from_ref(tunnel))
    }

    /// Starts charon in `ns` with these connections loaded.
    pub fn start_many(ns: &Netns, dir: &Path, tunnels: &[Tunnel]) -> anyhow::Result<Charon> {
        Self::start_conf(ns, dir, &Tunnel::swanctl_conf(tunnels), &[])
    }

    /// Starts charon in `ns` with these connections loaded and `settings`
    /// (strongswan.conf lines) added to its `charon` section.
    pub fn start_with_settings(
        ns: &Netns,
        dir: &Path,
        tunnels: &[Tunnel],
        settings: &str,
    ) -> anyhow::Result<Charon> {
        Self::start_full(ns, dir, &Tunnel::swanctl_conf(tunnels), &[], settings)
    }

    /// Starts charon in `ns` with this swanctl.conf loaded, and `files`
    /// (name, content) beside it for it to include.
    pub fn start_conf(
        ns: &Netns,
        dir: &Path,
        swanctl: &str,
        files: &[(&str, &str)],
    ) -> anyhow::Result<Charon> {
        Self::start_full(ns, dir, swanctl, files, "")
    }

    fn start_full(
        ns: &Netns,
        dir: &Path,
        swanctl: &str,
        files: &[(&str, &str)],
        settings: &str,
    ) -> anyhow::Result<Charon> {
        let dir = dir.join(unique("charon-"));
        std::fs::create_dir_all(dir.join("run"))?;
        let d = dir.display();
        // The kernel here has no ESP xfrm: kernel-libipsec does ESP in userspace
        // and logs as "esp", at level 2 one line per packet, which would cost
        // more CPU than the tunnel itself under iperf3: esp stays at 1. The
        // rest: every exchange and every SA change.
        std::fs::write(
            dir.join("strongswan.conf"),
            format!(
                "charon {{
  load_modular = yes
  install_routes = yes
  {settings}
  plugins {{
    include /etc/strongswan.d/charon/*.conf
    kernel-libipsec {{
      load = yes
    }}
    vici {{
      socket = unix://{d}/run/charon.vici
    }}
  }}
  filelog {{
    main {{
      path = {d}/charon.log
      time_format = %H:%M:%S
      # Line-buffered: the tests read the log while charon runs, and a
      # block-buffered tail misses the last exchanges of a failure.
      flush_line = yes
      # <name|N> on each line, the IKE SA it is about: dpd_count pairs by it.
      ike_name = yes
      default = 1
      ike = 2
      chd = 2
      esp = 1
      knl = 1
      cfg = 1
      net = 1
    }}
  }}
}}
"
            ),
        )?;
        std::fs::write(dir.join("swanctl.conf"), swanctl)?;
        for (name, content) in files {
            std::fs::write(dir.join(name), content)?;
        }
        // charon insists on /run for its pid file and sockets: give each instance
        // its own through a private mount namespace (the mount dies with it).
        let script = format!(
            "mount --bind {d}/run /run && STRONGSWAN_CONF={d}/strongswan.conf exec {CHARON}"
        );
        let proc = ns.spawn(
            &["setsid", "unshare", "-m", "sh", "-c", &script],
            &dir.join("charon.out"),
        )?;
        let charon = Charon { proc, dir };
        wait_for("charon's vici socket", Duration::from_secs(10), || {
            Ok(charon.swanctl(&["--stats"]).is_ok().then_some(()))
        })
        .with_context(|| format!("charon output:\n{}", charon.output_and_log()))?;
        let conf = charon.dir.join("swanctl.conf");
        charon.swanctl(&["--load-all", "--file", &conf.to_string_lossy()])?;
        Ok(charon)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    fn swanctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let uri = format!("unix://{}/run/charon.vici", self.dir.display());
        // --uri is an option of each swanctl command, so it goes after it.
        run_output(Command::new("swanctl").args(args).arg("--uri").arg(uri))
    }

    /// Initiates the child SA `child` (and its IKE SA) and waits for the result.
    pub fn initiate(&self, child: &str) -> anyhow::Result<()> {
        self.swanctl(&["--initiate", "--child", child, "--timeout", "15"])
            .map(drop)
            .with_context(|| format!("strongSwan could not initiate; log:\n{}", self.log_tail(40)))
    }

    /// Deletes the IKE SA of connection `name` (sends the DELETE, waits for the reply).
    pub fn terminate_ike(&self, name: &str) -> anyhow::Result<()> {
        self.swanctl(&["--terminate", "--ike", name, "--timeout", "10"])
            .map(drop)
    }

    /// Deletes the child SA `child` (sends the DELETE, waits for the reply).
    pub fn terminate_child(&self, child: &str) -> anyhow::Result<()> {
        self.swanctl(&["--terminate", "--child", child, "--timeout", "10"])
            .map(drop)
    }

    /// Starts `swanctl --rekey` of the child SA or IKE SA `name` without
    /// waiting for it: for a rekey the gateway may be slow to answer.
    pub fn start_rekey(&self, kind: &str, name: &str) -> anyhow::Result<std::process::Child> {
        let uri = format!("unix://{}/run/charon.vici", self.dir.display());
        Command::new("swanctl")
            .args(["--rekey", &format!("--{kind}"), name, "--uri", &uri])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start swanctl --rekey")
    }

    /// Rekeys the child SA `child`, or the IKE SA `name`, and waits for it.
    pub fn rekey(&self, kind: &str, name: &str) -> anyhow::Result<()> {
        self.swanctl(&["--rekey", &format!("--{kind}"), name])
            .map(drop)
    }

    pub fn list_sas(&self) -> anyhow::Result<Vec<PeerIkeSa>> {
        Ok(parse_list_sas(&self.swanctl(&["--list-sas"])?))
    }

    /// The established IKE SA with an installed child, if there is one.
    pub fn established(&self) -> anyhow::Result<Option<PeerIkeSa>> {
        Ok(self.list_sas()?.into_iter().find(|sa| {
            sa.state == "ESTABLISHED" && sa.children.iter().any(|c| c.state == "INSTALLED")
        }))
    }

    /// Waits up to 15 s for `established()`.
    pub fn wait_established(&self) -> anyhow::Result<PeerIkeSa> {
        wait_for("an established tunnel", Duration::from_secs(15), || {
            self.established()
        })
        .with_context(|| format!("strongSwan log:\n{}", self.log_tail(40)))
    }

    /// The established IKE SA and the rekeys logged so far, taken together so
    /// two snapshots bracket a phase of a test.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            sa: self.wait_established()?,
            rekeys: rekey_count(&self.log()),
        })
    }

    /// Waits (the caller keeps the tunnel idle) until a DPD exchange, started
    /// by either side, completes; returns the counts before and after. strongSwan
    /// probes after `dpd_delay` without any inbound message, and every rekey
    /// exchange restarts that wait, so with short lifetimes a fixed sleep would
    /// race the rekeys.
    pub fn wait_for_dpd(&self, timeout: Duration) -> anyhow::Result<(DpdCount, DpdCount)> {
        let before = dpd_count(&self.log());
        let after = wait_for("a DPD exchange", timeout, || {
            let now = dpd_count(&self.log());
            Ok((now.answered_by_remote + now.answered_locally
                > before.answered_by_remote + before.answered_locally)
                .then_some(now))
        })
        .with_context(|| format!("strongSwan log:\n{}", self.log_tail(30)))?;
        Ok((before, after))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("charon.log")).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }

    fn output_and_log(&self) -> String {
        let out = std::fs::read_to_string(self.dir.join("charon.out")).unwrap_or_default();
        format!("{}\n{}", tail(&out, 20), self.log_tail(20))
    }
}

/// DPD exchanges (empty INFORMATIONAL, `[ ]`) in a charon log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DpdCount {
    /// Our DPD requests the other side answered.
    pub answered_by_remote: usize,
    /// The other side's DPD requests we answered.
    pub answered_locally: usize,
}

/// Counts DPD exchanges in a charon log. A DPD is an INFORMATIONAL request
/// without payloads (RFC 7296 2.4), logged as "generating INFORMATIONAL
/// request 3 [ ]"; the response is empty too. An empty response alone proves
/// nothing: it also answers a DELETE of the IKE SA (`[ D ]`). So a DPD counts
/// when an empty request and its response (same IKE SA, same message ID) are
/// both in the log.
fn dpd_count(log: &str) -> DpdCount {
    let mut count = DpdCount::default();
    // (IKE SA tag "<name|N>", message ID) of empty requests awaiting a response.
    let mut ours = std::collections::HashSet::new();
    let mut theirs = std::collections::HashSet::new();
    for line in log.lines() {
        let Some((head, rest)) = line.split_once(" INFORMATIONAL ") else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(kind), Some(id)) = (words.next(), words.next()) else {
            continue;
        };
        let empty = words.collect::<Vec<_>>() == ["[", "]"];
        let tag = head.split_whitespace().find(|w| w.starts_with('<'));
        let key = (tag.unwrap_or_default().to_owned(), id.to_owned());
        match (head.ends_with("generating"), kind, empty) {
            (true, "request", true) => {
                ours.insert(key);
            }
            (false, "response", true) if ours.remove(&key) => count.answered_by_remote += 1,
            (false, "request", true) => {
                theirs.insert(key);
            }
            (true, "response", true) if theirs.remove(&key) => count.answered_locally += 1,
            _ => {}
        }
    }
    count
}

/// Completed rekeys in a charon log, whichever side started them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RekeyCount {
    pub ike: usize,
    pub child: usize,
}

/// Counts rekeys in a charon log: an IKE rekey logs "IKE_SA x[N] rekeyed
/// between ..." (ike level 0); a replaced child passes through the REKEYED
/// state exactly once ("CHILD_SA x{N} state change: REKEYING => REKEYED",
/// chd level 2).
pub fn rekey_count(log: &str) -> RekeyCount {
    RekeyCount {
        ike: log
            .lines()
            .filter(|l| l.contains("IKE_SA ") && l.contains(" rekeyed between "))
            .count(),
        child: log
            .lines()
            .filter(|l| l.contains("CHILD_SA ") && l.trim_end().ends_with("=> REKEYED"))
            .count(),
    }
}

/// strongSwan's view of the tunnel at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub sa: PeerIkeSa,
    pub rekeys: RekeyCount,
}

impl Snapshot {
    /// Fails unless an IKE rekey and a child rekey both completed between
    /// `before` and `self`, as the log counts them and as the SAs show them;
    /// returns a one-line summary.
    pub fn check_rekeyed_since(&self, before: &Snapshot) -> anyhow::Result<String> {
        let (b, a) = (&before.sa, &self.sa);
        let installed = |sa: &PeerIkeSa| {
            sa.children
                .iter()
                .filter(|c| c.state == "INSTALLED")
                .map(|c| c.spi_in.clone())
                .collect::<Vec<_>>()
        };
        let summary = format!(
            "{} IKE and {} child rekeys; IKE SA #{} {}/{} -> #{} {}/{}; child in {:?} -> {:?}",
            self.rekeys.ike - before.rekeys.ike,
            self.rekeys.child - before.rekeys.child,
            b.unique_id,
            b.spi_i,
            b.spi_r,
            a.unique_id,
            a.spi_i,
            a.spi_r,
            installed(b),
            installed(a),
        );
        // strongSwan makes a new IKE SA (new #N, new SPIs) for an IKE rekey,
        // whichever side starts it: the same #N means no rekey happened.
        ensure!(
            self.rekeys.ike > before.rekeys.ike
                && a.unique_id != b.unique_id
                && (&a.spi_i, &a.spi_r) != (&b.spi_i, &b.spi_r),
            "no IKE rekey: {summary}"
        );
        // Only installed children count: a rekeyed one lingers in the listing
        // (REKEYED, DELETED) for a moment and may show in both snapshots.
        let old: Vec<&str> = b.children.iter().map(|c| c.spi_in.as_str()).collect();
        ensure!(
            self.rekeys.child > before.rekeys.child
                && !installed(a).is_empty()
                && installed(a).iter().all(|spi| !old.contains(&spi.as_str())),
            "no child rekey: {summary}"
        );
        Ok(summary)
    }
}

/// One IKE SA as strongSwan lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIkeSa {
    pub name: String,
    /// charon's `#N`: a new IKE SA, rekeyed ones included, gets a new one.
    pub unique_id: u32,
    pub state: String,
    pub spi_i: String,
    pub spi_r: String,
    pub children: Vec<PeerChildSa>,
}

/// One child SA as strongSwan lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerChildSa {
    /// charon's `#N` for the child: each rekey makes a new one.
    pub unique_id: u32,
    pub state: String,
    pub spi_in: String,
    pub spi_out: String,
    pub bytes_in: u64,
    pub packets_in: u64,
    pub bytes_out: u64,
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
    let id = |field: &str| {
        field
            .rsplit('#')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    // "840 bytes" -> 840, looked up by the unit that follows the number.
    let count = |words: &[&str], unit: &str| {
        words
            .windows(2)
            .find(|w| w[1].trim_end_matches(',') == unit)
            .and_then(|w| w[0].parse().ok())
            .unwrap_or(0)
    };
    let mut sas: Vec<PeerIkeSa> = Vec::new();
    for line in text.lines() {
        let indent = line.len() - line.trim_start().len();
        let t = line.trim();
        let fields: Vec<&str> = t.split(',').map(str::trim).collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or_default();
        if indent == 0 && field(2) == "IKEv2" {
            let (name, unique) = field(0).split_once(':').unwrap_or_default();
            let mut spis = field(3).split_whitespace().map(|s| {
                s.trim_end_matches('*')
                    .trim_end_matches("_i")
                    .trim_end_matches("_r")
            });
            sas.push(PeerIkeSa {
                name: name.to_owned(),
                unique_id: id(unique),
                state: field(1).to_owned(),
                spi_i: spis.next().unwrap_or_default().to_owned(),
                spi_r: spis.next().unwrap_or_default().to_owned(),
                children: Vec::new(),
            });
        } else if let Some(sa) = sas.last_mut() {
            if field(1).starts_with("reqid ") {
                sa.children.push(PeerChildSa {
                    unique_id: id(field(0)),
                    state: field(2).to_owned(),
                    spi_in: String::new(),
                    spi_out: String::new(),
                    bytes_in: 0,
                    packets_in: 0,
                    bytes_out: 0,
                    packets_out: 0,
                });
            } else if let Some(child) = sa.children.last_mut() {
                let words: Vec<&str> = t.split_whitespace().collect();
                let spi = || words.get(1).unwrap_or(&"").trim_end_matches(',').to_owned();
                match words.first() {
                    Some(&"in") => {
                        child.spi_in = spi();
                        child.bytes_in = count(&words, "bytes");
                        child.packets_in = count(&words, "packets");
                    }
                    Some(&"out") => {
                        child.spi_out = spi();
                        child.bytes_out = count(&words, "bytes");
                        child.packets_out = count(&words, "packets");
                    }
                    _ => {}
                }
            }
        }
    }
    sas
}

/// Who a tandemd is on its machine: its node name (its certificate's, in a
/// cluster), TUN device and IKE ports.
#[derive(Debug, Clone)]
pub struct GatewayNode {
    pub name: String,
    pub tun: String,
    pub ike_port: u16,
    pub natt_port: u16,
}

impl Default for GatewayNode {
    fn default() -> Self {
        Self {
            name: "gw1".into(),
            tun: "tandem0".into(),
            ike_port: 500,
            natt_port: 4500,
        }
    }
}

/// A tandemd process in a namespace with its generated config.
#[derive(Debug)]
pub struct Tandemd {
    proc: Proc,
    socket: PathBuf,
    log: PathBuf,
    config: PathBuf,
}

impl Tandemd {
    /// The tandemd binary built beside this executable: a test's
    /// (target/<profile>/deps/<test> -> target/<profile>/tandemd) or a bench
    /// binary's (target/<profile>/<bin>).
    fn binary() -> anyhow::Result<PathBuf> {
        Self::sibling("tandemd")
    }

    /// A workspace binary (`tandemd`, `tandemctl`) built beside this one.
    pub fn sibling(name: &str) -> anyhow::Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let dir = exe.parent().context("cannot locate the target directory")?;
        let bin = [dir, dir.parent().unwrap_or(dir)]
            .into_iter()
            .map(|d| d.join(name))
            .find(|b| b.exists());
        bin.with_context(|| {
            format!(
                "{name} not found beside {}: run `cargo build --workspace --bins` first (tests/run does)",
                exe.display()
            )
        })
    }

    /// Starts tandemd in `ns` with one connection, `tunnel`, and waits until it
    /// logs that it is ready.
    pub fn start(ns: &Netns, dir: &Path, tunnel: &Tunnel) -> anyhow::Result<Tandemd> {
        Self::start_with(ns, dir, |socket| {
            tunnel.tandemd_conf(socket, &GatewayNode::default())
        })
    }

    /// Starts tandemd in `ns` with the config `make` writes for a control
    /// socket path, and waits until it logs that it is ready.
    pub fn start_with(
        ns: &Netns,
        dir: &Path,
        make: impl FnOnce(&Path) -> String,
    ) -> anyhow::Result<Tandemd> {
        let bin = Self::binary()?;
        let dir = dir.join(unique("tandemd-"));
        std::fs::create_dir_all(&dir)?;
        let socket = dir.join("tandemd.sock");
        let config = dir.join("tandemd.toml");
        std::fs::write(&config, make(&socket))?;
        let log = dir.join("tandemd.log");
        let proc = ns.spawn(
            &[
                &bin.to_string_lossy(),
                "--log",
                "tandem_ike=debug,tandem_gateway=debug,info",
                "run",
                "--config",
                &config.to_string_lossy(),
            ],
            &log,
        )?;
        let mut tandemd = Tandemd {
            proc,
            socket,
            log,
            config: config.clone(),
        };
        wait_for("tandemd ready", Duration::from_secs(10), || {
            if let Some(status) = tandemd.proc.exited() {
                // Most likely the config: show it with tandemd's complaint.
                bail!(
                    "{} exited before it was ready ({status}); config:\n{}",
                    bin.display(),
                    std::fs::read_to_string(&config).unwrap_or_default()
                );
            }
            Ok(tandemd.log().contains("tandemd ready").then_some(()))
        })
        .with_context(|| {
            format!(
                "config {} (TANDEM_KEEP_LOGS=1 keeps it); tandemd log:\n{}",
                config.display(),
                tandemd.log_tail(40)
            )
        })?;
        Ok(tandemd)
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// `kill -9`: no shutdown code runs, as in a crash.
    pub fn kill9(&mut self) -> anyhow::Result<()> {
        run_output(Command::new("kill").args(["-KILL", &self.pid().to_string()]))?;
        self.proc.wait(Duration::from_secs(5))?;
        Ok(())
    }

    /// A graceful stop (SIGTERM, as systemctl stop sends): it hands its
    /// tunnels over and leadership away before it exits.
    pub fn terminate(&mut self) -> anyhow::Result<()> {
        run_output(Command::new("kill").args(["-TERM", &self.pid().to_string()]))?;
        self.proc.wait(Duration::from_secs(10))?;
        Ok(())
    }

    /// What a service manager does after the daemon died, however it died
    /// (deploy/systemd: ExecStopPost): `tandemd release` in its namespace.
    pub fn release(&self, ns: &Netns) -> anyhow::Result<()> {
        let bin = Self::binary()?;
        ns.run(&[
            &bin.to_string_lossy(),
            "release",
            "--config",
            &self.config.to_string_lossy(),
        ])
        .map(drop)
    }

    /// `tandemd ARGS...` (the binary beside the tests), for `cert` and friends.
    pub fn tool(args: &[&str]) -> anyhow::Result<String> {
        run_output(Command::new(Self::binary()?).args(args))
    }

    /// `tandemd peer-config` for `tunnel` of this tandemd's config file.
    pub fn peer_config(&self, tunnel: &str, format: &str) -> anyhow::Result<String> {
        let config = self.config.to_string_lossy();
        Self::tool(&[
            "peer-config",
            "--config",
            &config,
            "--tunnel",
            tunnel,
            "--format",
            format,
        ])
    }

    /// `tandemd ctl --socket SOCKET args...`; fails unless it exits 0.
    pub fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        run_output(
            Command::new(Self::binary()?)
                .arg("ctl")
                .arg("--socket")
                .arg(&self.socket)
                .args(args),
        )
    }

    /// `ctl status` as JSON: `{"ike_sas": [{"connection", "spi_i", "spi_r",
    /// "state", "children": [{"inbound_spi", "outbound_spi", ...}]}]}`.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let text = self.ctl(&["status"])?;
        serde_json::from_str(&text).with_context(|| format!("status is not JSON: {text}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }
}

/// Result of one ping run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PingStats {
    pub sent: u32,
    pub received: u32,
    /// Longest time between two consecutive replies (background pings
    /// only): how long traffic stopped, to within one interval.
    pub longest_silence: Option<Duration>,
}

impl PingStats {
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.received)
    }

    /// Lost fraction in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            return 100.0;
        }
        f64::from(self.lost()) * 100.0 / f64::from(self.sent)
    }
}

fn ping_args(src: &str, dst: &str, count: u32, interval: Duration, quiet: bool) -> Vec<String> {
    // As root, iputils allows intervals below 0.2 s; -W 1 bounds the wait for
    // the last replies so a dead tunnel fails fast. Not quiet: one line per
    // reply with its time (-D), for the silences.
    [
        "ping",
        if quiet { "-q" } else { "-D" },
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
    ]
    .map(str::to_owned)
    .to_vec()
}

/// Pings `dst` from `src` inside `ns`: `count` echo requests every `interval`.
pub fn ping(
    ns: &Netns,
    src: &str,
    dst: &str,
    count: u32,
    interval: Duration,
) -> anyhow::Result<PingStats> {
    let args = ping_args(src, dst, count, interval, true);
    let out = ns.output(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
    // ping exits 1 when replies are missing; the counts say how many.
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
        let args = ping_args(src, dst, count, interval, false);
        let proc = ns.spawn(&args.iter().map(String::as_str).collect::<Vec<_>>(), &log)?;
        Ok(BackgroundPing { proc, log })
    }

    /// Waits for the ping to finish (at most `timeout`) and returns its counts.
    pub fn finish(mut self, timeout: Duration) -> anyhow::Result<PingStats> {
        self.proc.wait(timeout)?;
        parse_ping(&std::fs::read_to_string(&self.log)?)
    }
}

/// tcpdump on an interface of a namespace, for what went over the wire.
#[derive(Debug)]
pub struct Capture {
    proc: Proc,
    log: PathBuf,
    pcap: PathBuf,
}

/// One ESP-in-UDP packet seen by a [`Capture`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EspSeen {
    /// Capture time in microseconds.
    pub micros: u64,
    /// Ethernet source: which machine sent it.
    pub mac: String,
    /// `address.port` it came from.
    pub from: String,
    pub spi: u32,
    pub seq: u32,
}

impl EspSeen {
    /// Whether it left `addr`'s NAT-T port.
    pub fn sent_from(&self, addr: &str) -> bool {
        self.from.strip_suffix(".4500") == Some(addr)
    }
}

/// The ESP packets `addr` sent, by SA (outbound SPI), in capture order.
pub fn esp_by_sa<'a>(
    seen: &'a [EspSeen],
    addr: &str,
) -> std::collections::BTreeMap<u32, Vec<&'a EspSeen>> {
    let mut by_sa = std::collections::BTreeMap::<u32, Vec<&EspSeen>>::new();
    for e in seen.iter().filter(|e| e.sent_from(addr)) {
        by_sa.entry(e.spi).or_default().push(e);
    }
    by_sa
}

/// Waits until the tcpdump logging to `log` says it captures.
fn tcpdump_listening(log: &Path) -> anyhow::Result<()> {
    wait_for("tcpdump to listen", Duration::from_secs(5), || {
        Ok(std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains("listening on")
            .then_some(()))
    })
}

impl Capture {
    /// Captures UDP 4500 on `iface` in `ns` into a pcap file in `dir`:
    /// headers only, decoded after the capture, so tcpdump takes little CPU
    /// from what is measured meanwhile.
    pub fn start(ns: &Netns, iface: &str, dir: &Path) -> anyhow::Result<Capture> {
        let log = dir.join(unique("capture-"));
        let pcap = log.with_extension("pcap");
        let pcap_arg = pcap.to_str().context("capture path")?;
        let proc = ns.spawn(
            &[
                "tcpdump", "-i", iface, "-n", "-s", "96", "-Z", "root", "-w", pcap_arg, "udp",
                "port", "4500",
            ],
            &log,
        )?;
        let capture = Capture { proc, log, pcap };
        tcpdump_listening(&capture.log)?;
        Ok(capture)
    }

    /// Stops the capture and returns the ESP packets it saw, in order.
    pub fn stop(self) -> anyhow::Result<Vec<EspSeen>> {
        let pcap = self.pcap.clone();
        drop(self.proc);
        let text = run_output(
            Command::new("tcpdump")
                .arg("-r")
                .arg(&pcap)
                .args(["-e", "-n", "-tt"]),
        )?;
        Ok(parse_capture(&text))
    }
}

/// A capture of whole frames (tcpdump -s 0, a pcap file), for tests that
/// need the bytes: to replay a packet, or to count what reached a network.
#[derive(Debug)]
pub struct RawCapture {
    proc: Proc,
    log: PathBuf,
    pcap: PathBuf,
}

impl RawCapture {
    /// Captures what tcpdump's `filter` (its words) selects on `iface` in `ns`.
    pub fn start(ns: &Netns, iface: &str, filter: &[&str], dir: &Path) -> anyhow::Result<Self> {
        let log = dir.join(unique("raw-capture-"));
        let pcap = log.with_extension("pcap");
        let pcap_arg = pcap.to_str().context("capture path")?;
        let mut args = vec![
            "tcpdump",
            "-i",
            iface,
            "-n",
            "-s",
            "0",
            "-U",
            "--immediate-mode",
            "-Z",
            "root",
            "-w",
            pcap_arg,
        ];
        args.extend(filter);
        let proc = ns.spawn(&args, &log)?;
        let capture = RawCapture { proc, log, pcap };
        tcpdump_listening(&capture.log)?;
        Ok(capture)
    }

    /// Stops the capture; returns the Ethernet frames, in order.
    pub fn stop(self) -> anyhow::Result<Vec<Vec<u8>>> {
        let pcap = self.pcap.clone();
        drop(self.proc);
        let bytes = std::fs::read(&pcap).with_context(|| format!("{}", pcap.display()))?;
        // pcap: a 24-byte file header, then per frame 16 bytes (time,
        // captured and original length, in the writer's byte order) and
        // the frame. tcpdump writes little-endian here.
        anyhow::ensure!(
            bytes.get(..4) == Some(&[0xd4, 0xc3, 0xb2, 0xa1][..]),
            "not a little-endian pcap"
        );
        let mut frames = Vec::new();
        let mut at = 24;
        while let Some(header) = bytes.get(at..at + 16) {
            let len = u32::from_le_bytes([header[8], header[9], header[10], header[11]]) as usize;
            let frame = bytes
                .get(at + 16..at + 16 + len)
                .context("truncated pcap")?;
            frames.push(frame.to_vec());
            at += 16 + len;
        }
        Ok(frames)
    }
}

/// The UDP payloads, in order, of the IPv4 frames sent to `dst`:`port`.
pub fn udp_payloads(frames: &[Vec<u8>], dst: std::net::Ipv4Addr, port: u16) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| {
            let ip = f.get(14..)?;
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let to_dst = ip.get(16..20)? == dst.octets() && *ip.get(9)? == 17;
            let udp = ip.get(ihl..)?;
            let to_port = u16::from_be_bytes([*udp.get(2)?, *udp.get(3)?]) == port;
            (to_dst && to_port).then(|| udp.get(8..).map(<[u8]>::to_vec))?
        })
        .collect()
}

/// tcpdump -e -n -tt lines such as
/// `1763890000.123456 02:00:00:00:00:01 > 02:00:00:00:00:02, ethertype IPv4
/// (0x0800), length 170: 192.0.2.1.4500 > 192.0.2.2.4500: UDP-encap:
/// ESP(spi=0x9c1a2b3c,seq=0x1a), length 128`.
fn parse_capture(text: &str) -> Vec<EspSeen> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let time = words.next()?;
            let mac = words.next()?.to_owned();
            let (secs, frac) = time.split_once('.')?;
            let micros = secs.parse::<u64>().ok()? * 1_000_000 + frac.parse::<u64>().ok()?;
            let from = line.split(": ").nth(1)?.split(" > ").next()?.to_owned();
            let esp = line.split("ESP(spi=0x").nth(1)?;
            let (spi, rest) = esp.split_once(",seq=0x")?;
            let seq = rest.split(')').next()?;
            Some(EspSeen {
                micros,
                mac,
                from,
                spi: u32::from_str_radix(spi, 16).ok()?,
                seq: u32::from_str_radix(seq, 16).ok()?,
            })
        })
        .collect()
}

fn parse_ping(text: &str) -> anyhow::Result<PingStats> {
    // "200 packets transmitted, 198 received, +2 errors, 1% packet loss, time 2010ms"
    let line = text
        .lines()
        .find(|l| l.contains("packets transmitted"))
        .with_context(|| format!("no ping summary in:\n{text}"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let num = |word: &str| -> anyhow::Result<u32> {
        let i = words
            .iter()
            .position(|w| w.trim_end_matches(',') == word)
            .filter(|&i| i > 0)
            .with_context(|| format!("no {word:?} in {line:?}"))?;
        Ok(words[i - 1].parse()?)
    };
    // "[1763890000.123456] 64 bytes from 10.2.0.1: icmp_seq=7 ttl=64 time=0.3 ms"
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
        .collect();
    let longest_silence = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .reduce(f64::max)
        .map(|s| Duration::from_secs_f64(s.max(0.0)));
    Ok(PingStats {
        sent: num("packets")?,
        received: num("received")?,
        longest_silence,
    })
}

/// TCP throughput from `client_addr` in `client_ns` to an iperf3 server on
/// `server_addr` in `server_ns`, over `secs` seconds; returns the receiver's Mbit/s.
pub fn iperf3(
    server_ns: &Netns,
    server_addr: &str,
    client_ns: &Netns,
    client_addr: &str,
    secs: u32,
    dir: &Path,
) -> anyhow::Result<f64> {
    iperf3_paced(
        server_ns,
        server_addr,
        (client_ns, client_addr),
        secs,
        0,
        dir,
    )
}

/// [`iperf3`] paced at `mbits` Mbit/s (0: as fast as it goes): bulk traffic
/// that leaves room for other flows instead of filling every queue.
pub fn iperf3_paced(
    server_ns: &Netns,
    server_addr: &str,
    (client_ns, client_addr): (&Netns, &str),
    secs: u32,
    mbits: u32,
    dir: &Path,
) -> anyhow::Result<f64> {
    let port = "5201";
    // -1: serve one client and exit; dropped (killed) at the end either way.
    let _server = server_ns.spawn(
        &["iperf3", "-s", "-1", "-B", server_addr, "-p", port],
        &dir.join(unique("iperf3-server-")),
    )?;
    let mut last_err = String::new();
    // The server needs a moment to listen: retry the connect briefly.
    for _ in 0..30 {
        // Bounded: over a dead tunnel iperf3 waits forever for its control
        // connection, and a hung test is worse than a failed one.
        let limit = (secs + 15).to_string();
        let out = client_ns.output(&[
            "timeout",
            &limit,
            "iperf3",
            "--connect-timeout",
            "3000",
            "-c",
            server_addr,
            "-B",
            client_addr,
            "-p",
            port,
            "-t",
            &secs.to_string(),
            "-b",
            &format!("{mbits}M"),
            "-J",
        ])?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        // iperf3 3.12 with -J exits 0 even when the connect was refused (the
        // server not listening yet): the JSON's "error" is what tells.
        match (
            json["error"].as_str(),
            json["end"]["sum_received"]["bits_per_second"].as_f64(),
        ) {
            (None, Some(bps)) if out.status.success() => return Ok(bps / 1e6),
            (Some(e), _) => last_err = e.to_owned(),
            _ => {
                last_err = format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stderr),
                    String::from_utf8_lossy(&out.stdout)
                )
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("iperf3 {client_addr} -> {server_addr} failed: {last_err}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_swanctl_list_sas() {
        let text = "\
site-a: #3, ESTABLISHED, IKEv2, 0123456789abcdef_i* fedcba9876543210_r
  local  '192.0.2.2' @ 192.0.2.2[4500]
  remote '192.0.2.1' @ 192.0.2.1[4500]
  AES_GCM_16-256/PRF_HMAC_SHA2_256/CURVE_25519
  established 5s ago, rekeying in 3h
  site-a: #12, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
    installed 5s ago, rekeying in 54m, expires in 60m
    in  c1234567,    840 bytes,    10 packets,     0s ago
    out c7654321,   1680 bytes,    20 packets,     0s ago
    local  10.1.0.0/16
    remote 10.2.0.0/16
  site-a: #13, reqid 1, INSTALLED, TUNNEL-in-UDP, ESP:AES_GCM_16-256
    installed 1s ago, rekeying in 54m, expires in 60m
    in  c2234567,      0 bytes,     0 packets
    out c8654321,      0 bytes,     0 packets
";
        let sas = parse_list_sas(text);
        assert_eq!(sas.len(), 1);
        let sa = &sas[0];
        assert_eq!(
            (sa.name.as_str(), sa.unique_id, sa.state.as_str()),
            ("site-a", 3, "ESTABLISHED")
        );
        assert_eq!(
            (sa.spi_i.as_str(), sa.spi_r.as_str()),
            ("0123456789abcdef", "fedcba9876543210")
        );
        assert_eq!(sa.children.len(), 2);
        let c = &sa.children[0];
        assert_eq!(
            (
                c.unique_id,
                c.state.as_str(),
                c.spi_in.as_str(),
                c.spi_out.as_str()
            ),
            (12, "INSTALLED", "c1234567", "c7654321")
        );
        assert_eq!(
            (c.bytes_in, c.packets_in, c.bytes_out, c.packets_out),
            (840, 10, 1680, 20)
        );
        assert_eq!(
            (sa.children[1].unique_id, sa.children[1].spi_in.as_str()),
            (13, "c2234567")
        );
    }

    #[test]
    fn parses_tcpdump_esp_lines() {
        let seen = parse_capture(
            "listening on br0, link-type EN10MB (Ethernet), snapshot length 262144 bytes\n\
             1763890000.123456 02:00:00:00:00:01 > 02:00:00:00:00:02, ethertype IPv4 (0x0800), length 170: 192.0.2.1.4500 > 192.0.2.2.4500: UDP-encap: ESP(spi=0x9c1a2b3c,seq=0x1a), length 128\n\
             1763890000.200000 02:00:00:00:00:02 > 02:00:00:00:00:01, ethertype IPv4 (0x0800), length 110: 192.0.2.2.4500 > 192.0.2.1.4500: NONESP-encap: isakmp: child_sa  inf2\n",
        );
        assert_eq!(
            seen,
            [EspSeen {
                micros: 1_763_890_000_123_456,
                mac: "02:00:00:00:00:01".into(),
                from: "192.0.2.1.4500".into(),
                spi: 0x9c1a_2b3c,
                seq: 0x1a,
            }]
        );
    }

    #[test]
    fn parses_ping_summary() {
        let s = parse_ping(
            "--- 10.2.0.1 ping statistics ---\n\
             200 packets transmitted, 198 received, +2 errors, 1% packet loss, time 2010ms\n",
        )
        .unwrap();
        assert_eq!(
            s,
            PingStats {
                sent: 200,
                received: 198,
                longest_silence: None,
            }
        );
        let timed = parse_ping(
            "[1763890000.100000] 64 bytes from 10.2.0.1: icmp_seq=1 ttl=64 time=0.3 ms\n\
             [1763890000.110000] 64 bytes from 10.2.0.1: icmp_seq=2 ttl=64 time=0.3 ms\n\
             [1763890000.150000] 64 bytes from 10.2.0.1: icmp_seq=6 ttl=64 time=0.3 ms\n\
             6 packets transmitted, 3 received, 50% packet loss, time 50ms\n",
        )
        .unwrap();
        let silence = timed.longest_silence.unwrap();
        assert!(silence > Duration::from_millis(39) && silence < Duration::from_millis(41));
        assert_eq!(s.lost(), 2);
        assert!((s.loss_percent() - 1.0).abs() < 1e-9);
        assert!(parse_ping("connect: Network is unreachable\n").is_err());
    }

    #[test]
    fn counts_rekeys() {
        let log = "\
15:11:45 16[IKE] IKE_SA h[1] established between 192.0.2.2[192.0.2.2]...192.0.2.1[192.0.2.1]
15:12:23 16[CHD] CHILD_SA h{1} state change: INSTALLED => REKEYING
15:12:23 16[CHD] CHILD_SA h{1} state change: REKEYING => REKEYED
15:12:23 09[CHD] CHILD_SA h{1} state change: REKEYED => DELETING
15:11:54 11[IKE] IKE_SA h[2] rekeyed between 192.0.2.2[192.0.2.2]...192.0.2.1[192.0.2.1]
15:11:54 11[IKE] IKE_SA h[1] state change: ESTABLISHED => REKEYED
";
        assert_eq!(rekey_count(log), RekeyCount { ike: 1, child: 1 });
    }

    #[test]
    fn counts_dpd_exchanges_only() {
        let log = "\
10:00:01 14[ENC] <h|1> generating INFORMATIONAL request 2 [ ]
10:00:01 15[ENC] <h|1> parsed INFORMATIONAL response 2 [ ]
10:00:02 16[ENC] <h|1> parsed INFORMATIONAL request 0 [ ]
10:00:02 16[ENC] <h|1> generating INFORMATIONAL response 0 [ ]
10:00:03 05[ENC] <h|1> generating INFORMATIONAL request 3 [ D ]
10:00:03 05[ENC] <h|1> parsed INFORMATIONAL response 3 [ ]
10:00:03 05[ENC] <h|2> parsed INFORMATIONAL request 0 [ D ]
10:00:03 05[ENC] <h|2> generating INFORMATIONAL response 0 [ ]
10:00:04 05[ENC] <h|2> generating INFORMATIONAL request 1 [ ]
";
        assert_eq!(
            dpd_count(log),
            DpdCount {
                answered_by_remote: 1,
                answered_locally: 1
            }
        );
    }
}
