//! The history commands: `versions`, `log`, `diff` and `restore`, how they
//! find the history of the live mount a path is in, and the private mount
//! through which `log`, `diff` and `restore` reach an unmounted store
//! (`--store`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;

use super::{Located, ask_daemon, ensure_store, locate, open};

#[derive(clap::Args)]
pub struct VersionsArgs {
    path: PathBuf,
    /// Print JSON: an array of {id, time, time_ns, cause, changes, bytes, origin, synced}.
    #[arg(long)]
    json: bool,
    /// The mount's history directory name (its -o history_name).
    #[arg(long, default_value = ".zippy", value_name = "NAME")]
    history_name: String,
}

#[derive(clap::Args)]
pub struct LogArgs {
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
}

#[derive(clap::Args)]
pub struct DiffArgs {
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
}

#[derive(clap::Args)]
pub struct RestoreArgs {
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
}

/// `zippyfs versions`.
pub fn versions(args: VersionsArgs) -> anyhow::Result<ExitCode> {
    let VersionsArgs {
        path,
        json,
        history_name,
    } = args;
    let text = match locate(&path, &history_name)? {
        Located::Store(dir) => zippyfs::fs::versions_json(&open(&dir)?),
        Located::Mount(file) => {
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?
        }
    };
    if json {
        use std::io::Write;
        std::io::stdout().write_all(&text)?;
    } else {
        let list: Vec<serde_json::Value> =
            serde_json::from_slice(&text).context("the versions list is not valid JSON")?;
        println!(
            "{:>10}  {:<30}  {:>9}  {:>14}  {:>7}  {:>10}  cause",
            "id", "time (UTC)", "changes", "bytes", "from", "synced"
        );
        for v in list {
            let from = match v["origin"].as_u64().unwrap_or(0) {
                0 => "here".to_string(),
                p if p == u64::from(zippyfs::fs::Origin::SEVERAL) => "several".to_string(),
                p => format!("peer {p}"),
            };
            println!(
                "{:>10}  {:<30}  {:>9}  {:>14}  {:>7}  {:>10}  {}",
                v["id"].as_u64().unwrap_or(0),
                v["time"].as_str().unwrap_or(""),
                v["changes"].as_u64().unwrap_or(0),
                v["bytes"].as_u64().unwrap_or(0),
                from,
                v["synced"].as_u64().unwrap_or(0),
                v["cause"].as_str().unwrap_or("")
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `zippyfs log`.
pub fn log(args: LogArgs) -> anyhow::Result<ExitCode> {
    let LogArgs {
        path,
        json,
        history_name,
        store,
    } = args;
    if let Some(store) = store {
        return on_private_mount(&store, false, |mnt| {
            log(LogArgs {
                path: in_mount(mnt, &path),
                json,
                history_name,
                store: None,
            })
        });
    }
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

/// `zippyfs diff`.
pub fn diff(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let DiffArgs {
        v1,
        v2,
        path,
        json,
        history_name,
        store,
    } = args;
    if let Some(store) = store {
        return on_private_mount(&store, false, |mnt| {
            let path = path.unwrap_or_default();
            diff(DiffArgs {
                v1,
                v2,
                path: Some(in_mount(mnt, &path)),
                json,
                history_name,
                store: None,
            })
        });
    }
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

/// `zippyfs restore`.
pub fn restore(args: RestoreArgs) -> anyhow::Result<ExitCode> {
    let RestoreArgs {
        path,
        at,
        to,
        history_name,
        store,
    } = args;
    if let Some(store) = store {
        return on_private_mount(&store, true, |mnt| {
            restore(RestoreArgs {
                path: in_mount(mnt, &path),
                at,
                to: to.as_deref().map(|p| in_mount(mnt, p)),
                history_name,
                store: None,
            })
        });
    }
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
    ensure_store(store)?;
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
