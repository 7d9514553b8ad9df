//! A Tandem cluster of real tandemd processes: gateways and witnesses on the
//! loopback of a namespace the test creates, with a PKI made by `tandemd cert`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::{GatewayNode, Netns, Tandemd, TempDir, Tunnel, wait_for};

/// One member's fixed identity: id, name, ports, data directory.
#[derive(Debug, Clone)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub witness: bool,
    pub raft_port: u16,
    /// Where its cluster listener is (127.0.0.1 unless each member has its
    /// own namespace).
    pub addr: String,
    /// Extra `[cluster]` lines (mode, lease, VIP settings).
    pub extra: String,
    /// `[node] metrics_listen`, if it serves metrics.
    pub metrics: Option<String>,
    pub data_dir: PathBuf,
    pub node: GatewayNode,
}

/// The members, their PKI, and the running processes.
#[derive(Debug)]
pub struct Cluster {
    pub members: BTreeMap<u64, Member>,
    pub pki: PathBuf,
    pub snapshot_every: u64,
    pub running: BTreeMap<u64, Tandemd>,
    /// Where the members' control sockets, logs and data live.
    pub dir: PathBuf,
}

impl Cluster {
    /// `gateways` gateway members (ids 1..) then `witnesses` witnesses, all
    /// with cluster listeners on 127.0.0.1; nothing started yet.
    pub fn new(
        dir: &Path,
        gateways: u64,
        witnesses: u64,
        snapshot_every: u64,
    ) -> anyhow::Result<Cluster> {
        let pki = dir.join("pki");
        let pki_s = pki.to_string_lossy().into_owned();
        Tandemd::tool(&["cert", "init", "--dir", &pki_s])?;
        // The operators' certificate, for tandemctl.
        Tandemd::tool(&[
            "cert", "issue", "--dir", &pki_s, "--role", "operator", "operator",
        ])?;
        let mut members = BTreeMap::new();
        for id in 1..=gateways + witnesses {
            let witness = id > gateways;
            let name = if witness {
                format!("witness{id}")
            } else {
                format!("gw{id}")
            };
            Tandemd::tool(&["cert", "issue", "--dir", &pki_s, &name])?;
            members.insert(
                id,
                Member {
                    id,
                    name: name.clone(),
                    witness,
                    raft_port: 7400 + id as u16,
                    addr: "127.0.0.1".into(),
                    extra: String::new(),
                    metrics: None,
                    data_dir: dir.join(format!("data-{name}")),
                    node: GatewayNode {
                        name,
                        tun: format!("tdm{id}"),
                        ike_port: 5000 + id as u16,
                        natt_port: 6000 + id as u16,
                    },
                },
            );
        }
        Ok(Cluster {
            members,
            pki,
            snapshot_every,
            running: BTreeMap::new(),
            dir: dir.to_path_buf(),
        })
    }

    /// The `[cluster]` section for member `id`.
    pub fn cluster_conf(&self, id: u64) -> String {
        let me = &self.members[&id];
        let mut out = format!(
            "\n[cluster]\nid = {id}\nlisten = \"{addr}:{port}\"\nadmin_listen = \"{addr}:{admin}\"\ndata_dir = \"{data}\"\npki_dir = \"{pki}\"\nrole = \"{role}\"\nsnapshot_every = {snap}\n{extra}",
            addr = me.addr,
            admin = Self::admin_port(id),
            extra = me.extra,
            port = me.raft_port,
            data = me.data_dir.display(),
            pki = self.pki.display(),
            role = if me.witness { "witness" } else { "gateway" },
            snap = self.snapshot_every,
        );
        for m in self.members.values() {
            out += &format!(
                "\n[[cluster.member]]\nid = {}\nname = \"{}\"\naddr = \"{}:{}\"\nwitness = {}\n",
                m.id, m.name, m.addr, m.raft_port, m.witness
            );
        }
        out
    }

    /// Member `id`'s whole config: no tunnels (or `tunnels`, for a gateway).
    pub fn conf(&self, id: u64, socket: &Path, tunnels: &[Tunnel]) -> String {
        let me = &self.members[&id];
        let node = if me.witness {
            format!(
                "[node]\nname = \"{}\"\ncontrol_socket = \"{}\"\n",
                me.name,
                socket.display()
            )
        } else {
            match tunnels {
                [_, ..] => Tunnel::tandemd_conf_many(tunnels, socket, &me.node),
                [] => format!(
                    "[node]\nname = \"{}\"\ncontrol_socket = \"{}\"\n\n[ike]\nlisten = [\"127.0.0.1\"]\nport = {}\nnatt_port = {}\n\n[tun]\nname = \"{}\"\n",
                    me.name,
                    socket.display(),
                    me.node.ike_port,
                    me.node.natt_port,
                    me.node.tun
                ),
            }
        };
        let node = match &me.metrics {
            Some(addr) => node.replacen(
                "[node]\n",
                &format!("[node]\nmetrics_listen = \"{addr}\"\n"),
                1,
            ),
            None => node,
        };
        node + &self.cluster_conf(id)
    }

    /// Starts member `id` in `ns` (again, after a kill, from its data directory).
    pub fn start(&mut self, ns: &Netns, id: u64, tunnel: Option<&Tunnel>) -> anyhow::Result<()> {
        self.start_tunnels(ns, id, tunnel.map_or(&[], std::slice::from_ref))
    }

    /// Starts member `id` in `ns` with these tunnels.
    pub fn start_tunnels(&mut self, ns: &Netns, id: u64, tunnels: &[Tunnel]) -> anyhow::Result<()> {
        self.start_listening(ns, id, tunnels, &[])
    }

    /// Starts gateway `id` in `ns` with these tunnels, listening on
    /// `extra_listen` too: the addresses of tunnels to be applied live.
    pub fn start_listening(
        &mut self,
        ns: &Netns,
        id: u64,
        tunnels: &[Tunnel],
        extra_listen: &[&str],
    ) -> anyhow::Result<()> {
        let extra: String = extra_listen.iter().map(|a| format!("\"{a}\", ")).collect();
        let tandemd = Tandemd::start_with(ns, &self.dir, |socket| {
            self.conf(id, socket, tunnels).replacen(
                "[ike]\nlisten = [",
                &format!("[ike]\nlisten = [{extra}"),
                1,
            )
        })
        .with_context(|| format!("starting member {id}"))?;
        self.running.insert(id, tandemd);
        Ok(())
    }

    fn admin_port(id: u64) -> u16 {
        7500 + id as u16
    }

    /// `tandemctl ARGS...` against member `id`'s admin API, run in `ns`
    /// (where that API is reachable), as the operator.
    pub fn tandemctl(&self, ns: &Netns, id: u64, args: &[&str]) -> anyhow::Result<String> {
        let me = &self.members[&id];
        let endpoint = format!("{}:{}", me.addr, Self::admin_port(id));
        self.tandemctl_at(ns, &endpoint, &me.name, args)
    }

    /// `tandemctl ARGS...` against member `id` must fail with a message
    /// that contains `says`; returns what tandemctl said.
    pub fn tandemctl_refuses(
        &self,
        ns: &Netns,
        id: u64,
        args: &[&str],
        says: &str,
    ) -> anyhow::Result<String> {
        let refused = self
            .tandemctl(ns, id, args)
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        anyhow::ensure!(
            refused.contains(says),
            "tandemctl {args:?} should fail naming {says:?}: {refused:?}"
        );
        Ok(refused
            .split_once("tandemctl: ")
            .map(|(_, m)| m.trim().to_owned())
            .unwrap_or_default())
    }

    /// `tandemctl ARGS...` against any `endpoint`, whose certificate should
    /// name `server`.
    pub fn tandemctl_at(
        &self,
        ns: &Netns,
        endpoint: &str,
        server: &str,
        args: &[&str],
    ) -> anyhow::Result<String> {
        self.tandemctl_with(ns, endpoint, server, &self.pki, "operator", args)
    }

    /// `tandemctl ARGS...` against member `id` with the certificate `cert`
    /// in `pki` (ca.pem beside it).
    pub fn tandemctl_as(
        &self,
        ns: &Netns,
        id: u64,
        pki: &Path,
        cert: &str,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let me = &self.members[&id];
        let endpoint = format!("{}:{}", me.addr, Self::admin_port(id));
        self.tandemctl_with(ns, &endpoint, &me.name, pki, cert, args)
    }

    fn tandemctl_with(
        &self,
        ns: &Netns,
        endpoint: &str,
        server: &str,
        pki: &Path,
        cert: &str,
        args: &[&str],
    ) -> anyhow::Result<String> {
        let pki = pki.to_string_lossy();
        let bin = Tandemd::sibling("tandemctl")?;
        let mut all = vec![
            bin.to_str().context("binary path")?,
            "--endpoint",
            endpoint,
            "--server-name",
            server,
            "--pki",
            &pki,
            "--name",
            cert,
        ];
        all.extend(args);
        ns.run(&all)
    }

    /// One Raft RPC (`raft_call`'s CALL) to member `id` with the
    /// certificate `cert` in `pki`: `OK`, or the status code and message.
    pub fn raft_call(
        &self,
        ns: &Netns,
        id: u64,
        pki: &Path,
        cert: &str,
        call: &str,
        node: u64,
    ) -> anyhow::Result<String> {
        let me = &self.members[&id];
        let endpoint = format!("{}:{}", me.addr, me.raft_port);
        let bin = Tandemd::sibling("raft_call")?;
        let pki = pki.to_string_lossy();
        let node = node.to_string();
        let out = ns.run(&[
            bin.to_str().context("binary path")?,
            "--pki",
            &pki,
            "--name",
            cert,
            "--endpoint",
            &endpoint,
            "--server-name",
            &me.name,
            call,
            "--node",
            &node,
        ])?;
        Ok(out.trim().to_owned())
    }

    pub fn kill9(&mut self, id: u64) -> anyhow::Result<()> {
        let mut t = self.running.remove(&id).context("not running")?;
        t.kill9()
    }

    /// A crash under a service manager: `kill -9`, then what the manager
    /// runs after any exit (deploy/systemd: ExecStopPost = tandemd release).
    pub fn crash(&mut self, ns: &Netns, id: u64) -> anyhow::Result<()> {
        let mut t = self.running.remove(&id).context("not running")?;
        t.kill9()?;
        t.release(ns)
    }

    /// A graceful stop under a service manager: SIGTERM, then what the
    /// manager runs after any exit.
    pub fn stop(&mut self, ns: &Netns, id: u64) -> anyhow::Result<()> {
        let mut t = self.running.remove(&id).context("not running")?;
        t.terminate()?;
        t.release(ns)
    }

    pub fn node(&self, id: u64) -> &Tandemd {
        &self.running[&id]
    }

    /// The `cluster` part of member `id`'s status.
    pub fn view(&self, id: u64) -> anyhow::Result<serde_json::Value> {
        let status = self.node(id).status()?;
        Ok(status["cluster"].clone())
    }

    /// Waits until a running member reports a leader that is running, and
    /// returns it.
    pub fn leader(&self) -> anyhow::Result<u64> {
        wait_for("a leader", Duration::from_secs(15), || {
            for id in self.running.keys() {
                if let Ok(v) = self.view(*id)
                    && let Some(l) = v["leader"].as_u64()
                    && self.running.contains_key(&l)
                {
                    return Ok(Some(l));
                }
            }
            Ok(None)
        })
    }

    /// `probe COUNT WRITERS BYTES` on member `id`: the commit report.
    pub fn probe(
        &self,
        id: u64,
        count: u64,
        writers: u64,
        bytes: usize,
    ) -> anyhow::Result<serde_json::Value> {
        let text = self.node(id).ctl(&[
            "probe",
            &count.to_string(),
            &writers.to_string(),
            &bytes.to_string(),
        ])?;
        serde_json::from_str(&text).with_context(|| format!("probe report is not JSON: {text}"))
    }

    /// Waits until member `id` has applied probes up to `seq` from `from`.
    pub fn wait_probes(
        &self,
        id: u64,
        from: u64,
        seq: u64,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        wait_for(
            &format!("member {id} to apply probe {from}/{seq}"),
            timeout,
            || {
                let v = self.view(id)?;
                Ok((v["probes"][from.to_string()].as_u64() >= Some(seq)).then_some(()))
            },
        )
    }

    /// Waits until member `id` has applied everything a `probe` report
    /// (from member `from`) committed.
    pub fn wait_report(
        &self,
        id: u64,
        from: u64,
        report: &serde_json::Value,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let last = report["last_seq"].as_u64().context("last_seq")?;
        self.wait_probes(id, from, last, timeout)
    }

    /// Every running member's applied state, as `ctl status` shows it, must be
    /// the same (members, owners, SAs, probes).
    pub fn check_same_state(&self) -> anyhow::Result<()> {
        let pick = |v: &serde_json::Value| {
            serde_json::json!({
                "owners": v["owners"], "probes": v["probes"], "ike_sas": v["ike_sas"],
                "child_sas": v["child_sas"], "members": v["members"],
            })
        };
        let mut first: Option<(u64, serde_json::Value)> = None;
        for id in self.running.keys() {
            let v = pick(&self.view(*id)?);
            match &first {
                None => first = Some((*id, v)),
                Some((f, fv)) if *fv != v => {
                    bail!("member {id} differs from member {f}:\n{v}\nvs\n{fv}")
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// A namespace with only loopback, and a scratch directory, for a cluster.
#[derive(Debug)]
pub struct LoopbackHost {
    pub ns: Netns,
    pub dir: TempDir,
}

impl LoopbackHost {
    pub fn new() -> anyhow::Result<LoopbackHost> {
        Ok(LoopbackHost {
            ns: Netns::new()?,
            dir: TempDir::new()?,
        })
    }
}
