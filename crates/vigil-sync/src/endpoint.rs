//! `SRC`/`DST` arguments: a local directory, or `host:port/path` of a `vigil sync serve`.

use std::path::PathBuf;

use crate::error::{Result, SyncError};

/// One side of a sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Local(PathBuf),
    Remote(RemoteSpec),
}

/// A directory under the root of a remote `vigil sync serve`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSpec {
    pub host: String,
    pub port: u16,
    /// Relative to the server's root; empty for the root itself.
    pub path: String,
}

impl RemoteSpec {
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Local(p) => write!(f, "{}", p.display()),
            Endpoint::Remote(r) => write!(f, "{}/{}", r.addr(), r.path),
        }
    }
}

impl Endpoint {
    /// `host:port/path` (or `[v6]:port/path`) is remote; anything else is a local path.
    /// Write `./a:1/b` for a local directory whose name looks like that.
    pub fn parse(spec: &str) -> Result<Endpoint> {
        let bad = |reason: &str| SyncError::BadEndpoint {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let (hostport, path) = match spec.find('/') {
            Some(i) => (&spec[..i], &spec[i + 1..]),
            None => (spec, ""),
        };
        let Some(colon) = hostport.rfind(':') else {
            return Ok(Endpoint::Local(PathBuf::from(spec)));
        };
        let (host, port) = (&hostport[..colon], &hostport[colon + 1..]);
        let Ok(port) = port.parse::<u16>() else {
            return Ok(Endpoint::Local(PathBuf::from(spec)));
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad("missing host before ':port'"));
        }
        let path = path.trim_end_matches('/').to_string();
        if !path.is_empty() {
            crate::paths::validate_rel(&path)?;
        }
        Ok(Endpoint::Remote(RemoteSpec {
            host: host.to_string(),
            port,
            path,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_kinds() {
        assert_eq!(
            Endpoint::parse("/srv/img").unwrap(),
            Endpoint::Local("/srv/img".into())
        );
        assert_eq!(
            Endpoint::parse("./a:1/b").unwrap(),
            Endpoint::Local("./a:1/b".into())
        );
        assert_eq!(
            Endpoint::parse("10.0.0.2:7070/projects").unwrap(),
            Endpoint::Remote(RemoteSpec {
                host: "10.0.0.2".into(),
                port: 7070,
                path: "projects".into()
            })
        );
        let Endpoint::Remote(r) = Endpoint::parse("[::1]:7070").unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.host.as_str(), r.path.as_str(), r.addr()),
            ("::1", "", "[::1]:7070".into())
        );
        assert!(Endpoint::parse("h:7070/../etc").is_err());
    }
}
