//! Space: what `statfs` reports, the room the store has left, and the
//! space promised by `fallocate`: the blocks a file was given room for and
//! has not filled yet, so that writing them later cannot fail for want of
//! space, as on a local filesystem.
//!
//! A copy-on-write store cannot set pages aside for a block before its
//! data exists (the data goes to new pages at commit), so the promise is
//! kept as an account: each promised block counts a whole block of space
//! against everything else. Writes into a promised block are let through
//! without a space check; every other write is refused (ENOSPC) when it
//! would leave less room than is promised; the block leaves the promise
//! when it is full, punched, cut off by a truncate, or its file is
//! deleted. Promises live as long as the mount: they are not in the store.
//!
//! A block stays promised while partly written, so that rewriting its
//! committed part (a copy, in this store) is covered too; the account errs
//! on the strict side (a partly written block counts both its dirty bytes
//! and its promise).

use std::collections::BTreeMap;

use super::*;
use crate::store::Snapshot;

/// Block indexes of one file, as disjoint, non-adjacent ranges
/// (start → end, end exclusive), so that one large `fallocate` is one entry.
#[derive(Default, Debug, Clone, PartialEq)]
pub(super) struct Blocks(BTreeMap<u64, u64>);

impl Blocks {
    /// How many blocks.
    pub fn count(&self) -> u64 {
        self.0.iter().map(|(a, b)| b - a).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, idx: u64) -> bool {
        self.0
            .range(..=idx)
            .next_back()
            .is_some_and(|(_, &end)| idx < end)
    }

    /// Adds `start..end`; returns how many blocks were not there before.
    pub fn insert(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let before = self.count_in(start, end);
        let (mut a, mut b) = (start, end);
        // Swallow every range that overlaps or touches [a, b).
        if let Some((&s, &e)) = self.0.range(..=a).next_back()
            && e >= a
        {
            a = s;
            b = b.max(e);
        }
        let touching: Vec<u64> = self.0.range(a..=b).map(|(&s, _)| s).collect();
        for s in touching {
            if let Some(e) = self.0.remove(&s) {
                b = b.max(e);
            }
        }
        self.0.insert(a, b);
        (end - start) - before
    }

    /// Removes `start..end`; returns how many blocks were there.
    pub fn remove(&mut self, start: u64, end: u64) -> u64 {
        if start >= end {
            return 0;
        }
        let removed = self.count_in(start, end);
        if removed == 0 {
            return 0;
        }
        let first = self.first_from(start);
        let hit: Vec<(u64, u64)> = self.0.range(first..end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in hit {
            self.0.remove(&s);
            if s < start {
                self.0.insert(s, start);
            }
            if e > end {
                self.0.insert(end, e);
            }
        }
        removed
    }

    /// Removes every block of `other`.
    pub fn remove_all_of(&mut self, other: &Blocks) {
        for (s, e) in other.ranges() {
            self.remove(s, e);
        }
    }

    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
    }

    /// Where the ranges that may reach `start` or past it begin: the start
    /// of the range holding `start`, or `start`.
    fn first_from(&self, start: u64) -> u64 {
        self.0
            .range(..=start)
            .next_back()
            .filter(|(_, e)| **e > start)
            .map_or(start, |(&s, _)| s)
    }

    /// How many of `start..end` are in the set.
    fn count_in(&self, start: u64, end: u64) -> u64 {
        let first = self.first_from(start);
        self.0
            .range(first..end)
            .map(|(&s, &e)| e.min(end).saturating_sub(s.max(start)))
            .sum()
    }
}

/// The `statvfs` of the filesystem holding `path`, if it answers.
pub fn host_statvfs(path: &std::path::Path) -> Option<libc::statvfs> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct of integers, for which all-zero is valid.
    let mut v: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `v` a valid out-pointer.
    (unsafe { libc::statvfs(c.as_ptr(), &mut v) } == 0).then_some(v)
}

/// Bytes the store takes that old versions will not give back.
#[cfg(test)]
fn test_used(st: &crate::store::StoreStats) -> u64 {
    (st.hwm_pages - st.free_pages - st.retained_pages) * 4096
}

impl Fs {
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
    pub(super) fn host_statvfs(&self) -> Option<libc::statvfs> {
        host_statvfs(self.store_dir.as_ref()?)
    }

    /// Bytes promised to files by `fallocate` and not yet filled.
    pub fn promised_bytes(&self) -> u64 {
        self.promised.load(Ordering::Relaxed)
    }

    /// Bytes the store could take now, dirty data and promises aside: the
    /// disk's free space, the store's free pages and what old versions
    /// hold (they give way to new data), less the reserve. `None` when the
    /// store's disk is unknown (no store directory).
    fn room_now(&self) -> Option<u64> {
        let v = self.host_statvfs()?;
        let stats = self.store.stats();
        let disk = v.f_bavail.saturating_mul(v.f_frsize.max(1));
        let store = (stats.free_pages + stats.retained_pages).saturating_mul(4096);
        let room = disk
            .saturating_add(store)
            .saturating_sub(self.opts.store.reserve);
        #[cfg(test)]
        let room = match self.room_cap.load(Ordering::Relaxed) {
            u64::MAX => room,
            disk => disk
                .saturating_sub(test_used(&stats))
                .saturating_sub(self.opts.store.reserve),
        };
        Some(room)
    }

    /// Makes the store's disk look `bytes` short of full, from now on.
    #[cfg(test)]
    pub(crate) fn cap_room(&self, bytes: u64) {
        let disk = test_used(&self.store.stats()) + self.opts.store.reserve + bytes;
        self.room_cap.store(disk, Ordering::Relaxed);
        self.refresh_room();
    }

    /// Measures the room again (after a commit, or before refusing).
    pub(super) fn refresh_room(&self) {
        self.room
            .store(self.room_now().unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Whether `unpromised` more bytes of data and `new_promise` more
    /// bytes of promise fit beside the dirty data and the promises held.
    /// Data is counted with a 1/32 margin for the tree pages that index it.
    fn fits(&self, unpromised: u64, new_promise: u64) -> bool {
        let room = self.room.load(Ordering::Relaxed);
        if room == u64::MAX {
            return true;
        }
        let data = self
            .dirty_bytes
            .load(Ordering::Relaxed)
            .saturating_add(unpromised);
        let promise = self.promised_bytes().saturating_add(new_promise);
        let need = data
            .saturating_add(data / 32)
            .saturating_add(promise)
            .saturating_add(promise / 32);
        need <= room
    }

    /// While anything is promised, a write that does not go into promised
    /// blocks must leave room for the promises: refused with ENOSPC at once
    /// (as a local filesystem refuses a write whose blocks it cannot
    /// allocate) rather than taking space a `fallocate` was granted.
    pub(super) fn admit_write(&self, ino: u64, offset: u64, end: u64) -> FsResult<()> {
        if self.promised_bytes() == 0 {
            return Ok(());
        }
        let need = |fs: &Self| -> u64 {
            let sh = fs.shard(ino);
            let bs = fs.block_size;
            let promised = sh.promises.get(&ino);
            (offset / bs..end.div_ceil(bs))
                .filter(|&idx| !promised.is_some_and(|p| p.contains(idx)))
                .map(|idx| {
                    // A block not yet dirty is copied whole when written.
                    let n = end.min((idx + 1) * bs) - offset.max(idx * bs);
                    match sh.delta.blocks.get(&(ino, idx)) {
                        Some(Some(_)) => n,
                        _ => bs,
                    }
                })
                .sum()
        };
        let n = need(self);
        if n == 0 || self.fits(n, 0) {
            return Ok(());
        }
        // The room measured at the last commit may be stale (deletes since).
        self.refresh_room();
        if self.fits(need(self), 0) {
            return Ok(());
        }
        err(libc::ENOSPC)
    }

    /// Promises blocks `first..end` of `ino` that are not full now: room
    /// for them is counted from here on, or ENOSPC if there is none.
    /// The caller refreshed the room just before.
    pub(super) fn promise(
        &self,
        sh: &mut Shard,
        snap: &Snapshot<'_>,
        i: &Inode,
        first: u64,
        end: u64,
    ) -> FsResult<()> {
        let bs = self.block_size;
        let ino = i.ino;
        let mut add = Blocks::default();
        let old = sh.promises.get(&ino);
        // Blocks past the end of file are holes; those before it are
        // looked at one by one (a sparse file being allocated).
        let in_file = i.size.div_ceil(bs).clamp(first, end);
        for idx in first..in_file {
            if !old.is_some_and(|p| p.contains(idx))
                && (self.block_in(sh, snap, ino, idx)?.bytes().len() as u64) < bs
            {
                add.insert(idx, idx + 1);
            }
        }
        add.insert(in_file, end);
        if let Some(p) = old {
            add.remove_all_of(p);
        }
        let bytes = add.count().saturating_mul(bs);
        if bytes == 0 {
            return Ok(());
        }
        if !self.fits(0, bytes) {
            return err(libc::ENOSPC);
        }
        let p = sh.promises.entry(ino).or_default();
        for (s, e) in add.ranges() {
            p.insert(s, e);
        }
        self.promised.fetch_add(bytes, Ordering::Relaxed);
        Ok(())
    }

    /// Blocks of `ino` from `first..last` (inclusive) that writes made
    /// full leave the promise.
    pub(super) fn fill_promise(&self, sh: &mut Shard, ino: u64, first: u64, last: u64) {
        let bs = self.block_size;
        let Some(p) = sh.promises.get_mut(&ino) else {
            return;
        };
        let mut gone = 0;
        for idx in first..=last {
            if p.contains(idx)
                && matches!(sh.delta.blocks.get(&(ino, idx)), Some(Some(b)) if b.len() as u64 == bs)
            {
                gone += p.remove(idx, idx + 1);
            }
        }
        if p.is_empty() {
            sh.promises.remove(&ino);
        }
        self.unpromise(gone);
    }

    /// Blocks `first..end` of `ino` leave the promise (punched, cut off,
    /// deleted).
    pub(super) fn drop_promise(&self, sh: &mut Shard, ino: u64, first: u64, end: u64) {
        let Some(p) = sh.promises.get_mut(&ino) else {
            return;
        };
        let gone = p.remove(first, end);
        if p.is_empty() {
            sh.promises.remove(&ino);
        }
        self.unpromise(gone);
    }

    fn unpromise(&self, blocks: u64) {
        let bytes = blocks.saturating_mul(self.block_size);
        let _ = self
            .promised
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(bytes))
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn ranges_merge_and_split() {
        let mut b = Blocks::default();
        assert_eq!(b.insert(0, 10), 10);
        assert_eq!(b.insert(10, 20), 10);
        assert_eq!(b.0.len(), 1, "adjacent ranges are one");
        assert_eq!(b.insert(5, 25), 5);
        assert_eq!(b.remove(7, 8), 1);
        assert_eq!(b.0.len(), 2);
        assert!(!b.contains(7) && b.contains(6) && b.contains(8));
        assert_eq!(b.remove(0, 100), 24);
        assert!(b.is_empty());
    }

    proptest! {
        /// The ranges hold exactly the blocks a plain set would, with the
        /// counts each call returns.
        #[test]
        fn ranges_agree_with_a_set(ops in prop::collection::vec((any::<bool>(), 0u64..64, 0u64..16), 0..60)) {
            let mut b = Blocks::default();
            let mut model = BTreeSet::new();
            for (add, start, len) in ops {
                let end = start + len;
                if add {
                    let n = (start..end).filter(|i| model.insert(*i)).count();
                    prop_assert_eq!(b.insert(start, end), n as u64);
                } else {
                    let n = (start..end).filter(|i| model.remove(i)).count();
                    prop_assert_eq!(b.remove(start, end), n as u64);
                }
                prop_assert_eq!(b.count(), model.len() as u64);
                for i in 0..80 {
                    prop_assert_eq!(b.contains(i), model.contains(&i), "block {}", i);
                }
                // Disjoint and not adjacent.
                let v: Vec<(u64, u64)> = b.0.iter().map(|(&s, &e)| (s, e)).collect();
                for w in v.windows(2) {
                    prop_assert!(w[0].1 < w[1].0, "{:?}", v);
                }
                prop_assert!(v.iter().all(|(s, e)| s < e));
            }
        }
    }
}
