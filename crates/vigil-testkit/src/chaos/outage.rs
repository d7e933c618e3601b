//! Write outage per fault, and what vigil knew during it.
//!
//! An episode runs from a fault's start to the next fault's (or the end of the workload). Its
//! outage is the longest stretch in it without an acknowledged write through the proxy,
//! counted from the fault. The timeline samplers say what the proxy routed to and what the
//! agents said meanwhile; the outage is cut into phases by the proxy's routes:
//!
//! ```text
//!   routes stale (no store) │ no writer (the agents say why) │ routed to the struck node │
//!   routed to another node (Galera changing its view, or clients reconnecting)
//! ```
//!
//! The longest phase is the cause. An outage is unexplained when its longest phase is time
//! routed to a node the fault did not strike, with no view change to account for it, or time
//! the proxy could not be asked.

use std::collections::BTreeMap;
use std::time::Duration;

use super::history::{AgentSeen, FaultRecord, History, ProxySeen, Sample};
use super::Fault;

/// One fault and the write outage it caused.
#[derive(Debug, Clone, PartialEq)]
pub struct Episode {
    pub fault: usize,
    pub kind: Fault,
    pub hosts: Vec<String>,
    pub hit_writer: bool,
    /// The longest stretch without an acknowledged write, from the fault on, and where it
    /// lies.
    pub outage: Duration,
    pub gap: (Duration, Duration),
    /// From the fault to the first acknowledged write after it.
    pub after_fault: Option<Duration>,
    /// From the fault's end to the first acknowledged write after it.
    pub after_heal: Option<Duration>,
    pub phases: Vec<(Phase, Duration)>,
}

/// What the proxy routed writes to during part of an outage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Its routes were older than the lease TTL: the store could not be read.
    Stale,
    /// No writer, and why, in the words of an agent that was not struck.
    NoWriter(String),
    /// The struck node, until vigil noticed.
    Struck(String),
    /// Another node; `view_change` when Galera changed its view meanwhile (it waits for a
    /// lost member before it commits again).
    Other { node: String, view_change: bool },
    /// The proxy did not answer its status port.
    Unknown,
}

impl Phase {
    /// Whether vigil knew why no write went through.
    pub fn explained(&self) -> bool {
        match self {
            Phase::Stale | Phase::NoWriter(_) | Phase::Struck(_) => true,
            Phase::Other { view_change, .. } => *view_change,
            Phase::Unknown => false,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Phase::Stale => "routes stale (store out of reach)".into(),
            Phase::NoWriter(why) => format!("no writer ({why})"),
            Phase::Struck(n) => format!("routed to the struck {n}"),
            Phase::Other {
                node,
                view_change: true,
            } => format!("routed to {node} while Galera changed its view"),
            Phase::Other { node, .. } => format!("routed to {node}, no write acknowledged"),
            Phase::Unknown => "proxy not answering".into(),
        }
    }
}

impl Episode {
    /// The longest phase: the outage's cause.
    pub fn cause(&self) -> Option<&Phase> {
        self.phases.iter().max_by_key(|(_, d)| *d).map(|(p, _)| p)
    }

    /// "6.2 s: 4.1 s routed to the struck db1; 2.1 s no writer (...)".
    pub fn explain(&self) -> String {
        let mut parts: Vec<&(Phase, Duration)> = self.phases.iter().collect();
        parts.sort_by_key(|p| std::cmp::Reverse(p.1));
        parts
            .iter()
            .map(|(p, d)| format!("{:.1} s {}", d.as_secs_f64(), p.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// The episodes of a run, one per fault.
pub fn episodes(h: &History) -> Vec<Episode> {
    let acks = h.write_acks();
    let proxy: Vec<(Duration, Option<&ProxySeen>)> = h
        .timeline
        .iter()
        .filter_map(|s| match s {
            Sample::Proxy { at, seen } => Some((*at, seen.as_ref())),
            _ => None,
        })
        .collect();
    let mut agents: BTreeMap<&str, Vec<(Duration, Option<&AgentSeen>)>> = BTreeMap::new();
    for s in &h.timeline {
        if let Sample::Agent { at, node, seen } = s {
            agents.entry(node).or_default().push((*at, seen.as_ref()));
        }
    }
    h.faults
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let end = h.faults.get(i + 1).map_or(h.stopped, |n| n.start).max(f.start);
            episode(i, f, end, &acks, &proxy, &agents)
        })
        .collect()
}

fn episode(
    index: usize,
    f: &FaultRecord,
    end: Duration,
    acks: &[Duration],
    proxy: &[(Duration, Option<&ProxySeen>)],
    agents: &BTreeMap<&str, Vec<(Duration, Option<&AgentSeen>)>>,
) -> Episode {
    let first_after = |t: Duration| acks.iter().find(|a| **a > t && **a <= end).map(|a| *a - t);
    let mut points: Vec<Duration> = vec![f.start];
    points.extend(acks.iter().filter(|a| **a > f.start && **a <= end));
    points.push(end);
    let gap = points
        .windows(2)
        .map(|w| (w[0], w[1]))
        .max_by_key(|(a, b)| *b - *a)
        .unwrap_or((f.start, f.start));
    let phases = phases(gap, f, proxy, agents);
    Episode {
        fault: index,
        kind: f.kind,
        hosts: f.hosts.clone(),
        hit_writer: f.hit_writer,
        outage: gap.1 - gap.0,
        gap,
        after_fault: first_after(f.start),
        after_heal: first_after(f.end),
        phases,
    }
}

/// The last sample at or before `t` of a sorted series.
fn at<T: Copy>(series: &[(Duration, T)], t: Duration) -> Option<T> {
    let i = series.partition_point(|(s, _)| *s <= t);
    i.checked_sub(1).map(|i| series[i].1)
}

/// Cuts `gap` into phases by the proxy's routes, sampled every 100 ms.
fn phases(
    gap: (Duration, Duration),
    f: &FaultRecord,
    proxy: &[(Duration, Option<&ProxySeen>)],
    agents: &BTreeMap<&str, Vec<(Duration, Option<&AgentSeen>)>>,
) -> Vec<(Phase, Duration)> {
    let step = Duration::from_millis(100);
    let mut out: BTreeMap<Phase, Duration> = BTreeMap::new();
    let mut t = gap.0;
    while t < gap.1 {
        let slice = step.min(gap.1 - t);
        let phase = match at(proxy, t).flatten() {
            None => Phase::Unknown,
            Some(p) if !p.writes_accepted => Phase::Stale,
            Some(p) => match &p.writer {
                None => Phase::NoWriter(why_no_writer(f, t, agents)),
                Some(w) if f.hosts.contains(w) && f.kind.strikes_a_node() => Phase::Struck(w.clone()),
                Some(w) => Phase::Other {
                    node: w.clone(),
                    view_change: view_changed(w, gap, agents),
                },
            },
        };
        *out.entry(phase).or_default() += slice;
        t += slice;
    }
    out.into_iter().collect()
}

/// What an agent that was not struck said at `t`: the first non-empty reason, in node order.
fn why_no_writer(
    f: &FaultRecord,
    t: Duration,
    agents: &BTreeMap<&str, Vec<(Duration, Option<&AgentSeen>)>>,
) -> String {
    agents
        .iter()
        .filter(|(n, _)| !(f.kind.strikes_a_node() && f.hosts.iter().any(|h| h == *n)))
        .filter_map(|(n, series)| {
            let seen = at(series, t).flatten()?;
            (!seen.reason.is_empty()).then(|| format!("{n}: {}", seen.reason))
        })
        .next()
        .unwrap_or_else(|| "no agent said why".into())
}

/// Whether `node`'s Galera view changed (a new view number, or another component size) within
/// `gap` or in the few seconds after it (its agent reports what it probes every half second,
/// later when its turns are slowed by an unreachable store), as its own agent reports it or
/// another member's that shared its view when the gap began: Galera installs a view on every
/// member, and the writer's agent may be the one a fault silenced (`vigil chaos` saw the
/// writer's commits wait 4.0 s for a joiner's membership change while its agent was killed, the
/// other member reporting the new view 0.5 s after they went through).
fn view_changed(
    node: &str,
    gap: (Duration, Duration),
    agents: &BTreeMap<&str, Vec<(Duration, Option<&AgentSeen>)>>,
) -> bool {
    let view = |series: &[(Duration, Option<&AgentSeen>)], t| {
        at(series, t).flatten().map(|s| (s.view, s.cluster_size))
    };
    let Some(start) = agents.get(node).and_then(|series| view(series, gap.0)) else {
        return false;
    };
    let until = gap.1 + Duration::from_secs(3);
    let changed = |series: &[(Duration, Option<&AgentSeen>)]| {
        series
            .iter()
            .filter(|(t, _)| *t >= gap.0 && *t <= until)
            .filter_map(|(_, s)| *s)
            .any(|s| (s.view, s.cluster_size) != start)
    };
    agents
        .iter()
        .filter(|(n, series)| **n == node || view(series, gap.0) == Some(start))
        .any(|(_, series)| changed(series))
}

/// Per fault kind: how many, median and max outage.
pub fn by_kind(episodes: &[Episode]) -> BTreeMap<Fault, (usize, Duration, Duration)> {
    let mut groups: BTreeMap<Fault, Vec<Duration>> = BTreeMap::new();
    for e in episodes {
        groups.entry(e.kind).or_default().push(e.outage);
    }
    groups
        .into_iter()
        .map(|(k, mut v)| {
            v.sort();
            (k, (v.len(), v[v.len() / 2], v[v.len() - 1]))
        })
        .collect()
}

/// The write-outage target of a fault kind: a lost store quorum or etcd member costs no
/// writes (a stretch of normal latency at most); any single-host fault under 8 s.
pub fn target(kind: Fault) -> Duration {
    match kind {
        Fault::KillEtcdMember | Fault::StoreQuorumLoss => Duration::from_secs(2),
        _ => Duration::from_secs(8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::{Outcome, Write};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn fault(kind: Fault, host: &str, start: u64, end: u64) -> FaultRecord {
        FaultRecord {
            kind,
            hosts: vec![host.into()],
            hit_writer: true,
            start: ms(start),
            end: ms(end),
            evidence: String::new(),
        }
    }

    fn acks(times: &[u64]) -> Vec<Write> {
        times
            .iter()
            .map(|t| Write {
                key: *t,
                sent: ms(t - 1),
                done: ms(*t),
                outcome: Outcome::Ok,
                client: 0,
                error: String::new(),
            })
            .collect()
    }

    fn proxy(at: u64, writer: Option<&str>, accepted: bool) -> Sample {
        Sample::Proxy {
            at: ms(at),
            seen: Some(ProxySeen {
                writer: writer.map(Into::into),
                readers: vec![],
                writes_accepted: accepted,
                blacklisted: vec![],
            }),
        }
    }

    fn agent(at: u64, node: &str, reason: &str, size: u32) -> Sample {
        Sample::Agent {
            at: ms(at),
            node: node.into(),
            seen: Some(AgentSeen {
                role: "reader".into(),
                healthy: reason.is_empty(),
                state: "Synced".into(),
                reason: reason.into(),
                cluster_size: size,
                view: u64::from(size),
            }),
        }
    }

    #[test]
    fn the_outage_is_cut_into_phases_by_the_routes() {
        // db1, the writer, is killed at 1 s; the proxy routes to it until 3 s, has no writer
        // until 4 s while db2 waits, then routes to db2; the first write comes back at 4.5 s.
        let h = History {
            inserts: acks(&[500, 900, 4500, 4600, 5000, 5400]),
            faults: vec![fault(Fault::KillMariadbd, "db1", 1000, 4000)],
            timeline: vec![
                proxy(0, Some("db1"), true),
                proxy(3000, None, true),
                agent(3000, "db1", "mariadbd is not running", 0),
                agent(3000, "db2", "no primary: waiting for db1's lease", 3),
                proxy(4000, Some("db2"), true),
            ],
            stopped: ms(5500),
            ..Default::default()
        };
        let e = &episodes(&h)[0];
        assert_eq!(e.outage, ms(3500));
        assert_eq!(e.gap, (ms(1000), ms(4500)));
        assert_eq!(e.after_fault, Some(ms(3500)));
        assert_eq!(e.after_heal, Some(ms(500)));
        assert_eq!(e.cause(), Some(&Phase::Struck("db1".into())));
        assert_eq!(
            e.explain(),
            "2.0 s routed to the struck db1; 1.0 s no writer (db2: no primary: waiting for db1's lease); \
             0.5 s routed to db2, no write acknowledged"
        );
        assert!(e.phases.iter().all(|(p, _)| p != &Phase::Unknown));
    }

    #[test]
    fn a_stall_on_a_healthy_writer_is_unexplained_unless_galera_changed_its_view() {
        let mut h = History {
            inserts: acks(&[900, 7000]),
            faults: vec![fault(Fault::KillMariadbd, "db3", 1000, 2000)],
            timeline: vec![proxy(0, Some("db1"), true), agent(0, "db1", "", 3)],
            stopped: ms(8000),
            ..Default::default()
        };
        let e = &episodes(&h)[0];
        assert_eq!(e.outage, ms(6000));
        let cause = e.cause().unwrap();
        assert!(!cause.explained(), "{cause:?}");
        // Another member outside the writer's view changing its own explains nothing.
        h.timeline.push(agent(0, "db2", "", 1));
        h.timeline.push(agent(6500, "db2", "", 2));
        let e = &episodes(&h)[0];
        assert!(!e.cause().unwrap().explained(), "{:?}", e.cause());
        // Galera evicted db3 at 6.8 s: the writer's component shrank.
        h.timeline.push(agent(6800, "db1", "", 2));
        let e = &episodes(&h)[0];
        assert!(e.cause().unwrap().explained(), "{:?}", e.cause());
    }

    #[test]
    fn a_view_change_counts_as_another_member_of_the_writers_view_reports_it() {
        // db1 writes; db2 shares its view; db1's agent is silenced at 3 s and db2 reports the
        // new view at 7.5 s, 0.5 s after the writes went through.
        let mut h = History {
            inserts: acks(&[900, 7000]),
            faults: vec![fault(Fault::KillAgent, "db3", 1000, 2000)],
            timeline: vec![
                proxy(0, Some("db1"), true),
                agent(0, "db1", "", 2),
                agent(0, "db2", "", 2),
                Sample::Agent {
                    at: ms(3000),
                    node: "db1".into(),
                    seen: None,
                },
            ],
            stopped: ms(9000),
            ..Default::default()
        };
        let e = &episodes(&h)[0];
        assert!(!e.cause().unwrap().explained(), "{:?}", e.cause());
        h.timeline.push(agent(7500, "db2", "", 3));
        let e = &episodes(&h)[0];
        assert!(e.cause().unwrap().explained(), "{:?}", e.cause());
    }

    #[test]
    fn store_faults_and_missing_samples() {
        let h = History {
            inserts: acks(&[900, 5000]),
            faults: vec![
                FaultRecord {
                    kind: Fault::StoreQuorumLoss,
                    hosts: vec!["db1".into(), "db2".into()],
                    hit_writer: false,
                    start: ms(1000),
                    end: ms(4000),
                    evidence: String::new(),
                },
                fault(Fault::PacketLoss, "db2", 6000, 7000),
            ],
            timeline: vec![proxy(0, Some("db1"), true), proxy(2000, Some("db1"), false)],
            stopped: ms(9000),
            ..Default::default()
        };
        let e = episodes(&h);
        assert_eq!(e[0].cause(), Some(&Phase::Stale));
        let before = Phase::Other {
            node: "db1".into(),
            view_change: false,
        };
        assert!(e[0].phases.contains(&(before, ms(1000))), "{:?}", e[0].phases);
        // After 5 s no write came back at all: the second episode's outage runs to the end.
        assert_eq!(e[1].outage, ms(3000));
        assert_eq!(e[1].after_fault, None);
        let kinds = by_kind(&e);
        assert_eq!(kinds[&Fault::StoreQuorumLoss], (1, ms(4000), ms(4000)));
    }
}
