//! `--watch`: inotify on every directory of a local source; bursts of events are batched into
//! one sync run once the tree has been quiet for a moment.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;

use crate::error::{Result, SyncError};
use crate::paths::{is_internal, STATE_DIR};

/// Batching of a burst: run once nothing happened for `quiet`, or `max_delay` after the first
/// event at the latest.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    pub quiet: Duration,
    pub max_delay: Duration,
}

impl Default for Batching {
    fn default() -> Self {
        Batching {
            quiet: Duration::from_millis(300),
            max_delay: Duration::from_secs(5),
        }
    }
}

struct Watcher {
    fd: OwnedFd,
    root: std::path::PathBuf,
    dirs: HashMap<i32, String>,
}

const MASK: WatchFlags = WatchFlags::CLOSE_WRITE
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::CREATE)
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::ONLYDIR)
    .union(WatchFlags::DONT_FOLLOW);

impl Watcher {
    fn new(root: &Path) -> Result<Watcher> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| SyncError::io("watch", root, e.into()))?;
        let mut w = Watcher {
            fd,
            root: root.to_path_buf(),
            dirs: HashMap::new(),
        };
        w.add_tree("")?;
        Ok(w)
    }

    /// Watches `rel` and every directory below it.
    fn add_tree(&mut self, rel: &str) -> Result<()> {
        let path = if rel.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rel)
        };
        match inotify::add_watch(&self.fd, &path, MASK) {
            Ok(wd) => {
                self.dirs.insert(wd, rel.to_string());
            }
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(()),
            Err(Errno::NOSPC) => {
                return Err(SyncError::io(
                    "watch (raise fs.inotify.max_user_watches)",
                    &path,
                    Errno::NOSPC.into(),
                ))
            }
            Err(e) => return Err(SyncError::io("watch", &path, e.into())),
        }
        let Ok(rd) = std::fs::read_dir(&path) else {
            return Ok(());
        };
        for ent in rd.flatten() {
            let Some(name) = ent.file_name().to_str().map(str::to_string) else {
                continue;
            };
            if is_internal(&name, rel.is_empty()) || !ent.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let child = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            self.add_tree(&child)?;
        }
        Ok(())
    }

    /// Waits up to `timeout` for events; returns whether any relevant one arrived.
    fn wait(&mut self, timeout: Duration) -> Result<bool> {
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(0) | Err(Errno::INTR) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(SyncError::io("watch", &self.root, e.into())),
        }
        let mut relevant = false;
        let mut new_dirs = Vec::new();
        let mut buf = [MaybeUninit::<u8>::uninit(); 8192];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        loop {
            let ev = match reader.next() {
                Ok(ev) => ev,
                Err(Errno::AGAIN | Errno::INTR) => break,
                Err(e) => return Err(SyncError::io("watch", &self.root, e.into())),
            };
            if ev.events().contains(ReadFlags::QUEUE_OVERFLOW) {
                relevant = true; // lost events: a full run will catch up
                continue;
            }
            let Some(dir) = self.dirs.get(&ev.wd()).cloned() else {
                continue;
            };
            let name = ev
                .file_name()
                .and_then(|n| n.to_str().ok())
                .unwrap_or("")
                .to_string();
            if name.is_empty() || is_internal(&name, dir.is_empty()) || (dir.is_empty() && name == STATE_DIR)
            {
                continue;
            }
            relevant = true;
            if ev.events().contains(ReadFlags::ISDIR)
                && ev.events().intersects(ReadFlags::CREATE | ReadFlags::MOVED_TO)
            {
                new_dirs.push(if dir.is_empty() {
                    name
                } else {
                    format!("{dir}/{name}")
                });
            }
            if ev.events().contains(ReadFlags::IGNORED) {
                self.dirs.remove(&ev.wd());
            }
        }
        for d in new_dirs {
            self.add_tree(&d)?;
        }
        Ok(relevant)
    }
}

/// Runs `batch` once, then again after every quiet burst of changes under `src`, until
/// `stop` is set. Errors of a batch are passed to `batch`'s caller through its own handling:
/// only watching errors end the loop.
pub fn watch(src: &Path, stop: &AtomicBool, batching: Batching, mut batch: impl FnMut()) -> Result<()> {
    let mut w = Watcher::new(src)?;
    batch();
    let tick = Duration::from_millis(200);
    while !stop.load(Ordering::Relaxed) {
        if !w.wait(tick)? {
            continue;
        }
        let first = Instant::now();
        let mut last = first;
        while last.elapsed() < batching.quiet && first.elapsed() < batching.max_delay {
            if w.wait(batching.quiet.saturating_sub(last.elapsed()))? {
                last = Instant::now();
            }
        }
        batch();
    }
    Ok(())
}
