//! Keeping the kernel's caches true when files change from elsewhere
//! (sync), with the kernel's writeback cache on.
//!
//! With that cache the kernel owns a cached regular file's size and times:
//! it takes neither from the daemon's attributes (`fuse_get_cache_mask` in
//! the kernel). So after a remote change the kernel is told three things:
//! drop the pages and attributes (INVAL_INODE), grow the size if the file
//! grew (a STORE of the file's last byte at its end: a store of no bytes
//! grows nothing), and let go of the inode when nothing holds it (PRUNE),
//! so the next lookup takes the new size and times. A file some program
//! holds open cannot be let go of: it keeps the kernel's size and times
//! until its last close, and is let go of then (SEMANTICS.md, "Sync").
//!
//! Dirty pages are the other danger. A page the kernel read before a remote
//! change and a program then partly wrote carries old bytes around the new
//! ones; written back after the change, it would undo part of it. So the
//! files a change touches are fenced first ([`Fs::fence`]); the kernel's
//! pages of them are then dropped (dirty ones written back, and met as a
//! conflict), and any page the kernel could have read again and a program
//! could write before the change is applied trips the fence: a read or an
//! attribute request while the file is open for writing (every write after
//! INVAL_INODE asks for attributes first), or an open for writing.
//! [`Fs::apply_remote`] refuses a change over a tripped fence, and the
//! caller starts again.

use super::*;

impl Fs {
    /// Fences `inodes` (and no others) until the next [`Fs::apply_remote`]
    /// (see the module comment). Arm it before telling the kernel to drop
    /// their pages.
    pub fn fence(&self, inodes: &[u64]) {
        for sh in self.shards.iter() {
            sh.lock().fence.clear();
        }
        for &ino in inodes {
            self.shard(ino).fence.insert(ino, false);
        }
    }

    /// The kernel asked for `ino`'s data or attributes, or opened it for
    /// writing: a fenced file trips its fence if it is being opened for
    /// writing or is open for writing (see the module comment). Programs
    /// that only read never hold a change back.
    pub(super) fn trip(sh: &mut Shard, ino: u64, opening_to_write: bool) {
        if !sh.fence.contains_key(&ino) {
            return;
        }
        if opening_to_write || sh.writers.values().any(|&w| w == ino) {
            sh.fence.insert(ino, true);
        }
    }

    /// Whether a fence tripped; clears every fence (all shards held).
    pub(super) fn fences_tripped(shards: &mut [MutexGuard<'_, Shard>]) -> bool {
        let mut tripped = false;
        for sh in shards.iter_mut() {
            tripped |= sh.fence.values().any(|&t| t);
            sh.fence.clear();
        }
        tripped
    }

    /// After a change from elsewhere was applied: the kernel drops what it
    /// cached of `inodes` and `entries`, takes the new size of grown
    /// files, and lets go of the regular files nothing holds; those held
    /// are let go of at their last close ([`Fs::prune_released`]).
    pub fn changed_elsewhere(&self, inodes: &[u64], entries: &[(u64, Vec<u8>)]) {
        let Some(k) = self.kernel.get() else {
            return;
        };
        k.invalidate(inodes, entries);
        let mut free = Vec::new();
        for &ino in inodes {
            // A file the kernel holds no reference to has no inode there.
            if self.shard(ino).refs.get(&ino).is_none_or(|&n| n == 0) {
                continue;
            }
            let Ok(i) = self.getattr(ino) else {
                continue;
            };
            if i.kind != Kind::File {
                continue;
            }
            if let Some(at) = i.size.checked_sub(1)
                && let Ok(last) = self.read(ino, at, 1)
                && let Some(&last) = last.first()
            {
                k.grow(ino, i.size, last);
            }
            let mut sh = self.shard(ino);
            if sh.open.get(&ino).is_some_and(|&n| n > 0) {
                sh.stale.insert(ino);
            } else {
                free.push(ino);
            }
        }
        k.prune(&free);
    }

    /// `ino`'s last handle closed: if the kernel may still hold a size or
    /// times from before a change from elsewhere, it lets go of the inode
    /// soon (the kernel still holds it until the close is answered).
    pub(super) fn closed_stale(&self, sh: &mut Shard, ino: u64) {
        if sh.stale.remove(&ino) {
            self.prune_due.lock().push((ino, false));
        }
    }

    /// Lets go of files closed since they changed from elsewhere. Each is
    /// let go of twice, at two calls: the first may come before the kernel
    /// had the answer to the close and still held the inode.
    pub fn prune_released(&self) {
        let due: Vec<u64> = {
            let mut due = self.prune_due.lock();
            if due.is_empty() {
                return;
            }
            let now: Vec<u64> = due.iter().map(|&(ino, _)| ino).collect();
            due.retain_mut(|(_, again)| !std::mem::replace(again, true));
            now
        };
        if let Some(k) = self.kernel.get() {
            k.prune(&due);
        }
    }
}
