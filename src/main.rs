//! The `zippyfs` command line: parsing and wiring only. The commands
//! themselves are in `cli/`: mounting in `cli/mount.rs`, the history
//! commands in `cli/history.rs`, the store and daemon administration in
//! `cli/admin.rs`.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::{admin, history, mount, sync};

#[derive(Parser)]
#[command(
    name = "zippyfs",
    version,
    about = "A versioned FUSE filesystem that syncs through a server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Check every reachable page of every kept version, and the space
    /// accounting: of an unmounted store directory, or of a live mount (a
    /// path inside it), whose daemon runs the check without stopping.
    Fsck(admin::FsckArgs),
    /// Show a store's versions and how its space is used.
    Info(admin::InfoArgs),
    /// List the kept versions: id, time, cause, and how much changed.
    ///
    /// PATH is a store directory, or a mountpoint or any path inside a
    /// mount (the versions are read from the live mount).
    Versions(history::VersionsArgs),
    /// The versions in which a file or directory appeared, changed or
    /// disappeared (read from the live mount the path is in).
    Log(history::LogArgs),
    /// What changed between two versions, under PATH (default: the current
    /// directory, which must be inside a live mount): added, removed,
    /// modified, renamed.
    Diff(history::DiffArgs),
    /// Bring a file or a whole directory back as it was in a version, as a
    /// new version (the state it replaces stays in the history).
    Restore(history::RestoreArgs),
    /// Show or set a store's retention policy. It is kept in the store
    /// itself, set by a commit that may use the store's reserve (so it works
    /// on a full disk); on a live mount the daemon sets it and applies it
    /// at once. (A store whose policy was never set reads
    /// <store-dir>/retention.conf, as before.)
    Retention(admin::RetentionArgs),
    /// Apply the retention policy now and show what was freed: on an
    /// unmounted store directory, or on a live mount (a path inside it, or
    /// its store directory), whose daemon does it and answers with the
    /// figures or its error.
    Gc(admin::GcArgs),
    /// What the daemon serving a mount is doing: its store, transport,
    /// space, versions, requests served, and whether it stopped taking
    /// changes (and why).
    Status(admin::StatusArgs),
    /// Unmount, and return only once the daemon's final commit is durable:
    /// exit 0 if everything was saved, non-zero (with what was not) if not.
    /// Use this in scripts that mount the same store again at once.
    Umount(admin::UmountArgs),
    /// Mount the filesystem in a store directory (made if missing).
    ///
    /// Runs as a daemon (logging to <store-dir>/zippyfs.log) unless -f is
    /// given; returns once the mount is live. Unmount with `umount
    /// <mountpoint>` (or SIGTERM/SIGINT to the daemon): what is left is
    /// committed before the daemon exits.
    Mount(mount::MountArgs),
    /// Run the sync server (QUIC), or manage its peers: `serve DIR` runs
    /// it; `serve DIR add-peer NAME [--volume V]` makes a peer's
    /// credential; `serve DIR remove-peer NAME` revokes it.
    Serve(sync::ServeArgs),
    /// Make a store sync with a server's volume: every mount of it from
    /// then on pushes its commits and applies the other peers'.
    Join(sync::JoinArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mount(args) => mount::mount(args),
        command => {
            log_to_stderr();
            report(run(command))
        }
    }
}

/// RUST_LOG, or `info`. By default fuser's session logger is held to
/// errors: fuser 0.18 warns "Failed to umount filesystem: Invalid argument"
/// after every ordinary `umount`: at the end of the session it unmounts
/// again, its `is_mounted` taking the POLLERR of a closed connection for
/// "still mounted".
fn env_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,fuser::session=error"))
}

fn log_to_stderr() {
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_writer(std::io::stderr)
        .init();
}

fn report(r: anyhow::Result<ExitCode>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("zippyfs: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    // Like other Unix tools, stop quietly when the reader of our output goes
    // away (`zippyfs info | head`) instead of failing on the broken pipe.
    // Only here: the mount daemon keeps ignoring SIGPIPE.
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match command {
        Command::Fsck(args) => admin::fsck(args),
        Command::Info(args) => admin::info(args),
        Command::Versions(args) => history::versions(args),
        Command::Log(args) => history::log(args),
        Command::Diff(args) => history::diff(args),
        Command::Restore(args) => history::restore(args),
        Command::Retention(args) => admin::retention(args),
        Command::Gc(args) => admin::gc(args),
        Command::Status(args) => admin::status(args),
        Command::Umount(args) => admin::umount(args),
        Command::Serve(args) => sync::serve(args),
        Command::Join(args) => sync::join(args),
        Command::Mount(_) => unreachable!("mount is dispatched in main"),
    }
}
