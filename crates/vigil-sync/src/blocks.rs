//! Block hashes (BLAKE3) over the data extents of a file, and the pure diff that decides which
//! blocks a transfer must send. Holes are never read: they hash as zeros.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use serde::{Deserialize, Serialize};

use crate::extents::{intersect, Extent};

/// Granularity of change detection: a 4 KiB write costs one block on the wire.
pub const BLOCK_SIZE: u64 = 64 * 1024;

/// The hash of one block that holds some data. Blocks entirely in holes have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockHash {
    pub index: u64,
    #[serde(with = "hex32")]
    pub hash: [u8; 32],
}

/// Hashes travel as hex strings: compact in JSON and readable in a dump.
mod hex32 {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(h: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        let mut out = String::with_capacity(64);
        for b in h {
            out.push_str(&format!("{b:02x}"));
        }
        s.serialize_str(&out)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        let s = String::deserialize(d)?;
        if s.len() != 64 || !s.is_ascii() {
            return Err(D::Error::custom("hash must be 64 hex digits"));
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(D::Error::custom)?;
        }
        Ok(out)
    }
}

/// The `[start, end)` range of block `index` in a file of `size` bytes.
pub fn block_range(index: u64, size: u64) -> Extent {
    let offset = index * BLOCK_SIZE;
    Extent {
        offset,
        len: BLOCK_SIZE.min(size.saturating_sub(offset)),
    }
}

/// Indexes of the blocks touched by data extents, ascending and unique.
pub fn data_blocks(extents: &[Extent]) -> Vec<u64> {
    let mut out: Vec<u64> = Vec::new();
    for e in extents.iter().filter(|e| e.len > 0) {
        let first = e.offset / BLOCK_SIZE;
        let last = (e.end() - 1) / BLOCK_SIZE;
        for i in first..=last {
            if out.last() != Some(&i) {
                out.push(i);
            }
        }
    }
    out
}

/// Hashes every data block of `file`, reading only data extents.
pub fn hash_file(file: &File, size: u64, extents: &[Extent]) -> io::Result<Vec<BlockHash>> {
    let zeros = [0u8; BLOCK_SIZE as usize];
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    let mut out = Vec::new();
    for index in data_blocks(extents) {
        let range = block_range(index, size);
        let mut h = blake3::Hasher::new();
        let mut pos = range.offset;
        for seg in intersect(extents, range) {
            h.update(&zeros[..(seg.offset - pos) as usize]);
            let b = &mut buf[..seg.len as usize];
            file.read_exact_at(b, seg.offset)?;
            h.update(b);
            pos = seg.end();
        }
        h.update(&zeros[..(range.end() - pos) as usize]);
        out.push(BlockHash {
            index,
            hash: *h.finalize().as_bytes(),
        });
    }
    Ok(out)
}

/// The hash a block of `len` zero bytes has; a block absent from a map is all zeros.
pub fn zero_hash(len: u64) -> [u8; 32] {
    let zeros = [0u8; BLOCK_SIZE as usize];
    *blake3::hash(&zeros[..len as usize]).as_bytes()
}

/// Blocks of the new version whose contents the old version does not already have at the same
/// index. Only these are sent; everything else is kept from the old file or is a hole.
pub fn changed_blocks(new: &[BlockHash], old: &[BlockHash], old_size: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut j = 0;
    for b in new {
        while j < old.len() && old[j].index < b.index {
            j += 1;
        }
        let same = j < old.len()
            && old[j].index == b.index
            && old[j].hash == b.hash
            // a short last block of the old file may hash alike but hold fewer bytes
            && (b.index + 1) * BLOCK_SIZE <= old_size;
        if !same {
            out.push(b.index);
        }
    }
    out
}

/// Compares two block maps of files of equal size: indexes where contents differ, treating a
/// missing block as zeros. Used by verify.
pub fn differing_blocks(a: &[BlockHash], b: &[BlockHash], size: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let ia = a.get(i).map_or(u64::MAX, |x| x.index);
        let ib = b.get(j).map_or(u64::MAX, |x| x.index);
        let idx = ia.min(ib);
        let zero = || zero_hash(block_range(idx, size).len);
        let ha = if ia == idx { a[i].hash } else { zero() };
        let hb = if ib == idx { b[j].hash } else { zero() };
        if ha != hb {
            out.push(idx);
        }
        if ia == idx {
            i += 1;
        }
        if ib == idx {
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bh(index: u64, v: u8) -> BlockHash {
        BlockHash { index, hash: [v; 32] }
    }

    #[test]
    fn data_blocks_cover_extents_once() {
        let b = BLOCK_SIZE;
        let ex = [
            Extent { offset: 0, len: 10 },
            Extent { offset: 20, len: 10 },
            Extent {
                offset: 3 * b - 1,
                len: 2,
            },
        ];
        assert_eq!(data_blocks(&ex), vec![0, 2, 3]);
    }

    #[test]
    fn only_new_or_changed_blocks_are_sent() {
        let size = 10 * BLOCK_SIZE;
        let old = [bh(0, 1), bh(2, 2), bh(5, 5)];
        let new = [bh(0, 1), bh(2, 9), bh(3, 3), bh(5, 5)];
        assert_eq!(changed_blocks(&new, &old, size), vec![2, 3]);
        assert_eq!(changed_blocks(&new, &[], size), vec![0, 2, 3, 5]);
        // a block the old file had only partly (its last, short block) is resent
        assert_eq!(changed_blocks(&[bh(0, 1)], &[bh(0, 1)], 100), vec![0]);
    }

    #[test]
    fn verify_treats_missing_blocks_as_zeros() {
        let size = 4 * BLOCK_SIZE;
        let z = BlockHash {
            index: 1,
            hash: zero_hash(BLOCK_SIZE),
        };
        assert!(differing_blocks(&[bh(0, 1), z], &[bh(0, 1)], size).is_empty());
        assert_eq!(
            differing_blocks(&[bh(0, 1)], &[bh(0, 2), bh(3, 3)], size),
            vec![0, 3]
        );
    }
}
