//! `vigil-sync` replicates directory trees of large sparse disk images, locally or to a remote
//! `vigil sync serve`, fast and safely.
//!
//! It does: map data/hole extents and move only data (copy_file_range, reflink, punched holes);
//! decide per file by mtime (size breaks ties) with both-sides-changed conflicts kept as copies;
//! replace every target file atomically (temp + fsync + rename, metadata preserved); keep a
//! checksummed record per pair of trees so an unchanged file costs one stat and no read; send
//! only changed 64 KiB blocks (BLAKE3) over one TLS connection authenticated by a token or a
//! client certificate; verify two trees end to end; watch a tree with inotify.
//!
//! It does not: sync symlinks, devices or non-UTF-8 names (they are reported as skipped);
//! propagate deletions unless `--delete` is given; detect moves or renames (a moved file is
//! copied again); merge concurrent edits inside one file (the newer wins, the other is kept).

#![forbid(unsafe_code)]

pub mod bench;
pub mod blocks;
pub mod cli;
pub mod endpoint;
pub mod engine;
pub mod error;
pub mod extents;
pub(crate) mod failpoint;
pub mod fsops;
pub mod meta;
pub mod paths;
pub mod plan;
pub mod progress;
pub mod record;
pub mod remote;
pub mod verify;
pub mod walk;
pub mod watch;

pub use endpoint::Endpoint;
pub use engine::{sync, Options, Summary};
pub use error::SyncError;
