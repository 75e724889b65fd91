//! File data: read, write, truncate, fallocate and seeking data and holes;
//! dirty blocks held in the shard until a commit.

use super::*;

impl Fs {
    pub fn read(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        if is_history(ino) {
            return self.history_read(ino, offset, size);
        }
        let mut sh = self.shard(ino);
        Self::trip(&mut sh, ino, false);
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
        if data.is_empty() {
            // POSIX: writing nothing to a regular file has no other result
            // (not even a size past the end).
            return Ok(0);
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
    pub(super) fn before_dirty(&self, adding: u64) -> FsResult<()> {
        let dirty = self.dirty_bytes.load(Ordering::Relaxed);
        if dirty > 0 && dirty + adding > self.opts.dirty_limit {
            self.commit("dirty limit")?;
        }
        Ok(())
    }

    pub(super) fn after_dirty(&self) {
        if self.dirty_bytes.load(Ordering::Relaxed) > self.opts.dirty_limit / 2 {
            self.flush.request();
        }
    }

    /// Cuts or extends a file's data to `size` bytes.
    pub(super) fn resize(
        &self,
        sh: &mut Shard,
        snap: &Snapshot<'_>,
        i: &Inode,
        size: u64,
    ) -> FsResult<()> {
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

    pub(super) fn sub_dirty(&self, n: u64) {
        let _ = self
            .dirty_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
    }

    pub(super) fn put_block(&self, sh: &mut Shard, ino: u64, idx: u64, data: Option<Vec<u8>>) {
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
}

/// Reads `[offset, offset + size)` of a file of `file_size` bytes whose
/// block `idx` holds `block(idx)` (shorter than a block, or empty: zeros).
pub(super) fn read_blocks<'a>(
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
pub(super) fn patch_block(b: &mut Vec<u8>, within: usize, src: &[u8], bs: usize) {
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
pub(super) fn slice_of(text: &[u8], offset: u64, size: u32) -> &[u8] {
    let start = (offset as usize).min(text.len());
    let end = start.saturating_add(size as usize).min(text.len());
    &text[start..end]
}
