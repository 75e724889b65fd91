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

mod acl;
mod commit;
pub mod error;
mod flush;
mod history;
pub mod inode;
mod promise;

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

use crate::shard::{IoThreads, shard_of};
use crate::store::{Snapshot, Store, StoreOptions};
pub use error::{FsError, FsResult, err};
pub use history::{
    HISTORY_DIR, VERSIONS_DIR, VERSIONS_FILE, is_history, parse_time, versions_json,
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

/// One shard's changes since the last commit.
#[derive(Clone, Default, Debug)]
struct Delta {
    /// `None`: the inode is gone, with every key it had.
    inodes: HashMap<u64, Option<Inode>>,
    /// Per directory: name → `None` (removed) or the entry.
    dirents: HashMap<u64, DirDelta>,
    /// `None`: a hole where committed data was.
    blocks: HashMap<(u64, u64), Option<Vec<u8>>>,
    /// Committed blocks from this index on are gone (the file shrank).
    truncs: HashMap<u64, u64>,
    xattrs: HashMap<(u64, Vec<u8>), Option<Vec<u8>>>,
    symlinks: HashMap<u64, Vec<u8>>,
    /// true: unlinked while open (an orphan); false: no longer an orphan.
    orphans: HashMap<u64, bool>,
    /// Dirty data bytes held.
    bytes: u64,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.inodes.is_empty()
            && self.dirents.is_empty()
            && self.blocks.is_empty()
            && self.truncs.is_empty()
            && self.xattrs.is_empty()
            && self.symlinks.is_empty()
            && self.orphans.is_empty()
    }

    /// Folds a newer delta into this older one.
    fn absorb(&mut self, newer: Delta) {
        for (ino, i) in newer.inodes {
            if i.is_none() {
                self.drop_inode_data(ino);
            }
            self.inodes.insert(ino, i);
        }
        for (dir, ents) in newer.dirents {
            self.dirents.entry(dir).or_default().extend(ents);
        }
        for (ino, t) in newer.truncs {
            self.blocks.retain(|&(i, b), _| i != ino || b < t);
            let e = self.truncs.entry(ino).or_insert(t);
            *e = (*e).min(t);
        }
        self.blocks.extend(newer.blocks);
        self.xattrs.extend(newer.xattrs);
        self.symlinks.extend(newer.symlinks);
        self.orphans.extend(newer.orphans);
        self.bytes += newer.bytes;
    }

    /// Whether committing this delta adds nothing that takes space: no
    /// data, no xattr values, no symlink targets, no inode numbered from
    /// `first_new` on (made since the last commit). Deletes, renames and
    /// attribute changes qualify.
    fn only_frees(&self, first_new: u64) -> bool {
        self.blocks.values().all(Option::is_none)
            && self.xattrs.values().all(Option::is_none)
            && self.symlinks.is_empty()
            && !self
                .inodes
                .iter()
                .any(|(&ino, i)| i.is_some() && ino >= first_new)
    }

    fn drop_inode_data(&mut self, ino: u64) {
        self.blocks.retain(|&(i, _), _| i != ino);
        self.truncs.remove(&ino);
        self.xattrs.retain(|(i, _), _| *i != ino);
        self.symlinks.remove(&ino);
    }
}

#[derive(Default)]
struct Shard {
    delta: Delta,
    committing: Option<Arc<Delta>>,
    /// Open handles per inode.
    open: HashMap<u64, u32>,
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
    promises: HashMap<u64, promise::Blocks>,
}

impl Shard {
    /// Whether anything but a name still holds `ino`.
    fn held(&self, ino: u64) -> bool {
        self.open.get(&ino).is_some_and(|&n| n > 0) || self.refs.get(&ino).is_some_and(|&n| n > 0)
    }
}

/// What a lookup in the layers of state found.
enum Found<T> {
    Yes(T),
    Gone,
    Unknown,
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
    fsck: Mutex<(u64, usize, String)>,
    /// (pages checked, pages in the store) of the `fsck` under way.
    fsck_progress: (AtomicU64, AtomicU64),
    statfs_path: Option<std::path::PathBuf>,
    served: Served,
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
    /// The final commit has begun: the daemon is on its way out.
    unmounting: std::sync::atomic::AtomicBool,
    /// A commit step at which tests make the commit panic.
    #[cfg(test)]
    panic_at: Mutex<Option<&'static str>>,
    /// Called at each commit step, for tests that hold a commit there.
    #[cfg(test)]
    #[allow(clippy::type_complexity)]
    on_step: Mutex<Option<Arc<dyn Fn(&'static str) + Send + Sync>>>,
}

/// Requests the kernel side served, by transport, shown in `daemon.json`
/// (a test compares them with the operations it made, to prove which way
/// requests came).
#[derive(Debug)]
pub struct Served {
    /// `"uring"` or `"classic"`, once the mount is live.
    pub transport: Mutex<&'static str>,
    /// Requests that came through io_uring queues.
    pub ring: AtomicU64,
    /// Requests read from `/dev/fuse`.
    pub dev: AtomicU64,
    /// Requests by opcode (both transports; opcodes past the end are not
    /// counted), to see what a workload costs in round trips.
    pub by_op: [AtomicU64; 64],
}

impl Default for Served {
    fn default() -> Served {
        Served {
            transport: Mutex::new(""),
            ring: AtomicU64::new(0),
            dev: AtomicU64::new(0),
            by_op: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

impl Served {
    pub fn count_op(&self, opcode: u32) {
        if let Some(c) = self.by_op.get(opcode as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `{"opcode": count, ...}` of the opcodes seen, as JSON.
    pub fn by_op_json(&self) -> String {
        let mut parts = Vec::new();
        for (op, c) in self.by_op.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            if n > 0 {
                parts.push(format!("\"{op}\": {n}"));
            }
        }
        format!("{{{}}}", parts.join(", "))
    }
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
        fs.statfs_path = Some(dir.to_path_buf());
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
            fsck: Mutex::new((0, 0, String::new())),
            fsck_progress: (AtomicU64::new(0), AtomicU64::new(0)),
            statfs_path: None,
            served: Served::default(),
            failed: std::sync::OnceLock::new(),
            unmounting: std::sync::atomic::AtomicBool::new(false),
            committed_next_ino: AtomicU64::new(ROOT + 1),
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
            if bs as u64 != self.block_size {
                tracing::info!(
                    block_size = bs,
                    "using the block size the filesystem was made with"
                );
                self.block_size = bs as u64;
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

    fn file_id(&self, ino: u64) -> u128 {
        let mut h = blake3::Hasher::new();
        h.update(&self.fs_id.to_le_bytes());
        h.update(&ino.to_le_bytes());
        u128::from_le_bytes(h.finalize().as_bytes()[..16].try_into().unwrap_or_default())
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

    // ---- reading through the layers ----

    fn inode_in(&self, sh: &Shard, snap: &Snapshot<'_>, ino: u64) -> FsResult<Inode> {
        match layered(sh, |d| d.inodes.get(&ino).map(|i| i.clone().ok_or(())))? {
            Found::Yes(i) => Ok(i),
            Found::Gone => err(libc::ENOENT),
            Found::Unknown => history::inode_at(snap, ino)?.ok_or(FsError::Errno(libc::ENOENT)),
        }
    }

    fn dirent_in(
        &self,
        sh: &Shard,
        snap: &Snapshot<'_>,
        parent: u64,
        name: &[u8],
    ) -> FsResult<Option<(u64, Kind)>> {
        match layered(sh, |d| {
            d.dirents
                .get(&parent)
                .and_then(|m| m.get(name))
                .map(|e| e.ok_or(()))
        })? {
            Found::Yes(e) => Ok(Some(e)),
            Found::Gone => Ok(None),
            Found::Unknown => history::dirent_at(snap, parent, name),
        }
    }

    /// Every entry of a directory, in name order.
    fn list_in(
        &self,
        sh: &Shard,
        snap: &Snapshot<'_>,
        dir: u64,
    ) -> FsResult<BTreeMap<Vec<u8>, (u64, Kind)>> {
        let mut out = history::list_at(snap, dir)?;
        let mut apply = |d: &Delta| {
            if let Some(m) = d.dirents.get(&dir) {
                for (name, e) in m {
                    match e {
                        Some(e) => out.insert(name.clone(), *e),
                        None => out.remove(name),
                    };
                }
            }
        };
        if let Some(c) = &sh.committing {
            apply(c);
        }
        apply(&sh.delta);
        Ok(out)
    }

    /// The bytes of block `idx` of a file (shorter than a block at the end
    /// of the data; empty for a hole).
    fn block_in<'a>(
        &self,
        sh: &'a Shard,
        snap: &Snapshot<'a>,
        ino: u64,
        idx: u64,
    ) -> FsResult<BlockRef<'a>> {
        for d in [Some(&sh.delta), sh.committing.as_deref()]
            .into_iter()
            .flatten()
        {
            if let Some(b) = d.blocks.get(&(ino, idx)) {
                return Ok(match b {
                    Some(v) => BlockRef::Mem(v),
                    None => BlockRef::Hole,
                });
            }
            if d.truncs.get(&ino).is_some_and(|&t| idx >= t)
                || matches!(d.inodes.get(&ino), Some(None))
            {
                return Ok(BlockRef::Hole);
            }
        }
        Ok(BlockRef::Store(history::block_at(snap, ino, idx)?))
    }

    fn snap(&self) -> FsResult<Snapshot<'_>> {
        Ok(self.store.latest()?)
    }

    // ---- operations ----

    pub fn getattr(&self, ino: u64) -> FsResult<Inode> {
        if is_history(ino) {
            return self.history_getattr(ino);
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        self.inode_in(&sh, &snap, ino)
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<Inode> {
        check_name(name)?;
        if is_history(parent) {
            return self.history_lookup(parent, name);
        }
        if self.is_history_entry(parent, name) {
            return self.history_getattr(HISTORY_DIR);
        }
        // `.` of any inode is the inode itself: the kernel asks for it to
        // turn a file handle back into an inode (NFS export,
        // `open_by_handle_at`) when it no longer has the inode cached.
        if name == b"." {
            return self.getattr(parent);
        }
        let ino = {
            let sh = self.shard(parent);
            let snap = self.snap()?;
            let dir = self.inode_in(&sh, &snap, parent)?;
            if dir.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
            if name == b".." {
                dir.parent
            } else {
                match self.dirent_in(&sh, &snap, parent, name)? {
                    Some((ino, _)) => ino,
                    None => return err(libc::ENOENT),
                }
            }
        };
        self.getattr(ino)
    }

    pub fn setattr(&self, ino: u64, set: SetAttr) -> FsResult<Inode> {
        self.writable(ino)?;
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        let now = Time::now();
        if let Some(size) = set.size {
            if i.kind == Kind::Dir {
                return err(libc::EISDIR);
            }
            if i.kind != Kind::File {
                return err(libc::EINVAL);
            }
            if size > MAX_FILE_SIZE {
                return err(libc::EFBIG);
            }
            if size != i.size {
                self.resize(&mut sh, &snap, &i, size)?;
                i.size = size;
                i.mtime = now;
            }
            i.changed(now);
        }
        if let Some(mode) = set.mode {
            i.perm = (mode & 0o7777) as u16;
            i.changed(now);
            // An access ACL follows the mode (the kernel leaves it to us).
            if let Some(a) = self
                .xattr_in(&sh, &snap, ino, acl::ACCESS)?
                .and_then(|v| acl::Acl::parse(&v))
            {
                let value = a.chmod(i.perm & 0o777).encode();
                sh.delta
                    .xattrs
                    .insert((ino, acl::ACCESS.to_vec()), Some(value));
            }
        }
        if let Some(uid) = set.uid {
            i.uid = uid;
            i.changed(now);
        }
        if let Some(gid) = set.gid {
            i.gid = gid;
            i.changed(now);
        }
        if let Some(t) = set.atime {
            i.atime = t;
            i.changed(now);
        }
        if let Some(t) = set.mtime {
            i.mtime = t;
            i.changed(now);
        }
        if let Some(t) = set.ctime {
            // The kernel's own stamp (writeback cache), kept apart from the
            // last one as any change's is.
            i.changed(t);
        }
        drop(snap);
        sh.delta.inodes.insert(ino, Some(i.clone()));
        Ok(i)
    }

    /// Cuts or extends a file's data to `size` bytes.
    fn resize(&self, sh: &mut Shard, snap: &Snapshot<'_>, i: &Inode, size: u64) -> FsResult<()> {
        let bs = self.block_size;
        if size < i.size {
            let keep = size.div_ceil(bs);
            // The block holding the new end keeps only the bytes before it.
            if !size.is_multiple_of(bs) {
                let idx = size / bs;
                let mut b = self.block_in(sh, snap, i.ino, idx)?.to_vec();
                b.truncate((size % bs) as usize);
                self.put_block(sh, i.ino, idx, Some(b));
            }
            let ino = i.ino;
            let d = &mut sh.delta;
            let mut freed = 0;
            d.blocks.retain(|&(n, b), v| {
                let keep_it = n != ino || b < keep;
                if !keep_it {
                    freed += v.as_ref().map_or(0, |v| v.len() as u64);
                }
                keep_it
            });
            d.bytes = d.bytes.saturating_sub(freed);
            self.sub_dirty(freed);
            let t = d.truncs.entry(ino).or_insert(keep);
            *t = (*t).min(keep);
            self.drop_promise(sh, ino, keep, u64::MAX);
        }
        Ok(())
    }

    /// Bytes of data changed in memory and not yet committed.
    pub fn dirty_bytes(&self) -> u64 {
        self.dirty_bytes.load(Ordering::Relaxed)
    }

    fn sub_dirty(&self, n: u64) {
        let _ = self
            .dirty_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    fn put_block(&self, sh: &mut Shard, ino: u64, idx: u64, data: Option<Vec<u8>>) {
        let new = data.as_ref().map_or(0, |v| v.len() as u64);
        let old = sh
            .delta
            .blocks
            .insert((ino, idx), data)
            .flatten()
            .map_or(0, |v| v.len() as u64);
        sh.delta.bytes = (sh.delta.bytes + new).saturating_sub(old);
        self.dirty_bytes.fetch_add(new, Ordering::Relaxed);
        self.sub_dirty(old);
    }

    fn new_inode(
        &self,
        ino: u64,
        ctx: Ctx,
        parent: &Inode,
        kind: Kind,
        perm: u32,
        rdev: u32,
    ) -> Inode {
        let now = Time::now();
        let mut perm = (perm & 0o7777) as u16;
        // BSD group semantics under a set-group-ID directory.
        let gid = if parent.perm & libc::S_ISGID as u16 != 0 {
            if kind == Kind::Dir {
                perm |= libc::S_ISGID as u16;
            }
            parent.gid
        } else {
            ctx.gid
        };
        Inode {
            ino,
            kind,
            perm,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            uid: ctx.uid,
            gid,
            rdev,
            flags: 0,
            size: 0,
            parent: if kind == Kind::Dir { parent.ino } else { 0 },
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            file_id: self.file_id(ino),
        }
    }

    /// Creates a node of any kind in `parent` (the common part of mknod,
    /// mkdir, symlink and create).
    #[allow(clippy::too_many_arguments)]
    fn make(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        kind: Kind,
        perm: u32,
        rdev: u32,
        target: Option<&[u8]>,
    ) -> FsResult<Inode> {
        check_name(name)?;
        self.writable(parent)?;
        if name == b"." || name == b".." || self.is_history_entry(parent, name) {
            return err(libc::EEXIST);
        }
        // The new inode's number decides its shard: take the number first
        // so both shards are locked together, in order (a number lost to an
        // error is never reused, which is harmless).
        let ino = self.next_ino.fetch_add(1, Ordering::Relaxed);
        let mut l = self.lock_many(&[parent, ino]);
        let snap = self.snap()?;
        let mut dir = self.inode_in(l.get(parent), &snap, parent)?;
        if dir.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        if dir.nlink == 0 {
            return err(libc::ENOENT);
        }
        if self
            .dirent_in(l.get(parent), &snap, parent, name)?
            .is_some()
        {
            return err(libc::EEXIST);
        }
        let default_acl = match kind {
            Kind::Symlink => None,
            _ => self
                .xattr_in(l.get(parent), &snap, parent, acl::DEFAULT)?
                .and_then(|d| acl::Acl::parse(&d)),
        };
        drop(snap);
        let mut inode = self.new_inode(ino, ctx, &dir, kind, perm, rdev);
        let mut acls: Vec<(&[u8], Vec<u8>)> = Vec::new();
        match &default_acl {
            // The directory's default ACL decides, not the umask: the new
            // inode's access ACL and permission bits narrow each other,
            // and a directory inherits the default ACL itself.
            Some(d) => {
                let (access, mode) = d.create(inode.perm & 0o777);
                inode.perm = (inode.perm & !0o777) | mode;
                if !access.is_mode() {
                    acls.push((acl::ACCESS, access.encode()));
                }
                if kind == Kind::Dir {
                    acls.push((acl::DEFAULT, d.encode()));
                }
            }
            None if kind != Kind::Symlink => inode.perm &= !(ctx.umask as u16 & 0o777),
            None => {}
        }
        let now = inode.ctime;
        dir.mtime = now;
        dir.changed(now);
        if kind == Kind::Dir {
            dir.nlink += 1;
        }
        let dsh = l.get_mut(parent);
        dsh.delta
            .dirents
            .entry(parent)
            .or_default()
            .insert(name.to_vec(), Some((ino, kind)));
        dsh.delta.inodes.insert(parent, Some(dir));
        let sh = l.get_mut(ino);
        if let Some(t) = target {
            inode.size = t.len() as u64;
            sh.delta.symlinks.insert(ino, t.to_vec());
        }
        for (name, value) in acls {
            sh.delta.xattrs.insert((ino, name.to_vec()), Some(value));
        }
        sh.delta.inodes.insert(ino, Some(inode.clone()));
        Ok(inode)
    }

    pub fn mknod(
        &self,
        ctx: Ctx,
        parent: u64,
        name: &[u8],
        mode: u32,
        rdev: u32,
    ) -> FsResult<Inode> {
        let kind = Kind::from_mode(mode).ok_or(FsError::Errno(libc::EINVAL))?;
        if kind == Kind::Dir || kind == Kind::Symlink {
            return err(libc::EINVAL);
        }
        self.make(ctx, parent, name, kind, mode, rdev, None)
    }

    pub fn mkdir(&self, ctx: Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<Inode> {
        self.make(ctx, parent, name, Kind::Dir, mode, 0, None)
    }

    pub fn symlink(&self, ctx: Ctx, parent: u64, name: &[u8], target: &[u8]) -> FsResult<Inode> {
        if target.len() > 4095 {
            return err(libc::ENAMETOOLONG);
        }
        self.make(ctx, parent, name, Kind::Symlink, 0o777, 0, Some(target))
    }

    pub fn readlink(&self, ino: u64) -> FsResult<Vec<u8>> {
        if is_history(ino) {
            return self.history_readlink(ino);
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        let i = self.inode_in(&sh, &snap, ino)?;
        if i.kind != Kind::Symlink {
            return err(libc::EINVAL);
        }
        for d in [Some(&sh.delta), sh.committing.as_deref()]
            .into_iter()
            .flatten()
        {
            if let Some(t) = d.symlinks.get(&ino) {
                return Ok(t.clone());
            }
        }
        match snap.get(&symlink_key(ino))? {
            Some(t) => Ok(t.to_vec()),
            None => err(libc::EIO),
        }
    }

    /// Creates and opens a regular file.
    pub fn create(&self, ctx: Ctx, parent: u64, name: &[u8], mode: u32) -> FsResult<(Inode, u64)> {
        let i = self.make(ctx, parent, name, Kind::File, mode, 0, None)?;
        let fh = self.open(i.ino, true)?;
        Ok((i, fh))
    }

    /// Opens a file; `write` if it may be written through this handle.
    pub fn open(&self, ino: u64, write: bool) -> FsResult<u64> {
        if is_history(ino) {
            if write {
                return err(libc::EROFS);
            }
            self.history_getattr(ino)?;
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            if let Some(text) = self.generated(ino) {
                self.generated.lock().insert(fh, Arc::new(text));
            }
            return Ok(fh);
        }
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        self.inode_in(&sh, &snap, ino)?;
        drop(snap);
        *sh.open.entry(ino).or_default() += 1;
        Ok(self.next_fh.fetch_add(1, Ordering::Relaxed))
    }

    /// The last handle of a file is closed: an orphan goes, and the change
    /// is committed soon (every close makes a version).
    pub fn release(&self, ino: u64) -> FsResult<()> {
        if is_history(ino) {
            return Ok(());
        }
        let mut sh = self.shard(ino);
        let left = match sh.open.get_mut(&ino) {
            Some(n) => {
                *n -= 1;
                *n
            }
            None => 0,
        };
        if left == 0 {
            sh.open.remove(&ino);
            self.drop_if_unheld(&mut sh, ino)?;
        }
        drop(sh);
        self.flush.request();
        Ok(())
    }

    /// The kernel was sent an entry for `ino` (a lookup, a create, a link,
    /// a readdirplus entry): it holds one more reference until it forgets.
    pub fn remember(&self, ino: u64) {
        if is_history(ino) || ino == ROOT {
            return;
        }
        *self.shard(ino).refs.entry(ino).or_default() += 1;
    }

    /// The kernel let go of `n` references to `ino` (FORGET): an inode
    /// without names that nothing holds any more goes now.
    pub fn forget(&self, ino: u64, n: u64) -> FsResult<()> {
        if is_history(ino) || ino == ROOT {
            return Ok(());
        }
        let mut sh = self.shard(ino);
        let Some(refs) = sh.refs.get_mut(&ino) else {
            return Ok(());
        };
        *refs = refs.saturating_sub(n);
        if *refs == 0 {
            sh.refs.remove(&ino);
            self.drop_if_unheld(&mut sh, ino)?;
        }
        Ok(())
    }

    /// Deletes `ino` if it has no name and nothing holds it.
    fn drop_if_unheld(&self, sh: &mut Shard, ino: u64) -> FsResult<()> {
        if sh.held(ino) || !sh.nameless.contains(&ino) {
            return Ok(());
        }
        sh.nameless.remove(&ino);
        let snap = self.snap()?;
        // A link may have given it a name again meanwhile.
        if let Ok(i) = self.inode_in(sh, &snap, ino)
            && i.nlink == 0
        {
            drop(snap);
            self.forget_inode(sh, ino);
        }
        Ok(())
    }

    /// Removes an inode and everything it holds.
    fn forget_inode(&self, sh: &mut Shard, ino: u64) {
        let freed: u64 = sh
            .delta
            .blocks
            .iter()
            .filter(|((i, _), _)| *i == ino)
            .map(|(_, v)| v.as_ref().map_or(0, |v| v.len() as u64))
            .sum();
        sh.delta.drop_inode_data(ino);
        self.drop_promise(sh, ino, 0, u64::MAX);
        sh.delta.bytes = sh.delta.bytes.saturating_sub(freed);
        self.sub_dirty(freed);
        sh.delta.inodes.insert(ino, None);
        sh.delta.orphans.insert(ino, false);
    }

    /// Reads through an open handle (a generated file reads the text taken
    /// when the handle was opened).
    pub fn read_handle(&self, ino: u64, fh: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if self.is_generated(ino)
            && let Some(text) = self.generated.lock().get(&fh).cloned()
        {
            return Ok(slice_of(&text, offset, size).to_vec());
        }
        self.read(ino, offset, size)
    }

    /// Closes an open handle.
    pub fn release_handle(&self, ino: u64, fh: u64) -> FsResult<()> {
        if self.is_generated(ino) {
            self.generated.lock().remove(&fh);
        }
        self.release(ino)
    }

    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if is_history(ino) {
            return self.history_read(ino, offset, size);
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        let i = self.inode_in(&sh, &snap, ino)?;
        if i.kind == Kind::Dir {
            return err(libc::EISDIR);
        }
        if offset >= i.size {
            return Ok(Vec::new());
        }
        read_blocks(i.size, self.block_size, offset, size, |idx| {
            Ok(self.block_in(&sh, &snap, ino, idx)?.bytes())
        })
    }

    pub fn write(&self, ino: u64, offset: u64, data: &[u8]) -> FsResult<u32> {
        self.writable(ino)?;
        let end = offset
            .checked_add(data.len() as u64)
            .ok_or(FsError::Errno(libc::EFBIG))?;
        if end > MAX_FILE_SIZE {
            return err(libc::EFBIG);
        }
        self.admit_write(ino, offset, end)?;
        self.before_dirty(data.len() as u64)?;
        {
            let mut sh = self.shard(ino);
            let snap = self.snap()?;
            let mut i = self.inode_in(&sh, &snap, ino)?;
            if i.kind == Kind::Dir {
                return err(libc::EISDIR);
            }
            let bs = self.block_size;
            let mut pos = offset;
            while pos < end {
                let idx = pos / bs;
                let within = (pos % bs) as usize;
                let n = ((bs - pos % bs).min(end - pos)) as usize;
                let src = &data[(pos - offset) as usize..(pos - offset) as usize + n];
                if let Some(Some(b)) = sh.delta.blocks.get_mut(&(ino, idx)) {
                    // Already dirty: patch it in place.
                    let before = b.len();
                    patch_block(b, within, src, bs as usize);
                    let grew = (b.len() - before) as u64;
                    sh.delta.bytes += grew;
                    self.dirty_bytes.fetch_add(grew, Ordering::Relaxed);
                } else {
                    let mut buf = if within == 0 && n as u64 == bs {
                        Vec::with_capacity(n)
                    } else {
                        // Bytes past the old end of file read as zeros.
                        let old = self.block_in(&sh, &snap, ino, idx)?.bytes();
                        let valid = i.size.saturating_sub(idx * bs).min(bs) as usize;
                        let keep = &old[..old.len().min(valid)];
                        let mut b = Vec::with_capacity(keep.len().max(within + n));
                        b.extend_from_slice(keep);
                        b
                    };
                    patch_block(&mut buf, within, src, bs as usize);
                    self.put_block(&mut sh, ino, idx, Some(buf));
                }
                pos += n as u64;
            }
            if !sh.promises.is_empty() && end > offset {
                self.fill_promise(&mut sh, ino, offset / bs, (end - 1) / bs);
            }
            let now = Time::now();
            i.size = i.size.max(end);
            i.mtime = now;
            i.changed(now);
            drop(snap);
            sh.delta.inodes.insert(ino, Some(i));
        }
        self.after_dirty();
        Ok(data.len() as u32)
    }

    /// Starts a commit when dirty data passes the limit; makes the writer
    /// wait for one when it passes twice the limit.
    /// Keeps dirty data under the limit: a write that would find the cache
    /// full first waits for a commit (and fails, changing nothing, if the
    /// commit fails); past half the limit a commit is started in the
    /// background.
    fn before_dirty(&self, adding: u64) -> FsResult<()> {
        let dirty = self.dirty_bytes.load(Ordering::Relaxed);
        if dirty > 0 && dirty + adding > self.opts.dirty_limit {
            self.commit("dirty limit")?;
        }
        Ok(())
    }

    fn after_dirty(&self) {
        if self.dirty_bytes.load(Ordering::Relaxed) > self.opts.dirty_limit / 2 {
            self.flush.request();
        }
    }

    pub fn unlink(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, false)
    }

    pub fn rmdir(&self, parent: u64, name: &[u8]) -> FsResult<()> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: u64, name: &[u8], dir: bool) -> FsResult<()> {
        check_name(name)?;
        self.writable(parent)?;
        if self.is_history_entry(parent, name) {
            return err(libc::EROFS);
        }
        if name == b"." {
            return err(libc::EINVAL);
        }
        if name == b".." {
            return err(libc::ENOTEMPTY);
        }
        loop {
            let child = {
                let sh = self.shard(parent);
                let snap = self.snap()?;
                match self.dirent_in(&sh, &snap, parent, name)? {
                    Some((c, _)) => c,
                    None => return err(libc::ENOENT),
                }
            };
            let mut l = self.lock_many(&[parent, child]);
            let snap = self.snap()?;
            // The entry may have changed between the two locks: look again.
            if self
                .dirent_in(l.get(parent), &snap, parent, name)?
                .map(|e| e.0)
                != Some(child)
            {
                continue;
            }
            let mut p = self.inode_in(l.get(parent), &snap, parent)?;
            let mut c = self.inode_in(l.get(child), &snap, child)?;
            if dir {
                if c.kind != Kind::Dir {
                    return err(libc::ENOTDIR);
                }
                if !self.list_in(l.get(child), &snap, child)?.is_empty() {
                    return err(libc::ENOTEMPTY);
                }
            } else if c.kind == Kind::Dir {
                return err(libc::EISDIR);
            }
            drop(snap);
            let now = Time::now();
            p.mtime = now;
            p.changed(now);
            if dir {
                p.nlink -= 1;
                c.nlink = 0;
            } else {
                c.nlink = c.nlink.saturating_sub(1);
            }
            c.changed(now);
            l.get_mut(parent)
                .delta
                .dirents
                .entry(parent)
                .or_default()
                .insert(name.to_vec(), None);
            l.get_mut(parent).delta.inodes.insert(parent, Some(p));
            self.drop_link(l.get_mut(child), c);
            return Ok(());
        }
    }

    /// Stores an inode that lost a link: gone if nothing holds it, an orphan
    /// if it is still open or the kernel still holds it.
    fn drop_link(&self, sh: &mut Shard, c: Inode) {
        let ino = c.ino;
        if c.nlink > 0 {
            sh.delta.inodes.insert(ino, Some(c));
        } else if sh.held(ino) {
            sh.delta.inodes.insert(ino, Some(c));
            sh.delta.orphans.insert(ino, true);
            sh.nameless.insert(ino);
        } else {
            self.forget_inode(sh, ino);
        }
    }

    pub fn link(&self, ino: u64, parent: u64, name: &[u8]) -> FsResult<Inode> {
        check_name(name)?;
        self.writable(ino)?;
        self.writable(parent)?;
        if self.is_history_entry(parent, name) {
            return err(libc::EEXIST);
        }
        let mut l = self.lock_many(&[ino, parent]);
        let snap = self.snap()?;
        let mut i = self.inode_in(l.get(ino), &snap, ino)?;
        if i.kind == Kind::Dir {
            return err(libc::EPERM);
        }
        if i.nlink == 0 {
            return err(libc::ENOENT);
        }
        let mut p = self.inode_in(l.get(parent), &snap, parent)?;
        if p.kind != Kind::Dir {
            return err(libc::ENOTDIR);
        }
        if p.nlink == 0 {
            return err(libc::ENOENT);
        }
        if name == b"."
            || name == b".."
            || self
                .dirent_in(l.get(parent), &snap, parent, name)?
                .is_some()
        {
            return err(libc::EEXIST);
        }
        if i.nlink >= 65_000 {
            return err(libc::EMLINK);
        }
        drop(snap);
        let now = Time::now();
        i.nlink += 1;
        i.changed(now);
        p.mtime = now;
        p.changed(now);
        l.get_mut(parent)
            .delta
            .dirents
            .entry(parent)
            .or_default()
            .insert(name.to_vec(), Some((ino, i.kind)));
        l.get_mut(parent).delta.inodes.insert(parent, Some(p));
        l.get_mut(ino).delta.inodes.insert(ino, Some(i.clone()));
        Ok(i)
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &[u8],
        newparent: u64,
        newname: &[u8],
        mode: RenameMode,
    ) -> FsResult<()> {
        check_name(name)?;
        check_name(newname)?;
        self.writable(parent)?;
        self.writable(newparent)?;
        if self.is_history_entry(parent, name) || self.is_history_entry(newparent, newname) {
            return err(libc::EROFS);
        }
        for n in [name, newname] {
            if n == b"." || n == b".." {
                return err(libc::EINVAL);
            }
        }
        loop {
            // Find the inodes involved, then lock every shard they live in.
            let (src, dst) = {
                let l = self.lock_many(&[parent, newparent]);
                let snap = self.snap()?;
                let src = match self.dirent_in(l.get(parent), &snap, parent, name)? {
                    Some(e) => e,
                    None => return err(libc::ENOENT),
                };
                let dst = self.dirent_in(l.get(newparent), &snap, newparent, newname)?;
                (src, dst)
            };
            let mut inos = vec![parent, newparent, src.0];
            if let Some(d) = dst {
                inos.push(d.0);
            }
            let mut l = self.lock_many(&inos);
            let snap = self.snap()?;
            if self.dirent_in(l.get(parent), &snap, parent, name)? != Some(src)
                || self.dirent_in(l.get(newparent), &snap, newparent, newname)? != dst
            {
                continue;
            }
            if parent == newparent && name == newname {
                return Ok(());
            }
            if dst.is_some_and(|d| d.0 == src.0) {
                // Two links to one inode: rename does nothing.
                return Ok(());
            }
            let mut sp = self.inode_in(l.get(parent), &snap, parent)?;
            let mut dp = self.inode_in(l.get(newparent), &snap, newparent)?;
            if dp.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
            let mut s = self.inode_in(l.get(src.0), &snap, src.0)?;
            let mut d = match dst {
                Some(e) => Some(self.inode_in(l.get(e.0), &snap, e.0)?),
                None => None,
            };
            match (mode, &d) {
                (RenameMode::NoReplace, Some(_)) => return err(libc::EEXIST),
                (RenameMode::Exchange, None) => return err(libc::ENOENT),
                _ => {}
            }
            // A directory may not move into itself or below itself.
            if s.kind == Kind::Dir
                && parent != newparent
                && self.is_ancestor(&l, &snap, s.ino, newparent)?
            {
                return err(libc::EINVAL);
            }
            if mode == RenameMode::Exchange
                && let Some(dd) = &d
                && dd.kind == Kind::Dir
                && parent != newparent
                && self.is_ancestor(&l, &snap, dd.ino, parent)?
            {
                return err(libc::EINVAL);
            }
            if mode != RenameMode::Exchange
                && let Some(dd) = &d
            {
                match (s.kind == Kind::Dir, dd.kind == Kind::Dir) {
                    (true, false) => return err(libc::ENOTDIR),
                    (false, true) => return err(libc::EISDIR),
                    (true, true) if !self.list_in(l.get(dd.ino), &snap, dd.ino)?.is_empty() => {
                        return err(libc::ENOTEMPTY);
                    }
                    _ => {}
                }
            }
            drop(snap);
            let now = Time::now();
            // Entries.
            if mode == RenameMode::Exchange {
                let dd = d.as_ref().map(|x| (x.ino, x.kind)).unwrap_or(src);
                l.get_mut(parent)
                    .delta
                    .dirents
                    .entry(parent)
                    .or_default()
                    .insert(name.to_vec(), Some(dd));
            } else {
                l.get_mut(parent)
                    .delta
                    .dirents
                    .entry(parent)
                    .or_default()
                    .insert(name.to_vec(), None);
            }
            l.get_mut(newparent)
                .delta
                .dirents
                .entry(newparent)
                .or_default()
                .insert(newname.to_vec(), Some(src));
            // Link counts: a directory's ".." counts as a link of its parent.
            let s_dir = s.kind == Kind::Dir;
            let d_dir = d.as_ref().is_some_and(|x| x.kind == Kind::Dir);
            let (mut to_sp, mut to_dp) = (0i64, 0i64);
            if mode == RenameMode::Exchange {
                if s_dir {
                    to_sp -= 1;
                    to_dp += 1;
                }
                if d_dir {
                    to_dp -= 1;
                    to_sp += 1;
                }
            } else {
                if s_dir {
                    to_sp -= 1;
                    to_dp += 1;
                }
                if d_dir {
                    to_dp -= 1;
                }
            }
            if s_dir {
                s.parent = newparent;
            }
            s.changed(now);
            if parent == newparent {
                sp.nlink = (sp.nlink as i64 + to_sp + to_dp).max(0) as u32;
                sp.mtime = now;
                sp.changed(now);
                l.get_mut(parent).delta.inodes.insert(parent, Some(sp));
            } else {
                sp.nlink = (sp.nlink as i64 + to_sp).max(0) as u32;
                dp.nlink = (dp.nlink as i64 + to_dp).max(0) as u32;
                sp.mtime = now;
                sp.changed(now);
                dp.mtime = now;
                dp.changed(now);
                l.get_mut(parent).delta.inodes.insert(parent, Some(sp));
                l.get_mut(newparent)
                    .delta
                    .inodes
                    .insert(newparent, Some(dp));
            }
            if let Some(mut dd) = d.take() {
                dd.changed(now);
                if mode == RenameMode::Exchange {
                    if dd.kind == Kind::Dir {
                        dd.parent = parent;
                    }
                    l.get_mut(dd.ino).delta.inodes.insert(dd.ino, Some(dd));
                } else {
                    if dd.kind == Kind::Dir {
                        dd.nlink = 0;
                    } else {
                        dd.nlink = dd.nlink.saturating_sub(1);
                    }
                    self.drop_link(l.get_mut(dd.ino), dd);
                }
            }
            l.get_mut(s.ino).delta.inodes.insert(s.ino, Some(s));
            return Ok(());
        }
    }

    /// Whether `dir` is `of` or one of its ancestors (following parents from `of`).
    fn is_ancestor(
        &self,
        l: &Locked<'_>,
        snap: &Snapshot<'_>,
        dir: u64,
        of: u64,
    ) -> FsResult<bool> {
        let mut cur = of;
        for _ in 0..4096 {
            if cur == dir {
                return Ok(true);
            }
            if cur == ROOT {
                return Ok(false);
            }
            let i = match l.try_get(cur) {
                Some(sh) => self.inode_in(sh, snap, cur)?,
                None => {
                    let sh = self.shard(cur);
                    self.inode_in(&sh, snap, cur)?
                }
            };
            cur = i.parent;
        }
        err(libc::ELOOP)
    }

    /// Opens a directory for listing ([`Fs::readdir`]); POSIX leaves
    /// changes made while it is read page by page unspecified.
    pub fn opendir(&self, ino: u64) -> FsResult<u64> {
        if is_history(ino) {
            if self.history_getattr(ino)?.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
        } else {
            let sh = self.shard(ino);
            let snap = self.snap()?;
            if self.inode_in(&sh, &snap, ino)?.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs.lock().insert(fh, Arc::new(Vec::new()));
        Ok(fh)
    }

    /// The listing of an open directory: taken anew when read from the
    /// start (the first read, and after `rewinddir`), else the one taken then.
    pub fn readdir(&self, fh: u64, ino: u64, offset: u64) -> FsResult<Arc<Vec<DirEntry>>> {
        if offset == 0 {
            let listing = Arc::new(self.listing(ino)?);
            self.dirs.lock().insert(fh, listing.clone());
            return Ok(listing);
        }
        self.dirs
            .lock()
            .get(&fh)
            .cloned()
            .ok_or(FsError::Errno(libc::EBADF))
    }

    fn listing(&self, ino: u64) -> FsResult<Vec<DirEntry>> {
        if is_history(ino) {
            return self.history_listing(ino);
        }
        let listing = {
            let sh = self.shard(ino);
            let snap = self.snap()?;
            let dir = self.inode_in(&sh, &snap, ino)?;
            if dir.kind != Kind::Dir {
                return err(libc::ENOTDIR);
            }
            let mut v = dot_entries(ino, dir.parent);
            v.extend(
                self.list_in(&sh, &snap, ino)?
                    .into_iter()
                    .map(|(name, (ino, kind))| DirEntry { name, ino, kind }),
            );
            v
        };
        Ok(listing)
    }

    pub fn releasedir(&self, fh: u64) {
        self.dirs.lock().remove(&fh);
    }

    pub fn statfs(&self) -> FsResult<StatFs> {
        let mut st = StatFs {
            blocks: 0,
            bfree: 0,
            bavail: 0,
            files: 1 << 32,
            ffree: (1 << 32) - self.next_ino.load(Ordering::Relaxed).min(1 << 31),
            bsize: 4096,
            namelen: NAME_MAX as u32,
        };
        if let Some(v) = self.host_statvfs() {
            // The host filesystem's blocks, in 4 KiB units; the store's
            // free pages are free space too, and what `fallocate` promised
            // is not (it is in use, as on a local filesystem).
            let frsize = v.f_frsize.max(1);
            let free_pages = self.store.stats().free_pages;
            let promised = self.promised_bytes() / 4096;
            st.blocks = v.f_blocks * frsize / 4096;
            st.bfree = (v.f_bfree * frsize / 4096 + free_pages).saturating_sub(promised);
            st.bavail = (v.f_bavail * frsize / 4096 + free_pages).saturating_sub(promised);
        }
        Ok(st)
    }

    /// The host filesystem's `statvfs` for the store directory, if known.
    fn host_statvfs(&self) -> Option<libc::statvfs> {
        let p = self.statfs_path.as_ref()?;
        let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
        let mut v: libc::statvfs = unsafe_zeroed_statvfs();
        // SAFETY: `c` is a valid NUL-terminated path and `v` a valid out-pointer.
        (unsafe { libc::statvfs(c.as_ptr(), &mut v) } == 0).then_some(v)
    }

    // ---- extended attributes ----

    pub fn setxattr(
        &self,
        ino: u64,
        name: &[u8],
        value: &[u8],
        create: bool,
        replace: bool,
    ) -> FsResult<()> {
        self.writable(ino)?;
        if name.is_empty() || name.len() > XATTR_NAME_MAX {
            return err(libc::ERANGE);
        }
        if value.len() > XATTR_SIZE_MAX {
            return err(libc::E2BIG);
        }
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        let exists = self.xattr_in(&sh, &snap, ino, name)?.is_some();
        if create && exists {
            return err(libc::EEXIST);
        }
        if replace && !exists {
            return err(libc::ENODATA);
        }
        drop(snap);
        i.changed(Time::now());
        let mut value = Some(value.to_vec());
        if name == acl::ACCESS || name == acl::DEFAULT {
            let a = acl::Acl::parse(value.as_deref().unwrap_or_default())
                .ok_or(FsError::Errno(libc::EINVAL))?;
            if name == acl::DEFAULT && i.kind != Kind::Dir {
                return err(libc::EACCES);
            }
            if name == acl::ACCESS {
                // The ACL and the mode's permission bits are one thing: the
                // mode takes the ACL's, and an ACL the mode says in full is
                // not kept (as on ext4).
                i.perm = (i.perm & !0o777) | a.mode();
                if a.is_mode() {
                    value = None;
                }
            }
        }
        sh.delta.xattrs.insert((ino, name.to_vec()), value);
        sh.delta.inodes.insert(ino, Some(i));
        Ok(())
    }

    fn xattr_in(
        &self,
        sh: &Shard,
        snap: &Snapshot<'_>,
        ino: u64,
        name: &[u8],
    ) -> FsResult<Option<Vec<u8>>> {
        let key = (ino, name.to_vec());
        match layered(sh, |d| d.xattrs.get(&key).map(|v| v.clone().ok_or(())))? {
            Found::Yes(v) => Ok(Some(v)),
            Found::Gone => Ok(None),
            Found::Unknown => Ok(snap.get(&xattr_key(ino, name))?.map(|v| v.to_vec())),
        }
    }

    pub fn getxattr(&self, ino: u64, name: &[u8]) -> FsResult<Vec<u8>> {
        if is_history(ino) {
            return self.history_getxattr(ino, name);
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        self.inode_in(&sh, &snap, ino)?;
        self.xattr_in(&sh, &snap, ino, name)?
            .ok_or(FsError::Errno(libc::ENODATA))
    }

    pub fn listxattr(&self, ino: u64) -> FsResult<Vec<Vec<u8>>> {
        if is_history(ino) {
            return self.history_listxattr(ino);
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        self.inode_in(&sh, &snap, ino)?;
        let mut names = std::collections::BTreeSet::new();
        let start = xattr_prefix(ino);
        let end = prefix_end(&start);
        for item in snap.range((Bound::Included(&start[..]), Bound::Excluded(&end[..])))? {
            let (k, _) = item?;
            names.insert(k[9..].to_vec());
        }
        for d in [sh.committing.as_deref(), Some(&sh.delta)]
            .into_iter()
            .flatten()
        {
            for ((i, name), v) in &d.xattrs {
                if *i == ino {
                    if v.is_some() {
                        names.insert(name.clone());
                    } else {
                        names.remove(name);
                    }
                }
            }
        }
        Ok(names.into_iter().collect())
    }

    pub fn removexattr(&self, ino: u64, name: &[u8]) -> FsResult<()> {
        self.writable(ino)?;
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        if self.xattr_in(&sh, &snap, ino, name)?.is_none() {
            return err(libc::ENODATA);
        }
        drop(snap);
        i.changed(Time::now());
        sh.delta.xattrs.insert((ino, name.to_vec()), None);
        sh.delta.inodes.insert(ino, Some(i));
        Ok(())
    }

    /// Drops what a write, truncate or chown by an unprivileged caller must
    /// drop, which the kernel leaves to us (we ask for
    /// FUSE_HANDLE_KILLPRIV_V2, so it need not ask for `security.capability`
    /// before every write): set-user-ID always, set-group-ID when the file
    /// is group-executable (otherwise the bit marks mandatory locking, as
    /// the kernel's own rule has it), and the file capability.
    /// Returns whether anything changed (the kernel's cached mode is then
    /// stale: the caller tells it).
    pub fn kill_privs(&self, ino: u64) -> FsResult<bool> {
        const CAPS: &[u8] = b"security.capability";
        self.writable(ino)?;
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        let mut perm = u32::from(i.perm) & !libc::S_ISUID;
        if perm & libc::S_IXGRP != 0 {
            perm &= !libc::S_ISGID;
        }
        let caps = self.xattr_in(&sh, &snap, ino, CAPS)?.is_some();
        if perm == u32::from(i.perm) && !caps {
            return Ok(false);
        }
        drop(snap);
        i.perm = perm as u16;
        i.changed(Time::now());
        if caps {
            sh.delta.xattrs.insert((ino, CAPS.to_vec()), None);
        }
        sh.delta.inodes.insert(ino, Some(i));
        Ok(true)
    }

    /// Drops set-group-ID (setting an ACL by a caller outside the file's
    /// group, as the kernel tells us); whether it was set.
    pub fn drop_sgid(&self, ino: u64) -> FsResult<bool> {
        self.writable(ino)?;
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        drop(snap);
        if u32::from(i.perm) & libc::S_ISGID == 0 {
            return Ok(false);
        }
        i.perm &= !(libc::S_ISGID as u16);
        i.changed(Time::now());
        sh.delta.inodes.insert(ino, Some(i));
        Ok(true)
    }

    // ---- space: fallocate and seek ----

    /// `mode`: 0 (allocate, may extend the file), or with
    /// `FALLOC_FL_KEEP_SIZE`, `FALLOC_FL_PUNCH_HOLE`, `FALLOC_FL_ZERO_RANGE`.
    pub fn fallocate(&self, ino: u64, offset: u64, len: u64, mode: i32) -> FsResult<()> {
        self.writable(ino)?;
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE)
            .ok_or(FsError::Errno(libc::EFBIG))?;
        let supported =
            libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE;
        if mode & !supported != 0 {
            return err(libc::EOPNOTSUPP);
        }
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && mode & libc::FALLOC_FL_KEEP_SIZE == 0 {
            return err(libc::EINVAL);
        }
        let allocate = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) == 0;
        if allocate {
            self.refresh_room();
        }
        let mut sh = self.shard(ino);
        let snap = self.snap()?;
        let mut i = self.inode_in(&sh, &snap, ino)?;
        if i.kind != Kind::File {
            return err(if i.kind == Kind::Dir {
                libc::EISDIR
            } else {
                libc::ENODEV
            });
        }
        let bs = self.block_size;
        if allocate {
            // The blocks not yet full are promised: refused at once if the
            // store could not hold them now, and never refused later.
            self.promise(&mut sh, &snap, &i, offset / bs, end.div_ceil(bs))?;
        } else if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            // A punch lets go of the promise for the whole blocks it
            // covers (as ext4 frees them); zeroing keeps it.
            self.drop_promise(&mut sh, ino, offset.div_ceil(bs), end / bs);
        }
        if !allocate {
            // Zero the range: whole blocks become holes, partial ones are patched.
            let zend = end.min(i.size);
            let mut pos = offset;
            while pos < zend {
                let idx = pos / bs;
                let within = (pos % bs) as usize;
                let n = ((bs - pos % bs).min(zend - pos)) as usize;
                if within == 0 && n as u64 == bs {
                    self.put_block(&mut sh, ino, idx, None);
                } else {
                    let mut b = self.block_in(&sh, &snap, ino, idx)?.to_vec();
                    if b.len() > within {
                        let m = n.min(b.len() - within);
                        b[within..within + m].fill(0);
                        self.put_block(&mut sh, ino, idx, Some(b));
                    }
                }
                pos += n as u64;
            }
        }
        if mode & libc::FALLOC_FL_KEEP_SIZE == 0 && end > i.size {
            i.size = end;
        }
        i.changed(Time::now());
        if mode != 0 {
            i.mtime = i.ctime;
        }
        drop(snap);
        sh.delta.inodes.insert(ino, Some(i));
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE at block granularity (a block with any data is data).
    pub fn lseek(&self, ino: u64, offset: u64, whence: i32) -> FsResult<u64> {
        if is_history(ino) {
            // Old versions: all data, one hole at the end.
            let size = self.history_getattr(ino)?.size;
            return match whence {
                _ if offset >= size => err(libc::ENXIO),
                libc::SEEK_DATA => Ok(offset),
                libc::SEEK_HOLE => Ok(size),
                _ => err(libc::EINVAL),
            };
        }
        let sh = self.shard(ino);
        let snap = self.snap()?;
        let i = self.inode_in(&sh, &snap, ino)?;
        if offset >= i.size {
            return err(libc::ENXIO);
        }
        let bs = self.block_size;
        let mut idx = offset / bs;
        let last = i.size.div_ceil(bs);
        while idx < last {
            let data = !self.block_in(&sh, &snap, ino, idx)?.bytes().is_empty();
            match whence {
                libc::SEEK_DATA if data => return Ok(offset.max(idx * bs)),
                libc::SEEK_HOLE if !data => return Ok(offset.max(idx * bs)),
                libc::SEEK_DATA | libc::SEEK_HOLE => {}
                _ => return err(libc::EINVAL),
            }
            idx += 1;
        }
        match whence {
            libc::SEEK_HOLE => Ok(i.size),
            _ => err(libc::ENXIO),
        }
    }

    // ---- commits ----

    /// Commits every change so far and waits until it is durable; callers
    /// arriving while a commit runs share the next one.
    pub fn fsync(&self) -> FsResult<()> {
        if self.failed.get().is_some() {
            return err(libc::EIO);
        }
        self.flush.sync(|| self.commit_now("fsync"))
    }

    /// Takes every shard's changes and commits them as one version.
    pub fn commit(&self, cause: &str) -> FsResult<()> {
        self.flush.exclusive(|| self.commit_now(cause))
    }

    /// Re-reads the store directory's retention policy and commits at once
    /// (a version even with no changes), so the policy takes effect now.
    pub fn gc(&self) -> FsResult<()> {
        if let Some(why) = self.failure() {
            tracing::debug!("gc refused: {why}");
            return err(libc::EIO);
        }
        // A store that keeps its own policy has it in force already; an
        // older one still reads `retention.conf`.
        if let Some(dir) = &self.statfs_path
            && !self.store.has_stored_policy()
        {
            self.store
                .set_retention(load_retention(dir)?.unwrap_or_default());
        }
        self.flush.exclusive(|| {
            let before = self.store.latest_version();
            self.commit_now("gc")?;
            // gc's own commits only free space: they may use the reserve.
            let room = || -> FsResult<()> {
                let mut t = self.store.begin_write()?;
                t.use_reserve();
                t.commit("gc")?;
                Ok(())
            };
            // Nothing was pending: commit an empty version so retention runs.
            if self.store.latest_version() == before {
                room()?;
            }
            // Over the space cap each commit lets one more old version go.
            let mut rounds = self.store.versions().len();
            while self.store.over_cap() && self.store.versions().len() > 1 && rounds > 0 {
                room()?;
                rounds -= 1;
            }
            self.gc_runs.fetch_add(1, Ordering::Release);
            Ok(())
        })
    }

    /// Keeps `policy` in the store (a commit that may use the reserve, so
    /// it goes through on a full disk) and applies it at once.
    pub fn set_retention(&self, policy: crate::store::Retention) -> FsResult<()> {
        if let Some(why) = self.failure() {
            tracing::debug!("retention change refused: {why}");
            return err(libc::EIO);
        }
        self.flush.exclusive(|| {
            self.commit_now("retention")?;
            let mut t = self.store.begin_write()?;
            t.use_reserve();
            t.set_retention(policy);
            t.commit("retention")?;
            Ok(())
        })
    }

    /// Checks the store while mounted (commits wait meanwhile) and keeps
    /// the report for `daemon.json`.
    pub fn fsck(&self) -> FsResult<crate::store::FsckReport> {
        let progress = |checked: u64, total: u64| {
            self.fsck_progress.0.store(checked, Ordering::Relaxed);
            self.fsck_progress.1.store(total, Ordering::Relaxed);
        };
        let report = self.store.fsck_with_progress(&progress)?;
        let mut f = self.fsck.lock();
        *f = (f.0 + 1, report.problems.len(), report.to_string());
        Ok(report)
    }

    /// Whether the final commit has begun.
    pub fn unmounting(&self) -> bool {
        self.unmounting.load(Ordering::Acquire)
    }

    /// What `.zippy/daemon.json` shows, as JSON.
    pub fn status(&self) -> serde_json::Value {
        serde_json::from_slice(&self.daemon_json()).unwrap_or_default()
    }

    /// (pages checked, pages in the store) of the `fsck` under way.
    pub fn fsck_progress(&self) -> (u64, u64) {
        (
            self.fsck_progress.0.load(Ordering::Relaxed),
            self.fsck_progress.1.load(Ordering::Relaxed),
        )
    }

    /// (runs, problems found, report) of the last live `fsck`.
    pub fn fsck_report(&self) -> (u64, usize, String) {
        self.fsck.lock().clone()
    }

    /// The kernel side's request counters.
    pub fn served(&self) -> &Served {
        &self.served
    }

    pub fn gc_runs(&self) -> u64 {
        self.gc_runs.load(Ordering::Acquire)
    }

    /// The store directory, for a filesystem opened with [`Fs::mount`].
    pub fn store_dir(&self) -> Option<&Path> {
        self.statfs_path.as_deref()
    }

    /// Whether `ino` may be changed: not in the read-only history, and not
    /// after a failure (see [`Fs::fail`]).
    fn writable(&self, ino: u64) -> FsResult<()> {
        if is_history(ino) {
            return err(libc::EROFS);
        }
        if self.failed.get().is_some() {
            return err(libc::EIO);
        }
        Ok(())
    }
}

/// The `.` and `..` entries that start every directory listing.
pub(crate) fn dot_entries(ino: u64, parent: u64) -> Vec<DirEntry> {
    [(&b"."[..], ino), (&b".."[..], parent)]
        .into_iter()
        .map(|(name, ino)| DirEntry {
            name: name.to_vec(),
            ino,
            kind: Kind::Dir,
        })
        .collect()
}

/// Looks a key up in the shard's delta, then in the delta being committed.
fn layered<T>(sh: &Shard, get: impl Fn(&Delta) -> Option<Result<T, ()>>) -> FsResult<Found<T>> {
    for d in [Some(&sh.delta), sh.committing.as_deref()]
        .into_iter()
        .flatten()
    {
        match get(d) {
            Some(Ok(v)) => return Ok(Found::Yes(v)),
            Some(Err(())) => return Ok(Found::Gone),
            None => {}
        }
    }
    Ok(Found::Unknown)
}

/// Reads `[offset, offset + size)` of a file of `file_size` bytes whose
/// block `idx` holds `block(idx)` (shorter than a block, or empty: zeros).
fn read_blocks<'a>(
    file_size: u64,
    bs: u64,
    offset: u64,
    size: u32,
    mut block: impl FnMut(u64) -> FsResult<&'a [u8]>,
) -> FsResult<Vec<u8>> {
    if offset >= file_size {
        return Ok(Vec::new());
    }
    let end = file_size.min(offset + size as u64);
    let mut out = vec![0u8; (end - offset) as usize];
    let mut pos = offset;
    while pos < end {
        let within = (pos % bs) as usize;
        let n = ((bs - pos % bs).min(end - pos)) as usize;
        let data = block(pos / bs)?;
        let at = (pos - offset) as usize;
        if within < data.len() {
            let m = n.min(data.len() - within);
            out[at..at + m].copy_from_slice(&data[within..within + m]);
        }
        pos += n as u64;
    }
    Ok(out)
}

/// Writes `src` at `within` into a block's bytes: a gap between the
/// block's end and `within` reads as zeros, and bytes are written once (no
/// zero fill under the new data). Growth stays within one block's size, so
/// a dirty block never holds more than `bs` bytes of memory however it was
/// written.
fn patch_block(b: &mut Vec<u8>, within: usize, src: &[u8], bs: usize) {
    let end = within + src.len();
    if end > b.capacity() {
        // Doubling amortizes appends; the cap keeps a block within `bs`.
        let want = b.capacity().saturating_mul(2).min(bs).max(end);
        b.reserve_exact(want - b.len());
    }
    if b.len() < within {
        b.resize(within, 0);
    }
    let overlap = b.len().min(end) - within;
    b[within..within + overlap].copy_from_slice(&src[..overlap]);
    b.extend_from_slice(&src[overlap..]);
}

/// `[offset, offset + size)` of a text, cut at its end.
fn slice_of(text: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = (offset as usize).min(text.len());
    let end = start.saturating_add(size as usize).min(text.len());
    &text[start..end]
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

fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > NAME_MAX {
        return err(libc::ENAMETOOLONG);
    }
    if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
        return err(libc::EINVAL);
    }
    Ok(())
}

fn unsafe_zeroed_statvfs() -> libc::statvfs {
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// A block's bytes, wherever they are.
enum BlockRef<'a> {
    Mem(&'a [u8]),
    Store(&'a [u8]),
    Hole,
}

impl<'a> BlockRef<'a> {
    fn bytes(&self) -> &'a [u8] {
        match self {
            BlockRef::Mem(b) | BlockRef::Store(b) => b,
            BlockRef::Hole => &[],
        }
    }
    fn to_vec(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }
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
