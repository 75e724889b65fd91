//! Where the store's bytes live. The engine reads committed bytes in place
//! (a read-only mmap for the real file) and writes new ones in batches; a
//! backend that can "lose power" ([`SimBackend`]) stands in for the file in
//! crash tests.
//!
//! The contract that makes in-place reads sound: the engine only reads bytes
//! below [`Backend::len`] that it wrote earlier, and never writes bytes that a
//! live reader can still see (copy-on-write; the two commit slots, which are
//! rewritten, are read with [`Backend::read_copy`]).

mod file;
mod sim;

pub use file::{FileBackend, WritePath};
pub use sim::{SimBackend, SplitMix64};

use crate::store::error::StoreResult;

pub trait Backend: Send + Sync {
    /// The bytes `[off, off + len)`, borrowed in place.
    fn read(&self, off: u64, len: usize) -> StoreResult<&[u8]>;
    /// Copies bytes out; for data that may be rewritten while it is read.
    fn read_copy(&self, off: u64, buf: &mut [u8]) -> StoreResult<()>;
    /// Writes every buffer at its offset; returns when all are written (not synced).
    fn write_all(&self, writes: &[(u64, &[u8])]) -> StoreResult<()>;
    /// Makes every write so far durable.
    fn sync(&self) -> StoreResult<()>;
    /// The current length in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Grows (reserving the space) or shrinks the store.
    fn set_len(&self, len: u64) -> StoreResult<()>;
    /// Starts writing `[off, off + len)` to the device without waiting, so
    /// that the next `sync` finds less left to do. Only a hint: durability
    /// still comes from `sync`.
    fn start_writeback(&self, _off: u64, _len: u64) {}
}

/// A shared backend, so a test can keep a handle on the device after the
/// store that used it is dropped.
impl<B: Backend + ?Sized> Backend for std::sync::Arc<B> {
    fn read(&self, off: u64, len: usize) -> StoreResult<&[u8]> {
        (**self).read(off, len)
    }
    fn read_copy(&self, off: u64, buf: &mut [u8]) -> StoreResult<()> {
        (**self).read_copy(off, buf)
    }
    fn write_all(&self, writes: &[(u64, &[u8])]) -> StoreResult<()> {
        (**self).write_all(writes)
    }
    fn sync(&self) -> StoreResult<()> {
        (**self).sync()
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    fn set_len(&self, len: u64) -> StoreResult<()> {
        (**self).set_len(len)
    }
    fn start_writeback(&self, off: u64, len: u64) {
        (**self).start_writeback(off, len)
    }
}
