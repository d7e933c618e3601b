//! File operations confined to a tree: every path is resolved beneath the tree's root with
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`, so neither `..` nor a symlink can lead out.
//! New versions are written to a temporary file and renamed into place.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use crate::error::{Result, SyncError};
use crate::meta::{from_rustix, FileInfo};
use crate::paths::{split_parent, validate_rel, TMP_PREFIX};

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// The root directory of a tree, opened once.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
    path: PathBuf,
}

impl Root {
    /// Opens `path` as a tree root, creating it if `create`.
    pub fn open(path: &Path, create: bool) -> Result<Root> {
        if create {
            std::fs::create_dir_all(path).map_err(|e| SyncError::io("create", path, e))?;
        }
        let fd = rustix::fs::open(
            path,
            OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| SyncError::io("open directory", path, e.into()))?;
        Ok(Root {
            fd,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The real path of `rel`, for messages and for local reads.
    pub fn join(&self, rel: &str) -> PathBuf {
        if rel.is_empty() {
            self.path.clone()
        } else {
            self.path.join(rel)
        }
    }

    fn err(&self, op: &'static str, rel: &str, e: Errno) -> SyncError {
        if e == Errno::LOOP || e == Errno::XDEV {
            return SyncError::BadPath {
                path: rel.to_string(),
                reason: "a symlink or mount point lies on the way",
            };
        }
        SyncError::io(op, self.join(rel), e.into())
    }

    /// Opens the directory `rel_dir` ("" for the root), creating missing components if `create`.
    pub fn open_dir(&self, rel_dir: &str, create: bool) -> Result<Option<OwnedFd>> {
        let flags = OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC;
        if rel_dir.is_empty() {
            let fd = rustix::fs::openat(&self.fd, ".", flags, Mode::empty())
                .map_err(|e| self.err("open directory", rel_dir, e))?;
            return Ok(Some(fd));
        }
        validate_rel(rel_dir)?;
        match rustix::fs::openat2(&self.fd, rel_dir, flags, Mode::empty(), RESOLVE) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if create => {}
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(None),
            Err(e) => return Err(self.err("open directory", rel_dir, e)),
        }
        let mut cur = rustix::fs::openat(&self.fd, ".", flags, Mode::empty())
            .map_err(|e| self.err("open directory", "", e))?;
        for comp in rel_dir.split('/') {
            match rustix::fs::mkdirat(&cur, comp, Mode::from_raw_mode(0o755)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(self.err("create directory", rel_dir, e)),
            }
            cur = rustix::fs::openat2(&cur, comp, flags, Mode::empty(), RESOLVE)
                .map_err(|e| self.err("open directory", rel_dir, e))?;
        }
        Ok(Some(cur))
    }

    /// Opens the regular file `rel` for reading; `None` if it does not exist.
    pub fn open_file(&self, rel: &str) -> Result<Option<File>> {
        validate_rel(rel)?;
        let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rustix::fs::openat2(&self.fd, rel, flags, Mode::empty(), RESOLVE) {
            Ok(fd) => {
                let f = File::from(fd);
                let st = rustix::fs::fstat(&f).map_err(|e| self.err("stat", rel, e))?;
                if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::RegularFile {
                    return Err(SyncError::BadPath {
                        path: rel.to_string(),
                        reason: "not a regular file",
                    });
                }
                Ok(Some(f))
            }
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err("open", rel, e)),
        }
    }

    /// Stats the regular file `rel`; `None` if absent.
    pub fn stat(&self, rel: &str) -> Result<Option<FileInfo>> {
        validate_rel(rel)?;
        let (dir, name) = split_parent(rel);
        let Some(dfd) = self.open_dir(dir, false)? else {
            return Ok(None);
        };
        match rustix::fs::statat(&dfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => Ok(Some(from_rustix(&st))),
            Err(Errno::NOENT) => Ok(None),
            Err(e) => Err(self.err("stat", rel, e)),
        }
    }

    /// Removes the file `rel` if its stamp still is `expect` (or unconditionally with `None`).
    pub fn remove(&self, rel: &str) -> Result<()> {
        validate_rel(rel)?;
        let (dir, name) = split_parent(rel);
        let Some(dfd) = self.open_dir(dir, false)? else {
            return Ok(());
        };
        match rustix::fs::unlinkat(&dfd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(self.err("remove", rel, e)),
        }
    }

    /// Renames `from` to `to` within the tree (used to keep a conflict copy).
    pub fn rename(&self, from: &str, to: &str) -> Result<()> {
        validate_rel(from)?;
        validate_rel(to)?;
        let (fdir, fname) = split_parent(from);
        let (tdir, tname) = split_parent(to);
        let f = self
            .open_dir(fdir, false)?
            .ok_or_else(|| SyncError::io("rename", self.join(from), std::io::ErrorKind::NotFound.into()))?;
        let t = self.open_dir(tdir, true)?.expect("created");
        rustix::fs::renameat(&f, fname, &t, tname).map_err(|e| self.err("rename", from, e))
    }

    /// Starts writing a new version of `rel` in a temporary file beside it.
    pub fn create_temp(&self, rel: &str) -> Result<NewFile> {
        validate_rel(rel)?;
        let (dir, name) = split_parent(rel);
        let dfd = self.open_dir(dir, true)?.expect("created");
        let tmp_name = format!("{TMP_PREFIX}{name}-{:016x}", rand::random::<u64>());
        let fd = rustix::fs::openat(
            &dfd,
            tmp_name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR | OFlags::CLOEXEC | OFlags::NOFOLLOW,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| self.err("create temporary file in", dir, e))?;
        Ok(NewFile {
            dir: dfd,
            tmp_name,
            rel: rel.to_string(),
            real: self.join(rel),
            file: File::from(fd),
            committed: false,
        })
    }

    /// Flushes the whole filesystem holding the tree: one journal commit for a batch of files
    /// instead of one per file.
    pub fn syncfs(&self) -> Result<()> {
        rustix::fs::syncfs(&self.fd).map_err(|e| self.err("sync filesystem of", "", e))
    }

    /// fsyncs the directory `rel_dir` so that renames in it survive a crash.
    pub fn sync_dir(&self, rel_dir: &str) -> Result<()> {
        if let Some(fd) = self.open_dir(rel_dir, false)? {
            rustix::fs::fsync(&fd).map_err(|e| self.err("fsync directory", rel_dir, e))?;
        }
        Ok(())
    }
}

/// A new version being written. Dropped without `commit`, the temporary file is removed;
/// killed, it is left under a temporary name that no walk takes for a real file.
pub struct NewFile {
    dir: OwnedFd,
    tmp_name: String,
    rel: String,
    real: PathBuf,
    pub file: File,
    committed: bool,
}

/// The metadata a committed file gets.
#[derive(Debug, Clone, Copy)]
pub struct Attrs {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_ns: i64,
}

impl From<&FileInfo> for Attrs {
    fn from(i: &FileInfo) -> Attrs {
        Attrs {
            mode: i.mode,
            uid: i.uid,
            gid: i.gid,
            mtime_ns: i.stamp.mtime_ns,
        }
    }
}

impl NewFile {
    pub fn rel(&self) -> &str {
        &self.rel
    }

    /// Sets mode, owner (where permitted) and mtime, fsyncs, and renames over the target.
    pub fn commit(mut self, attrs: &Attrs) -> Result<FileInfo> {
        self.prepare(attrs)?;
        self.file
            .sync_all()
            .map_err(|e| SyncError::io("fsync", self.real.clone(), e))?;
        self.install()
    }

    /// Sets mode, owner (where permitted) and mtime. The caller makes it durable (fsync, or
    /// one syncfs for a batch) before [`NewFile::install`].
    pub fn prepare(&mut self, attrs: &Attrs) -> Result<()> {
        let io = |op, e: std::io::Error| SyncError::io(op, self.real.clone(), e);
        // Owner first: chown clears setuid bits. Not being allowed to is fine (not root).
        match std::os::unix::fs::fchown(&self.file, Some(attrs.uid), Some(attrs.gid)) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc_eperm()) => {}
            Err(e) => return Err(io("chown", e)),
        }
        self.file
            .set_permissions(std::fs::Permissions::from_mode(attrs.mode))
            .map_err(|e| io("chmod", e))?;
        let mtime = if attrs.mtime_ns >= 0 {
            UNIX_EPOCH + Duration::from_nanos(attrs.mtime_ns as u64)
        } else {
            UNIX_EPOCH - Duration::from_nanos(attrs.mtime_ns.unsigned_abs())
        };
        self.file
            .set_times(
                std::fs::FileTimes::new()
                    .set_modified(mtime)
                    .set_accessed(SystemTime::now()),
            )
            .map_err(|e| io("set mtime of", e))
    }

    /// Renames the (durable) temporary file over the target: readers see the old or the new
    /// version, never a mix. Returns the installed file's state.
    pub fn install(mut self) -> Result<FileInfo> {
        let io = |op, e: std::io::Error| SyncError::io(op, self.real.clone(), e);
        crate::failpoint::hit("before-rename");
        let (_, name) = split_parent(&self.rel);
        rustix::fs::renameat(&self.dir, self.tmp_name.as_str(), &self.dir, name)
            .map_err(|e| io("rename into place", e.into()))?;
        self.committed = true;
        let st = rustix::fs::fstat(&self.file).map_err(|e| io("stat", e.into()))?;
        Ok(from_rustix(&st))
    }
}

fn libc_eperm() -> i32 {
    Errno::PERM.raw_os_error()
}

impl Drop for NewFile {
    fn drop(&mut self) {
        if !self.committed {
            let _ = rustix::fs::unlinkat(&self.dir, self.tmp_name.as_str(), AtFlags::empty());
        }
    }
}

/// Removes temporary files left by an interrupted run in directory `dir` of the tree.
pub fn remove_leftover(root: &Root, rel_dir: &str, name: &str) {
    if let Ok(Some(d)) = root.open_dir(rel_dir, false) {
        let _ = rustix::fs::unlinkat(d.as_fd(), name, AtFlags::empty());
    }
}
