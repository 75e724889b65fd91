//! The commands of the `zippyfs` binary, one function each, and what they
//! share: opening a store, finding the store or mount a path leads to,
//! asking a mount's daemon, and progress lines.
//!
//! - `mount`: the mount options, the checks before a mount, serving it.
//! - `daemon`: running a mount in a daemon.
//! - `history`: `versions`, `log`, `diff`, `restore`.
//! - `admin`: `fsck`, `info`, `retention`, `gc`, `status`, `umount`.
//! - `sync`: `serve` and `join`.

pub mod admin;
pub mod daemon;
pub mod history;
pub mod mount;
pub mod sync;

use std::path::{Path, PathBuf};

use anyhow::Context;
use zippyfs::store::{Store, StoreOptions};

/// Fails unless `dir` holds a store.
fn ensure_store(dir: &Path) -> anyhow::Result<()> {
    if !dir.join(zippyfs::store::STORE_FILE).is_file() {
        anyhow::bail!("{} holds no zippyfs store", dir.display());
    }
    Ok(())
}

fn open(dir: &Path) -> anyhow::Result<Store> {
    ensure_store(dir)?;
    let opts = StoreOptions {
        progress: Some(open_progress),
        ..StoreOptions::default()
    };
    Store::open(dir, opts).with_context(|| format!("cannot open store {}", dir.display()))
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
