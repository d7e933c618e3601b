//! Where client connections go: the routing table the proxy serves, and the blacklist of
//! backends that refused or timed out (Pen's idea, with backoff).
//!
//! ```text
//!   member reports + writer key ──► galera_routes ──► RoutingTable { writer, readers }
//!   connect failure / success ────► Blacklist ─────► eligible(backend, now)
//! ```
//!
//! `now` is a `Duration` since an arbitrary start, passed in: nothing here reads a clock.

use std::collections::HashMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::NodeConfig;
use crate::galera::{self, MemberReport};

/// A database node clients may be sent to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Backend {
    pub name: String,
    /// `host:sql_port`.
    pub addr: String,
}

/// What the proxy routes to. Only healthy nodes appear: never a joiner, donor, desynced,
/// non-Primary, quarantined or fenced node.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoutingTable {
    /// The single writer, if it is healthy.
    pub writer: Option<Backend>,
    /// Healthy nodes other than the writer, in configuration order.
    pub readers: Vec<Backend>,
}

/// What becomes of an open write-port connection to `backend` under a new routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// It is (again) the writer.
    Keep,
    /// It handed the writer role on and is still healthy: a planned move. Its connections may
    /// finish their work for a grace period; new ones go to the new writer.
    Drain,
    /// It failed or was fenced: close now, so clients reconnect to the new writer.
    Close,
}

pub fn write_connection_fate(table: &RoutingTable, backend: &str) -> Fate {
    if table.writer.as_ref().is_some_and(|w| w.name == backend) {
        Fate::Keep
    } else if table.writer.is_some() && table.readers.iter().any(|r| r.name == backend) {
        Fate::Drain
    } else {
        Fate::Close
    }
}

impl RoutingTable {
    /// Read backends: the readers, or the writer when there is no reader.
    pub fn read_backends(&self) -> Vec<&Backend> {
        if self.readers.is_empty() {
            self.writer.iter().collect()
        } else {
            self.readers.iter().collect()
        }
    }
}

/// The two ports of the proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    Write,
    Read,
}

/// The backends a new connection on `port` tries, best first. Writes: the writer, or nothing
/// when the routing is `stale` (fail closed). Reads: readers by fewest `active` connections,
/// readers with as many taking turns from `turn`, then the writer as the fallback.
pub fn candidates(
    table: &RoutingTable,
    port: Port,
    stale: bool,
    active: impl Fn(&str) -> u64,
    turn: usize,
) -> Vec<Backend> {
    match port {
        Port::Write if stale => Vec::new(),
        Port::Write => table.writer.iter().cloned().collect(),
        Port::Read => {
            let mut readers = table.readers.clone();
            if !readers.is_empty() {
                let start = turn % readers.len();
                readers.rotate_left(start);
            }
            // Stable: among readers with as many connections, the rotation decides.
            readers.sort_by_key(|b| active(&b.name));
            readers.extend(table.writer.iter().cloned());
            readers
        }
    }
}

/// The routing table of a Galera cluster from its members' reports and the writer key: the
/// writer while it is fit to keep the role ([`galera::writer_fitness`]: healthy, donating in a
/// Primary component, or silent but still in a healthy member's view) or desynced (it takes
/// writes; the key moves after [`galera::DESYNC_GRACE`]), the other healthy members as readers.
pub fn galera_routes(nodes: &[NodeConfig], reports: &[MemberReport], writer: Option<&str>) -> RoutingTable {
    let addresses: Vec<(String, String)> = nodes
        .iter()
        .map(|n| (n.name.clone(), format!("{}:{}", n.host, n.sql_port)))
        .collect();
    let fitness = galera::writer_fitness(&addresses, reports);
    let backend = |n: &NodeConfig| Backend {
        name: n.name.clone(),
        addr: format!("{}:{}", n.host, n.sql_port),
    };
    let writer = nodes
        .iter()
        .find(|n| {
            Some(n.name.as_str()) == writer
                && (fitness.fit.contains(&n.name) || fitness.desynced.contains(&n.name))
        })
        .map(backend);
    let readers = nodes
        .iter()
        .filter(|n| fitness.healthy.contains(&n.name) && Some(&n.name) != writer.as_ref().map(|w| &w.name))
        .map(backend)
        .collect();
    RoutingTable { writer, readers }
}

/// The routing table of a replication cluster: the writer is the lease-holding primary while it
/// reports itself healthy (writable); readers are replicas streaming from it within the lag
/// limit (their agents decide that and report `healthy`). Quarantined nodes never appear.
pub fn replication_routes(
    nodes: &[NodeConfig],
    reports: &[crate::replication::ReplReport],
    leader: Option<&str>,
) -> RoutingTable {
    use crate::replication::Role;
    let backend = |n: &NodeConfig| Backend {
        name: n.name.clone(),
        addr: format!("{}:{}", n.host, n.sql_port),
    };
    let report = |name: &str| reports.iter().find(|r| r.name == name && r.healthy);
    let writer = nodes
        .iter()
        .find(|n| Some(n.name.as_str()) == leader && report(&n.name).is_some_and(|r| r.role == Role::Primary))
        .map(backend);
    let readers = nodes
        .iter()
        .filter(|n| report(&n.name).is_some_and(|r| r.role == Role::Replica))
        .map(backend)
        .collect();
    RoutingTable { writer, readers }
}

/// Backends that recently refused or timed out, kept out for a while that doubles with each
/// consecutive failure (from `base` up to `max`), and forgiven on the first success.
#[derive(Debug, Clone)]
pub struct Blacklist {
    base: Duration,
    max: Duration,
    entries: HashMap<String, (u32, Duration)>,
}

impl Blacklist {
    pub fn new(base: Duration, max: Duration) -> Blacklist {
        Blacklist {
            base,
            max,
            entries: HashMap::new(),
        }
    }

    /// Records a failed connect at `now`; returns until when the backend is kept out. A
    /// failure while the backend is already kept out (connects that were under way together,
    /// failing together) is the same failure: only one after the period ended doubles it.
    pub fn failed(&mut self, backend: &str, now: Duration) -> Duration {
        let entry = self.entries.entry(backend.to_string()).or_insert((0, now));
        if entry.0 > 0 && now < entry.1 {
            return entry.1;
        }
        entry.0 += 1;
        let delay = self.base.saturating_mul(1 << (entry.0 - 1).min(16)).min(self.max);
        entry.1 = now + delay;
        entry.1
    }

    pub fn succeeded(&mut self, backend: &str) {
        self.entries.remove(backend);
    }

    pub fn eligible(&self, backend: &str, now: Duration) -> bool {
        self.entries.get(backend).is_none_or(|(_, until)| now >= *until)
    }

    /// The backends kept out at `now`, by name.
    pub fn kept_out(&self, now: Duration) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, (_, until))| now < *until)
            .map(|(name, _)| name.clone())
            .collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Topology};
    use crate::galera::test_support::synced;
    use crate::galera::{DiskState, Phase};

    #[test]
    fn a_former_writer_that_is_still_healthy_drains_one_that_failed_closes() {
        let b = |name: &str| Backend {
            name: name.into(),
            addr: format!("{name}:3306"),
        };
        let moved = RoutingTable {
            writer: Some(b("n2")),
            readers: vec![b("n1"), b("n3")],
        };
        assert_eq!(write_connection_fate(&moved, "n2"), Fate::Keep);
        assert_eq!(write_connection_fate(&moved, "n1"), Fate::Drain);
        let failed = RoutingTable {
            writer: Some(b("n2")),
            readers: vec![b("n3")],
        };
        assert_eq!(write_connection_fate(&failed, "n1"), Fate::Close);
        let none = RoutingTable {
            writer: None,
            readers: vec![b("n1")],
        };
        assert_eq!(
            write_connection_fate(&none, "n1"),
            Fate::Close,
            "without a writer nothing may keep writing"
        );
    }

    #[test]
    fn replication_routes_send_writes_to_the_healthy_leader_and_reads_to_healthy_replicas() {
        use crate::replication::{ReplReport, Role};
        let config = Config::local(4, 23300, Topology::Replication);
        let r = |name: &str, role: Role, healthy: bool| ReplReport {
            name: name.into(),
            role,
            healthy,
            reason: String::new(),
            status: None,
            epoch: 1,
            empty: false,
            after_lapse_of: None,
        };
        let reports = [
            r("n1", Role::Primary, true),
            r("n2", Role::Replica, true),
            r("n3", Role::Replica, false),
            r("n4", Role::Quarantined, true),
        ];
        let table = replication_routes(&config.nodes, &reports, Some("n1"));
        assert_eq!(table.writer.as_ref().map(|b| b.name.as_str()), Some("n1"));
        assert_eq!(
            table.readers.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["n2"]
        );
        // A primary that lost the lease (another leader) or is unhealthy takes no writes.
        assert_eq!(
            replication_routes(&config.nodes, &reports, Some("n2")).writer,
            None
        );
        let fenced = [r("n1", Role::Primary, false), r("n2", Role::Replica, true)];
        assert_eq!(
            replication_routes(&config.nodes, &fenced, Some("n1")).writer,
            None
        );
    }

    fn reports(states: &[(&str, Phase, Option<crate::galera::WsrepStatus>)]) -> Vec<MemberReport> {
        states
            .iter()
            .map(|(n, p, s)| MemberReport {
                name: n.to_string(),
                phase: *p,
                disk: DiskState::Data {
                    saved: None,
                    sst_interrupted: false,
                },
                status: s.clone(),
                departed: None,
                last_primary: None,
            })
            .collect()
    }

    #[test]
    fn routes_writes_to_the_healthy_writer_and_reads_to_the_other_healthy_nodes() {
        let config = Config::local(3, 23300, Topology::Galera);
        let mut donor = synced(5);
        donor.local_state = crate::galera::local_state::DONOR_DESYNCED;
        donor.local_state_comment = "Donor/Desynced".into();
        let r = reports(&[
            ("n1", Phase::Running, Some(synced(5))),
            ("n2", Phase::Running, Some(donor)),
            ("n3", Phase::Running, Some(synced(5))),
        ]);
        let t = galera_routes(&config.nodes, &r, Some("n1"));
        assert_eq!(
            t.writer.as_ref().map(|b| b.addr.as_str()),
            Some("127.0.0.1:23300")
        );
        assert_eq!(
            t.readers.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["n3"],
            "no donor"
        );
        // A desynced writer with nobody joining still takes the writes until its key moves
        // (after DESYNC_GRACE), and gets no reads.
        let t = galera_routes(&config.nodes, &r, Some("n2"));
        assert_eq!(t.writer.as_ref().map(|b| b.name.as_str()), Some("n2"));
        assert_eq!(
            t.readers.iter().map(|b| b.name.as_str()).collect::<Vec<_>>(),
            ["n1", "n3"]
        );
    }

    #[test]
    fn joiners_and_unhealthy_writers_get_no_traffic_and_reads_fall_back_to_the_writer() {
        let config = Config::local(3, 23300, Topology::Galera);
        let r = reports(&[
            ("n1", Phase::Running, Some(synced(5))),
            ("n2", Phase::Joining, None),
            ("n3", Phase::Failed, None),
        ]);
        let t = galera_routes(&config.nodes, &r, Some("n1"));
        assert!(t.readers.is_empty());
        assert_eq!(
            t.read_backends()
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>(),
            ["n1"]
        );
        let t = galera_routes(&config.nodes, &r, Some("n3"));
        assert_eq!(t.writer, None, "an unhealthy writer is no writer");
        assert_eq!(t.readers.len(), 1);
    }

    fn b(name: &str) -> Backend {
        Backend {
            name: name.into(),
            addr: format!("{name}:1"),
        }
    }

    fn names(v: Vec<Backend>) -> Vec<String> {
        v.into_iter().map(|b| b.name).collect()
    }

    #[test]
    fn candidates_follow_the_port_semantics() {
        let t = RoutingTable {
            writer: Some(b("w")),
            readers: vec![b("a"), b("b"), b("c")],
        };
        let idle = |_: &str| 0;
        assert_eq!(names(candidates(&t, Port::Write, false, idle, 0)), ["w"]);
        assert!(
            candidates(&t, Port::Write, true, idle, 0).is_empty(),
            "stale routing: writes fail closed"
        );
        assert_eq!(
            names(candidates(&t, Port::Read, true, idle, 0)),
            ["a", "b", "c", "w"],
            "reads go on"
        );
        assert_eq!(
            names(candidates(&t, Port::Read, false, idle, 1)),
            ["b", "c", "a", "w"],
            "ties take turns"
        );
        let busy_b = |n: &str| u64::from(n == "b") * 5;
        assert_eq!(
            names(candidates(&t, Port::Read, false, busy_b, 1)),
            ["c", "a", "b", "w"],
            "least connections"
        );
        let none = RoutingTable {
            writer: None,
            readers: vec![],
        };
        assert!(candidates(&none, Port::Read, false, idle, 0).is_empty());
    }

    #[test]
    fn blacklist_backs_off_and_forgives() {
        let s = Duration::from_secs;
        let mut b = Blacklist::new(s(1), s(8));
        assert!(b.eligible("n1", s(0)));
        assert_eq!(b.failed("n1", s(10)), s(11));
        assert!(!b.eligible("n1", s(10)) && b.eligible("n1", s(11)));
        assert_eq!(b.failed("n1", s(11)), s(13));
        assert_eq!(b.failed("n1", s(13)), s(17));
        assert_eq!(b.failed("n1", s(17)), s(25));
        assert_eq!(b.failed("n1", s(25)), s(33), "capped at 8 s");
        b.succeeded("n1");
        assert!(b.eligible("n1", s(25)));
        assert_eq!(b.failed("n1", s(40)), s(41), "a success resets the backoff");
    }

    #[test]
    fn failures_of_connects_under_way_together_count_once() {
        let s = Duration::from_secs;
        let mut b = Blacklist::new(s(1), s(30));
        // seven connects to a hung server time out at the same moment
        for _ in 0..7 {
            assert_eq!(b.failed("n1", s(10)), s(11));
        }
        assert_eq!(b.kept_out(s(10)), ["n1"]);
        assert!(b.kept_out(s(11)).is_empty());
        // the next attempt after the period fails: twice as long
        assert_eq!(b.failed("n1", s(11)), s(13));
    }
}
