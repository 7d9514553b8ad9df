//! The operators' gRPC API (proto/admin.proto) on `[cluster] admin_listen`,
//! mutual TLS with the cluster CA. It is a typed front for the same commands
//! the local control socket takes: they reach the node's main loop (or the
//! witness's) the same way, so both paths behave alike. Every call first
//! resolves its caller's certificate to a role and refuses what that role
//! may not do (DESIGN.md invariant 8): members' certificates are for Raft,
//! viewers only read.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tandem_cluster::Cluster;
use tandem_cluster::tls::NodeTls;
use tandem_cluster::trust::{Caller, Refusals, Revoked, Role, Rule};
use tandem_cluster::{Change, Command as ClusterCommand};
use tandem_rpc::admin::admin_server::{Admin, AdminServer};
use tandem_rpc::admin::{
    ActionReply, DrainRequest, HandoverRequest, Member, MemberAddRequest, MemberRemoveRequest,
    PeerConfigReply, PeerConfigRequest, RevokeRequest, StatusReply, StatusRequest, Tunnel,
    TunnelApplyRequest, TunnelRemoveRequest,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use crate::control::{self, Command};

struct Service {
    cluster: Arc<Cluster>,
    commands: mpsc::Sender<control::Request>,
    refusals: Refusals,
}

/// What a call needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Status and peer configuration: viewers too.
    Read,
    /// Anything that changes the cluster: operators only.
    Operate,
}

impl Service {
    /// The caller, if its certificate may make a call that `needs` this.
    fn admit<T>(&self, req: &Request<T>, needs: Needs) -> Result<(), Status> {
        let id = match Caller::of(req, true) {
            Ok(Caller::Certified(id)) => id,
            Ok(Caller::InProcess) => {
                return Err(self.refusals.refuse("(unnamed)", Rule::NoCertificate));
            }
            Err(rule) => return Err(self.refusals.refuse("(unnamed)", rule)),
        };
        let who = id.to_string();
        if self.cluster.read_state(|s| s.is_revoked(&id)) {
            return Err(self.refusals.refuse(&who, Rule::Revoked));
        }
        match (id.role, needs) {
            (Role::Member, _) => Err(self.refusals.refuse(&who, Rule::NotAnOperator)),
            (Role::Viewer, Needs::Operate) => Err(self.refusals.refuse(&who, Rule::ReadOnly)),
            (Role::Operator, _) | (Role::Viewer, Needs::Read) => Ok(()),
        }
    }

    async fn run(&self, cmd: Command) -> Result<String, Status> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send((cmd, reply))
            .await
            .map_err(|_| Status::unavailable("tandemd is stopping"))?;
        answer
            .await
            .map_err(|_| Status::unavailable("tandemd is stopping"))?
            .map_err(Status::failed_precondition)
    }
}

#[tonic::async_trait]
impl Admin for Service {
    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<StatusReply>, Status> {
        self.admit(&request, Needs::Read)?;
        let detail_json = self.run(Command::Status).await?;
        let detail: serde_json::Value =
            serde_json::from_str(&detail_json).map_err(|e| Status::internal(e.to_string()))?;
        let view = &detail["cluster"];
        let members = view["members"]
            .as_array()
            .map(|ms| {
                ms.iter()
                    .map(|m| {
                        let id = m["id"].as_u64().unwrap_or(0);
                        Member {
                            id,
                            name: m["name"].as_str().unwrap_or_default().to_owned(),
                            addr: m["addr"].as_str().unwrap_or_default().to_owned(),
                            witness: m["witness"].as_bool().unwrap_or(false),
                            voter: m["voter"].as_bool().unwrap_or(false),
                            lease_age_ms: view["lease_age_ms"][id.to_string()].as_u64(),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let tunnels = self.cluster.read_state(|s| {
            s.owners
                .iter()
                .map(|(name, owner)| Tunnel {
                    name: name.clone(),
                    owner: *owner,
                })
                .collect()
        });
        Ok(Response::new(StatusReply {
            node: self.cluster.id(),
            leader: view["leader"].as_u64().unwrap_or(0),
            term: view["term"].as_u64().unwrap_or(0),
            members,
            tunnels,
            detail_json,
        }))
    }

    async fn handover(
        &self,
        request: Request<HandoverRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.admit(&request, Needs::Operate)?;
        let r = request.into_inner();
        let result_json = self
            .run(Command::Handover {
                tunnel: r.tunnel,
                to: r.to,
            })
            .await?;
        Ok(Response::new(ActionReply { result_json }))
    }

    async fn drain(&self, request: Request<DrainRequest>) -> Result<Response<ActionReply>, Status> {
        self.admit(&request, Needs::Operate)?;
        let result_json = self.run(Command::Drain(request.into_inner().node)).await?;
        Ok(Response::new(ActionReply { result_json }))
    }

    async fn member_add(
        &self,
        request: Request<MemberAddRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.admit(&request, Needs::Operate)?;
        let r = request.into_inner();
        if r.addr.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(format!(
                "{:?} is not HOST:PORT (the member's cluster listen address)",
                r.addr
            )));
        }
        let member = tandem_cluster::Member {
            name: r.name,
            addr: r.addr,
            witness: r.witness,
        };
        let result_json = self.run(Command::MemberAdd(r.id, member)).await?;
        Ok(Response::new(ActionReply { result_json }))
    }

    async fn member_remove(
        &self,
        request: Request<MemberRemoveRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.admit(&request, Needs::Operate)?;
        let result_json = self
            .run(Command::MemberRemove(request.into_inner().id))
            .await?;
        Ok(Response::new(ActionReply { result_json }))
    }

    async fn tunnel_apply(
        &self,
        request: Request<TunnelApplyRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.admit(&request, Needs::Operate)?;
        let r = request.into_inner();
        let result_json = self
            .run(Command::TunnelApply {
                text: tandem_crypto::Secret::new(r.toml.into_bytes()),
                psk: crate::config::PskFiles::Sent(
                    r.psk_files
                        .into_iter()
                        .map(|(file, key)| (file, tandem_crypto::Secret::new(key)))
                        .collect(),
                ),
            })
            .await?;
        Ok(Response::new(ActionReply { result_json }))
    }

    async fn tunnel_remove(
        &self,
        request: Request<TunnelRemoveRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.admit(&request, Needs::Operate)?;
        let result_json = self
            .run(Command::TunnelRemove(request.into_inner().name))
            .await?;
        Ok(Response::new(ActionReply { result_json }))
    }

    async fn peer_config(
        &self,
        request: Request<PeerConfigRequest>,
    ) -> Result<Response<PeerConfigReply>, Status> {
        self.admit(&request, Needs::Read)?;
        let r = request.into_inner();
        let format = r.format.parse().map_err(Status::invalid_argument)?;
        let config = self
            .run(Command::PeerConfig {
                tunnel: r.tunnel,
                format,
            })
            .await?;
        Ok(Response::new(PeerConfigReply { config }))
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<ActionReply>, Status> {
        self.admit(&request, Needs::Operate)?;
        let entry =
            Revoked::parse(&request.into_inner().certificate).map_err(Status::invalid_argument)?;
        self.cluster
            .propose(ClusterCommand::one(Change::CertRevoked(entry.clone())))
            .await
            .map_err(|e| Status::failed_precondition(e.to_string()))?;
        tracing::warn!(%entry, "certificate revoked");
        let result_json = serde_json::json!({
            "revoked": entry.to_string(),
            "applied_index": self.cluster.applied_index(),
        })
        .to_string();
        Ok(Response::new(ActionReply { result_json }))
    }
}

/// Serves the admin API on `addr` until the process ends.
pub async fn serve(
    addr: SocketAddr,
    tls: &NodeTls,
    cluster: Arc<Cluster>,
    commands: mpsc::Sender<control::Request>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind the admin API on {addr}"))?;
    let router = tonic::transport::Server::builder()
        .tls_config(tls.server())
        .context("admin API TLS")?
        .add_service(AdminServer::new(Service {
            cluster,
            commands,
            refusals: Refusals::new("admin"),
        }));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "admin API stopped");
        }
    });
    tracing::info!(%addr, "admin API listening");
    Ok(())
}
