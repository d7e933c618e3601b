//! What the sync knows about one file without reading it: a stamp to detect change, and the
//! metadata to reproduce on the other side.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;

use serde::{Deserialize, Serialize};

/// Identifies one version of a file on one side. Any write changes it (ctime cannot be set
/// back by a user), so an equal stamp means "not touched since".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Stamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub ino: u64,
    pub ctime_ns: i64,
}

impl Stamp {
    /// Whether two versions (on different sides) look like the same content: size and mtime.
    pub fn same_version(&self, other: &Stamp) -> bool {
        self.size == other.size && self.mtime_ns == other.mtime_ns
    }

    /// Newest wins by mtime, size as the tie-breaker.
    pub fn newer_than(&self, other: &Stamp) -> bool {
        (self.mtime_ns, self.size) > (other.mtime_ns, other.size)
    }
}

/// A file as seen by a walk or a stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct FileInfo {
    pub stamp: Stamp,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes allocated on disk: the estimate of data to move, for progress.
    pub alloc: u64,
}

impl FileInfo {
    pub fn from_metadata(m: &Metadata) -> FileInfo {
        FileInfo {
            stamp: Stamp {
                size: m.size(),
                mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                ino: m.ino(),
                ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
            },
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            alloc: m.blocks() * 512,
        }
    }
}

pub(crate) fn from_rustix(st: &rustix::fs::Stat) -> FileInfo {
    FileInfo {
        stamp: Stamp {
            size: st.st_size as u64,
            mtime_ns: st.st_mtime * 1_000_000_000 + st.st_mtime_nsec as i64,
            ino: st.st_ino,
            ctime_ns: st.st_ctime * 1_000_000_000 + st.st_ctime_nsec as i64,
        },
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        alloc: st.st_blocks as u64 * 512,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(size: u64, mtime_ns: i64) -> Stamp {
        Stamp {
            size,
            mtime_ns,
            ..Stamp::default()
        }
    }

    #[test]
    fn newest_wins_then_size() {
        assert!(st(1, 2).newer_than(&st(9, 1)));
        assert!(st(2, 1).newer_than(&st(1, 1)));
        assert!(!st(1, 1).newer_than(&st(1, 1)));
        assert!(st(1, 1).same_version(&Stamp { ino: 7, ..st(1, 1) }));
    }
}
