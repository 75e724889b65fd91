//! The filesystem core: inodes, directories, files, links, xattrs, over the
//! store. No FUSE in here: every operation takes plain arguments and returns
//! a plain result or an errno-bearing [`FsError`], so it is tested without a
//! mount (`fuse/` adapts it to the kernel).
//!
//! ## State and sharding
//!
//! Committed state lives in the store (keys in `inode.rs`). Changes since the
//! last commit live in memory, in one [`Delta`] per shard; a shard owns the
//! inodes whose number hashes to it: their records, their data blocks (the
//! dirty block cache), their xattrs, and the entries of the directories among
//! them. An operation locks the shards of the inodes it touches, in shard
//! order, and never waits for the disk. Reads look at the shard's delta, then
//! at the delta being committed, then at the newest committed version.
//!
//! ## Commits
//!
//! A commit takes every shard's delta at once (all shard locks, a swap of
//! maps: a consistent cut across shards), writes it into one store
//! transaction and commits it as a version. Commits happen on `fsync` (the
//! caller waits; concurrent callers share one commit), shortly after a file
//! is closed, when dirty data passes the dirty limit, and on a timer
//! (`flush.rs`). If a commit fails, its changes go back into the shards and
//! the error is returned; nothing is lost while the daemon runs.
//!
//! ## Where things are
//!
//! - `mod.rs`: the options, the [`Fs`] and its shards, opening a store.
//! - `delta.rs`: a shard's changes, and reading through the layers.
//! - `namespace.rs`, `rename.rs`: names, entries, links, listings.
//! - `data.rs`: read, write, truncate, fallocate, seek.
//! - `attr.rs`, `acl.rs`: attributes, xattrs, POSIX ACLs, set-ID bits.
//! - `handles.rs`: open files, the kernel's references, when inodes go.
//! - `space.rs`: statfs, the room left, space promised by fallocate.
//! - `commit.rs`, `flush.rs`: the commit pipeline and when it runs.
//! - `history.rs`: `.zippy`, the read-only views of old versions.
//! - `admin.rs`: gc, retention, fsck and status of the live filesystem.
//! - `inode.rs`: the records and keys in the store; `error.rs`: errors.

mod acl;
mod admin;
mod attr;
pub mod blockindex;
mod coherence;
mod commit;
mod data;
mod delta;
pub mod error;
mod flush;
mod handles;
mod history;
pub mod inode;
mod namespace;
pub mod remote;
mod rename;
mod space;

pub use admin::commit_unmounted;
use data::{read_blocks, slice_of};
use delta::{Delta, Found, layered};
pub use history::Origin;
use namespace::{check_name, dot_entries};
pub use space::host_statvfs;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::shard::{IoThreads, shard_of};
use crate::store::{Snapshot, Store, StoreOptions};
pub use commit::{BlocksChanged, Changed};
pub use error::{FsError, FsResult, err};
pub(crate) use history::rfc3339;
pub use history::{
    HISTORY_DIR, VERSIONS_DIR, VERSIONS_FILE, is_history, live_ino, parse_time, versions_json,
};
use inode::*;
pub use inode::{Inode, Kind, NAME_MAX, ROOT, Time};

/// Data blocks up to this size are kept in the entry itself, not an extent:
/// with its key and hash the entry still fits a leaf (the store takes entries
/// up to a quarter page inline), so a small file costs no page of its own.
const INLINE_BLOCK: usize = 900;
const XATTR_NAME_MAX: usize = 255;
/// The largest file: offsets are signed 64-bit to every program (`off_t`).
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Block sizes a filesystem may be made with.
pub const MIN_BLOCK: u32 = 4096;
pub const MAX_BLOCK: u32 = 1 << 20;
const XATTR_SIZE_MAX: usize = 64 * 1024;

#[derive(Clone, Debug)]
pub struct FsOptions {
    /// Shards of state (and of the dirty block cache); one per core by default.
    pub shards: usize,
    /// Bytes per data block (a power of two from 4 KiB to 1 MiB).
    pub block_size: u32,
    /// The most dirty data held in memory: a commit starts in the background
    /// at half of it, and a write that would pass it waits for a commit.
    pub dirty_limit: u64,
    /// Changes are committed at least this often.
    pub flush_interval: Duration,
    /// Hash and write each shard's dirty blocks on its own pinned thread
    /// (else on the committing thread).
    pub io_threads: bool,
    /// The name of the read-only directory of old versions in the root.
    pub history_name: String,
    pub store: StoreOptions,
}

impl Default for FsOptions {
    fn default() -> Self {
        FsOptions {
            shards: std::thread::available_parallelism().map_or(1, |n| n.get()),
            block_size: 64 * 1024,
            dirty_limit: 256 << 20,
            flush_interval: Duration::from_secs(5),
            io_threads: true,
            history_name: ".zippy".into(),
            store: StoreOptions::default(),
        }
    }
}

/// Who is asking: the credentials of the calling process.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    pub uid: u32,
    pub gid: u32,
    /// The caller's umask, for the permission bits of what it creates:
    /// applied unless the directory has a default ACL, which then decides.
    pub umask: u32,
}

/// A directory entry as `readdir` returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: u64,
    pub kind: Kind,
}

/// Attribute changes for `setattr`; `None` leaves a field alone.
#[derive(Clone, Copy, Debug, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenameMode {
    Replace,
    NoReplace,
    Exchange,
}

/// What `statfs` reports.
#[derive(Clone, Copy, Debug)]
pub struct StatFs {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub namelen: u32,
}

/// A directory's changed entries: name → `None` (removed) or (inode, kind).
type DirDelta = BTreeMap<Vec<u8>, Option<(u64, Kind)>>;

#[derive(Default)]
struct Shard {
    delta: Delta,
    committing: Option<Arc<Delta>>,
    /// Open handles per inode.
    open: HashMap<u64, u32>,
    /// Handles open for writing → their inode (released through
    /// `release_handle`).
    writers: HashMap<u64, u64>,
    /// The kernel's references per inode (FUSE lookup counts: one per
    /// entry it was sent, dropped by FORGET). An inode without a name
    /// lives on while the kernel still holds it (an open file, a process's
    /// working directory), as on a local filesystem.
    refs: HashMap<u64, u64>,
    /// Inodes whose last name went while something still held them: the
    /// only ones a FORGET or a last close may delete (so neither looks an
    /// inode up otherwise).
    nameless: std::collections::HashSet<u64>,
    /// Blocks promised by `fallocate` and not yet filled, per file.
    promises: HashMap<u64, space::Blocks>,
    /// Files a change from elsewhere is about to touch → whether the
    /// kernel may have read them again since (see `coherence.rs`).
    fence: HashMap<u64, bool>,
    /// Open files the kernel may hold an old size or times of, after a
    /// change from elsewhere: let go of at their last close.
    stale: std::collections::HashSet<u64>,
}

impl Shard {
    /// Whether anything but a name still holds `ino`.
    fn held(&self, ino: u64) -> bool {
        self.open.get(&ino).is_some_and(|&n| n > 0) || self.refs.get(&ino).is_some_and(|&n| n > 0)
    }
}

pub struct Fs {
    store: Arc<Store>,
    /// Each shard's I/O thread, when running as a mount.
    io: Option<IoThreads>,
    shards: Box<[Mutex<Shard>]>,
    next_ino: AtomicU64,
    next_fh: AtomicU64,
    fs_id: u128,
    block_size: u64,
    opts: FsOptions,
    dirty_bytes: AtomicU64,
    /// Bytes promised by `fallocate` (every shard's `promises`).
    promised: AtomicU64,
    /// What the store could take, as last measured (`u64::MAX`: unknown);
    /// see [`Fs::refresh_room`].
    room: AtomicU64,
    /// A ceiling on the room measured, for tests of a disk that is full.
    #[cfg(test)]
    room_cap: AtomicU64,
    flush: flush::Flusher,
    dirs: Mutex<HashMap<u64, Arc<Vec<DirEntry>>>>,
    /// Generated files' contents, taken once per open handle so that a
    /// reader sees one consistent text.
    generated: Mutex<HashMap<u64, Arc<Vec<u8>>>>,
    /// Completed `gc` runs, shown in `daemon.json` so a command can wait for its own.
    gc_runs: AtomicU64,
    /// The last `fsck` of the live store: (runs so far, problems, report).
    fsck: Mutex<admin::LastFsck>,
    /// (pages checked, pages in the store) of the `fsck` under way.
    fsck_progress: (AtomicU64, AtomicU64),
    /// The store directory, for a filesystem opened with [`Fs::mount`].
    store_dir: Option<std::path::PathBuf>,
    /// What serves this filesystem to the kernel, once the mount is live.
    kernel: std::sync::OnceLock<Arc<dyn KernelSide>>,
    /// Files closed since they changed from elsewhere, for the kernel to
    /// let go of; true once asked (see [`Fs::prune_released`]).
    prune_due: Mutex<Vec<(u64, bool)>>,
    /// Told after every commit that made a version, with what it changed
    /// (sync's push).
    #[allow(clippy::type_complexity)]
    commit_hook: std::sync::OnceLock<Box<dyn Fn(&Changed) + Send + Sync>>,
    /// Sync's state, for `daemon.json` (when the store syncs).
    #[allow(clippy::type_complexity)]
    sync_status: std::sync::OnceLock<Box<dyn Fn() -> serde_json::Value + Send + Sync>>,
    /// Sync's own check, for a live `fsck`: its report and problems.
    #[allow(clippy::type_complexity)]
    sync_fsck: std::sync::OnceLock<Box<dyn Fn() -> (String, usize) + Send + Sync>>,
    /// Why the in-memory state can no longer be trusted to be what a
    /// commit would make durable (a commit panicked, the store is
    /// poisoned); set once, never cleared. From then on every change and
    /// every commit fails with EIO and reads go on: see [`Fs::fail`].
    failed: std::sync::OnceLock<String>,
    /// Letting versions go for space is logged at most once a minute.
    space_log: Mutex<commit::Throttle>,
    /// The next inode number as of the last commit: inodes numbered from
    /// here on were made since.
    committed_next_ino: AtomicU64,
    /// Where the changes of the next commit come from (sync sets it while
    /// it applies a change-set, then back to this mount with the sequence
    /// applied); kept with each version.
    origin: Mutex<history::Origin>,
    /// A change from elsewhere whose commit failed (a full disk), and its
    /// cause: its changes were put back, and the commit that takes them
    /// records this origin and cause (and only then is its sequence
    /// applied here).
    unapplied: Mutex<Option<(history::Origin, String)>>,
    /// The final commit has begun: the daemon is on its way out.
    unmounting: std::sync::atomic::AtomicBool,
    /// Commits keep the block index (see `blockindex`).
    block_index: std::sync::atomic::AtomicBool,
    /// What the block index's log adds, for lookups.
    index_log: Mutex<blockindex::Pending>,
    /// A commit step at which tests make the commit panic.
    #[cfg(test)]
    panic_at: Mutex<Option<&'static str>>,
    /// Called at each commit step, for tests that hold a commit there.
    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    on_step: Mutex<Option<Arc<dyn Fn(&'static str) + Send + Sync>>>,
}

/// What the kernel side (the FUSE transport) reports of itself in
/// `daemon.json` and `zippyfs status`: the core knows nothing of
/// transports, only that something serves it and has figures to show.
pub trait KernelSide: Send + Sync {
    /// Fields added to the status object.
    fn status(&self) -> serde_json::Map<String, serde_json::Value>;
    /// Drops what the kernel caches of these inodes' data and attributes
    /// and of these (directory, name) entries: they changed from
    /// elsewhere (sync). Called from a thread that serves no requests.
    fn invalidate(&self, _inodes: &[u64], _entries: &[(u64, Vec<u8>)]) {}
    /// The regular file `ino` is now `size` bytes long, the last of them
    /// `last`: a kernel that keeps its own size of a cached file
    /// (writeback cache) grows it to that.
    fn grow(&self, _ino: u64, _size: u64, _last: u8) {}
    /// The kernel lets go of these inodes if nothing holds them, so that
    /// their next lookup takes size and times afresh.
    fn prune(&self, _inodes: &[u64]) {}
}

impl Fs {
    /// Opens (creating if needed) the filesystem in the store in `dir`.
    /// The retention policy in `<dir>/retention.conf`, if there is one,
    /// replaces `opts.store.retention`.
    pub fn mount(dir: &Path, mut opts: FsOptions) -> FsResult<Fs> {
        if let Some(policy) = load_retention(dir)? {
            opts.store.retention = policy;
        }
        let store = Store::open(dir, opts.store.clone())?;
        let mut fs = Fs::with_store(store, opts)?;
        fs.store_dir = Some(dir.to_path_buf());
        fs.refresh_room();
        Ok(fs)
    }

    pub fn with_store(store: Store, opts: FsOptions) -> FsResult<Fs> {
        let bs = opts.block_size;
        if !bs.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) {
            return err(libc::EINVAL);
        }
        let n = opts.shards.max(1);
        let io = if opts.io_threads {
            Some(IoThreads::spawn(n).map_err(|e| {
                tracing::error!("cannot start the I/O threads: {e}");
                FsError::Errno(libc::EIO)
            })?)
        } else {
            None
        };
        let mut fs = Fs {
            store: Arc::new(store),
            io,
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            next_ino: AtomicU64::new(ROOT + 1),
            next_fh: AtomicU64::new(1),
            fs_id: 0,
            block_size: bs as u64,
            opts,
            dirty_bytes: AtomicU64::new(0),
            promised: AtomicU64::new(0),
            room: AtomicU64::new(u64::MAX),
            #[cfg(test)]
            room_cap: AtomicU64::new(u64::MAX),
            flush: flush::Flusher::default(),
            dirs: Mutex::new(HashMap::new()),
            generated: Mutex::new(HashMap::new()),
            gc_runs: AtomicU64::new(0),
            fsck: Mutex::new(admin::LastFsck::default()),
            fsck_progress: (AtomicU64::new(0), AtomicU64::new(0)),
            store_dir: None,
            kernel: std::sync::OnceLock::new(),
            prune_due: Mutex::new(Vec::new()),
            commit_hook: std::sync::OnceLock::new(),
            sync_status: std::sync::OnceLock::new(),
            sync_fsck: std::sync::OnceLock::new(),
            failed: std::sync::OnceLock::new(),
            unmounting: std::sync::atomic::AtomicBool::new(false),
            block_index: std::sync::atomic::AtomicBool::new(false),
            index_log: Mutex::new(blockindex::Pending::default()),
            committed_next_ino: AtomicU64::new(ROOT + 1),
            origin: Mutex::new(history::Origin::default()),
            unapplied: Mutex::new(None),
            space_log: Mutex::new(commit::Throttle::default()),
            #[cfg(test)]
            panic_at: Mutex::new(None),
            #[cfg(test)]
            on_step: Mutex::new(None),
        };
        fs.load_meta()?;
        Ok(fs)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, to hold a version open beyond a borrow of the
    /// filesystem (`Store::pin_snapshot`).
    pub fn shared_store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn block_size(&self) -> u64 {
        self.block_size
    }

    /// Reads the filesystem record, or makes a new filesystem, and deletes
    /// orphans a crash left behind.
    fn load_meta(&mut self) -> FsResult<()> {
        let snap = self.store.latest()?;
        if let Some(m) = snap.get(META_KEY)? {
            let (next, bs, fs_id) = decode_meta(m)?;
            self.fs_id = fs_id;
            self.next_ino.store(next, Ordering::Relaxed);
            self.committed_next_ino.store(next, Ordering::Relaxed);
            // This mount's own changes build on what the store last applied.
            *self.origin.lock() = history::Origin::carried(&self.store);
            if bs as u64 != self.block_size {
                tracing::info!(
                    block_size = bs,
                    "using the block size the filesystem was made with"
                );
                self.block_size = bs as u64;
            }
            // A store that has a block index keeps it, whoever mounts it.
            // After the origin: a rebuild's versions carry it on, so the
            // newest version still says how far sync had applied.
            if let Some(marker) = snap.get(blockindex::MARKER)? {
                self.open_block_index(marker);
            }
            let orphans: Vec<u64> = snap
                .range(&b"O"[..]..&b"P"[..])?
                .filter_map(|r| r.ok())
                .filter_map(|(k, _)| k.get(1..9).and_then(|b| b.try_into().ok()))
                .map(u64::from_be_bytes)
                .collect();
            drop(snap);
            if !orphans.is_empty() {
                tracing::info!(
                    count = orphans.len(),
                    "deleting files unlinked while open before a crash"
                );
                for ino in orphans {
                    let mut sh = self.shard(ino);
                    self.forget_inode(&mut sh, ino);
                }
            }
            return Ok(());
        }
        drop(snap);
        // A new filesystem: its identity and the root directory.
        let now = Time::now();
        self.fs_id = u128::from_le_bytes(
            blake3::hash(format!("{now:?} {}", std::process::id()).as_bytes()).as_bytes()[..16]
                .try_into()
                .unwrap_or_default(),
        );
        let root = Inode {
            ino: ROOT,
            kind: Kind::Dir,
            perm: 0o755,
            nlink: 2,
            uid: 0,
            gid: 0,
            rdev: 0,
            flags: 0,
            size: 0,
            parent: ROOT,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            file_id: self.file_id(ROOT),
        };
        self.shard(ROOT).delta.inodes.insert(ROOT, Some(root));
        self.commit("mkfs")?;
        Ok(())
    }

    /// The id of a file made here: the filesystem's id and the inode
    /// number, so that sync finds the inode of an id without an index
    /// (only files made by other peers are in the `F` index).
    fn file_id(&self, ino: u64) -> u128 {
        ((self.fs_id as u64 as u128) << 64) | ino as u128
    }

    fn shard(&self, ino: u64) -> MutexGuard<'_, Shard> {
        self.shards[shard_of(ino, self.shards.len())].lock()
    }

    /// Locks the shards of these inodes, in shard order, each once.
    fn lock_many(&self, inos: &[u64]) -> Locked<'_> {
        let mut idx: Vec<usize> = inos
            .iter()
            .map(|&i| shard_of(i, self.shards.len()))
            .collect();
        idx.sort_unstable();
        idx.dedup();
        Locked {
            n: self.shards.len(),
            guards: idx
                .into_iter()
                .map(|i| (i, self.shards[i].lock()))
                .collect(),
        }
    }

    /// Locks every shard, in shard order.
    fn lock_all(&self) -> Locked<'_> {
        Locked {
            n: self.shards.len(),
            guards: self.shards.iter().map(|s| s.lock()).enumerate().collect(),
        }
    }

    /// Whether `ino` may be changed: not in the read-only history, and not
    /// after a failure (see [`Fs::fail`]).
    pub(super) fn writable(&self, ino: u64) -> FsResult<()> {
        if is_history(ino) {
            return err(libc::EROFS);
        }
        if self.failed.get().is_some() {
            return err(libc::EIO);
        }
        Ok(())
    }
}

/// A store directory's retention file, if any; a malformed one is logged
/// and refused (EINVAL).
fn load_retention(dir: &Path) -> FsResult<Option<crate::store::Retention>> {
    crate::store::Retention::load(dir).map_err(|e| {
        tracing::error!("{e}");
        FsError::Errno(libc::EINVAL)
    })
}

/// The filesystem record (key `M`): next inode number (u64), block size
/// (u32), filesystem id (u128), little-endian, 28 bytes. Every field is
/// checked here, once, so nothing later divides by a zero block size or
/// hands out an inode number the history views cannot encode.
fn decode_meta(m: &[u8]) -> FsResult<(u64, u32, u128)> {
    let bad = |why: String| Err(FsError::Corrupt(format!("the filesystem record: {why}")));
    let (Some(next), Some(bs), Some(id)) = (m.get(0..8), m.get(8..12), m.get(12..28)) else {
        return bad(format!("{} bytes where 28 were expected", m.len()));
    };
    let next = u64::from_le_bytes(next.try_into().unwrap_or_default());
    let bs = u32::from_le_bytes(bs.try_into().unwrap_or_default());
    let id = u128::from_le_bytes(id.try_into().unwrap_or_default());
    if !bs.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&bs) {
        return bad(format!(
            "block size {bs} is not a power of two from {MIN_BLOCK} to {MAX_BLOCK}"
        ));
    }
    if next <= ROOT || next > history::MAX_INO {
        return bad(format!(
            "next inode number {next} is outside {}..={}",
            ROOT + 1,
            history::MAX_INO
        ));
    }
    Ok((next, bs, id))
}

/// Several shards locked at once, in shard order.
struct Locked<'a> {
    n: usize,
    guards: Vec<(usize, MutexGuard<'a, Shard>)>,
}

impl<'a> Locked<'a> {
    fn get(&self, ino: u64) -> &Shard {
        self.try_get(ino)
            .expect("shard of an inode in the locked set")
    }

    fn try_get(&self, ino: u64) -> Option<&Shard> {
        let s = shard_of(ino, self.n);
        self.guards.iter().find(|(i, _)| *i == s).map(|(_, g)| &**g)
    }

    fn get_mut(&mut self, ino: u64) -> &mut Shard {
        let s = shard_of(ino, self.n);
        self.guards
            .iter_mut()
            .find(|(i, _)| *i == s)
            .map(|(_, g)| &mut **g)
            .expect("shard of an inode in the locked set")
    }
}

#[cfg(test)]
mod tests;
