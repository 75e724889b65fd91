//! The `zippyfs` command line: parsing and wiring only.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use zippyfs::fs::{Fs, FsOptions};
use zippyfs::fuse::MountOpts;
use zippyfs::store::{Store, StoreOptions};

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
    Fsck {
        /// The store directory, or a path inside a mount.
        store: PathBuf,
        #[arg(long, default_value = ".zippy", value_name = "NAME")]
        history_name: String,
    },
    /// Show a store's versions and how its space is used.
    Info {
        /// The store directory.
        store: PathBuf,
    },
    /// List the kept versions: id, time, cause, and how much changed.
    ///
    /// PATH is a store directory, or a mountpoint or any path inside a
    /// mount (the versions are read from the live mount).
    Versions {
        path: PathBuf,
        /// Print JSON: an array of {id, time, time_ns, cause, changes, bytes}.
        #[arg(long)]
        json: bool,
        /// The mount's history directory name (its -o history_name).
        #[arg(long, default_value = ".zippy", value_name = "NAME")]
        history_name: String,
    },
    /// The versions in which a file or directory appeared, changed or
    /// disappeared (read from the live mount the path is in).
    Log {
        /// A path inside a live mount; with --store, a path from the root
        /// of that store's filesystem.
        path: PathBuf,
        /// Print JSON: an array of {id, change}.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = ".zippy", value_name = "NAME")]
        history_name: String,
        /// Read an unmounted store instead (mounted read-only, privately,
        /// for the command).
        #[arg(long, value_name = "STORE-DIR")]
        store: Option<PathBuf>,
    },
    /// What changed between two versions, under PATH (default: the current
    /// directory, which must be inside a live mount): added, removed,
    /// modified, renamed.
    Diff {
        v1: u64,
        v2: u64,
        path: Option<PathBuf>,
        /// Print JSON: {added, removed, modified, renamed: [[from, to]]}.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = ".zippy", value_name = "NAME")]
        history_name: String,
        /// Read an unmounted store instead (mounted read-only, privately,
        /// for the command); PATH is then from its root.
        #[arg(long, value_name = "STORE-DIR")]
        store: Option<PathBuf>,
    },
    /// Bring a file or a whole directory back as it was in a version, as a
    /// new version (the state it replaces stays in the history).
    Restore {
        /// A path inside a live mount.
        path: PathBuf,
        /// A version id, a UTC time (2026-11-26T07:53:26Z: the newest
        /// version at or before it), or @UNIX-SECONDS.
        #[arg(long, value_name = "VERSION|TIME")]
        at: String,
        /// Where to put it (inside the mount); default: where it was.
        #[arg(long, value_name = "DEST")]
        to: Option<PathBuf>,
        #[arg(long, default_value = ".zippy", value_name = "NAME")]
        history_name: String,
        /// Restore into an unmounted store instead (mounted privately for
        /// the command); PATH and DEST are then from its root.
        #[arg(long, value_name = "STORE-DIR")]
        store: Option<PathBuf>,
    },
    /// Show or set a store's retention policy. It is kept in the store
    /// itself, set by a commit that may use the store's reserve (so it works
    /// on a full disk); on a live mount the daemon sets it and applies it
    /// at once. (A store whose policy was never set reads
    /// <store-dir>/retention.conf, as before.)
    Retention {
        store: PathBuf,
        /// Always keep the newest N versions.
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Keep every version younger than this (90s, 30m, 12h, 7d).
        #[arg(long, value_name = "DURATION")]
        keep_within: Option<String>,
        /// Beyond that, the newest version of each of the last N hours.
        #[arg(long, value_name = "N")]
        hourly: Option<usize>,
        /// ... of each of the last N days.
        #[arg(long, value_name = "N")]
        daily: Option<usize>,
        /// ... of each of the last N weeks.
        #[arg(long, value_name = "N")]
        weekly: Option<usize>,
        /// A cap on the space the store uses (10G; 0: none): over it the
        /// oldest versions go first, never the newest.
        #[arg(long, value_name = "SIZE")]
        max_size: Option<String>,
    },
    /// Apply the retention policy now and show what was freed: on an
    /// unmounted store directory, or on a live mount (a path inside it, or
    /// its store directory), whose daemon does it and answers with the
    /// figures or its error.
    Gc {
        path: PathBuf,
        #[arg(long, default_value = ".zippy", value_name = "NAME")]
        history_name: String,
    },
    /// What the daemon serving a mount is doing: its store, transport,
    /// space, versions, requests served, and whether it stopped taking
    /// changes (and why).
    Status {
        /// A mountpoint, a path inside a mount, or a store directory.
        path: PathBuf,
        /// Print the daemon's answer as JSON (the fields of .zippy/daemon.json).
        #[arg(long)]
        json: bool,
        #[arg(long, default_value = ".zippy", value_name = "NAME")]
        history_name: String,
    },
    /// Unmount, and return only once the daemon's final commit is durable:
    /// exit 0 if everything was saved, non-zero (with what was not) if not.
    /// Use this in scripts that mount the same store again at once.
    Umount {
        mountpoint: PathBuf,
        #[arg(long, default_value = ".zippy", value_name = "NAME")]
        history_name: String,
    },
    /// Mount the filesystem in a store directory (made if missing).
    ///
    /// Runs as a daemon (logging to <store-dir>/zippyfs.log) unless -f is
    /// given; returns once the mount is live. Unmount with `umount
    /// <mountpoint>` (or SIGTERM/SIGINT to the daemon): what is left is
    /// committed before the daemon exits.
    Mount(MountArgs),
}

#[derive(clap::Args)]
struct MountArgs {
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
    /// history_name=NAME (the directory of old versions, .zippy by default); others go to
    /// the kernel mount (ro, noatime, allow_other, ...).
    #[arg(short = 'o', value_name = "OPTION,...", value_delimiter = ',')]
    options: Vec<String>,
    /// Where to mount: an existing directory.
    mountpoint: PathBuf,
    /// The store directory.
    store: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Mount(args) => mount(args),
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

fn open(dir: &Path) -> anyhow::Result<Store> {
    if !dir.join(zippyfs::store::STORE_FILE).is_file() {
        anyhow::bail!("{} holds no zippyfs store", dir.display());
    }
    let opts = StoreOptions {
        progress: Some(open_progress),
        ..StoreOptions::default()
    };
    Store::open(dir, opts).with_context(|| format!("cannot open store {}", dir.display()))
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    // Like other Unix tools, stop quietly when the reader of our output goes
    // away (`zippyfs info | head`) instead of failing on the broken pipe.
    // Only here: the mount daemon keeps ignoring SIGPIPE.
    // SAFETY: setting a signal disposition to its default has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    match command {
        Command::Fsck {
            store,
            history_name,
        } => {
            let store = match locate(&store, &history_name)? {
                Located::Store(dir) => dir,
                Located::Mount(file) => {
                    return Ok(print_fsck(&ask_live(&file, "fsck", fsck_progress)?));
                }
            };
            if let Some(answer) = ask_daemon(&store, "fsck", fsck_progress)? {
                return Ok(print_fsck(&answer));
            }
            let s = open(&store)?;
            let report =
                s.fsck_with_progress(&|checked, total| show_progress("fsck", checked, total))?;
            end_progress();
            print!("{report}");
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Info { store } => {
            let s = open(&store)?;
            let st = s.stats();
            println!(
                "file {} bytes, {} pages below the high-water mark, {} free, {} kept for old versions",
                st.file_bytes, st.hwm_pages, st.free_pages, st.retained_pages
            );
            println!("{} versions:", st.versions);
            for v in s.versions() {
                println!(
                    "  {:>8}  {}  {:>8} changes  {:>12} bytes  {}",
                    v.id, v.time, v.changes, v.bytes, v.cause
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Versions {
            path,
            json,
            history_name,
        } => {
            let text = match locate(&path, &history_name)? {
                Located::Store(dir) => zippyfs::fs::versions_json(&open(&dir)?),
                Located::Mount(file) => std::fs::read(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?,
            };
            if json {
                use std::io::Write;
                std::io::stdout().write_all(&text)?;
            } else {
                let list: Vec<serde_json::Value> =
                    serde_json::from_slice(&text).context("the versions list is not valid JSON")?;
                println!(
                    "{:>10}  {:<30}  {:>9}  {:>14}  cause",
                    "id", "time (UTC)", "changes", "bytes"
                );
                for v in list {
                    println!(
                        "{:>10}  {:<30}  {:>9}  {:>14}  {}",
                        v["id"].as_u64().unwrap_or(0),
                        v["time"].as_str().unwrap_or(""),
                        v["changes"].as_u64().unwrap_or(0),
                        v["bytes"].as_u64().unwrap_or(0),
                        v["cause"].as_str().unwrap_or("")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Log {
            path,
            json,
            history_name,
            store: Some(store),
        } => on_private_mount(&store, false, |mnt| {
            run(Command::Log {
                path: in_mount(mnt, &path),
                json,
                history_name,
                store: None,
            })
        }),
        Command::Diff {
            v1,
            v2,
            path,
            json,
            history_name,
            store: Some(store),
        } => on_private_mount(&store, false, |mnt| {
            let path = path.unwrap_or_default();
            run(Command::Diff {
                v1,
                v2,
                path: Some(in_mount(mnt, &path)),
                json,
                history_name,
                store: None,
            })
        }),
        Command::Restore {
            path,
            at,
            to,
            history_name,
            store: Some(store),
        } => on_private_mount(&store, true, |mnt| {
            run(Command::Restore {
                path: in_mount(mnt, &path),
                at,
                to: to.as_deref().map(|p| in_mount(mnt, p)),
                history_name,
                store: None,
            })
        }),
        Command::Log {
            path,
            json,
            history_name,
            store: None,
        } => {
            let (h, rel) = history(&path, &history_name)?;
            let log = h.log(&rel);
            if json {
                let v: Vec<_> = log
                    .iter()
                    .map(|(id, what)| serde_json::json!({"id": id, "change": what}))
                    .collect();
                println!("{}", serde_json::Value::Array(v));
            } else {
                for (id, what) in log {
                    println!("{id:>10}  {what}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Diff {
            v1,
            v2,
            path,
            json,
            history_name,
            store: None,
        } => {
            let path = path.unwrap_or_else(|| PathBuf::from("."));
            let (h, rel) = history(&path, &history_name)?;
            for v in [v1, v2] {
                if !h.versions.contains_key(&v) {
                    anyhow::bail!("version {v} is not kept (see `zippyfs versions`)");
                }
            }
            let d = h.diff(v1, v2, &rel);
            let s = |p: &PathBuf| p.display().to_string();
            if json {
                let v = serde_json::json!({
                    "added": d.added.iter().map(s).collect::<Vec<_>>(),
                    "removed": d.removed.iter().map(s).collect::<Vec<_>>(),
                    "modified": d.modified.iter().map(s).collect::<Vec<_>>(),
                    "renamed": d.renamed.iter().map(|(a, b)| [s(a), s(b)]).collect::<Vec<_>>(),
                });
                println!("{v}");
            } else {
                for p in &d.added {
                    println!("A {}", p.display());
                }
                for p in &d.removed {
                    println!("D {}", p.display());
                }
                for p in &d.modified {
                    println!("M {}", p.display());
                }
                for (a, b) in &d.renamed {
                    println!("R {} -> {}", a.display(), b.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore {
            path,
            at,
            to,
            history_name,
            store: None,
        } => {
            let (h, rel) = history(&path, &history_name)?;
            let version = pick_version(&h, &at)?;
            let src = h.view(version).join(&rel);
            if std::fs::symlink_metadata(&src).is_err() {
                anyhow::bail!("{} did not exist in version {version}", rel.display());
            }
            let dest = to.unwrap_or_else(|| h.root.join(&rel));
            // Commit what is there first: the restore may overwrite or remove
            // changes no version holds yet, and nothing may be lost.
            std::fs::File::open(&h.root)
                .and_then(|d| d.sync_all())
                .context("committing the state before the restore")?;
            let n = zippyfs::tools::restore(&src, &dest)
                .with_context(|| format!("restoring {} into {}", src.display(), dest.display()))?;
            // Commit it: the restored state is a new version.
            std::fs::File::open(&h.root)
                .and_then(|d| d.sync_all())
                .context("committing the restored state")?;
            println!(
                "restored {} from version {version} ({n} files)",
                dest.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Retention {
            store,
            keep_last,
            keep_within,
            hourly,
            daily,
            weekly,
            max_size,
        } => {
            if !store.join(zippyfs::store::STORE_FILE).is_file() {
                anyhow::bail!("{} holds no zippyfs store", store.display());
            }
            // The policy is kept in the store: a live daemon's answer, or
            // the store itself (retention.conf for a store that never had
            // one set).
            let live = ask_daemon(&store, "status", |_, _| {})?;
            let mut policy = match &live {
                Some(a) => zippyfs::store::Retention::parse(
                    a["status"]["retention"].as_str().unwrap_or(""),
                )
                .map_err(anyhow::Error::msg)?,
                None => {
                    let s = open_with_policy(&store)?;
                    s.retention()
                }
            };
            let mut changed = false;
            let mut set = |field: &mut usize, v: Option<usize>| {
                if let Some(v) = v {
                    *field = v;
                    changed = true;
                }
            };
            set(&mut policy.keep_last, keep_last);
            set(&mut policy.hourly, hourly);
            set(&mut policy.daily, daily);
            set(&mut policy.weekly, weekly);
            if let Some(m) = max_size {
                policy.max_bytes = zippyfs::store::retention::parse_size(&m)
                    .map_err(|e| anyhow::anyhow!("--max-size: {e}"))?;
                changed = true;
            }
            if let Some(d) = keep_within {
                policy.keep_within =
                    zippyfs::store::retention::parse_duration(&d).with_context(|| {
                        format!("--keep-within {d}: a duration like 90s, 30m, 12h, 7d")
                    })?;
                changed = true;
            }
            if changed {
                let text = policy.to_text();
                if live.is_some() {
                    let request = serde_json::json!({"op": "retention", "policy": text});
                    zippyfs::control::send_request(&store, request)
                        .map_err(anyhow::Error::msg)?
                        .context("the daemon went away")?
                        .answer(|_, _| {})
                        .map_err(anyhow::Error::msg)?;
                } else {
                    let s = open_with_policy(&store)?;
                    let mut t = s.begin_write()?;
                    t.use_reserve();
                    t.set_retention(policy.clone());
                    t.commit("retention")?;
                }
            }
            print!("{}", policy.to_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Gc { path, history_name } => {
            let store = match locate(&path, &history_name)? {
                Located::Store(dir) => dir,
                Located::Mount(file) => return Ok(print_gc(&ask_live(&file, "gc", |_, _| {})?)),
            };
            if let Some(answer) = ask_daemon(&store, "gc", |_, _| {})? {
                return Ok(print_gc(&answer));
            }
            let s = open_with_policy(&store)?;
            let before = (s.stats(), s.versions().len());
            let room = || -> anyhow::Result<()> {
                let mut t = s.begin_write()?;
                t.use_reserve();
                t.commit("gc")?;
                Ok(())
            };
            room()?;
            // Over the space cap each commit lets one more old version go.
            let most = s.versions().len() as u64;
            let mut rounds = 0;
            while s.over_cap() && s.versions().len() > 1 && rounds < most {
                room()?;
                rounds += 1;
                show_progress("gc: versions let go for the space cap", rounds, most);
            }
            if rounds > 0 {
                end_progress();
            }
            let mid = (s.stats(), s.versions().len());
            s.close()?;
            let after = open(&store)?.stats();
            let mib = |b: u64| b as f64 / (1 << 20) as f64;
            println!("versions kept: {} -> {}", before.1, mid.1);
            println!(
                "pages old versions held: {} -> {}",
                before.0.retained_pages, mid.0.retained_pages
            );
            println!(
                "free pages: {} -> {}",
                before.0.free_pages, after.free_pages
            );
            println!(
                "store file: {:.1} MiB -> {:.1} MiB",
                mib(before.0.file_bytes),
                mib(after.file_bytes)
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            path,
            json,
            history_name,
        } => {
            let answer = match locate(&path, &history_name)? {
                Located::Mount(file) => ask_live(&file, "status", |_, _| {})?,
                Located::Store(dir) => ask_daemon(&dir, "status", |_, _| {})?
                    .with_context(|| format!("no daemon serves the store in {}", dir.display()))?,
            };
            let st = &answer["status"];
            if json {
                println!("{st}");
                return Ok(ExitCode::SUCCESS);
            }
            println!("store:      {}", st["store"].as_str().unwrap_or(""));
            println!("pid:        {}", st["pid"]);
            println!("state:      {}", st["state"].as_str().unwrap_or(""));
            if let Some(why) = st["failed"].as_str() {
                println!("failed:     {why}");
            }
            println!("transport:  {}", st["transport"].as_str().unwrap_or(""));
            println!("versions:   {}", st["versions"]);
            println!(
                "space:      {} bytes in the store file, {} free pages, {} pages held by old versions",
                st["file_bytes"], st["free_pages"], st["retained_pages"]
            );
            println!(
                "requests:   {} by io_uring, {} by /dev/fuse",
                st["requests_ring"], st["requests_dev"]
            );
            Ok(if st["failed"].is_null() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Umount {
            mountpoint,
            history_name,
        } => umount(&mountpoint, &history_name),
        Command::Mount(_) => unreachable!("mount is dispatched in main"),
    }
}

/// The store directory of the mount whose `versions.json` this is, as
/// its daemon says in `daemon.json` beside it.
fn mount_store(versions_file: &Path) -> anyhow::Result<PathBuf> {
    let file = versions_file.with_file_name("daemon.json");
    let v: serde_json::Value = serde_json::from_slice(
        &std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?,
    )
    .with_context(|| format!("{} is not JSON", file.display()))?;
    let store = v["store"]
        .as_str()
        .filter(|s| !s.is_empty())
        .with_context(|| format!("{} names no store directory", file.display()))?;
    Ok(PathBuf::from(store))
}

/// Asks the daemon serving the store in `store` (see `zippyfs::control`);
/// `None` when no daemon serves it.
fn ask_daemon(
    store: &Path,
    op: &str,
    progress: impl FnMut(u64, u64),
) -> anyhow::Result<Option<serde_json::Value>> {
    zippyfs::control::ask(store, op, progress).map_err(anyhow::Error::msg)
}

/// Asks the daemon of a live mount, which must answer.
fn ask_live(
    versions_file: &Path,
    op: &str,
    progress: impl FnMut(u64, u64),
) -> anyhow::Result<serde_json::Value> {
    let store = mount_store(versions_file)?;
    ask_daemon(&store, op, progress)?.with_context(|| {
        format!(
            "no daemon answers on {} (an older zippyfs, or it is exiting)",
            store.join(zippyfs::control::SOCKET).display()
        )
    })
}

fn print_gc(answer: &serde_json::Value) -> ExitCode {
    let (before, after) = (&answer["before"], &answer["after"]);
    println!(
        "versions kept: {} -> {}",
        before["versions"], after["versions"]
    );
    println!(
        "pages old versions held: {} -> {}",
        before["retained_pages"], after["retained_pages"]
    );
    println!(
        "free pages: {} -> {}",
        before["free_pages"], after["free_pages"]
    );
    ExitCode::SUCCESS
}

fn print_fsck(answer: &serde_json::Value) -> ExitCode {
    end_progress();
    print!("{}", answer["report"].as_str().unwrap_or(""));
    if answer["problems"].as_u64() == Some(0) {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn fsck_progress(checked: u64, total: u64) {
    show_progress("fsck", checked, total)
}

/// Progress of opening a store that was not closed cleanly (a walk of
/// every kept version).
fn open_progress(done: u64, total: u64) {
    show_progress("opening: walking the store", done, total);
}

/// A progress line on standard error, when it is a terminal.
fn show_progress(what: &str, done: u64, total: u64) {
    use std::io::IsTerminal;
    if total > 0 && std::io::stderr().is_terminal() {
        eprint!(
            "\r{what}: {done} of at most {total} pages ({}%)",
            done * 100 / total
        );
    }
}

fn end_progress() {
    use std::io::IsTerminal;
    if std::io::stderr().is_terminal() {
        eprintln!();
    }
}

/// Opens an unmounted store with its retention policy in force: the one
/// kept in the store, or for a store that never had one set by a commit,
/// `retention.conf` (or the default).
fn open_with_policy(dir: &Path) -> anyhow::Result<Store> {
    let s = open(dir)?;
    if !s.has_stored_policy() {
        let file = zippyfs::store::Retention::load(dir).map_err(anyhow::Error::msg)?;
        s.set_retention(file.unwrap_or_default());
    }
    Ok(s)
}

/// A version named by id, or the newest at or before a time.
fn pick_version(h: &zippyfs::tools::History, at: &str) -> anyhow::Result<u64> {
    if let Ok(id) = at.parse::<u64>() {
        if !h.versions.contains_key(&id) {
            anyhow::bail!("version {id} is not kept (see `zippyfs versions`)");
        }
        return Ok(id);
    }
    let ns = zippyfs::tools::parse_time(at).with_context(|| {
        format!("--at {at}: a version id, a UTC time like 2026-11-26T07:53:26Z, or @SECONDS")
    })?;
    h.versions
        .iter()
        .filter(|&(_, &t)| t as i64 <= ns)
        .map(|(&id, _)| id)
        .max()
        .with_context(|| format!("no kept version at or before {at}"))
}

/// The history of the live mount `path` is in, and `path` relative to its root.
fn history(path: &Path, history_name: &str) -> anyhow::Result<(zippyfs::tools::History, PathBuf)> {
    let existing = if path.exists() {
        path
    } else {
        path.parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
    };
    let file = match locate(existing, history_name)? {
        Located::Mount(file) => file,
        Located::Store(dir) => anyhow::bail!(
            "{} is a store directory: give a path inside a live mount, or --store {} and a path from its root",
            dir.display(),
            dir.display()
        ),
    };
    let hist_dir = file.parent().context("history directory")?.to_path_buf();
    let root = hist_dir.parent().context("mount root")?.to_path_buf();
    let text = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let list: Vec<serde_json::Value> =
        serde_json::from_slice(&text).context("the versions list is not valid JSON")?;
    let versions = list
        .iter()
        .filter_map(|v| Some((v["id"].as_u64()?, v["time_ns"].as_u64()?)))
        .collect();
    // The path may be gone from the live tree (its history is still asked
    // for): resolve its parent then.
    let full = match path.canonicalize() {
        Ok(p) => p,
        Err(_) => {
            let name = path.file_name().context("a path with a final name")?;
            existing
                .canonicalize()
                .with_context(|| format!("{} does not exist", existing.display()))?
                .join(name)
        }
    };
    let rel = full
        .strip_prefix(&root)
        .unwrap_or(Path::new(""))
        .to_path_buf();
    Ok((
        zippyfs::tools::History {
            root,
            history: hist_dir,
            versions,
        },
        rel,
    ))
}

/// `path` (from the filesystem's root, with or without a leading `/`) in
/// the mount at `mnt`.
fn in_mount(mnt: &Path, path: &Path) -> PathBuf {
    mnt.join(path.strip_prefix("/").unwrap_or(path))
}

/// Runs `f` on a mount of the unmounted store in `store`, made for it in a
/// directory of its own (read-only unless `write`) and taken down after,
/// its final commit waited for: how `log`, `diff` and `restore` reach a
/// store that is not mounted.
fn on_private_mount(
    store: &Path,
    write: bool,
    f: impl FnOnce(&Path) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    if !store.join(zippyfs::store::STORE_FILE).is_file() {
        anyhow::bail!("{} holds no zippyfs store", store.display());
    }
    if let Some(a) = ask_daemon(store, "status", |_, _| {})? {
        anyhow::bail!(
            "the store in {} is mounted at {}: give a path inside that mount instead",
            store.display(),
            a["status"]["mountpoint"].as_str().unwrap_or("?")
        );
    }
    let exe = std::env::current_exe().context("find the zippyfs binary")?;
    let mnt = std::env::temp_dir().join(format!("zippyfs-{}-view", std::process::id()));
    std::fs::create_dir(&mnt).with_context(|| format!("make {}", mnt.display()))?;
    let mut mount = std::process::Command::new(&exe);
    mount.arg("mount");
    if !write {
        mount.args(["-o", "ro"]);
    }
    let st = mount
        .arg(&mnt)
        .arg(store)
        .status()
        .context("run zippyfs mount")?;
    if !st.success() {
        let _ = std::fs::remove_dir(&mnt);
        anyhow::bail!("could not mount the store in {}", store.display());
    }
    let r = f(&mnt);
    let down = std::process::Command::new(&exe)
        .arg("umount")
        .arg(&mnt)
        .status();
    let _ = std::fs::remove_dir(&mnt);
    match down {
        Ok(st) if st.success() => r,
        Ok(st) => r.and(Err(anyhow::anyhow!(
            "unmounting the private mount of {} failed ({st})",
            store.display()
        ))),
        Err(e) => r.and(Err(e).context("run zippyfs umount")),
    }
}

/// `zippyfs umount`: asks the daemon to tell when it exits, unmounts, and
/// waits for that answer: the outcome of the final commit.
fn umount(mountpoint: &Path, history_name: &str) -> anyhow::Result<ExitCode> {
    let mp = mountpoint
        .canonicalize()
        .with_context(|| format!("{} does not exist", mountpoint.display()))?;
    let versions = mp.join(history_name).join("versions.json");
    if !versions.is_file() {
        anyhow::bail!("{} is not the root of a zippyfs mount", mp.display());
    }
    let store = mount_store(&versions)?;
    let pending = zippyfs::control::send(&store, "wait")
        .map_err(anyhow::Error::msg)?
        .with_context(|| format!("no daemon serves the store in {}", store.display()))?;
    let st = std::process::Command::new("umount")
        .arg(&mp)
        .status()
        .context("run umount")?;
    if !st.success() {
        anyhow::bail!("umount {} failed ({st})", mp.display());
    }
    match pending.answer(|_, _| {}) {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => {
            eprintln!("zippyfs: {e}");
            Ok(ExitCode::from(1))
        }
    }
}

/// Where a command's path leads.
enum Located {
    /// A store directory (not mounted: the store is opened).
    Store(PathBuf),
    /// The versions file of the live mount the path is in.
    Mount(PathBuf),
}

/// A store directory, or the mount a path is in (found by walking up to the
/// directory holding the history directory).
fn locate(path: &Path, history_name: &str) -> anyhow::Result<Located> {
    if path.join(zippyfs::store::STORE_FILE).is_file() {
        return Ok(Located::Store(path.to_path_buf()));
    }
    let start = path
        .canonicalize()
        .with_context(|| format!("{} does not exist", path.display()))?;
    let mut cur = Some(start.as_path());
    while let Some(dir) = cur {
        let file = dir.join(history_name).join("versions.json");
        if file.is_file() {
            return Ok(Located::Mount(file));
        }
        cur = dir.parent();
    }
    anyhow::bail!(
        "{} is neither a zippyfs store directory nor inside a zippyfs mount",
        path.display()
    )
}

// ---- mount ----

/// Everything a mount needs, checked.
struct Plan {
    mountpoint: PathBuf,
    store: PathBuf,
    fs: FsOptions,
    mount: MountOpts,
}

/// The checks before anything else, and the options sorted out.
fn plan(args: MountArgs) -> anyhow::Result<Plan> {
    let mp = &args.mountpoint;
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
    match std::fs::metadata(&args.store) {
        Ok(m) if !m.is_dir() => anyhow::bail!("store {} is not a directory", args.store.display()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {} // made at open
        Err(e) => anyhow::bail!("cannot use store directory {}: {e}", args.store.display()),
    }
    // Absolute paths: the daemon works from `/`.
    let mountpoint = mp
        .canonicalize()
        .with_context(|| format!("mountpoint {}", mp.display()))?;
    let store = std::path::absolute(&args.store)
        .with_context(|| format!("store {}", args.store.display()))?;

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
    let mut transport = args.transport;
    let mut queue_depth = args
        .queue_depth
        .unwrap_or(zippyfs::fuse::DEFAULT_QUEUE_DEPTH);
    let mut kernel_dirty_ratio = Some(zippyfs::fuse::DEFAULT_KERNEL_DIRTY_RATIO);
    let mut ttl = zippyfs::fuse::ops::TTL;
    let mut writeback_cache = true;
    let mut kernel = Vec::new();
    for o in args
        .options
        .iter()
        .map(|o| o.trim())
        .filter(|o| !o.is_empty())
    {
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
        } else if let Some(v) = o.strip_prefix("transport=") {
            transport = v
                .parse()
                .map_err(|e| anyhow::anyhow!("-o transport: {e}"))?;
        } else if let Some(v) = o.strip_prefix("kernel_dirty_ratio=") {
            kernel_dirty_ratio = match v {
                "default" => None,
                _ => Some(
                    v.parse()
                        .ok()
                        .filter(|r| (1..=100).contains(r))
                        .with_context(|| {
                            format!(
                                "-o kernel_dirty_ratio={v}: a percentage from 1 to 100, or default"
                            )
                        })?,
                ),
            };
        } else if let Some(v) = o.strip_prefix("ttl=") {
            let secs: f64 = v
                .parse()
                .ok()
                .filter(|s: &f64| s.is_finite() && (0.0..=3600.0).contains(s))
                .with_context(|| format!("-o ttl={v}: seconds from 0 to 3600 are needed"))?;
            ttl = Duration::from_secs_f64(secs);
        } else if let Some(v) = o.strip_prefix("writeback_cache=") {
            writeback_cache = match v {
                "on" => true,
                "off" => false,
                _ => anyhow::bail!("-o writeback_cache={v}: on or off"),
            };
        } else if let Some(v) = o.strip_prefix("queue_depth=") {
            queue_depth = v
                .parse()
                .ok()
                .filter(|d| (1..=4096).contains(d))
                .with_context(|| {
                    format!("-o queue_depth={v}: a number from 1 to 4096 is needed")
                })?;
        } else if let Some(v) = o.strip_prefix("write_path=") {
            fs.store.write_path = match v {
                "pwritev" => zippyfs::store::WritePath::Pwritev,
                "uring" => zippyfs::store::WritePath::IoUring,
                _ => anyhow::bail!("-o write_path={v}: pwritev or uring"),
            };
        } else {
            kernel.push(o.to_string());
        }
    }
    Ok(Plan {
        mountpoint,
        store,
        fs,
        mount: MountOpts {
            threads,
            transport,
            queue_depth,
            kernel_dirty_ratio,
            ttl,
            writeback_cache,
            options: kernel,
        },
    })
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

fn mount(args: MountArgs) -> ExitCode {
    let foreground = args.foreground;
    let plan = match plan(args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("zippyfs: {e:#}");
            return ExitCode::from(2);
        }
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
fn serve(plan: &Plan, live: &mut dyn FnMut()) -> anyhow::Result<()> {
    let fs = open_fs(plan)?;
    let fs = Arc::new(fs);
    let control = zippyfs::control::Server::start(&plan.store, &plan.mountpoint, Arc::clone(&fs))
        .with_context(|| {
        format!("cannot make the control socket in {}", plan.store.display())
    })?;
    let flusher = fs.spawn_flusher();
    let r = zippyfs::fuse::mount_and_notify(Arc::clone(&fs), &plan.mountpoint, &plan.mount, live);
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

/// Runs the mount in a daemon and waits until it is live (exit 0) or has
/// failed (its error is printed; exit 2).
///
/// The store is opened in the daemon, after the fork, so its lock belongs
/// to the daemon. The daemon reports over a pipe: `ok`, or `error: ...`.
fn daemonize(plan: &Plan) -> ExitCode {
    let (mut reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("zippyfs: cannot make a pipe: {e}");
            return ExitCode::from(2);
        }
    };
    // SAFETY: no thread has been started yet (logging is not set up and
    // nothing before this point spawns one), so the child is a complete
    // copy of a single-threaded process and may do anything.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        eprintln!("zippyfs: cannot fork: {}", std::io::Error::last_os_error());
        return ExitCode::from(2);
    }
    if pid == 0 {
        drop(reader);
        daemon(plan, writer);
    }
    drop(writer);
    let mut msg = String::new();
    let _ = reader.read_to_string(&mut msg);
    if msg.trim_end() == "ok" {
        return ExitCode::SUCCESS;
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` is a valid out-pointer.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    match msg.trim_end().strip_prefix("error: ") {
        Some(e) => eprintln!("zippyfs: {e}"),
        None => eprintln!(
            "zippyfs: the daemon exited before the mount was live (see {})",
            plan.store.join(LOG_FILE).display()
        ),
    }
    ExitCode::from(2)
}

const LOG_FILE: &str = "zippyfs.log";

/// The daemon: never returns.
fn daemon(plan: &Plan, writer: std::io::PipeWriter) -> ! {
    let mut writer = Some(writer);
    let mut tell = |msg: &str| {
        if let Some(mut w) = writer.take() {
            let _ = w.write_all(msg.as_bytes());
        }
    };
    let code = match detach(plan) {
        Err(e) => {
            tell(&format!("error: {e:#}"));
            2
        }
        Ok(()) => {
            let r = serve(plan, &mut || tell("ok"));
            match r {
                Ok(()) => 0,
                Err(e) => {
                    tracing::error!("{e:#}");
                    tell(&format!("error: {e:#}"));
                    2
                }
            }
        }
    };
    std::process::exit(code)
}

/// A new session without a terminal, standard streams on /dev/null, logs
/// to the store directory's log file, working directory `/`.
fn detach(plan: &Plan) -> anyhow::Result<()> {
    // SAFETY: setsid has no memory-safety preconditions; we are not a
    // process group leader (the parent is), so it succeeds.
    unsafe { libc::setsid() };
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .context("open /dev/null")?;
    for fd in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors, from a descriptor we own.
        if unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) } < 0 {
            return Err(std::io::Error::last_os_error()).context("redirect standard streams");
        }
    }
    drop(null);
    std::env::set_current_dir("/").context("chdir /")?;
    std::fs::create_dir_all(&plan.store)
        .with_context(|| format!("create store directory {}", plan.store.display()))?;
    let path = plan.store.join(LOG_FILE);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("open log file {}", path.display()))?;
    tracing_subscriber::fmt()
        .with_env_filter(env_filter())
        .with_ansi(false)
        .with_writer(std::sync::Mutex::new(log))
        .init();
    std::panic::set_hook(Box::new(|info| tracing::error!("panic: {info}")));
    tracing::info!(pid = std::process::id(), mountpoint = %plan.mountpoint.display(), "zippyfs daemon starting");
    Ok(())
}
