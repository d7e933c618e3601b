//! `vigil sync serve`: one thread per connection, every path confined to the root.

use std::fs::File;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::apply::{data_in_bounds, start_from_base};
use super::proto::{read_frame, write_data, write_msg, Frame, Msg, Secret, VERSION};
use crate::blocks::{block_range, changed_blocks, hash_file};
use crate::error::{Result, SyncError};
use crate::extents::{data_extents, intersect};
use crate::fsops::{Attrs, Root};
use crate::meta::{from_rustix, FileInfo};
use crate::paths::{split_parent, validate_rel};

/// What the server needs.
pub struct ServeConfig {
    pub root: std::path::PathBuf,
    pub tls: Arc<ServerConfig>,
    pub token: Option<Secret>,
    /// Client certificates signed by the configured CA are accepted.
    pub client_certs: bool,
}

/// A bound server.
pub struct Server {
    listener: TcpListener,
    cfg: Arc<ServeConfig>,
    stop: Arc<AtomicBool>,
}

/// Stops an in-process server when dropped.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type Tls = StreamOwned<ServerConnection, TcpStream>;

impl Server {
    pub fn bind(cfg: ServeConfig, listen: &str) -> Result<Server> {
        if cfg.token.is_none() && !cfg.client_certs {
            return Err(SyncError::Token {
                origin: "serve".into(),
                reason: "no token and no client CA configured: the server would accept anyone".into(),
            });
        }
        let root = Root::open(&cfg.root, false)?;
        cleanup_leftovers(&root);
        let listener = TcpListener::bind(listen).map_err(|e| SyncError::Connect {
            addr: listen.to_string(),
            source: e,
        })?;
        Ok(Server {
            listener,
            cfg: Arc::new(cfg),
            stop: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().expect("bound socket has an address")
    }

    /// Serves until the process ends.
    pub fn run(self) {
        for conn in self.listener.incoming() {
            if self.stop.load(Ordering::SeqCst) {
                return;
            }
            let Ok(tcp) = conn else { continue };
            let cfg = self.cfg.clone();
            std::thread::spawn(move || {
                let peer = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
                match serve_conn(tcp, &cfg, &peer) {
                    Ok(()) => tracing::debug!(%peer, "connection closed"),
                    Err(e) => tracing::warn!(%peer, error = %e, "connection ended with an error"),
                }
            });
        }
    }

    /// Serves on a background thread; stopped when the handle is dropped.
    pub fn spawn(self) -> ServerHandle {
        let addr = self.local_addr();
        let stop = self.stop.clone();
        let thread = std::thread::spawn(move || self.run());
        ServerHandle {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

fn cleanup_leftovers(root: &Root) {
    if let Ok(w) = crate::walk::walk(root.path(), 2) {
        for (dir, name) in &w.leftovers {
            crate::fsops::remove_leftover(root, dir, name);
        }
    }
}

fn serve_conn(tcp: TcpStream, cfg: &ServeConfig, peer: &str) -> Result<()> {
    let io = |e: std::io::Error| SyncError::proto(peer, e.to_string());
    tcp.set_nodelay(true).map_err(io)?;
    // an unauthenticated peer gets a few seconds; an authenticated one may idle longer
    tcp.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
    let conn = ServerConnection::new(Arc::clone(&cfg.tls)).map_err(|e| SyncError::Tls(e.to_string()))?;
    let mut s: Tls = StreamOwned::new(conn, tcp);
    let hello = match read_frame(&mut s).map_err(io)? {
        Some(Frame::Msg(Msg::Hello { version, token })) => (version, token),
        _ => return Err(SyncError::proto(peer, "expected Hello")),
    };
    let token_ok = match (&cfg.token, &hello.1) {
        (Some(want), Some(got)) => want.matches(got),
        _ => false,
    };
    let cert_ok = cfg.client_certs && s.conn.peer_certificates().is_some_and(|c| !c.is_empty());
    let refuse = |s: &mut Tls, reason: &str| {
        let _ = write_msg(
            s,
            &Msg::Refused {
                reason: reason.to_string(),
            },
        );
        let _ = std::io::Write::flush(s);
        s.conn.send_close_notify();
        let _ = std::io::Write::flush(s);
    };
    if hello.0 != VERSION {
        refuse(&mut s, "protocol version mismatch");
        return Err(SyncError::proto(peer, "protocol version mismatch"));
    }
    if !token_ok && !cert_ok {
        refuse(&mut s, "bad or missing token / client certificate");
        return Err(SyncError::AuthRefused {
            addr: peer.to_string(),
            reason: "bad or missing token / client certificate".into(),
        });
    }
    s.get_ref()
        .set_read_timeout(Some(Duration::from_secs(600)))
        .map_err(io)?;
    send(&mut s, &Msg::Welcome, peer)?;
    let root = Root::open(&cfg.root, false)?;
    loop {
        let m = match read_frame(&mut s).map_err(io)? {
            None => return Ok(()),
            Some(Frame::Msg(m)) => m,
            Some(Frame::Data { .. }) => return Err(SyncError::proto(peer, "data outside a transfer")),
        };
        let reply = match handle(&mut s, &root, m, peer) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            // a refused path or a failed file is that request's answer; the session goes on
            Err(e @ SyncError::Protocol { .. }) => return Err(e),
            Err(e) => {
                tracing::warn!(%peer, error = %e, "request failed");
                Msg::Error {
                    reason: e.to_string(),
                }
            }
        };
        send(&mut s, &reply, peer)?;
    }
}

fn send(s: &mut Tls, m: &Msg, peer: &str) -> Result<()> {
    write_msg(s, m)
        .and_then(|_| std::io::Write::flush(s))
        .map_err(|e| SyncError::proto(peer, e.to_string()))
}

fn stat_file(f: &File, root: &Root, rel: &str) -> Result<FileInfo> {
    rustix::fs::fstat(f)
        .map(|s| from_rustix(&s))
        .map_err(|e| SyncError::io("stat", root.join(rel), e.into()))
}

/// Handles one request; `Ok(None)` when the handler already answered.
fn handle(s: &mut Tls, root: &Root, m: Msg, peer: &str) -> Result<Option<Msg>> {
    match m {
        Msg::List { dir } => {
            if !dir.is_empty() {
                validate_rel(&dir)?;
            }
            let Some(_) = root.open_dir(&dir, false)? else {
                return Ok(Some(Msg::Listing { files: vec![] }));
            };
            let w = crate::walk::walk(&root.join(&dir), 2)?;
            Ok(Some(Msg::Listing {
                files: w.files.into_iter().collect(),
            }))
        }
        Msg::Hashes { rel } => {
            let Some(f) = root.open_file(&rel)? else {
                return Ok(Some(Msg::HashesAre {
                    info: None,
                    extents: vec![],
                    hashes: vec![],
                }));
            };
            let info = stat_file(&f, root, &rel)?;
            let io = |e| SyncError::io("read", root.join(&rel), e);
            let extents = data_extents(&f, info.stamp.size).map_err(io)?;
            let hashes = hash_file(&f, info.stamp.size, &extents).map_err(io)?;
            Ok(Some(Msg::HashesAre {
                info: Some(info),
                extents,
                hashes,
            }))
        }
        Msg::PushBegin {
            rel,
            expect,
            info,
            extents,
            base_known,
        } => push(s, root, peer, rel, expect, info, extents, base_known),
        Msg::Pull { rel, have, have_size } => pull(s, root, peer, rel, have, have_size),
        Msg::Rename { from, to, expect } => {
            if root.stat(&from)?.map(|i| i.stamp) != Some(expect) {
                return Ok(Some(Msg::Mismatch {
                    current: root.stat(&from)?,
                }));
            }
            root.rename(&from, &to)?;
            root.sync_dir(split_parent(&to).0)?;
            Ok(Some(Msg::Ok))
        }
        Msg::Delete { rel, expect } => {
            let cur = root.stat(&rel)?;
            if cur.is_some_and(|i| i.stamp != expect) {
                return Ok(Some(Msg::Mismatch { current: cur }));
            }
            root.remove(&rel)?;
            root.sync_dir(split_parent(&rel).0)?;
            Ok(Some(Msg::Ok))
        }
        other => Err(SyncError::proto(
            peer,
            format!("unexpected request {}", msg_name(&other)),
        )),
    }
}

fn msg_name(m: &Msg) -> String {
    let d = format!("{m:?}");
    d.split([' ', '{', '(']).next().unwrap_or("").to_string()
}

#[allow(clippy::too_many_arguments)]
fn push(
    s: &mut Tls,
    root: &Root,
    peer: &str,
    rel: String,
    expect: Option<crate::meta::Stamp>,
    info: FileInfo,
    extents: Vec<crate::extents::Extent>,
    base_known: bool,
) -> Result<Option<Msg>> {
    validate_rel(&rel)?;
    let current = root.stat(&rel)?;
    if current.map(|i| i.stamp) != expect {
        return Ok(Some(Msg::Mismatch { current }));
    }
    let base = root.open_file(&rel)?;
    let io = |e| SyncError::io("write", root.join(&rel), e);
    let base_hashes = match (&base, base_known) {
        (Some(f), false) => {
            let size = stat_file(f, root, &rel)?.stamp.size;
            let ex = data_extents(f, size).map_err(io)?;
            Some(hash_file(f, size, &ex).map_err(io)?)
        }
        _ => None,
    };
    let nf = root.create_temp(&rel)?;
    start_from_base(&nf.file, base.as_ref(), info.stamp.size, &extents).map_err(io)?;
    send(s, &Msg::PushReady { base: base_hashes }, peer)?;
    loop {
        match read_frame(s).map_err(|e| SyncError::proto(peer, e.to_string()))? {
            Some(Frame::Data { offset, bytes }) => {
                if !data_in_bounds(offset, bytes.len() as u64, &extents) {
                    return Err(SyncError::proto(peer, "data outside the file's extents"));
                }
                nf.file.write_all_at(&bytes, offset).map_err(io)?;
            }
            Some(Frame::Msg(Msg::PushEnd)) => break,
            Some(Frame::Msg(Msg::Abort { reason })) => {
                return Ok(Some(Msg::Error {
                    reason: format!("aborted by client: {reason}"),
                }));
            }
            _ => return Err(SyncError::proto(peer, "expected data or PushEnd")),
        }
    }
    // compare-and-swap: the target must still be what the client based its delta on
    if root.stat(&rel)?.map(|i| i.stamp) != expect {
        return Ok(Some(Msg::Mismatch {
            current: root.stat(&rel)?,
        }));
    }
    let done = nf.commit(&Attrs::from(&info))?;
    root.sync_dir(split_parent(&rel).0)?;
    Ok(Some(Msg::Done { info: done }))
}

fn pull(
    s: &mut Tls,
    root: &Root,
    peer: &str,
    rel: String,
    have: Vec<crate::blocks::BlockHash>,
    have_size: u64,
) -> Result<Option<Msg>> {
    let Some(f) = root.open_file(&rel)? else {
        return Ok(Some(Msg::Mismatch { current: None }));
    };
    let info = stat_file(&f, root, &rel)?;
    let io = |e| SyncError::io("read", root.join(&rel), e);
    let size = info.stamp.size;
    let extents = data_extents(&f, size).map_err(io)?;
    let hashes = hash_file(&f, size, &extents).map_err(io)?;
    let changed = changed_blocks(&hashes, &have, have_size);
    send(
        s,
        &Msg::PullHeader {
            info,
            extents: extents.clone(),
            hashes,
        },
        peer,
    )?;
    let mut buf = Vec::new();
    for idx in changed {
        for seg in intersect(&extents, block_range(idx, size)) {
            buf.resize(seg.len as usize, 0);
            f.read_exact_at(&mut buf, seg.offset).map_err(io)?;
            write_data(s, seg.offset, &buf).map_err(|e| SyncError::proto(peer, e.to_string()))?;
        }
    }
    let end = if stat_file(&f, root, &rel)?.stamp != info.stamp {
        Msg::Abort {
            reason: "source changed while sending".into(),
        }
    } else {
        Msg::PullEnd
    };
    send(s, &end, peer)?;
    Ok(None)
}

/// Loads TLS, token and root for `vigil sync serve`.
pub fn load_config(
    root: &Path,
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    token_file: Option<&Path>,
) -> Result<ServeConfig> {
    let token = super::tls::load_token(token_file)?;
    Ok(ServeConfig {
        root: root.to_path_buf(),
        tls: super::tls::server_config(cert, key, client_ca, token.is_some())?,
        token,
        client_certs: client_ca.is_some(),
    })
}
