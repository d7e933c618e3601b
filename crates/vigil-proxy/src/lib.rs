//! vigil's layer-4 proxy: a write port that reaches only the current writer, and a read port
//! balanced by least connections over healthy readers (falling back to the writer).
//!
//! The routing table arrives pushed on a `watch` channel (from the coordination store); the
//! proxy decides nothing about health itself. What it does on its own: it connects to the
//! backend as soon as a client is accepted (MySQL's server speaks first), blacklists a backend
//! that refuses or times out (with backoff) and retries the next eligible one, closes every
//! write-port connection to a writer that is no longer the writer (at once when it failed,
//! after a drain period when it handed the role on and is still healthy), and refuses new
//! write connections when the routing table is older than `max_staleness` (fail closed; reads
//! go on).
//!
//! Data path: TCP_NODELAY on both sides, [`pipe::copy_both`] with fixed per-connection
//! buffers (16 KiB towards the server, 32 KiB towards the client, where result sets flow; no
//! allocation per packet) and one read per message, half-close passed through.
#![forbid(unsafe_code)]

pub mod pipe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};
use vigil_core::routing::{self, Backend, Blacklist, Port, RoutingTable};

#[derive(Debug, Clone)]
pub struct ProxyConfig {
    pub write_listen: SocketAddr,
    pub read_listen: SocketAddr,
    pub connect_timeout: Duration,
    /// Routing older than this (no update from the store) closes the write port.
    pub max_staleness: Duration,
    pub blacklist_base: Duration,
    pub blacklist_max: Duration,
    /// How long a write connection may go on after its backend handed the writer role to
    /// another node while staying healthy (a planned move). Zero: close at once.
    pub drain: Duration,
}

/// A routing table, when the store last confirmed it, and, while the store cannot be read,
/// when the writer itself last confirmed that it still takes the cluster's writes.
#[derive(Debug, Clone)]
pub struct Routes {
    pub table: RoutingTable,
    pub at: Instant,
    pub by_writer: Option<Instant>,
}

impl Routes {
    /// Routes just read from the store.
    pub fn from_store(table: RoutingTable) -> Routes {
        Routes {
            table,
            at: Instant::now(),
            by_writer: None,
        }
    }

    /// Confirmed neither by the store nor by the writer within `max`: the write port is closed.
    pub fn is_stale(&self, max: Duration) -> bool {
        self.at.elapsed() > max && self.by_writer.is_none_or(|w| w.elapsed() > max)
    }
}

/// Counters of one backend, as shown in `/status`.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BackendMetrics {
    pub name: String,
    pub active: u64,
    pub connections: u64,
    pub bytes_to_backend: u64,
    pub bytes_to_client: u64,
    pub connect_errors: u64,
}

/// The proxy's `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct ProxyStatus {
    pub write_port: u16,
    pub read_port: u16,
    pub writer: Option<String>,
    pub readers: Vec<String>,
    /// Time since the store last confirmed the routing table.
    pub routes_age_ms: u64,
    /// False while the routing table is stale: the write port refuses new connections.
    pub writes_accepted: bool,
    /// The store could not be read, and the writer itself confirmed lately that it still takes
    /// the writes.
    pub confirmed_by_writer: bool,
    /// Backends that refused or timed out lately and are kept out for a while.
    pub blacklisted: Vec<String>,
    /// Bytes are added when a connection ends.
    pub backends: Vec<BackendMetrics>,
}

#[derive(Default)]
struct Counters {
    active: AtomicU64,
    connections: AtomicU64,
    bytes_to_backend: AtomicU64,
    bytes_to_client: AtomicU64,
    connect_errors: AtomicU64,
}

struct Inner {
    config: ProxyConfig,
    routes: watch::Receiver<Routes>,
    blacklist: Mutex<Blacklist>,
    counters: Mutex<HashMap<String, Arc<Counters>>>,
    epoch: Instant,
    /// Rotates the starting reader so that ties in least-connections are shared round-robin.
    turn: AtomicU64,
    /// Backends known by name (nodes found in DNS): their addresses as last resolved, and when.
    resolved: Mutex<HashMap<String, (Vec<SocketAddr>, Duration)>>,
}

/// How long a backend's resolved addresses are used before they are looked up again. A failed
/// connect forgets them at once, so a node that came back at another address is found.
const RESOLVE_TTL: Duration = Duration::from_secs(10);

/// Buffer per connection for client → server (queries).
const UP_BUF: usize = 16 << 10;
/// Buffer per connection for server → client (result sets).
const DOWN_BUF: usize = 32 << 10;

/// A bound proxy; [`Proxy::run`] serves it.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    write: Arc<TcpListener>,
    read: Arc<TcpListener>,
}

impl Proxy {
    /// Binds both ports (port 0 picks a free one; see [`Proxy::ports`]).
    pub async fn bind(config: ProxyConfig, routes: watch::Receiver<Routes>) -> std::io::Result<Proxy> {
        let write = Arc::new(TcpListener::bind(config.write_listen).await?);
        let read = Arc::new(TcpListener::bind(config.read_listen).await?);
        let blacklist = Mutex::new(Blacklist::new(config.blacklist_base, config.blacklist_max));
        let inner = Inner {
            config,
            routes,
            blacklist,
            counters: Mutex::default(),
            resolved: Mutex::default(),
            epoch: Instant::now(),
            turn: AtomicU64::new(0),
        };
        Ok(Proxy {
            inner: Arc::new(inner),
            write,
            read,
        })
    }

    /// The bound (write, read) ports.
    pub fn ports(&self) -> (u16, u16) {
        let port = |l: &TcpListener| l.local_addr().map_or(0, |a| a.port());
        (port(&self.write), port(&self.read))
    }

    /// Serves both ports until the task is dropped or aborted.
    pub async fn run(self) {
        let w = tokio::spawn(accept_loop(self.inner.clone(), self.write.clone(), Port::Write));
        let r = tokio::spawn(accept_loop(self.inner.clone(), self.read.clone(), Port::Read));
        let _ = tokio::join!(w, r);
    }

    /// What the proxy routes to now and what it has carried, for `/status`.
    pub fn status(&self) -> ProxyStatus {
        let (write_port, read_port) = self.ports();
        let routes = self.inner.routes.borrow().clone();
        let writes_accepted = !routes.is_stale(self.inner.config.max_staleness);
        ProxyStatus {
            write_port,
            read_port,
            writer: routes.table.writer.map(|w| w.name),
            readers: routes.table.readers.into_iter().map(|r| r.name).collect(),
            routes_age_ms: routes.at.elapsed().as_millis() as u64,
            writes_accepted,
            confirmed_by_writer: routes
                .by_writer
                .is_some_and(|w| w.elapsed() <= self.inner.config.max_staleness),
            blacklisted: self
                .inner
                .blacklist
                .lock()
                .expect("blacklist")
                .kept_out(self.inner.now()),
            backends: self.metrics(),
        }
    }

    /// Per-backend counters, in name order.
    pub fn metrics(&self) -> Vec<BackendMetrics> {
        let counters = self.inner.counters.lock().expect("counters");
        let mut out: Vec<BackendMetrics> = counters
            .iter()
            .map(|(name, c)| BackendMetrics {
                name: name.clone(),
                active: c.active.load(Ordering::Relaxed),
                connections: c.connections.load(Ordering::Relaxed),
                bytes_to_backend: c.bytes_to_backend.load(Ordering::Relaxed),
                bytes_to_client: c.bytes_to_client.load(Ordering::Relaxed),
                connect_errors: c.connect_errors.load(Ordering::Relaxed),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

async fn accept_loop(inner: Arc<Inner>, listener: Arc<TcpListener>, port: Port) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                tokio::spawn(handle(inner.clone(), client, port));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off a little, keep serving.
                warn!("accept on the {port:?} port: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

impl Inner {
    fn counters(&self, backend: &str) -> Arc<Counters> {
        self.counters
            .lock()
            .expect("counters")
            .entry(backend.to_string())
            .or_default()
            .clone()
    }

    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// Where `addr` (`host:port`) is: at once for an IP address; for a name, what the system's
    /// resolver said within [`RESOLVE_TTL`], or a new lookup. Looking a name up for every
    /// client connection would add a DNS round trip to each (several, with search domains).
    async fn resolve(&self, addr: &str) -> std::io::Result<Vec<SocketAddr>> {
        if let Ok(a) = addr.parse::<SocketAddr>() {
            return Ok(vec![a]);
        }
        let now = self.now();
        if let Some((addrs, at)) = self.resolved.lock().expect("resolved").get(addr) {
            if now.saturating_sub(*at) < RESOLVE_TTL {
                return Ok(addrs.clone());
            }
        }
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
        self.resolved
            .lock()
            .expect("resolved")
            .insert(addr.to_string(), (addrs.clone(), now));
        Ok(addrs)
    }

    fn forget(&self, addr: &str) {
        self.resolved.lock().expect("resolved").remove(addr);
    }

    /// The backends to try for a new connection, best first (see [`routing::candidates`]).
    fn candidates(&self, port: Port) -> Vec<Backend> {
        let routes = self.routes.borrow().clone();
        let stale = routes.is_stale(self.config.max_staleness);
        let turn = self.turn.fetch_add(1, Ordering::Relaxed) as usize;
        routing::candidates(
            &routes.table,
            port,
            stale,
            |name| self.counters(name).active.load(Ordering::Relaxed),
            turn,
        )
    }
}

async fn handle(inner: Arc<Inner>, client: TcpStream, port: Port) {
    let _ = client.set_nodelay(true);
    // Backends that failed lately go last, not out: the writer is the only place a write can
    // go, and a backend the routes still name may be back before its blacklist period ends.
    let (mut tried, mut kept_out): (Vec<Backend>, Vec<Backend>) = {
        let blacklist = inner.blacklist.lock().expect("blacklist");
        let now = inner.now();
        inner
            .candidates(port)
            .into_iter()
            .partition(|b| blacklist.eligible(&b.name, now))
    };
    tried.append(&mut kept_out);
    for backend in tried {
        let connect = async {
            let addrs = inner.resolve(&backend.addr).await?;
            connect_greeted(&addrs).await
        };
        match tokio::time::timeout(inner.config.connect_timeout, connect).await {
            Ok(Ok(server)) => {
                inner
                    .blacklist
                    .lock()
                    .expect("blacklist")
                    .succeeded(&backend.name);
                serve(&inner, &client, server, &backend, port).await;
                return;
            }
            Ok(Err(_)) | Err(_) => {
                inner.forget(&backend.addr);
                inner
                    .counters(&backend.name)
                    .connect_errors
                    .fetch_add(1, Ordering::Relaxed);
                let until = inner
                    .blacklist
                    .lock()
                    .expect("blacklist")
                    .failed(&backend.name, inner.now());
                debug!(
                    "{} failed to connect; blacklisted for {:?}",
                    backend.name,
                    until.saturating_sub(inner.now())
                );
            }
        }
    }
    // No eligible backend: closing the connection is the client's answer.
}

/// Connects and waits for the server's first bytes (MySQL's server speaks first), without
/// consuming them. A backend that accepts but closes before greeting (a dying server) counts
/// as a failed connect, so the client, who has seen nothing yet, can be sent elsewhere.
async fn connect_greeted(addrs: &[SocketAddr]) -> std::io::Result<TcpStream> {
    let server = TcpStream::connect(addrs).await?;
    let mut first = [0u8; 1];
    match server.peek(&mut first).await? {
        0 => Err(std::io::Error::new(
            std::io::ErrorKind::ConnectionAborted,
            "closed before greeting",
        )),
        _ => Ok(server),
    }
}

async fn serve(inner: &Inner, client: &TcpStream, server: TcpStream, backend: &Backend, port: Port) {
    let _ = server.set_nodelay(true);
    let counters = inner.counters(&backend.name);
    counters.active.fetch_add(1, Ordering::Relaxed);
    counters.connections.fetch_add(1, Ordering::Relaxed);
    let mut routes = inner.routes.clone();
    let copy = pipe::copy_both(client, &server, UP_BUF, DOWN_BUF);
    tokio::pin!(copy);
    // Set while the connection drains: its backend stopped being the writer but is healthy.
    let mut drain_until: Option<Instant> = None;
    loop {
        tokio::select! {
            result = &mut copy => {
                if let Ok((up, down)) = result {
                    counters.bytes_to_backend.fetch_add(up, Ordering::Relaxed);
                    counters.bytes_to_client.fetch_add(down, Ordering::Relaxed);
                }
                break;
            }
            changed = routes.changed(), if port == Port::Write => {
                if changed.is_err() {
                    break;
                }
                match routing::write_connection_fate(&routes.borrow().table, &backend.name) {
                    routing::Fate::Keep => drain_until = None,
                    routing::Fate::Drain if inner.config.drain > Duration::ZERO => {
                        if drain_until.is_none() {
                            debug!("{} handed the writer role on: draining a write connection", backend.name);
                            drain_until = Some(Instant::now() + inner.config.drain);
                        }
                    }
                    routing::Fate::Drain | routing::Fate::Close => {
                        debug!("{} is no longer the writer: closing a write connection", backend.name);
                        break;
                    }
                }
            }
            _ = tokio::time::sleep_until(drain_until.unwrap_or_else(Instant::now)), if drain_until.is_some() => {
                debug!("{}: drain period over, closing a write connection", backend.name);
                break;
            }
        }
    }
    counters.active.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that greets every connection with its name, then echoes.
    async fn backend(name: &'static str) -> (Backend, tokio::task::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let task = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    s.write_all(name.as_bytes()).await.unwrap();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (
            Backend {
                name: name.into(),
                addr,
            },
            task,
        )
    }

    async fn proxy(table: RoutingTable) -> (Proxy, watch::Sender<Routes>) {
        let (tx, rx) = watch::channel(Routes::from_store(table));
        let config = ProxyConfig {
            write_listen: "127.0.0.1:0".parse().unwrap(),
            read_listen: "127.0.0.1:0".parse().unwrap(),
            connect_timeout: Duration::from_secs(1),
            max_staleness: Duration::from_secs(5),
            blacklist_base: Duration::from_secs(1),
            blacklist_max: Duration::from_secs(8),
            drain: Duration::from_millis(300),
        };
        let p = Proxy::bind(config, rx).await.unwrap();
        tokio::spawn(p.clone().run());
        (p, tx)
    }

    async fn greeting(port: u16) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .ok()?
            .ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    #[tokio::test]
    async fn writes_go_to_the_writer_reads_to_readers() {
        let (w, _t1) = backend("w").await;
        let (r, _t2) = backend("r").await;
        let (p, _tx) = proxy(RoutingTable {
            writer: Some(w),
            readers: vec![r],
        })
        .await;
        let (wp, rp) = p.ports();
        assert_eq!(greeting(wp).await.as_deref(), Some("w"));
        assert_eq!(greeting(rp).await.as_deref(), Some("r"));
    }

    #[tokio::test]
    async fn a_backend_known_by_name_is_looked_up_once_and_again_after_a_failure() {
        let (w, _t1) = backend("w").await;
        let port = w.addr.rsplit_once(':').unwrap().1.to_string();
        let by_name = Backend {
            name: "w".into(),
            addr: format!("localhost:{port}"),
        };
        let (p, _tx) = proxy(RoutingTable {
            writer: Some(by_name.clone()),
            readers: vec![],
        })
        .await;
        let (wp, _) = p.ports();
        let looked_up = || p.inner.resolved.lock().unwrap().get(&by_name.addr).cloned();
        assert_eq!(greeting(wp).await.as_deref(), Some("w"));
        let (addrs, first) = looked_up().expect("the name's addresses are kept");
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert_eq!(greeting(wp).await.as_deref(), Some("w"));
        let (_, second) = looked_up().unwrap();
        assert_eq!(
            first, second,
            "the second connection used the addresses already looked up"
        );
        p.inner.forget(&by_name.addr);
        assert!(p.inner.resolved.lock().unwrap().is_empty());
        assert_eq!(greeting(wp).await.as_deref(), Some("w"));
    }

    #[tokio::test]
    async fn readers_with_equal_load_take_turns() {
        let (w, _t1) = backend("w").await;
        let (a, _t2) = backend("a").await;
        let (b, _t3) = backend("b").await;
        let (p, _tx) = proxy(RoutingTable {
            writer: Some(w),
            readers: vec![a, b],
        })
        .await;
        let (_, rp) = p.ports();
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(greeting(rp).await.unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["a", "a", "b", "b"]);
    }

    #[tokio::test]
    async fn a_refusing_reader_is_skipped_and_blacklisted() {
        let (w, _t1) = backend("w").await;
        let dead = Backend {
            name: "dead".into(),
            addr: "127.0.0.1:1".into(),
        };
        let (p, _tx) = proxy(RoutingTable {
            writer: Some(w),
            readers: vec![dead],
        })
        .await;
        let (_, rp) = p.ports();
        assert_eq!(greeting(rp).await.as_deref(), Some("w"), "retried on the writer");
        assert_eq!(greeting(rp).await.as_deref(), Some("w"));
        let dead = p.metrics().into_iter().find(|m| m.name == "dead").unwrap();
        assert_eq!(dead.connect_errors, 1, "blacklisted after the first refusal");
    }

    #[tokio::test]
    async fn a_blacklisted_writer_is_still_tried_as_the_last_resort() {
        // the writer refuses (its server is down): it is blacklisted after the first refusal
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let w = Backend {
            name: "w".into(),
            addr: addr.to_string(),
        };
        let (p, _tx) = proxy(RoutingTable {
            writer: Some(w),
            readers: vec![],
        })
        .await;
        let (wp, _) = p.ports();
        assert_eq!(greeting(wp).await, None);
        assert_eq!(p.status().blacklisted, ["w"]);
        // it is back within its blacklist period: writes reach it at once
        let l = TcpListener::bind(addr).await.unwrap();
        let _t = tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                s.write_all(b"w").await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 8];
                    let _ = s.read(&mut buf).await;
                });
            }
        });
        assert_eq!(greeting(wp).await.as_deref(), Some("w"));
        assert!(p.status().blacklisted.is_empty(), "a success forgives it");
    }

    #[tokio::test]
    async fn a_backend_that_closes_before_greeting_is_skipped() {
        let (w, _t1) = backend("w").await;
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dying = Backend {
            name: "dying".into(),
            addr: l.local_addr().unwrap().to_string(),
        };
        let _t2 = tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                drop(s);
            }
        });
        let (p, _tx) = proxy(RoutingTable {
            writer: Some(w),
            readers: vec![dying],
        })
        .await;
        let (_, rp) = p.ports();
        assert_eq!(greeting(rp).await.as_deref(), Some("w"));
    }

    #[tokio::test]
    async fn a_writer_change_closes_connections_to_the_old_writer() {
        let (a, _t1) = backend("a").await;
        let (b, _t2) = backend("b").await;
        let (p, tx) = proxy(RoutingTable {
            writer: Some(a),
            readers: vec![],
        })
        .await;
        let (wp, _) = p.ports();
        let mut s = TcpStream::connect(("127.0.0.1", wp)).await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        tx.send(Routes::from_store(RoutingTable {
            writer: Some(b),
            readers: vec![],
        }))
        .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "the old writer's connection is closed");
        assert_eq!(greeting(wp).await.as_deref(), Some("b"));
    }

    #[tokio::test]
    async fn a_planned_writer_move_drains_connections_to_the_old_writer() {
        let (a, _t1) = backend("a").await;
        let (b, _t2) = backend("b").await;
        let (p, tx) = proxy(RoutingTable {
            writer: Some(a.clone()),
            readers: vec![b.clone()],
        })
        .await;
        let (wp, _) = p.ports();
        let mut s = TcpStream::connect(("127.0.0.1", wp)).await.unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).await.unwrap(), 1);
        let moved = Instant::now();
        tx.send(Routes::from_store(RoutingTable {
            writer: Some(b),
            readers: vec![a],
        }))
        .unwrap();
        assert_eq!(
            greeting(wp).await.as_deref(),
            Some("b"),
            "new connections go to the new writer"
        );
        s.write_all(b"x").await.unwrap();
        assert_eq!(
            s.read(&mut buf).await.unwrap(),
            1,
            "the old connection still works while it drains"
        );
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "and is closed when the drain period ends");
        assert!(moved.elapsed() >= Duration::from_millis(300));
    }

    #[tokio::test]
    async fn stale_routes_close_the_write_port_but_not_the_read_port() {
        let (w, _t1) = backend("w").await;
        let (r, _t2) = backend("r").await;
        let (p, tx) = proxy(RoutingTable {
            writer: Some(w),
            readers: vec![r],
        })
        .await;
        let (wp, rp) = p.ports();
        let old = Instant::now() - Duration::from_secs(6);
        tx.send_modify(|routes| routes.at = old);
        assert_eq!(greeting(wp).await, None, "writes fail closed");
        assert_eq!(greeting(rp).await.as_deref(), Some("r"));
    }

    #[tokio::test]
    async fn routes_the_writer_itself_confirms_keep_the_write_port_open() {
        let (w, _t1) = backend("w").await;
        let (p, tx) = proxy(RoutingTable {
            writer: Some(w),
            readers: vec![],
        })
        .await;
        let (wp, _) = p.ports();
        let old = Instant::now() - Duration::from_secs(6);
        tx.send_modify(|routes| {
            routes.at = old;
            routes.by_writer = Some(Instant::now());
        });
        assert_eq!(
            greeting(wp).await.as_deref(),
            Some("w"),
            "the store is out, the writer vouches"
        );
        let status = p.status();
        assert!(status.writes_accepted && status.confirmed_by_writer);
        assert!(status.routes_age_ms >= 6000, "the store's confirmation is old");
        tx.send_modify(|routes| routes.by_writer = Some(old));
        assert_eq!(
            greeting(wp).await,
            None,
            "the writer's word is old too: fail closed"
        );
    }

    #[tokio::test]
    async fn half_close_is_passed_through() {
        let (w, _t1) = backend("w").await;
        let (p, _tx) = proxy(RoutingTable {
            writer: Some(w),
            readers: vec![],
        })
        .await;
        let (wp, _) = p.ports();
        let mut s = TcpStream::connect(("127.0.0.1", wp)).await.unwrap();
        s.write_all(b"ping").await.unwrap();
        s.shutdown().await.unwrap();
        let mut all = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut all))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            all, b"wping",
            "the echo arrives and the backend's close reaches the client"
        );
    }
}
