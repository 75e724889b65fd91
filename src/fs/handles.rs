//! Open files and the kernel's references to inodes, and when an inode
//! without a name may finally go.

use super::*;

impl Fs {
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
        if write {
            Self::trip(&mut sh, ino, true);
        }
        *sh.open.entry(ino).or_default() += 1;
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        if write {
            sh.writers.insert(fh, ino);
        }
        Ok(fh)
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
            self.closed_stale(&mut sh, ino);
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
    pub(super) fn drop_if_unheld(&self, sh: &mut Shard, ino: u64) -> FsResult<()> {
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
    pub(super) fn forget_inode(&self, sh: &mut Shard, ino: u64) {
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
        if !is_history(ino) {
            self.shard(ino).writers.remove(&fh);
        }
        self.release(ino)
    }
}
