//! Listing a local tree: one stat per file, no reads.

use std::collections::BTreeMap;
use std::path::Path;

use crate::error::{Result, SyncError};
use crate::meta::FileInfo;
use crate::paths::is_internal;

/// Regular files of a tree by relative path.
pub type Tree = BTreeMap<String, FileInfo>;

/// What a walk found.
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Tree,
    /// Temporary files of an interrupted run: `(dir, name)`.
    pub leftovers: Vec<(String, String)>,
    /// Entries that are not synced (symlinks, devices, non-UTF-8 names), for the report.
    pub skipped: Vec<String>,
}

/// Walks `root` (which must exist). Subdirectories of the root are listed by `jobs` threads.
pub fn walk(root: &Path, jobs: usize) -> Result<Walk> {
    let mut top = Walk::default();
    let mut dirs = Vec::new();
    list_dir(root, "", &mut top, &mut dirs)?;
    if dirs.is_empty() {
        return Ok(top);
    }
    let jobs = jobs.clamp(1, dirs.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let parts: Vec<Result<Walk>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..jobs)
            .map(|_| {
                s.spawn(|| {
                    let mut w = Walk::default();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(d) = dirs.get(i) else { break };
                        walk_rec(root, d, &mut w)?;
                    }
                    Ok(w)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("walker panicked"))
            .collect()
    });
    for p in parts {
        let p = p?;
        top.files.extend(p.files);
        top.leftovers.extend(p.leftovers);
        top.skipped.extend(p.skipped);
    }
    Ok(top)
}

fn walk_rec(root: &Path, rel_dir: &str, w: &mut Walk) -> Result<()> {
    let mut dirs = Vec::new();
    list_dir(root, rel_dir, w, &mut dirs)?;
    for d in dirs {
        walk_rec(root, &d, w)?;
    }
    Ok(())
}

fn list_dir(root: &Path, rel_dir: &str, w: &mut Walk, dirs: &mut Vec<String>) -> Result<()> {
    let path = if rel_dir.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel_dir)
    };
    let rd = std::fs::read_dir(&path).map_err(|e| SyncError::io("list", &path, e))?;
    for ent in rd {
        let ent = ent.map_err(|e| SyncError::io("list", &path, e))?;
        let os_name = ent.file_name();
        let rel_of = |n: &str| {
            if rel_dir.is_empty() {
                n.to_string()
            } else {
                format!("{rel_dir}/{n}")
            }
        };
        let Some(name) = os_name.to_str() else {
            w.skipped.push(rel_of(&os_name.to_string_lossy()));
            continue;
        };
        if is_internal(name, rel_dir.is_empty()) {
            if name.starts_with(crate::paths::TMP_PREFIX) {
                w.leftovers.push((rel_dir.to_string(), name.to_string()));
            }
            continue;
        }
        let ft = ent
            .file_type()
            .map_err(|e| SyncError::io("stat", ent.path(), e))?;
        if ft.is_dir() {
            dirs.push(rel_of(name));
        } else if ft.is_file() {
            match ent.metadata() {
                Ok(m) => {
                    w.files.insert(rel_of(name), FileInfo::from_metadata(&m));
                }
                // deleted between readdir and stat: it is simply not there
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SyncError::io("stat", ent.path(), e)),
            }
        } else {
            w.skipped.push(rel_of(name));
        }
    }
    Ok(())
}

/// Stats just the named files of `root` (no directory listing), with `jobs` threads. Names
/// that are absent or not regular files are left out.
pub fn stat_known(root: &Path, names: &std::collections::BTreeSet<&String>, jobs: usize) -> Result<Tree> {
    let names: Vec<&String> = names.iter().copied().collect();
    let jobs = jobs.clamp(1, names.len().max(1));
    let chunk = names.len().div_ceil(jobs).max(1);
    let parts: Vec<Result<Tree>> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    let mut t = Tree::new();
                    for rel in part {
                        let p = root.join(rel);
                        match std::fs::symlink_metadata(&p) {
                            Ok(m) if m.file_type().is_file() => {
                                t.insert((*rel).clone(), FileInfo::from_metadata(&m));
                            }
                            Ok(_) => {}
                            Err(e)
                                if matches!(
                                    e.kind(),
                                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                                ) => {}
                            Err(e) => return Err(SyncError::io("stat", &p, e)),
                        }
                    }
                    Ok(t)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("stat worker panicked"))
            .collect()
    });
    let mut all = Tree::new();
    for p in parts {
        all.extend(p?);
    }
    Ok(all)
}
