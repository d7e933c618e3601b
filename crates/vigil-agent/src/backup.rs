//! Cloning a replica across hosts: the donor's agent streams a hot backup over its API, the
//! joiner's agent receives it.
//!
//! ```text
//!   joiner agent ── GET /backup, Authorization: Bearer <api token> ──► donor agent
//!                ◄── 200, chunked body: mariabackup --backup --stream=mbstream
//!   clone::extract_from(body) → clone::finish (prepare, move into the datadir) → GtidPos
//! ```
//!
//! A backup holds every row of the database, so `GET /backup` needs the token like a `POST`.
//! The donor serves one backup at a time. If its mariabackup fails, the body ends with an
//! error instead of its last chunk, so the joiner can never take a truncated stream for a
//! whole one; the joiner also gives up on a donor that sends nothing for [`IDLE_TIMEOUT`].

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, Request, StatusCode};
use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use http_body_util::{BodyDataStream, BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_util::io::{ReaderStream, StreamReader};
use tracing::{info, warn};
use vigil_core::replication::GtidPos;
use vigil_mariadb::process::Binaries;
use vigil_mariadb::{clone, NodeLayout};

/// How long the joiner waits for the donor to connect, answer, or send the next bytes.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a node needs to serve backups of itself.
pub struct BackupSource {
    pub node: String,
    pub bins: Binaries,
    pub layout: NodeLayout,
    /// Held while a backup streams: mariabackup's work directory is per node.
    busy: Arc<tokio::sync::Mutex<()>>,
}

impl BackupSource {
    pub fn new(node: &str, bins: Binaries, layout: NodeLayout) -> BackupSource {
        BackupSource {
            node: node.into(),
            bins,
            layout,
            busy: Arc::default(),
        }
    }

    /// Whether a backup of this node is streaming now.
    pub fn streaming(&self) -> bool {
        self.busy.try_lock().is_err()
    }

    /// Starts a backup and returns its stream as a response body, or `None` when another
    /// backup of this node is streaming.
    pub fn stream(self: &Arc<Self>) -> Option<Body> {
        let guard = self.busy.clone().try_lock_owned().ok()?;
        let (mut writer, reader) = tokio::io::duplex(1 << 20);
        let source = self.clone();
        let task = tokio::spawn(async move {
            let _guard = guard;
            info!(node = %source.node, "streaming a backup to a new replica");
            let sent = clone::backup_to(&source.bins, &source.layout, &mut writer).await;
            match &sent {
                Ok(bytes) => info!(node = %source.node, bytes, "backup streamed"),
                Err(e) => warn!(node = %source.node, "backup failed: {e}"),
            }
            sent
        });
        // A receiver that goes away takes the backup with it (mariabackup is killed when its
        // task is dropped), rather than leaving it to hold this node's one backup slot.
        let abort = AbortOnDrop(task.abort_handle());
        // After the last byte, the backup's own result: an error ends the body abnormally.
        let outcome = futures_util::stream::once(async move {
            match task.await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(Err(io::Error::other(e.to_string()))),
                Err(e) => Some(Err(io::Error::other(e.to_string()))),
            }
        })
        .filter_map(std::future::ready);
        Some(Body::from_stream(
            ReaderStream::with_capacity(reader, 256 * 1024)
                .chain(outcome)
                .map(move |chunk| {
                    let _held_while_the_body_lives = &abort;
                    chunk
                }),
        ))
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a clone over the network failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("cannot reach the agent of {donor} at {addr}: {message}")]
    Connect {
        donor: String,
        addr: String,
        message: String,
    },
    #[error("the agent of {donor} refused the backup ({status}): {message}")]
    Refused {
        donor: String,
        status: StatusCode,
        message: String,
    },
    #[error(transparent)]
    Node(#[from] vigil_mariadb::NodeError),
}

/// Clones `donor` (at `host:api_port`, running) into `target` (stopped, empty datadir) over
/// the donor agent's API. Returns the GTID position the clone holds. On any failure the
/// datadir stays empty and the partial copy is removed ([`clone::receive`]).
pub async fn fetch(
    bins: &Binaries,
    target: &NodeLayout,
    donor: &str,
    host: &str,
    api_port: u16,
    token: &str,
) -> Result<GtidPos, FetchError> {
    let addr = format!("{host}:{api_port}");
    let connect_error = |message: String| FetchError::Connect {
        donor: donor.into(),
        addr: addr.clone(),
        message,
    };
    let stream = tokio::time::timeout(IDLE_TIMEOUT, TcpStream::connect(&addr))
        .await
        .map_err(|_| connect_error("no answer".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| connect_error(e.to_string()))?;
    // The connection does the I/O; it ends when the response has been read or dropped.
    tokio::spawn(connection);
    let request = Request::get("/backup")
        .header(header::HOST, &addr)
        .header(header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Empty::<Bytes>::new())
        .expect("a valid request");
    let response = tokio::time::timeout(IDLE_TIMEOUT, sender.send_request(request))
        .await
        .map_err(|_| connect_error("no answer".into()))?
        .map_err(|e| connect_error(e.to_string()))?;
    let status = response.status();
    if !status.is_success() {
        let body = tokio::time::timeout(IDLE_TIMEOUT, response.into_body().collect()).await;
        let message = match body {
            Ok(Ok(b)) => String::from_utf8_lossy(&b.to_bytes()).trim().to_string(),
            _ => String::new(),
        };
        return Err(FetchError::Refused {
            donor: donor.into(),
            status,
            message,
        });
    }
    let chunks = BodyDataStream::new(response.into_body()).map_err(io::Error::other);
    let mut reader = StreamReader::new(Box::pin(idle_limited(chunks)));
    Ok(clone::receive(bins, target, &mut reader).await?)
}

/// Ends `chunks` with an error when the next chunk takes longer than [`IDLE_TIMEOUT`].
fn idle_limited<S>(chunks: S) -> impl futures_util::Stream<Item = io::Result<Bytes>>
where
    S: futures_util::Stream<Item = io::Result<Bytes>> + Unpin,
{
    futures_util::stream::unfold(Some(chunks), |chunks| async move {
        let mut chunks = chunks?;
        match tokio::time::timeout(IDLE_TIMEOUT, chunks.next()).await {
            Ok(Some(item)) => Some((item, Some(chunks))),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("the donor sent nothing for {} s", IDLE_TIMEOUT.as_secs()),
                )),
                None,
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::routing::get;
    use vigil_core::config::MariadbSection;
    use vigil_store::memory::MemoryStore;

    use super::*;
    use crate::api::{self, ApiState};
    use crate::NodeStatus;

    const TOKEN: &str = "the-token";

    async fn serve(router: axum::Router) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, router).await });
        port
    }

    fn api_state(backup: Option<Arc<BackupSource>>) -> ApiState {
        ApiState {
            status: Arc::new(Mutex::new(NodeStatus::starting("n1", "127.0.0.1", 1, 2))),
            store: Arc::new(MemoryStore::new()),
            cluster: "c".into(),
            node: "n1".into(),
            token: TOKEN.into(),
            backup,
            failsafe: None,
        }
    }

    fn joiner() -> (tempfile::TempDir, NodeLayout, Binaries) {
        let dir = tempfile::tempdir().unwrap();
        let layout = NodeLayout::new(dir.path().join("n2"));
        std::fs::create_dir_all(layout.datadir()).unwrap();
        let bins = Binaries::discover(&MariadbSection::default()).expect("MariaDB is installed");
        (dir, layout, bins)
    }

    #[tokio::test]
    async fn a_backup_needs_the_token_and_a_replication_node() {
        let (_dir, target, bins) = joiner();
        let donor = NodeLayout::new(target.dir.join("never-used"));
        let source = Arc::new(BackupSource::new("n1", bins.clone(), donor));
        let port = serve(api::router(api_state(Some(source)))).await;
        let err = fetch(&bins, &target, "n1", "127.0.0.1", port, "wrong")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FetchError::Refused { status, .. } if *status == StatusCode::UNAUTHORIZED),
            "{err}"
        );
        assert!(err.to_string().contains("API token"), "{err}");

        let port = serve(api::router(api_state(None))).await;
        let err = fetch(&bins, &target, "n1", "127.0.0.1", port, TOKEN)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, FetchError::Refused { status, .. } if *status == StatusCode::NOT_FOUND),
            "{err}"
        );
        assert!(target.datadir_is_empty().unwrap());
    }

    #[tokio::test]
    async fn a_stream_cut_short_leaves_the_datadir_empty() {
        let (_dir, target, bins) = joiner();
        // A donor whose mariabackup fails after it started: a well-formed mbstream (one
        // file), then an error where the last chunk should be. Taken for a whole stream, it
        // would extract cleanly.
        let file = target.dir.join("one-file");
        std::fs::write(&file, b"a row\n").unwrap();
        let packed = std::process::Command::new(&bins.mbstream)
            .arg("-c")
            .arg("one-file")
            .current_dir(&target.dir)
            .output()
            .unwrap();
        assert!(packed.status.success() && !packed.stdout.is_empty(), "{packed:?}");
        let packed = Bytes::from(packed.stdout);
        // The error comes once the joiner has extracted the file, as from a real donor.
        let extracted = clone::incoming_dir(&target).join("one-file");
        let router = axum::Router::new().route(
            "/backup",
            get(move || async move {
                let failure = async move {
                    while !extracted.exists() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    Err(io::Error::other("mariabackup failed"))
                };
                let chunks = futures_util::stream::once(async { Ok(packed) })
                    .chain(futures_util::stream::once(failure));
                Body::from_stream(chunks)
            }),
        );
        let port = serve(router).await;
        let err = fetch(&bins, &target, "n1", "127.0.0.1", port, TOKEN)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("backup stream into"), "{err}");
        assert!(target.datadir_is_empty().unwrap());
        assert!(!clone::incoming_dir(&target).exists());
    }

    #[tokio::test]
    async fn a_donor_that_is_not_there_is_named() {
        let (_dir, target, bins) = joiner();
        let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = unused.local_addr().unwrap().port();
        drop(unused);
        let err = fetch(&bins, &target, "n1", "127.0.0.1", port, TOKEN)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("cannot reach the agent of n1 at 127.0.0.1:"),
            "{err}"
        );
    }
}
