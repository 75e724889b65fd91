//! `zippyfs mount`: its arguments and `-o` options sorted into a checked
//! [`Plan`], and the mount itself: opening the store and serving it, in the
//! foreground or in a daemon (see `daemon.rs`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use zippyfs::fs::{Fs, FsOptions};
use zippyfs::fuse::MountOpts;

use super::daemon::daemonize;
use super::mount_store;
use crate::{log_to_stderr, report};

#[derive(clap::Args)]
pub struct MountArgs {
    /// Stay in the foreground, logging to standard error (RUST_LOG sets the level).
    #[arg(short = 'f', long)]
    foreground: bool,
    /// Single-threaded: one shard and one FUSE thread.
    #[arg(short = 's', long, conflicts_with = "threads")]
    single: bool,
    /// FUSE threads and shards [default: the number of CPUs].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    threads: Option<u32>,
    /// How requests come from the kernel: uring (FUSE over io_uring, Linux
    /// 6.14+ with /sys/module/fuse/parameters/enable_uring = Y), classic
    /// (/dev/fuse), or auto (uring where the kernel offers it).
    #[arg(long, value_name = "auto|uring|classic", default_value = "auto")]
    transport: zippyfs::fuse::Transport,
    /// Entries per io_uring queue (one queue per CPU), each holding a
    /// request and a 1 MiB buffer.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    queue_depth: Option<u32>,
    /// The most dirty data held in memory, e.g. 256M or 1G: a commit starts
    /// at half of it, and a writer waits for one at the limit.
    #[arg(long, value_name = "SIZE", value_parser = zippyfs::store::retention::parse_size)]
    cache_size: Option<u64>,
    /// Options, comma-separated: block_size=SIZE (a new filesystem's block
    /// size), reserve=SIZE (space kept for commits that free space; 16M),
    /// flush_interval=SECS (commit at least this often),
    /// write_path=pwritev|uring (how the store file is written),
    /// transport=auto|uring|classic, queue_depth=N (as the flags above),
    /// kernel_dirty_ratio=PERCENT|default (how much of the system's dirty
    /// page cache the kernel may hold for this mount; 20 by default),
    /// ttl=SECS (how long the kernel caches attributes and names; 1),
    /// writeback_cache=on|off (the kernel's writeback cache; on),
    /// sync_window=SIZE (a syncing mount's blocks held or asked for ahead
    /// of applying them; 128M), sync_nice=N (the nice value, 0 to 19, of
    /// its sync threads; 10), sync_spill=N (changed files, names and
    /// entries not yet pushed it holds in memory before it moves them into
    /// its tree store; 16384),
    /// history_name=NAME (the directory of old versions, .zippy by default); others go to
    /// the kernel mount (ro, noatime, allow_other, ...).
    #[arg(short = 'o', value_name = "OPTION,...", value_delimiter = ',')]
    options: Vec<String>,
    /// Where to mount: an existing directory.
    mountpoint: PathBuf,
    /// The store directory.
    store: PathBuf,
}

/// Everything a mount needs, checked.
pub struct Plan {
    pub mountpoint: PathBuf,
    pub store: PathBuf,
    fs: FsOptions,
    mount: MountOpts,
    /// `-o sync_window`: bytes of blocks a syncing mount holds or asks for
    /// ahead of applying them.
    sync_window: u64,
    /// `-o sync_nice`: the sync threads' nice value.
    sync_nice: i32,
    /// `-o sync_spill`: changes not yet pushed held in memory.
    sync_spill: usize,
}

/// The checks before anything else, and the options sorted out.
fn plan(args: MountArgs) -> anyhow::Result<Plan> {
    let (mountpoint, store) = check_paths(&args.mountpoint, &args.store)?;
    let threads = if args.single {
        1
    } else if let Some(n) = args.threads {
        n as usize
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    };
    let mut fs = FsOptions {
        shards: threads,
        ..FsOptions::default()
    };
    if let Some(limit) = args.cache_size {
        fs.dirty_limit = limit;
    }
    let mut mount = MountOpts {
        threads,
        transport: args.transport,
        queue_depth: args
            .queue_depth
            .unwrap_or(zippyfs::fuse::DEFAULT_QUEUE_DEPTH),
        kernel_dirty_ratio: Some(zippyfs::fuse::DEFAULT_KERNEL_DIRTY_RATIO),
        ttl: zippyfs::fuse::ops::TTL,
        // On for a store that syncs too: the core tells the kernel the
        // sizes and times of files changed elsewhere (fs/coherence.rs);
        // off makes a remote cut of a file held open show at once.
        writeback_cache: true,
        options: Vec::new(),
    };
    let mut sync_window = zippyfs::sync::conf::DEFAULT_WINDOW;
    let mut sync_nice = zippyfs::sync::conf::DEFAULT_NICE;
    let mut sync_spill = zippyfs::sync::conf::DEFAULT_SPILL_AT;
    for o in args
        .options
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
    {
        if let Some(v) = o.strip_prefix("sync_window=") {
            sync_window = zippyfs::store::retention::parse_size(v)
                .ok()
                .filter(|&w| w >= 1 << 20)
                .with_context(|| format!("-o sync_window={v}: a size of 1M or more is needed"))?;
        } else if let Some(v) = o.strip_prefix("sync_nice=") {
            sync_nice = v
                .parse()
                .ok()
                .filter(|n| (0..=19).contains(n))
                .with_context(|| format!("-o sync_nice={v}: a number from 0 to 19 is needed"))?;
        } else if let Some(v) = o.strip_prefix("sync_spill=") {
            sync_spill =
                v.parse().ok().filter(|&n| n >= 1).with_context(|| {
                    format!("-o sync_spill={v}: a number of 1 or more is needed")
                })?;
        } else if !fs_option(o, &mut fs)? && !mount_option(o, &mut mount)? {
            mount.options.push(o.to_string());
        }
    }
    Ok(Plan {
        mountpoint,
        store,
        fs,
        mount,
        sync_window,
        sync_nice,
        sync_spill,
    })
}

/// Checks the mountpoint and the store directory; both made absolute.
fn check_paths(mp: &Path, store: &Path) -> anyhow::Result<(PathBuf, PathBuf)> {
    match std::fs::metadata(mp) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => anyhow::bail!("mountpoint {} is not a directory", mp.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            anyhow::bail!("mountpoint {} does not exist", mp.display())
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => anyhow::bail!(
            "mountpoint {}: {e} (a FUSE filesystem whose daemon died is still mounted there: `umount -l {}`)",
            mp.display(),
            mp.display()
        ),
        Err(e) => anyhow::bail!("cannot use mountpoint {}: {e}", mp.display()),
    }
    if let Some(store) = zippyfs_mounted_at(mp) {
        anyhow::bail!(
            "zippyfs is already mounted on {} (store {store}); unmount it first",
            mp.display()
        );
    }
    match std::fs::metadata(store) {
        Ok(m) if !m.is_dir() => anyhow::bail!("store {} is not a directory", store.display()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // made at open
        Err(e) => anyhow::bail!("cannot use store directory {}: {e}", store.display()),
    }
    // Absolute paths: the daemon works from `/`.
    let mountpoint = mp
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mp.display()))?;
    let store = std::path::absolute(store).with_context(|| format!("store {}", store.display()))?;
    Ok((mountpoint, store))
}

/// An `-o` option of the filesystem or the store, set in `fs`; whether `o`
/// is one.
fn fs_option(o: &str, fs: &mut FsOptions) -> anyhow::Result<bool> {
    if let Some(v) = o.strip_prefix("block_size=") {
        let bs = zippyfs::store::retention::parse_size(v)
            .map_err(|e| anyhow::anyhow!("-o block_size: {e}"))?;
        if !bs.is_power_of_two() || !(4096..=1 << 20).contains(&bs) {
            anyhow::bail!("-o block_size={v}: a power of two from 4K to 1M is needed");
        }
        fs.block_size = bs as u32;
    } else if let Some(v) = o.strip_prefix("reserve=") {
        fs.store.reserve = zippyfs::store::retention::parse_size(v)
            .map_err(|e| anyhow::anyhow!("-o reserve: {e}"))?;
    } else if let Some(v) = o.strip_prefix("flush_interval=") {
        let secs: f64 = v
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s < 1e9)
            .with_context(|| {
                format!("-o flush_interval={v}: a positive number of seconds is needed")
            })?;
        fs.flush_interval = Duration::from_secs_f64(secs);
    } else if let Some(v) = o.strip_prefix("history_name=") {
        if v.is_empty() || v.contains('/') || v == "." || v == ".." || v.len() > 255 {
            anyhow::bail!("-o history_name={v}: a plain file name is needed");
        }
        fs.history_name = v.to_string();
    } else if let Some(v) = o.strip_prefix("write_path=") {
        fs.store.write_path = match v {
            "pwritev" => zippyfs::store::WritePath::Pwritev,
            "uring" => zippyfs::store::WritePath::IoUring,
            _ => anyhow::bail!("-o write_path={v}: pwritev or uring"),
        };
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// An `-o` option of the FUSE mount, set in `mount`; whether `o` is one
/// (the kernel's own options are not).
fn mount_option(o: &str, mount: &mut MountOpts) -> anyhow::Result<bool> {
    if let Some(v) = o.strip_prefix("transport=") {
        mount.transport = v
            .parse()
            .map_err(|e| anyhow::anyhow!("-o transport: {e}"))?;
    } else if let Some(v) = o.strip_prefix("kernel_dirty_ratio=") {
        mount.kernel_dirty_ratio = match v {
            "default" => None,
            _ => Some(
                v.parse()
                    .ok()
                    .filter(|r| (1..=100).contains(r))
                    .with_context(|| {
                        format!("-o kernel_dirty_ratio={v}: a percentage from 1 to 100, or default")
                    })?,
            ),
        };
    } else if let Some(v) = o.strip_prefix("ttl=") {
        let secs: f64 = v
            .parse()
            .ok()
            .filter(|s: &f64| s.is_finite() && (0.0..=3600.0).contains(s))
            .with_context(|| format!("-o ttl={v}: seconds from 0 to 3600 are needed"))?;
        mount.ttl = Duration::from_secs_f64(secs);
    } else if let Some(v) = o.strip_prefix("writeback_cache=") {
        mount.writeback_cache = match v {
            "on" => true,
            "off" => false,
            _ => anyhow::bail!("-o writeback_cache={v}: on or off"),
        };
    } else if let Some(v) = o.strip_prefix("queue_depth=") {
        mount.queue_depth = v
            .parse()
            .ok()
            .filter(|d| (1..=4096).contains(d))
            .with_context(|| format!("-o queue_depth={v}: a number from 1 to 4096 is needed"))?;
    } else {
        return Ok(false);
    }
    Ok(true)
}

/// The store of the zippyfs mount at `mountpoint`, if one is mounted
/// there (from /proc/self/mountinfo: a `stat` of a busy mount could wait).
fn zippyfs_mounted_at(mountpoint: &Path) -> Option<String> {
    let want = mountpoint.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|l| {
        // id parent dev root mountpoint options ... - fstype source super
        let (left, right) = l.split_once(" - ")?;
        let at = left.split(' ').nth(4)?.replace("\\040", " ");
        let mut fields = right.split(' ');
        let (fstype, source) = (fields.next()?, fields.next()?);
        // Mounted by root without fusermount, the subtype is not recorded:
        // the type is plain `fuse` and the source our FSName.
        let ours = fstype == "fuse.zippyfs" || (fstype.starts_with("fuse") && source == "zippyfs");
        (Path::new(&at) == want && ours).then(|| {
            let versions = want.join(".zippy").join("versions.json");
            mount_store(&versions)
                .map(|p| p.display().to_string())
                .unwrap_or_else(|_| "unknown".into())
        })
    })
}

/// `zippyfs mount`.
pub fn mount(args: MountArgs) -> ExitCode {
    let foreground = args.foreground;
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => return report(Err(e)),
    };
    if foreground {
        log_to_stderr();
        report(serve(&plan, &mut || {}).map(|()| ExitCode::SUCCESS))
    } else {
        daemonize(&plan)
    }
}

/// Opens the store, mounts, and serves until unmounted; `live` is called
/// once the mount is live.
pub fn serve(plan: &Plan, live: &mut dyn FnMut()) -> anyhow::Result<()> {
    let fs = open_fs(plan)?;
    let fs = Arc::new(fs);
    let control = zippyfs::control::Server::start(&plan.store, &plan.mountpoint, Arc::clone(&fs))
        .with_context(|| {
        format!("cannot make the control socket in {}", plan.store.display())
    })?;
    let flusher = fs.spawn_flusher();
    let sync = match zippyfs::sync::conf::SyncConf::load(&plan.store)? {
        Some(mut conf) => {
            tracing::info!(server = %conf.url(), "syncing");
            conf.window = plan.sync_window;
            conf.nice = plan.sync_nice;
            conf.spill_at = plan.sync_spill;
            Some(zippyfs::sync::client::Client::start(
                Arc::clone(&fs),
                plan.store.clone(),
                conf,
            )?)
        }
        None => None,
    };
    let r = zippyfs::fuse::mount_and_notify(Arc::clone(&fs), &plan.mountpoint, &plan.mount, live);
    if let Some(s) = sync {
        s.stop();
    }
    // The mount has shut the filesystem down (the committer has stopped).
    if flusher.join().is_err() {
        tracing::error!("the committer thread panicked");
    }
    let outcome = r.as_ref().map(|_| ()).map_err(|e| e.to_string());
    // The store closes (its lock goes) before a waiting `zippyfs umount`
    // hears the outcome.
    control.stop(outcome, || drop(fs));
    r?;
    Ok(())
}

/// How long a new mount waits for the daemon of the last mount of the same
/// store to finish its final commit and let the store go.
const EXITING_DAEMON_WAIT: Duration = Duration::from_secs(60);

/// Opens the store, waiting (bounded) while the daemon of an unmounted
/// mount of it is still making its final commit: `umount` returns before
/// that, and a script that mounts again at once must not fail for it. A
/// store held by a daemon that is serving is refused at once.
fn open_fs(plan: &Plan) -> anyhow::Result<Fs> {
    let started = std::time::Instant::now();
    let mut waited = false;
    loop {
        let e = match Fs::mount(&plan.store, plan.fs.clone()) {
            Ok(fs) => return Ok(fs),
            Err(e) => e,
        };
        let in_use = matches!(
            e,
            zippyfs::fs::FsError::Store(zippyfs::store::StoreError::InUse { .. })
        );
        if in_use && started.elapsed() < EXITING_DAEMON_WAIT {
            let status = zippyfs::control::ask(&plan.store, "status", |_, _| {})
                .ok()
                .flatten()
                .map(|a| a["status"].clone());
            let state = status.as_ref().and_then(|s| s["state"].as_str());
            // A daemon whose mount is gone is on its way out, even if it
            // has not seen the end of its connection yet.
            let mount_gone = status
                .as_ref()
                .and_then(|s| s["mountpoint"].as_str())
                .is_some_and(|mp| zippyfs_mounted_at(Path::new(mp)).is_none());
            // No answer: the daemon has closed its socket and is letting
            // the store go; "unmounting": its final commit runs.
            if state.is_none_or(|s| s == "unmounting") || mount_gone {
                if !waited {
                    tracing::info!("waiting for the previous daemon of this store to exit");
                    waited = true;
                }
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        return Err(e).with_context(|| format!("cannot open store {}", plan.store.display()));
    }
}
