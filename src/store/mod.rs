//! The store engine: one file holding a copy-on-write B+Tree of byte keys and
//! values, every committed version of it, and data extents. It knows nothing
//! of files; `fs` gives its keys meaning.
//!
//! - [`Store::begin_write`] starts the one write transaction; its
//!   [`WriteTxn::commit`] makes a new version (id, time, cause).
//! - [`Store::snapshot`] opens any kept version for reading, without locks on
//!   the read path, while the writer works.
//! - [`retention`] decides which versions are kept; pages and extents that no
//!   kept version can see are reused ([`alloc`]).
//! - [`Store::fsck`] checks every reachable page of every kept version and
//!   the allocator's accounting.
//!
//! The on-disk format is written down in `format.rs`, `node.rs` and
//! `alloc.rs`; the commit protocol in `txn.rs`; `ARCHITECTURE.md` has both.

mod alloc;
pub mod backend;
mod error;
mod format;
mod fsck;
#[doc(hidden)]
pub mod fuzzing;
mod node;
mod open;
mod read;
pub mod retention;
mod txn;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::ops::RangeBounds;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;

pub use backend::{Backend, FileBackend, SimBackend, SplitMix64, WritePath};
pub use error::{StoreError, StoreResult};
pub use fsck::{FsckReport, Problem, Progress};
pub use node::{Extent, MAX_KEY};
pub use read::{Entry, Range};
pub use retention::Retention;
pub use txn::{Reserved, WriteTxn};

use alloc::{Allocator, Deadlists};
pub(crate) use format::PAGE_SIZE;
use format::{KIND_ALLOC, PAGE, Ptr, Slot, verify_run};
pub(crate) use open::slot_sector;
use open::write_slot;
use read::{Pages, Src, Verified};

/// The store file's name inside the store directory.
pub const STORE_FILE: &str = "zippy.store";
/// The largest value, inline or in an overflow run.
pub const MAX_VALUE: usize = 64 << 20;

/// The checksum an extent's bytes carry (xxh3-64), for callers that write
/// reserved extents themselves.
pub fn extent_checksum(data: &[u8]) -> u64 {
    format::checksum(data)
}

#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Virtual address space reserved for the read-only map: the largest the
    /// store file may grow to while open.
    pub map_size: u64,
    pub retention: Retention,
    /// How pages and extents are written to the store file.
    pub write_path: WritePath,
    /// Told (pages walked, pages in the store) while opening walks the store
    /// (after a crash), for a progress display.
    pub progress: Option<fn(u64, u64)>,
    /// Space kept allocated at the end of the store file that only commits
    /// which free space may use ([`WriteTxn::use_reserve`]): on a full disk
    /// deletes, a retention change and gc can still commit (ZFS's slop
    /// space, btrfs's global reserve).
    pub reserve: u64,
}

/// The reserve by default: room for the copied tree pages of a commit that
/// deletes tens of thousands of files.
pub const DEFAULT_RESERVE: u64 = 16 << 20;

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            map_size: 1 << 40,
            retention: Retention::default(),
            write_path: WritePath::default(),
            progress: None,
            reserve: DEFAULT_RESERVE,
        }
    }
}

/// A kept version, as listed by [`Store::versions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VersionInfo {
    pub id: u64,
    /// Unix time in nanoseconds.
    pub time: u64,
    pub cause: String,
    /// Keys put or deleted by this version's commit.
    pub changes: u64,
    /// Value and extent bytes written by this version's commit.
    pub bytes: u64,
    /// Bytes the layer above kept with the version ([`WriteTxn::tag`]);
    /// empty unless it set them.
    pub tag: Vec<u8>,
}

#[derive(Clone, Debug)]
pub(crate) struct VersionMeta {
    pub info: VersionInfo,
    pub data_root: Ptr,
}

/// Space accounting, in pages of 4 KiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreStats {
    pub file_bytes: u64,
    pub hwm_pages: u64,
    pub free_pages: u64,
    /// Pages only old kept versions (or open snapshots) can still see.
    pub retained_pages: u64,
    pub versions: usize,
}

/// State shared between the writer and readers; locked only briefly.
#[derive(Default)]
pub(crate) struct Shared {
    pub versions: BTreeMap<u64, VersionMeta>,
    /// Open snapshots per version.
    pub pins: BTreeMap<u64, usize>,
    /// Versions retention dropped while a snapshot still had them open.
    pub dropped_pinned: BTreeMap<u64, Ptr>,
    /// Versions whose last snapshot closed after retention dropped them: their
    /// space may now be free, which the next commit works out.
    pub released: Vec<u64>,
}

/// The writer's state between transactions.
pub(crate) struct WriterState {
    pub alloc: Allocator,
    pub dead: Deadlists,
    pub slot: Slot,
    pub poisoned: bool,
    /// Nodes of the data tree and of the system tree the last durable
    /// commit that edited each sealed: how much room the next commit leaves
    /// after its first run and after its data-tree nodes, so that what it
    /// writes forms one run (see `WriteTxn::alloc_pages`).
    pub last_nodes: [u64; 2],
}

pub struct Store {
    // Declared first so it is dropped (unmapped) before the lock file closes.
    backend: Box<dyn Backend>,
    verified: Verified,
    writer: Mutex<WriterState>,
    shared: Mutex<Shared>,
    opts: StoreOptions,
    path: Option<PathBuf>,
    opened: OpenReport,
    retention: Mutex<Retention>,
    /// The retention policy in force is kept in the store itself (see
    /// [`WriteTxn::set_retention`]), not given by the opener.
    policy_stored: std::sync::atomic::AtomicBool,
    /// A write outside the writer lock failed; the writer poisons itself
    /// when it next looks.
    poison_pending: std::sync::atomic::AtomicBool,
    _lock: Option<File>,
}

/// What opening a store had to do.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpenReport {
    /// A commit whose slot reached the disk but not all of its pages (a
    /// crash during its sync); the store opened at the commit before it.
    pub discarded_commit: Option<u64>,
    /// The store was not closed cleanly, so the free space was found by
    /// walking every kept version.
    pub rebuilt_allocator: bool,
}

impl Store {
    fn pages(&self) -> Pages<'_> {
        Pages {
            backend: &*self.backend,
            verified: &self.verified,
        }
    }

    /// Starts the write transaction, waiting for the current one to end.
    pub fn begin_write(&self) -> StoreResult<WriteTxn<'_>> {
        WriteTxn::begin(self)
    }

    /// A read-only view of a kept version, valid until dropped even if
    /// retention lets the version go meanwhile.
    pub fn snapshot(&self, version: u64) -> StoreResult<Snapshot<'_>> {
        let mut sh = self.shared.lock();
        let meta = sh
            .versions
            .get(&version)
            .ok_or(StoreError::NoSuchVersion(version))?;
        let root = meta.data_root;
        *sh.pins.entry(version).or_default() += 1;
        Ok(Snapshot {
            store: self,
            version,
            root,
        })
    }

    /// The newest version, or `None` for a store nothing was committed to.
    pub fn latest_version(&self) -> Option<u64> {
        self.shared.lock().versions.keys().next_back().copied()
    }

    /// A snapshot of the newest version (an empty view of an empty store).
    pub fn latest(&self) -> StoreResult<Snapshot<'_>> {
        // Found and pinned under one lock: between a look at the newest
        // version and its pin, a commit could make a newer one and the
        // retention policy let this one go (`keep-last 1`: every time).
        let mut sh = self.shared.lock();
        let newest = sh
            .versions
            .iter()
            .next_back()
            .map(|(&v, m)| (v, m.data_root));
        match newest {
            Some((version, root)) => {
                *sh.pins.entry(version).or_default() += 1;
                Ok(Snapshot {
                    store: self,
                    version,
                    root,
                })
            }
            None => Ok(Snapshot {
                store: self,
                version: 0,
                root: Ptr::NONE,
            }),
        }
    }

    /// Kept version `id`, if it is kept.
    pub fn version_info(&self, id: u64) -> Option<VersionInfo> {
        self.shared.lock().versions.get(&id).map(|m| m.info.clone())
    }

    /// Every kept version, oldest first.
    pub fn versions(&self) -> Vec<VersionInfo> {
        self.shared
            .lock()
            .versions
            .values()
            .map(|m| m.info.clone())
            .collect()
    }

    pub fn retention(&self) -> Retention {
        self.retention.lock().clone()
    }

    /// Whether the store uses more than the retention policy's space cap.
    pub fn over_cap(&self) -> bool {
        let cap = self.retention.lock().max_bytes;
        let st = self.stats();
        cap > 0 && (st.hwm_pages - st.free_pages) * PAGE > cap
    }

    /// Whether the retention policy in force was kept in the store (set by
    /// a commit), rather than given when it was opened.
    pub fn has_stored_policy(&self) -> bool {
        self.policy_stored
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records that the policy in force is now the one kept in the store.
    pub(crate) fn policy_kept(&self, policy: Retention) {
        *self.retention.lock() = policy;
        self.policy_stored
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Changes the retention policy for this process, from the next commit
    /// on (a commit's [`WriteTxn::set_retention`] also keeps it in the store).
    pub fn set_retention(&self, policy: Retention) {
        *self.retention.lock() = policy;
    }

    pub fn stats(&self) -> StoreStats {
        let w = self.writer.lock();
        StoreStats {
            file_bytes: self.backend.len(),
            hwm_pages: w.alloc.hwm(),
            free_pages: w.alloc.free_pages(),
            retained_pages: w.dead.pages(),
            versions: self.shared.lock().versions.len(),
        }
    }

    /// What opening the store had to do (recovery after a crash).
    pub fn open_report(&self) -> OpenReport {
        self.opened
    }

    /// Writes the bytes of an extent the current write transaction reserved
    /// ([`WriteTxn::reserve_extent`]); any thread may call it, and several
    /// at once. Nothing reads those pages until the transaction commits.
    pub fn write_reserved(&self, r: &Reserved, data: &[u8]) -> StoreResult<()> {
        self.write_reserved_many(&[(*r, data)])
    }

    /// [`Store::write_reserved`] of several extents: adjacent ones go to
    /// the file in one request.
    pub fn write_reserved_many(&self, writes: &[(Reserved, &[u8])]) -> StoreResult<()> {
        let mut at = Vec::with_capacity(writes.len());
        for (r, data) in writes {
            if data.len() as u64 != r.len {
                return Err(StoreError::ValueTooLong {
                    len: data.len(),
                    max: r.len as usize,
                });
            }
            at.push((r.page * PAGE, *data));
        }
        // SAFETY: each `r` is an extent the open write transaction allocated
        // from pages free at the last commit; no kept version or snapshot
        // references them, so no reader borrows them.
        let result = unsafe { self.backend.write_all(&at) };
        if result.is_err() {
            // As for any failed write: the page cache can no longer be trusted.
            self.writer_poison();
        }
        result
    }

    /// Starts writing the bytes of reserved extents `first` to `last` (a run
    /// the caller wrote, adjacent in the file) to the device without
    /// waiting: the commit's `fdatasync` then finds less left to do, and
    /// the disk works while the caller hashes and writes the next blocks.
    /// Only a hint; durability still comes from the commit.
    pub fn start_writeback(&self, first: &Reserved, last: &Reserved) {
        debug_assert!(first.page <= last.page, "a run goes forward");
        let from = first.page * PAGE;
        let to = last.page * PAGE + last.len;
        if to > from {
            self.backend.start_writeback(from, to - from);
        }
    }

    /// Stops every later write to the store, as a failed write does: for
    /// a caller whose own state can no longer be trusted. The store stays
    /// readable; reopening it recovers the last durable commit.
    pub fn poison(&self) {
        self.poison_pending
            .store(true, std::sync::atomic::Ordering::Release);
        self.writer_poison();
    }

    /// Whether a failed write (or [`Store::poison`]) stopped the writer.
    /// Waits for the write transaction, if one is open.
    pub fn is_poisoned(&self) -> bool {
        self.poison_pending
            .load(std::sync::atomic::Ordering::Acquire)
            || self.writer.lock().poisoned
    }

    fn writer_poison(&self) {
        if let Some(mut w) = self.writer.try_lock() {
            w.poisoned = true;
        } else {
            self.poison_pending
                .store(true, std::sync::atomic::Ordering::Release);
        }
    }

    /// The store file, for stores opened from a directory.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Checks the whole store; waits for the current write transaction.
    pub fn fsck(&self) -> StoreResult<FsckReport> {
        self.fsck_with_progress(&|_, _| {})
    }

    /// `fsck`, telling `progress` (pages checked, pages in the store) as it goes.
    pub fn fsck_with_progress(&self, progress: fsck::Progress<'_>) -> StoreResult<FsckReport> {
        let w = self.writer.lock();
        let sh = self.shared.lock();
        let mut roots: Vec<(u64, Ptr)> = sh
            .versions
            .values()
            .map(|m| (m.info.id, m.data_root))
            .collect();
        roots.extend(sh.dropped_pinned.iter().map(|(&v, &r)| (v, r)));
        drop(sh);
        roots.sort_unstable_by_key(|r| r.0);
        Ok(fsck::check(self.pages(), &w, &roots, Some(progress)))
    }

    /// Saves the allocator state so the next open need not walk the store,
    /// and gives unused space at the end of the file back to the filesystem.
    /// Dropping the store does the same, logging rather than returning errors.
    pub fn close(mut self) -> StoreResult<()> {
        let r = self.save_alloc_state();
        // Don't run it twice from Drop.
        self.writer.get_mut().poisoned = true;
        r
    }

    fn save_alloc_state(&mut self) -> StoreResult<()> {
        let backend = &*self.backend;
        let w = self.writer.get_mut();
        if w.poisoned {
            return Ok(());
        }
        w.alloc.trim_tail();
        // The run holding the state is allocated first so the state it saves
        // already counts it as used.
        let size = alloc::state_size(&w.alloc, &w.dead) + 16 * 2;
        let pages = (size as u64).div_ceil(PAGE);
        let start = w.alloc.alloc(pages);
        w.alloc.settle();
        let txn = w.slot.txn + 1;
        let mut buf = vec![0u8; (pages * PAGE) as usize];
        alloc::encode_state(&w.alloc, &w.dead, &mut buf);
        format::seal(&mut buf, KIND_ALLOC, 0, start, txn);
        let hwm = w.alloc.hwm();
        // The file keeps its reserve past the high-water mark, so a store
        // opened on a full disk can still make room.
        let keep = (hwm * PAGE).max(backend.len().min(hwm * PAGE + self.opts.reserve));
        let result = (|| {
            // SAFETY: the store is being closed (`&mut self`: no snapshot
            // is open); the tail past `hwm` and the run at `start` are free
            // pages that no kept version references.
            unsafe {
                if backend.len() != keep {
                    backend.set_len(keep)?;
                }
                backend.write_all(&[(start * PAGE, &buf)])?;
            }
            backend.sync()?;
            let slot = Slot {
                txn,
                hwm,
                alloc_page: start,
                alloc_pages: pages,
                ..w.slot
            };
            write_slot(backend, &slot)?;
            w.slot = slot;
            Ok(())
        })();
        if result.is_err() {
            w.poisoned = true;
        }
        result
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Err(e) = self.save_alloc_state() {
            tracing::warn!(
                "could not save allocator state at close ({e}); the next open rebuilds it"
            );
        }
    }
}

/// A read-only view of one version.
pub struct Snapshot<'s> {
    store: &'s Store,
    version: u64,
    root: Ptr,
}

impl<'s> Snapshot<'s> {
    /// The version this snapshot shows (0 for an empty store).
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn get(&self, key: &[u8]) -> StoreResult<Option<&'s [u8]>> {
        Ok(self.get_entry(key)?.map(|e| e.value))
    }

    pub fn get_entry(&self, key: &[u8]) -> StoreResult<Option<Entry<'s>>> {
        let src = self.src();
        match read::get_entry(&src, self.root, key)? {
            Some(e) => Ok(Some(src.resolve(e)?)),
            None => Ok(None),
        }
    }

    fn src(&self) -> Src<'s> {
        Src {
            pages: self.store.pages(),
            dirty: None,
        }
    }

    /// Entries with keys in `range`, in key order.
    pub fn range<'k, R: RangeBounds<&'k [u8]>>(&self, range: R) -> StoreResult<Range<'s>> {
        Range::new(
            self.src(),
            self.root,
            range.start_bound().map(|k| *k),
            range.end_bound().map(|k| *k),
        )
    }

    /// The bytes of an extent this version references.
    pub fn read_extent(&self, e: &Extent) -> StoreResult<&'s [u8]> {
        self.store.pages().extent(e, false)
    }
}

impl Drop for Snapshot<'_> {
    fn drop(&mut self) {
        self.store.unpin(self.version);
    }
}

impl Store {
    fn unpin(&self, version: u64) {
        if version == 0 {
            return;
        }
        let mut sh = self.shared.lock();
        if let Some(n) = sh.pins.get_mut(&version) {
            *n -= 1;
            if *n == 0 {
                sh.pins.remove(&version);
                if sh.dropped_pinned.remove(&version).is_some() {
                    sh.released.push(version);
                }
            }
        }
    }

    /// Kept version `version` (0: the empty view of a store nothing was
    /// committed to) held open for as long as the [`Pinned`] lives, by a
    /// holder that shares the store rather than borrowing it.
    pub fn pin(self: &std::sync::Arc<Self>, version: u64) -> StoreResult<Pinned> {
        let root = if version == 0 {
            Ptr::NONE
        } else {
            let snap = self.snapshot(version)?;
            let root = snap.root;
            // The pin the snapshot took stays with the `Pinned`.
            std::mem::forget(snap);
            root
        };
        Ok(Pinned {
            store: self.clone(),
            version,
            root,
        })
    }
}

impl Store {
    /// Keeps `snap`'s version open as a [`Pinned`]: its pin moves over, so
    /// a version retention let go meanwhile stays readable.
    pub fn pin_snapshot(self: &std::sync::Arc<Self>, snap: Snapshot<'_>) -> StoreResult<Pinned> {
        if !std::ptr::eq(snap.store, &**self) {
            return self.pin(snap.version);
        }
        let (version, root) = (snap.version, snap.root);
        std::mem::forget(snap);
        Ok(Pinned {
            store: self.clone(),
            version,
            root,
        })
    }
}

/// A version kept open by a holder that shares its store (see
/// [`Store::pin`]); its snapshots need no lookup of the version.
pub struct Pinned {
    store: std::sync::Arc<Store>,
    version: u64,
    root: Ptr,
}

impl Pinned {
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn store(&self) -> &std::sync::Arc<Store> {
        &self.store
    }

    /// A snapshot of the pinned version (valid even if retention let it
    /// go meanwhile: the pin keeps its pages).
    pub fn snapshot(&self) -> Snapshot<'_> {
        if self.version != 0 {
            *self
                .store
                .shared
                .lock()
                .pins
                .entry(self.version)
                .or_default() += 1;
        }
        Snapshot {
            store: &self.store,
            version: self.version,
            root: self.root,
        }
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        self.store.unpin(self.version);
    }
}

const _: () = assert!(PAGE_SIZE == 4096);
