//! The checker: a [`History`] in, every violation out. It fails a run that did not prove
//! what it claims as surely as one that broke a promise: a node not back, a final read that
//! could not be made, too few writes after the heal, a thread that panicked, a read port that
//! served nothing or a sampler that could not see the nodes all count.
//!
//! Checked for both topologies:
//! - every acknowledged insert is on every node at the end; no node holds an id no client sent
//!   or one the server refused;
//! - lost updates: each counter ends between its acknowledged increments and those plus the
//!   ones whose outcome is unknown;
//! - read-your-writes: a new connection to the write port sees an insert acknowledged before;
//! - on a read-port connection an id once seen never disappears, and every total is the
//!   opening total.
//!
//! Replication: no two nodes writable in one sampling round; every acknowledged insert
//! carries an epoch, and none was written under an older epoch after one under a newer epoch
//! was acknowledged, on any node. Galera: no acknowledged insert was written by a node
//! outside a Primary component (and so never ordered by the cluster).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use super::history::{History, NodeData, Outcome, Write};

pub const ACCOUNTS: i64 = 5;
pub const OPENING_BALANCE: i64 = 100;

/// What a run must show besides keeping its promises.
#[derive(Debug, Clone, Copy)]
pub struct Expectations {
    /// Inserts acknowledged after the last heal, at least.
    pub acks_after_heal: usize,
}

/// One broken promise or unproven claim, with when it happened if that is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub at: Option<Duration>,
    pub what: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at {
            Some(at) => write!(f, "[{:.1} s] {}", at.as_secs_f64(), self.what),
            None => f.write_str(&self.what),
        }
    }
}

fn v(at: Option<Duration>, what: impl Into<String>) -> Violation {
    Violation {
        at,
        what: what.into(),
    }
}

/// Every violation in `h`.
pub fn check(h: &History, expect: &Expectations) -> Vec<Violation> {
    let mut out = Vec::new();
    liveness(h, expect, &mut out);
    for (node, data) in &h.ending.finals {
        match data {
            Ok(d) => node_data(h, node, d, &mut out),
            Err(why) => out.push(v(None, format!("{node} could not be read after the run: {why}"))),
        }
    }
    let read = &h.read_port;
    if let Some((at, total, accounts)) = read.bad_totals.first() {
        out.push(v(
            Some(*at),
            format!(
                "{} reads on the read port saw a total other than {} over {ACCOUNTS} accounts; the first saw {total} over {accounts}",
                read.bad_totals.len(),
                ACCOUNTS * OPENING_BALANCE
            ),
        ));
    }
    for (at, id) in read.vanished.iter().take(5) {
        out.push(v(
            Some(*at),
            format!("id {id}, seen earlier on the same read-port connection, was gone"),
        ));
    }
    for r in h.read_backs.iter().filter(|r| r.seen == Some(false)).take(5) {
        out.push(v(
            Some(r.read),
            format!(
                "insert {} was acknowledged at {:.3} s but a new connection to the write port did not see it at {:.3} s",
                r.id,
                r.acked.as_secs_f64(),
                r.read.as_secs_f64()
            ),
        ));
    }
    if let Some(w) = &h.writable {
        for (at, nodes) in w.overlaps.iter().take(5) {
            out.push(v(
                Some(*at),
                format!("{} were writable at the same time", nodes.join(" and ")),
            ));
        }
    }
    out
}

/// The run proved what it claims: the cluster came back, it took writes after the heal, every
/// thread lived, the read port served, the sampler saw the nodes.
fn liveness(h: &History, expect: &Expectations, out: &mut Vec<Violation>) {
    for (node, why) in &h.ending.not_back {
        out.push(v(None, format!("{node} was not back after the heal: {why}")));
    }
    let after_heal = h
        .inserts
        .iter()
        .filter(|w| w.outcome == Outcome::Ok && w.sent >= h.ending.healed)
        .count();
    if after_heal < expect.acks_after_heal {
        out.push(v(
            None,
            format!(
                "only {after_heal} inserts were acknowledged after the last heal (at least {} expected)",
                expect.acks_after_heal
            ),
        ));
    }
    for p in &h.panicked {
        out.push(v(None, format!("a client or sampler thread panicked: {p}")));
    }
    if h.read_port.reads == 0 {
        out.push(v(None, "the read port served no reads"));
    }
    if let Some(w) = &h.writable {
        if w.full_rounds * 2 <= w.rounds {
            out.push(v(
                None,
                format!(
                    "the read_only sampler reached every node in only {} of {} rounds: it cannot vouch for one writer",
                    w.full_rounds, w.rounds
                ),
            ));
        }
    }
    if h.ending.finals.len() < h.nodes.len() {
        out.push(v(
            None,
            format!(
                "only {} of {} nodes had their data checked",
                h.ending.finals.len(),
                h.nodes.len()
            ),
        ));
    }
}

/// The ids whose insert had this outcome.
fn keys_with(writes: &[Write], outcome: Outcome) -> BTreeSet<u64> {
    writes
        .iter()
        .filter(|w| w.outcome == outcome)
        .map(|w| w.key)
        .collect()
}

fn first_ids<'a>(ids: impl Iterator<Item = &'a u64>) -> (usize, Vec<u64>) {
    let all: Vec<u64> = ids.copied().collect();
    let n = all.len();
    (n, all.into_iter().take(5).collect())
}

/// When the insert of `id` was sent, for placing a violation in time.
fn sent_at(writes: &[Write], id: u64) -> Option<Duration> {
    writes.iter().find(|w| w.key == id).map(|w| w.sent)
}

fn node_data(h: &History, node: &str, d: &NodeData, out: &mut Vec<Violation>) {
    // Inserts: nothing acknowledged missing, nothing unknown or refused present.
    let sent: BTreeSet<u64> = h.inserts.iter().map(|w| w.key).collect();
    let acked = keys_with(&h.inserts, Outcome::Ok);
    let refused = keys_with(&h.inserts, Outcome::Failed);
    let present: BTreeSet<u64> = d.ids.keys().copied().collect();
    let mut found = |what: &str, ids: Vec<&u64>, writes: &[Write]| {
        let at = ids.first().and_then(|id| sent_at(writes, **id));
        let (n, first) = first_ids(ids.into_iter());
        if n > 0 {
            out.push(v(at, format!("{node} {what}: {n} (first ids {first:?})")));
        }
    };
    found(
        "lacks acknowledged inserts",
        acked.difference(&present).collect(),
        &h.inserts,
    );
    found(
        "holds ids no client sent",
        present.difference(&sent).collect(),
        &h.inserts,
    );
    found(
        "holds inserts the server refused",
        present.intersection(&refused).collect(),
        &h.inserts,
    );
    let rb_acked: BTreeSet<u64> = h.read_backs.iter().map(|r| r.id).collect();
    found(
        "lacks acknowledged read-your-writes inserts",
        rb_acked.difference(&d.read_back_ids).collect(),
        &[],
    );

    // Counters: acknowledged <= value <= acknowledged + unknown.
    let mut bounds: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    for w in &h.increments {
        let b = bounds.entry(w.key).or_default();
        match w.outcome {
            Outcome::Ok => {
                b.0 += 1;
                b.1 += 1
            }
            Outcome::Unknown => b.1 += 1,
            Outcome::Failed => {}
        }
    }
    for (counter, (low, high)) in &bounds {
        let value = d.counters.get(counter).copied();
        match value {
            None => out.push(v(None, format!("{node} has no counter {counter}"))),
            Some(value) if value < *low => out.push(v(
                None,
                format!(
                    "{node}: counter {counter} is {value}, but {low} increments were acknowledged (lost updates)"
                ),
            )),
            Some(value) if value > *high => out.push(v(
                None,
                format!(
                    "{node}: counter {counter} is {value}, more than the {high} increments that may have happened"
                ),
            )),
            Some(_) => {}
        }
    }

    if d.total != ACCOUNTS * OPENING_BALANCE || d.accounts != ACCOUNTS {
        out.push(v(
            None,
            format!(
                "{node} ends with a total balance of {} over {} accounts, not {} over {ACCOUNTS}",
                d.total,
                d.accounts,
                ACCOUNTS * OPENING_BALANCE
            ),
        ));
    }

    if h.replication {
        epochs(h, node, d, out);
    } else {
        components(h, node, d, out);
    }
}

/// Galera: an acknowledged insert written by a node outside a Primary component. The stamp is
/// the writer's `wsrep_cluster_status` as the statement ran, which can fall within a view
/// change (a member leaving or joining) before the commit is ordered; a writeset that reached
/// every node was ordered by a Primary component, so only a stamped row that some node lacks
/// counts (it is also a lost write there, reported above with its own message).
fn components(h: &History, node: &str, d: &NodeData, out: &mut Vec<Violation>) {
    let acked = keys_with(&h.inserts, Outcome::Ok);
    let everywhere = |id: &u64| {
        h.ending
            .finals
            .iter()
            .all(|(_, f)| f.as_ref().is_ok_and(|f| f.ids.contains_key(id)))
    };
    let outside: Vec<(&u64, &super::history::Stamp)> = d
        .ids
        .iter()
        .filter(|(id, s)| acked.contains(id) && s.component.as_deref() != Some("Primary"))
        .filter(|(id, _)| !everywhere(id))
        .collect();
    if let Some((id, s)) = outside.first() {
        out.push(v(
            sent_at(&h.inserts, **id),
            format!(
                "{node} holds {} acknowledged inserts written outside a Primary component that not every node holds; the first, id {id}, by {} in state {:?}",
                outside.len(),
                s.node,
                s.component
            ),
        ));
    }
}

/// Replication: every acknowledged insert carries an epoch, and none was written under an
/// older epoch after an insert under a newer one had been acknowledged.
fn epochs(h: &History, node: &str, d: &NodeData, out: &mut Vec<Violation>) {
    let acked: Vec<Stamped> = h
        .inserts
        .iter()
        .filter(|w| w.outcome == Outcome::Ok)
        .filter_map(|w| {
            Some(Stamped {
                id: w.key,
                sent: w.sent,
                done: w.done,
                epoch: d.ids.get(&w.key)?.epoch.unwrap_or(0),
            })
        })
        .collect();
    let stale = stale_epoch_writes(&acked);
    if let Some((id, epoch, before, newer)) = stale.first() {
        out.push(v(
            sent_at(&h.inserts, *id),
            format!(
                "{node}: {} inserts were written under an older epoch after one under a newer epoch was \
                 acknowledged (two primaries took writes); first: id {id} under epoch {epoch} after \
                 id {before} under epoch {newer}",
                stale.len()
            ),
        ));
    }
    if let Some(unstamped) = acked.iter().find(|s| s.epoch == 0) {
        out.push(v(
            Some(unstamped.sent),
            format!(
                "{node}: insert {} was acknowledged without an epoch",
                unstamped.id
            ),
        ));
    }
}

/// An acknowledged insert and the epoch it was written under.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamped {
    pub id: u64,
    pub sent: Duration,
    pub done: Duration,
    pub epoch: u64,
}

/// The inserts sent after another was acknowledged under a newer epoch, but written under an
/// older one: (id, its epoch, the earlier id, the newer epoch).
pub(crate) fn stale_epoch_writes(acked: &[Stamped]) -> Vec<(u64, u64, u64, u64)> {
    let mut by_done: Vec<&Stamped> = acked.iter().collect();
    by_done.sort_by_key(|s| s.done);
    let mut by_sent: Vec<&Stamped> = acked.iter().collect();
    by_sent.sort_by_key(|s| s.sent);
    let mut newest: Option<&Stamped> = None;
    let mut done = by_done.into_iter().peekable();
    let mut stale = Vec::new();
    for w in by_sent {
        while let Some(d) = done.next_if(|d| d.done < w.sent) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::history::{Ending, ReadBack, Stamp, Writable};

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn w(key: u64, sent: u64, outcome: Outcome) -> Write {
        Write {
            key,
            sent: ms(sent),
            done: ms(sent + 5),
            outcome,
            client: 0,
            error: String::new(),
        }
    }

    const EXPECT: Expectations = Expectations { acks_after_heal: 2 };

    /// A Galera history with no violation: three nodes that hold the same data.
    fn clean(replication: bool) -> History {
        let inserts = vec![
            w(1, 0, Outcome::Ok),
            w(2, 10, Outcome::Failed),
            w(3, 20, Outcome::Unknown),
            w(4, 1000, Outcome::Ok),
            w(5, 1010, Outcome::Ok),
        ];
        let increments = vec![
            w(1, 0, Outcome::Ok),
            w(1, 10, Outcome::Ok),
            w(1, 20, Outcome::Unknown),
            w(2, 30, Outcome::Failed),
        ];
        let stamp = |epoch| Stamp {
            node: "n1".into(),
            epoch: replication.then_some(epoch),
            component: (!replication).then(|| "Primary".to_string()),
        };
        let data = NodeData {
            ids: [(1, stamp(7)), (4, stamp(8)), (5, stamp(8))]
                .into_iter()
                .collect(),
            read_back_ids: [100].into_iter().collect(),
            counters: [(1, 2), (2, 0)].into_iter().collect(),
            total: 500,
            accounts: 5,
        };
        History {
            replication,
            nodes: vec!["n1".into(), "n2".into(), "n3".into()],
            inserts,
            increments,
            read_backs: vec![ReadBack {
                id: 100,
                acked: ms(50),
                read: ms(55),
                seen: Some(true),
            }],
            read_port: crate::chaos::history::ReadPort {
                reads: 10,
                ..Default::default()
            },
            writable: replication.then(|| Writable {
                rounds: 10,
                full_rounds: 8,
                overlaps: vec![],
            }),
            ending: Ending {
                healed: ms(900),
                not_back: vec![],
                finals: ["n1", "n2", "n3"]
                    .iter()
                    .map(|n| (n.to_string(), Ok(data.clone())))
                    .collect(),
            },
            ..Default::default()
        }
    }

    fn violations(h: &History) -> Vec<String> {
        check(h, &EXPECT).into_iter().map(|v| v.what).collect()
    }

    fn one(h: &History, needle: &str) {
        let found = violations(h);
        assert!(
            found.iter().any(|v| v.contains(needle)),
            "expected a violation with {needle:?}, got {found:?}"
        );
    }

    fn data(h: &mut History, node: usize) -> &mut NodeData {
        h.ending.finals[node].1.as_mut().unwrap()
    }

    #[test]
    fn a_history_without_violations_passes() {
        assert_eq!(violations(&clean(false)), Vec::<String>::new());
        assert_eq!(violations(&clean(true)), Vec::<String>::new());
    }

    #[test]
    fn a_lost_write_is_reported() {
        let mut h = clean(false);
        data(&mut h, 2).ids.remove(&4);
        one(&h, "n3 lacks acknowledged inserts: 1 (first ids [4])");
        let mut h = clean(false);
        data(&mut h, 1).read_back_ids.clear();
        one(&h, "n2 lacks acknowledged read-your-writes inserts");
    }

    #[test]
    fn a_phantom_or_refused_id_is_reported() {
        let mut h = clean(false);
        data(&mut h, 0).ids.insert(99, Stamp::default());
        one(&h, "n1 holds ids no client sent: 1 (first ids [99])");
        let mut h = clean(false);
        data(&mut h, 0).ids.insert(
            2,
            Stamp {
                component: Some("Primary".into()),
                ..Default::default()
            },
        );
        one(&h, "holds inserts the server refused");
    }

    #[test]
    fn a_lost_update_is_reported() {
        let mut h = clean(true);
        data(&mut h, 1).counters.insert(1, 1);
        one(&h, "counter 1 is 1, but 2 increments were acknowledged");
        let mut h = clean(true);
        data(&mut h, 1).counters.insert(1, 4);
        one(&h, "counter 1 is 4, more than the 3 increments");
        let mut h = clean(true);
        data(&mut h, 1).counters.insert(2, 1);
        one(&h, "counter 2 is 1, more than the 0");
        let mut h = clean(true);
        data(&mut h, 1).counters.remove(&1);
        one(&h, "n2 has no counter 1");
    }

    #[test]
    fn a_stale_read_after_an_acknowledgement_is_reported() {
        let mut h = clean(false);
        h.read_backs[0].seen = Some(false);
        one(&h, "did not see it");
        let mut h = clean(false);
        h.read_backs[0].seen = None;
        assert!(violations(&h).is_empty(), "a failed read is no verdict");
        let mut h = clean(false);
        h.read_port.vanished.push((ms(70), 4));
        one(
            &h,
            "id 4, seen earlier on the same read-port connection, was gone",
        );
        let mut h = clean(false);
        h.read_port.bad_totals.push((ms(70), 490, 5));
        one(&h, "saw a total other than 500");
    }

    #[test]
    fn two_writers_are_reported() {
        let mut h = clean(true);
        h.writable
            .as_mut()
            .unwrap()
            .overlaps
            .push((ms(40), vec!["n1".into(), "n2".into()]));
        one(&h, "n1 and n2 were writable at the same time");
        let mut h = clean(true);
        data(&mut h, 0).ids.get_mut(&5).unwrap().epoch = Some(7);
        one(&h, "n1: 1 inserts were written under an older epoch");
        let mut h = clean(true);
        data(&mut h, 2).ids.get_mut(&5).unwrap().epoch = None;
        one(&h, "n3: insert 5 was acknowledged without an epoch");
        // A row stamped outside a Primary component that one node lacks: written there and
        // never ordered by the cluster (also a lost write on the node without it).
        let mut h = clean(false);
        data(&mut h, 1).ids.get_mut(&4).unwrap().component = Some("non-Primary".into());
        data(&mut h, 2).ids.remove(&4);
        let found = violations(&h);
        assert!(
            found
                .iter()
                .any(|v| v.contains("n2 holds 1 acknowledged inserts written outside a Primary component")),
            "{found:?}"
        );
        assert!(
            found.iter().any(|v| v.contains("n3 lacks acknowledged inserts")),
            "{found:?}"
        );
        // The same stamp on a row every node holds: the statement ran during a view change and
        // its commit was ordered by the Primary component (seen in a chaos run, as a restarted
        // agent stopped the writer's server).
        let mut h = clean(false);
        for n in 0..3 {
            data(&mut h, n).ids.get_mut(&4).unwrap().component = Some("non-Primary".into());
        }
        assert_eq!(violations(&h), Vec::<String>::new());
    }

    #[test]
    fn a_dead_cluster_does_not_pass() {
        let mut h = clean(false);
        h.ending
            .not_back
            .push(("n2".into(), "mariadbd is not running".into()));
        one(&h, "n2 was not back after the heal: mariadbd is not running");
        let mut h = clean(false);
        h.inserts.retain(|w| w.sent < ms(900));
        one(&h, "only 0 inserts were acknowledged after the last heal");
        let mut h = clean(false);
        h.read_port.reads = 0;
        one(&h, "the read port served no reads");
        let mut h = clean(true);
        h.writable.as_mut().unwrap().full_rounds = 5;
        one(&h, "reached every node in only 5 of 10 rounds");
        let mut h = clean(false);
        h.panicked.push("insert client 2: boom".into());
        one(&h, "panicked: insert client 2: boom");
    }

    #[test]
    fn a_final_read_that_cannot_be_made_is_a_failure() {
        let mut h = clean(false);
        h.ending.finals[1].1 = Err("connection refused".into());
        one(&h, "n2 could not be read after the run: connection refused");
        let mut h = clean(false);
        h.ending.finals.pop();
        one(&h, "only 2 of 3 nodes had their data checked");
        let mut h = clean(false);
        data(&mut h, 0).total = 499;
        one(&h, "n1 ends with a total balance of 499");
    }

    #[test]
    fn a_write_under_an_older_epoch_after_a_newer_one_was_acknowledged_is_found() {
        let s = |id, sent, done, epoch| Stamped {
            id,
            sent: ms(sent),
            done: ms(done),
            epoch,
        };
        // a failover from epoch 3 to 4, writes in order: nothing stale
        let clean = [s(1, 0, 10, 3), s(2, 10, 20, 3), s(3, 30, 40, 4), s(4, 40, 50, 4)];
        assert!(stale_epoch_writes(&clean).is_empty());
        // overlapping writes across the failover are not ordered: not stale either
        let overlap = [s(1, 0, 50, 3), s(2, 10, 20, 4), s(3, 15, 60, 3)];
        assert!(stale_epoch_writes(&overlap).is_empty());
        // epoch 3 still took a write sent after an epoch-4 write was acknowledged
        let split = [s(1, 0, 10, 3), s(2, 10, 20, 4), s(3, 25, 30, 3), s(4, 30, 35, 4)];
        assert_eq!(stale_epoch_writes(&split), vec![(3, 3, 2, 4)]);
    }
}
