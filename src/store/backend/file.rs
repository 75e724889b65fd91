//! The real store file: reads through one read-only mmap of a large virtual
//! range (so growing the file never moves the map), writes in batches through
//! io_uring (plain `pwrite` where io_uring is unavailable), `fdatasync` for
//! durability and `fallocate` to grow, so a full disk is an error at growth
//! time rather than a SIGBUS later.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};

use io_uring::{IoUring, opcode, types};
use memmap2::{Mmap, MmapOptions};
use parking_lot::Mutex;

use super::Backend;
use crate::store::error::{StoreError, StoreResult};

/// Entries in the write ring: how many page runs are in flight at once.
const RING_DEPTH: u32 = 128;
/// io_uring takes a u32 length; larger buffers are split.
const MAX_WRITE: usize = 1 << 30;

pub struct FileBackend {
    file: File,
    map: Mmap,
    map_size: u64,
    len: AtomicU64,
    ring: Mutex<Option<IoUring>>,
}

impl FileBackend {
    /// Maps `map_size` bytes of `file` (which may be shorter: only the part
    /// below its length is ever touched).
    pub fn new(file: File, map_size: u64) -> StoreResult<Self> {
        let len = file
            .metadata()
            .map_err(|e| StoreError::io("stat store file", e))?
            .len();
        if len > map_size {
            return Err(StoreError::MapFull { map_size });
        }
        // SAFETY: the mapping is read-only and shared. Bytes past the end of the
        // file are never read (every read is checked against `len`), and bytes a
        // reader borrows are never rewritten while borrowed (copy-on-write, see
        // the module docs of `backend`), so no reference sees its bytes change.
        let map = unsafe { MmapOptions::new().len(map_size as usize).map(&file) }
            .map_err(|e| StoreError::io("map store file", e))?;
        let ring = match IoUring::new(RING_DEPTH) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::warn!("io_uring unavailable ({e}); store writes use pwrite");
                None
            }
        };
        Ok(FileBackend {
            file,
            map,
            map_size,
            len: AtomicU64::new(len),
            ring: Mutex::new(ring),
        })
    }

    fn write_uring(&self, ring: &mut IoUring, writes: &[(u64, &[u8])]) -> StoreResult<()> {
        // Split large buffers so each submission fits io_uring's u32 length.
        let mut ops: Vec<(u64, &[u8])> = Vec::with_capacity(writes.len());
        for &(off, buf) in writes {
            for (i, chunk) in buf.chunks(MAX_WRITE).enumerate() {
                ops.push((off + (i * MAX_WRITE) as u64, chunk));
            }
        }
        let fd = types::Fd(self.file.as_raw_fd());
        for batch in ops.chunks(RING_DEPTH as usize) {
            for (i, &(off, buf)) in batch.iter().enumerate() {
                let sqe = opcode::Write::new(fd, buf.as_ptr(), buf.len() as u32)
                    .offset(off)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the buffer is borrowed from `writes`, which outlives this
                // call, and we wait below for every entry of the batch to complete
                // before returning, so the kernel never reads a freed buffer. The
                // queue has room: batches are at most RING_DEPTH entries and the
                // previous batch was fully reaped.
                unsafe {
                    ring.submission().push(&sqe).map_err(|_| {
                        StoreError::io("io_uring", std::io::Error::other("submission queue full"))
                    })?;
                }
            }
            let mut done = 0;
            let mut short: Vec<(usize, usize)> = Vec::new();
            let mut failed: Option<std::io::Error> = None;
            while done < batch.len() {
                if let Err(e) = ring.submit_and_wait(batch.len() - done) {
                    if e.raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    return Err(StoreError::io("io_uring submit", e));
                }
                for cqe in ring.completion() {
                    done += 1;
                    let i = cqe.user_data() as usize;
                    let res = cqe.result();
                    if res < 0 {
                        failed.get_or_insert(std::io::Error::from_raw_os_error(-res));
                    } else if (res as usize) < batch[i].1.len() {
                        short.push((i, res as usize));
                    }
                }
            }
            if let Some(e) = failed {
                return Err(StoreError::io("write store file", e));
            }
            for (i, written) in short {
                let (off, buf) = batch[i];
                self.file
                    .write_all_at(&buf[written..], off + written as u64)
                    .map_err(|e| StoreError::io("write store file", e))?;
            }
        }
        Ok(())
    }
}

impl Backend for FileBackend {
    fn read(&self, off: u64, len: usize) -> StoreResult<&[u8]> {
        let end = off.checked_add(len as u64);
        match end {
            Some(end) if end <= self.len.load(Ordering::Acquire) => {
                Ok(&self.map[off as usize..end as usize])
            }
            _ => Err(StoreError::corrupt(
                off / crate::store::format::PAGE,
                "reference past the end of the store file",
            )),
        }
    }

    fn read_copy(&self, off: u64, buf: &mut [u8]) -> StoreResult<()> {
        self.file
            .read_exact_at(buf, off)
            .map_err(|e| StoreError::io("read store file", e))
    }

    fn write_all(&self, writes: &[(u64, &[u8])]) -> StoreResult<()> {
        let mut ring = self.ring.lock();
        if let Some(ring) = ring.as_mut() {
            return self.write_uring(ring, writes);
        }
        for &(off, buf) in writes {
            self.file
                .write_all_at(buf, off)
                .map_err(|e| StoreError::io("write store file", e))?;
        }
        Ok(())
    }

    fn sync(&self) -> StoreResult<()> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("sync store file", e))
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn set_len(&self, len: u64) -> StoreResult<()> {
        if len > self.map_size {
            return Err(StoreError::MapFull {
                map_size: self.map_size,
            });
        }
        let cur = self.len();
        if len > cur {
            // SAFETY: plain system call on a descriptor we own; no memory is passed.
            let rc = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    0,
                    cur as libc::off_t,
                    (len - cur) as libc::off_t,
                )
            };
            if rc != 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
                    return Err(StoreError::io("grow store file", e));
                }
                self.file
                    .set_len(len)
                    .map_err(|e| StoreError::io("grow store file", e))?;
            }
        } else if len < cur {
            self.file
                .set_len(len)
                .map_err(|e| StoreError::io("shrink store file", e))?;
        }
        self.len.store(len, Ordering::Release);
        Ok(())
    }
}
