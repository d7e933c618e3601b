//! The wire protocol between `vigil sync` and `vigil sync serve`, inside TLS.
//!
//! A frame is `u32 length | u8 kind | payload`. Kind 1 carries a JSON [`Msg`]; kind 2 carries
//! file data: `u64 offset | bytes`. Data frames follow a `PushReady` (client to server) or a
//! `PullHeader` (server to client) and end with `PushEnd`/`PullEnd` or `Abort`.
//!
//! ```text
//! client                                   server
//!   Hello{token} ─────────────────────────►  (checks token / client cert)
//!   ◄──────────────────────────────── Welcome | Refused
//!   PushBegin{path, expect, meta, extents} ►  (stamp still `expect`? else Mismatch)
//!   ◄────────────────── PushReady{base hashes if asked}
//!   Data… PushEnd ─────────────────────────►  (base + blocks + punched holes → temp → rename)
//!   ◄──────────────────────────────── Done{new stamp}
//! ```

use std::io::{self, Read, Write};

use serde::{Deserialize, Serialize};

use crate::blocks::BlockHash;
use crate::extents::Extent;
use crate::meta::{FileInfo, Stamp};

pub const VERSION: u32 = 1;
const KIND_MSG: u8 = 1;
const KIND_DATA: u8 = 2;
/// Largest frame accepted: bounds what a peer can make us allocate.
pub const MAX_FRAME: u32 = 256 << 20;

/// A secret that never appears in Debug output or logs.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// Constant-time comparison.
    pub fn matches(&self, other: &Secret) -> bool {
        let (a, b) = (self.0.as_bytes(), other.0.as_bytes());
        if a.len() != b.len() {
            return false;
        }
        a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
    }
}

/// Control messages.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "t")]
pub enum Msg {
    Hello {
        version: u32,
        token: Option<Secret>,
    },
    Welcome,
    Refused {
        reason: String,
    },
    /// All regular files under `dir` ("" for the root), paths relative to `dir`.
    List {
        dir: String,
    },
    Listing {
        files: Vec<(String, FileInfo)>,
    },
    Hashes {
        rel: String,
    },
    HashesAre {
        info: Option<FileInfo>,
        extents: Vec<Extent>,
        hashes: Vec<BlockHash>,
    },
    PushBegin {
        rel: String,
        expect: Option<Stamp>,
        info: FileInfo,
        extents: Vec<Extent>,
        /// The client knows the hashes of the file at `expect` (from its record).
        base_known: bool,
    },
    PushReady {
        base: Option<Vec<BlockHash>>,
    },
    PushEnd,
    Abort {
        reason: String,
    },
    Done {
        info: FileInfo,
    },
    Mismatch {
        current: Option<FileInfo>,
    },
    Pull {
        rel: String,
        have: Vec<BlockHash>,
        have_size: u64,
    },
    PullHeader {
        info: FileInfo,
        extents: Vec<Extent>,
        hashes: Vec<BlockHash>,
    },
    PullEnd,
    Rename {
        from: String,
        to: String,
        expect: Stamp,
    },
    Delete {
        rel: String,
        expect: Stamp,
    },
    Ok,
    Error {
        reason: String,
    },
}

/// One frame read from the wire.
#[derive(Debug)]
pub enum Frame {
    Msg(Msg),
    Data { offset: u64, bytes: Vec<u8> },
}

pub fn write_msg(w: &mut impl Write, m: &Msg) -> io::Result<()> {
    let body = serde_json::to_vec(m).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(body.len() + 5);
    buf.extend_from_slice(&((body.len() + 1) as u32).to_le_bytes());
    buf.push(KIND_MSG);
    buf.extend_from_slice(&body);
    w.write_all(&buf)
}

pub fn write_data(w: &mut impl Write, offset: u64, bytes: &[u8]) -> io::Result<()> {
    let mut buf = Vec::with_capacity(bytes.len() + 13);
    buf.extend_from_slice(&((bytes.len() + 9) as u32).to_le_bytes());
    buf.push(KIND_DATA);
    buf.extend_from_slice(&offset.to_le_bytes());
    buf.extend_from_slice(bytes);
    w.write_all(&buf)
}

/// Reads one frame; `Ok(None)` on a clean end of stream between frames.
pub fn read_frame(r: &mut impl Read) -> io::Result<Option<Frame>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len);
    if len == 0 || len > MAX_FRAME {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad frame length"));
    }
    let mut body = vec![0u8; len as usize];
    r.read_exact(&mut body)?;
    match body[0] {
        KIND_MSG => serde_json::from_slice(&body[1..])
            .map(|m| Some(Frame::Msg(m)))
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
        KIND_DATA if body.len() >= 9 => {
            let offset = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
            body.drain(..9);
            Ok(Some(Frame::Data { offset, bytes: body }))
        }
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "unknown frame kind")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        let m = Msg::Delete {
            rel: "a/b".into(),
            expect: Stamp::default(),
        };
        write_msg(&mut buf, &m).unwrap();
        write_data(&mut buf, 42, b"xyz").unwrap();
        let mut r = &buf[..];
        assert!(matches!(read_frame(&mut r).unwrap(), Some(Frame::Msg(x)) if x == m));
        assert!(
            matches!(read_frame(&mut r).unwrap(), Some(Frame::Data{offset: 42, bytes}) if bytes == b"xyz")
        );
        assert!(read_frame(&mut r).unwrap().is_none());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let m = Msg::Hello {
            version: 1,
            token: Some(Secret("hunter2".into())),
        };
        assert!(!format!("{m:?}").contains("hunter2"));
        assert!(Secret("a".into()).matches(&Secret("a".into())));
        assert!(!Secret("a".into()).matches(&Secret("ab".into())));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = (MAX_FRAME + 1).to_le_bytes().to_vec();
        buf.push(1);
        assert!(read_frame(&mut &buf[..]).is_err());
    }
}
