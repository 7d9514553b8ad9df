//! tandemd: the Tandem gateway node.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use tandem_gateway::{config, control, node};

#[derive(Parser)]
#[command(
    name = "tandemd",
    version,
    about = "Tandem high-availability IPsec gateway"
)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax), e.g. "info" or "tandem_ike=debug,info".
    /// Default: "info" ("error" for the demo, which prints its own timeline).
    #[arg(long, global = true)]
    log: Option<String>,
    /// Log as JSON lines instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a whole site in this process, no root needed: 3 gateways, a
    /// customer device with 2 tunnels, a planned handover and a killed
    /// owner, with the gap and loss the customer saw at each.
    Demo {
        /// Keep the demo's state directory (certificates, Raft logs).
        #[arg(long)]
        keep: bool,
    },
    /// Run the gateway.
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Check a configuration file and exit.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Give up this node's tunnel addresses (VIPs). For the service manager
    /// to run after tandemd exits, however it exited (systemd ExecStopPost):
    /// a crashed process cannot remove them itself, and a VIP left on a live
    /// host contests the new owner's.
    Release {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Print the configuration for the customer's device of one tunnel (as
    /// `tandemctl peer-config` does from a running cluster). Never the key.
    PeerConfig {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        tunnel: String,
        /// swanctl | cisco-ios | generic
        #[arg(long, default_value = "swanctl")]
        format: String,
    },
    /// Create the cluster's PKI: a CA, node certificates, the storage key.
    Cert {
        #[command(subcommand)]
        action: CertCmd,
    },
    /// Send a command to a running tandemd over its control socket.
    Ctl {
        #[arg(long, default_value = "/run/tandem/tandemd.sock")]
        socket: PathBuf,
        /// status | initiate NAME | terminate NAME | rekey-child NAME | rekey-ike NAME |
        /// member-add ID NAME HOST:PORT [witness] | member-remove ID |
        /// probe COUNT [WRITERS [BYTES]] | handover TUNNEL NODE_ID | drain NODE_ID |
        /// peer-config TUNNEL swanctl|cisco-ios|generic | apply FILE | remove-tunnel NAME
        #[arg(required = true, num_args = 1..)]
        command: Vec<String>,
    },
}

#[derive(Subcommand)]
enum CertCmd {
    /// Create a cluster CA (ca.pem, ca.key) and storage key (storage.key) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue NAME.pem and NAME.key in DIR, signed by its CA. A member's NAME
    /// is its `node.name` (and its certificate's DNS name); prints the
    /// certificate's serial, which `tandemctl revoke` takes.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// member (a gateway or witness: speaks Raft while in the
        /// membership), operator (the admin API) or viewer (the admin API's
        /// status, tunnels, sas and peer-config only).
        #[arg(long, default_value = "member")]
        role: tandem_cluster::tls::Role,
        name: String,
    },
    /// Print who a certificate names: NAME (ROLE, serial SERIAL).
    Show { file: PathBuf },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    // The demo prints its own timeline; the cluster's complaints about the
    // node it killed on purpose would bury it.
    let default_log = if matches!(cli.command, Cmd::Demo { .. }) {
        "error,openraft=off"
    } else {
        "info"
    };
    init_logging(cli.log.as_deref().unwrap_or(default_log), cli.log_json);
    let result = match cli.command {
        Cmd::Demo { keep } => demo(keep),
        Cmd::Run { config } => run(&config),
        Cmd::Check { config } => config::Config::load(&config)
            .map(|c| {
                println!(
                    "{}: ok, {} connection(s)",
                    config.display(),
                    c.connections.len()
                )
            })
            .map_err(Into::into),
        Cmd::Cert { action } => cert(action),
        Cmd::PeerConfig {
            config,
            tunnel,
            format,
        } => peer_config(&config, &tunnel, &format),
        Cmd::Release { config } => config::Config::load(&config)
            .map_err(Into::into)
            .and_then(|c| runtime().and_then(|rt| rt.block_on(node::release_vips(&c)))),
        Cmd::Ctl {
            socket,
            mut command,
        } => {
            // tandemd reads an applied file itself, from its own directory.
            if let [verb, file, ..] = command.as_mut_slice()
                && verb == "apply"
                && let Ok(path) = std::fs::canonicalize(&*file)
            {
                *file = path.to_string_lossy().into_owned();
            }
            runtime().and_then(|rt| {
                rt.block_on(control::call(&socket, &command.join(" ")))
                    .map(|reply| println!("{reply}"))
            })
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line, the whole cause chain: what an operator pastes into a ticket.
            eprintln!("tandemd: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn cert(action: CertCmd) -> anyhow::Result<()> {
    use tandem_cluster::tls;
    match action {
        CertCmd::Init { dir } => {
            tls::init(&dir)?;
            println!("cluster CA and storage key written to {}", dir.display());
        }
        CertCmd::Show { file } => {
            println!("{}", tls::identity_of(&file)?);
        }
        CertCmd::Issue { dir, role, name } => {
            let serial = tls::issue(&dir, &name, role)?;
            println!(
                "{0}/{name}.pem and {0}/{name}.key written ({role}, serial {serial})",
                dir.display()
            );
        }
    }
    Ok(())
}

fn peer_config(path: &std::path::Path, tunnel: &str, format: &str) -> anyhow::Result<()> {
    let format = format.parse().map_err(anyhow::Error::msg)?;
    let config = config::Config::load(path)?;
    let conn = config
        .connections
        .iter()
        .find(|c| c.ike.name == tunnel)
        .with_context(|| format!("{}: no tunnel {tunnel:?}", path.display()))?;
    print!("{}", tandem_gateway::peer_config::render(&conn.ike, format));
    Ok(())
}

fn demo(keep: bool) -> anyhow::Result<()> {
    let dir = tandem_gateway::demo::temp_dir();
    let result = tandem_gateway::demo::run(&dir);
    if keep {
        println!("state kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if result? {
        println!("both tunnels survived both events");
        Ok(())
    } else {
        anyhow::bail!("a tunnel did not survive: see the table above")
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let config = config::Config::load(path)?;
    runtime()?.block_on(node::run(config))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn init_logging(filter: &str, json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
