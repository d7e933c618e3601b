//! `vigil chaos`: a [`HostCluster`] under a client workload and faults of every kind, and a
//! checker that fails a run on any broken promise and on any claim the run could not prove.
//!
//! ```text
//!   schedule (seeded round-robin of every kind) ──► faults: apply, verify, hold, undo, verify
//!   workload (through the proxy) ─────────────────► history: every operation, sent/answered
//!   timeline (proxy routes, agents' status) ──────►          what vigil knew, when
//!   heal, wait for every node, final reads ───────►          what each node holds
//!                                       history ──► check (violations), outage (per fault)
//! ```
//!
//! The pieces: [`schedule`] (pure), [`faults`] (on the hosts), [`workload`] and [`timeline`]
//! (threads on the client host), [`history`] (what was recorded), [`check`] and [`outage`]
//! (pure judgements of a history), [`logs`] (every run's logs, kept compressed).

pub mod check;
pub mod faults;
pub mod history;
pub mod logs;
pub mod outage;
pub mod schedule;
pub mod timeline;
pub mod workload;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use vigil_core::config::{Durability, Topology};

use crate::hosts::{runtime, HostCluster, CLIENT, PROXY_WRITE_PORT};
use crate::wait_for;
use check::{Expectations, Violation, ACCOUNTS};
use history::{FaultRecord, History, NodeData, Outcome, Skipped, Stamp, Write};
pub use schedule::Fault;

#[derive(Debug, Clone)]
pub struct ChaosOptions {
    pub topology: Topology,
    /// How long faults are injected.
    pub time: Duration,
    pub seed: u64,
    /// Faults per minute, on average (see [`schedule::Schedule::new`]).
    pub rate: f64,
    /// How long every node has to come back after the last heal.
    pub heal_timeout: Duration,
    /// Where every run's logs are archived, and how many runs are kept there.
    pub logs: PathBuf,
    pub keep_runs: usize,
    /// Inserts that must be acknowledged after the last heal.
    pub acks_after_heal: usize,
    /// Lab only: hold this node stopped (`vigil node hold`) through the heal, to show that a
    /// cluster that does not come back fails the run.
    pub hold_through_heal: Option<String>,
    /// Set (by a signal handler) to end the run early: the fault in progress is undone, the
    /// clients stop, the logs are kept, nothing is checked and the run fails.
    pub interrupt: Option<&'static AtomicBool>,
}

impl ChaosOptions {
    pub fn new(topology: Topology, time: Duration, seed: u64) -> ChaosOptions {
        ChaosOptions {
            topology,
            time,
            seed,
            rate: 2.0,
            heal_timeout: Duration::from_secs(300),
            logs: default_logs_dir(),
            keep_runs: 10,
            acks_after_heal: 200,
            hold_through_heal: None,
            interrupt: None,
        }
    }

    fn interrupted(&self) -> bool {
        self.interrupt.is_some_and(|i| i.load(Ordering::Relaxed))
    }

    /// Sleeps `d`, or less if the run is interrupted meanwhile; whether it slept it all.
    fn pause(&self, d: Duration) -> bool {
        let until = Instant::now() + d;
        while !self.interrupted() {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(100)));
        }
        false
    }
}

/// `/var/tmp/vigil-chaos`: kept across reboots, outside any test's temporary directory.
pub fn default_logs_dir() -> PathBuf {
    PathBuf::from("/var/tmp/vigil-chaos")
}

/// What a chaos run did and found.
#[derive(Debug)]
pub struct Summary {
    pub history: History,
    pub episodes: Vec<outage::Episode>,
    /// Every violation, one sentence each. Must be empty.
    pub violations: Vec<Violation>,
    pub elapsed: Duration,
    /// Where this run's logs were archived (or why they could not be).
    pub logs: Result<PathBuf, String>,
}

impl Summary {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// Which episode a moment falls in.
    fn episode_at(&self, at: Duration) -> Option<&outage::Episode> {
        self.episodes
            .iter()
            .rev()
            .find(|e| self.history.faults[e.fault].start <= at)
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

fn counts(writes: &[Write]) -> String {
    let n = |o| writes.iter().filter(|w| w.outcome == o).count();
    format!(
        "{} ok, {} failed, {} unknown",
        n(Outcome::Ok),
        n(Outcome::Failed),
        n(Outcome::Unknown)
    )
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = &self.history;
        writeln!(f, "faults injected: {}", h.faults.len())?;
        for e in &self.episodes {
            let r = &h.faults[e.fault];
            writeln!(
                f,
                "  {:>6.1} s  {:?} {}{} for {}: outage {} (first write {} after the fault, {} after its end){}",
                r.start.as_secs_f64(),
                r.kind,
                r.hosts.join("+"),
                if r.hit_writer { " (writer)" } else { "" },
                secs(r.end - r.start),
                secs(e.outage),
                e.after_fault.map_or("none".into(), secs),
                e.after_heal.map_or("none".into(), secs),
                if e.outage >= Duration::from_secs(1) {
                    format!(": {}", e.explain())
                } else {
                    String::new()
                }
            )?;
        }
        for s in &h.skipped {
            writeln!(
                f,
                "  {:>6.1} s  {:?} not applied: {}",
                s.at.as_secs_f64(),
                s.kind,
                s.why
            )?;
        }
        writeln!(f, "inserts: {}", counts(&h.inserts))?;
        writeln!(f, "increments: {}", counts(&h.increments))?;
        writeln!(f, "transfers: {}", counts(&h.transfers))?;
        writeln!(
            f,
            "read-your-writes checks: {} ({} without a verdict)",
            h.read_backs.len(),
            h.read_backs.iter().filter(|r| r.seen.is_none()).count()
        )?;
        writeln!(f, "read-port reads: {}", h.read_port.reads)?;
        if let Some(w) = &h.writable {
            writeln!(
                f,
                "read_only sample rounds: {} ({} reached every node)",
                w.rounds, w.full_rounds
            )?;
        }
        let after_heal = h
            .inserts
            .iter()
            .filter(|w| w.outcome == Outcome::Ok && w.sent >= h.ending.healed)
            .count();
        writeln!(f, "inserts acknowledged after the last heal: {after_heal}")?;
        for (node, why) in &h.ending.not_back {
            writeln!(f, "not back after the heal: {node}: {why}")?;
        }
        writeln!(
            f,
            "| fault | count | on the writer | median outage | max outage | target | violations |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|")?;
        let kinds = outage::by_kind(&self.episodes);
        for (kind, (n, median, max)) in &kinds {
            let on_writer = self
                .episodes
                .iter()
                .filter(|e| e.kind == *kind && e.hit_writer)
                .count();
            let violations = self
                .violations
                .iter()
                .filter(|v| {
                    v.at.and_then(|t| self.episode_at(t))
                        .is_some_and(|e| e.kind == *kind)
                })
                .count();
            writeln!(
                f,
                "| {kind:?} | {n} | {on_writer} | {} | {} | < {} | {violations} |",
                secs(*median),
                secs(*max),
                secs(outage::target(*kind))
            )?;
        }
        let missing: Vec<String> = Fault::ALL
            .iter()
            .filter(|k| !kinds.contains_key(k))
            .map(|k| format!("{k:?}"))
            .collect();
        if !missing.is_empty() {
            writeln!(f, "fault kinds not injected: {}", missing.join(", "))?;
        }
        let longest = self.episodes.iter().map(|e| e.outage).max().unwrap_or_default();
        writeln!(f, "longest write outage: {}", secs(longest))?;
        writeln!(f, "violations: {}", self.violations.len())?;
        for v in &self.violations {
            writeln!(f, "  {v}")?;
        }
        match &self.logs {
            Ok(p) => writeln!(f, "logs kept in {}", p.display())?,
            Err(e) => writeln!(f, "logs NOT kept: {e}")?,
        }
        writeln!(f, "elapsed: {}", secs(self.elapsed))
    }
}

/// Every outage over its target that vigil could not explain.
fn unexplained(h: &History, episodes: &[outage::Episode]) -> Vec<Violation> {
    episodes
        .iter()
        .filter(|e| e.outage > outage::target(e.kind))
        .filter(|e| !e.cause().is_some_and(outage::Phase::explained))
        .map(|e| Violation {
            at: Some(e.gap.0),
            what: format!(
                "{:?} on {}: a write outage of {} (target {}) that vigil cannot explain: {}",
                e.kind,
                h.faults[e.fault].hosts.join("+"),
                secs(e.outage),
                secs(outage::target(e.kind)),
                e.explain()
            ),
        })
        .collect()
}

/// How many times in a row a kind may fail to apply before the run gives up on it.
const MAX_SKIPS: u32 = 5;

/// Runs a chaos scenario and checks it. Panics only if the test hosts cannot be built.
pub fn run(vigil: &std::path::Path, opts: &ChaosOptions, progress: impl Fn(&str)) -> Summary {
    let started = Instant::now();
    let replication = opts.topology == Topology::Replication;
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
    let etcd: Vec<String> = hosts.iter().take(3).cloned().collect();
    let proxy = cluster.net.host(CLIENT).addr.to_string();
    for sql in workload::schema(replication) {
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

    let t0 = Instant::now();
    let t0_wall = std::time::SystemTime::now();
    let clients = workload::Clients::start(&cluster, t0, opts.seed);
    let timeline = timeline::Timeline::start(&cluster, t0);
    let mut schedule = schedule::Schedule::new(opts.seed, opts.rate);
    let mut faults: Vec<FaultRecord> = Vec::new();
    let mut skipped: Vec<Skipped> = Vec::new();
    let mut skips_in_a_row = 0;
    let mut abandoned: Vec<Fault> = Vec::new();
    let deadline = t0 + opts.time;
    loop {
        let gap = schedule.gap();
        if Instant::now() + gap >= deadline || !opts.pause(gap) {
            break;
        }
        let writer = cluster.proxy_writer();
        let planned = schedule.next(&hosts, &etcd, writer.as_deref());
        if abandoned.contains(&planned.kind) {
            schedule.applied(&planned);
            continue;
        }
        // The fault starts when it starts being applied (rules and signals take a moment).
        let start = t0.elapsed();
        match faults::apply(&mut cluster, planned.kind, &planned.hosts) {
            Ok(applied) => {
                skips_in_a_row = 0;
                schedule.applied(&planned);
                progress(&format!(
                    "{:>6.1} s: {:?} on {}{} for {}: {}",
                    start.as_secs_f64(),
                    planned.kind,
                    planned.hosts.join("+"),
                    if planned.hit_writer { " (writer)" } else { "" },
                    secs(planned.hold),
                    applied.evidence
                ));
                // An interruption ends the hold early; the fault is undone either way.
                opts.pause(planned.hold);
                let end = t0.elapsed();
                let evidence = faults::undo(&mut cluster, applied);
                faults.push(FaultRecord {
                    kind: planned.kind,
                    hosts: planned.hosts.clone(),
                    hit_writer: planned.hit_writer,
                    start,
                    end,
                    evidence,
                });
            }
            Err(why) => {
                progress(&format!(
                    "{:>6.1} s: {:?} on {} not applied: {why}",
                    t0.elapsed().as_secs_f64(),
                    planned.kind,
                    planned.hosts.join("+")
                ));
                skipped.push(Skipped {
                    kind: planned.kind,
                    at: t0.elapsed(),
                    why,
                });
                skips_in_a_row += 1;
                if skips_in_a_row >= MAX_SKIPS {
                    abandoned.push(planned.kind);
                    schedule.applied(&planned);
                    skips_in_a_row = 0;
                } else {
                    schedule.skipped(&planned);
                }
            }
        }
    }

    let interrupted = opts.interrupted();
    let (healed, not_back) = if interrupted {
        progress("interrupted: healing, stopping the clients, keeping the logs; nothing is checked");
        cluster.net.heal();
        (None, Vec::new())
    } else {
        let (healed, not_back) = heal(&cluster, opts, &hosts, t0, &progress);
        let wait_writes = Instant::now() + Duration::from_secs(60);
        while clients.acked_inserts_since(healed) < opts.acks_after_heal && Instant::now() < wait_writes {
            std::thread::sleep(Duration::from_millis(100));
        }
        (Some(healed), not_back)
    };
    let mut history = clients.stop();
    let stopped = t0.elapsed();
    let (samples, blind) = timeline.stop();
    history
        .panicked
        .extend(blind.into_iter().map(|s| format!("{s} panicked")));
    history.nodes = hosts.clone();
    history.faults = faults;
    history.skipped = skipped;
    history.timeline = samples;
    history.ending = history::Ending {
        // An interrupted run counts no write as after the heal.
        healed: healed.unwrap_or(stopped),
        not_back,
        finals: if interrupted {
            Vec::new()
        } else {
            final_reads(&cluster, replication)
        },
    };
    history.stopped = stopped;
    if interrupted {
        let what = format!(
            "the run was interrupted after {} faults: nothing was checked",
            history.faults.len()
        );
        let summary = Summary {
            history,
            episodes: Vec::new(),
            violations: vec![Violation { at: None, what }],
            elapsed: started.elapsed(),
            logs: Err("not archived yet".into()),
        };
        return archived(summary, &cluster, opts, t0_wall);
    }
    let mut violations = check::check(
        &history,
        &Expectations {
            acks_after_heal: opts.acks_after_heal,
        },
    );
    let episodes = outage::episodes(&history);
    violations.extend(unexplained(&history, &episodes));
    for kind in &abandoned {
        violations.push(Violation {
            at: None,
            what: format!(
                "{kind:?} could not be applied {MAX_SKIPS} times in a row: the run lacks that fault"
            ),
        });
    }
    if history.faults.len() >= Fault::ALL.len() {
        for kind in Fault::ALL {
            if !history.faults.iter().any(|f| f.kind == kind) && !abandoned.contains(&kind) {
                violations.push(Violation {
                    at: None,
                    what: format!(
                        "no {kind:?} fault took effect in a run of {} faults",
                        history.faults.len()
                    ),
                });
            }
        }
    }
    let summary = Summary {
        history,
        episodes,
        violations,
        elapsed: started.elapsed(),
        logs: Err("not archived yet".into()),
    };
    archived(summary, &cluster, opts, t0_wall)
}

/// Heals every fault, holds `opts.hold_through_heal` down, and waits up to the heal timeout
/// for every node to be back. Returns when the heal was done (since `t0`) and each node that
/// was not back, with why.
fn heal(
    cluster: &HostCluster,
    opts: &ChaosOptions,
    hosts: &[String],
    t0: Instant,
    progress: &impl Fn(&str),
) -> (Duration, Vec<(String, String)>) {
    progress("healing; waiting for every node");
    cluster.net.heal();
    if let Some(node) = &opts.hold_through_heal {
        let (ok, out, err) = cluster.cli(&["node", "hold", node]);
        progress(&format!(
            "held {node} through the heal: {}{}",
            out.trim(),
            err.trim()
        ));
        assert!(ok, "vigil node hold {node}: {out}{err}");
        // The agent stops its server at its next turn; the check below must not see the
        // cluster whole before it has.
        wait_for(
            &format!("{node} to be held stopped"),
            Duration::from_secs(60),
            || cluster.status(node).filter(|s| s.held && !s.healthy).map(|_| ()),
        );
    }
    let healed = t0.elapsed();
    let whole = cluster.healthy_within(opts.heal_timeout).is_ok();
    // A node is not back when it is not healthy; a healthy node in a cluster still short of a
    // member is fine itself (the missing member is the one named).
    let mut not_back = Vec::new();
    if !whole {
        for h in hosts {
            match cluster.status(h) {
                Some(s) if s.healthy => {}
                Some(s) => not_back.push((h.to_string(), format!("{} {} ({})", s.role, s.state, s.reason))),
                None => not_back.push((h.to_string(), "its agent does not answer".into())),
            }
        }
        if not_back.is_empty() {
            not_back.push((
                "the cluster".into(),
                "every node healthy, but not every node in one cluster".into(),
            ));
        }
    }
    progress(&format!(
        "{}; waiting for {} inserts after the heal",
        if whole {
            "every node is back"
        } else {
            "NOT every node is back"
        },
        opts.acks_after_heal
    ));
    (healed, not_back)
}

/// `summary` with the run's logs archived, its report included.
fn archived(
    mut summary: Summary,
    cluster: &HostCluster,
    opts: &ChaosOptions,
    t0_wall: std::time::SystemTime,
) -> Summary {
    let name = format!(
        "{}-{}-seed{}-{}",
        wall_stamp(),
        opts.topology,
        opts.seed,
        if summary.passed() { "passed" } else { "failed" }
    );
    let report = format!(
        "vigil chaos --topology {} --time {} --rate {} --seed {}\n\n{summary}\n{}",
        opts.topology,
        opts.time.as_secs(),
        opts.rate,
        opts.seed,
        timeline_text(&summary.history, t0_wall)
    );
    summary.logs =
        logs::keep(cluster.path(), &report, &opts.logs, &name, opts.keep_runs).map_err(|e| e.to_string());
    summary
}

/// `YYYYMMDD-HHMMSS` (UTC) now: archives sort by time.
fn wall_stamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let (date, time) = civil(now.as_secs());
    format!("{date}-{}", time.replace(':', ""))
}

/// `YYYY-MM-DD HH:MM:SS.mmm` of a moment since the Unix epoch, UTC.
fn wall_clock(at: Duration) -> String {
    let (date, time) = civil(at.as_secs());
    format!(
        "{}-{}-{} {time}.{:03}",
        &date[..4],
        &date[4..6],
        &date[6..],
        at.subsec_millis()
    )
}

/// (`YYYYMMDD`, `HH:MM:SS`) of `s` seconds since the Unix epoch, UTC.
fn civil(s: u64) -> (String, String) {
    let (days, rem) = (s / 86_400, s % 86_400);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        format!("{y:04}{m:02}{d:02}"),
        format!("{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60),
    )
}

/// The run's timeline, one change per line, with the faults and the long gaps between writes:
/// what an operator reads to explain a window.
fn timeline_text(h: &History, t0: std::time::SystemTime) -> String {
    let mut events: Vec<(Duration, String)> = Vec::new();
    for s in &h.timeline {
        let line = match s {
            history::Sample::Proxy { seen: None, .. } => "proxy: no answer".to_string(),
            history::Sample::Proxy { seen: Some(p), .. } => format!(
                "proxy: writer {} readers [{}]{}{}",
                p.writer.as_deref().unwrap_or("-"),
                p.readers.join(","),
                if p.writes_accepted {
                    ""
                } else {
                    " WRITES REFUSED (stale)"
                },
                if p.blacklisted.is_empty() {
                    String::new()
                } else {
                    format!(" blacklisted [{}]", p.blacklisted.join(","))
                }
            ),
            history::Sample::Agent { node, seen: None, .. } => format!("{node}: no answer"),
            history::Sample::Agent {
                node, seen: Some(a), ..
            } => format!(
                "{node}: {} {} {} size {} view {}{}",
                a.role,
                if a.healthy { "healthy" } else { "unhealthy" },
                a.state,
                a.cluster_size,
                a.view,
                if a.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", a.reason)
                }
            ),
        };
        events.push((s.at(), line));
    }
    for f in &h.faults {
        events.push((
            f.start,
            format!("FAULT {:?} on {}: {}", f.kind, f.hosts.join("+"), f.evidence),
        ));
        events.push((f.end, format!("END of {:?} on {}", f.kind, f.hosts.join("+"))));
    }
    let acks = h.write_acks();
    let kinds: [(&str, &[Write]); 3] = [
        ("insert", &h.inserts),
        ("increment", &h.increments),
        ("transfer", &h.transfers),
    ];
    for w in acks.windows(2) {
        let (from, to) = (w[0], w[1]);
        if to - from < Duration::from_millis(1000) {
            continue;
        }
        events.push((from, format!("no write acknowledged for {}", secs(to - from))));
        // what the clients were doing meanwhile
        let failed_connects = h
            .connect_failures
            .iter()
            .filter(|t| **t > from && **t < to)
            .count();
        if failed_connects > 0 {
            events.push((
                from,
                format!("  {failed_connects} connections through the proxy could not be opened meanwhile"),
            ));
        }
        for (kind, writes) in kinds {
            for op in writes
                .iter()
                .filter(|op| op.done > from && op.sent < to && op.outcome != Outcome::Ok)
            {
                events.push((
                    op.sent,
                    format!(
                        "  {kind} client {}: {} {} after {:.3} s: {}",
                        op.client,
                        op.key,
                        op.outcome.word(),
                        (op.done - op.sent).as_secs_f64(),
                        op.error
                    ),
                ));
            }
            for op in writes
                .iter()
                .filter(|op| op.sent < to && op.done >= to && op.outcome == Outcome::Ok)
            {
                events.push((
                    op.sent,
                    format!(
                        "  {kind} client {}: {} sent, acknowledged {:.3} s later",
                        op.client,
                        op.key,
                        (op.done - op.sent).as_secs_f64()
                    ),
                ));
            }
        }
    }
    events.push((h.ending.healed, "HEALED".into()));
    events.sort_by_key(|(t, _)| *t);
    let at = t0.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut out = format!(
        "timeline (seconds since the workload started, at {} UTC; the logs' times are UTC):\n",
        wall_clock(at)
    );
    for (t, line) in events {
        let _ = writeln!(out, "{:>9.3} {line}", t.as_secs_f64());
    }
    out
}

/// Each node's data once it has caught up (Galera: a causal read; replication: the primary's
/// position reached), or why it could not be read.
fn final_reads(cluster: &HostCluster, replication: bool) -> Vec<(String, Result<NodeData, String>)> {
    let nodes = cluster.node_opts();
    let primary = if replication { cluster.writer() } else { None };
    cluster.net.run_in(CLIENT, move || {
        runtime().block_on(async move {
            let mut target: Option<String> = None;
            if let Some(p) = &primary {
                let opts = &nodes.iter().find(|(n, _)| n == p).expect("primary").1;
                target = async {
                    let mut c = mysql_async::Conn::new(opts.clone()).await.ok()?;
                    c.query_first::<String, _>("SELECT @@gtid_binlog_pos")
                        .await
                        .ok()?
                }
                .await;
            }
            let mut out = Vec::new();
            for (name, opts) in &nodes {
                // the primary holds its own position; replicas wait until they reach it
                let catch_up = target
                    .as_deref()
                    .filter(|_| primary.as_deref() != Some(name.as_str()));
                let read = tokio::time::timeout(
                    Duration::from_secs(90),
                    read_node(opts.clone(), replication, catch_up),
                )
                .await
                .unwrap_or_else(|_| Err("timed out after 90 s".into()));
                out.push((name.clone(), read));
            }
            out
        })
    })
}

async fn read_node(
    opts: mysql_async::OptsBuilder,
    replication: bool,
    catch_up_to: Option<&str>,
) -> Result<NodeData, String> {
    let e = |e: mysql_async::Error| e.to_string();
    let mut c = mysql_async::Conn::new(opts).await.map_err(e)?;
    if replication {
        if let Some(pos) = catch_up_to {
            let r: Option<i64> = c
                .exec_first("SELECT MASTER_GTID_WAIT(?, 60)", (pos,))
                .await
                .map_err(e)?;
            if r != Some(0) {
                return Err(format!("did not reach the primary's position {pos} within 60 s"));
            }
        }
    } else {
        c.query_drop("SET SESSION wsrep_sync_wait = 1").await.map_err(e)?;
    }
    let rows: Vec<(u64, String, u64, String)> = c
        .query("SELECT id, IFNULL(node, ''), IFNULL(epoch, 0), IFNULL(component, '') FROM chaos_ints")
        .await
        .map_err(e)?;
    let ids: BTreeMap<u64, Stamp> = rows
        .into_iter()
        .map(|(id, node, epoch, component)| {
            (
                id,
                Stamp {
                    node,
                    epoch: (epoch > 0).then_some(epoch),
                    component: (!component.is_empty()).then_some(component),
                },
            )
        })
        .collect();
    let read_back_ids: Vec<u64> = c.query("SELECT id FROM chaos_read_back").await.map_err(e)?;
    let counters: Vec<(u64, i64)> = c.query("SELECT id, v FROM chaos_counters").await.map_err(e)?;
    let (total, accounts): (i64, i64) = c
        .query_first("SELECT CAST(IFNULL(SUM(balance), 0) AS SIGNED), COUNT(*) FROM chaos_bank")
        .await
        .map_err(e)?
        .unwrap_or((0, 0));
    let _ = c.disconnect().await;
    Ok(NodeData {
        ids,
        read_back_ids: read_back_ids.into_iter().collect(),
        counters: counters.into_iter().collect(),
        total,
        accounts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_are_written_in_utc_as_the_logs_are() {
        assert_eq!(civil(0), ("19700101".to_string(), "00:00:00".to_string()));
        assert_eq!(
            civil(1_796_598_558),
            ("20261206".to_string(), "23:09:18".to_string())
        );
        // a leap day
        assert_eq!(civil(951_782_400).0, "20000229");
        assert_eq!(
            wall_clock(Duration::from_millis(1_796_598_558_042)),
            "2026-12-06 23:09:18.042"
        );
    }
}
