//! The clients of a chaos run, on the client host, through the proxy:
//!
//! - four insert clients (unique ids; each row stamped with the node that wrote it and the
//!   primary's epoch, or its Galera component state);
//! - two counter clients (`UPDATE ... SET v = v + 1` on one of eight counters);
//! - one transfer client (amounts between five accounts, in transactions);
//! - one read-your-writes client (insert, then read it on a new write-port connection);
//! - one read-port client (the accounts' total, and ids once seen that must stay);
//! - replication: a sampler of `read_only` on every node, directly.
//!
//! Each records every operation with when it was sent and answered, against a common start.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::check::{ACCOUNTS, OPENING_BALANCE};
use super::history::{History, ReadBack, Writable, Write};
use crate::app_opts;
use crate::hosts::{connected, runtime, HostCluster, Outcome, CLIENT, PROXY_READ_PORT, PROXY_WRITE_PORT};

pub const INSERT_CLIENTS: u64 = 4;
pub const COUNTERS: u64 = 8;
/// An operation's answer must come within this, or its outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// The tables, created through the write port before the clients start.
pub fn schema(replication: bool) -> Vec<String> {
    let accounts = (1..=ACCOUNTS)
        .map(|i| format!("({i}, {OPENING_BALANCE})"))
        .collect::<Vec<_>>()
        .join(",");
    let counters = (1..=COUNTERS)
        .map(|i| format!("({i}, 0)"))
        .collect::<Vec<_>>()
        .join(",");
    let _ = replication;
    vec![
        "CREATE TABLE chaos_ints (id BIGINT PRIMARY KEY, node VARCHAR(64) NULL, \
         epoch BIGINT UNSIGNED NULL, component VARCHAR(32) NULL)"
            .into(),
        "CREATE TABLE chaos_read_back (id BIGINT PRIMARY KEY)".into(),
        "CREATE TABLE chaos_counters (id BIGINT PRIMARY KEY, v BIGINT NOT NULL)".into(),
        format!("INSERT INTO chaos_counters VALUES {counters}"),
        "CREATE TABLE chaos_bank (id INT PRIMARY KEY, balance BIGINT NOT NULL)".into(),
        format!("INSERT INTO chaos_bank VALUES {accounts}"),
    ]
}

/// The insert statement: each row stamped with who wrote it.
fn insert_sql(replication: bool) -> String {
    if replication {
        format!(
            "INSERT INTO chaos_ints (id, node, epoch) SELECT ?, @@server_id, epoch FROM {} WHERE id = 1",
            vigil_mariadb::repl::FENCE_TABLE
        )
    } else {
        "INSERT INTO chaos_ints (id, node, component) SELECT ?, @@wsrep_node_name, VARIABLE_VALUE \
         FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'WSREP_CLUSTER_STATUS'"
            .into()
    }
}

/// The running clients.
pub struct Clients {
    stop: Arc<AtomicBool>,
    threads: Vec<(String, std::thread::JoinHandle<()>)>,
    recorded: Arc<Mutex<History>>,
    replication: bool,
}

impl Clients {
    pub fn start(cluster: &HostCluster, t0: Instant, seed: u64) -> Clients {
        let replication = cluster.config.cluster.topology == vigil_core::config::Topology::Replication;
        let proxy = cluster.net.host(CLIENT).addr.to_string();
        let password = cluster.app_password();
        let write = app_opts(&proxy, PROXY_WRITE_PORT, &password);
        let read = app_opts(&proxy, PROXY_READ_PORT, &password);
        let stop = Arc::new(AtomicBool::new(false));
        let recorded = Arc::new(Mutex::new(History {
            replication,
            writable: replication.then(Writable::default),
            ..Default::default()
        }));
        let mut clients = Clients {
            stop,
            threads: Vec::new(),
            recorded,
            replication,
        };
        let ctx = |c: &Clients| Ctx {
            stop: c.stop.clone(),
            recorded: c.recorded.clone(),
            t0,
        };
        for k in 0..INSERT_CLIENTS {
            let (cx, opts, sql) = (ctx(&clients), write.clone(), insert_sql(replication));
            clients.spawn(cluster, &format!("insert client {k}"), async move {
                insert_loop(cx, opts, sql, k + 1, INSERT_CLIENTS).await
            });
        }
        for k in 0..2u16 {
            let (cx, opts) = (ctx(&clients), write.clone());
            let seed = seed.wrapping_add(10 + u64::from(k));
            clients.spawn(cluster, &format!("counter client {k}"), async move {
                counter_loop(cx, opts, seed, k).await
            });
        }
        let (cx, opts) = (ctx(&clients), write.clone());
        let s = seed.wrapping_add(1);
        clients.spawn(cluster, "transfer client", async move {
            transfer_loop(cx, opts, s).await
        });
        let (cx, opts) = (ctx(&clients), write);
        clients.spawn(cluster, "read-your-writes client", async move {
            read_back_loop(cx, opts).await
        });
        let (cx, opts) = (ctx(&clients), read);
        clients.spawn(
            cluster,
            "read-port client",
            async move { read_loop(cx, opts).await },
        );
        if replication {
            let nodes = cluster.node_opts();
            let cx = ctx(&clients);
            clients.spawn(cluster, "read_only sampler", async move {
                writable_loop(cx, nodes).await
            });
        }
        clients
    }

    fn spawn(
        &mut self,
        cluster: &HostCluster,
        name: &str,
        f: impl std::future::Future<Output = ()> + Send + 'static,
    ) {
        let t = cluster.net.spawn_in(CLIENT, move || runtime().block_on(f));
        self.threads.push((name.to_string(), t));
    }

    /// Acknowledged inserts so far.
    pub fn acked_inserts(&self) -> usize {
        let r = self.recorded.lock().expect("recorded");
        r.inserts.iter().filter(|w| w.outcome == Outcome::Ok).count()
    }

    /// Acknowledged inserts sent at or after `t` (since the start).
    pub fn acked_inserts_since(&self, t: Duration) -> usize {
        let r = self.recorded.lock().expect("recorded");
        r.inserts
            .iter()
            .filter(|w| w.outcome == Outcome::Ok && w.sent >= t)
            .count()
    }

    /// Stops every client and returns what they recorded (the clients' part of the history),
    /// with the threads that panicked.
    pub fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        let mut panicked = Vec::new();
        for (name, t) in self.threads {
            if let Err(e) = t.join() {
                let msg = e
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panicked.push(format!("{name}: {msg}"));
            }
        }
        let mut r = std::mem::take(&mut *self.recorded.lock().expect("recorded"));
        r.panicked = panicked;
        if !self.replication {
            r.writable = None;
        }
        r
    }
}

/// What every client loop shares.
#[derive(Clone)]
struct Ctx {
    stop: Arc<AtomicBool>,
    recorded: Arc<Mutex<History>>,
    t0: Instant,
}

impl Ctx {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed)
    }

    fn now(&self) -> Duration {
        self.t0.elapsed()
    }

    fn record(&self, f: impl FnOnce(&mut History)) {
        f(&mut self.recorded.lock().expect("recorded"));
    }

    /// The client's connection through the proxy, opened if it has none; a failure to open
    /// one is recorded.
    async fn connect<'a>(
        &self,
        conn: &'a mut Option<mysql_async::Conn>,
        opts: &mysql_async::OptsBuilder,
    ) -> Option<&'a mut mysql_async::Conn> {
        let c = connected(conn, opts).await;
        if c.is_none() {
            self.record(|r| r.connect_failures.push(self.now()));
        }
        c
    }

    /// Records a single-row write that was sent at `sent`, with the server's answer `r` and the
    /// rows it changed (none means nothing happened: no epoch row to stamp with, no such row);
    /// returns whether it was acknowledged.
    fn write<T>(
        &self,
        to: fn(&mut History) -> &mut Vec<Write>,
        (key, client, sent): (u64, u16, Duration),
        r: &Result<Result<T, mysql_async::Error>, tokio::time::error::Elapsed>,
        rows: u64,
    ) -> bool {
        let (mut outcome, mut error) = (Outcome::of(r), why(r));
        if outcome == Outcome::Ok && rows != 1 {
            (outcome, error) = (Outcome::Failed, "no row changed".into());
        }
        let done = self.now();
        self.record(|h| {
            to(h).push(Write {
                key,
                sent,
                done,
                outcome,
                client,
                error,
            })
        });
        outcome == Outcome::Ok
    }
}

async fn insert_loop(cx: Ctx, opts: mysql_async::OptsBuilder, sql: String, first: u64, step: u64) {
    let client = (first - 1) as u16;
    let mut id = first;
    let mut conn = None;
    while cx.running() {
        let Some(c) = cx.connect(&mut conn, &opts).await else {
            continue;
        };
        let sent = cx.now();
        let r = tokio::time::timeout(OP_TIMEOUT, c.exec_drop(sql.as_str(), (id,))).await;
        if !cx.write(|h| &mut h.inserts, (id, client, sent), &r, c.affected_rows()) {
            conn = None;
        }
        id += step;
    }
}

async fn counter_loop(cx: Ctx, opts: mysql_async::OptsBuilder, seed: u64, client: u16) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = None;
    while cx.running() {
        let Some(c) = cx.connect(&mut conn, &opts).await else {
            continue;
        };
        let counter = rng.gen_range(1..=COUNTERS);
        let sent = cx.now();
        let r = tokio::time::timeout(
            OP_TIMEOUT,
            c.exec_drop("UPDATE chaos_counters SET v = v + 1 WHERE id = ?", (counter,)),
        )
        .await;
        if !cx.write(
            |h| &mut h.increments,
            (counter, client, sent),
            &r,
            c.affected_rows(),
        ) {
            conn = None;
        }
    }
}

async fn transfer_loop(cx: Ctx, opts: mysql_async::OptsBuilder, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = None;
    while cx.running() {
        let Some(c) = cx.connect(&mut conn, &opts).await else {
            continue;
        };
        let from = rng.gen_range(1..=ACCOUNTS);
        let to = (from % ACCOUNTS) + 1;
        let amount = rng.gen_range(1..=10);
        let sent = cx.now();
        let transfer = async {
            let mut tx = c.start_transaction(mysql_async::TxOpts::default()).await?;
            tx.exec_drop(
                "SELECT balance FROM chaos_bank WHERE id IN (?, ?) FOR UPDATE",
                (from, to),
            )
            .await?;
            tx.exec_drop(
                "UPDATE chaos_bank SET balance = balance - ? WHERE id = ?",
                (amount, from),
            )
            .await?;
            tx.exec_drop(
                "UPDATE chaos_bank SET balance = balance + ? WHERE id = ?",
                (amount, to),
            )
            .await?;
            tx.commit().await
        };
        let r = tokio::time::timeout(OP_TIMEOUT, transfer).await;
        // a transaction changes two rows; its commit is the answer
        if !cx.write(|h| &mut h.transfers, (from as u64, 0, sent), &r, 1) {
            conn = None;
        }
    }
}

/// Why an operation was not acknowledged, in a few words; empty when it was.
fn why<T>(r: &Result<Result<T, mysql_async::Error>, tokio::time::error::Elapsed>) -> String {
    match r {
        Ok(Ok(_)) => String::new(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no answer within {} s", OP_TIMEOUT.as_secs()),
    }
}

/// Inserts an id, and once it is acknowledged reads it on a new connection to the write port.
async fn read_back_loop(cx: Ctx, opts: mysql_async::OptsBuilder) {
    let mut id = 0u64;
    let mut conn = None;
    while cx.running() {
        let Some(c) = cx.connect(&mut conn, &opts).await else {
            continue;
        };
        id += 1;
        let r = tokio::time::timeout(
            OP_TIMEOUT,
            c.exec_drop("INSERT INTO chaos_read_back (id) VALUES (?)", (id,)),
        )
        .await;
        if Outcome::of(&r) != Outcome::Ok {
            // Not acknowledged: this id proves nothing.
            conn = None;
            continue;
        }
        let acked = cx.now();
        let check = async {
            let mut fresh = mysql_async::Conn::new(opts.clone()).await?;
            let n: Option<i64> = fresh
                .exec_first("SELECT COUNT(*) FROM chaos_read_back WHERE id = ?", (id,))
                .await?;
            let _ = fresh.disconnect().await;
            Ok::<_, mysql_async::Error>(n)
        };
        let seen = match tokio::time::timeout(OP_TIMEOUT, check).await {
            Ok(Ok(Some(n))) => Some(n == 1),
            _ => None,
        };
        let read = cx.now();
        cx.record(|r| {
            r.read_backs.push(ReadBack {
                id,
                acked,
                read,
                seen,
            })
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the accounts' total through the read port, and on each connection checks that the
/// ids it saw stay: every turn it samples the newest ids and looks for up to 20 seen earlier.
async fn read_loop(cx: Ctx, opts: mysql_async::OptsBuilder) {
    let mut conn = None;
    let mut seen: Vec<u64> = Vec::new();
    let mut rng = StdRng::seed_from_u64(7);
    while cx.running() {
        if conn.is_none() {
            // a new connection may reach another replica: what the old one saw says nothing
            seen.clear();
        }
        let Some(c) = cx.connect(&mut conn, &opts).await else {
            continue;
        };
        let sample: BTreeSet<u64> = (0..20.min(seen.len()))
            .map(|_| seen[rng.gen_range(0..seen.len())])
            .collect();
        let turn = async {
            let (total, count): (i64, i64) = c
                .query_first("SELECT CAST(SUM(balance) AS SIGNED), COUNT(*) FROM chaos_bank")
                .await?
                .unwrap_or((0, 0));
            let present: Vec<u64> = if sample.is_empty() {
                Vec::new()
            } else {
                let list = sample.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
                c.query(format!("SELECT id FROM chaos_ints WHERE id IN ({list})"))
                    .await?
            };
            let newest: Vec<u64> = c
                .query("SELECT id FROM chaos_ints ORDER BY id DESC LIMIT 20")
                .await?;
            Ok::<_, mysql_async::Error>((total, count, present, newest))
        };
        match tokio::time::timeout(OP_TIMEOUT, turn).await {
            Ok(Ok((total, count, present, newest))) => {
                let at = cx.now();
                let gone: Vec<u64> = sample
                    .iter()
                    .copied()
                    .filter(|id| !present.contains(id))
                    .collect();
                cx.record(|r| {
                    r.read_port.reads += 1;
                    if total != ACCOUNTS * OPENING_BALANCE || count != ACCOUNTS {
                        r.read_port.bad_totals.push((at, total, count));
                    }
                    r.read_port.vanished.extend(gone.iter().map(|id| (at, *id)));
                });
                seen.extend(newest);
                if seen.len() > 10_000 {
                    seen.drain(..5_000);
                }
            }
            _ => conn = None,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples `read_only` on every node, two passes per round: a round in which several nodes
/// were writable in both passes saw their writable periods overlap.
async fn writable_loop(cx: Ctx, nodes: Vec<(String, mysql_async::OptsBuilder)>) {
    let mut conns: Vec<Option<mysql_async::Conn>> = nodes.iter().map(|_| None).collect();
    while cx.running() {
        let mut writable = vec![true; nodes.len()];
        let mut answered = vec![true; nodes.len()];
        for _pass in 0..2 {
            for (i, (_, opts)) in nodes.iter().enumerate() {
                match crate::read_only(&mut conns[i], opts).await {
                    Some(read_only) => writable[i] &= !read_only,
                    None => {
                        writable[i] = false;
                        answered[i] = false;
                    }
                }
            }
        }
        let both: Vec<String> = nodes
            .iter()
            .zip(&writable)
            .filter(|(_, w)| **w)
            .map(|((n, _), _)| n.clone())
            .collect();
        let at = cx.now();
        cx.record(|r| {
            let w = r.writable.get_or_insert_with(Writable::default);
            w.rounds += 1;
            w.full_rounds += u64::from(answered.iter().all(|a| *a));
            if both.len() > 1 {
                w.overlaps.push((at, both));
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
