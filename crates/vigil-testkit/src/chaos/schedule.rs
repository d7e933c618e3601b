//! Which fault comes next, where it strikes, for how long, and how long the cluster is left
//! alone before it: all from the seed.
//!
//! Kinds come in a shuffled round-robin: every [`Fault::ALL`]-long stretch of the schedule
//! holds each kind once, so a run of at least that many faults has every kind. A kind that
//! could not be applied (nothing to kill) is tried again next. Process and isolation faults
//! strike the node that takes writes whenever fewer than half of that kind's faults so far did.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// The kinds of fault injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// kill -9 of a node's `mariadbd` (its agent restarts it).
    KillMariadbd,
    /// kill -9 of `vigil agent`, started again after the hold.
    KillAgent,
    /// SIGSTOP of `mariadbd`, SIGCONT after the hold.
    PauseMariadbd,
    /// SIGSTOP of `vigil agent`, SIGCONT after the hold.
    PauseAgent,
    /// kill -9 of everything on a host (agent, `mariadbd`, etcd member): a host crash.
    CrashHost,
    /// The host and the other database hosts drop each other's packets.
    IsolateHost,
    /// The host drops 30% of the packets it receives.
    PacketLoss,
    /// kill -9 of one etcd member.
    KillEtcdMember,
    /// kill -9 of two of the three etcd members.
    StoreQuorumLoss,
}

impl Fault {
    pub const ALL: [Fault; 9] = [
        Fault::KillMariadbd,
        Fault::KillAgent,
        Fault::PauseMariadbd,
        Fault::PauseAgent,
        Fault::CrashHost,
        Fault::IsolateHost,
        Fault::PacketLoss,
        Fault::KillEtcdMember,
        Fault::StoreQuorumLoss,
    ];

    /// It strikes one database host (and may strike the writer's).
    pub fn strikes_a_node(self) -> bool {
        !matches!(self, Fault::KillEtcdMember | Fault::StoreQuorumLoss)
    }
}

/// What the schedule asks for next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub kind: Fault,
    /// The hosts to strike: one database host, or the etcd members' hosts.
    pub hosts: Vec<String>,
    pub hit_writer: bool,
    pub hold: Duration,
}

/// The seeded schedule.
pub struct Schedule {
    rng: StdRng,
    queue: Vec<Fault>,
    /// Per kind: faults applied, and how many of them struck the writer.
    applied: std::collections::BTreeMap<Fault, (u32, u32)>,
    hold: (Duration, Duration),
    gap: (Duration, Duration),
}

impl Schedule {
    /// `rate`: faults per minute on average (2 by default: a quiet 10-30 s, then a fault held
    /// 5-15 s); a higher rate shortens both in proportion.
    pub fn new(seed: u64, rate: f64) -> Schedule {
        let scale = (2.0 / rate.max(0.1)).min(4.0);
        let s = |secs: f64| Duration::from_secs_f64(secs * scale);
        Schedule {
            rng: StdRng::seed_from_u64(seed),
            queue: Vec::new(),
            applied: Default::default(),
            hold: (s(5.0), s(15.0)),
            gap: (s(10.0), s(30.0)),
        }
    }

    /// How long to leave the cluster alone before the next fault.
    pub fn gap(&mut self) -> Duration {
        self.between(self.gap)
    }

    fn between(&mut self, (low, high): (Duration, Duration)) -> Duration {
        Duration::from_millis(
            self.rng
                .gen_range(low.as_millis() as u64..=high.as_millis() as u64),
        )
    }

    /// The next fault, given the database hosts, the etcd members' hosts, and the node the
    /// proxy routes writes to now (if any). Call [`Schedule::applied`] or
    /// [`Schedule::skipped`] with it.
    pub fn next(&mut self, hosts: &[String], etcd: &[String], writer: Option<&str>) -> Planned {
        if self.queue.is_empty() {
            let mut round = Fault::ALL.to_vec();
            round.shuffle(&mut self.rng);
            // popped from the end
            round.reverse();
            self.queue = round;
        }
        let kind = self.queue.pop().expect("refilled");
        let hold = self.between(self.hold);
        let (hosts, hit_writer) = match kind {
            Fault::KillEtcdMember => (vec![etcd[self.rng.gen_range(0..etcd.len())].clone()], false),
            Fault::StoreQuorumLoss => {
                let mut members = etcd.to_vec();
                members.shuffle(&mut self.rng);
                members.truncate(2);
                members.sort();
                (members, false)
            }
            _ => {
                let (count, on_writer) = self.applied.get(&kind).copied().unwrap_or_default();
                let writer = writer.filter(|w| hosts.iter().any(|h| h == w));
                match writer {
                    Some(w) if on_writer * 2 <= count => (vec![w.to_string()], true),
                    _ => {
                        let others: Vec<&String> =
                            hosts.iter().filter(|h| Some(h.as_str()) != writer).collect();
                        (vec![others[self.rng.gen_range(0..others.len())].clone()], false)
                    }
                }
            }
        };
        Planned {
            kind,
            hosts,
            hit_writer,
            hold,
        }
    }

    /// The planned fault took effect.
    pub fn applied(&mut self, p: &Planned) {
        let e = self.applied.entry(p.kind).or_default();
        e.0 += 1;
        e.1 += u32::from(p.hit_writer);
    }

    /// The planned fault could not be applied: its kind comes next again.
    pub fn skipped(&mut self, p: &Planned) {
        self.queue.push(p.kind);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts() -> Vec<String> {
        vec!["db1".into(), "db2".into(), "db3".into()]
    }

    #[test]
    fn every_stretch_of_the_schedule_holds_every_kind() {
        for seed in 0..50 {
            let mut s = Schedule::new(seed, 2.0);
            let kinds: Vec<Fault> = (0..Fault::ALL.len() * 3)
                .map(|_| {
                    let p = s.next(&hosts(), &hosts(), Some("db1"));
                    s.applied(&p);
                    p.kind
                })
                .collect();
            for round in kinds.chunks(Fault::ALL.len()) {
                let mut sorted = round.to_vec();
                sorted.sort();
                assert_eq!(sorted, Fault::ALL.to_vec(), "seed {seed}");
            }
        }
    }

    #[test]
    fn a_skipped_kind_comes_next_and_seeds_differ() {
        let mut s = Schedule::new(3, 2.0);
        let p = s.next(&hosts(), &hosts(), None);
        s.skipped(&p);
        assert_eq!(s.next(&hosts(), &hosts(), None).kind, p.kind);
        let order = |seed| {
            let mut s = Schedule::new(seed, 2.0);
            (0..9)
                .map(|_| s.next(&hosts(), &hosts(), None).kind)
                .collect::<Vec<_>>()
        };
        assert_eq!(order(1), order(1));
        assert_ne!(order(1), order(2));
    }

    #[test]
    fn at_least_half_of_the_node_faults_strike_the_writer() {
        let mut s = Schedule::new(7, 2.0);
        let (mut node_faults, mut on_writer) = (0, 0);
        for i in 0..200 {
            // the writer moves now and then
            let writer = ["db1", "db2", "db3"].get(i % 3).copied();
            let p = s.next(&hosts(), &hosts(), writer);
            if p.kind.strikes_a_node() {
                node_faults += 1;
                assert_eq!(p.hosts.len(), 1);
                assert_eq!(p.hit_writer, writer == Some(p.hosts[0].as_str()));
                on_writer += u32::from(p.hit_writer);
            } else {
                assert!(!p.hit_writer);
            }
            if p.kind == Fault::StoreQuorumLoss {
                assert_eq!(p.hosts.len(), 2);
                assert_ne!(p.hosts[0], p.hosts[1]);
            }
            s.applied(&p);
        }
        assert!(on_writer * 2 >= node_faults, "{on_writer} of {node_faults}");
        // with no writer known, a node fault strikes any node and counts as not on the writer
        let mut s = Schedule::new(7, 2.0);
        for _ in 0..20 {
            let p = s.next(&hosts(), &hosts(), None);
            assert!(!p.hit_writer);
            s.applied(&p);
        }
    }

    #[test]
    fn a_higher_rate_shortens_holds_and_gaps() {
        let mut slow = Schedule::new(1, 2.0);
        let mut fast = Schedule::new(1, 4.0);
        let g = slow.gap();
        assert!((Duration::from_secs(10)..=Duration::from_secs(30)).contains(&g));
        let g = fast.gap();
        assert!((Duration::from_secs(5)..=Duration::from_secs(15)).contains(&g));
        let h = fast.next(&hosts(), &hosts(), None).hold;
        assert!((Duration::from_millis(2500)..=Duration::from_millis(7500)).contains(&h));
    }
}
