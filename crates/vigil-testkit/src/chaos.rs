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

use crate::hosts::{
    connected, runtime, HostCluster, Insert, Inserts, Outcome, Service, CLIENT, PROXY_READ_PORT,
    PROXY_WRITE_PORT,
};
use crate::{app_opts, wait_for, watch_writable, WatchReport};

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

/// What the transfer and read clients saw (the inserts keep their own record).
#[derive(Debug, Default)]
struct History {
    transfers: BTreeMap<&'static str, u64>,
    reads: u64,
    bad_totals: Vec<(i64, i64)>,
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
    /// Where the hosts' logs and datadirs were kept, when there were violations.
    pub kept: Option<std::path::PathBuf>,
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
        if let Some(dir) = &self.kept {
            writeln!(f, "the hosts' logs and datadirs are kept in {}", dir.display())?;
        }
        Ok(())
    }
}

/// Runs a chaos scenario and checks it. Panics only if the test hosts cannot be built.
pub fn run(vigil: &std::path::Path, opts: &ChaosOptions, progress: impl Fn(&str)) -> Summary {
    let started = Instant::now();
    let mut cluster = HostCluster::start_with(vigil, opts.topology, 3, |c| {
        // replication promises no lost acknowledged write only with semi-sync; an old
        // primary with writes nobody acknowledged is re-cloned, its datadir kept aside
        if let Some(r) = c.replication.as_mut() {
            r.durability = Durability::Semisync;
            r.auto_reclone = true;
        }
    });
    progress("hosts built; waiting for the cluster");
    cluster.wait_healthy(Duration::from_secs(400));
    let hosts = cluster.db_hosts.clone();
    let proxy = cluster.net.host(CLIENT).addr.to_string();
    let password = cluster.app_password();
    let write = app_opts(&proxy, PROXY_WRITE_PORT, &password);
    let read = app_opts(&proxy, PROXY_READ_PORT, &password);

    // Tables, then wait until every node has the accounts.
    let accounts = (1..=ACCOUNTS)
        .map(|i| format!("({i}, {OPENING_BALANCE})"))
        .collect::<Vec<_>>()
        .join(",");
    for sql in [
        // epoch: the primary's epoch each insert was stamped with (replication only)
        "CREATE TABLE chaos_ints (id BIGINT PRIMARY KEY, epoch BIGINT UNSIGNED NULL)".to_string(),
        "CREATE TABLE chaos_bank (id INT PRIMARY KEY, balance BIGINT NOT NULL)".into(),
        format!("INSERT INTO chaos_bank VALUES {accounts}"),
    ] {
        if let Err(e) = cluster.query(&proxy, PROXY_WRITE_PORT, &sql) {
            panic!("set up the workload's tables: {sql}: {e}");
        }
    }
    for h in &hosts {
        let n = cluster.config.node(h).expect("node");
        wait_for(
            &format!("{h} to have the accounts"),
            Duration::from_secs(60),
            || {
                let count = cluster.query(&n.host, n.sql_port, "SELECT COUNT(*) FROM chaos_bank");
                (count.ok()? == [ACCOUNTS.to_string()]).then_some(())
            },
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let history = Arc::new(Mutex::new(History::default()));
    let workload_started = Instant::now();
    // two insert clients: odd and even ids
    let inserts = [
        Inserts::start(&cluster, "chaos_ints", 1, 2),
        Inserts::start(&cluster, "chaos_ints", 2, 2),
    ];
    let mut threads = Vec::new();
    {
        let (stop, history) = (stop.clone(), history.clone());
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
    let watch = (opts.topology == Topology::Replication).then(|| {
        let stop = stop.clone();
        let nodes: Vec<(String, mysql_async::OptsBuilder)> = hosts
            .iter()
            .map(|h| {
                let n = cluster.config.node(h).expect("node");
                (h.clone(), app_opts(&n.host, n.sql_port, &password))
            })
            .collect();
        cluster.net.spawn_in(CLIENT, move || {
            runtime().block_on(watch_writable(nodes, stop, Duration::from_millis(20)))
        })
    });

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
    let mut checked = hosts.clone();
    if !whole {
        checked.retain(|h| {
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
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        inserts[0].wait_for_more(20, Duration::from_secs(60), "inserts after healing")
    }));
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    let watched = watch.map(|t| t.join().expect("read_only watch"));
    let sent: Vec<Insert> = inserts.into_iter().flat_map(Inserts::stop).collect();
    let workload_ended = Instant::now();
    let history = std::mem::take(&mut *history.lock().expect("history"));
    let run = Run {
        inserts: &sent,
        history: &history,
        watched: watched.as_ref(),
        from: workload_started,
        to: workload_ended,
    };
    check(&cluster, &checked, &run, &mut summary);
    if !summary.violations.is_empty() {
        summary.kept = Some(cluster.keep_files());
    }
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

async fn transfer_loop(
    opts: mysql_async::OptsBuilder,
    stop: Arc<AtomicBool>,
    history: Arc<Mutex<History>>,
    seed: u64,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = connected(&mut conn, &opts).await else {
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
        let outcome = Outcome::of(&r);
        if outcome != Outcome::Ok {
            conn = None;
        }
        *history
            .lock()
            .expect("history")
            .transfers
            .entry(outcome.word())
            .or_default() += 1;
    }
}

async fn read_loop(opts: mysql_async::OptsBuilder, stop: Arc<AtomicBool>, history: Arc<Mutex<History>>) {
    let mut conn = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = connected(&mut conn, &opts).await else {
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

/// Everything the workload recorded.
struct Run<'a> {
    inserts: &'a [Insert],
    history: &'a History,
    /// The `read_only` watch (replication only).
    watched: Option<&'a WatchReport>,
    from: Instant,
    to: Instant,
}

/// Reads every node's ids and balances (waiting up to a minute for replicas to catch up) and
/// records every violation in `summary`.
fn check(cluster: &HostCluster, nodes: &[String], run: &Run, summary: &mut Summary) {
    let mut acked = BTreeSet::new();
    let mut refused = BTreeSet::new();
    let mut sent = BTreeSet::new();
    for i in run.inserts {
        sent.insert(i.id);
        match i.outcome {
            Outcome::Ok => acked.insert(i.id),
            Outcome::Failed => refused.insert(i.id),
            Outcome::Unknown => false,
        };
        *summary.inserts.entry(i.outcome.word()).or_default() += 1;
    }
    let history = run.history;
    summary.transfers = history.transfers.clone();
    summary.reads = history.reads;

    // the longest stretch without an acknowledged insert
    let mut times: Vec<Instant> = run
        .inserts
        .iter()
        .filter(|i| i.outcome == Outcome::Ok)
        .map(|i| i.completed)
        .collect();
    times.sort();
    let mut last = run.from;
    for t in times.iter().chain([&run.to]) {
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
    if let Some(w) = run.watched {
        summary.read_only_samples = w.rounds;
        for (nodes, at) in w.violations.iter().take(5) {
            summary.violations.push(format!(
                "nodes {} were writable at the same time (a sampling round that ended at {} UTC)",
                nodes.join(" and "),
                time_of_day(*at)
            ));
        }
    }

    let mut epochs_checked = false;
    for name in nodes {
        let n = cluster.config.node(name).expect("node");
        let read = || -> Option<(BTreeSet<u64>, i64)> {
            let ids = cluster
                .query(&n.host, n.sql_port, "SELECT id FROM chaos_ints")
                .ok()?;
            let ids = ids
                .iter()
                .map(|s| s.parse().ok())
                .collect::<Option<BTreeSet<u64>>>()?;
            let total = cluster
                .query(
                    &n.host,
                    n.sql_port,
                    "SELECT CAST(SUM(balance) AS SIGNED) FROM chaos_bank",
                )
                .ok()?;
            Some((ids, total.first().and_then(|t| t.parse().ok()).unwrap_or(0)))
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = loop {
            let got = read();
            if got.as_ref().is_some_and(|(ids, _)| acked.is_subset(ids)) || Instant::now() >= deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let Some((ids, total)) = state else {
            summary
                .violations
                .push(format!("{name} could not be read after the run"));
            continue;
        };
        let mut found = |what: &str, ids: Vec<&u64>| {
            if !ids.is_empty() {
                summary.violations.push(format!(
                    "{name} {what}: {} (first ids {:?})",
                    ids.len(),
                    &ids[..ids.len().min(5)]
                ));
            }
        };
        found("lacks acknowledged inserts", acked.difference(&ids).collect());
        found("holds ids no client sent", ids.difference(&sent).collect());
        found(
            "holds inserts the server refused",
            ids.intersection(&refused).collect(),
        );
        if total != ACCOUNTS * OPENING_BALANCE {
            summary.violations.push(format!(
                "{name} ends with a total balance of {total}, not {}",
                ACCOUNTS * OPENING_BALANCE
            ));
        }
        if run.watched.is_some() && !epochs_checked {
            epochs_checked = true;
            check_epochs(cluster, n, run.inserts, summary);
        }
    }
}

/// Replication: every acknowledged insert carries the epoch of the primary that wrote it. One
/// written under an older epoch after an insert under a newer one was acknowledged means two
/// primaries took writes.
fn check_epochs(
    cluster: &HostCluster,
    node: &vigil_core::config::NodeConfig,
    inserts: &[Insert],
    summary: &mut Summary,
) {
    let rows = match cluster.query(
        &node.host,
        node.sql_port,
        "SELECT CONCAT(id, ' ', IFNULL(epoch, 0)) FROM chaos_ints",
    ) {
        Ok(rows) => rows,
        Err(e) => {
            summary
                .violations
                .push(format!("{}: cannot read the inserts' epochs: {e}", node.name));
            return;
        }
    };
    let epochs: std::collections::HashMap<u64, u64> = rows
        .iter()
        .filter_map(|r| {
            let (id, epoch) = r.split_once(' ')?;
            Some((id.parse().ok()?, epoch.parse().ok()?))
        })
        .collect();
    let acked: Vec<Stamped> = inserts
        .iter()
        .filter(|i| i.outcome == Outcome::Ok)
        .filter_map(|i| {
            Some(Stamped {
                id: i.id,
                sent: i.sent,
                completed: i.completed,
                epoch: *epochs.get(&i.id)?,
            })
        })
        .collect();
    let stale = stale_epoch_writes(&acked);
    if let Some((id, epoch, before, newer)) = stale.first() {
        summary.violations.push(format!(
            "{} inserts were written under an older epoch after one under a newer epoch was \
             acknowledged (two primaries took writes); first: id {id} under epoch {epoch} after \
             id {before} under epoch {newer}",
            stale.len()
        ));
    }
    if let Some(unstamped) = acked.iter().find(|s| s.epoch == 0) {
        summary.violations.push(format!(
            "insert {} was acknowledged without an epoch",
            unstamped.id
        ));
    }
}

/// An acknowledged insert and the epoch it was written under.
struct Stamped {
    id: u64,
    sent: Instant,
    completed: Instant,
    epoch: u64,
}

/// The inserts sent after another was acknowledged under a newer epoch, but written under an
/// older one: (id, its epoch, the earlier id, the newer epoch).
fn stale_epoch_writes(acked: &[Stamped]) -> Vec<(u64, u64, u64, u64)> {
    let mut by_completed: Vec<&Stamped> = acked.iter().collect();
    by_completed.sort_by_key(|s| s.completed);
    let mut by_sent: Vec<&Stamped> = acked.iter().collect();
    by_sent.sort_by_key(|s| s.sent);
    let mut newest: Option<&Stamped> = None;
    let mut done = by_completed.into_iter().peekable();
    let mut stale = Vec::new();
    for w in by_sent {
        while let Some(d) = done.next_if(|d| d.completed < w.sent) {
            if newest.is_none_or(|n| d.epoch > n.epoch) {
                newest = Some(d);
            }
        }
        if let Some(n) = newest.filter(|n| w.epoch < n.epoch) {
            stale.push((w.id, w.epoch, n.id, n.epoch));
        }
    }
    stale
}

/// `HH:MM:SS.mmm` of a moment, UTC: to find it in the hosts' logs.
fn time_of_day(at: std::time::SystemTime) -> String {
    let ms = at
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
        % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_under_an_older_epoch_after_a_newer_one_was_acknowledged_is_found() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let w = |id, sent, completed, epoch| Stamped {
            id,
            sent: at(sent),
            completed: at(completed),
            epoch,
        };
        // a failover from epoch 3 to 4, writes in order: nothing stale
        let clean = [w(1, 0, 10, 3), w(2, 10, 20, 3), w(3, 30, 40, 4), w(4, 40, 50, 4)];
        assert!(stale_epoch_writes(&clean).is_empty());
        // overlapping writes across the failover are not ordered: not stale either
        let overlap = [w(1, 0, 50, 3), w(2, 10, 20, 4), w(3, 15, 60, 3)];
        assert!(stale_epoch_writes(&overlap).is_empty());
        // epoch 3 still took a write sent after an epoch-4 write was acknowledged
        let split = [w(1, 0, 10, 3), w(2, 10, 20, 4), w(3, 25, 30, 3), w(4, 30, 35, 4)];
        assert_eq!(stale_epoch_writes(&split), vec![(3, 3, 2, 4)]);
    }
}
