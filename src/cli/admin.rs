//! The administration commands: `fsck`, `info`, `retention`, `gc`,
//! `status` and `umount`, on an unmounted store (opened here) or through
//! the daemon of a live mount (asked over its control socket), and how
//! their answers and progress are shown.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use zippyfs::store::{Store, StoreOptions};

use super::{
    Located, ask_daemon, end_progress, ensure_store, locate, mount_store, open, show_progress,
};

#[derive(clap::Args)]
pub struct FsckArgs {
    /// The store directory, or a path inside a mount.
    store: PathBuf,
    #[arg(long, default_value = ".zippy", value_name = "NAME")]
    history_name: String,
    /// Have the next mount rebuild the block index (a store that syncs
    /// keeps one) when this check finds it wrong.
    #[arg(long)]
    rebuild_index: bool,
}

#[derive(clap::Args)]
pub struct InfoArgs {
    /// The store directory.
    store: PathBuf,
}

#[derive(clap::Args)]
pub struct RetentionArgs {
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
}

#[derive(clap::Args)]
pub struct GcArgs {
    path: PathBuf,
    #[arg(long, default_value = ".zippy", value_name = "NAME")]
    history_name: String,
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// A mountpoint, a path inside a mount, or a store directory.
    path: PathBuf,
    /// Print the daemon's answer as JSON (the fields of .zippy/daemon.json).
    #[arg(long)]
    json: bool,
    #[arg(long, default_value = ".zippy", value_name = "NAME")]
    history_name: String,
}

#[derive(clap::Args)]
pub struct UmountArgs {
    mountpoint: PathBuf,
    #[arg(long, default_value = ".zippy", value_name = "NAME")]
    history_name: String,
}

/// `zippyfs fsck`.
pub fn fsck(args: FsckArgs) -> anyhow::Result<ExitCode> {
    let store = match locate(&args.store, &args.history_name)? {
        Located::Store(dir) => dir,
        Located::Mount(file) => {
            return Ok(print_fsck(&ask_live(&file, "fsck", fsck_progress)?));
        }
    };
    if let Some(answer) = ask_daemon(&store, "fsck", fsck_progress)? {
        return Ok(print_fsck(&answer));
    }
    let s = open(&store)?;
    let report = s.fsck_with_progress(&|checked, total| show_progress("fsck", checked, total))?;
    end_progress();
    print!("{report}");
    if !report.is_clean() {
        return Ok(ExitCode::from(1));
    }
    // The pages are sound: now what the filesystem keeps in them for sync.
    let index = zippyfs::fs::blockindex::check(&s.latest()?)?;
    let mut failed = false;
    let tree = match zippyfs::sync::conf::fsck_tree_store(&store) {
        Ok(None) => None,
        Ok(Some(check)) => Some(zippyfs::sync::conf::fsck_text(Ok(check))),
        Err(e) => Some(zippyfs::sync::conf::fsck_text(Err(e))),
    };
    if let Some((text, problems)) = tree {
        print!("{text}");
        failed = problems > 0;
    }
    match index {
        c if !c.kept => {}
        c if !c.exact => {
            println!("block index: behind the newest version (a crash); the next mount rebuilds it")
        }
        c => {
            println!(
                "block index: {} blocks, {} keys, {} wrong",
                c.blocks, c.keys, c.wrong
            );
            for p in &c.problems {
                println!("  {p}");
            }
            if c.wrong > 0 && args.rebuild_index {
                zippyfs::fs::commit_unmounted(&s, "fsck", zippyfs::fs::blockindex::behind)?;
                println!("  the next mount rebuilds it");
            } else if c.wrong > 0 {
                println!(
                    "  (no wrong data comes of it: a block is checked by its hash when read, \
                     but sync may fetch blocks this store has; `--rebuild-index` mends it)"
                );
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `zippyfs info`.
pub fn info(args: InfoArgs) -> anyhow::Result<ExitCode> {
    let s = open(&args.store)?;
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

/// `zippyfs retention`.
pub fn retention(args: RetentionArgs) -> anyhow::Result<ExitCode> {
    let store = &args.store;
    ensure_store(store)?;
    // The policy is kept in the store: a live daemon's answer, or
    // the store itself (retention.conf for a store that never had
    // one set).
    let live = ask_daemon(store, "status", |_, _| {})?;
    let mut policy = match &live {
        Some(a) => {
            zippyfs::store::Retention::parse(a["status"]["retention"].as_str().unwrap_or(""))
                .map_err(anyhow::Error::msg)?
        }
        None => {
            let s = open_with_policy(store)?;
            s.retention()
        }
    };
    if apply_retention_flags(&mut policy, &args)? {
        set_retention(store, live.is_some(), &policy)?;
    }
    print!("{}", policy.to_text());
    Ok(ExitCode::SUCCESS)
}

/// Sets in `policy` what the flags of `zippyfs retention` give; whether
/// any did.
fn apply_retention_flags(
    policy: &mut zippyfs::store::Retention,
    args: &RetentionArgs,
) -> anyhow::Result<bool> {
    let mut changed = false;
    let mut set = |field: &mut usize, v: Option<usize>| {
        if let Some(v) = v {
            *field = v;
            changed = true;
        }
    };
    set(&mut policy.keep_last, args.keep_last);
    set(&mut policy.hourly, args.hourly);
    set(&mut policy.daily, args.daily);
    set(&mut policy.weekly, args.weekly);
    if let Some(m) = &args.max_size {
        policy.max_bytes = zippyfs::store::retention::parse_size(m)
            .map_err(|e| anyhow::anyhow!("--max-size: {e}"))?;
        changed = true;
    }
    if let Some(d) = &args.keep_within {
        policy.keep_within = zippyfs::store::retention::parse_duration(d)
            .with_context(|| format!("--keep-within {d}: a duration like 90s, 30m, 12h, 7d"))?;
        changed = true;
    }
    Ok(changed)
}

/// Keeps `policy` in the store in `store`: through its daemon when `live`,
/// else by a commit of its own.
fn set_retention(
    store: &Path,
    live: bool,
    policy: &zippyfs::store::Retention,
) -> anyhow::Result<()> {
    let text = policy.to_text();
    if live {
        let request = serde_json::json!({"op": "retention", "policy": text});
        zippyfs::control::send_request(store, request)
            .map_err(anyhow::Error::msg)?
            .context("the daemon went away")?
            .answer(|_, _| {})
            .map_err(anyhow::Error::msg)?;
    } else {
        let s = open_with_policy(store)?;
        zippyfs::fs::commit_unmounted(&s, "retention", |t| {
            t.set_retention(policy.clone());
            Ok(())
        })?;
    }
    Ok(())
}

/// `zippyfs gc`.
pub fn gc(args: GcArgs) -> anyhow::Result<ExitCode> {
    let store = match locate(&args.path, &args.history_name)? {
        Located::Store(dir) => dir,
        Located::Mount(file) => return Ok(print_gc(&ask_live(&file, "gc", |_, _| {})?)),
    };
    if let Some(answer) = ask_daemon(&store, "gc", |_, _| {})? {
        return Ok(print_gc(&answer));
    }
    gc_unmounted(&store)
}

/// `zippyfs gc` of a store no daemon serves.
fn gc_unmounted(store: &Path) -> anyhow::Result<ExitCode> {
    let s = open_with_policy(store)?;
    let before = (s.stats(), s.versions().len());
    let room = || zippyfs::fs::commit_unmounted(&s, "gc", |_| Ok(()));
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
    let after = open(store)?.stats();
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

/// `zippyfs status`.
pub fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let answer = match locate(&args.path, &args.history_name)? {
        Located::Mount(file) => ask_live(&file, "status", |_, _| {})?,
        Located::Store(dir) => match ask_daemon(&dir, "status", |_, _| {})? {
            Some(a) => a,
            None => return status_unmounted(&dir, args.json),
        },
    };
    let st = &answer["status"];
    if args.json {
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
    let sync = &st["sync"];
    if sync.is_object() {
        let state = if sync["connected"] == true {
            // "connected", or what it waits for while connected.
            sync["why"].as_str().unwrap_or("connected").to_string()
        } else {
            format!("not connected: {}", sync["why"].as_str().unwrap_or(""))
        };
        println!(
            "sync:       {state}; server {}, as peer {}",
            sync["server"].as_str().unwrap_or(""),
            sync["peer"].as_str().unwrap_or("")
        );
        println!(
            "            applied up to sequence {}, last push acknowledged as {}{}; \
             {} conflict copies made; {} bytes in, {} out",
            sync["applied"],
            sync["pushed"],
            if sync["in_flight"] == true {
                format!(", a push of {} changes in flight", sync["in_flight_ops"])
            } else {
                String::new()
            },
            sync["conflicts"],
            sync["bytes_in"],
            sync["bytes_out"]
        );
        let unchecked = if sync["queued_unchecked"] == true {
            "; what an earlier mount left unpushed is not checked yet"
        } else {
            ""
        };
        println!(
            "queued:     {} versions ({} bytes written) made here not yet on the server{unchecked}",
            sync["queued_versions"], sync["queued_bytes"]
        );
    }
    Ok(if st["failed"].is_null() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `zippyfs status` of a store no daemon serves: what its files say.
fn status_unmounted(dir: &Path, json: bool) -> anyhow::Result<ExitCode> {
    // The store's own record of what it applied: the saved sync state
    // and its journal are read up to it, as the next mount would. Read
    // without opening the store, which would write to it.
    let stored = if zippyfs::sync::conf::SyncConf::load(dir)?.is_some() {
        match Store::peek_versions(dir, &StoreOptions::default()) {
            Ok(v) => zippyfs::fs::Origin::carried_in(&v).seq,
            Err(e) => {
                eprintln!(
                    "zippyfs: the store's versions could not be read ({e}); \
                     the sequence shown is the saved sync state's"
                );
                0
            }
        }
    } else {
        0
    };
    let sync = zippyfs::sync::conf::offline_status(dir, stored)?;
    let st = serde_json::json!({
        "store": dir.display().to_string(),
        "state": "not mounted",
        "sync": sync.as_ref().map(|s| s.json()),
    });
    if json {
        println!("{st}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("store:      {}", dir.display());
    println!("state:      not mounted");
    if let Some(s) = sync {
        println!(
            "sync:       not connected: not mounted; server {}; applied up to sequence {}",
            s.server, s.applied
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `zippyfs umount`: asks the daemon to tell when it exits, unmounts, and
/// waits for that answer: the outcome of the final commit.
pub fn umount(args: UmountArgs) -> anyhow::Result<ExitCode> {
    let UmountArgs {
        mountpoint,
        history_name,
    } = args;
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
