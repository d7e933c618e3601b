//! TLS (rustls, ring provider) for both ends, the shared token, and `vigil sync cert`.

use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use super::proto::Secret;
use crate::error::{Result, SyncError};

/// Environment variable holding the shared token when no token file is given.
pub const TOKEN_ENV: &str = "VIGIL_SYNC_TOKEN";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(what: &str, path: &Path, e: impl std::fmt::Display) -> SyncError {
    SyncError::Tls(format!("{what} {}: {e}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let v = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err("cannot read certificates from", path, e))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| tls_err("bad certificate in", path, e))?;
    if v.is_empty() {
        return Err(tls_err("no certificate in", path, "empty"));
    }
    Ok(v)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| tls_err("cannot read private key from", path, e))
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>> {
    let mut r = RootCertStore::empty();
    for c in certs(path)? {
        r.add(c).map_err(|e| tls_err("bad CA certificate in", path, e))?;
    }
    Ok(Arc::new(r))
}

/// Server side: its certificate and key, and optionally a CA whose client certificates are
/// accepted in place of the token.
pub fn server_config(
    cert: &Path,
    key_path: &Path,
    client_ca: Option<&Path>,
    token_too: bool,
) -> Result<Arc<ServerConfig>> {
    let b = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SyncError::Tls(e.to_string()))?;
    let b = match client_ca {
        Some(ca) => {
            let mut v = rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider());
            if token_too {
                v = v.allow_unauthenticated();
            }
            let v = v.build().map_err(|e| tls_err("client CA", ca, e))?;
            b.with_client_cert_verifier(v)
        }
        None => b.with_no_client_auth(),
    };
    let cfg = b
        .with_single_cert(certs(cert)?, key(key_path)?)
        .map_err(|e| tls_err("certificate and key do not match:", cert, e))?;
    Ok(Arc::new(cfg))
}

/// Client side: the CA that signed the server's certificate, and optionally our own.
pub fn client_config(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Result<Arc<ClientConfig>> {
    let b = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| SyncError::Tls(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    let cfg = match cert_key {
        Some((c, k)) => b
            .with_client_auth_cert(certs(c)?, key(k)?)
            .map_err(|e| tls_err("client certificate", c, e))?,
        None => b.with_no_client_auth(),
    };
    Ok(Arc::new(cfg))
}

/// Reads the shared token from `file` (which only its owner may read) or from
/// `$VIGIL_SYNC_TOKEN`. `None` when neither is set.
pub fn load_token(file: Option<&Path>) -> Result<Option<Secret>> {
    let Some(path) = file else {
        return Ok(std::env::var(TOKEN_ENV)
            .ok()
            .filter(|t| !t.is_empty())
            .map(Secret));
    };
    let err = |reason: String| SyncError::Token {
        origin: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(err(format!(
            "is readable by others (mode {:o}); chmod 600 it",
            meta.mode() & 0o777
        )));
    }
    let t = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let t = t.trim();
    if t.len() < 16 {
        return Err(err("is shorter than 16 characters".into()));
    }
    Ok(Some(Secret(t.to_string())))
}

/// Files written by [`generate`].
#[derive(Debug, Clone)]
pub struct Generated {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub token: PathBuf,
}

/// Writes a private CA, a server certificate for `hosts`, a client certificate and a random
/// token into `dir`. Keys and the token are created mode 600.
pub fn generate(dir: &Path, hosts: &[String]) -> Result<Generated> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    };
    let e = |x: rcgen::Error| SyncError::Tls(format!("cannot generate certificates: {x}"));
    std::fs::create_dir_all(dir).map_err(|x| SyncError::io("create", dir, x))?;
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca_p = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca_p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_p.distinguished_name.push(DnType::CommonName, "vigil sync CA");
    ca_p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_p.self_signed(&ca_key).map_err(e)?;

    let leaf = |sans: Vec<String>, cn: &str, eku: ExtendedKeyUsagePurpose| -> Result<(String, String)> {
        let k = KeyPair::generate().map_err(e)?;
        let mut p = CertificateParams::new(sans).map_err(e)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let c = p.signed_by(&k, &ca, &ca_key).map_err(e)?;
        Ok((c.pem(), k.serialize_pem()))
    };
    let (spem, skey) = leaf(
        hosts.to_vec(),
        "vigil sync server",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (cpem, ckey) = leaf(
        vec!["vigil-sync-client".into()],
        "vigil sync client",
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;
    let token: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
    let g = Generated {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server.key"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client.key"),
        token: dir.join("token"),
    };
    write(&g.ca, ca.pem().as_bytes(), 0o644)?;
    write(&dir.join("ca.key"), ca_key.serialize_pem().as_bytes(), 0o600)?;
    write(&g.server_cert, spem.as_bytes(), 0o644)?;
    write(&g.server_key, skey.as_bytes(), 0o600)?;
    write(&g.client_cert, cpem.as_bytes(), 0o644)?;
    write(&g.client_key, ckey.as_bytes(), 0o600)?;
    write(&g.token, token.as_bytes(), 0o600)?;
    Ok(g)
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| SyncError::io("create", path, e))?;
    f.write_all(bytes).map_err(|e| SyncError::io("write", path, e))
}
