//! Data and hole extents of real files, and the syscalls that move only data:
//! SEEK_DATA/SEEK_HOLE to map, copy_file_range (or FICLONE) to copy, fallocate to punch.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::{FallocateFlags, SeekFrom};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};

/// One contiguous range of a file. In an extent map, the ranges holding data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Extent {
    pub offset: u64,
    pub len: u64,
}

impl Extent {
    pub fn end(&self) -> u64 {
        self.offset + self.len
    }
}

/// Largest single copy_file_range call: the kernel caps a call just under 2 GiB.
const MAX_COPY_CALL: u64 = 1 << 30;

/// Maps where `file` (of `size` bytes) holds data. Filesystems without SEEK_DATA report the
/// whole file as data, which is correct, only slower.
pub fn data_extents(file: &File, size: u64) -> io::Result<Vec<Extent>> {
    let mut out = Vec::new();
    let mut pos = 0u64;
    while pos < size {
        let start = match rustix::fs::seek(file, SeekFrom::Data(pos)) {
            Ok(o) => o,
            Err(Errno::NXIO) => break,
            Err(Errno::INVAL) if pos == 0 => return Ok(vec![Extent { offset: 0, len: size }]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match rustix::fs::seek(file, SeekFrom::Hole(start)) {
            Ok(o) => o.min(size),
            Err(Errno::NXIO) => size,
            Err(e) => return Err(e.into()),
        };
        if end <= start {
            break;
        }
        out.push(Extent {
            offset: start,
            len: end - start,
        });
        pos = end;
    }
    Ok(out)
}

/// Total bytes of data in an extent map.
pub fn data_len(extents: &[Extent]) -> u64 {
    extents.iter().map(|e| e.len).sum()
}

/// The complement of `data` within `[0, size)`: the holes.
pub fn holes(data: &[Extent], size: u64) -> Vec<Extent> {
    let mut out = Vec::new();
    let mut pos = 0;
    for e in data {
        if e.offset > pos {
            out.push(Extent {
                offset: pos,
                len: e.offset - pos,
            });
        }
        pos = pos.max(e.end());
    }
    if pos < size {
        out.push(Extent {
            offset: pos,
            len: size - pos,
        });
    }
    out
}

/// The parts of the sorted, disjoint `extents` that fall in `range`.
pub fn intersect(extents: &[Extent], range: Extent) -> Vec<Extent> {
    let first = extents.partition_point(|e| e.end() <= range.offset);
    extents[first..]
        .iter()
        .take_while(|e| e.offset < range.end())
        .map(|e| {
            let s = e.offset.max(range.offset);
            let t = e.end().min(range.end());
            Extent {
                offset: s,
                len: t - s,
            }
        })
        .filter(|e| e.len > 0)
        .collect()
}

static NO_COPY_FILE_RANGE: AtomicBool = AtomicBool::new(false);
static NO_REFLINK: AtomicBool = AtomicBool::new(false);

/// Copies `[offset, offset+len)` of `src` to the same offset of `dst`, in the kernel when it can.
pub fn copy_range(src: &File, dst: &File, offset: u64, len: u64) -> io::Result<()> {
    let mut done = 0u64;
    if !NO_COPY_FILE_RANGE.load(Ordering::Relaxed) {
        while done < len {
            let mut off_in = offset + done;
            let mut off_out = offset + done;
            let chunk = (len - done).min(MAX_COPY_CALL) as usize;
            match rustix::fs::copy_file_range(src, Some(&mut off_in), dst, Some(&mut off_out), chunk) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "source file shrank during the copy",
                    ))
                }
                Ok(n) => done += n as u64,
                Err(Errno::INTR) => continue,
                Err(Errno::XDEV | Errno::NOSYS | Errno::OPNOTSUPP | Errno::INVAL) if done == 0 => {
                    NO_COPY_FILE_RANGE.store(true, Ordering::Relaxed);
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    let mut buf = vec![0u8; (len - done).min(1 << 20) as usize];
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], offset + done)?;
        dst.write_all_at(&buf[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Makes `dst` (a new, empty file) a sparse copy of `src`: a reflink where the filesystem has
/// it, otherwise the data extents only. Returns the bytes of data copied.
pub fn copy_sparse(src: &File, dst: &File, size: u64) -> io::Result<u64> {
    if !NO_REFLINK.load(Ordering::Relaxed) {
        match rustix::fs::ioctl_ficlone(dst, src) {
            Ok(()) => return Ok(0),
            Err(Errno::OPNOTSUPP | Errno::XDEV | Errno::INVAL | Errno::NOTTY | Errno::PERM) => {
                NO_REFLINK.store(true, Ordering::Relaxed)
            }
            Err(e) => return Err(e.into()),
        }
    }
    dst.set_len(size)?;
    let extents = data_extents(src, size)?;
    for e in &extents {
        copy_range(src, dst, e.offset, e.len)?;
    }
    Ok(data_len(&extents))
}

/// Deallocates `[offset, offset+len)` of `file`, keeping its size: reads return zeros.
pub fn punch_hole(file: &File, offset: u64, len: u64) -> io::Result<()> {
    if len == 0 {
        return Ok(());
    }
    match rustix::fs::fallocate(
        file,
        FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE,
        offset,
        len,
    ) {
        Ok(()) => Ok(()),
        // No hole punching here: write zeros, which is correct if not sparse.
        Err(Errno::OPNOTSUPP) => {
            let zeros = vec![0u8; len.min(1 << 20) as usize];
            let mut done = 0;
            while done < len {
                let n = ((len - done) as usize).min(zeros.len());
                file.write_all_at(&zeros[..n], offset + done)?;
                done += n as u64;
            }
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(offset: u64, len: u64) -> Extent {
        Extent { offset, len }
    }

    #[test]
    fn holes_complement_data() {
        assert_eq!(
            holes(&[ext(10, 5), ext(20, 5)], 30),
            vec![ext(0, 10), ext(15, 5), ext(25, 5)]
        );
        assert_eq!(holes(&[], 7), vec![ext(0, 7)]);
        assert_eq!(holes(&[ext(0, 7)], 7), vec![]);
    }

    #[test]
    fn intersect_clips_to_range() {
        let data = [ext(0, 10), ext(20, 10), ext(40, 10)];
        assert_eq!(intersect(&data, ext(5, 20)), vec![ext(5, 5), ext(20, 5)]);
        assert_eq!(intersect(&data, ext(10, 10)), vec![]);
        assert_eq!(intersect(&data, ext(45, 100)), vec![ext(45, 5)]);
    }

    #[test]
    fn maps_a_real_sparse_file() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(8 << 20).unwrap();
        f.write_all_at(&[1u8; 4096], 1 << 20).unwrap();
        f.write_all_at(&[2u8; 8192], 5 << 20).unwrap();
        let m = data_extents(&f, 8 << 20).unwrap();
        assert_eq!(m, vec![ext(1 << 20, 4096), ext(5 << 20, 8192)]);
        let g = tempfile::tempfile().unwrap();
        copy_sparse(&f, &g, 8 << 20).unwrap();
        assert_eq!(data_extents(&g, 8 << 20).unwrap(), m);
        punch_hole(&g, 5 << 20, 8192).unwrap();
        assert_eq!(data_extents(&g, 8 << 20).unwrap(), vec![ext(1 << 20, 4096)]);
    }
}
