//! The local control socket: one command per connection, one reply, as plain lines.
//! `tandemd ctl` is its client. The cluster-wide admin API (gRPC) is separate; this
//! socket only ever talks to the daemon on the same machine, guarded by file
//! permissions (0600, created so from the start) and by the caller's
//! credentials (root or tandemd's own user), with a read timeout and a cap
//! on connections open at once.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tandem_crypto::Secret;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// A command an operator (or a test) gives the running daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Status,
    Initiate(String),
    Terminate(String),
    RekeyChild(String),
    RekeyIke(String),
    /// Adds a cluster member (a voter), which then catches up from the leader.
    MemberAdd(tandem_cluster::NodeId, tandem_cluster::Member),
    MemberRemove(tandem_cluster::NodeId),
    /// Commits `count` probe entries, `writers` at a time, each padded to
    /// `bytes`, and reports commit latency.
    Probe {
        count: u64,
        writers: u64,
        bytes: usize,
    },
    /// Planned handover of a tunnel to another gateway.
    Handover {
        tunnel: String,
        to: tandem_cluster::NodeId,
    },
    /// Hands every tunnel a gateway owns to the other gateways.
    Drain(tandem_cluster::NodeId),
    /// Tunnels to configure through the cluster: `[[connection]]` tables
    /// (a `Secret`: they may hold a key inline, and never reach a log).
    TunnelApply {
        text: Secret,
        psk: crate::config::PskFiles,
    },
    /// A tunnel to remove through the cluster.
    TunnelRemove(String),
    /// The customer device's configuration for a tunnel.
    PeerConfig {
        tunnel: String,
        format: crate::peer_config::Format,
    },
}

impl Command {
    pub fn parse(line: &str) -> Result<Command, String> {
        let mut words = line.split_whitespace();
        let verb = words.next().unwrap_or_default();
        let mut name = || {
            words
                .next()
                .map(str::to_owned)
                .ok_or_else(|| format!("{verb} needs a connection name"))
        };
        match verb {
            "status" => Ok(Command::Status),
            "initiate" => Ok(Command::Initiate(name()?)),
            "terminate" => Ok(Command::Terminate(name()?)),
            "rekey-child" => Ok(Command::RekeyChild(name()?)),
            "rekey-ike" => Ok(Command::RekeyIke(name()?)),
            "member-add" => {
                let usage = "usage: member-add ID NAME HOST:PORT [witness]";
                let rest: Vec<&str> = words.collect();
                let (id, name, addr, witness) = match rest.as_slice() {
                    [id, name, addr] => (id, name, addr, false),
                    [id, name, addr, "witness"] => (id, name, addr, true),
                    _ => return Err(usage.into()),
                };
                let id = id.parse().map_err(|_| format!("{usage}: ID is a number"))?;
                if addr.parse::<std::net::SocketAddr>().is_err() {
                    return Err(format!("{usage}: {addr:?} is not HOST:PORT"));
                }
                Ok(Command::MemberAdd(
                    id,
                    tandem_cluster::Member {
                        name: (*name).to_owned(),
                        addr: (*addr).to_owned(),
                        witness,
                    },
                ))
            }
            "probe" => {
                let usage = "usage: probe COUNT [WRITERS [BYTES]]";
                let mut num = |default: Option<u64>| -> Result<u64, String> {
                    match words.next() {
                        Some(w) => w.parse().map_err(|_| usage.to_owned()),
                        None => default.ok_or_else(|| usage.to_owned()),
                    }
                };
                let count = num(None)?;
                let writers = num(Some(1))?.clamp(1, 1024);
                let bytes = num(Some(0))?.min(64 * 1024) as usize;
                Ok(Command::Probe {
                    count,
                    writers,
                    bytes,
                })
            }
            "handover" => {
                let usage = "usage: handover TUNNEL NODE_ID";
                match (words.next(), words.next().map(str::parse)) {
                    (Some(tunnel), Some(Ok(to))) => Ok(Command::Handover {
                        tunnel: tunnel.to_owned(),
                        to,
                    }),
                    _ => Err(usage.into()),
                }
            }
            "drain" => {
                let id = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or("usage: drain NODE_ID")?;
                Ok(Command::Drain(id))
            }
            "peer-config" => {
                let usage = "usage: peer-config TUNNEL swanctl|cisco-ios|generic";
                match (words.next(), words.next()) {
                    (Some(tunnel), Some(format)) => Ok(Command::PeerConfig {
                        tunnel: tunnel.to_owned(),
                        format: format.parse()?,
                    }),
                    _ => Err(usage.into()),
                }
            }
            "apply" => {
                let path = std::path::PathBuf::from(words.next().ok_or("usage: apply FILE")?);
                let text = std::fs::read(&path)
                    .map(Secret::new)
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let dir = path
                    .parent()
                    .unwrap_or(std::path::Path::new("/"))
                    .to_owned();
                Ok(Command::TunnelApply {
                    text,
                    psk: crate::config::PskFiles::Dir(dir),
                })
            }
            "remove-tunnel" => Ok(Command::TunnelRemove(
                words.next().ok_or("usage: remove-tunnel NAME")?.to_owned(),
            )),
            "member-remove" => {
                let id = words
                    .next()
                    .and_then(|w| w.parse().ok())
                    .ok_or("usage: member-remove ID")?;
                Ok(Command::MemberRemove(id))
            }
            other => Err(format!(
                "unknown command {other:?}; expected status, initiate, terminate, rekey-child, rekey-ike, member-add, member-remove, probe, handover, drain, peer-config, apply or remove-tunnel"
            )),
        }
    }
}

/// What the daemon's main loop receives: the command and where to send the reply.
pub type Request = (Command, oneshot::Sender<Result<String, String>>);

/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its line.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Listens on `path`, forwarding each parsed command to the main loop.
pub fn serve(path: &Path, requests: mpsc::Sender<Request>) -> anyhow::Result<()> {
    let listener = bind_private(path)?;
    // /proc/self belongs to the process's effective user (Linux).
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m));
    let me = me.unwrap_or(0);
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let slot = match slots.clone().acquire_owned().await {
                Ok(slot) => slot,
                Err(_) => return,
            };
            match listener.accept().await {
                Ok((stream, _)) => {
                    let uid = stream.peer_cred().map(|c| c.uid());
                    if !matches!(uid, Ok(u) if u == 0 || u == me) {
                        tracing::debug!(
                            ?uid,
                            "control socket caller refused: not root nor tandemd's user"
                        );
                        continue;
                    }
                    let requests = requests.clone();
                    tokio::spawn(async move {
                        answer(stream, requests).await;
                        drop(slot);
                    });
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            }
        }
    });
    Ok(())
}

/// Binds the socket where nobody else can reach it even for an instant: in
/// a fresh directory only this user may enter, made 0600 there, then moved
/// into place (a chmod after binding at `path` would leave a window).
fn bind_private(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let staging = dir.join(format!(".tandemd-bind-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .with_context(|| format!("cannot create {}", staging.display()))?;
    let bound = (|| -> anyhow::Result<UnixListener> {
        let inner = staging.join("sock");
        let listener = UnixListener::bind(&inner)
            .with_context(|| format!("cannot bind control socket {}", path.display()))?;
        std::fs::set_permissions(&inner, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot restrict {}", path.display()))?;
        // A stale socket from a crashed run is replaced.
        std::fs::rename(&inner, path)
            .with_context(|| format!("cannot move the control socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    bound
}

async fn answer(stream: UnixStream, requests: mpsc::Sender<Request>) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    // One short line: bound it so a stuck client cannot make us buffer forever.
    let mut reader = BufReader::new(read).take(4096);
    match tokio::time::timeout(READ_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => return,
    }
    let reply = match Command::parse(line.trim()) {
        Err(e) => Err(e),
        Ok(cmd) => {
            let (tx, rx) = oneshot::channel();
            if requests.send((cmd, tx)).await.is_err() {
                Err("daemon is shutting down".to_owned())
            } else {
                rx.await
                    .unwrap_or_else(|_| Err("daemon dropped the request".to_owned()))
            }
        }
    };
    let text = match reply {
        Ok(body) => format!("ok\n{body}\n"),
        Err(e) => format!("error\n{e}\n"),
    };
    let _ = write.write_all(text.as_bytes()).await;
}

/// Client side: sends `command` and returns the reply body, or the daemon's error.
pub async fn call(path: &PathBuf, command: &str) -> anyhow::Result<String> {
    let mut stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "cannot reach tandemd at {} (is it running? is --socket right?)",
            path.display()
        )
    })?;
    stream.write_all(format!("{command}\n").as_bytes()).await?;
    stream.shutdown().await?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).await?;
    match reply.split_once('\n') {
        Some(("ok", body)) => Ok(body.trim_end().to_owned()),
        Some(("error", body)) => anyhow::bail!("{}", body.trim_end()),
        _ => anyhow::bail!("malformed reply from tandemd: {reply:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_socket_is_private_from_the_start_and_a_silent_client_times_out() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("tandem-ctl-test-{}", std::process::id()));
        let path = dir.join("ctl.sock");
        let (tx, mut rx) = mpsc::channel::<Request>(1);
        serve(&path, tx).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no staging left"
        );
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(Ok("fine".into()));
            }
        });
        assert_eq!(call(&path, "status").await.unwrap(), "fine");
        // A client that connects and says nothing is dropped, not waited on.
        let mut silent = UnixStream::connect(&path).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(READ_TIMEOUT * 2, silent.read_to_end(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        // A stale socket (a crashed run's) is replaced.
        serve(&path, mpsc::channel(1).0).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn parses_commands() {
        assert_eq!(Command::parse("status"), Ok(Command::Status));
        assert_eq!(
            Command::parse("terminate site-a"),
            Ok(Command::Terminate("site-a".into()))
        );
        assert!(
            Command::parse("terminate")
                .unwrap_err()
                .contains("needs a connection")
        );
        assert!(
            Command::parse("reboot")
                .unwrap_err()
                .contains("unknown command")
        );
    }
}
