//! How Raft RPCs reach other members: gRPC over TCP with mutual TLS in
//! production, or gRPC over byte streams someone else provides (the
//! failover simulator's simulated TCP, `tandemd demo`'s in-process links).
//! The gRPC service and client code is the same either way.

use std::fmt::Debug;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::stream::BoxStream;
use hyper_util::rt::TokioIo;
use tandem_rpc::raft::raft_client::RaftClient;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::{Channel, Endpoint};

use crate::Member;
use crate::tls::NodeTls;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A stream carrying one gRPC connection.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// One connection from a [`Links`] provider.
pub struct Conn(Box<dyn Io>);

impl Conn {
    pub fn new(io: impl Io) -> Self {
        Self(Box::new(io))
    }
}

impl Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").finish_non_exhaustive()
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();

    fn connect_info(&self) -> Self::ConnectInfo {}
}

pub type Dialing = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;
pub type Listening =
    Pin<Box<dyn Future<Output = io::Result<BoxStream<'static, io::Result<Conn>>>> + Send>>;

/// A provider of plain byte-stream links between members.
pub trait Links: Send + Sync + 'static {
    /// Opens a connection to a member's `host:port`.
    fn dial(&self, addr: &str) -> Dialing;
    /// Accepts connections on `addr`.
    fn listen(&self, addr: SocketAddr) -> Listening;
}

/// The member links a node uses.
#[derive(Clone)]
pub enum Transport {
    /// TCP with mutual TLS: what tandemd runs.
    Tls(NodeTls),
    /// Plain gRPC over someone else's links, with no TLS: only where the
    /// links never leave one trusted process or simulation.
    Plain(Arc<dyn Links>),
}

impl Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transport::Tls(_) => f.write_str("Transport::Tls"),
            Transport::Plain(_) => f.write_str("Transport::Plain"),
        }
    }
}

/// Why a member could not be reached.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
    #[error("no connection within {0:?}")]
    Timeout(Duration),
}

impl Transport {
    /// Opens a gRPC channel to a member.
    pub(crate) async fn connect(
        &self,
        member: &Member,
    ) -> Result<RaftClient<Channel>, ConnectError> {
        let channel = match self {
            Transport::Tls(tls) => {
                Endpoint::from_shared(format!("https://{}", member.addr))?
                    .tls_config(tls.client(&member.name))?
                    .connect_timeout(CONNECT_TIMEOUT)
                    .tcp_nodelay(true)
                    .connect()
                    .await?
            }
            Transport::Plain(links) => {
                let links = links.clone();
                let addr = member.addr.clone();
                let connector = tower::service_fn(move |_| {
                    let dialing = links.dial(&addr);
                    async move { dialing.await.map(TokioIo::new) }
                });
                let endpoint = Endpoint::from_shared(format!("http://{}", member.addr))?;
                tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect_with_connector(connector))
                    .await
                    .map_err(|_| ConnectError::Timeout(CONNECT_TIMEOUT))??
            }
        };
        Ok(RaftClient::new(channel))
    }
}
