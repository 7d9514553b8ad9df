//! `tandemctl`: the operators' CLI over the admin gRPC API (proto/admin.proto)
//! that every cluster member serves on `[cluster] admin_listen`. It speaks
//! mutual TLS with an operator's or viewer's certificate from the cluster CA,
//! e.g. one issued with `tandemd cert issue --dir PKI --role operator operator`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tandem_rpc::admin::admin_client::AdminClient;
use tandem_rpc::admin::{
    DrainRequest, HandoverRequest, MemberAddRequest, MemberRemoveRequest, PeerConfigRequest,
    RevokeRequest, StatusReply, StatusRequest, TunnelApplyRequest, TunnelRemoveRequest,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

#[derive(Parser)]
#[command(name = "tandemctl", version, about = "Operate a Tandem cluster")]
struct Cli {
    /// A member's admin API, HOST:PORT.
    #[arg(long, short)]
    endpoint: String,
    /// That member's name (its certificate's), checked against what it presents.
    #[arg(long)]
    server_name: String,
    /// The directory with ca.pem and this client's NAME.pem / NAME.key.
    #[arg(long)]
    pki: PathBuf,
    /// This client's certificate name.
    #[arg(long, default_value = "operator")]
    name: String,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Members, leader, lease ages and each tunnel's owner.
    Status {
        /// Everything, as JSON (the typed summary and the member's detail).
        #[arg(long)]
        json: bool,
    },
    /// Each tunnel, its owner, and the owner's lease age.
    Tunnels {
        #[arg(long)]
        json: bool,
    },
    /// The IKE and child SAs of the member answering (ask the tunnel's
    /// owner): SPIs, algorithms, packets and bytes. Never keys.
    Sas {
        #[arg(long)]
        json: bool,
    },
    /// Moves one tunnel to another gateway (planned maintenance).
    Handover {
        #[arg(long)]
        tunnel: String,
        /// The gateway's member id.
        #[arg(long)]
        to: u64,
        #[arg(long)]
        json: bool,
    },
    /// Moves every tunnel off a gateway.
    Drain {
        /// The gateway's member id.
        node: u64,
        #[arg(long)]
        json: bool,
    },
    /// Configures tunnels through the cluster from a file of `[[connection]]`
    /// tables (tandemd's config syntax): new ones are added, others replaced
    /// by name, on every gateway without a restart. All or nothing.
    Apply {
        #[arg(long)]
        file: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Removes a tunnel from every gateway (its SAs end; the peer's DPD notices).
    RemoveTunnel {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Adds or removes a cluster member.
    Members {
        #[command(subcommand)]
        action: MembersCmd,
    },
    /// The configuration for the customer's device of one tunnel, as cloud
    /// VPN consoles offer it (never the pre-shared key: it says where it goes).
    PeerConfig {
        #[arg(long)]
        tunnel: String,
        #[arg(long, value_parser = ["swanctl", "cisco-ios", "generic"], default_value = "swanctl")]
        format: String,
        /// {"tunnel", "format", "config"}
        #[arg(long)]
        json: bool,
    },
    /// Revokes a certificate: every member refuses it from the next commit
    /// on. SERIAL as `tandemd cert issue` printed it (hex), or a NAME to
    /// refuse every certificate of that name; `serial:` or `name:` in front
    /// says which where it could be either.
    Revoke {
        certificate: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum MembersCmd {
    /// Adds a voting member (a gateway or a witness) that catches up from the
    /// leader; it is removed again if it cannot within 15 s.
    Add {
        #[arg(long)]
        id: u64,
        /// Its node.name, which its certificate carries.
        #[arg(long)]
        name: String,
        /// Its cluster listen address, HOST:PORT.
        #[arg(long)]
        addr: String,
        #[arg(long)]
        witness: bool,
        #[arg(long)]
        json: bool,
    },
    /// Removes a member: it stops receiving the log and voting.
    Remove {
        id: u64,
        #[arg(long)]
        json: bool,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run(cli)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tandemctl: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut client = AdminClient::new(connect(&cli).await?);
    match cli.command {
        Cmd::Status { json } => {
            let status = status(&mut client).await?;
            if json {
                println!("{}", status_json(&status)?);
            } else {
                print!("{}", status_table(&status));
            }
        }
        Cmd::Tunnels { json } => {
            let status = status(&mut client).await?;
            let rows = tunnel_rows(&status);
            if json {
                println!("{}", serde_json::Value::Array(rows));
            } else {
                print!("{}", tunnels_table(&rows));
            }
        }
        Cmd::Sas { json } => {
            let status = status(&mut client).await?;
            let detail: serde_json::Value = serde_json::from_str(&status.detail_json)
                .context("the member sent unreadable SA details")?;
            let sas = detail["ike_sas"].clone();
            if json {
                println!("{sas}");
            } else {
                print!("{}", sas_table(status.node, &sas));
            }
        }
        Cmd::Handover { tunnel, to, json } => {
            let reply = client
                .handover(HandoverRequest { tunnel, to })
                .await
                .map_err(refused)?;
            print_action(&reply.into_inner().result_json, json)?;
        }
        Cmd::Drain { node, json } => {
            let reply = client.drain(DrainRequest { node }).await.map_err(refused)?;
            print_action(&reply.into_inner().result_json, json)?;
        }
        Cmd::Members {
            action:
                MembersCmd::Add {
                    id,
                    name,
                    addr,
                    witness,
                    json,
                },
        } => {
            let request = MemberAddRequest {
                id,
                name,
                addr,
                witness,
            };
            let reply = client.member_add(request).await.map_err(refused)?;
            print_action(&reply.into_inner().result_json, json)?;
        }
        Cmd::Apply { file, json } => {
            let request = tunnel_apply_request(&file)?;
            let reply = client.tunnel_apply(request).await.map_err(refused)?;
            print_action(&reply.into_inner().result_json, json)?;
        }
        Cmd::RemoveTunnel { name, json } => {
            let reply = client
                .tunnel_remove(TunnelRemoveRequest { name })
                .await
                .map_err(refused)?;
            print_action(&reply.into_inner().result_json, json)?;
        }
        Cmd::Members {
            action: MembersCmd::Remove { id, json },
        } => {
            let reply = client
                .member_remove(MemberRemoveRequest { id })
                .await
                .map_err(refused)?;
            print_action(&reply.into_inner().result_json, json)?;
        }
        Cmd::Revoke { certificate, json } => {
            let reply = client
                .revoke(RevokeRequest { certificate })
                .await
                .map_err(refused)?;
            print_action(&reply.into_inner().result_json, json)?;
        }
        Cmd::PeerConfig {
            tunnel,
            format,
            json,
        } => {
            let request = PeerConfigRequest {
                tunnel: tunnel.clone(),
                format: format.clone(),
            };
            let config = client
                .peer_config(request)
                .await
                .map_err(refused)?
                .into_inner()
                .config;
            if json {
                let out = serde_json::json!({"tunnel": tunnel, "format": format, "config": config});
                println!("{out}");
            } else {
                print!("{config}");
            }
        }
    }
    Ok(())
}

/// The file to apply and the keys its `psk_file` entries name, read here
/// (relative to the file) under the rule tandemd applies to its own: not
/// readable by group or others. The member checks everything else.
fn tunnel_apply_request(file: &std::path::Path) -> anyhow::Result<TunnelApplyRequest> {
    use std::os::unix::fs::PermissionsExt as _;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let parsed: toml::Table =
        toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    let mut psk_files = std::collections::HashMap::new();
    let connections = parsed.get("connection").and_then(|c| c.as_array());
    for (i, conn) in connections.into_iter().flatten().enumerate() {
        let Some(name) = conn.get("psk_file").and_then(|p| p.as_str()) else {
            continue;
        };
        let path = dir.join(name);
        let key = format!("connection[{i}].psk_file");
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("{key}: cannot read {}", path.display()))?;
        anyhow::ensure!(
            meta.permissions().mode() & 0o077 == 0,
            "{key}: {} must not be readable by group or others (chmod 600)",
            path.display()
        );
        let bytes = std::fs::read(&path)
            .with_context(|| format!("{key}: cannot read {}", path.display()))?;
        psk_files.insert(name.to_owned(), bytes);
    }
    Ok(TunnelApplyRequest {
        toml: text,
        psk_files,
    })
}

/// The member's own words: tonic's rendering of a status quotes and escapes
/// them, which reads badly on a terminal.
fn refused(status: tonic::Status) -> anyhow::Error {
    match status.code() {
        tonic::Code::FailedPrecondition | tonic::Code::InvalidArgument => {
            anyhow::anyhow!("{}", status.message())
        }
        tonic::Code::PermissionDenied => {
            anyhow::anyhow!("permission denied: {}", status.message())
        }
        code => anyhow::anyhow!("{code}: {}", status.message()),
    }
}

/// An action's result: the member's JSON as it is, or a sentence per change.
fn print_action(result_json: &str, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{result_json}");
    } else {
        let v: serde_json::Value =
            serde_json::from_str(result_json).context("the member sent an unreadable result")?;
        print!("{}", describe_action(&v));
    }
    Ok(())
}

fn describe_action(v: &serde_json::Value) -> String {
    if let Some(revoked) = v["revoked"].as_str() {
        return format!(
            "revoked {revoked} (applied at index {})\n",
            v["applied_index"]
        );
    }
    if let Some(moved) = v["moved"].as_array() {
        if moved.is_empty() {
            return "nothing to move\n".to_owned();
        }
        let mut out = String::new();
        for m in moved {
            out += &format!(
                "{}: gateway {} -> gateway {}\n",
                m["tunnel"].as_str().unwrap_or("?"),
                m["from"],
                m["to"]
            );
        }
        if let Some(us) = v["commit_us"].as_u64() {
            out += &format!("committed in {:.1} ms\n", us as f64 / 1000.0);
        }
        return out;
    }
    if let Some(id) = v["added"].as_u64() {
        return format!(
            "member {id} ({}, {}{}) added and caught up\n",
            v["name"].as_str().unwrap_or("?"),
            v["addr"].as_str().unwrap_or("?"),
            if v["witness"] == true {
                ", witness"
            } else {
                ""
            }
        );
    }
    if let Some(id) = v["removed"].as_u64() {
        return format!("member {id} removed\n");
    }
    if let (Some(applied), Some(removed)) = (v["applied"].as_array(), v["removed"].as_array()) {
        let mut out = String::new();
        for (verb, names) in [("applied", applied), ("removed", removed)] {
            for name in names {
                out += &format!(
                    "tunnel {} {verb}: committed, every gateway follows\n",
                    name.as_str().unwrap_or("?")
                );
            }
        }
        return out;
    }
    format!("{v}\n")
}

/// The member's status: `status`, `tunnels` and `sas` all read it.
async fn status(client: &mut AdminClient<Channel>) -> anyhow::Result<StatusReply> {
    Ok(client
        .status(StatusRequest {})
        .await
        .map_err(refused)?
        .into_inner())
}

async fn connect(cli: &Cli) -> anyhow::Result<Channel> {
    let read = |f: String| {
        let path = cli.pki.join(f);
        std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))
    };
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem".into())?))
        .identity(Identity::from_pem(
            read(format!("{}.pem", cli.name))?,
            read(format!("{}.key", cli.name))?,
        ))
        .domain_name(cli.server_name.clone());
    Endpoint::from_shared(format!("https://{}", cli.endpoint))
        .context("bad --endpoint")?
        .tls_config(tls)?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach the admin API at {}", cli.endpoint))
}

fn status_json(s: &StatusReply) -> anyhow::Result<String> {
    let detail: serde_json::Value = serde_json::from_str(&s.detail_json)?;
    let members: Vec<_> = s
        .members
        .iter()
        .map(|m| {
            serde_json::json!({
                "id": m.id, "name": m.name, "addr": m.addr, "witness": m.witness,
                "voter": m.voter, "lease_age_ms": m.lease_age_ms,
            })
        })
        .collect();
    let tunnels: serde_json::Map<_, _> = s
        .tunnels
        .iter()
        .map(|t| (t.name.clone(), serde_json::json!(t.owner)))
        .collect();
    Ok(serde_json::json!({
        "node": s.node, "leader": s.leader, "term": s.term,
        "members": members, "owners": tunnels, "detail": detail,
    })
    .to_string())
}

fn status_table(s: &StatusReply) -> String {
    let mut out = format!(
        "answered by member {}; leader {}; term {}\n\nMEMBER  NAME             ADDRESS                ROLE     VOTER  LEASE AGE\n",
        s.node,
        if s.leader == 0 {
            "unknown".to_owned()
        } else {
            s.leader.to_string()
        },
        s.term
    );
    for m in &s.members {
        out += &format!(
            "{:<7} {:<16} {:<22} {:<8} {:<6} {}\n",
            m.id,
            m.name,
            m.addr,
            if m.witness { "witness" } else { "gateway" },
            if m.voter { "yes" } else { "no" },
            m.lease_age_ms
                .map_or_else(|| "-".to_owned(), |a| format!("{a} ms")),
        );
    }
    out += "\nTUNNEL                OWNER\n";
    for t in &s.tunnels {
        out += &format!("{:<21} {}\n", t.name, t.owner);
    }
    out
}

/// One JSON object per tunnel: name, owner, the owner's lease age as the
/// answering member sees it.
fn tunnel_rows(s: &StatusReply) -> Vec<serde_json::Value> {
    s.tunnels
        .iter()
        .map(|t| {
            let owner = s.members.iter().find(|m| m.id == t.owner);
            serde_json::json!({
                "tunnel": t.name,
                "owner": t.owner,
                "owner_name": owner.map(|m| m.name.clone()),
                "owner_lease_age_ms": owner.and_then(|m| m.lease_age_ms),
            })
        })
        .collect()
}

fn tunnels_table(rows: &[serde_json::Value]) -> String {
    let mut out = "TUNNEL                OWNER  NAME             LEASE AGE\n".to_owned();
    for r in rows {
        out += &format!(
            "{:<21} {:<6} {:<16} {}\n",
            r["tunnel"].as_str().unwrap_or("?"),
            r["owner"].as_u64().unwrap_or(0),
            r["owner_name"].as_str().unwrap_or("-"),
            r["owner_lease_age_ms"]
                .as_u64()
                .map_or_else(|| "-".to_owned(), |a| format!("{a} ms")),
        );
    }
    out
}

fn sas_table(node: u64, sas: &serde_json::Value) -> String {
    let mut out = format!("SAs held by member {node} (a tunnel's SAs are on its owner)\n");
    let empty = Vec::new();
    for sa in sas.as_array().unwrap_or(&empty) {
        out += &format!(
            "\nIKE SA {} {}_{} {}{}\n",
            sa["connection"].as_str().unwrap_or("?"),
            sa["spi_i"].as_str().unwrap_or("?"),
            sa["spi_r"].as_str().unwrap_or("?"),
            sa["state"].as_str().unwrap_or("?"),
            if sa["initiator"] == true {
                ", initiator"
            } else {
                ""
            },
        );
        out += "  CHILD IN/OUT        ALGORITHMS            PACKETS IN/OUT      BYTES IN/OUT\n";
        for c in sa["children"].as_array().unwrap_or(&empty) {
            let n = |dir: &str, k: &str| c[dir][k].as_u64().unwrap_or(0);
            out += &format!(
                "  {}/{}   {:<21} {:>8}/{:<10} {:>10}/{}\n",
                c["inbound_spi"].as_str().unwrap_or("?"),
                c["outbound_spi"].as_str().unwrap_or("?"),
                c["proposal"].as_str().unwrap_or("?"),
                n("inbound", "packets"),
                n("outbound", "packets"),
                n("inbound", "bytes"),
                n("outbound", "bytes"),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_rpc::admin::{Member, Tunnel};

    #[test]
    fn status_table_shows_members_leases_and_owners() {
        let s = StatusReply {
            node: 2,
            leader: 1,
            term: 3,
            members: vec![
                Member {
                    id: 1,
                    name: "gw1".into(),
                    addr: "198.51.100.11:7401".into(),
                    witness: false,
                    voter: true,
                    lease_age_ms: Some(40),
                },
                Member {
                    id: 3,
                    name: "witness3".into(),
                    addr: "198.51.100.13:7403".into(),
                    witness: true,
                    voter: true,
                    lease_age_ms: None,
                },
            ],
            tunnels: vec![Tunnel {
                name: "site-a".into(),
                owner: 1,
            }],
            detail_json: "{}".into(),
        };
        let table = status_table(&s);
        assert!(table.contains("leader 1; term 3"), "{table}");
        assert!(table.contains("gw1") && table.contains("40 ms"), "{table}");
        assert!(
            table.contains("witness3") && table.contains("witness  yes    -"),
            "{table}"
        );
        assert!(table.contains("site-a                1"), "{table}");
        let json: serde_json::Value = serde_json::from_str(&status_json(&s).unwrap()).unwrap();
        assert_eq!(json["owners"]["site-a"], 1);
        assert_eq!(json["members"][0]["lease_age_ms"], 40);
        let rows = tunnel_rows(&s);
        assert_eq!(rows[0]["owner_name"], "gw1");
        let table = tunnels_table(&rows);
        assert!(
            table.contains("site-a                1      gw1              40 ms"),
            "{table}"
        );
    }

    #[test]
    fn actions_read_as_sentences() {
        let moved = serde_json::json!({
            "moved": [{"tunnel": "site-a", "from": 1, "to": 2}], "commit_us": 2500,
        });
        assert_eq!(
            describe_action(&moved),
            "site-a: gateway 1 -> gateway 2\ncommitted in 2.5 ms\n"
        );
        assert_eq!(
            describe_action(&serde_json::json!({"moved": []})),
            "nothing to move\n"
        );
        let added = serde_json::json!({"added": 4, "name": "gw4", "addr": "192.0.2.14:7400", "witness": false});
        assert_eq!(
            describe_action(&added),
            "member 4 (gw4, 192.0.2.14:7400) added and caught up\n"
        );
        assert_eq!(
            describe_action(&serde_json::json!({"removed": 4})),
            "member 4 removed\n"
        );
    }

    #[test]
    fn sas_table_shows_spis_algorithms_and_counters() {
        let sas = serde_json::json!([{
            "connection": "site-a", "spi_i": "00000000000000aa", "spi_r": "00000000000000bb",
            "state": "established", "initiator": false,
            "children": [{
                "inbound_spi": "c1000001", "outbound_spi": "c2000002", "proposal": "aes256gcm16",
                "inbound": {"packets": 7, "bytes": 700}, "outbound": {"packets": 5, "bytes": 500},
            }],
        }]);
        let table = sas_table(2, &sas);
        assert!(
            table.contains("IKE SA site-a 00000000000000aa_00000000000000bb established"),
            "{table}"
        );
        assert!(table.contains("c1000001/c2000002   aes256gcm16"), "{table}");
        assert!(
            table.contains("7/5") && table.contains("700/500"),
            "{table}"
        );
    }
}
