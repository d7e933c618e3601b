//! `grastate.dat`: the Galera state a node leaves in its datadir.
//!
//! ```text
//! # GALERA saved state
//! version: 2.1
//! uuid:    3e9c30ef-e633-11f1-b6c0-3b30112bfa48
//! seqno:   6
//! safe_to_bootstrap: 1
//! ```

use std::io::Write as _;
use std::path::Path;

use vigil_core::galera::SavedState;

use crate::NodeError;

/// Parses the file's text; `path` is only used to name the file in errors.
pub fn parse(text: &str, path: &Path) -> Result<SavedState, NodeError> {
    let bad = |message: String| NodeError::BadFile {
        path: path.to_path_buf(),
        message,
    };
    let (mut uuid, mut seqno, mut safe) = (None, None, None);
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once(':') else {
            return Err(bad(format!(
                "line {}: expected `key: value`, found {raw:?}",
                i + 1
            )));
        };
        let value = value.trim();
        match key.trim() {
            "uuid" => {
                if !is_uuid(value) {
                    return Err(bad(format!("line {}: {value:?} is not a cluster UUID", i + 1)));
                }
                uuid = Some(value.to_string());
            }
            "seqno" => {
                seqno = Some(
                    value
                        .parse::<i64>()
                        .map_err(|_| bad(format!("line {}: seqno {value:?} is not a number", i + 1)))?,
                );
            }
            "safe_to_bootstrap" => {
                safe = Some(match value {
                    "0" => false,
                    "1" => true,
                    _ => {
                        return Err(bad(format!(
                            "line {}: safe_to_bootstrap must be 0 or 1, not {value:?}",
                            i + 1
                        )))
                    }
                });
            }
            _ => {} // version, cert_index and future keys carry nothing we decide on
        }
    }
    Ok(SavedState {
        uuid: uuid.ok_or_else(|| bad("no uuid line: the file is damaged or truncated".into()))?,
        seqno: seqno.ok_or_else(|| bad("no seqno line: the file is damaged or truncated".into()))?,
        safe_to_bootstrap: safe.unwrap_or(false),
    })
}

/// Reads `grastate.dat`; `Ok(None)` if there is none.
pub fn read(path: &Path) -> Result<Option<SavedState>, NodeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse(&text, path).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(NodeError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

pub fn render(state: &SavedState) -> String {
    format!(
        "# GALERA saved state\nversion: 2.1\nuuid:    {}\nseqno:   {}\nsafe_to_bootstrap: {}\n",
        state.uuid, state.seqno, state.safe_to_bootstrap as u8
    )
}

/// Replaces `grastate.dat` atomically (temporary file, fsync, rename).
pub fn write(path: &Path, state: &SavedState) -> Result<(), NodeError> {
    let tmp = path.with_extension("dat.vigil-tmp");
    let mut f = std::fs::File::create(&tmp).map_err(NodeError::io(&tmp))?;
    f.write_all(render(state).as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(NodeError::io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(NodeError::io(path))
}

pub(crate) use vigil_core::galera::is_uuid;

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "# GALERA saved state\nversion: 2.1\nuuid:    3e9c30ef-e633-11f1-b6c0-3b30112bfa48\nseqno:   6\nsafe_to_bootstrap: 1\n";

    fn p() -> &'static Path {
        Path::new("/n1/data/grastate.dat")
    }

    #[test]
    fn parses_a_clean_shutdown() {
        let s = parse(GOOD, p()).unwrap();
        assert_eq!(
            s,
            SavedState {
                uuid: "3e9c30ef-e633-11f1-b6c0-3b30112bfa48".into(),
                seqno: 6,
                safe_to_bootstrap: true
            }
        );
        assert_eq!(parse(&render(&s), p()).unwrap(), s);
    }

    #[test]
    fn parses_a_crash() {
        let text = GOOD
            .replace("seqno:   6", "seqno:   -1")
            .replace("safe_to_bootstrap: 1", "safe_to_bootstrap: 0");
        let s = parse(&text, p()).unwrap();
        assert_eq!((s.seqno, s.safe_to_bootstrap), (-1, false));
    }

    #[test]
    fn damaged_files_name_the_file_and_the_problem() {
        let truncated: String = GOOD.lines().take(3).map(|l| format!("{l}\n")).collect();
        let cases = [
            ("", "no uuid line"),
            (truncated.as_str(), "no seqno line"),
            (&GOOD[..60], "is not a cluster UUID"),
            ("uuid: nope\nseqno: 1\n", "line 1: \"nope\" is not a cluster UUID"),
            (
                "uuid: 3e9c30ef-e633-11f1-b6c0-3b30112bfa48\nseqno: x\n",
                "line 2: seqno \"x\" is not a number",
            ),
            ("garbage\n", "line 1: expected `key: value`"),
            (
                "uuid: 3e9c30ef-e633-11f1-b6c0-3b30112bfa48\nseqno: 1\nsafe_to_bootstrap: 2\n",
                "safe_to_bootstrap must be 0 or 1",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text, p()).unwrap_err().to_string();
            assert!(err.starts_with("/n1/data/grastate.dat: "), "{err}");
            assert!(err.contains(expected), "{err:?} should contain {expected:?}");
        }
    }

    #[test]
    fn write_then_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("grastate.dat");
        assert_eq!(read(&path).unwrap(), None);
        let s = parse(GOOD, p()).unwrap();
        write(&path, &s).unwrap();
        assert_eq!(read(&path).unwrap(), Some(s));
    }
}
