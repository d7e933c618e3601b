//! `vigil sync verify`: compares two trees end to end, file set, sizes and contents, reading
//! only data extents on each side (a hole compares as zeros).

use std::collections::BTreeSet;

use crate::blocks::{differing_blocks, hash_file, BlockHash};
use crate::endpoint::Endpoint;
use crate::error::{Result, SyncError};
use crate::extents::data_extents;
use crate::fsops::Root;
use crate::meta::FileInfo;
use crate::remote::client::{Client, ClientOptions};
use crate::walk::{walk, Tree};

/// One difference found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub rel: String,
    pub what: String,
}

/// Result of a verify.
#[derive(Debug, Default)]
pub struct Report {
    pub compared: usize,
    pub differences: Vec<Difference>,
}

enum Side {
    Local(Root),
    Remote(Box<Client>),
}

impl Side {
    fn open(e: &Endpoint, opts: &ClientOptions) -> Result<Side> {
        Ok(match e {
            Endpoint::Local(p) => Side::Local(Root::open(p, false)?),
            Endpoint::Remote(r) => Side::Remote(Box::new(Client::connect(r, opts)?)),
        })
    }

    fn list(&self) -> Result<Tree> {
        match self {
            Side::Local(r) => Ok(walk(r.path(), 4)?.files),
            Side::Remote(c) => c.list(),
        }
    }

    fn hashes(&self, rel: &str) -> Result<Option<(FileInfo, Vec<BlockHash>)>> {
        match self {
            Side::Local(r) => {
                let Some(f) = r.open_file(rel)? else {
                    return Ok(None);
                };
                let m = f.metadata().map_err(|e| SyncError::io("stat", r.join(rel), e))?;
                let info = FileInfo::from_metadata(&m);
                let io = |e| SyncError::io("read", r.join(rel), e);
                let ex = data_extents(&f, info.stamp.size).map_err(io)?;
                Ok(Some((info, hash_file(&f, info.stamp.size, &ex).map_err(io)?)))
            }
            Side::Remote(c) => c.hashes(rel),
        }
    }
}

/// Compares `a` and `b`.
pub fn verify(a: &Endpoint, b: &Endpoint, opts: &ClientOptions) -> Result<Report> {
    let (sa, sb) = (Side::open(a, opts)?, Side::open(b, opts)?);
    let (ta, tb) = (sa.list()?, sb.list()?);
    let mut rep = Report::default();
    let names: BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
    for rel in names {
        let diff = |what: String| Difference {
            rel: rel.clone(),
            what,
        };
        match (ta.get(rel), tb.get(rel)) {
            (Some(_), None) => rep.differences.push(diff(format!("missing in {b}"))),
            (None, Some(_)) => rep.differences.push(diff(format!("missing in {a}"))),
            (Some(x), Some(y)) if x.stamp.size != y.stamp.size => rep
                .differences
                .push(diff(format!("size {} vs {}", x.stamp.size, y.stamp.size))),
            (Some(_), Some(_)) => {
                rep.compared += 1;
                let (Some((ia, ha)), Some((_, hb))) = (sa.hashes(rel)?, sb.hashes(rel)?) else {
                    rep.differences.push(diff("vanished during verify".into()));
                    continue;
                };
                let d = differing_blocks(&ha, &hb, ia.stamp.size);
                if !d.is_empty() {
                    rep.differences.push(diff(format!(
                        "{} block(s) differ, first at offset {}",
                        d.len(),
                        d[0] * crate::blocks::BLOCK_SIZE
                    )));
                }
            }
            (None, None) => {}
        }
    }
    Ok(rep)
}
