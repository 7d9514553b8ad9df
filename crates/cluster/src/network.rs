//! The Raft transport: openraft's RPCs over tonic with mutual TLS, both the
//! client side (one lazily connected channel per peer, dropped on any error so
//! the next call reconnects) and the server side. Bodies are the versioned
//! encoding of openraft's own types ([`crate::command::encode`]).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{
    ChangeMembershipError, ClientWriteError, InstallSnapshotError, NetworkError, RPCError,
    RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tandem_rpc::raft::Payload;
use tandem_rpc::raft::raft_client::RaftClient;
use tandem_rpc::raft::raft_server;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::command::{Command, WIRE_VERSION, decode, encode};
use crate::store::Applied;
use crate::transport::Transport;
use crate::trust::{Caller, Refusals, Role, Rule};
use crate::{Member, NodeId, Outcome, Raft, TypeConfig};

fn payload<T: Serialize>(value: &T) -> Payload {
    Payload {
        version: u32::from(WIRE_VERSION),
        body: encode(value),
    }
}

fn unpack<T: DeserializeOwned>(p: &Payload) -> Result<T, crate::command::CodecError> {
    // The version travels twice (field and body prefix); the body's is the
    // one decoding trusts, the field lets a newer peer be named in logs.
    decode(&p.body)
}

/// Builds one [`Peer`] per target; openraft calls it as it needs.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub transport: Transport,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer {
            target,
            member: node.clone(),
            transport: self.transport.clone(),
            client: None,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Peer {
    target: NodeId,
    member: Member,
    transport: Transport,
    client: Option<RaftClient<Channel>>,
}

#[derive(Debug, Clone, Copy)]
enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
}

impl Peer {
    async fn call<Req, Resp, E>(
        &mut self,
        method: Method,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match self.client.take() {
            Some(c) => c,
            None => self
                .transport
                .connect(&self.member)
                .await
                .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?,
        };
        let mut c = client.clone();
        let body = payload(req);
        let call = async move {
            match method {
                Method::AppendEntries => c.append_entries(body).await,
                Method::Vote => c.vote(body).await,
                Method::InstallSnapshot => c.install_snapshot(body).await,
            }
        };
        // Partitions drop packets silently: without a hard limit a call could
        // hang until TCP gives up.
        let reply = match tokio::time::timeout(option.hard_ttl(), call).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(RPCError::Network(NetworkError::new(&status))),
            Err(elapsed) => return Err(RPCError::Network(NetworkError::new(&elapsed))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            unpack(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        self.client = Some(client);
        result.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.member.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Method::AppendEntries, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Method::InstallSnapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(Method::Vote, &rpc, &option).await
    }
}

/// A request a follower forwards to the leader (the Forward RPC's body).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Forward {
    Write(Command),
    AddLearner {
        id: NodeId,
        member: Member,
    },
    ChangeVoters(BTreeSet<NodeId>),
    /// Stand for election now: a leader that is stopping asks a caught-up
    /// voter, and votes for it (see Cluster::hand_leadership_over).
    Elect,
}

/// Why a request failed where it was executed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ForwardFailure {
    /// Not the leader: who is, if known. Worth asking again (there, or here
    /// once an election settles).
    pub not_leader: Option<Option<(NodeId, Member)>>,
    /// A membership change is still committing (right after a bootstrap,
    /// say): worth asking the same leader again shortly.
    pub busy: bool,
    pub message: String,
}

impl ForwardFailure {
    pub fn from_write(e: RaftError<NodeId, ClientWriteError<NodeId, Member>>) -> Self {
        let not_leader = match &e {
            RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
                Some(f.leader_id.zip(f.leader_node.clone()))
            }
            _ => None,
        };
        let busy = matches!(
            &e,
            RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::InProgress(_)
            ))
        );
        Self {
            not_leader,
            busy,
            message: e.to_string(),
        }
    }
}

/// How long a new member may take to catch up before it is refused.
const LEARNER_CATCH_UP: Duration = Duration::from_secs(15);

/// Executes a request on this node, which must be the leader to succeed.
/// While it hands leadership over (`paused`), writes are refused as busy,
/// to be asked again: each one would lengthen its log past the candidate's.
pub(crate) async fn execute(
    raft: &Raft,
    paused: &AtomicBool,
    fwd: &Forward,
) -> Result<Outcome, ForwardFailure> {
    if paused.load(Ordering::Relaxed) && !matches!(fwd, Forward::Elect) {
        return Err(ForwardFailure {
            not_leader: None,
            busy: true,
            message: "leadership is being handed over".into(),
        });
    }
    match fwd {
        Forward::Write(cmd) => raft.client_write(cmd.clone()).await.map(|r| r.data),
        Forward::AddLearner { id, member } => {
            raft.add_learner(*id, member.clone(), false)
                .await
                .map_err(ForwardFailure::from_write)?;
            return await_learner(raft, *id, member)
                .await
                .map(|()| Outcome::default());
        }
        Forward::ChangeVoters(ids) => raft
            .change_membership(ids.clone(), false)
            .await
            .map(|r| r.data),
        Forward::Elect => {
            return raft
                .trigger()
                .elect()
                .await
                .map(|()| Outcome::default())
                .map_err(|e| ForwardFailure {
                    not_leader: None,
                    busy: false,
                    message: e.to_string(),
                });
        }
    }
    .map_err(ForwardFailure::from_write)
}

/// A learner joins for real only once it has the log: one that cannot (its
/// certificate is not from the cluster CA, it is unreachable) is removed
/// again rather than left in the membership, where as a voter it would only
/// weaken the quorum.
async fn await_learner(raft: &Raft, id: NodeId, member: &Member) -> Result<(), ForwardFailure> {
    let mut metrics = raft.metrics();
    let caught_up = tokio::time::timeout(LEARNER_CATCH_UP, async {
        loop {
            {
                let m = metrics.borrow_and_update();
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&id).cloned().flatten())
                    .map(|l| l.index);
                if matched.is_some() && matched >= m.last_log_index {
                    return;
                }
            }
            if metrics.changed().await.is_err() {
                return;
            }
        }
    })
    .await
    .is_ok();
    if caught_up {
        return Ok(());
    }
    let removed = raft
        .change_membership(openraft::ChangeMembers::RemoveNodes([id].into()), false)
        .await;
    Err(ForwardFailure {
        not_leader: None,
        busy: false,
        message: format!(
            "member {id} ({member}) did not catch up within {LEARNER_CATCH_UP:?}: unreachable, or its certificate is not signed by this cluster's CA; {}",
            match removed {
                Ok(_) => "not added".to_owned(),
                Err(e) => format!("and removing it again failed: {e}"),
            }
        ),
    })
}

/// The gRPC server side: admits each RPC only from a current member
/// (DESIGN.md invariant 8), then hands it to the local Raft.
pub(crate) struct Service {
    pub raft: Raft,
    pub paused: Arc<AtomicBool>,
    pub applied: Arc<RwLock<Applied>>,
    /// Whether callers come over TLS (and so have certificates); the plain
    /// transport's links never leave one process or simulation.
    pub tls: bool,
    pub refusals: Refusals,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Service")
    }
}

fn bad_request(e: crate::command::CodecError) -> Status {
    Status::invalid_argument(e.to_string())
}

impl Service {
    /// Resolves the caller to a member of the applied membership, or
    /// refuses the call: an operator's or viewer's certificate, a revoked
    /// one, or a member's whose name is not (or no longer) in the
    /// membership. A node that has applied no membership yet (it waits to
    /// be added) admits any member certificate: its leader-to-be must reach
    /// it before it can know who that is. Returns the caller's node id
    /// (`None` in process, or before any membership).
    fn admit<T>(&self, req: &Request<T>) -> Result<Option<NodeId>, Status> {
        let id = match Caller::of(req, self.tls) {
            Ok(Caller::InProcess) => return Ok(None),
            Ok(Caller::Certified(id)) => id,
            Err(rule) => return Err(self.refusals.refuse("(unnamed)", rule)),
        };
        let applied = self
            .applied
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let who = id.to_string();
        if applied.state.is_revoked(&id) {
            return Err(self.refusals.refuse(&who, Rule::Revoked));
        }
        if id.role != Role::Member {
            return Err(self.refusals.refuse(&who, Rule::NotAMember));
        }
        let membership = applied.membership.membership();
        if membership.nodes().next().is_none() {
            return Ok(None);
        }
        match membership.nodes().find(|(_, m)| m.name == id.name) {
            Some((node, _)) => Ok(Some(*node)),
            None => Err(self.refusals.refuse(&who, Rule::NotInMembership)),
        }
    }
}

#[tonic::async_trait]
impl raft_server::Raft for Service {
    async fn append_entries(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&req)?;
        let rpc: AppendEntriesRequest<TypeConfig> = unpack(req.get_ref()).map_err(bad_request)?;
        Ok(Response::new(payload(&self.raft.append_entries(rpc).await)))
    }

    async fn vote(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&req)?;
        let rpc: VoteRequest<NodeId> = unpack(req.get_ref()).map_err(bad_request)?;
        Ok(Response::new(payload(&self.raft.vote(rpc).await)))
    }

    async fn install_snapshot(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        self.admit(&req)?;
        let rpc: InstallSnapshotRequest<TypeConfig> = unpack(req.get_ref()).map_err(bad_request)?;
        Ok(Response::new(payload(
            &self.raft.install_snapshot(rpc).await,
        )))
    }

    async fn forward(&self, req: Request<Payload>) -> Result<Response<Payload>, Status> {
        let caller = self.admit(&req)?;
        let fwd: Forward = unpack(req.get_ref()).map_err(bad_request)?;
        // A member speaks only for itself: another's lease renewed, IKE
        // state or reservations in another's name would let one member
        // keep a dead one's tunnels from moving, or take its numbers.
        if let (Some(node), Forward::Write(cmd)) = (caller, &fwd)
            && cmd
                .changes
                .iter()
                .any(|c| c.speaks_for().is_some_and(|n| n != node))
        {
            return Err(self
                .refusals
                .refuse(&format!("node {node}"), Rule::NotItsOwn));
        }
        Ok(Response::new(payload(
            &execute(&self.raft, &self.paused, &fwd).await,
        )))
    }
}

/// Sends a forwarded request over an open client.
pub(crate) async fn forward(
    client: &mut RaftClient<Channel>,
    fwd: &Forward,
    timeout: Duration,
) -> Result<Result<Outcome, ForwardFailure>, String> {
    match tokio::time::timeout(timeout, client.forward(payload(fwd))).await {
        Ok(Ok(reply)) => unpack(reply.get_ref()).map_err(|e| e.to_string()),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err(format!("no answer within {timeout:?}")),
    }
}
