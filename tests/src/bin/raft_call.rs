//! Calls one Raft RPC of a member with a given certificate, as a hostile
//! holder of that certificate would: for the trust tests, which expect each
//! refused. Prints `OK` or the status code and message, one line.
//!
//! `raft_call --pki DIR --name CERT --endpoint HOST:PORT --server-name NAME
//! vote|append|snapshot|probe NODE|add-learner|elect`

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{SnapshotMeta, Vote};
use tandem_cluster::command::{WIRE_VERSION, encode};
use tandem_cluster::tls::NodeTls;
use tandem_cluster::{Change, Command, Forward, Member, TypeConfig};
use tandem_rpc::raft::Payload;
use tandem_rpc::raft::raft_client::RaftClient;
use tonic::transport::Endpoint;

#[derive(Parser)]
struct Cli {
    #[arg(long)]
    pki: std::path::PathBuf,
    /// The certificate (NAME.pem / NAME.key in --pki) to call with.
    #[arg(long)]
    name: String,
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    server_name: String,
    #[arg(value_enum)]
    call: Call,
    /// For `probe`: the member the probe claims to come from.
    #[arg(long, default_value_t = 1)]
    node: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum Call {
    /// A vote request in a far-future term (would depose the leader).
    Vote,
    /// A heartbeat from a far-future term (would depose the leader).
    Append,
    /// An empty snapshot from a far-future term (would wipe the state).
    Snapshot,
    /// A forwarded probe write (would commit).
    Probe,
    /// A forwarded request to add member 9 as a learner (would receive the log).
    AddLearner,
    /// A forwarded request to stand for election.
    Elect,
}

/// A term no real cluster reaches in a test.
const TERM: u64 = 1 << 40;

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let tls = NodeTls::from_dir(&cli.pki, &cli.name)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let line = rt.block_on(async {
        let channel = Endpoint::from_shared(format!("https://{}", cli.endpoint))?
            .tls_config(tls.client(&cli.server_name))?
            .connect()
            .await
            .context("connect")?;
        let mut client = RaftClient::new(channel);
        let vote = Vote::new(TERM, 9);
        let body = match cli.call {
            Call::Vote => encode(&VoteRequest::<u64>::new(vote, None)),
            Call::Append => encode(&AppendEntriesRequest::<TypeConfig> {
                vote,
                prev_log_id: None,
                entries: Vec::new(),
                leader_commit: None,
            }),
            Call::Snapshot => encode(&InstallSnapshotRequest::<TypeConfig> {
                vote,
                meta: SnapshotMeta::default(),
                offset: 0,
                data: Vec::new(),
                done: true,
            }),
            Call::Probe => encode(&Forward::Write(Command::one(Change::Probe {
                node: cli.node,
                seq: 424_242,
                padding: Vec::new(),
            }))),
            Call::AddLearner => encode(&Forward::AddLearner {
                id: 9,
                member: Member {
                    name: cli.name.clone(),
                    addr: "127.0.0.1:7409".into(),
                    witness: false,
                },
            }),
            Call::Elect => encode(&Forward::Elect),
        };
        let payload = Payload {
            version: u32::from(WIRE_VERSION),
            body,
        };
        let reply = match cli.call {
            Call::Vote => client.vote(payload).await,
            Call::Append => client.append_entries(payload).await,
            Call::Snapshot => client.install_snapshot(payload).await,
            Call::Probe | Call::AddLearner | Call::Elect => client.forward(payload).await,
        };
        anyhow::Ok(match reply {
            Ok(_) => "OK".to_owned(),
            Err(status) => format!("{:?}: {}", status.code(), status.message()),
        })
    })?;
    println!("{line}");
    Ok(())
}
