//! MariaDB global transaction ids and positions.
//!
//! A MariaDB GTID is `domain-server-seqno`. A position (`@@gtid_current_pos`,
//! `@@gtid_binlog_pos`, `Gtid_IO_Pos`) holds the last GTID of each replication domain, e.g.
//! `0-1-100,1-2-7`. Within a domain, with `gtid_strict_mode`, seqnos only grow.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// One transaction's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Gtid {
    pub domain: u32,
    pub server: u32,
    pub seqno: u64,
}

impl fmt::Display for Gtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seqno)
    }
}

/// A GTID that does not read as `domain-server-seqno`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MariaDB GTID position (expected domain-server-seqno, comma separated)")]
pub struct BadGtid(pub String);

impl FromStr for Gtid {
    type Err = BadGtid;
    fn from_str(s: &str) -> Result<Gtid, BadGtid> {
        let bad = || BadGtid(s.to_string());
        let mut parts = s.trim().split('-');
        let mut next = || parts.next().ok_or_else(bad);
        let gtid = Gtid {
            domain: next()?.parse().map_err(|_| bad())?,
            server: next()?.parse().map_err(|_| bad())?,
            seqno: next()?.parse().map_err(|_| bad())?,
        };
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(gtid)
    }
}

/// The last GTID of each domain: how far a node's history goes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct GtidPos(BTreeMap<u32, Gtid>);

impl GtidPos {
    pub fn new(gtids: impl IntoIterator<Item = Gtid>) -> GtidPos {
        GtidPos(gtids.into_iter().map(|g| (g.domain, g)).collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn domain(&self, domain: u32) -> Option<&Gtid> {
        self.0.get(&domain)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Gtid> {
        self.0.values()
    }

    /// Transactions in all domains together: a single number for "how far", used for
    /// reporting and ties, never for safety.
    pub fn total(&self) -> u64 {
        self.0.values().map(|g| g.seqno).sum()
    }

    /// Compares progress domain by domain. `None` when neither is at least as far as the other
    /// in every domain (their histories cannot be ordered).
    pub fn progress_cmp(&self, other: &GtidPos) -> Option<Ordering> {
        let mut result = Ordering::Equal;
        let domains = self.0.keys().chain(other.0.keys());
        for d in domains {
            let a = self.0.get(d).map_or(0, |g| g.seqno);
            let b = other.0.get(d).map_or(0, |g| g.seqno);
            match (result, a.cmp(&b)) {
                (_, Ordering::Equal) => {}
                (Ordering::Equal, o) => result = o,
                (r, o) if r == o => {}
                _ => return None,
            }
        }
        Some(result)
    }

    /// Whether every domain of `self` is at least as far as in `other`.
    pub fn covers(&self, other: &GtidPos) -> bool {
        matches!(
            self.progress_cmp(other),
            Some(Ordering::Greater | Ordering::Equal)
        )
    }

    /// Whether a node whose history ends at `self` holds nothing beyond `fork`, the position
    /// another node had when it took over. Such a node's transactions are all in the new
    /// history and it can replicate on from it. A transaction at the fork's seqno from another
    /// server is an errant one: the same slot holds different transactions on the two nodes.
    pub fn is_within(&self, fork: &GtidPos) -> bool {
        self.0.values().all(|g| match fork.0.get(&g.domain) {
            Some(f) if g.seqno < f.seqno => true,
            Some(f) => g.seqno == f.seqno && g.server == f.server,
            None => false,
        })
    }
}

impl fmt::Display for GtidPos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for g in self.0.values() {
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{g}")?;
        }
        Ok(())
    }
}

impl FromStr for GtidPos {
    type Err = BadGtid;
    /// Parses MariaDB's form: comma-separated GTIDs, possibly with whitespace or newlines
    /// (SHOW SLAVE STATUS wraps long ones); the empty string is the empty position.
    fn from_str(s: &str) -> Result<GtidPos, BadGtid> {
        let mut out = BTreeMap::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let g: Gtid = part.parse().map_err(|_| BadGtid(s.to_string()))?;
            if out.insert(g.domain, g).is_some() {
                return Err(BadGtid(s.to_string()));
            }
        }
        Ok(GtidPos(out))
    }
}

impl Serialize for GtidPos {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GtidPos {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<GtidPos, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(s: &str) -> GtidPos {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_mariadb_positions() {
        assert_eq!(pos("").to_string(), "");
        assert_eq!(pos("1-2-7, 0-1-100\n").to_string(), "0-1-100,1-2-7");
        assert_eq!(pos("0-1-100").domain(0).unwrap().seqno, 100);
        for bad in ["0-1", "a-1-2", "0-1-2-3", "0-1-5,0-2-6", "-1-2"] {
            assert!(bad.parse::<GtidPos>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&pos("0-1-9")).unwrap();
        assert_eq!(json, "\"0-1-9\"");
        assert_eq!(serde_json::from_str::<GtidPos>(&json).unwrap(), pos("0-1-9"));
    }

    #[test]
    fn progress_is_compared_per_domain() {
        assert_eq!(pos("0-1-5").progress_cmp(&pos("0-2-5")), Some(Ordering::Equal));
        assert_eq!(pos("0-1-6").progress_cmp(&pos("0-1-5")), Some(Ordering::Greater));
        assert_eq!(pos("").progress_cmp(&pos("0-1-1")), Some(Ordering::Less));
        assert_eq!(pos("0-1-6,1-1-1").progress_cmp(&pos("0-1-7")), None);
        assert!(pos("0-1-7,1-1-1").covers(&pos("0-1-7")));
        assert!(!pos("0-1-6").covers(&pos("0-1-7")));
    }

    #[test]
    fn containment_in_a_fork_detects_errant_transactions() {
        let fork = pos("0-1-100");
        assert!(pos("0-1-90").is_within(&fork));
        assert!(pos("0-1-100").is_within(&fork));
        assert!(pos("").is_within(&fork));
        // The old primary committed 101 after the new one took over at 100.
        assert!(!pos("0-1-101").is_within(&fork));
        // Same seqno, different origin: an errant transaction.
        assert!(!pos("0-3-100").is_within(&fork));
        // A domain the new history never had.
        assert!(!pos("0-1-50,5-1-1").is_within(&fork));
    }
}
