//! `vigil chaos`: a [`HostCluster`] under a client workload and random faults, and a checker
//! of what the topology promises.
//!
//! The workload runs on the client host, through the proxy: two clients insert unique ids
//! (recording for each whether the server acknowledged it, refused it, or the answer was
//! lost), one transfers amounts between five bank accounts in transactions, one reads the
//! accounts' total through the read port. In the replication topology a sampler also reads
//! `read_only` on every node, twice per round.
//!
//! Checked, for both topologies: no acknowledged insert is missing at the end; no id is present
//! that was never sent or that the server refused; the total balance never changes, in any
//! read or on any node at the end. Replication only: no two nodes were writable at once.
//! Not checked: Galera is not serializable (see Jepsen's analyses of Galera and MariaDB), so
//! no isolation anomaly is looked for beyond the invariant total; and in Galera every node of
//! the Primary component is writable by design (the proxy sends writes to one).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use vigil_core::config::{Durability, Topology};

use crate::hosts::{HostCluster, Service, CLIENT, PROXY_READ_PORT, PROXY_WRITE_PORT};
use crate::{app_opts, wait_for};

const ACCOUNTS: i64 = 5;
const OPENING_BALANCE: i64 = 100;

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub topology: Topology,
    pub time: Duration,
    pub seed: u64,
}

/// The kinds of fault injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    KillMariadbd,
    KillAgent,
    PauseMariadbd,
    PauseAgent,
    IsolateHost,
    PacketLoss,
    KillEtcdMember,
    StoreQuorumLoss,
}

const FAULTS: [Fault; 8] = [
    Fault::KillMariadbd,
    Fault::KillAgent,
    Fault::PauseMariadbd,
    Fault::PauseAgent,
    Fault::IsolateHost,
    Fault::PacketLoss,
    Fault::KillEtcdMember,
    Fault::StoreQuorumLoss,
];

/// What the server said to one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// The server answered with an error: the operation did not happen.
    Failed,
    /// The connection broke or timed out: it may or may not have happened.
    Unknown,
}

#[derive(Debug, Clone)]
struct Insert {
    id: u64,
    completed: Instant,
    outcome: Outcome,
}

#[derive(Debug, Default)]
struct History {
    inserts: Vec<Insert>,
    transfers: BTreeMap<&'static str, u64>,
    reads: u64,
    bad_totals: Vec<(i64, i64)>,
    two_writable: Vec<Vec<String>>,
    sample_rounds: u64,
}

/// What a chaos run did and found.
#[derive(Debug, Default)]
pub struct Summary {
    pub faults: BTreeMap<String, u32>,
    pub inserts: BTreeMap<&'static str, u64>,
    pub transfers: BTreeMap<&'static str, u64>,
    pub reads: u64,
    pub read_only_samples: u64,
    /// Every violation found, one sentence each. Must be empty.
    pub violations: Vec<String>,
    pub longest_write_gap: Duration,
    pub elapsed: Duration,
    /// Nodes not healthy 300 s after the last fault, with why (checked: the others only).
    pub not_back: Vec<String>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let total: u32 = self.faults.values().sum();
        writeln!(f, "faults injected: {total}")?;
        for (kind, n) in &self.faults {
            writeln!(f, "  {kind}: {n}")?;
        }
        let counts = |m: &BTreeMap<&str, u64>| {
            ["ok", "failed", "unknown"]
                .iter()
                .map(|k| format!("{} {k}", m.get(k).copied().unwrap_or(0)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        writeln!(f, "inserts: {}", counts(&self.inserts))?;
        writeln!(f, "transfers: {}", counts(&self.transfers))?;
        writeln!(f, "total-balance reads: {}", self.reads)?;
        if self.read_only_samples > 0 {
            writeln!(f, "read_only sample rounds: {}", self.read_only_samples)?;
        }
        writeln!(
            f,
            "longest write unavailability: {:.1} s",
            self.longest_write_gap.as_secs_f64()
        )?;
        for n in &self.not_back {
            writeln!(f, "not back after the run (its data not checked): {n}")?;
        }
        writeln!(f, "violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        Ok(())
    }
}

fn outcome_of(r: &Result<Result<(), mysql_async::Error>, tokio::time::error::Elapsed>) -> Outcome {
    match r {
        Ok(Ok(())) => Outcome::Ok,
        Ok(Err(mysql_async::Error::Server(_))) => Outcome::Failed,
        _ => Outcome::Unknown,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

async fn connect(opts: &mysql_async::OptsBuilder) -> Option<mysql_async::Conn> {
    tokio::time::timeout(Duration::from_secs(2), mysql_async::Conn::new(opts.clone()))
        .await
        .ok()?
        .ok()
}

/// Runs a chaos scenario and checks it. Panics only if the test hosts cannot be built.
pub fn run(vigil: &std::path::Path, opts: &ChaosOptions, progress: impl Fn(&str)) -> Summary {
    let started = Instant::now();
    let mut cluster = HostCluster::start_with(vigil, opts.topology, 3, |c| {
        // replication promises no lost acknowledged write only with semi-sync
        if let Some(r) = c.replication.as_mut() {
            r.durability = Durability::Semisync;
        }
    });
    progress("hosts built; waiting for the cluster");
    cluster.wait_healthy(Duration::from_secs(400));
    let hosts = cluster.db_hosts.clone();
    let proxy = cluster.net.host(CLIENT).addr.to_string();
    let password = cluster.app_password();
    let write = app_opts(&proxy, PROXY_WRITE_PORT, &password);
    let read = app_opts(&proxy, PROXY_READ_PORT, &password);
    let nodes: Vec<(String, mysql_async::OptsBuilder)> = hosts
        .iter()
        .map(|h| {
            let n = cluster.config.node(h).expect("node");
            (h.clone(), app_opts(&n.host, n.sql_port, &password))
        })
        .collect();

    // Tables, then wait until every node has the accounts.
    let setup = write.clone();
    cluster.net.run_in(CLIENT, move || {
        runtime().block_on(async {
            let mut c = mysql_async::Conn::new(setup)
                .await
                .expect("connect through the proxy");
            for sql in [
                "CREATE TABLE chaos_ints (id BIGINT PRIMARY KEY)".to_string(),
                "CREATE TABLE chaos_bank (id INT PRIMARY KEY, balance BIGINT NOT NULL)".into(),
                format!(
                    "INSERT INTO chaos_bank VALUES {}",
                    (1..=ACCOUNTS)
                        .map(|i| format!("({i}, {OPENING_BALANCE})"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ] {
                c.query_drop(sql).await.expect("set up the workload's tables");
            }
        })
    });
    for (h, o) in nodes.clone() {
        let o2 = o.clone();
        wait_for(
            &format!("{h} to have the accounts"),
            Duration::from_secs(60),
            || {
                let o = o2.clone();
                cluster
                    .net
                    .run_in(CLIENT, move || {
                        runtime().block_on(async {
                            let mut c = connect(&o).await?;
                            c.query_first::<i64, _>("SELECT COUNT(*) FROM chaos_bank")
                                .await
                                .ok()?
                        })
                    })
                    .filter(|n| *n == ACCOUNTS)
            },
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let workload_started = Instant::now();
    let mut threads = Vec::new();
    for worker in 0..2u64 {
        let (stop, history, opts) = (stop.clone(), history.clone(), write.clone());
        threads.push(cluster.net.spawn_in(CLIENT, move || {
            runtime().block_on(insert_loop(worker, opts, stop, history))
        }));
    }
    {
        let (stop, history, write) = (stop.clone(), history.clone(), write.clone());
        let seed = opts.seed.wrapping_add(1);
        threads.push(cluster.net.spawn_in(CLIENT, move || {
            runtime().block_on(transfer_loop(write, stop, history, seed))
        }));
    }
    {
        let (stop, history) = (stop.clone(), history.clone());
        threads.push(
            cluster
                .net
                .spawn_in(CLIENT, move || runtime().block_on(read_loop(read, stop, history))),
        );
    }
    if opts.topology == Topology::Replication {
        let (stop, history, nodes) = (stop.clone(), history.clone(), nodes.clone());
        threads.push(cluster.net.spawn_in(CLIENT, move || {
            runtime().block_on(sample_read_only(nodes, stop, history))
        }));
    }

    // Faults: one every 10-30 s, each held 5-15 s, then healed.
    let mut rng = StdRng::seed_from_u64(opts.seed);
    let mut summary = Summary::default();
    let deadline = workload_started + opts.time;
    loop {
        let wait = Duration::from_secs(rng.gen_range(10..=30));
        if Instant::now() + wait >= deadline {
            break;
        }
        std::thread::sleep(wait);
        let fault = FAULTS[rng.gen_range(0..FAULTS.len())];
        let host = hosts[rng.gen_range(0..hosts.len())].clone();
        let hold = Duration::from_secs(rng.gen_range(5..=15));
        let at = workload_started.elapsed().as_secs_f64();
        let what = inject(&mut cluster, fault, &host, hold, &mut rng);
        progress(&format!(
            "{at:>5.0} s: {fault:?} ({what}) for {} s",
            hold.as_secs()
        ));
        *summary.faults.entry(format!("{fault:?}")).or_default() += 1;
    }

    // Everything back, then let the workload see the cluster whole for a moment.
    progress("healing; waiting for the whole cluster");
    cluster.net.heal();
    let whole = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        cluster.wait_healthy(Duration::from_secs(300))
    }))
    .is_ok();
    // A node that did not come back is a loss of availability, not of data: it is reported,
    // and the data checks run on the nodes that are healthy.
    let mut checked = nodes.clone();
    if !whole {
        checked.retain(|(h, _)| {
            let status = cluster.status(h);
            let healthy = status.as_ref().is_some_and(|s| s.healthy);
            if !healthy {
                summary.not_back.push(format!(
                    "{h}: {}",
                    status.map_or("agent not answering".to_string(), |s| format!(
                        "{} ({})",
                        s.role, s.reason
                    ))
                ));
            }
            healthy
        });
    }
    let before = history.lock().expect("history").inserts.len();
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        wait_for("inserts after healing", Duration::from_secs(60), || {
            (history.lock().expect("history").inserts.len() > before + 20).then_some(())
        })
    }));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let workload_ended = Instant::now();
    let history = std::mem::take(&mut *history.lock().expect("history"));
    check(
        &cluster,
        &checked,
        &history,
        workload_started,
        workload_ended,
        &mut summary,
    );
    summary.elapsed = started.elapsed();
    summary
}

/// Applies `fault` to `host` for `hold`, then undoes it (restarts what was killed); says
/// where it struck.
fn inject(cluster: &mut HostCluster, fault: Fault, host: &str, hold: Duration, rng: &mut StdRng) -> String {
    let etcd_hosts: Vec<String> = cluster.db_hosts.iter().take(3).cloned().collect();
    match fault {
        Fault::KillMariadbd => {
            cluster.kill(host, Service::Mariadbd);
            std::thread::sleep(hold);
            host.to_string()
        }
        Fault::KillAgent => {
            cluster.kill(host, Service::Agent);
            std::thread::sleep(hold);
            cluster.start_service(host, Service::Agent);
            host.to_string()
        }
        Fault::PauseMariadbd | Fault::PauseAgent => {
            let service = match fault {
                Fault::PauseMariadbd => Service::Mariadbd,
                _ => Service::Agent,
            };
            cluster.pause(host, service, true);
            std::thread::sleep(hold);
            cluster.pause(host, service, false);
            host.to_string()
        }
        Fault::IsolateHost => {
            let others: Vec<&str> = cluster
                .db_hosts
                .iter()
                .filter(|h| *h != host)
                .map(String::as_str)
                .collect();
            cluster.net.partition(&[&[host], &others]);
            std::thread::sleep(hold);
            cluster.net.heal();
            host.to_string()
        }
        Fault::PacketLoss => {
            cluster.net.packet_loss(host, 30);
            std::thread::sleep(hold);
            cluster.net.heal();
            format!("30% on {host}")
        }
        Fault::KillEtcdMember => {
            let member = etcd_hosts[rng.gen_range(0..etcd_hosts.len())].clone();
            cluster.kill(&member, Service::Etcd);
            std::thread::sleep(hold);
            cluster.start_service(&member, Service::Etcd);
            format!("etcd on {member}")
        }
        Fault::StoreQuorumLoss => {
            let spared = rng.gen_range(0..etcd_hosts.len());
            let killed: Vec<String> = etcd_hosts
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != spared)
                .map(|(_, h)| h.clone())
                .collect();
            for h in &killed {
                cluster.kill(h, Service::Etcd);
            }
            std::thread::sleep(hold);
            for h in &killed {
                cluster.start_service(h, Service::Etcd);
            }
            format!("etcd on {}", killed.join(" and "))
        }
    }
}

async fn insert_loop(
    worker: u64,
    opts: mysql_async::OptsBuilder,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) {
    let mut id = worker + 1;
    let mut conn: Option<mysql_async::Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = connect(&opts).await;
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            c.exec_drop("INSERT INTO chaos_ints (id) VALUES (?)", (id,)),
        )
        .await;
        let outcome = outcome_of(&r);
        if outcome != Outcome::Ok {
            conn = None;
        }
        history.lock().expect("history").inserts.push(Insert {
            id,
            completed: Instant::now(),
            outcome,
        });
        id += 2;
    }
}

async fn transfer_loop(
    opts: mysql_async::OptsBuilder,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn: Option<mysql_async::Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = connect(&opts).await;
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let from = rng.gen_range(1..=ACCOUNTS);
        let to = (from % ACCOUNTS) + 1;
        let amount = rng.gen_range(1..=10);
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
        let r = tokio::time::timeout(Duration::from_secs(5), transfer).await;
        let outcome = outcome_of(&r);
        if outcome != Outcome::Ok {
            conn = None;
        }
        let key = match outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        *history.lock().expect("history").transfers.entry(key).or_default() += 1;
    }
}

async fn read_loop(opts: mysql_async::OptsBuilder, stop: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
    let mut conn: Option<mysql_async::Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = conn.as_mut() else {
            conn = connect(&opts).await;
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            c.query_first::<(i64, i64), _>("SELECT CAST(SUM(balance) AS SIGNED), COUNT(*) FROM chaos_bank"),
        )
        .await;
        match r {
            Ok(Ok(Some((total, count)))) => {
                let mut h = history.lock().expect("history");
                h.reads += 1;
                if total != ACCOUNTS * OPENING_BALANCE || count != ACCOUNTS {
                    h.bad_totals.push((total, count));
                }
            }
            _ => conn = None,
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `read_only` on every node, two passes per round: a node writable in both passes of a round
/// in which another was too was writable at the same time as it.
async fn sample_read_only(
    nodes: Vec<(String, mysql_async::OptsBuilder)>,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
) {
    let mut conns: Vec<Option<mysql_async::Conn>> = nodes.iter().map(|_| None).collect();
    while !stop.load(Ordering::Relaxed) {
        let mut both = vec![true; nodes.len()];
        for _pass in 0..2 {
            for (i, (_, opts)) in nodes.iter().enumerate() {
                both[i] &= crate::read_only_off(&mut conns[i], opts).await;
            }
        }
        let writable: Vec<String> = nodes
            .iter()
            .zip(&both)
            .filter(|(_, w)| **w)
            .map(|((n, _), _)| n.clone())
            .collect();
        {
            let mut h = history.lock().expect("history");
            h.sample_rounds += 1;
            if writable.len() > 1 {
                h.two_writable.push(writable);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads every node's ids and balances (waiting up to a minute for replicas to catch up) and
/// records every violation in `summary`.
fn check(
    cluster: &HostCluster,
    nodes: &[(String, mysql_async::OptsBuilder)],
    history: &History,
    from: Instant,
    to: Instant,
    summary: &mut Summary,
) {
    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut sent = BTreeSet::new();
    for i in &history.inserts {
        sent.insert(i.id);
        match i.outcome {
            Outcome::Ok => acked.insert(i.id),
            Outcome::Failed => refused.insert(i.id),
            Outcome::Unknown => false,
        };
        let key = match i.outcome {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        *summary.inserts.entry(key).or_default() += 1;
    }
    summary.transfers = history.transfers.clone();
    summary.reads = history.reads;
    summary.read_only_samples = history.sample_rounds;

    // the longest stretch without an acknowledged insert
    let mut times: Vec<Instant> = history
        .inserts
        .iter()
        .filter(|i| i.outcome == Outcome::Ok)
        .map(|i| i.completed)
        .collect();
    times.sort();
    let mut last = from;
    for t in times.iter().chain([&to]) {
        summary.longest_write_gap = summary.longest_write_gap.max(t.saturating_duration_since(last));
        last = *t;
    }

    if !history.bad_totals.is_empty() {
        summary.violations.push(format!(
            "{} reads saw a total other than {} over {ACCOUNTS} accounts, first (total, accounts) = {:?}",
            history.bad_totals.len(),
            ACCOUNTS * OPENING_BALANCE,
            history.bad_totals[0]
        ));
    }
    for w in history.two_writable.iter().take(5) {
        summary.violations.push(format!(
            "nodes {} were writable at the same time",
            w.join(" and ")
        ));
    }

    for (name, opts) in nodes {
        let opts = opts.clone();
        let acked2 = acked.clone();
        let state = cluster.net.run_in(CLIENT, move || {
            runtime().block_on(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    let read = async {
                        let mut c = connect(&opts).await?;
                        let ids: Vec<u64> = c.query("SELECT id FROM chaos_ints").await.ok()?;
                        let total: Option<i64> = c
                            .query_first("SELECT CAST(SUM(balance) AS SIGNED) FROM chaos_bank")
                            .await
                            .ok()?;
                        Some((ids.into_iter().collect::<BTreeSet<u64>>(), total.unwrap_or(0)))
                    };
                    let got = read.await;
                    let complete = got.as_ref().is_some_and(|(ids, _)| acked2.is_subset(ids));
                    if complete || Instant::now() >= deadline {
                        return got;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        });
        let Some((ids, total)) = state else {
            summary
                .violations
                .push(format!("{name} could not be read after the run"));
            continue;
        };
        let lost: Vec<&u64> = acked.difference(&ids).collect();
        if !lost.is_empty() {
            summary.violations.push(format!(
                "{name} lacks {} acknowledged inserts (first ids {:?})",
                lost.len(),
                &lost[..lost.len().min(5)]
            ));
        }
        let phantom: Vec<&u64> = ids.difference(&sent).collect();
        if !phantom.is_empty() {
            summary.violations.push(format!(
                "{name} holds {} ids no client sent (first {:?})",
                phantom.len(),
                &phantom[..phantom.len().min(5)]
            ));
        }
        let undone: Vec<&u64> = ids.intersection(&refused).collect();
        if !undone.is_empty() {
            summary.violations.push(format!(
                "{name} holds {} inserts the server refused (first {:?})",
                undone.len(),
                &undone[..undone.len().min(5)]
            ));
        }
        if total != ACCOUNTS * OPENING_BALANCE {
            summary.violations.push(format!(
                "{name} ends with a total balance of {total}, not {}",
                ACCOUNTS * OPENING_BALANCE
            ));
        }
    }
}
