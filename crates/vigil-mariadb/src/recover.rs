//! `mariadbd --wsrep-recover`: the position a node reached, read from InnoDB when its
//! `grastate.dat` says `seqno: -1` (it did not stop cleanly).

use std::path::Path;

use vigil_core::galera::SavedState;

use crate::process::Binaries;
use crate::{NodeError, NodeLayout};

/// Finds the last `WSREP: Recovered position: UUID:SEQNO` in a log.
pub fn parse_recovered_position(log: &str) -> Option<(String, i64)> {
    log.lines().rev().find_map(|line| {
        let rest = &line[line.find("WSREP: Recovered position:")? + "WSREP: Recovered position:".len()..];
        let (uuid, seqno) = rest.trim().rsplit_once(':')?;
        let seqno = seqno.trim().parse::<i64>().ok()?;
        crate::grastate::is_uuid(uuid.trim()).then(|| (uuid.trim().to_string(), seqno))
    })
}

/// Runs `mariadbd --wsrep-recover` on a stopped node and returns the recovered position (the
/// `safe_to_bootstrap` flag is copied from `grastate.dat`, if any).
pub async fn wsrep_recover(bins: &Binaries, layout: &NodeLayout) -> Result<SavedState, NodeError> {
    let log = layout.dir.join("wsrep-recover.log");
    let _ = std::fs::remove_file(&log);
    let status = tokio::process::Command::new(&bins.mariadbd)
        .arg(format!("--defaults-file={}", layout.cnf().display()))
        .arg("--wsrep-recover")
        .arg(format!("--log-error={}", log.display()))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .map_err(NodeError::io(&bins.mariadbd))?;
    let text = read_lossy(&log)?;
    let saved = crate::grastate::read(&layout.grastate())?;
    match parse_recovered_position(&text) {
        Some((uuid, seqno)) => Ok(SavedState {
            uuid,
            seqno,
            safe_to_bootstrap: saved.is_some_and(|s| s.safe_to_bootstrap),
        }),
        None => Err(NodeError::CommandFailed {
            what: "mariadbd --wsrep-recover".into(),
            message: format!("no recovered position in its log (exit {status})"),
            log,
        }),
    }
}

fn read_lossy(path: &Path) -> Result<String, NodeError> {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(NodeError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_recovered_position() {
        let log = "2026-11-22  5:12:41 0 [Note] InnoDB: Starting shutdown...\n\
                   2026-11-22  5:12:41 0 [Note] WSREP: Recovered position: 3e9c30ef-e633-11f1-b6c0-3b30112bfa48:42\n";
        assert_eq!(
            parse_recovered_position(log),
            Some(("3e9c30ef-e633-11f1-b6c0-3b30112bfa48".into(), 42))
        );
    }

    #[test]
    fn a_fresh_node_recovers_minus_one() {
        let log = "[Note] WSREP: Recovered position: 00000000-0000-0000-0000-000000000000:-1\n";
        assert_eq!(
            parse_recovered_position(log),
            Some(("00000000-0000-0000-0000-000000000000".into(), -1))
        );
    }

    #[test]
    fn damaged_or_missing_lines_give_none() {
        assert_eq!(parse_recovered_position(""), None);
        assert_eq!(
            parse_recovered_position("WSREP: Recovered position: nonsense"),
            None
        );
        assert_eq!(
            parse_recovered_position("WSREP: Recovered position: 3e9c30ef-e633-11f1-b6c0-3b30112bfa48:x"),
            None
        );
        assert_eq!(parse_recovered_position("[ERROR] Aborting"), None);
    }

    #[test]
    fn the_last_position_wins() {
        let log = "WSREP: Recovered position: 3e9c30ef-e633-11f1-b6c0-3b30112bfa48:1\nWSREP: Recovered position: 3e9c30ef-e633-11f1-b6c0-3b30112bfa48:9\n";
        assert_eq!(parse_recovered_position(log).unwrap().1, 9);
    }
}
