//! The pure decision: given what both sides hold and what the record says they held after the
//! last sync, what to do for each file. No I/O; the executor carries out the actions.
//!
//! ```text
//!  src stamp ─┐                       ┌─► Copy            (src newer / dst missing)
//!  dst stamp ─┼─► plan(path) ─────────┼─► ConflictOverwrite (both changed, src newer: dst kept aside)
//!  record    ─┘   (newest wins:       ├─► ConflictKeepDst  (both changed, dst newer: src kept beside)
//!                  mtime, then size)  ├─► Delete / Adopt / Forget
//!                                     └─► nothing          (unchanged since the record: no read)
//! ```

use crate::meta::Stamp;
use crate::paths::conflict_name;
use crate::record::Record;
use crate::walk::Tree;

/// One step of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write src's version of `rel` over dst's, which must still be `expect` (None: absent).
    Copy { rel: String, expect: Option<Stamp> },
    /// Both sides changed and src is newer: dst's version is renamed to `aside`, then copied over.
    ConflictOverwrite {
        rel: String,
        aside: String,
        expect: Stamp,
    },
    /// Both sides changed and dst is newer: src's version is copied to `copy` beside it.
    ConflictKeepDst { rel: String, copy: String },
    /// src no longer has `rel` and `--delete` was asked: remove dst's version if still `expect`.
    Delete { rel: String, expect: Stamp },
    /// Both sides already hold the same version: only the record learns it.
    Adopt { rel: String },
    /// The file is gone from both sides: drop it from the record.
    Forget { rel: String },
}

/// The actions of one run, and what was left alone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    /// Files unchanged on both sides since the last sync.
    pub unchanged: usize,
    /// Files where dst holds the newer version (a reverse run will carry them back).
    pub dst_newer: Vec<String>,
    /// Files `--delete` did not remove because dst changed them since the last sync.
    pub kept: Vec<String>,
}

/// Decides every file. `dst` is what the target holds (for a remote target without a listing,
/// what the record says it holds: the server re-checks each stamp before changing anything).
pub fn plan(src: &Tree, dst: &Tree, record: &Record, delete: bool) -> Plan {
    let mut p = Plan::default();
    for (rel, s) in src {
        let s = &s.stamp;
        let d = dst.get(rel).map(|i| &i.stamp);
        let r = record.entries.get(rel);
        let Some(d) = d else {
            p.actions.push(Action::Copy {
                rel: rel.clone(),
                expect: None,
            });
            continue;
        };
        let src_changed = r.is_none_or(|r| r.src != *s);
        let dst_changed = r.is_none_or(|r| r.dst != *d);
        if !src_changed && !dst_changed {
            p.unchanged += 1;
        } else if s.same_version(d) {
            // already equal (copied by an interrupted run, or by hand): remember, don't copy
            p.actions.push(Action::Adopt { rel: rel.clone() });
        } else if r.is_some() && src_changed && dst_changed {
            if s.newer_than(d) {
                p.actions.push(Action::ConflictOverwrite {
                    rel: rel.clone(),
                    aside: conflict_name(rel, d.mtime_ns as i128),
                    expect: *d,
                });
            } else {
                p.actions.push(Action::ConflictKeepDst {
                    rel: rel.clone(),
                    copy: conflict_name(rel, s.mtime_ns as i128),
                });
            }
        } else if s.newer_than(d) {
            p.actions.push(Action::Copy {
                rel: rel.clone(),
                expect: Some(*d),
            });
        } else {
            p.dst_newer.push(rel.clone());
        }
    }
    for (rel, d) in dst {
        if src.contains_key(rel) || !delete {
            continue;
        }
        match record.entries.get(rel) {
            Some(r) if r.dst != d.stamp => p.kept.push(rel.clone()),
            _ => p.actions.push(Action::Delete {
                rel: rel.clone(),
                expect: d.stamp,
            }),
        }
    }
    for rel in record.entries.keys() {
        if !src.contains_key(rel) && !dst.contains_key(rel) {
            p.actions.push(Action::Forget { rel: rel.clone() });
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::FileInfo;
    use crate::record::Entry;

    fn info(size: u64, mtime_ns: i64, ino: u64) -> FileInfo {
        FileInfo {
            stamp: Stamp {
                size,
                mtime_ns,
                ino,
                ctime_ns: mtime_ns,
            },
            ..FileInfo::default()
        }
    }

    fn tree(items: &[(&str, FileInfo)]) -> Tree {
        items.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn rec(items: &[(&str, FileInfo, FileInfo)]) -> Record {
        Record {
            entries: items
                .iter()
                .map(|(k, s, d)| {
                    (
                        k.to_string(),
                        Entry {
                            src: s.stamp,
                            dst: d.stamp,
                            hashes: vec![],
                        },
                    )
                })
                .collect(),
        }
    }

    #[test]
    fn missing_on_dst_is_copied() {
        let p = plan(
            &tree(&[("a", info(1, 10, 1))]),
            &Tree::new(),
            &Record::default(),
            false,
        );
        assert_eq!(
            p.actions,
            vec![Action::Copy {
                rel: "a".into(),
                expect: None
            }]
        );
    }

    #[test]
    fn unchanged_since_record_is_left_alone() {
        let s = info(1, 10, 1);
        let d = info(1, 10, 2);
        let p = plan(&tree(&[("a", s)]), &tree(&[("a", d)]), &rec(&[("a", s, d)]), true);
        assert_eq!(p.actions, vec![]);
        assert_eq!(p.unchanged, 1);
    }

    #[test]
    fn newest_wins_without_record_and_no_conflict() {
        let src = tree(&[
            ("a", info(1, 20, 1)),
            ("b", info(1, 10, 2)),
            ("c", info(2, 10, 3)),
        ]);
        let dst = tree(&[
            ("a", info(1, 10, 7)),
            ("b", info(1, 20, 8)),
            ("c", info(1, 10, 9)),
        ]);
        let p = plan(&src, &dst, &Record::default(), false);
        assert_eq!(
            p.actions,
            vec![
                Action::Copy {
                    rel: "a".into(),
                    expect: Some(dst["a"].stamp)
                },
                Action::Copy {
                    rel: "c".into(),
                    expect: Some(dst["c"].stamp)
                },
            ]
        );
        assert_eq!(p.dst_newer, vec!["b".to_string()]);
    }

    #[test]
    fn both_changed_is_a_conflict_keeping_both() {
        let (s0, d0) = (info(1, 10, 1), info(1, 10, 2));
        let r = rec(&[("a", s0, d0), ("b", s0, d0)]);
        let src = tree(&[
            ("a", info(1, 30_000_000_000, 1)),
            ("b", info(1, 20_000_000_000, 1)),
        ]);
        let dst = tree(&[
            ("a", info(1, 20_000_000_000, 2)),
            ("b", info(1, 30_000_000_000, 2)),
        ]);
        let p = plan(&src, &dst, &r, false);
        assert_eq!(
            p.actions,
            vec![
                Action::ConflictOverwrite {
                    rel: "a".into(),
                    aside: "a.conflict-20".into(),
                    expect: dst["a"].stamp
                },
                Action::ConflictKeepDst {
                    rel: "b".into(),
                    copy: "b.conflict-20".into()
                },
            ]
        );
    }

    #[test]
    fn equal_versions_are_adopted_not_copied() {
        // an interrupted run already renamed the new version into place
        let (s0, d0) = (info(1, 10, 1), info(1, 10, 2));
        let src = tree(&[("a", info(5, 50, 1))]);
        let dst = tree(&[("a", info(5, 50, 3))]);
        let p = plan(&src, &dst, &rec(&[("a", s0, d0)]), false);
        assert_eq!(p.actions, vec![Action::Adopt { rel: "a".into() }]);
    }

    #[test]
    fn delete_spares_files_changed_on_dst() {
        let (s0, d0) = (info(1, 10, 1), info(1, 10, 2));
        let r = rec(&[("gone", s0, d0), ("edited", s0, d0), ("both", s0, d0)]);
        let dst = tree(&[("gone", d0), ("edited", info(2, 99, 2)), ("extra", info(1, 1, 4))]);
        let p = plan(&Tree::new(), &dst, &r, true);
        assert_eq!(
            p.actions,
            vec![
                Action::Delete {
                    rel: "extra".into(),
                    expect: dst["extra"].stamp
                },
                Action::Delete {
                    rel: "gone".into(),
                    expect: d0.stamp
                },
                Action::Forget { rel: "both".into() },
            ]
        );
        assert_eq!(p.kept, vec!["edited".to_string()]);
        // without --delete nothing on dst is touched
        assert!(plan(&Tree::new(), &dst, &r, false)
            .actions
            .iter()
            .all(|a| matches!(a, Action::Forget { .. })));
    }
}
