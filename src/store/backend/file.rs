//! The real store file: reads through one read-only mmap of a large virtual
//! range (so growing the file never moves the map), writes in batches, with
//! buffers that are adjacent on disk coalesced into one vectored write,
//! `fdatasync` for durability and `fallocate` to grow, so a full disk is an
//! error at growth time rather than a SIGBUS later.
//!
//! Writes go out by `pwritev` or through an io_uring ring ([`WritePath`]).
//! For these buffered writes `pwritev` measured faster here (see
//! `perf/notes/2026-11-26-store-write-path.md`): ext4 cannot take a buffered write without blocking, so
//! io_uring hands every one to a kernel worker thread.

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

/// How the store file is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WritePath {
    /// One `pwritev` system call per run of adjacent pages.
    #[default]
    Pwritev,
    /// Runs submitted to an io_uring ring, up to 128 in flight.
    IoUring,
}

pub struct FileBackend {
    file: File,
    map: Mmap,
    map_size: u64,
    len: AtomicU64,
    ring: Option<Mutex<IoUring>>,
}

impl FileBackend {
    /// Maps `map_size` bytes of `file` (which may be shorter: only the part
    /// below its length is ever touched).
    pub fn new(file: File, map_size: u64, path: WritePath) -> StoreResult<Self> {
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
        let ring = match path {
            WritePath::Pwritev => None,
            WritePath::IoUring => match IoUring::new(RING_DEPTH) {
                Ok(r) => Some(Mutex::new(r)),
                Err(e) => {
                    tracing::warn!("io_uring unavailable ({e}); store writes use pwritev");
                    None
                }
            },
        };
        Ok(FileBackend {
            file,
            map,
            map_size,
            len: AtomicU64::new(len),
            ring,
        })
    }

    fn write_pwritev(&self, runs: &[Run<'_>]) -> StoreResult<()> {
        for r in runs {
            let iov = r.iovecs();
            // SAFETY: the iovecs point into buffers borrowed for the duration of
            // the call; pwritev only reads them.
            let n = unsafe {
                libc::pwritev(
                    self.file.as_raw_fd(),
                    iov.as_ptr(),
                    iov.len() as libc::c_int,
                    r.off as libc::off_t,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(StoreError::io("write store file", e));
                }
                self.finish_short(r, 0)?;
            } else if (n as usize) < r.len {
                self.finish_short(r, n as usize)?;
            }
        }
        Ok(())
    }

    /// Completes a run the kernel wrote only `written` bytes of.
    fn finish_short(&self, r: &Run<'_>, mut written: usize) -> StoreResult<()> {
        let mut off = r.off;
        for b in &r.bufs {
            let skip = written.min(b.len());
            written -= skip;
            self.file
                .write_all_at(&b[skip..], off + skip as u64)
                .map_err(|e| StoreError::io("write store file", e))?;
            off += b.len() as u64;
        }
        Ok(())
    }

    fn write_uring(&self, ring: &mut IoUring, runs: &[Run<'_>]) -> StoreResult<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        for batch in runs.chunks(RING_DEPTH as usize) {
            let iovecs: Vec<Vec<libc::iovec>> = batch.iter().map(Run::iovecs).collect();
            for (i, (r, iov)) in batch.iter().zip(&iovecs).enumerate() {
                let sqe = opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                    .offset(r.off)
                    .build()
                    .user_data(i as u64);
                // SAFETY: the iovecs and the buffers they point at are borrowed
                // from `iovecs` and `writes`, which outlive this call, and we wait
                // below for every entry of the batch to complete before returning
                // (or dropping `iovecs`), so the kernel never reads freed memory.
                // The queue has room: batches are at most RING_DEPTH entries and
                // the previous batch was fully reaped.
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
                    } else if (res as usize) < batch[i].len {
                        short.push((i, res as usize));
                    }
                }
            }
            if let Some(e) = failed {
                return Err(StoreError::io("write store file", e));
            }
            for (i, written) in short {
                self.finish_short(&batch[i], written)?;
            }
        }
        Ok(())
    }
}

/// Buffers that are adjacent on disk, written by one vectored write.
struct Run<'a> {
    off: u64,
    len: usize,
    bufs: Vec<&'a [u8]>,
}

impl Run<'_> {
    /// Groups buffers that continue one another on disk, without copying them.
    fn group<'a>(writes: &[(u64, &'a [u8])]) -> Vec<Run<'a>> {
        let mut runs: Vec<Run<'a>> = Vec::new();
        for &(off, buf) in writes {
            for (i, chunk) in buf.chunks(MAX_WRITE).enumerate() {
                let off = off + (i * MAX_WRITE) as u64;
                match runs.last_mut() {
                    Some(r)
                        if r.off + r.len as u64 == off
                            && r.bufs.len() < MAX_IOVECS
                            && r.len + chunk.len() <= MAX_WRITE =>
                    {
                        r.len += chunk.len();
                        r.bufs.push(chunk);
                    }
                    _ => runs.push(Run {
                        off,
                        len: chunk.len(),
                        bufs: vec![chunk],
                    }),
                }
            }
        }
        runs
    }

    fn iovecs(&self) -> Vec<libc::iovec> {
        self.bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut libc::c_void,
                iov_len: b.len(),
            })
            .collect()
    }
}

/// Most buffers in one vectored write (the kernel's IOV_MAX is 1024).
const MAX_IOVECS: usize = 1024;

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

    unsafe fn write_all(&self, writes: &[(u64, &[u8])]) -> StoreResult<()> {
        let runs = Run::group(writes);
        match &self.ring {
            Some(ring) => self.write_uring(&mut ring.lock(), &runs),
            None => self.write_pwritev(&runs),
        }
    }

    fn start_writeback(&self, off: u64, len: u64) {
        // Length 0 would mean "to the end of the file".
        let (Ok(off), Ok(len @ 1..)) = (i64::try_from(off), i64::try_from(len)) else {
            return;
        };
        // WRITE only, never a WAIT flag: without one the kernel neither
        // waits nor consumes a recorded writeback error, so an I/O error
        // still reaches the commit's `fdatasync` (and poisons the store)
        // although this call's result is ignored. A failure to start only
        // leaves the pages dirty for that `fdatasync`.
        // SAFETY: plain system call on a descriptor we own; no memory is
        // passed.
        unsafe {
            libc::sync_file_range(self.file.as_raw_fd(), off, len, libc::SYNC_FILE_RANGE_WRITE);
        }
    }

    fn sync(&self) -> StoreResult<()> {
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("sync store file", e))
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    unsafe fn set_len(&self, len: u64) -> StoreResult<()> {
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
