//! The client side: one TLS connection for the whole tree, and the movers that push to or
//! pull from a server.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};

use super::apply::{data_in_bounds, start_from_base};
use super::proto::{read_frame, write_data, write_msg, Frame, Msg, Secret, VERSION};
use crate::blocks::{block_range, changed_blocks, hash_file, BlockHash};
use crate::endpoint::RemoteSpec;
use crate::engine::{Moved, Mover};
use crate::error::{Result, SyncError};
use crate::extents::{data_extents, intersect, Extent};
use crate::fsops::{Attrs, Root};
use crate::meta::{from_rustix, FileInfo, Stamp};
use crate::paths::validate_rel;
use crate::progress::Progress;
use crate::record::Entry;
use crate::walk::Tree;

/// Credentials and trust for connecting to a server.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// CA certificate that signed the server's certificate.
    pub ca: Option<PathBuf>,
    /// Client certificate and key, for servers that accept them.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub token: Option<Secret>,
}

/// A TCP stream that counts bytes both ways: what "bytes on the wire" reports.
pub struct Counted {
    inner: TcpStream,
    bytes: Arc<AtomicU64>,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

type Tls = StreamOwned<ClientConnection, Counted>;

/// An authenticated session with a server, rooted at the spec's path.
pub struct Client {
    conn: Mutex<Tls>,
    prefix: String,
    peer: String,
    bytes: Arc<AtomicU64>,
}

impl Client {
    pub fn connect(spec: &RemoteSpec, opts: &ClientOptions) -> Result<Client> {
        let peer = spec.addr();
        let ca = opts
            .ca
            .as_deref()
            .ok_or_else(|| SyncError::Tls(format!("no --ca given to verify the server {peer}")))?;
        let cert_key = match (&opts.cert, &opts.key) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err(SyncError::Tls("--cert and --key go together".into())),
        };
        if opts.token.is_none() && cert_key.is_none() {
            return Err(SyncError::Token {
                origin: "client".into(),
                reason: "neither --token-file, $VIGIL_SYNC_TOKEN nor --cert/--key given".into(),
            });
        }
        let cfg = super::tls::client_config(ca, cert_key)?;
        let tcp = TcpStream::connect(&peer).map_err(|e| SyncError::Connect {
            addr: peer.clone(),
            source: e,
        })?;
        let io = |e: std::io::Error| SyncError::Connect {
            addr: peer.clone(),
            source: e,
        };
        tcp.set_nodelay(true).map_err(io)?;
        tcp.set_read_timeout(Some(Duration::from_secs(600))).map_err(io)?;
        let name = ServerName::try_from(spec.host.clone())
            .map_err(|e| SyncError::Tls(format!("bad server name {}: {e}", spec.host)))?;
        let conn = ClientConnection::new(cfg, name).map_err(|e| SyncError::Tls(e.to_string()))?;
        let bytes = Arc::new(AtomicU64::new(0));
        let mut s = StreamOwned::new(
            conn,
            Counted {
                inner: tcp,
                bytes: bytes.clone(),
            },
        );
        let hello = Msg::Hello {
            version: VERSION,
            token: opts.token.clone(),
        };
        if let Err(e) = write_msg(&mut s, &hello).and_then(|_| s.flush()) {
            return Err(handshake_error(&peer, e));
        }
        match read_frame(&mut s) {
            Ok(Some(Frame::Msg(Msg::Welcome))) => {}
            Ok(Some(Frame::Msg(Msg::Refused { reason }))) => {
                return Err(SyncError::AuthRefused { addr: peer, reason })
            }
            Ok(None) => {
                return Err(SyncError::AuthRefused {
                    addr: peer,
                    reason: "connection closed during authentication".into(),
                })
            }
            Ok(_) => return Err(SyncError::proto(&peer, "expected Welcome")),
            Err(e) => return Err(handshake_error(&peer, e)),
        }
        Ok(Client {
            conn: Mutex::new(s),
            prefix: spec.path.clone(),
            peer,
            bytes,
        })
    }

    pub fn peer(&self) -> &str {
        &self.peer
    }

    pub fn wire_bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }

    fn full(&self, rel: &str) -> String {
        if self.prefix.is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tls> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, s: &mut Tls, m: &Msg) -> Result<()> {
        write_msg(s, m)
            .and_then(|_| s.flush())
            .map_err(|e| SyncError::proto(&self.peer, e.to_string()))
    }

    fn recv(&self, s: &mut Tls) -> Result<Frame> {
        match read_frame(s) {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err(SyncError::proto(&self.peer, "connection closed")),
            Err(e) => Err(SyncError::proto(&self.peer, e.to_string())),
        }
    }

    fn recv_msg(&self, s: &mut Tls) -> Result<Msg> {
        match self.recv(s)? {
            Frame::Msg(Msg::Error { reason }) => Err(SyncError::Remote {
                peer: self.peer.clone(),
                reason,
            }),
            Frame::Msg(m) => Ok(m),
            Frame::Data { .. } => Err(SyncError::proto(&self.peer, "unexpected data")),
        }
    }

    fn request(&self, m: &Msg) -> Result<Msg> {
        let mut s = self.lock();
        self.send(&mut s, m)?;
        self.recv_msg(&mut s)
    }

    /// Sends one raw request and returns the answer: for tools and tests that exercise the
    /// server's checks directly.
    pub fn raw_request(&self, m: &Msg) -> Result<Msg> {
        self.request(m)
    }

    /// All files under the spec's path. Every path the server sends is validated.
    pub fn list(&self) -> Result<Tree> {
        match self.request(&Msg::List {
            dir: self.prefix.clone(),
        })? {
            Msg::Listing { files } => {
                let mut t = Tree::new();
                for (rel, info) in files {
                    validate_rel(&rel)?;
                    t.insert(rel, info);
                }
                Ok(t)
            }
            _ => Err(SyncError::proto(&self.peer, "expected Listing")),
        }
    }

    /// Stamp, extents and block hashes of a remote file (`None` if absent).
    pub fn hashes(&self, rel: &str) -> Result<Option<(FileInfo, Vec<BlockHash>)>> {
        match self.request(&Msg::Hashes { rel: self.full(rel) })? {
            Msg::HashesAre { info, hashes, .. } => Ok(info.map(|i| (i, hashes))),
            _ => Err(SyncError::proto(&self.peer, "expected HashesAre")),
        }
    }
}

fn handshake_error(peer: &str, e: std::io::Error) -> SyncError {
    // rustls reports certificate problems as InvalidData
    if e.kind() == std::io::ErrorKind::InvalidData {
        SyncError::Tls(format!("handshake with {peer} failed: {e}"))
    } else {
        SyncError::AuthRefused {
            addr: peer.to_string(),
            reason: e.to_string(),
        }
    }
}

fn changed(path: &str, side: &'static str) -> SyncError {
    SyncError::Changed {
        path: path.to_string(),
        side,
    }
}

/// Local tree to server.
pub struct PushMover {
    src: Root,
    client: Client,
    jobs: usize,
}

impl PushMover {
    pub fn new(src: Root, client: Client, jobs: usize) -> PushMover {
        PushMover { src, client, jobs }
    }
}

impl Mover for PushMover {
    fn jobs(&self) -> usize {
        // one connection: extra workers hash the next files while one transfers
        self.jobs.min(4)
    }

    fn copy(
        &self,
        rel: &str,
        target: &str,
        expect: Option<Stamp>,
        known: Option<&Entry>,
        progress: &Progress,
    ) -> Result<Moved> {
        let f = self.src.open_file(rel)?.ok_or_else(|| changed(rel, "source"))?;
        let fstat = |f: &std::fs::File| {
            rustix::fs::fstat(f)
                .map(|s| from_rustix(&s))
                .map_err(|e| SyncError::io("stat", self.src.join(rel), e.into()))
        };
        let io = |e| SyncError::io("read", self.src.join(rel), e);
        let before = fstat(&f)?;
        let size = before.stamp.size;
        let extents = data_extents(&f, size).map_err(io)?;
        let hashes = hash_file(&f, size, &extents).map_err(io)?;
        let known = known.filter(|k| !k.hashes.is_empty() && Some(k.dst) == expect);
        let c = &self.client;
        let mut s = c.lock();
        c.send(
            &mut s,
            &Msg::PushBegin {
                rel: c.full(target),
                expect,
                info: before,
                extents: extents.clone(),
                base_known: known.is_some(),
            },
        )?;
        let base = match c.recv_msg(&mut s)? {
            Msg::PushReady { base } => base,
            Msg::Mismatch { .. } => return Err(changed(target, "target")),
            _ => return Err(SyncError::proto(&c.peer, "expected PushReady")),
        };
        let (old, old_size): (&[BlockHash], u64) = match (known, &base) {
            (Some(k), _) => (&k.hashes, k.dst.size),
            (None, Some(b)) => (b, expect.map_or(0, |e| e.size)),
            (None, None) => (&[], 0),
        };
        let mut sent = 0u64;
        let mut buf = Vec::new();
        for idx in changed_blocks(&hashes, old, old_size) {
            for seg in intersect(&extents, block_range(idx, size)) {
                buf.resize(seg.len as usize, 0);
                f.read_exact_at(&mut buf, seg.offset).map_err(io)?;
                write_data(&mut *s, seg.offset, &buf)
                    .map_err(|e| SyncError::proto(&c.peer, e.to_string()))?;
                sent += seg.len;
                progress.add(seg.len);
            }
        }
        if fstat(&f)?.stamp != before.stamp {
            c.send(
                &mut s,
                &Msg::Abort {
                    reason: "source changed".into(),
                },
            )?;
            let _ = c.recv_msg(&mut s);
            return Err(changed(rel, "source"));
        }
        c.send(&mut s, &Msg::PushEnd)?;
        match c.recv_msg(&mut s)? {
            Msg::Done { info } => Ok(Moved {
                staged: false,
                src: before.stamp,
                dst: info.stamp,
                hashes,
                data: sent,
            }),
            Msg::Mismatch { .. } => Err(changed(target, "target")),
            _ => Err(SyncError::proto(&c.peer, "expected Done")),
        }
    }

    fn rename_aside(&self, rel: &str, aside: &str, expect: Stamp) -> Result<()> {
        let c = &self.client;
        match c.request(&Msg::Rename {
            from: c.full(rel),
            to: c.full(aside),
            expect,
        })? {
            Msg::Ok => Ok(()),
            _ => Err(changed(rel, "target")),
        }
    }

    fn delete(&self, rel: &str, expect: Stamp) -> Result<()> {
        let c = &self.client;
        match c.request(&Msg::Delete {
            rel: c.full(rel),
            expect,
        })? {
            Msg::Ok => Ok(()),
            _ => Err(changed(rel, "target")),
        }
    }

    fn finish(&self, _dirs: &BTreeSet<String>) -> Result<()> {
        Ok(()) // the server fsyncs each directory it renames into
    }

    fn wire_bytes(&self) -> u64 {
        self.client.wire_bytes()
    }

    fn list_target(&self) -> Result<Tree> {
        self.client.list()
    }
}

/// Server to local tree.
pub struct PullMover {
    dst: Root,
    client: Client,
    jobs: usize,
}

impl PullMover {
    pub fn new(dst: Root, client: Client, jobs: usize) -> PullMover {
        PullMover { dst, client, jobs }
    }
}

impl Mover for PullMover {
    fn jobs(&self) -> usize {
        self.jobs.min(4)
    }

    fn copy(
        &self,
        rel: &str,
        target: &str,
        expect: Option<Stamp>,
        known: Option<&Entry>,
        progress: &Progress,
    ) -> Result<Moved> {
        let base = self.dst.open_file(target)?;
        let io = |e| SyncError::io("write", self.dst.join(target), e);
        let base_info = match &base {
            Some(f) => Some(
                rustix::fs::fstat(f)
                    .map(|s| from_rustix(&s))
                    .map_err(|e| io(e.into()))?,
            ),
            None => None,
        };
        if base_info.map(|i| i.stamp) != expect {
            return Err(changed(target, "target"));
        }
        let (have, have_size) = match (&base, base_info) {
            (Some(f), Some(i)) => match known.filter(|k| k.dst == i.stamp && !k.hashes.is_empty()) {
                Some(k) => (k.hashes.clone(), i.stamp.size),
                None => {
                    let ex = data_extents(f, i.stamp.size).map_err(io)?;
                    (hash_file(f, i.stamp.size, &ex).map_err(io)?, i.stamp.size)
                }
            },
            _ => (vec![], 0),
        };
        let c = &self.client;
        let mut s = c.lock();
        c.send(
            &mut s,
            &Msg::Pull {
                rel: c.full(rel),
                have,
                have_size,
            },
        )?;
        let (info, extents, hashes): (FileInfo, Vec<Extent>, Vec<BlockHash>) = match c.recv_msg(&mut s)? {
            Msg::PullHeader {
                info,
                extents,
                hashes,
            } => (info, extents, hashes),
            Msg::Mismatch { .. } => return Err(changed(rel, "source")),
            _ => return Err(SyncError::proto(&c.peer, "expected PullHeader")),
        };
        let nf = self.dst.create_temp(target)?;
        start_from_base(&nf.file, base.as_ref(), info.stamp.size, &extents).map_err(io)?;
        let mut got = 0u64;
        loop {
            match c.recv(&mut s)? {
                Frame::Data { offset, bytes } => {
                    if !data_in_bounds(offset, bytes.len() as u64, &extents) {
                        return Err(SyncError::proto(&c.peer, "data outside the file's extents"));
                    }
                    nf.file.write_all_at(&bytes, offset).map_err(io)?;
                    got += bytes.len() as u64;
                    progress.add(bytes.len() as u64);
                }
                Frame::Msg(Msg::PullEnd) => break,
                Frame::Msg(Msg::Abort { .. }) => return Err(changed(rel, "source")),
                Frame::Msg(_) => return Err(SyncError::proto(&c.peer, "expected data or PullEnd")),
            }
        }
        drop(s);
        if self.dst.stat(target)?.map(|i| i.stamp) != expect {
            return Err(changed(target, "target"));
        }
        let done = nf.commit(&Attrs::from(&info))?;
        Ok(Moved {
            staged: false,
            src: info.stamp,
            dst: done.stamp,
            hashes,
            data: got,
        })
    }

    fn rename_aside(&self, rel: &str, aside: &str, expect: Stamp) -> Result<()> {
        if self.dst.stat(rel)?.map(|i| i.stamp) != Some(expect) {
            return Err(changed(rel, "target"));
        }
        self.dst.rename(rel, aside)
    }

    fn delete(&self, rel: &str, expect: Stamp) -> Result<()> {
        match self.dst.stat(rel)? {
            Some(i) if i.stamp != expect => Err(changed(rel, "target")),
            Some(_) => self.dst.remove(rel),
            None => Ok(()),
        }
    }

    fn finish(&self, dirs: &BTreeSet<String>) -> Result<()> {
        for d in dirs {
            self.dst.sync_dir(d)?;
        }
        Ok(())
    }

    fn wire_bytes(&self) -> u64 {
        self.client.wire_bytes()
    }
}
