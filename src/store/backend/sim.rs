//! A storage backend that can lose power, for crash tests.
//!
//! It keeps two images: the *live* one that reads see, and the *durable* one
//! as of the last `sync`. Writes since then are remembered in order. A crash
//! is armed with [`SimBackend::crash_after`]: once that many writes, syncs and
//! resizes have happened, the operation that would be next fails, as does
//! every later one. [`SimBackend::crash_image`] then builds what a disk could
//! hold after the power came back: the durable image plus a random subset of
//! the unsynced writes, some of them torn at a 512-byte sector boundary.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use memmap2::MmapMut;
use parking_lot::Mutex;

use super::Backend;
use crate::store::error::{StoreError, StoreResult};

/// A small deterministic generator (SplitMix64) for tests and simulations.
#[derive(Clone, Debug)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

struct Durable {
    image: Vec<u8>,
    unsynced: Vec<(u64, Vec<u8>)>,
    /// (offset, length) of each write the last sync made durable.
    last_synced: Vec<(u64, u64)>,
}

pub struct SimBackend {
    live: MmapMut,
    live_ptr: *mut u8,
    capacity: u64,
    len: AtomicU64,
    durable: Mutex<Durable>,
    ops: AtomicU64,
    crash_at: AtomicU64,
    crashed: AtomicBool,
    /// (offset, length) of each `start_writeback` hint since last taken.
    hints: Mutex<Vec<(u64, u64)>>,
}

// SAFETY: `live_ptr` points into `live`, which this struct owns and never
// moves; concurrent access follows the `Backend` contract (readers only read
// bytes no writer touches), and every other field is thread-safe.
unsafe impl Send for SimBackend {}
// SAFETY: see `Send` above.
unsafe impl Sync for SimBackend {}

impl SimBackend {
    /// An empty device that can hold up to `capacity` bytes.
    pub fn new(capacity: u64) -> StoreResult<Self> {
        Self::from_image(&[], capacity)
    }

    /// A device whose contents (live and durable) are `image`.
    pub fn from_image(image: &[u8], capacity: u64) -> StoreResult<Self> {
        let mut live = MmapMut::map_anon(capacity as usize)
            .map_err(|e| StoreError::io("map simulated device", e))?;
        live[..image.len()].copy_from_slice(image);
        let live_ptr = live.as_mut_ptr();
        Ok(SimBackend {
            live,
            live_ptr,
            capacity,
            len: AtomicU64::new(image.len() as u64),
            durable: Mutex::new(Durable {
                image: image.to_vec(),
                unsynced: Vec::new(),
                last_synced: Vec::new(),
            }),
            ops: AtomicU64::new(0),
            crash_at: AtomicU64::new(u64::MAX),
            crashed: AtomicBool::new(false),
            hints: Mutex::new(Vec::new()),
        })
    }

    /// Loses power once `n` more operations have completed.
    pub fn crash_after(&self, n: u64) {
        self.crash_at
            .store(self.ops.load(Ordering::SeqCst) + n, Ordering::SeqCst);
    }

    /// Operations (writes, syncs, resizes) so far.
    pub fn ops(&self) -> u64 {
        self.ops.load(Ordering::SeqCst)
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn tick(&self) -> StoreResult<()> {
        if self.crashed() {
            return Err(power_lost());
        }
        let n = self.ops.fetch_add(1, Ordering::SeqCst);
        if n >= self.crash_at.load(Ordering::SeqCst) {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(power_lost());
        }
        Ok(())
    }

    /// What the disk holds after the power comes back: the durable image plus,
    /// for each unsynced write in order, either nothing, all of it, or a torn
    /// prefix of whole 512-byte sectors.
    pub fn crash_image(&self, rng: &mut SplitMix64) -> Vec<u8> {
        let d = self.durable.lock();
        let mut image = d.image.clone();
        for (off, data) in &d.unsynced {
            let keep = match rng.below(4) {
                0 => 0,
                1 => {
                    let sectors = data.len().div_ceil(512) as u64;
                    (rng.below(sectors + 1) * 512).min(data.len() as u64) as usize
                }
                _ => data.len(),
            };
            if keep == 0 {
                continue;
            }
            let end = *off as usize + keep;
            if image.len() < end {
                image.resize(end, 0);
            }
            image[*off as usize..end].copy_from_slice(&data[..keep]);
        }
        image
    }

    /// (offset, length) of every write the last sync made durable, in the
    /// order they were issued: what one commit cost the device.
    pub fn last_synced_writes(&self) -> Vec<(u64, u64)> {
        self.durable.lock().last_synced.clone()
    }

    /// (offset, length) of every writeback hint since the last call.
    pub fn take_writeback_hints(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.hints.lock())
    }

    /// The live image, as if every write had reached the disk.
    pub fn live_image(&self) -> Vec<u8> {
        self.live[..self.len() as usize].to_vec()
    }
}

fn power_lost() -> StoreError {
    StoreError::io("simulated device", std::io::Error::other("power lost"))
}

impl Backend for SimBackend {
    fn read(&self, off: u64, len: usize) -> StoreResult<&[u8]> {
        match off.checked_add(len as u64) {
            Some(end) if end <= self.len() => {
                // SAFETY: the range lies inside `live` (below len <= capacity), which
                // lives as long as `self`; per the `Backend` contract nobody writes
                // these bytes while the returned borrow lives.
                Ok(unsafe { std::slice::from_raw_parts(self.live_ptr.add(off as usize), len) })
            }
            _ => Err(StoreError::corrupt(
                off / crate::store::format::PAGE,
                "reference past the end of the store",
            )),
        }
    }

    fn read_copy(&self, off: u64, buf: &mut [u8]) -> StoreResult<()> {
        let src = self.read(off, buf.len())?;
        buf.copy_from_slice(src);
        Ok(())
    }

    unsafe fn write_all(&self, writes: &[(u64, &[u8])]) -> StoreResult<()> {
        for &(off, data) in writes {
            self.tick()?;
            let end = off + data.len() as u64;
            if end > self.len() {
                return Err(StoreError::io(
                    "simulated device",
                    std::io::Error::other("write past the end"),
                ));
            }
            // SAFETY: the range is inside `live`; per the `Backend` contract no
            // reader borrows bytes that are being written.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    data.as_ptr(),
                    self.live_ptr.add(off as usize),
                    data.len(),
                )
            };
            self.durable.lock().unsynced.push((off, data.to_vec()));
        }
        Ok(())
    }

    fn sync(&self) -> StoreResult<()> {
        self.tick()?;
        let mut d = self.durable.lock();
        let len = self.len() as usize;
        let Durable {
            image,
            unsynced,
            last_synced,
        } = &mut *d;
        image.resize(len, 0);
        last_synced.clear();
        for (off, data) in unsynced.drain(..) {
            last_synced.push((off, data.len() as u64));
            let end = (off as usize + data.len()).min(len);
            if (off as usize) < end {
                image[off as usize..end].copy_from_slice(&data[..end - off as usize]);
            }
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len.load(Ordering::Acquire)
    }

    fn start_writeback(&self, off: u64, len: u64) {
        self.hints.lock().push((off, len));
    }

    unsafe fn set_len(&self, len: u64) -> StoreResult<()> {
        self.tick()?;
        if len > self.capacity {
            return Err(StoreError::NoSpace);
        }
        let cur = self.len();
        if len > cur {
            // SAFETY: zeroing the grown range inside `live`; nobody reads past `len`.
            unsafe {
                std::ptr::write_bytes(self.live_ptr.add(cur as usize), 0, (len - cur) as usize)
            };
        }
        self.len.store(len, Ordering::Release);
        Ok(())
    }
}
