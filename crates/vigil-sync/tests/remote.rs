//! Remote sync against a real `serve` on 127.0.0.1 (in-process, ephemeral port, TLS).

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::*;
use vigil_sync::remote::client::{Client, ClientOptions};
use vigil_sync::remote::proto::{read_frame, write_msg, Frame, Msg, Secret};
use vigil_sync::remote::server::{load_config, Server, ServerHandle};
use vigil_sync::remote::tls;
use vigil_sync::{Endpoint, Options, SyncError};

struct Site {
    _dir: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    server: ServerHandle,
    certs: tls::Generated,
}

impl Site {
    fn new() -> Site {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().to_path_buf();
        let certs = tls::generate(&base.join("certs"), &["127.0.0.1".into(), "localhost".into()]).unwrap();
        let root = base.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let cfg = load_config(
            &root,
            &certs.server_cert,
            &certs.server_key,
            None,
            Some(&certs.token),
        )
        .unwrap();
        let server = Server::bind(cfg, "127.0.0.1:0").unwrap().spawn();
        Site {
            _dir: dir,
            base,
            root,
            server,
            certs,
        }
    }

    fn client(&self) -> ClientOptions {
        ClientOptions {
            ca: Some(self.certs.ca.clone()),
            token: tls::load_token(Some(&self.certs.token)).unwrap(),
            ..Default::default()
        }
    }

    fn endpoint(&self, path: &str) -> Endpoint {
        Endpoint::parse(&format!("{}/{path}", self.server.addr())).unwrap()
    }

    fn opts(&self) -> Options {
        Options {
            jobs: 2,
            client: self.client(),
            ..Options::default()
        }
    }

    fn raw(&self) -> Client {
        let Endpoint::Remote(spec) = self.endpoint("") else {
            unreachable!()
        };
        Client::connect(&spec, &self.client()).unwrap()
    }
}

fn tree(src: &Path) {
    make_image(&src.join("p1/0.img"), 1, 6);
    make_image(&src.join("p2/0.img"), 2, 3);
    std::fs::write(src.join("p1/meta.json"), b"{}").unwrap();
}

const FILES: [&str; 3] = ["p1/0.img", "p2/0.img", "p1/meta.json"];

#[test]
fn push_keeps_sparseness_and_sends_only_changed_blocks() {
    let site = Site::new();
    let src = site.base.join("src");
    tree(&src);
    let dst = site.endpoint("img");
    let s = run(&local(&src), &dst, &site.opts());
    assert_eq!(s.copied, 3);
    for f in FILES {
        let (a, b) = (src.join(f), site.root.join("img").join(f));
        assert_eq!(extents(&a), extents(&b), "{f}: extent maps differ");
        assert!(same_content(&a, &b), "{f}");
    }
    // rescan: no listing, no file data, only the handshake
    let s = run(&local(&src), &dst, &site.opts());
    assert_eq!((s.copied, s.unchanged), (0, 3));
    assert!(s.wire_bytes < 16 << 10, "rescan sent {} bytes", s.wire_bytes);
    // a 4 KiB change in one image: one 64 KiB block (plus framing) crosses the wire
    write_at(&src.join("p1/0.img"), (6 << 20) + 8192, &[0x5a; 4096], 5);
    let s = run(&local(&src), &dst, &site.opts());
    assert_eq!(s.copied, 1);
    assert!(s.data_bytes <= 64 << 10, "sent {} data bytes", s.data_bytes);
    assert!(s.wire_bytes < 300 << 10, "{} bytes on the wire", s.wire_bytes);
    assert!(same_content(
        &src.join("p1/0.img"),
        &site.root.join("img/p1/0.img")
    ));
    let rep = vigil_sync::verify::verify(&local(&src), &dst, &site.client()).unwrap();
    assert_eq!(
        (rep.compared, rep.differences.len()),
        (3, 0),
        "{:?}",
        rep.differences
    );
}

#[test]
fn punched_holes_and_growth_propagate_to_the_server() {
    let site = Site::new();
    let src = site.base.join("src");
    tree(&src);
    let dst = site.endpoint("");
    run(&local(&src), &dst, &site.opts());
    let img = src.join("p1/0.img");
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    vigil_sync::extents::punch_hole(&f, 1 << 20, 64 << 10).unwrap();
    f.set_len(IMG * 2).unwrap();
    f.sync_all().unwrap();
    drop(f);
    set_mtime(&img, 5);
    let s = run(&local(&src), &dst, &site.opts());
    assert_eq!(s.copied, 1);
    assert_eq!(s.data_bytes, 0, "a punched hole travels as metadata");
    assert_eq!(extents(&img), extents(&site.root.join("p1/0.img")));
    assert!(same_content(&img, &site.root.join("p1/0.img")));
}

#[test]
fn pull_fetches_only_changed_blocks() {
    let site = Site::new();
    tree(&site.root.join("img"));
    let dst = site.base.join("dst");
    let s = run(&site.endpoint("img"), &local(&dst), &site.opts());
    assert_eq!(s.copied, 3);
    write_at(&site.root.join("img/p2/0.img"), 11 << 20, &[7; 4096], 5);
    let s = run(&site.endpoint("img"), &local(&dst), &site.opts());
    assert_eq!((s.copied, s.data_bytes), (1, 64 << 10));
    for f in FILES {
        let (a, b) = (site.root.join("img").join(f), dst.join(f));
        assert_eq!(extents(&a), extents(&b), "{f}");
        assert!(same_content(&a, &b), "{f}");
    }
}

#[test]
fn change_on_the_server_since_the_last_push_becomes_a_conflict() {
    let site = Site::new();
    let src = site.base.join("src");
    tree(&src);
    let dst = site.endpoint("");
    run(&local(&src), &dst, &site.opts());
    write_at(&site.root.join("p2/0.img"), 0, b"server", 10);
    write_at(&src.join("p2/0.img"), 0, b"client", 20);
    let s = run(&local(&src), &dst, &site.opts());
    assert_eq!(s.conflicts.len(), 1, "{:?}", s.conflicts);
    let copy = site.root.join(&s.conflicts[0].1);
    assert_eq!(
        &std::fs::read(site.root.join("p2/0.img")).unwrap()[..6],
        b"client"
    );
    assert_eq!(&std::fs::read(copy).unwrap()[..6], b"server");
}

#[test]
fn bad_or_missing_token_is_refused() {
    let site = Site::new();
    let src = site.base.join("src");
    tree(&src);
    let mut o = site.opts();
    o.client.token = Some(Secret("wrong-token-wrong-token".into()));
    let e = vigil_sync::sync(&local(&src), &site.endpoint(""), &o, &Default::default()).unwrap_err();
    assert!(matches!(e, SyncError::AuthRefused { .. }), "{e}");
    o.client.token = None;
    let e = vigil_sync::sync(&local(&src), &site.endpoint(""), &o, &Default::default()).unwrap_err();
    assert!(matches!(e, SyncError::Token { .. }), "{e}");
    assert!(
        std::fs::read_dir(&site.root).unwrap().next().is_none(),
        "nothing written"
    );
    // a token file others can read is refused before anything is sent
    let loose = site.base.join("loose-token");
    std::fs::write(&loose, "0123456789abcdef0123").unwrap();
    assert!(matches!(
        tls::load_token(Some(&loose)),
        Err(SyncError::Token { .. })
    ));
}

#[test]
fn client_certificate_authenticates_without_token() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::generate(&dir.path().join("c"), &["127.0.0.1".into()]).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    let cfg = load_config(
        &root,
        &certs.server_cert,
        &certs.server_key,
        Some(&certs.ca),
        None,
    )
    .unwrap();
    let server = Server::bind(cfg, "127.0.0.1:0").unwrap().spawn();
    let src = dir.path().join("src");
    tree(&src);
    let dst = Endpoint::parse(&format!("{}/x", server.addr())).unwrap();
    let mut o = Options {
        client: ClientOptions {
            ca: Some(certs.ca.clone()),
            cert: Some(certs.client_cert.clone()),
            key: Some(certs.client_key.clone()),
            token: None,
        },
        ..Options::default()
    };
    assert_eq!(run(&local(&src), &dst, &o).copied, 3);
    // without the certificate (and with a token this server does not know): refused
    o.client.cert = None;
    o.client.key = None;
    o.client.token = Some(Secret("some-token-some-token".into()));
    assert!(vigil_sync::sync(&local(&src), &dst, &o, &Default::default()).is_err());
}

#[test]
fn server_confines_paths_to_its_root() {
    let site = Site::new();
    let outside = site.base.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, site.root.join("link")).unwrap();
    let c = site.raw();
    let info = vigil_sync::meta::FileInfo::default();
    for rel in ["../outside/x", "/etc/x", "link/x", "a/../../x", ".vigil-sync/x"] {
        let r = c
            .raw_request(&Msg::PushBegin {
                rel: rel.into(),
                expect: None,
                info,
                extents: vec![],
                base_known: false,
            })
            .unwrap_err();
        assert!(matches!(r, SyncError::Remote { .. }), "{rel}: {r}");
    }
    for rel in ["../outside", "link"] {
        assert!(c.raw_request(&Msg::List { dir: rel.into() }).is_err(), "{rel}");
    }
    assert!(c
        .raw_request(&Msg::Hashes {
            rel: "link/../../x".into()
        })
        .is_err());
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing escaped"
    );
}

#[test]
fn malicious_server_paths_are_refused_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let certs = tls::generate(&dir.path().join("c"), &["127.0.0.1".into()]).unwrap();
    let cfg = tls::server_config(&certs.server_cert, &certs.server_key, None, true).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = std::thread::spawn(move || {
        let (tcp, _) = listener.accept().unwrap();
        let conn = rustls::ServerConnection::new(Arc::clone(&cfg)).unwrap();
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let _hello = read_frame(&mut s).unwrap();
        write_msg(&mut s, &Msg::Welcome).unwrap();
        let _list = read_frame(&mut s).unwrap();
        let evil = vigil_sync::meta::FileInfo::default();
        write_msg(
            &mut s,
            &Msg::Listing {
                files: vec![("ok.img".into(), evil), ("../../escaped".into(), evil)],
            },
        )
        .unwrap();
        std::io::Write::flush(&mut s).unwrap();
        // drain until the client hangs up
        while let Ok(Some(Frame::Msg(_))) = read_frame(&mut s) {}
    });
    let dst = dir.path().join("deep/dst");
    let o = Options {
        client: ClientOptions {
            ca: Some(certs.ca.clone()),
            token: Some(Secret("0123456789abcdef".into())),
            ..Default::default()
        },
        ..Options::default()
    };
    let e = vigil_sync::sync(
        &Endpoint::parse(&format!("{addr}/")).unwrap(),
        &local(&dst),
        &o,
        &Default::default(),
    )
    .unwrap_err();
    assert!(matches!(e, SyncError::BadPath { .. }), "{e}");
    assert!(!dir.path().join("escaped").exists());
    fake.join().unwrap();
}
