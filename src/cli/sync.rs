//! `serve` (the sync server and its peers) and `join` (a store to a volume).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use zippyfs::sync::conf::SyncConf;
use zippyfs::sync::server;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// The server's directory (its key, certificate, peers and store).
    dir: PathBuf,
    /// `add-peer NAME` makes a peer's credential (printed once);
    /// `remove-peer NAME` revokes it; `peers` lists them. Without one, the
    /// server runs.
    #[arg(value_parser = ["add-peer", "remove-peer", "peers"])]
    action: Option<String>,
    /// The peer, for add-peer and remove-peer.
    name: Option<String>,
    /// The volume a new peer may use.
    #[arg(long, default_value = "main")]
    volume: String,
    /// Where the server listens (UDP).
    #[arg(long, default_value = "0.0.0.0:4433")]
    listen: std::net::SocketAddr,
    /// The change-sets each volume's log keeps (0: all, the default):
    /// when it holds twice as many, the older half is folded into a
    /// snapshot of the volume and the blocks nothing names any more are
    /// deleted. A peer further behind gets the snapshot in place of the
    /// log. Experimental, with known faults (SEMANTICS.md, "A cut log").
    #[arg(long, default_value_t = server::DEFAULT_KEEP_LOG)]
    keep_log: u64,
}

pub fn serve(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let name = || args.name.clone().context("which peer? (add-peer NAME)");
    match args.action.as_deref() {
        Some("add-peer") => {
            let name = name()?;
            let credential = server::add_peer(&args.dir, &name, &args.volume)?;
            let (cert, _) = zippyfs::sync::tls::server_identity(&args.dir)?;
            println!("peer {name} may sync volume {}", args.volume);
            println!("credential (shown only now; put it in a file for `zippyfs join`):");
            println!("{credential}");
            println!(
                "server fingerprint: {}",
                zippyfs::sync::tls::fingerprint(&cert)
            );
        }
        Some("remove-peer") => {
            let name = name()?;
            server::remove_peer(&args.dir, &name)?;
            println!("peer {name} removed: its credential no longer connects");
        }
        Some("peers") => {
            for p in server::load_peers(&args.dir)? {
                println!("{}\t{}\t{}", p.id, p.name, p.volume);
            }
        }
        _ => {
            server::serve(
                &args.dir,
                args.listen,
                args.keep_log,
                |addr, fingerprint| {
                    println!("listening on {addr}");
                    println!("fingerprint {fingerprint}");
                },
            )?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(clap::Args)]
pub struct JoinArgs {
    /// The store directory (made if missing).
    store: PathBuf,
    /// The server and volume: quic://HOST:PORT/VOLUME.
    url: String,
    /// The SHA-256 fingerprint the server printed (hex; colons allowed).
    #[arg(long)]
    fingerprint: String,
    /// A file holding this peer's credential (from `serve add-peer`).
    #[arg(long)]
    credential: PathBuf,
}

pub fn join(args: JoinArgs) -> anyhow::Result<ExitCode> {
    let (host, port, volume) = SyncConf::parse_url(&args.url)?;
    let credential = std::fs::read_to_string(&args.credential)
        .with_context(|| format!("cannot read {}", args.credential.display()))?
        .trim()
        .to_string();
    let fingerprint = args.fingerprint.to_ascii_lowercase().replace(':', "");
    if fingerprint.len() != 64 || !fingerprint.bytes().all(|b| b.is_ascii_hexdigit()) {
        anyhow::bail!("the fingerprint is 64 hex digits (SHA-256), as `zippyfs serve` prints it");
    }
    std::fs::create_dir_all(&args.store)
        .with_context(|| format!("cannot make {}", args.store.display()))?;
    SyncConf {
        host,
        port,
        volume,
        fingerprint,
        credential,
        window: zippyfs::sync::conf::DEFAULT_WINDOW,
        nice: zippyfs::sync::conf::DEFAULT_NICE,
        spill_at: zippyfs::sync::conf::DEFAULT_SPILL_AT,
    }
    .save(&args.store)?;
    println!(
        "{} syncs with {}: every mount of it from now on",
        args.store.display(),
        args.url
    );
    Ok(ExitCode::SUCCESS)
}
