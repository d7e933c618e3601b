//! The cluster's generated passwords, one file each (mode 0600) in the secrets directory.
//! They are never put on a command line or in a log.

use std::fs::{self, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::distributions::{Alphanumeric, DistString};

use crate::NodeError;

pub const APP_USER: &str = "vigil_app";
pub const APP_DATABASE: &str = "app";
pub const SST_USER: &str = "vigil_sst";
pub const MONITOR_USER: &str = "vigil_monitor";
/// The user replicas connect to their source as (replication topology).
pub const REPL_USER: &str = "vigil_repl";

/// The passwords of the four users vigil creates, and the token the agents' API asks of
/// requests that change something (`Authorization: Bearer <token>`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    pub app: String,
    pub sst: String,
    pub monitor: String,
    pub repl: String,
    pub api: String,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

const FILES: [&str; 5] = [
    "app.password",
    "sst.password",
    "monitor.password",
    "repl.password",
    "api.token",
];

impl Secrets {
    /// Fresh random passwords.
    pub fn generate() -> Secrets {
        let pw = || Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
        Secrets {
            app: pw(),
            sst: pw(),
            monitor: pw(),
            repl: pw(),
            api: pw(),
        }
    }

    /// Writes the password files and a client option file (`app.cnf`) into `dir`, which is
    /// created with mode 0700.
    pub fn write(&self, dir: &Path) -> Result<(), NodeError> {
        fs::create_dir_all(dir).map_err(NodeError::io(dir))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(NodeError::io(dir))?;
        for (file, value) in FILES
            .iter()
            .zip([&self.app, &self.sst, &self.monitor, &self.repl, &self.api])
        {
            write_private(&dir.join(file), &format!("{value}\n"))?;
        }
        write_private(
            &dir.join("app.cnf"),
            &format!(
                "[client]\nuser={APP_USER}\npassword={}\ndatabase={APP_DATABASE}\n",
                self.app
            ),
        )
    }

    /// Reads the password files from `dir`. A file readable by group or others is refused.
    pub fn load(dir: &Path) -> Result<Secrets, NodeError> {
        let read = |file: &str| -> Result<String, NodeError> {
            let path = dir.join(file);
            let meta = fs::metadata(&path).map_err(NodeError::io(&path))?;
            if meta.permissions().mode() & 0o077 != 0 {
                return Err(NodeError::BadFile {
                    path,
                    message: format!(
                        "holds a password but is readable by others (mode {:o}); run chmod 600 on it",
                        meta.permissions().mode() & 0o777
                    ),
                });
            }
            let value = fs::read_to_string(&path)
                .map_err(NodeError::io(&path))?
                .trim()
                .to_string();
            if value.is_empty() || value.contains(char::is_whitespace) {
                return Err(NodeError::BadFile {
                    path,
                    message: "must hold one password on one line".into(),
                });
            }
            Ok(value)
        };
        Ok(Secrets {
            app: read(FILES[0])?,
            sst: read(FILES[1])?,
            monitor: read(FILES[2])?,
            repl: read(FILES[3])?,
            api: read(FILES[4])?,
        })
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), NodeError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(NodeError::io(path))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(NodeError::io(path))
}

/// Writes a file only its owner may read (0600): used for `my.cnf`, which holds the SST password.
pub fn write_private_file(path: &Path, text: &str) -> Result<(), NodeError> {
    write_private(path, text)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(NodeError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_private_modes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Secrets::generate();
        assert_ne!(s.app, s.sst);
        assert_ne!(s.monitor, s.repl);
        s.write(dir.path()).unwrap();
        assert_eq!(Secrets::load(dir.path()).unwrap(), s);
        for f in FILES.iter().chain(&["app.cnf"]) {
            let mode = fs::metadata(dir.path().join(f)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{f}");
        }
        assert_eq!(
            fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }

    #[test]
    fn refuses_world_readable_or_empty_files() {
        let dir = tempfile::tempdir().unwrap();
        Secrets::generate().write(dir.path()).unwrap();
        let path = dir.path().join("sst.password");
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = Secrets::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("sst.password: holds a password but is readable by others (mode 644)"),
            "{err}"
        );
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::write(&path, "\n").unwrap();
        assert!(Secrets::load(dir.path())
            .unwrap_err()
            .to_string()
            .contains("must hold one password"));
    }

    #[test]
    fn every_password_file_is_required() {
        let dir = tempfile::tempdir().unwrap();
        Secrets::generate().write(dir.path()).unwrap();
        fs::remove_file(dir.path().join("repl.password")).unwrap();
        let err = Secrets::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("repl.password"), "{err}");
    }

    #[test]
    fn debug_does_not_show_passwords() {
        let s = Secrets::generate();
        assert!(!format!("{s:?}").contains(&s.app));
    }
}
