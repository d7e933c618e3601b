//! The `vigil sync` command line: argument structs (clap derive) and the runner. The `vigil`
//! binary only embeds [`SyncCommand`] as a subcommand and calls [`run_sync`].

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use clap::{Args, Subcommand};

use crate::endpoint::Endpoint;
use crate::engine::{sync, Options, Summary};
use crate::error::SyncError;
use crate::plan::Action;
use crate::progress::{Bar, Progress};
use crate::remote::client::ClientOptions;
use crate::remote::server::{load_config, Server};

/// `vigil sync`: replicate trees of sparse images.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SyncCommand {
    #[command(subcommand)]
    pub command: Option<SyncSub>,
    #[command(flatten)]
    pub run: SyncArgs,
}

/// Subcommands of `vigil sync`.
#[derive(Debug, Subcommand)]
pub enum SyncSub {
    /// Serve a directory to remote `vigil sync` clients over TLS.
    Serve(ServeArgs),
    /// Compare two trees end to end (holes skipped).
    Verify(VerifyArgs),
    /// Generate a CA, server and client certificates and a token for a server.
    Cert(CertArgs),
}

/// Credentials for talking to a `vigil sync serve`.
#[derive(Debug, Args, Clone, Default)]
pub struct ClientArgs {
    /// CA certificate (PEM) that signed the server's certificate.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM), for servers started with --client-ca.
    #[arg(long, value_name = "FILE", requires = "key")]
    pub cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    pub key: Option<PathBuf>,
    /// File holding the shared token (mode 600). Default: $VIGIL_SYNC_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

impl ClientArgs {
    /// Loads the token only when a remote side needs it.
    fn options(&self, needed: bool) -> Result<ClientOptions, SyncError> {
        Ok(ClientOptions {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            token: if needed {
                crate::remote::tls::load_token(self.token_file.as_deref())?
            } else {
                None
            },
        })
    }
}

/// `vigil sync SRC DST`.
#[derive(Debug, Args, Clone)]
pub struct SyncArgs {
    /// Source: a local directory or host:port/path of a `vigil sync serve`.
    #[arg(required = true)]
    pub src: Option<String>,
    /// Destination: a local directory or host:port/path.
    #[arg(required = true)]
    pub dst: Option<String>,
    /// Files copied in parallel.
    #[arg(long, short = 'j', default_value_t = 4)]
    pub jobs: usize,
    /// Show what would be done, change nothing.
    #[arg(long, short = 'n')]
    pub dry_run: bool,
    /// Delete files on DST that SRC does not have (except ones DST changed since the last sync).
    #[arg(long)]
    pub delete: bool,
    /// Keep running: sync again after every burst of changes in SRC (local SRC only).
    #[arg(long)]
    pub watch: bool,
    /// Ignore the record's shortcuts: list the remote side and compare every file.
    #[arg(long)]
    pub full: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `vigil sync serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Directory served; clients cannot reach anything outside it.
    #[arg(long)]
    pub root: PathBuf,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:7873")]
    pub listen: String,
    /// Server certificate (PEM).
    #[arg(long, value_name = "FILE")]
    pub cert: PathBuf,
    /// Server private key (PEM).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Accept client certificates signed by this CA.
    #[arg(long, value_name = "FILE")]
    pub client_ca: Option<PathBuf>,
    /// File holding the shared token (mode 600). Default: $VIGIL_SYNC_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `vigil sync verify A B`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    pub a: String,
    pub b: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `vigil sync cert`.
#[derive(Debug, Args)]
pub struct CertArgs {
    /// Directory to write ca.pem, server.pem/key, client.pem/key and token into.
    #[arg(long)]
    pub dir: PathBuf,
    /// Names and addresses the server certificate is valid for.
    #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
    pub hosts: Vec<String>,
}

fn fail(e: &SyncError) -> ExitCode {
    eprintln!("vigil: {e}; {}.", e.hint());
    ExitCode::FAILURE
}

/// Runs `vigil sync ...` and returns the process exit code.
pub fn run_sync(cmd: SyncCommand) -> ExitCode {
    let res = match cmd.command {
        Some(SyncSub::Serve(a)) => serve(a),
        Some(SyncSub::Verify(a)) => verify(a),
        Some(SyncSub::Cert(a)) => crate::remote::tls::generate(&a.dir, &a.hosts).map(|g| {
            println!(
                "vigil sync: wrote {} (give clients ca.pem and the token or client.pem/key)",
                g.ca.parent().unwrap_or(&a.dir).display()
            );
            ExitCode::SUCCESS
        }),
        None => run(cmd.run),
    };
    res.unwrap_or_else(|e| fail(&e))
}

fn serve(a: ServeArgs) -> Result<ExitCode, SyncError> {
    let cfg = load_config(
        &a.root,
        &a.cert,
        &a.key,
        a.client_ca.as_deref(),
        a.token_file.as_deref(),
    )?;
    let server = Server::bind(cfg, &a.listen)?;
    eprintln!(
        "vigil sync serve: serving {} on {}",
        a.root.display(),
        server.local_addr()
    );
    server.run();
    Ok(ExitCode::SUCCESS)
}

fn verify(a: VerifyArgs) -> Result<ExitCode, SyncError> {
    let (x, y) = (Endpoint::parse(&a.a)?, Endpoint::parse(&a.b)?);
    let remote = matches!(x, Endpoint::Remote(_)) || matches!(y, Endpoint::Remote(_));
    let rep = crate::verify::verify(&x, &y, &a.client.options(remote)?)?;
    for d in &rep.differences {
        println!("differs: {}: {}", d.rel, d.what);
    }
    println!(
        "vigil sync verify: {} file(s) compared, {} difference(s)",
        rep.compared,
        rep.differences.len()
    );
    if rep.differences.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else {
        Err(SyncError::Differences(rep.differences.len()))
    }
}

fn run(a: SyncArgs) -> Result<ExitCode, SyncError> {
    let (Some(src), Some(dst)) = (&a.src, &a.dst) else {
        unreachable!("clap requires SRC and DST")
    };
    let (src, dst) = (Endpoint::parse(src)?, Endpoint::parse(dst)?);
    let remote = matches!(src, Endpoint::Remote(_)) || matches!(dst, Endpoint::Remote(_));
    let opts = Options {
        jobs: a.jobs,
        dry_run: a.dry_run,
        delete: a.delete,
        full: a.full,
        client: a.client.options(remote)?,
    };
    let once = || -> Result<Summary, SyncError> {
        let progress = Arc::new(Progress::default());
        let _bar = std::io::stderr()
            .is_terminal()
            .then(|| Bar::start(progress.clone()));
        sync(&src, &dst, &opts, &progress)
    };
    if a.watch {
        let Endpoint::Local(root) = &src else {
            return Err(SyncError::BadEndpoint {
                spec: src.to_string(),
                reason: "--watch needs a local source".into(),
            });
        };
        let stop = AtomicBool::new(false);
        crate::watch::watch(root, &stop, Default::default(), || match once() {
            Ok(s) => report(&s, false),
            Err(e) => {
                fail(&e);
            }
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let s = once()?;
    report(&s, a.dry_run);
    match s.failed.first() {
        Some((rel, e)) => Err(SyncError::Partial {
            failed: s.failed.len(),
            first: format!("{rel}: {e}"),
        }),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn report(s: &Summary, dry_run: bool) {
    if dry_run {
        for a in &s.planned {
            match a {
                Action::Copy { rel, .. } => println!("copy     {rel}"),
                Action::ConflictOverwrite { rel, aside, .. } => {
                    println!("conflict {rel} (target's version kept as {aside})")
                }
                Action::ConflictKeepDst { rel, copy } => {
                    println!("conflict {rel} (source's version kept as {copy})")
                }
                Action::Delete { rel, .. } => println!("delete   {rel}"),
                Action::Adopt { .. } | Action::Forget { .. } => {}
            }
        }
        println!("vigil sync: dry run, {} action(s) planned", s.planned.len());
        return;
    }
    for (rel, copy) in &s.conflicts {
        println!("conflict: {rel} changed on both sides; the other version is kept as {copy}");
    }
    for rel in &s.kept {
        println!("kept: {rel} was not deleted because it changed on the target since the last sync");
    }
    for (rel, e) in &s.failed {
        println!("failed: {rel}: {e}");
    }
    if !s.skipped.is_empty() {
        println!(
            "skipped: {} non-regular file(s) or non-UTF-8 name(s), e.g. {}",
            s.skipped.len(),
            s.skipped[0]
        );
    }
    println!("vigil sync: {}", s.line());
}
