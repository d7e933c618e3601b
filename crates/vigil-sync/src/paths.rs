//! Relative paths inside a synced tree: the only kind of path that crosses the network or a
//! record. Every one is validated before it touches a filesystem.

use crate::error::{Result, SyncError};

/// Directory at the root of a local tree holding records and locks. Never synced.
pub const STATE_DIR: &str = ".vigil-sync";
/// Prefix of in-progress temporary files. Never synced, removed by the next run.
pub const TMP_PREFIX: &str = ".vigil-tmp-";

/// Checks that `rel` is a clean relative path (`a/b/c`) that cannot leave the tree.
pub fn validate_rel(rel: &str) -> Result<()> {
    let bad = |reason| {
        Err(SyncError::BadPath {
            path: rel.to_string(),
            reason,
        })
    };
    if rel.is_empty() {
        return bad("empty path");
    }
    if rel.len() > 4096 {
        return bad("path too long");
    }
    if rel.starts_with('/') {
        return bad("absolute path");
    }
    if rel.contains('\0') {
        return bad("NUL byte in path");
    }
    for (i, comp) in rel.split('/').enumerate() {
        match comp {
            "" => return bad("empty path component"),
            "." | ".." => return bad("'.' or '..' component"),
            _ if i == 0 && comp == STATE_DIR => return bad("the state directory is not synced"),
            _ if comp.starts_with(TMP_PREFIX) => return bad("temporary file name"),
            _ => {}
        }
    }
    Ok(())
}

/// Splits a validated path into its parent (possibly empty) and its file name.
pub fn split_parent(rel: &str) -> (&str, &str) {
    match rel.rfind('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => ("", rel),
    }
}

/// The name a conflict copy of `rel` gets: beside it, tagged with the copied version's mtime.
pub fn conflict_name(rel: &str, mtime_ns: i128) -> String {
    format!("{rel}.conflict-{}", mtime_ns.div_euclid(1_000_000_000))
}

/// Whether a directory-entry name must be skipped when walking a tree.
pub fn is_internal(name: &str, at_root: bool) -> bool {
    name.starts_with(TMP_PREFIX) || (at_root && name == STATE_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_paths() {
        for p in ["a", "projects/1f/0.img", "a.b/c..d", ".hidden/x"] {
            validate_rel(p).unwrap();
        }
    }

    #[test]
    fn refuses_escapes() {
        for p in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            ".vigil-sync/rec",
            "a/.vigil-tmp-x",
            "a\0b",
        ] {
            assert!(validate_rel(p).is_err(), "{p:?} accepted");
        }
    }

    #[test]
    fn conflict_names_sit_beside_the_file() {
        assert_eq!(split_parent("a/b/c.img"), ("a/b", "c.img"));
        assert_eq!(split_parent("c.img"), ("", "c.img"));
        assert_eq!(
            conflict_name("p/0.img", 1_700_000_000_123_456_789),
            "p/0.img.conflict-1700000000"
        );
    }
}
