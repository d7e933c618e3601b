//! One sync run: list, plan (pure), then carry out the actions through a [`Mover`] that knows
//! how to move bytes between the two kinds of sides, and keep the record.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::blocks::BlockHash;
use crate::endpoint::Endpoint;
use crate::error::{Result, SyncError};
use crate::extents::copy_sparse;
use crate::fsops::{Attrs, Root};
use crate::meta::{from_rustix, Stamp};
use crate::paths::split_parent;
use crate::plan::{plan, Action};
use crate::progress::Progress;
use crate::record::{Entry, Loaded, Record, RecordFile};
use crate::remote::client::ClientOptions;
use crate::walk::{walk, Tree};

/// How to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub jobs: usize,
    pub dry_run: bool,
    pub delete: bool,
    /// Ignore the record's shortcuts: list the remote side and compare every file.
    pub full: bool,
    pub client: ClientOptions,
}

/// What the record was at the start of the run.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RecordState {
    #[default]
    Fresh,
    Missing,
    /// Damaged: reported and rebuilt from a full comparison.
    Rebuilt(&'static str),
}

/// The outcome of a run.
#[derive(Debug, Default)]
pub struct Summary {
    pub copied: usize,
    pub data_bytes: u64,
    pub wire_bytes: u64,
    pub deleted: usize,
    pub adopted: usize,
    pub unchanged: usize,
    /// Conflicts: `(file, conflict copy)`.
    pub conflicts: Vec<(String, String)>,
    pub dst_newer: usize,
    pub kept: Vec<String>,
    pub skipped: Vec<String>,
    pub failed: Vec<(String, SyncError)>,
    pub record: RecordState,
    pub planned: Vec<Action>,
    pub elapsed: Duration,
}

impl Summary {
    /// The one-line report.
    pub fn line(&self) -> String {
        let wire = if self.wire_bytes > 0 {
            format!(", {} on the wire", crate::progress::human(self.wire_bytes))
        } else {
            String::new()
        };
        let mut s = format!(
            "{} copied ({} data{wire}), {} deleted, {} conflict(s), {} unchanged, {} newer on target, {} failed in {:.2} s",
            self.copied,
            crate::progress::human(self.data_bytes),
            self.deleted,
            self.conflicts.len(),
            self.unchanged + self.adopted,
            self.dst_newer,
            self.failed.len(),
            self.elapsed.as_secs_f64()
        );
        if let RecordState::Rebuilt(why) = &self.record {
            s.push_str(&format!("; record was damaged ({why}) and has been rebuilt"));
        }
        s
    }
}

/// Result of moving one file.
#[derive(Debug, Clone, Default)]
pub struct Moved {
    /// Written but not yet renamed into place: the mover's `flush` installs it.
    pub staged: bool,
    pub src: Stamp,
    pub dst: Stamp,
    pub hashes: Vec<BlockHash>,
    pub data: u64,
}

/// Makes one batch of staged files durable and installs them (see [`Mover::flush`]).
pub type Install<'a> = Box<dyn FnOnce() -> Vec<(String, Result<Stamp>)> + Send + 'a>;

/// Moves bytes from src to dst for one kind of pair. Implementations check `expect` against
/// the target right before replacing it (compare-and-swap), so a change made since the listing
/// is never overwritten blindly.
pub trait Mover: Sync {
    fn jobs(&self) -> usize;
    /// Copies src's `rel` to dst's `target` (normally `rel`), which must still be `expect`.
    fn copy(
        &self,
        rel: &str,
        target: &str,
        expect: Option<Stamp>,
        known: Option<&Entry>,
        progress: &Progress,
    ) -> Result<Moved>;
    fn rename_aside(&self, rel: &str, aside: &str, expect: Stamp) -> Result<()>;
    fn delete(&self, rel: &str, expect: Stamp) -> Result<()>;
    /// Makes the directories touched durable.
    fn finish(&self, dirs: &BTreeSet<String>) -> Result<()>;
    fn wire_bytes(&self) -> u64 {
        0
    }
    /// Takes the files staged so far. The returned closure makes them durable and installs
    /// them, returning each target's new stamp; it may run while the next batch is copied.
    fn flush(&self) -> Install<'_> {
        Box::new(Vec::new)
    }
    /// A fresh listing of the target, for movers whose plan may have used the record instead.
    fn list_target(&self) -> Result<Tree> {
        Ok(Tree::new())
    }
}

/// Local directory to local directory.
pub struct LocalMover {
    pub src: Root,
    pub dst: Root,
    pub jobs: usize,
    /// Files written and prepared, waiting for the batch's syncfs and rename.
    /// With each, the target state the plan expects to replace, re-checked at install.
    pub staged: Mutex<Vec<(crate::fsops::NewFile, Option<Stamp>)>>,
}

impl LocalMover {
    pub fn new(src: Root, dst: Root, jobs: usize) -> LocalMover {
        LocalMover {
            src,
            dst,
            jobs,
            staged: Mutex::new(Vec::new()),
        }
    }

    /// One syncfs for the batch's data and metadata, then the renames.
    fn install(&self, batch: Vec<(crate::fsops::NewFile, Option<Stamp>)>) -> Vec<(String, Result<Stamp>)> {
        if batch.is_empty() {
            return Vec::new();
        }
        // one flush for the batch's data and metadata, then the renames
        if let Err(e) = self.dst.syncfs() {
            let msg = e.to_string();
            return batch
                .into_iter()
                .map(|(nf, _)| {
                    let rel = nf.rel().to_string();
                    let err = SyncError::io("flush", self.dst.join(&rel), std::io::Error::other(msg.clone()));
                    (rel, Err(err))
                })
                .collect();
        }
        batch
            .into_iter()
            .map(|(nf, expect)| {
                let rel = nf.rel().to_string();
                // compare-and-swap, again: the target may have changed since the copy began
                let res = match self.dst.stat(&rel) {
                    Ok(cur) if cur.map(|i| i.stamp) == expect => nf.install().map(|i| i.stamp),
                    Ok(_) => Err(SyncError::Changed {
                        path: rel.clone(),
                        side: "target",
                    }),
                    Err(e) => Err(e),
                };
                (rel, res)
            })
            .collect()
    }
}

impl Mover for LocalMover {
    fn jobs(&self) -> usize {
        self.jobs
    }

    fn copy(
        &self,
        rel: &str,
        target: &str,
        expect: Option<Stamp>,
        _known: Option<&Entry>,
        progress: &Progress,
    ) -> Result<Moved> {
        let f = self.src.open_file(rel)?.ok_or_else(|| SyncError::Changed {
            path: rel.to_string(),
            side: "source",
        })?;
        let fstat = |f: &std::fs::File| {
            rustix::fs::fstat(f)
                .map(|s| from_rustix(&s))
                .map_err(|e| SyncError::io("stat", self.src.join(rel), e.into()))
        };
        let before = fstat(&f)?;
        if self.dst.stat(target)?.map(|i| i.stamp) != expect {
            return Err(SyncError::Changed {
                path: target.to_string(),
                side: "target",
            });
        }
        let mut nf = self.dst.create_temp(target)?;
        let data = copy_sparse(&f, &nf.file, before.stamp.size)
            .map_err(|e| SyncError::io("copy", self.src.join(rel), e))?;
        progress.add(data.max(before.alloc));
        // start writing this file back now, while the next ones are copied: the batch's
        // syncfs then finds little left to do (best effort; correctness rests on syncfs)
        let _ = rustix::fs::fadvise(&nf.file, 0, None, rustix::fs::Advice::DontNeed);
        if fstat(&f)?.stamp != before.stamp {
            return Err(SyncError::Changed {
                path: rel.to_string(),
                side: "source",
            });
        }
        nf.prepare(&Attrs::from(&before))?;
        self.staged.lock().expect("staged lock").push((nf, expect));
        Ok(Moved {
            staged: true,
            src: before.stamp,
            dst: Stamp::default(),
            hashes: vec![],
            data,
        })
    }

    fn rename_aside(&self, rel: &str, aside: &str, expect: Stamp) -> Result<()> {
        if self.dst.stat(rel)?.map(|i| i.stamp) != Some(expect) {
            return Err(SyncError::Changed {
                path: rel.to_string(),
                side: "target",
            });
        }
        self.dst.rename(rel, aside)
    }

    fn delete(&self, rel: &str, expect: Stamp) -> Result<()> {
        match self.dst.stat(rel)? {
            Some(i) if i.stamp != expect => Err(SyncError::Changed {
                path: rel.to_string(),
                side: "target",
            }),
            Some(_) => self.dst.remove(rel),
            None => Ok(()),
        }
    }

    fn flush(&self) -> Install<'_> {
        let batch = std::mem::take(&mut *self.staged.lock().expect("staged lock"));
        Box::new(move || self.install(batch))
    }

    fn finish(&self, dirs: &BTreeSet<String>) -> Result<()> {
        // the renames of the run, durable in one go
        if !dirs.is_empty() {
            self.dst.syncfs()?;
        }
        Ok(())
    }
}

/// Where the record of a pair lives, and the lock that keeps two runs of it apart.
fn record_file(src: &Endpoint, dst: &Endpoint) -> Result<RecordFile> {
    let canon = |e: &Endpoint| match e {
        Endpoint::Local(p) => std::fs::canonicalize(p)
            .map(|p| p.display().to_string())
            .map_err(|err| SyncError::io("resolve", p, err)),
        Endpoint::Remote(_) => Ok(e.to_string()),
    };
    let (s, d) = (canon(src)?, canon(dst)?);
    let tree = match (dst, src) {
        (Endpoint::Local(p), _) | (_, Endpoint::Local(p)) => p.clone(),
        _ => return Err(SyncError::BothRemote { src: s, dst: d }),
    };
    Ok(RecordFile::for_pair(&tree, &s, &d))
}

/// Runs one sync of `src` into `dst`.
pub fn sync(src: &Endpoint, dst: &Endpoint, opts: &Options, progress: &Arc<Progress>) -> Result<Summary> {
    let t0 = Instant::now();
    let jobs = opts.jobs.max(1);
    if let Endpoint::Local(p) = src {
        if !p.is_dir() {
            return Err(SyncError::io(
                "read source directory",
                p,
                std::io::ErrorKind::NotFound.into(),
            ));
        }
    }
    if let Endpoint::Local(p) = dst {
        std::fs::create_dir_all(p).map_err(|e| SyncError::io("create", p, e))?;
    }
    let rf = record_file(src, dst)?;
    let _lock = rf.lock()?;
    let (mut record, state) = match rf.load()? {
        Loaded::Fresh(r) => (r, RecordState::Fresh),
        Loaded::Missing => (Record::default(), RecordState::Missing),
        Loaded::Damaged(why) => {
            tracing::warn!(record = %rf.path().display(), why, "sync record damaged; rebuilding it from a full comparison");
            (Record::default(), RecordState::Rebuilt(why))
        }
    };
    // Present at the start: the last run was killed before its end.
    let unfinished = rf.running_marker().exists();
    if !opts.dry_run {
        let m = rf.running_marker();
        std::fs::write(&m, b"").map_err(|e| SyncError::io("write", &m, e))?;
    }
    let mut summary = Summary {
        record: state.clone(),
        ..Summary::default()
    };
    let mut listed = true;
    let (src_tree, dst_tree, mover): (Tree, Tree, Box<dyn Mover>) = match (src, dst) {
        (Endpoint::Local(s), Endpoint::Local(d)) => {
            // The target is listed in full only when something may hide there: a first or
            // rebuilt record, --delete/--full, or temp files of a run that did not finish.
            // Otherwise it is enough to stat the files the source and the record name.
            let list_dst = opts.full || opts.delete || state != RecordState::Fresh || unfinished;
            // The recorded target files are statted while the source is walked; source files
            // the record does not know are statted after.
            let (sw, dw) = std::thread::scope(|sc| {
                let a = sc.spawn(|| walk(s, jobs));
                let b = if list_dst {
                    walk(d, jobs)
                } else {
                    let known: BTreeSet<&String> = record.entries.keys().collect();
                    crate::walk::stat_known(d, &known, jobs).map(|files| crate::walk::Walk {
                        files,
                        ..Default::default()
                    })
                };
                (a.join().expect("walker panicked"), b)
            });
            let (sw, mut dw) = (sw?, dw?);
            if !list_dst {
                let new: BTreeSet<&String> = sw
                    .files
                    .keys()
                    .filter(|k| !record.entries.contains_key(*k))
                    .collect();
                if !new.is_empty() {
                    dw.files.extend(crate::walk::stat_known(d, &new, jobs)?);
                }
            }
            let droot = Root::open(d, false)?;
            if !opts.dry_run {
                for (dir, name) in &dw.leftovers {
                    crate::fsops::remove_leftover(&droot, dir, name);
                }
            }
            summary.skipped = sw.skipped;
            let mover = LocalMover::new(Root::open(s, false)?, droot, jobs);
            (sw.files, dw.files, Box::new(mover))
        }
        (Endpoint::Local(s), Endpoint::Remote(r)) => {
            let sw = walk(s, jobs)?;
            summary.skipped = sw.skipped;
            let client = crate::remote::client::Client::connect(r, &opts.client)?;
            let list_needed = opts.full || opts.delete || state != RecordState::Fresh;
            listed = list_needed;
            let dst_tree = if list_needed {
                client.list()?
            } else {
                // no listing: trust the record's view of the target; the server re-checks
                // each stamp before it replaces or removes anything
                record
                    .entries
                    .iter()
                    .map(|(k, e)| {
                        (
                            k.clone(),
                            crate::meta::FileInfo {
                                stamp: e.dst,
                                ..Default::default()
                            },
                        )
                    })
                    .collect()
            };
            let mover = crate::remote::client::PushMover::new(Root::open(s, false)?, client, jobs);
            (sw.files, dst_tree, Box::new(mover))
        }
        (Endpoint::Remote(r), Endpoint::Local(d)) => {
            let dw = walk(d, jobs)?;
            let droot = Root::open(d, false)?;
            if !opts.dry_run {
                for (dir, name) in &dw.leftovers {
                    crate::fsops::remove_leftover(&droot, dir, name);
                }
            }
            let client = crate::remote::client::Client::connect(r, &opts.client)?;
            let src_tree = client.list()?;
            let mover = crate::remote::client::PullMover::new(droot, client, jobs);
            (src_tree, dw.files, Box::new(mover))
        }
        (Endpoint::Remote(_), Endpoint::Remote(_)) => {
            return Err(SyncError::BothRemote {
                src: src.to_string(),
                dst: dst.to_string(),
            })
        }
    };

    let p = plan(&src_tree, &dst_tree, &record, opts.delete);
    summary.unchanged = p.unchanged;
    summary.dst_newer = p.dst_newer.len();
    summary.kept = p.kept;
    if opts.dry_run {
        summary.planned = p.actions;
        summary.elapsed = t0.elapsed();
        return Ok(summary);
    }
    let copies = p.actions.iter().filter_map(|a| match a {
        Action::Copy { rel, .. }
        | Action::ConflictOverwrite { rel, .. }
        | Action::ConflictKeepDst { rel, .. } => src_tree.get(rel),
        _ => None,
    });
    let (mut n, mut bytes) = (0, 0);
    for i in copies {
        n += 1;
        bytes += i.alloc;
    }
    progress.total_files.store(n, Ordering::Relaxed);
    progress.total_bytes.store(bytes, Ordering::Relaxed);

    let results = execute(&*mover, &p.actions, &src_tree, &dst_tree, &record, progress);
    let mut dirs = BTreeSet::new();
    let mut changed = state != RecordState::Fresh;
    let retry = absorb(
        &p.actions,
        results,
        &mut summary,
        &mut record,
        &mut dirs,
        &mut changed,
    );
    // Without a listing, the plan saw the target through the record. Files the server found
    // changed are planned again from its real state (conflicts are decided there).
    if !listed && !retry.is_empty() {
        let fresh = mover.list_target()?;
        let keep = |t: &Tree| -> Tree {
            t.iter()
                .filter(|(k, _)| retry.contains(*k))
                .map(|(k, v)| (k.clone(), *v))
                .collect()
        };
        let (s2, d2) = (keep(&src_tree), keep(&fresh));
        summary.failed.retain(|(rel, _)| !retry.contains(rel));
        let p2 = plan(&s2, &d2, &record, false);
        summary.dst_newer += p2.dst_newer.len();
        let results = execute(&*mover, &p2.actions, &s2, &d2, &record, progress);
        absorb(
            &p2.actions,
            results,
            &mut summary,
            &mut record,
            &mut dirs,
            &mut changed,
        );
    }
    // Files equal on both sides but never recorded (first run over identical trees) are
    // adopted by the plan; nothing else needs the record to change.
    let fin = mover.finish(&dirs);
    summary.wire_bytes = mover.wire_bytes();
    if changed {
        rf.save(&record)?;
    }
    fin?;
    let _ = std::fs::remove_file(rf.running_marker());
    summary.elapsed = t0.elapsed();
    Ok(summary)
}

/// Folds the results of a round into the summary and the record; returns the files the
/// target reported changed (candidates for a second round).
fn absorb(
    actions: &[Action],
    results: Vec<Result<Done>>,
    summary: &mut Summary,
    record: &mut Record,
    dirs: &mut BTreeSet<String>,
    changed: &mut bool,
) -> BTreeSet<String> {
    let mut retry = BTreeSet::new();
    for (action, res) in actions.iter().zip(results) {
        let rel = action_rel(action);
        match res {
            Err(e) => {
                if matches!(e, SyncError::Changed { side: "target", .. }) {
                    retry.insert(rel.to_string());
                }
                tracing::warn!(file = rel, error = %e, "not synced");
                summary.failed.push((rel.to_string(), e));
            }
            Ok(done) => {
                *changed = true;
                if let Some(m) = &done.moved {
                    summary.copied += 1;
                    summary.data_bytes += m.data;
                    dirs.insert(split_parent(rel).0.to_string());
                }
                match action {
                    Action::Delete { .. } => summary.deleted += 1,
                    Action::Adopt { .. } => summary.adopted += 1,
                    Action::ConflictOverwrite { aside, .. } => {
                        summary.conflicts.push((rel.to_string(), aside.clone()))
                    }
                    Action::ConflictKeepDst { copy, .. } => {
                        summary.conflicts.push((rel.to_string(), copy.clone()))
                    }
                    _ => {}
                }
                match done.entry {
                    Some(e) => {
                        record.entries.insert(rel.to_string(), e);
                    }
                    None => {
                        record.entries.remove(rel);
                    }
                }
            }
        }
    }
    retry
}

fn action_rel(a: &Action) -> &str {
    match a {
        Action::Copy { rel, .. }
        | Action::ConflictOverwrite { rel, .. }
        | Action::ConflictKeepDst { rel, .. }
        | Action::Delete { rel, .. }
        | Action::Adopt { rel }
        | Action::Forget { rel } => rel,
    }
}

/// What one action left behind: the data moved and the record entry (None: remove it).
struct Done {
    moved: Option<Moved>,
    entry: Option<Entry>,
    /// Target path of a staged copy, and whether the record entry is about it.
    staged: Option<(String, bool)>,
}

/// Actions per batch: bounds open temp files and makes one syncfs cover many files.
const BATCH: usize = 128;

fn execute(
    mover: &dyn Mover,
    actions: &[Action],
    src: &Tree,
    dst: &Tree,
    record: &Record,
    progress: &Progress,
) -> Vec<Result<Done>> {
    let mut all = Vec::with_capacity(actions.len());
    // Batch k is flushed and installed while batch k+1 is copied.
    std::thread::scope(|s| {
        let mut pending = None;
        for chunk in actions.chunks(BATCH) {
            let res = execute_batch(mover, chunk, src, dst, record, progress);
            let install = mover.flush();
            if let Some((prev, flushing)) = pending.take() {
                all.extend(settle(prev, join_install(flushing)));
            }
            pending = Some((res, s.spawn(install)));
        }
        if let Some((prev, flushing)) = pending {
            all.extend(settle(prev, join_install(flushing)));
        }
    });
    all
}

fn join_install(
    h: std::thread::ScopedJoinHandle<'_, Vec<(String, Result<Stamp>)>>,
) -> Vec<(String, Result<Stamp>)> {
    h.join().expect("install thread panicked")
}

/// Gives each staged copy of a batch the outcome of its install.
fn settle(mut res: Vec<Result<Done>>, installed: Vec<(String, Result<Stamp>)>) -> Vec<Result<Done>> {
    let mut installed: std::collections::HashMap<String, Result<Stamp>> = installed.into_iter().collect();
    for r in res.iter_mut() {
        let Ok(done) = r else { continue };
        let Some((target, is_entry)) = done.staged.take() else {
            continue;
        };
        match installed.remove(&target) {
            Some(Ok(stamp)) => {
                if let Some(m) = &mut done.moved {
                    m.dst = stamp;
                }
                if let (true, Some(e)) = (is_entry, &mut done.entry) {
                    e.dst = stamp;
                }
            }
            Some(Err(e)) => *r = Err(e),
            None => {
                *r = Err(SyncError::Changed {
                    path: target,
                    side: "target",
                })
            }
        }
    }
    res
}

fn execute_batch(
    mover: &dyn Mover,
    actions: &[Action],
    src: &Tree,
    dst: &Tree,
    record: &Record,
    progress: &Progress,
) -> Vec<Result<Done>> {
    let next = AtomicUsize::new(0);
    let out: Mutex<Vec<Option<Result<Done>>>> = Mutex::new((0..actions.len()).map(|_| None).collect());
    let jobs = mover.jobs().clamp(1, actions.len().max(1));
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(a) = actions.get(i) else { break };
                let r = run_action(mover, a, src, dst, record, progress);
                out.lock().expect("results lock")[i] = Some(r);
            });
        }
    });
    out.into_inner()
        .expect("results lock")
        .into_iter()
        .map(|r| r.expect("every action ran"))
        .collect()
}

fn run_action(
    mover: &dyn Mover,
    a: &Action,
    src: &Tree,
    dst: &Tree,
    record: &Record,
    progress: &Progress,
) -> Result<Done> {
    let entry_of = |m: &Moved| Entry {
        src: m.src,
        dst: m.dst,
        hashes: m.hashes.clone(),
    };
    let done = match a {
        Action::Copy { rel, expect } => {
            let known = record.entries.get(rel).filter(|e| Some(e.dst) == *expect);
            let m = mover.copy(rel, rel, *expect, known, progress)?;
            Done {
                entry: Some(entry_of(&m)),
                staged: m.staged.then(|| (rel.clone(), true)),
                moved: Some(m),
            }
        }
        Action::ConflictOverwrite { rel, aside, expect } => {
            mover.rename_aside(rel, aside, *expect)?;
            let m = mover.copy(rel, rel, None, None, progress)?;
            Done {
                entry: Some(entry_of(&m)),
                staged: m.staged.then(|| (rel.clone(), true)),
                moved: Some(m),
            }
        }
        Action::ConflictKeepDst { rel, copy } => {
            let m = mover.copy(rel, copy, dst.get(copy).map(|i| i.stamp), None, progress)?;
            // both versions are now acknowledged: the next run leaves `rel` alone
            let entry = Entry {
                src: m.src,
                dst: dst.get(rel).map(|i| i.stamp).unwrap_or_default(),
                hashes: vec![],
            };
            Done {
                entry: Some(entry),
                staged: m.staged.then(|| (copy.clone(), false)),
                moved: Some(m),
            }
        }
        Action::Delete { rel, expect } => {
            mover.delete(rel, *expect)?;
            Done {
                moved: None,
                entry: None,
                staged: None,
            }
        }
        Action::Adopt { rel } => Done {
            moved: None,
            staged: None,
            entry: match (src.get(rel), dst.get(rel)) {
                (Some(s), Some(d)) => Some(Entry {
                    src: s.stamp,
                    dst: d.stamp,
                    hashes: vec![],
                }),
                _ => None,
            },
        },
        Action::Forget { .. } => Done {
            moved: None,
            entry: None,
            staged: None,
        },
    };
    if done.moved.is_some() {
        progress.file_done();
    }
    Ok(done)
}
