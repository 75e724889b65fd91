//! The write transaction: copy-on-write edits of the data tree, extents, and
//! the commit that turns them into a version.
//!
//! ## Commit protocol
//!
//! 1. Queued extent and overflow writes are sent (not synced).
//! 2. The edited data-tree nodes are sealed bottom-up: each gets its page
//!    (edited nodes carry stand-in ids until now), its checksum and birth,
//!    and its parent records all three, so the root's reference names the
//!    whole new tree (a Merkle tree). Pages are handed out continuing the
//!    txn's last allocation where that space is free, and a new run starts
//!    where the nodes after it will fit too, so a small commit's extent and
//!    nodes form one stretch of the file (`alloc_pages`).
//! 3. The version record (id, time, cause, data root) goes into the system
//!    tree; retention picks the versions to drop, whose records are deleted;
//!    the system tree is sealed the same way.
//! 4. The nodes (contiguous pages coalesced) and the commit slot of this
//!    txn's parity (the older slot; one 512-byte sector) are written in one
//!    batch, then one `fdatasync`. The commit is durable when it returns.
//! 5. Only now is space freed: system pages the new system tree replaced,
//!    and deadlist ranges that no kept version can see any more.
//!
//! Every write goes to pages that were free at the previous commit, so the
//! previous commit stays whole until this one is durable. After a crash,
//! open takes the newest valid slot and checks that everything its commit
//! wrote is on disk: it follows the references from the roots into every
//! node, overflow run and extent born in that txn and compares checksums
//! (`fsck::verify_commit`; a few pages, not the store). If the slot reached
//! the disk but some of its pages did not, the slot is not used and the
//! store opens at the previous commit, which is whole by the argument above.
//! A torn slot fails its own checksum: same outcome. Because references name
//! checksums, a stale page left at the same place by an earlier, discarded
//! attempt of the same txn number is told apart too.
//!
//! A clean close writes the allocator state, syncs, then writes its slot and
//! syncs again; its slot is trusted without the check.
//!
//! Any failure from step 1 on poisons the store: the kernel may have dropped
//! dirty pages it could not write, so nothing cached can be trusted until the
//! store is reopened (and recovered from its last durable commit). The one
//! exception is running out of space while step 2 gives the nodes their
//! pages: no node has been written yet, so the commit just fails, the
//! allocator is rolled back, and the store stays usable.

use std::collections::HashMap;
use std::ops::RangeBounds;
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::MutexGuard;

use crate::store::alloc::Dead;
use crate::store::error::{StoreError, StoreResult};
use crate::store::format::{self, HEADER_SIZE, KIND_OVERFLOW, PAGE, PAGE_SIZE, Ptr, Slot, put_u64};
use crate::store::node::{
    CAPACITY, Extent, MAX_INLINE_ENTRY, MAX_KEY, NewVal, Node, UNDERFULL, ValRef, leaf_entry_size,
};
use crate::store::read::{self, Entry, Range, Src, overflow_pages};
use crate::store::{
    MAX_VALUE, Store, VersionInfo, VersionMeta, WriterState, retention, slot_sector,
};

/// Queued extent and overflow writes are sent to the disk once they hold this much.
const QUEUE_BYTES: usize = 16 << 20;
/// The longest cause string kept with a version.
pub const MAX_CAUSE: usize = 512;
/// Edited nodes have ids from here up until they are sealed: far above any
/// page of a store (the map is at most 2^48 bytes, 2^36 pages).
const TEMP_BASE: u64 = 1 << 62;
/// Before any commit: a small commit's path in each tree (a leaf, a branch
/// and the root of a store a few levels deep), the room its first run asks
/// for (see `WriterState::last_nodes`).
pub(crate) const FIRST_NODES_GUESS: u64 = 3;
/// A txn that has allocated no more than this may go on at the file's tail
/// even while holes are free, to keep a small commit in one stretch; a
/// larger one fills holes first.
const SMALL_TXN_PAGES: u64 = 64;
/// The file grows by at least this much at a time.
const GROW_MIN: u64 = 1 << 20;
const GROW_MAX: u64 = 256 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tree {
    Data = 0,
    System = 1,
}

enum Op<'v> {
    Put {
        val: NewVal<'v>,
        extent: Option<Extent>,
    },
    Delete,
}

/// What a replaced or deleted entry held that may need freeing.
#[derive(Clone, Copy)]
struct Old {
    overflow: Option<(Ptr, u64)>,
    extent: Option<Extent>,
}

enum Outcome {
    Done,
    /// The node overflowed; these right siblings (with their separators) follow it.
    Split(Vec<(Box<[u8]>, u64)>),
    Underfull,
}

/// An extent a write transaction allocated for another thread to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reserved {
    pub page: u64,
    pub len: u64,
    txn: u64,
}

impl Reserved {
    /// Whether `next` starts on the page right after this extent.
    pub fn adjoins(&self, next: &Reserved) -> bool {
        next.page == self.page + self.len.div_ceil(PAGE)
    }
}

pub struct WriteTxn<'s> {
    store: &'s Store,
    w: MutexGuard<'s, WriterState>,
    txn: u64,
    roots: [Ptr; 2],
    dirty: HashMap<u64, Node>,
    /// Data pages this txn replaced that older versions may still see.
    data_freed: Vec<Dead>,
    /// System-tree pages this txn replaced: free once it commits.
    sys_freed: Vec<(u64, u64)>,
    /// Runs born in this txn and dropped again: free at commit, after the
    /// queued writes that may still target them have finished.
    free_at_commit: Vec<(u64, u64)>,
    queue: Vec<(u64, Vec<u8>)>,
    queued_bytes: usize,
    extents_written: HashMap<u64, Extent>,
    extents_freed: HashMap<u64, Extent>,
    /// Extents reserved for other threads to write: first page → length.
    reserved: HashMap<u64, u64>,
    changes: u64,
    bytes: u64,
    /// An edit failed half-way; the tree may be inconsistent, so only abort is allowed.
    broken: bool,
    done: bool,
    /// The stand-in id of the next edited node (see `new_node`).
    next_temp: u64,
    /// The page after the last run this txn allocated: the next run goes
    /// there if it is free (see `alloc_pages`).
    hint: Option<u64>,
    /// Pages this txn allocated so far.
    allocated: u64,
    /// The commit failed for want of space while placing nodes, before it
    /// wrote any (see `seal_tree`).
    out_of_space_before_writing: bool,
    /// Nodes sealed per tree, for `WriterState::last_nodes` once durable.
    sealed_nodes: [u64; 2],
    /// May allocate from the reserve (see `StoreOptions::reserve`).
    use_reserve: bool,
    /// Kept versions to let go at commit beyond what retention drops,
    /// oldest first (never the newest).
    let_go: usize,
    /// Kept versions to let go at commit by id.
    let_go_ids: Vec<u64>,
    /// A retention policy to keep in the store from this commit on.
    policy: Option<crate::store::Retention>,
}

impl<'s> WriteTxn<'s> {
    pub(crate) fn begin(store: &'s Store) -> StoreResult<Self> {
        let mut w = store.writer.lock();
        if store
            .poison_pending
            .load(std::sync::atomic::Ordering::Acquire)
        {
            w.poisoned = true;
        }
        if w.poisoned {
            return Err(StoreError::Poisoned);
        }
        let txn = w.slot.txn + 1;
        let roots = [w.slot.data_root, w.slot.system_root];
        Ok(WriteTxn {
            store,
            w,
            txn,
            roots,
            dirty: HashMap::new(),
            data_freed: Vec::new(),
            sys_freed: Vec::new(),
            free_at_commit: Vec::new(),
            queue: Vec::new(),
            queued_bytes: 0,
            extents_written: HashMap::new(),
            extents_freed: HashMap::new(),
            reserved: HashMap::new(),
            changes: 0,
            bytes: 0,
            broken: false,
            done: false,
            next_temp: TEMP_BASE,
            hint: None,
            allocated: 0,
            out_of_space_before_writing: false,
            sealed_nodes: [0; 2],
            use_reserve: false,
            let_go: 0,
            let_go_ids: Vec::new(),
            policy: None,
        })
    }

    /// Lets this transaction allocate from the store's reserve: for
    /// commits that make room (deletes, gc, retention changes, letting old
    /// versions go), which must succeed on a full disk.
    pub fn use_reserve(&mut self) {
        self.use_reserve = true;
    }

    /// Lets the `n` oldest kept versions go at commit, beyond what the
    /// retention policy drops; the newest is always kept.
    pub fn let_oldest_go(&mut self, n: usize) {
        self.let_go = n;
    }

    /// Lets these kept versions go at commit, whatever retention says.
    pub fn let_go_of(&mut self, ids: Vec<u64>) {
        self.let_go_ids = ids;
    }

    /// Keeps `policy` in the store: from this commit on it decides what is
    /// kept, for this process and every later open.
    pub fn set_retention(&mut self, policy: crate::store::Retention) {
        self.policy = Some(policy);
    }

    /// The id the version made by this transaction's commit will have.
    pub fn version(&self) -> u64 {
        self.txn
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> StoreResult<()> {
        self.guarded(|t| t.put_entry(Tree::Data, key, value, None))
    }

    /// Puts a value that references `extent`, which must have been written
    /// by this transaction ([`WriteTxn::write_extent`]) or be the extent of an
    /// entry this transaction replaced or deleted (it moves). An extent is
    /// referenced by one entry at a time; it is freed when no kept version
    /// references it any more.
    pub fn put_with_extent(&mut self, key: &[u8], value: &[u8], extent: Extent) -> StoreResult<()> {
        self.guarded(|t| t.put_entry(Tree::Data, key, value, Some(extent)))
    }

    /// Deletes a key; returns whether it was there.
    pub fn delete(&mut self, key: &[u8]) -> StoreResult<bool> {
        self.guarded(|t| {
            if read::get_entry(&t.src(), t.roots[Tree::Data as usize], key)?.is_none() {
                return Ok(false);
            }
            if let Some(old) = t.modify(Tree::Data, key, Op::Delete)? {
                t.release_value(Tree::Data, old, None);
            }
            t.changes += 1;
            Ok(true)
        })
    }

    pub fn get(&mut self, key: &[u8]) -> StoreResult<Option<Entry<'_>>> {
        self.flush_queue()?;
        let src = self.src();
        match read::get_entry(&src, self.roots[Tree::Data as usize], key)? {
            Some(e) => Ok(Some(src.resolve(e)?)),
            None => Ok(None),
        }
    }

    /// Entries with keys in `range`, in key order, as this transaction sees them.
    pub fn range<'k, R: RangeBounds<&'k [u8]>>(&mut self, range: R) -> StoreResult<Range<'_>> {
        self.flush_queue()?;
        Range::new(
            self.src(),
            self.roots[Tree::Data as usize],
            range.start_bound().map(|k| *k),
            range.end_bound().map(|k| *k),
        )
    }

    /// Allocates an extent and queues `data` to be written into it; the
    /// writes of many extents are in flight together (io_uring) and finish
    /// before the commit.
    pub fn write_extent(&mut self, data: &[u8]) -> StoreResult<Extent> {
        if data.is_empty() || data.len() > MAX_VALUE {
            return Err(StoreError::ValueTooLong {
                len: data.len(),
                max: MAX_VALUE,
            });
        }
        self.guarded(|t| {
            let len = data.len() as u64;
            let pages = len.div_ceil(PAGE);
            let page = t.alloc_pages(pages)?;
            let e = Extent {
                page,
                len,
                birth: t.txn,
                sum: format::checksum(data),
            };
            t.queue_write(page * PAGE, data.to_vec())?;
            t.extents_written.insert(page, e);
            t.bytes += len;
            Ok(e)
        })
    }

    /// Allocates an extent of `len` bytes for another thread to fill with
    /// [`Store::write_reserved`]; [`WriteTxn::put_with_reserved`] then
    /// references it. The caller must see every such write return before it
    /// commits. A reservation never referenced is freed at commit.
    pub fn reserve_extent(&mut self, len: u64) -> StoreResult<Reserved> {
        if len == 0 || len > MAX_VALUE as u64 {
            return Err(StoreError::ValueTooLong {
                len: len as usize,
                max: MAX_VALUE,
            });
        }
        self.guarded(|t| {
            let page = t.alloc_pages(len.div_ceil(PAGE))?;
            t.reserved.insert(page, len);
            Ok(Reserved {
                page,
                len,
                txn: t.txn,
            })
        })
    }

    /// Puts a value referencing a reserved extent whose bytes were written
    /// and whose checksum ([`crate::store::extent_checksum`]) is `sum`.
    pub fn put_with_reserved(
        &mut self,
        key: &[u8],
        value: &[u8],
        r: Reserved,
        sum: u64,
    ) -> StoreResult<()> {
        self.guarded(|t| {
            if r.txn != t.txn || t.reserved.remove(&r.page) != Some(r.len) {
                return Err(StoreError::ForeignExtent(r.page));
            }
            let e = Extent {
                page: r.page,
                len: r.len,
                birth: t.txn,
                sum,
            };
            t.extents_written.insert(r.page, e);
            t.bytes += r.len;
            t.put_entry(Tree::Data, key, value, Some(e))
        })
    }

    pub fn read_extent(&mut self, e: &Extent) -> StoreResult<&[u8]> {
        self.flush_queue()?;
        self.store.pages().extent(e, false)
    }

    /// Drops every change of this transaction.
    pub fn abort(self) {}

    /// Makes the changes a new version and returns it.
    pub fn commit(mut self, cause: &str) -> StoreResult<VersionInfo> {
        if self.broken {
            return Err(StoreError::Io {
                context: "commit".into(),
                source: std::io::Error::other("an edit in this transaction failed; abort it"),
            });
        }
        let mut end = cause.len().min(MAX_CAUSE);
        while !cause.is_char_boundary(end) {
            end -= 1;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let r = self.commit_inner(&cause[..end], now);
        if r.is_err() && !self.out_of_space_before_writing {
            self.w.poisoned = true;
        }
        r
    }

    fn commit_inner(&mut self, cause: &str, now: u64) -> StoreResult<VersionInfo> {
        let txn = self.txn;
        // Phase timings, logged at debug level.
        let t0 = std::time::Instant::now();
        self.flush_queue()?;
        for (_, e) in std::mem::take(&mut self.extents_written) {
            self.free_at_commit.push((e.page, e.pages()));
        }
        for (page, len) in std::mem::take(&mut self.reserved) {
            self.free_at_commit.push((page, len.div_ceil(PAGE)));
        }
        for (_, e) in std::mem::take(&mut self.extents_freed) {
            if e.birth >= txn {
                self.free_at_commit.push((e.page, e.pages()));
            } else {
                self.data_freed.push(Dead {
                    birth: e.birth,
                    start: e.page,
                    len: e.pages(),
                });
            }
        }
        for (s, l) in std::mem::take(&mut self.free_at_commit) {
            self.w.alloc.free(s, l);
        }

        // Seal the data tree bottom-up: each parent records its children's
        // checksums, so the root's reference covers the whole new tree.
        let mut sealed = Vec::with_capacity(self.dirty.len());
        let room = self.w.last_nodes[Tree::System as usize];
        let data_root = self.seal_tree(Tree::Data, room, &mut sealed)?;

        // The version record, and retention.
        let info = VersionInfo {
            id: txn,
            time: now,
            cause: cause.to_string(),
            changes: self.changes,
            bytes: self.bytes,
        };
        let meta = VersionMeta {
            info: info.clone(),
            data_root,
        };
        self.put_entry(
            Tree::System,
            &version_key(txn),
            &encode_version(&meta),
            None,
        )?;
        let mut times: Vec<(u64, u64)> = {
            let sh = self.store.shared.lock();
            sh.versions
                .values()
                .map(|m| (m.info.id, m.info.time))
                .collect()
        };
        times.push((txn, now));
        if let Some(p) = &self.policy {
            let text = p.to_text();
            self.put_entry(Tree::System, POLICY_KEY, text.as_bytes(), None)?;
        }
        let policy = self
            .policy
            .clone()
            .unwrap_or_else(|| self.store.retention());
        let mut keep = retention::select(&times, now, &policy);
        // Versions let go to make room (on a full disk), oldest first.
        for id in &self.let_go_ids {
            if *id != txn {
                keep.remove(id);
            }
        }
        for _ in 0..self.let_go {
            match keep.iter().next() {
                Some(&oldest) if oldest != txn => keep.remove(&oldest),
                _ => break,
            };
        }
        // Over the space cap, the oldest kept version goes too (one per
        // commit: what it frees is known only once it is gone).
        let used = (self.w.alloc.hwm() - self.w.alloc.free_pages()) * PAGE;
        if policy.max_bytes > 0
            && used > policy.max_bytes
            && let Some(&oldest) = keep.iter().next()
            && oldest != txn
        {
            keep.remove(&oldest);
        }
        let dropped: Vec<u64> = times
            .iter()
            .map(|&(id, _)| id)
            .filter(|id| !keep.contains(id))
            .collect();
        for &d in &dropped {
            self.modify(Tree::System, &version_key(d), Op::Delete)?;
        }
        let t1 = std::time::Instant::now();
        let system_root = self.seal_tree(Tree::System, 0, &mut sealed)?;
        debug_assert!(self.dirty.is_empty(), "edited nodes no tree references");
        self.dirty.clear();

        // One batch: the nodes (sorted, so the backend can coalesce adjacent
        // pages) and the slot; one sync.
        sealed.sort_unstable_by_key(|(id, _)| *id);
        let slot = Slot {
            txn,
            version: txn,
            time: now,
            data_root,
            system_root,
            hwm: self.w.alloc.hwm(),
            alloc_page: 0,
            alloc_pages: 0,
        };
        if self
            .store
            .poison_pending
            .load(std::sync::atomic::Ordering::Acquire)
        {
            // A reserved extent failed to write: this commit would point at it.
            return Err(StoreError::Poisoned);
        }
        let (slot_at, sector) = slot_sector(&slot);
        let mut writes: Vec<(u64, &[u8])> = sealed
            .iter()
            .map(|(id, page)| (id * PAGE, &page[..]))
            .collect();
        writes.push((slot_at, &sector));
        let t2 = std::time::Instant::now();
        // SAFETY: every sealed page was allocated by this txn from pages free
        // at the last commit, which nothing references; the slot sector is
        // only read with `read_copy`.
        unsafe { self.store.backend.write_all(&writes)? };
        for (id, _) in &sealed {
            self.store.verified.set(*id, true);
        }
        let t3 = std::time::Instant::now();
        self.store.backend.sync()?;
        let t4 = std::time::Instant::now();
        let pages = sealed.len();

        // Durable. Publish the version and free what no kept version sees.
        self.done = true;
        if let Some(p) = self.policy.take() {
            self.store.policy_kept(p);
        }
        self.w.slot = slot;
        // A tree this commit did not edit (an empty commit's data tree)
        // keeps the estimate it had.
        for (last, &n) in self.w.last_nodes.iter_mut().zip(&self.sealed_nodes) {
            if n > 0 {
                *last = n;
            }
        }
        let mut removed = Vec::new();
        let kept = {
            let mut sh = self.store.shared.lock();
            sh.versions.insert(txn, meta);
            for d in dropped {
                if let Some(m) = sh.versions.remove(&d) {
                    if sh.pins.contains_key(&d) {
                        sh.dropped_pinned.insert(d, m.data_root);
                    } else {
                        removed.push(d);
                    }
                }
            }
            removed.append(&mut sh.released);
            let mut kept: std::collections::BTreeSet<u64> = sh.versions.keys().copied().collect();
            kept.extend(sh.pins.keys().copied());
            kept
        };
        let w = &mut *self.w;
        for (s, l) in std::mem::take(&mut self.sys_freed) {
            w.alloc.free(s, l);
        }
        w.dead.add(txn, std::mem::take(&mut self.data_freed));
        let mut touched = vec![(txn - 1, txn)];
        for d in removed {
            let succ = kept.range(d + 1..).next().copied().unwrap_or(txn);
            touched.push((d, succ));
        }
        let mut out = Vec::new();
        w.dead.release(&kept, Some(&touched), &mut out);
        for (s, l) in out {
            w.alloc.free(s, l);
        }
        w.alloc.settle();
        self.shrink_if_worth_it();
        tracing::debug!(
            version = txn,
            pages,
            data = ?(t1 - t0),
            system = ?(t2 - t1),
            write = ?(t3 - t2),
            sync = ?(t4 - t3),
            free = ?t4.elapsed(),
            "commit"
        );
        Ok(info)
    }

    /// Gives a large free tail back to the filesystem (keeping the reserve).
    fn shrink_if_worth_it(&mut self) {
        let hwm = self.w.alloc.trim_tail() * PAGE + self.store.opts.reserve;
        let len = self.store.backend.len();
        if len > hwm + GROW_MAX.max(len / 4) {
            let target = hwm.div_ceil(GROW_MIN) * GROW_MIN;
            // SAFETY: everything past the trimmed tail is free: no kept
            // version or open snapshot references it, so no borrow reaches it.
            if let Err(e) = unsafe { self.store.backend.set_len(target) } {
                tracing::warn!("could not shrink the store file: {e}");
            }
        }
    }

    // ---- internals ----

    /// Gives every edited node of `tree` its page, continuing what this txn
    /// wrote before where the space is free, and seals them; returns the root.
    ///
    /// No node is written before both trees are sealed, so if the disk (or
    /// the map) is full here, nothing this commit wrote is referenced by
    /// anything durable and the allocator is rolled back when the txn
    /// drops: the commit fails without poisoning the store, and a later one
    /// (after space is freed) can succeed.
    ///
    /// `room` is how many pages will follow this tree's (the system tree's
    /// nodes, after the data tree's): the first node goes where all of them
    /// fit if it cannot continue the txn's last run.
    fn seal_tree(
        &mut self,
        tree: Tree,
        room: u64,
        out: &mut Vec<(u64, Box<[u8]>)>,
    ) -> StoreResult<Ptr> {
        let root = self.roots[tree as usize];
        let mut left = self.count_dirty(root);
        self.sealed_nodes[tree as usize] = left;
        let root = self.seal(root, out, &mut left, room).inspect_err(|e| {
            if e.is_no_space() {
                self.out_of_space_before_writing = true;
            }
        })?;
        debug_assert_eq!(left, 0, "every edited node was sealed");
        self.roots[tree as usize] = root;
        Ok(root)
    }

    /// The edited nodes reachable from `ptr`.
    fn count_dirty(&self, ptr: Ptr) -> u64 {
        match self.dirty.get(&ptr.page) {
            None => 0,
            Some(n) if n.is_leaf() => 1,
            Some(n) => {
                1 + (0..n.len())
                    .map(|i| self.count_dirty(n.child(i)))
                    .sum::<u64>()
            }
        }
    }

    /// Encodes every edited node under `ptr`, children first, each into a
    /// page of its own (`left` counts the nodes still to place), and returns
    /// the reference to it with its final page and checksum.
    fn seal(
        &mut self,
        ptr: Ptr,
        out: &mut Vec<(u64, Box<[u8]>)>,
        left: &mut u64,
        room: u64,
    ) -> StoreResult<Ptr> {
        let Some(mut node) = self.dirty.remove(&ptr.page) else {
            if ptr.page >= TEMP_BASE {
                // An edited node that went missing: never write its
                // stand-in id into a page.
                return Err(StoreError::corrupt(
                    ptr.page,
                    "an edited node has no content at commit",
                ));
            }
            return Ok(ptr);
        };
        if !node.is_leaf() {
            for i in 0..node.len() {
                let child = self.seal(node.child(i), out, left, room)?;
                node.set_child(i, child);
            }
        }
        *left = left.saturating_sub(1);
        let at = self.alloc_pages_with_room(1, *left + room)?;
        let mut page: Box<[u8]> = vec![0u8; PAGE_SIZE].into_boxed_slice();
        let (kind, count) = node.encode(&mut page);
        let sealed = format::seal(&mut page, kind, count, at, self.txn);
        out.push((at, page));
        Ok(sealed)
    }

    fn src(&self) -> Src<'_> {
        Src {
            pages: self.store.pages(),
            dirty: Some(&self.dirty),
        }
    }

    /// Runs an edit; if it fails, the transaction can only be aborted.
    fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> StoreResult<T>) -> StoreResult<T> {
        if self.broken {
            return Err(StoreError::Io {
                context: "write".into(),
                source: std::io::Error::other(
                    "an earlier edit in this transaction failed; abort it",
                ),
            });
        }
        let r = f(self);
        if r.is_err() {
            self.broken = true;
        }
        r
    }

    /// Allocates `n` pages, right after this txn's previous allocation when
    /// that space is free, so that what one commit writes (extents, overflow
    /// runs, nodes) lies in one stretch of the file: the kernel writes it
    /// back in few large requests, and an `fsync` of a small change waits
    /// for two writes (the stretch and the slot) instead of one per node.
    ///
    /// A run that cannot continue the last one starts where possible in a
    /// free range with room after it for the nodes the last commit sealed
    /// (at most `SMALL_TXN_PAGES`), so that the runs that follow (a small
    /// commit's nodes) continue it.
    fn alloc_pages(&mut self, n: u64) -> StoreResult<u64> {
        let room = self
            .w
            .last_nodes
            .iter()
            .sum::<u64>()
            .clamp(1, SMALL_TXN_PAGES);
        self.alloc_pages_with_room(n, room)
    }

    /// `alloc_pages`, where a new run should leave `room` pages free after it.
    fn alloc_pages_with_room(&mut self, n: u64, room: u64) -> StoreResult<u64> {
        let grow = self.allocated + n <= SMALL_TXN_PAGES;
        let start = match self.hint {
            Some(h) if self.w.alloc.alloc_at(h, n, grow) => h,
            _ => self.w.alloc.alloc_with_room(n, room),
        };
        self.hint = Some(start + n);
        self.allocated += n;
        let need = (start + n) * PAGE;
        let len = self.store.backend.len();
        // An ordinary commit leaves the last `reserve` bytes of the file
        // alone: it grows the file to keep them free past what it uses,
        // and fails for want of space if the disk cannot give them.
        let reserve = if self.use_reserve {
            0
        } else {
            self.store.opts.reserve
        };
        if need + reserve > len {
            let step = (len / 8).clamp(GROW_MIN, GROW_MAX);
            let target = (need + reserve).max(len + step).div_ceil(GROW_MIN) * GROW_MIN;
            let need = need + reserve;
            let target = target.min(self.store.opts.map_size).max(need);
            // SAFETY: growing only (`need > len`, and `target >= need`):
            // no borrow reaches past the current length.
            match unsafe { self.store.backend.set_len(target) } {
                // No room for the usual step ahead: take just what is needed.
                // SAFETY: as above, `need > len`.
                Err(StoreError::NoSpace | StoreError::Quota) if target > need => unsafe {
                    self.store.backend.set_len(need)?
                },
                r => r?,
            }
        }
        for p in start..start + n {
            self.store.verified.set(p, false);
        }
        Ok(start)
    }

    fn queue_write(&mut self, off: u64, buf: Vec<u8>) -> StoreResult<()> {
        self.queued_bytes += buf.len();
        self.queue.push((off, buf));
        if self.queued_bytes >= QUEUE_BYTES {
            self.flush_queue()?;
        }
        Ok(())
    }

    fn flush_queue(&mut self) -> StoreResult<()> {
        if self.queue.is_empty() {
            return Ok(());
        }
        let writes: Vec<(u64, &[u8])> =
            self.queue.iter().map(|(o, b)| (*o, b.as_slice())).collect();
        // SAFETY: queued writes go to extents and overflow runs this txn
        // allocated from pages free at the last commit: nothing references
        // them, so no reader borrows them.
        let r = unsafe { self.store.backend.write_all(&writes) };
        self.queue.clear();
        self.queued_bytes = 0;
        if r.is_err() {
            self.w.poisoned = true;
            self.broken = true;
        }
        r
    }

    fn put_entry(
        &mut self,
        tree: Tree,
        key: &[u8],
        value: &[u8],
        extent: Option<Extent>,
    ) -> StoreResult<()> {
        if key.len() > MAX_KEY {
            return Err(StoreError::KeyTooLong {
                len: key.len(),
                max: MAX_KEY,
            });
        }
        if value.len() > MAX_VALUE {
            return Err(StoreError::ValueTooLong {
                len: value.len(),
                max: MAX_VALUE,
            });
        }
        if let Some(x) = extent {
            let ours = self.extents_written.get(&x.page) == Some(&x)
                || self.extents_freed.get(&x.page) == Some(&x);
            if !ours {
                let current = read::get_entry(&self.src(), self.roots[tree as usize], key)?
                    .and_then(|e| e.extent);
                if current != Some(x) {
                    return Err(StoreError::ForeignExtent(x.page));
                }
            }
        }
        let val = if leaf_entry_size(key.len(), NewVal::Inline(value), extent.is_some())
            <= MAX_INLINE_ENTRY
        {
            NewVal::Inline(value)
        } else {
            let len = value.len() as u64;
            let pages = overflow_pages(len);
            let page = self.alloc_pages(pages)?;
            let mut buf = vec![0u8; (pages * PAGE) as usize];
            buf[HEADER_SIZE..HEADER_SIZE + value.len()].copy_from_slice(value);
            let run = format::seal(&mut buf, KIND_OVERFLOW, 0, page, self.txn);
            self.queue_write(page * PAGE, buf)?;
            NewVal::Overflow { run, len }
        };
        let old = self.modify(tree, key, Op::Put { val, extent })?;
        if let Some(old) = old {
            self.release_value(tree, old, extent);
        }
        if let Some(x) = extent {
            self.extents_written.remove(&x.page);
            self.extents_freed.remove(&x.page);
        }
        if tree == Tree::Data {
            self.changes += 1;
            self.bytes += value.len() as u64;
        }
        Ok(())
    }

    /// Frees what a replaced or deleted entry held, except `keep`.
    fn release_value(&mut self, tree: Tree, old: Old, keep: Option<Extent>) {
        if let Some((run, len)) = old.overflow {
            self.release(tree, run.page, overflow_pages(len), run.birth);
        }
        if let Some(x) = old.extent
            && Some(x) != keep
        {
            self.extents_freed.insert(x.page, x);
        }
    }

    /// A run of pages the tree no longer references.
    fn release(&mut self, tree: Tree, start: u64, len: u64, birth: u64) {
        if birth >= self.txn {
            self.free_at_commit.push((start, len));
        } else if tree == Tree::Data {
            self.data_freed.push(Dead { birth, start, len });
        } else {
            self.sys_freed.push((start, len));
        }
    }

    /// A node edited in this txn and now dropped: it has no page yet.
    fn drop_dirty(&mut self, id: u64) {
        self.dirty.remove(&id);
    }

    /// The writable copy of node `id` (itself, if already edited in this txn).
    fn make_dirty(&mut self, tree: Tree, ptr: Ptr) -> StoreResult<u64> {
        if self.dirty.contains_key(&ptr.page) {
            return Ok(ptr.page);
        }
        let node = Node::from_page(self.store.pages().node(ptr)?);
        self.release(tree, ptr.page, 1, ptr.birth);
        Ok(self.new_node(node))
    }

    /// An edited node gets a stand-in id (above any page) until the commit
    /// gives every edited node its page, all in one run.
    fn new_node(&mut self, node: Node) -> u64 {
        let id = self.next_temp;
        self.next_temp += 1;
        self.dirty.insert(id, node);
        id
    }

    fn modify(&mut self, tree: Tree, key: &[u8], op: Op<'_>) -> StoreResult<Option<Old>> {
        let t = tree as usize;
        if self.roots[t].is_none() {
            if let Op::Put { val, extent } = op {
                let mut leaf = Node::new(true);
                leaf.insert_leaf(0, key, val, extent);
                let page = self.new_node(leaf);
                self.roots[t] = self.fresh(page);
            }
            return Ok(None);
        }
        let (page, out, old) = self.modify_rec(tree, self.roots[t], key, op, 0)?;
        let mut root = self.fresh(page);
        if let Outcome::Split(list) = out {
            root = self.grow_root(root, list)?;
        }
        // A root branch with one child gives way to the child; an empty root
        // leaf leaves an empty tree.
        loop {
            match self.dirty.get(&root.page) {
                Some(n) if !n.is_leaf() && n.len() == 1 => {
                    let child = n.child(0);
                    self.drop_dirty(root.page);
                    root = child;
                }
                Some(n) if n.is_leaf() && n.len() == 0 => {
                    self.drop_dirty(root.page);
                    root = Ptr::NONE;
                    break;
                }
                _ => break,
            }
        }
        self.roots[t] = root;
        Ok(old)
    }

    /// A reference to a node edited in this txn; its checksum is filled in
    /// when the node is sealed at commit.
    fn fresh(&self, page: u64) -> Ptr {
        Ptr {
            page,
            birth: self.txn,
            sum: 0,
        }
    }

    fn grow_root(&mut self, left: Ptr, list: Vec<(Box<[u8]>, u64)>) -> StoreResult<Ptr> {
        let mut node = Node::new(false);
        node.insert_branch(0, b"", left);
        for (i, (key, page)) in list.into_iter().enumerate() {
            node.insert_branch(i + 1, &key, self.fresh(page));
        }
        let root = self.new_node(node);
        match self.check_size(root)? {
            Outcome::Split(more) => self.grow_root(self.fresh(root), more),
            _ => Ok(self.fresh(root)),
        }
    }

    fn modify_rec(
        &mut self,
        tree: Tree,
        ptr: Ptr,
        key: &[u8],
        op: Op<'_>,
        depth: usize,
    ) -> StoreResult<(u64, Outcome, Option<Old>)> {
        if depth > 32 {
            return Err(StoreError::corrupt(
                ptr.page,
                "tree deeper than any real tree",
            ));
        }
        let id = self.make_dirty(tree, ptr)?;
        let node = self.dirty.get_mut(&id).expect("make_dirty stores the node");
        let old = if node.is_leaf() {
            let pos = node.search(key);
            let old = pos.ok().map(|i| {
                let e = node.entry(i);
                Old {
                    overflow: match e.val {
                        ValRef::Overflow { run, len } => Some((run, len)),
                        ValRef::Inline(_) => None,
                    },
                    extent: e.extent,
                }
            });
            match (op, pos) {
                (Op::Put { val, extent }, Ok(i)) => node.replace_leaf(i, key, val, extent),
                (Op::Put { val, extent }, Err(i)) => node.insert_leaf(i, key, val, extent),
                (Op::Delete, Ok(i)) => node.remove(i),
                (Op::Delete, Err(_)) => {}
            }
            old
        } else {
            let i = node.child_index(key);
            let child = node.child(i);
            let (nc, out, old) = self.modify_rec(tree, child, key, op, depth + 1)?;
            self.after_child(tree, id, i, nc, out)?;
            old
        };
        let out = self.check_size(id)?;
        Ok((id, out, old))
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        self.dirty.get_mut(&id).expect("an edited node")
    }

    fn after_child(
        &mut self,
        tree: Tree,
        parent: u64,
        i: usize,
        child: u64,
        out: Outcome,
    ) -> StoreResult<()> {
        let child = self.fresh(child);
        let fresh: Vec<(Box<[u8]>, Ptr)> = match &out {
            Outcome::Split(list) => list
                .iter()
                .map(|(key, page)| (key.clone(), self.fresh(*page)))
                .collect(),
            _ => Vec::new(),
        };
        let node = self.node_mut(parent);
        node.set_child(i, child);
        for (j, (key, ptr)) in fresh.into_iter().enumerate() {
            node.insert_branch(i + 1 + j, &key, ptr);
        }
        match out {
            Outcome::Underfull => self.rebalance(tree, parent, i),
            _ => Ok(()),
        }
    }

    /// Child `i` of `parent` is under-full: merge it with a sibling, or even
    /// out the two.
    fn rebalance(&mut self, tree: Tree, parent: u64, i: usize) -> StoreResult<()> {
        if self.node_mut(parent).len() < 2 {
            return Ok(());
        }
        let (l, r) = if i > 0 { (i - 1, i) } else { (0, 1) };
        // For the error below: edited nodes have stand-in ids.
        let right_page = self.node_mut(parent).child(r).page;
        for j in [l, r] {
            let c = self.node_mut(parent).child(j);
            let nc = self.make_dirty(tree, c)?;
            let fresh = self.fresh(nc);
            self.node_mut(parent).set_child(j, fresh);
        }
        let (lid, rid, sep) = {
            let p = self.node_mut(parent);
            (p.child(l).page, p.child(r).page, p.key(r).to_vec())
        };
        let mut left = self.dirty.remove(&lid).expect("dirty left");
        let mut right = self.dirty.remove(&rid).expect("dirty right");
        if left.is_leaf() != right.is_leaf() {
            self.dirty.insert(lid, left);
            self.dirty.insert(rid, right);
            return Err(StoreError::corrupt(
                right_page,
                "siblings of different kinds",
            ));
        }
        if !right.is_leaf() {
            // The right node's first key stands for the separator above it.
            right.set_key(0, &sep);
        }
        left.extend(&right);
        if left.size() <= CAPACITY {
            self.dirty.insert(lid, left);
            self.node_mut(parent).remove(r);
            return Ok(());
        }
        let k = balance_point(&left);
        let mut right = left.split_off(k);
        let new_sep = right.key(0).to_vec();
        if !right.is_leaf() {
            right.set_key(0, b"");
        }
        self.dirty.insert(lid, left);
        self.dirty.insert(rid, right);
        self.node_mut(parent).set_key(r, &new_sep);
        Ok(())
    }

    /// Splits an overfull node, or reports it under-full.
    fn check_size(&mut self, id: u64) -> StoreResult<Outcome> {
        let size = self.dirty[&id].size();
        if size < UNDERFULL {
            return Ok(Outcome::Underfull);
        }
        if size <= CAPACITY {
            return Ok(Outcome::Done);
        }
        let node = self.dirty.remove(&id).expect("dirty node");
        let mut pieces = split_to_fit(node);
        let (_, first) = pieces.remove(0);
        self.dirty.insert(id, first);
        let mut out = Vec::with_capacity(pieces.len());
        for (sep, node) in pieces {
            out.push((sep, self.new_node(node)));
        }
        Ok(Outcome::Split(out))
    }
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.w.alloc.rollback();
        }
    }
}

/// The index that splits a node's entries into two halves of about equal
/// bytes, each non-empty.
fn balance_point(node: &Node) -> usize {
    let n = node.len();
    let total = node.size();
    let mut acc = 0;
    for i in 0..n {
        let s = node.entry_size(i);
        if acc + s / 2 >= total / 2 {
            return i.clamp(1, n - 1);
        }
        acc += s;
    }
    n - 1
}

/// Splits a node into pieces that each fit a page; every piece after the
/// first comes with its separator key.
fn split_to_fit(node: Node) -> Vec<(Box<[u8]>, Node)> {
    let mut out = vec![(Box::<[u8]>::default(), node)];
    let mut i = 0;
    while i < out.len() {
        if out[i].1.size() <= CAPACITY || out[i].1.len() < 2 {
            i += 1;
            continue;
        }
        let k = balance_point(&out[i].1);
        let mut right = out[i].1.split_off(k);
        let sep: Box<[u8]> = right.key(0).into();
        if !right.is_leaf() {
            right.set_key(0, b"");
        }
        out.insert(i + 1, (sep, right));
    }
    out
}

/// The system-tree key of the retention policy, whose value is its text
/// form (`Retention::to_text`). Absent in stores whose policy was never set
/// by a commit.
const POLICY_KEY: &[u8] = b"p";

/// The retention policy kept in the store, if one was set.
pub(crate) fn load_policy(
    pages: crate::store::read::Pages<'_>,
    system_root: Ptr,
) -> StoreResult<Option<crate::store::Retention>> {
    let src = Src { pages, dirty: None };
    let Some(e) = read::get_entry(&src, system_root, POLICY_KEY)? else {
        return Ok(None);
    };
    let value = src.resolve(e)?.value;
    let text = std::str::from_utf8(value)
        .map_err(|_| StoreError::corrupt(system_root.page, "retention policy is not text"))?;
    crate::store::Retention::parse(text)
        .map(Some)
        .map_err(|e| StoreError::corrupt(system_root.page, format!("retention policy: {e}")))
}

pub(crate) fn version_key(id: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'v';
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

/// Version record, the value under `v` + big-endian id in the system tree:
///
/// ```text
/// off size field
///   0    8 time, unix nanoseconds
///   8   24 data root: page, birth, checksum
///  32    8 keys put or deleted
///  40    8 value and extent bytes written
///  48    2 cause length
///  50    c cause, UTF-8
/// ```
pub(crate) fn encode_version(m: &VersionMeta) -> Vec<u8> {
    let mut b = vec![0u8; 50 + m.info.cause.len()];
    put_u64(&mut b, 0, m.info.time);
    put_u64(&mut b, 8, m.data_root.page);
    put_u64(&mut b, 16, m.data_root.birth);
    put_u64(&mut b, 24, m.data_root.sum);
    put_u64(&mut b, 32, m.info.changes);
    put_u64(&mut b, 40, m.info.bytes);
    format::put_u16(&mut b, 48, m.info.cause.len() as u16);
    b[50..].copy_from_slice(m.info.cause.as_bytes());
    b
}

pub(crate) fn decode_version(id: u64, b: &[u8], page: u64) -> StoreResult<VersionMeta> {
    let bad = || StoreError::corrupt(page, format!("malformed record of version {id}"));
    if b.len() < 50 {
        return Err(bad());
    }
    let clen = format::get_u16(b, 48) as usize;
    let cause = b.get(50..50 + clen).ok_or_else(bad)?;
    Ok(VersionMeta {
        info: VersionInfo {
            id,
            time: format::get_u64(b, 0),
            cause: String::from_utf8_lossy(cause).into_owned(),
            changes: format::get_u64(b, 32),
            bytes: format::get_u64(b, 40),
        },
        data_root: Ptr {
            page: format::get_u64(b, 8),
            birth: format::get_u64(b, 16),
            sum: format::get_u64(b, 24),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_extent_adjoins_the_page_after_its_last_partial_page() {
        let r = |page, len| Reserved { page, len, txn: 1 };
        // 5,000 bytes take pages 10 and 11.
        assert!(r(10, 5000).adjoins(&r(12, 4096)));
        assert!(!r(10, 5000).adjoins(&r(11, 4096)));
        assert!(!r(10, 5000).adjoins(&r(13, 4096)));
        // Two whole pages end on page 11 too.
        assert!(r(10, 8192).adjoins(&r(12, 1)));
        assert!(!r(10, 8193).adjoins(&r(12, 1)));
    }
}
