//! The persistent record of a pair of trees: for each file, the stamps both sides had when it
//! was last synced, and the block hashes of that version. With it, an unchanged file costs one
//! stat and no read; a remote target needs no listing.
//!
//! On disk: `VIGILREC`, a version, the entries, then a BLAKE3 hash of everything before it. A
//! record whose hash or structure does not check out is reported and rebuilt, never trusted.

use std::collections::BTreeMap;
use std::io::Write;

use crate::blocks::BlockHash;
use crate::error::{Result, SyncError};
use crate::fsops::{Attrs, Root};
use crate::meta::Stamp;

const MAGIC: &[u8; 8] = b"VIGILREC";
const VERSION: u32 = 1;

/// One synced file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Entry {
    pub src: Stamp,
    pub dst: Stamp,
    /// Hashes of the data blocks of the synced version; empty when not computed (local copies).
    pub hashes: Vec<BlockHash>,
}

/// All synced files of a pair, by relative path.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    pub entries: BTreeMap<String, Entry>,
}

/// Why a record was not trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage(pub &'static str);

impl Record {
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.entries.len() * 96);
        b.extend_from_slice(MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (path, e) in &self.entries {
            b.extend_from_slice(&(path.len() as u32).to_le_bytes());
            b.extend_from_slice(path.as_bytes());
            for s in [&e.src, &e.dst] {
                b.extend_from_slice(&s.size.to_le_bytes());
                b.extend_from_slice(&s.mtime_ns.to_le_bytes());
                b.extend_from_slice(&s.ino.to_le_bytes());
                b.extend_from_slice(&s.ctime_ns.to_le_bytes());
            }
            b.extend_from_slice(&(e.hashes.len() as u32).to_le_bytes());
            for h in &e.hashes {
                b.extend_from_slice(&h.index.to_le_bytes());
                b.extend_from_slice(&h.hash);
            }
        }
        let sum = blake3::hash(&b);
        b.extend_from_slice(sum.as_bytes());
        b
    }

    pub fn decode(bytes: &[u8]) -> Result<Record, Damage> {
        if bytes.len() < MAGIC.len() + 4 + 8 + 32 {
            return Err(Damage("too short"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Err(Damage("checksum mismatch"));
        }
        let mut r = Reader { b: body, pos: 0 };
        if r.take(8)? != MAGIC {
            return Err(Damage("not a vigil sync record"));
        }
        if r.u32()? != VERSION {
            return Err(Damage("unknown version"));
        }
        let n = r.u64()?;
        let mut entries = BTreeMap::new();
        for _ in 0..n {
            let len = r.u32()? as usize;
            let path = std::str::from_utf8(r.take(len)?).map_err(|_| Damage("bad path"))?;
            crate::paths::validate_rel(path).map_err(|_| Damage("bad path"))?;
            let mut stamps = [Stamp::default(); 2];
            for s in &mut stamps {
                *s = Stamp {
                    size: r.u64()?,
                    mtime_ns: r.u64()? as i64,
                    ino: r.u64()?,
                    ctime_ns: r.u64()? as i64,
                };
            }
            let nh = r.u32()? as usize;
            let mut hashes = Vec::with_capacity(nh.min(1 << 20));
            for _ in 0..nh {
                let index = r.u64()?;
                let hash: [u8; 32] = r.take(32)?.try_into().expect("32 bytes");
                hashes.push(crate::blocks::BlockHash { index, hash });
            }
            entries.insert(
                path.to_string(),
                Entry {
                    src: stamps[0],
                    dst: stamps[1],
                    hashes,
                },
            );
        }
        if r.pos != body.len() {
            return Err(Damage("trailing bytes"));
        }
        Ok(Record { entries })
    }
}

struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Damage> {
        let end = self.pos.checked_add(n).ok_or(Damage("truncated"))?;
        let s = self.b.get(self.pos..end).ok_or(Damage("truncated"))?;
        self.pos = end;
        Ok(s)
    }
    fn u32(&mut self) -> Result<u32, Damage> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, Damage> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}

/// Where the record of a pair lives: in the state directory of the local side.
#[derive(Debug, Clone)]
pub struct RecordFile {
    /// Root of the local tree holding the state directory.
    pub tree: std::path::PathBuf,
    /// File name inside the state directory, derived from both endpoints.
    pub name: String,
}

/// What loading found.
#[derive(Debug)]
pub enum Loaded {
    Fresh(Record),
    Missing,
    Damaged(&'static str),
}

impl RecordFile {
    pub fn for_pair(tree: &std::path::Path, src: &str, dst: &str) -> RecordFile {
        let key = blake3::hash(format!("{src}\0{dst}").as_bytes()).to_hex();
        RecordFile {
            tree: tree.to_path_buf(),
            name: format!("{}.rec", &key[..24]),
        }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.tree.join(crate::paths::STATE_DIR).join(&self.name)
    }

    pub fn load(&self) -> Result<Loaded> {
        let p = self.path();
        match std::fs::read(&p) {
            Ok(b) => Ok(match Record::decode(&b) {
                Ok(r) => Loaded::Fresh(r),
                Err(Damage(why)) => Loaded::Damaged(why),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Loaded::Missing),
            Err(e) => Err(SyncError::io("read record", p, e)),
        }
    }

    /// Replaces the record atomically.
    pub fn save(&self, rec: &Record) -> Result<()> {
        let dir = self.tree.join(crate::paths::STATE_DIR);
        let root = Root::open(&dir, true)?;
        let mut nf = root.create_temp(&self.name)?;
        let bytes = rec.encode();
        nf.file
            .write_all(&bytes)
            .map_err(|e| SyncError::io("write record", self.path(), e))?;
        nf.commit(&Attrs {
            mode: 0o600,
            uid: rustix::process::getuid().as_raw(),
            gid: rustix::process::getgid().as_raw(),
            mtime_ns: 0,
        })?;
        root.sync_dir("")
    }

    /// Exists while a run is in progress: found at the start of a run, it means the previous
    /// one was killed and left temporary files behind.
    pub fn running_marker(&self) -> std::path::PathBuf {
        self.tree
            .join(crate::paths::STATE_DIR)
            .join(format!("{}.running", self.name))
    }

    /// Takes the pair's lock for the life of the returned file.
    pub fn lock(&self) -> Result<std::fs::File> {
        let dir = self.tree.join(crate::paths::STATE_DIR);
        std::fs::create_dir_all(&dir).map_err(|e| SyncError::io("create", &dir, e))?;
        let p = dir.join(format!("{}.lock", self.name));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| SyncError::io("open lock", &p, e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::NonBlockingLockExclusive)
            .map_err(|_| SyncError::Locked { path: p })?;
        Ok(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let mut r = Record::default();
        r.entries.insert(
            "p/0.img".into(),
            Entry {
                src: Stamp {
                    size: 1 << 30,
                    mtime_ns: 1_700_000_000_000_000_001,
                    ino: 12,
                    ctime_ns: 5,
                },
                dst: Stamp {
                    size: 1 << 30,
                    mtime_ns: 1_700_000_000_000_000_001,
                    ino: 99,
                    ctime_ns: 6,
                },
                hashes: vec![BlockHash {
                    index: 3,
                    hash: [7; 32],
                }],
            },
        );
        r.entries.insert("p/meta.json".into(), Entry::default());
        r
    }

    #[test]
    fn round_trips() {
        let r = sample();
        assert_eq!(Record::decode(&r.encode()).unwrap(), r);
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        let b = sample().encode();
        for i in (0..b.len()).step_by(7) {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(Record::decode(&d).is_err(), "flip at {i} not detected");
        }
        assert!(Record::decode(&b[..b.len() - 1]).is_err());
    }
}
