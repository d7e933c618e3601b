//! [`CoordinationStore`] on etcd v3: leases are etcd leases, compare-and-swap is a transaction
//! on the key's `mod_revision`, and a key's revision (etcd's store-wide revision) is the fencing
//! token.
//!
//! Requests time out after [`EtcdOptions::request_timeout`] and then fail with
//! [`StoreError::Unavailable`]: a member without quorum does not answer, so the caller sees the
//! store as unavailable and its own lease timing decides what it does (a primary fences itself
//! before its lease can lapse). Watches survive a lost connection: the forwarding task re-opens
//! the watch from the next revision it has not delivered, so no event is skipped.
//!
//! etcd leases have whole-second TTLs with a server-side minimum (about 1.5 election timeouts);
//! a TTL is rounded up to the next second.
//!
//! Requests go to one member until it fails, then to the next: etcd-client's own balancing
//! over several endpoints keeps sending a share of requests to a member that cannot be reached
//! or has lost its quorum (tonic's balancer counts a broken connection as ready), so each
//! member has a client of its own. A request refused at connect is retried on the next member
//! at once (it was never sent); one that timed out is not (it may have been applied; opening a
//! watch is), but the next request goes elsewhere. A watch checks every second that its member still answers a
//! linearizable read, and moves when it does not: a member cut off from the others' quorum
//! would otherwise keep the watch open and silent.
//!
//! With [`EtcdOptions::tls`] the client speaks TLS to `https://` endpoints, verifies the
//! members against the given CA and presents its own certificate if it has one (etcd's
//! `--client-cert-auth`; with etcd's auth enabled, the certificate's common name is the user).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, PutOptions,
    TlsOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::sync::mpsc;

use crate::{CasOutcome, CoordinationStore, KeyValue, LeaseId, Revision, StoreError, WatchEvent};

/// Longer than etcd's default `--grpc-keepalive-min-time` (5 s).
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(6);

/// How often a watch checks that its member still answers.
const WATCH_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// How to reach the etcd cluster.
#[derive(Debug, Clone)]
pub struct EtcdOptions {
    /// `host:port` or `http://host:port` of each member.
    pub endpoints: Vec<String>,
    /// Longest wait for one request before the store counts as unavailable.
    pub request_timeout: Duration,
    pub connect_timeout: Duration,
    /// TLS to `https://` endpoints; none for `http://`.
    pub tls: Option<EtcdTls>,
}

/// TLS to etcd: the CA that signed the members' certificates, and this client's own
/// certificate and key when etcd asks for one (`--client-cert-auth`).
#[derive(Clone)]
pub struct EtcdTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for EtcdTls {
    /// Leaves the key out.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("client_certificate", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

impl EtcdOptions {
    pub fn new(endpoints: Vec<String>) -> EtcdOptions {
        EtcdOptions {
            endpoints,
            request_timeout: Duration::from_secs(1),
            connect_timeout: Duration::from_millis(500),
            tls: None,
        }
    }
}

/// A client of an etcd v3 cluster. Cheap to clone; clones share the connections.
#[derive(Clone)]
pub struct EtcdStore {
    members: Arc<Members>,
}

/// One client per member, and the member requests go to now.
struct Members {
    clients: Vec<Client>,
    current: AtomicUsize,
    /// The longest one attempt on one member may take: connecting (and a TLS handshake, which
    /// tonic does not time) plus the request. etcd-client's own timeout covers only the request
    /// until its response headers.
    attempt: Duration,
}

/// The error of an attempt that took longer than [`Members::attempt`].
fn no_answer() -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::deadline_exceeded(
        "no answer from the etcd member in time",
    ))
}

/// What a failed request says about the member it went to.
#[derive(Debug, PartialEq)]
enum Failure {
    /// The member could not be connected to: nothing was sent, another member may be asked.
    NotSent,
    /// The member did not answer in time or cannot serve (no quorum, broken connection); the
    /// request may have been applied.
    Member,
    /// The request itself was refused (a lease that is gone, a bad argument).
    Request,
}

fn failure(e: &etcd_client::Error) -> Failure {
    use tonic::Code;
    match e {
        etcd_client::Error::GRpcStatus(s) => match s.code() {
            Code::Unavailable if s.message().contains("connect error") => Failure::NotSent,
            Code::Unavailable | Code::Cancelled | Code::DeadlineExceeded | Code::Unknown => Failure::Member,
            _ => Failure::Request,
        },
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => Failure::Member,
        _ => Failure::Request,
    }
}

impl Members {
    /// The member requests go to now, and its client.
    fn current(&self) -> (usize, Client) {
        let i = self.current.load(Ordering::Relaxed) % self.clients.len();
        (i, self.clients[i].clone())
    }

    /// Member `i` failed: requests move to the next one (unless another failure moved them
    /// already).
    fn failed(&self, i: usize) {
        let next = (i + 1) % self.clients.len();
        let _ = self
            .current
            .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// Runs `request` on the current member; on a member that cannot be connected to, on the
    /// next ones, and also after a member failure if the request is `idempotent`. Returns which
    /// member answered. Takes at most one [`Members::attempt`] in all, or one per member when
    /// `idempotent`.
    async fn request<T, F, Fut>(&self, idempotent: bool, request: F) -> Result<(usize, T), etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut tries = self.clients.len();
        let budget = if idempotent {
            self.attempt * tries as u32
        } else {
            self.attempt
        };
        let deadline = tokio::time::Instant::now() + budget;
        loop {
            let (i, client) = self.current();
            let this_attempt = (tokio::time::Instant::now() + self.attempt).min(deadline);
            let e = match tokio::time::timeout_at(this_attempt, request(client)).await {
                Ok(Ok(v)) => return Ok((i, v)),
                Ok(Err(e)) => e,
                Err(_) => no_answer(),
            };
            let kind = failure(&e);
            if kind != Failure::Request {
                self.failed(i);
            }
            tries -= 1;
            let retry = kind == Failure::NotSent || (idempotent && kind == Failure::Member);
            if !retry || tries == 0 || tokio::time::Instant::now() >= deadline {
                return Err(e);
            }
        }
    }

    /// Whether member `i` answers a linearizable read in time (a member cut off from the
    /// quorum does not). A refused read says nothing against the member.
    async fn answers(&self, i: usize, prefix: &str) -> bool {
        let mut c = self.clients[i].clone();
        let opts = GetOptions::new().with_prefix().with_keys_only().with_limit(1);
        match tokio::time::timeout(self.attempt, c.get(prefix, Some(opts))).await {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => failure(&e) == Failure::Request,
            Err(_) => false,
        }
    }

    async fn call<T, F, Fut>(&self, request: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.request(false, request).await.map(|(_, v)| v)
    }
}

fn unavailable(e: etcd_client::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// An error of a request made under `lease`: "lease not found" means the lease is gone.
fn lease_error(lease: Option<LeaseId>, e: etcd_client::Error) -> StoreError {
    let not_found = match &e {
        etcd_client::Error::GRpcStatus(s) => s.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    };
    match lease {
        Some(l) if not_found => StoreError::LeaseLost(l),
        _ => unavailable(e),
    }
}

fn rev(r: i64) -> Revision {
    r.max(0) as Revision
}

fn convert(kv: &etcd_client::KeyValue) -> KeyValue {
    KeyValue {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: rev(kv.mod_revision()),
        lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
    }
}

/// The revision a response was served at.
fn header_revision(h: Option<&etcd_client::ResponseHeader>) -> Revision {
    h.map_or(0, |h| rev(h.revision()))
}

impl EtcdStore {
    /// Sets up the connections. Members are dialled lazily: this succeeds while etcd is down,
    /// and requests fail with [`StoreError::Unavailable`] until it is back.
    pub async fn connect(options: &EtcdOptions) -> Result<EtcdStore, StoreError> {
        if options.endpoints.is_empty() {
            return Err(StoreError::Unavailable("no etcd endpoints configured".into()));
        }
        let opts = ConnectOptions::new()
            .with_timeout(options.request_timeout)
            .with_connect_timeout(options.connect_timeout)
            // etcd answers pings more frequent than --grpc-keepalive-min-time (5 s), or pings
            // without an open stream, with GOAWAY ("too many pings"), and the next request on
            // that connection fails. Requests have their own timeout; the pings only watch
            // over the connections that carry watches.
            .with_keep_alive(KEEP_ALIVE_INTERVAL, options.request_timeout)
            .with_keep_alive_while_idle(false);
        let opts = match &options.tls {
            None => opts,
            Some(tls) => {
                let mut config = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
                if let Some((cert, key)) = &tls.identity {
                    config = config.identity(Identity::from_pem(cert, key));
                }
                opts.with_tls(config)
            }
        };
        let mut clients = Vec::with_capacity(options.endpoints.len());
        for endpoint in &options.endpoints {
            let client = Client::connect([endpoint], Some(opts.clone()))
                .await
                .map_err(unavailable)?;
            clients.push(client);
        }
        Ok(EtcdStore {
            members: Arc::new(Members {
                clients,
                current: AtomicUsize::new(0),
                attempt: options.connect_timeout + options.request_timeout,
            }),
        })
    }

    fn put_options(lease: Option<LeaseId>) -> Option<PutOptions> {
        lease.map(|l| PutOptions::new().with_lease(l.0))
    }
}

#[async_trait]
impl CoordinationStore for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .members
            .call(|mut c| async move { c.get(key, None).await })
            .await
            .map_err(unavailable)?;
        Ok(resp.kvs().first().map(convert))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<KeyValue>, StoreError> {
        let resp = self
            .members
            .call(|mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await })
            .await
            .map_err(unavailable)?;
        // etcd returns a range in key order
        Ok(resp.kvs().iter().map(convert).collect())
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, StoreError> {
        let resp = self
            .members
            .call(|mut c| {
                let value = value.clone();
                async move { c.put(key, value, Self::put_options(lease)).await }
            })
            .await
            .map_err(|e| lease_error(lease, e))?;
        Ok(header_revision(resp.header()))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: Revision,
        value: Vec<u8>,
        lease: Option<LeaseId>,
    ) -> Result<CasOutcome, StoreError> {
        // an absent key has mod_revision 0 in etcd's comparisons
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected as i64)])
            .and_then([TxnOp::put(key, value, Self::put_options(lease))])
            .or_else([TxnOp::get(key, None)]);
        let resp = self
            .members
            .call(|mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await
            .map_err(|e| lease_error(lease, e))?;
        if resp.succeeded() {
            return Ok(CasOutcome::Swapped(header_revision(resp.header())));
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(convert)),
            _ => None,
        });
        Ok(CasOutcome::Conflict(current.flatten()))
    }

    async fn delete(&self, key: &str) -> Result<bool, StoreError> {
        let resp = self
            .members
            .call(|mut c| async move { c.delete(key, None).await })
            .await
            .map_err(unavailable)?;
        Ok(resp.deleted() > 0)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let secs = ttl.as_millis().div_ceil(1000).max(1) as i64;
        let resp = self
            .members
            .call(|mut c| async move { c.lease_grant(secs, None).await })
            .await
            .map_err(unavailable)?;
        Ok(LeaseId(resp.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<(), StoreError> {
        // etcd-client renews once when it opens the keep-alive stream, and fails with "lease
        // not found" when etcd answers with no TTL left.
        self.members
            .call(|mut c| async move { c.lease_keep_alive(lease.0).await })
            .await
            .map_err(|e| lease_error(Some(lease), e))?;
        Ok(())
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .members
            .call(|mut c| async move { c.lease_revoke(lease.0).await })
            .await
        {
            Ok(_) => Ok(()),
            // already gone: what revoking was for
            Err(e) => match lease_error(Some(lease), e) {
                StoreError::LeaseLost(_) => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn watch(&self, prefix: &str) -> Result<mpsc::UnboundedReceiver<WatchEvent>, StoreError> {
        // The revision "now" is read first, and the watch starts right after it: nothing
        // written between the two calls is missed.
        let (_, head) = self
            .members
            .request(true, |mut c| async move {
                c.get(
                    prefix,
                    Some(GetOptions::new().with_prefix().with_keys_only().with_limit(1)),
                )
                .await
            })
            .await
            .map_err(unavailable)?;
        let from = header_revision(head.header()) + 1;
        let opened = open_watch(&self.members, prefix, from).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(forward(
            self.members.clone(),
            prefix.to_string(),
            from,
            opened,
            tx,
        ));
        Ok(rx)
    }
}

/// A watch opened on a member: which member, the watcher and its stream.
type Opened = (usize, etcd_client::Watcher, etcd_client::WatchStream);

async fn open_watch(members: &Members, prefix: &str, from: Revision) -> Result<Opened, StoreError> {
    let opts = WatchOptions::new().with_prefix().with_start_revision(from as i64);
    let (i, (watcher, stream)) = members
        .request(true, |mut c| {
            let opts = opts.clone();
            async move { c.watch(prefix, Some(opts)).await }
        })
        .await
        .map_err(unavailable)?;
    Ok((i, watcher, stream))
}

/// After [`WATCH_CHECK_INTERVAL`], whether member `i` still answers.
async fn member_answers(members: Arc<Members>, i: usize, prefix: String) -> bool {
    tokio::time::sleep(WATCH_CHECK_INTERVAL).await;
    members.answers(i, &prefix).await
}

/// Delivers a watch's events until the receiver is dropped, re-opening it after a failure
/// (on the next member if its member stopped answering) from the first revision not yet
/// delivered.
async fn forward(
    members: Arc<Members>,
    prefix: String,
    mut next: Revision,
    opened: Opened,
    tx: mpsc::UnboundedSender<WatchEvent>,
) {
    let (mut member, mut _watcher, mut stream) = opened;
    let check_on = |member| Box::pin(member_answers(members.clone(), member, prefix.clone()));
    let mut check = check_on(member);
    let mut backoff = Duration::from_millis(100);
    loop {
        let broken = tokio::select! {
            _ = tx.closed() => return,
            answers = &mut check => {
                if answers {
                    check = check_on(member);
                    false
                } else {
                    tracing::debug!(prefix, "etcd member {member} stopped answering; moving the watch");
                    members.failed(member);
                    true
                }
            }
            message = stream.message() => match message {
                Ok(Some(resp)) if resp.compact_revision() > 0 => {
                    // history before `next` was compacted away: resume from what is left
                    tracing::warn!(
                        prefix,
                        "etcd watch compacted; resuming from revision {}",
                        resp.compact_revision()
                    );
                    next = rev(resp.compact_revision());
                    true
                }
                Ok(Some(resp)) => {
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        let revision = rev(kv.mod_revision());
                        let event = match ev.event_type() {
                            EventType::Put => WatchEvent::Put(convert(kv)),
                            EventType::Delete => WatchEvent::Delete {
                                key: String::from_utf8_lossy(kv.key()).into_owned(),
                                revision,
                            },
                        };
                        next = next.max(revision + 1);
                        if tx.send(event).is_err() {
                            return;
                        }
                    }
                    backoff = Duration::from_millis(100);
                    resp.canceled()
                }
                Ok(None) | Err(_) => true,
            },
        };
        if !broken {
            continue;
        }
        loop {
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
            match open_watch(&members, &prefix, next).await {
                Ok((i, w, s)) => {
                    (member, _watcher, stream) = (i, w, s);
                    check = check_on(member);
                    break;
                }
                Err(e) => tracing::debug!(prefix, "re-opening etcd watch: {e}"),
            }
        }
    }
}
