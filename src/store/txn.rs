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

mod commit;
mod cow;

/// Queued extent and overflow writes are sent to the disk once they hold this much.
const QUEUE_BYTES: usize = 16 << 20;
/// The most bytes of a version's tag.
pub const MAX_TAG: usize = 255;

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
    /// Kept with the version ([`WriteTxn::tag`]).
    tag: Vec<u8>,
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
            tag: Vec::new(),
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

    /// Bytes the version this transaction makes keeps beside its cause,
    /// for the layer above (at most [`MAX_TAG`]; longer is cut).
    pub fn tag(&mut self, tag: &[u8]) {
        self.tag = tag[..tag.len().min(MAX_TAG)].to_vec();
    }

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
}

impl Drop for WriteTxn<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.w.alloc.rollback();
        }
    }
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
/// 50+c   1 tag length (absent in records written before tags: none)
/// 51+c   t tag
/// ```
pub(crate) fn encode_version(m: &VersionMeta) -> Vec<u8> {
    let c = m.info.cause.len();
    let mut b = vec![0u8; 50 + c];
    put_u64(&mut b, 0, m.info.time);
    put_u64(&mut b, 8, m.data_root.page);
    put_u64(&mut b, 16, m.data_root.birth);
    put_u64(&mut b, 24, m.data_root.sum);
    put_u64(&mut b, 32, m.info.changes);
    put_u64(&mut b, 40, m.info.bytes);
    format::put_u16(&mut b, 48, m.info.cause.len() as u16);
    b[50..].copy_from_slice(m.info.cause.as_bytes());
    if !m.info.tag.is_empty() {
        let t = &m.info.tag[..m.info.tag.len().min(MAX_TAG)];
        b.push(t.len() as u8);
        b.extend_from_slice(t);
    }
    b
}

pub(crate) fn decode_version(id: u64, b: &[u8], page: u64) -> StoreResult<VersionMeta> {
    let bad = || StoreError::corrupt(page, format!("malformed record of version {id}"));
    if b.len() < 50 {
        return Err(bad());
    }
    let clen = format::get_u16(b, 48) as usize;
    let cause = b.get(50..50 + clen).ok_or_else(bad)?;
    let tag = match b.get(50 + clen) {
        None => &[][..],
        Some(&t) => b.get(51 + clen..51 + clen + t as usize).ok_or_else(bad)?,
    };
    Ok(VersionMeta {
        info: VersionInfo {
            id,
            time: format::get_u64(b, 0),
            cause: String::from_utf8_lossy(cause).into_owned(),
            changes: format::get_u64(b, 32),
            bytes: format::get_u64(b, 40),
            tag: tag.to_vec(),
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
    fn a_version_record_keeps_its_tag_and_one_written_before_tags_reads_as_none() {
        let meta = |tag: &[u8]| VersionMeta {
            info: VersionInfo {
                id: 7,
                time: 1,
                cause: "flush".into(),
                changes: 2,
                bytes: 3,
                tag: tag.to_vec(),
            },
            data_root: Ptr {
                page: 4,
                birth: 5,
                sum: 6,
            },
        };
        let tagged = encode_version(&meta(b"origin"));
        assert_eq!(decode_version(7, &tagged, 0).unwrap().info.tag, b"origin");
        let untagged = encode_version(&meta(b""));
        assert_eq!(untagged.len(), 50 + 5, "no tag: the record as before tags");
        let old = decode_version(7, &untagged, 0).unwrap();
        assert_eq!(old.info.tag, b"");
        assert_eq!(old.info.cause, "flush");
        // A tag length past the record's end is corrupt, not a panic.
        let mut short = tagged.clone();
        short.truncate(tagged.len() - 1);
        assert!(decode_version(7, &short, 0).is_err());
    }

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
