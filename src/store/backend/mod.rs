//! Where the store's bytes live. The engine reads committed bytes in place
//! (a read-only mmap for the real file) and writes new ones in batches; a
//! backend that can "lose power" ([`SimBackend`]) stands in for the file in
//! crash tests.
//!
//! The contract that makes in-place reads sound: a slice [`Backend::read`]
//! returns borrows the device's bytes, so nothing may change them while it
//! lives. The engine keeps that by construction: it only reads bytes below
//! [`Backend::len`] that a kept version (or an open snapshot) references, and
//! only writes pages that were free at the last commit, which nothing
//! references (copy-on-write; the two commit slots, which are rewritten, are
//! only ever read with [`Backend::read_copy`]). The compiler cannot see that
//! argument, so the two calls that change bytes, [`Backend::write_all`] and
//! [`Backend::set_len`], are `unsafe fn`: each caller says why no borrow
//! overlaps what it changes.

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
    ///
    /// # Safety
    /// No slice returned by [`Backend::read`] that overlaps a written range
    /// may be alive during the call or used after it.
    unsafe fn write_all(&self, writes: &[(u64, &[u8])]) -> StoreResult<()>;
    /// Makes every write so far durable.
    fn sync(&self) -> StoreResult<()>;
    /// The current length in bytes.
    fn len(&self) -> u64;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Grows (reserving the space) or shrinks the store.
    ///
    /// # Safety
    /// When shrinking, no slice returned by [`Backend::read`] that reaches
    /// past `len` may be alive during the call or used after it (the file
    /// backend's map would fault on it).
    unsafe fn set_len(&self, len: u64) -> StoreResult<()>;
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
    unsafe fn write_all(&self, writes: &[(u64, &[u8])]) -> StoreResult<()> {
        // SAFETY: the caller keeps the contract for the shared backend.
        unsafe { (**self).write_all(writes) }
    }
    fn sync(&self) -> StoreResult<()> {
        (**self).sync()
    }
    fn len(&self) -> u64 {
        (**self).len()
    }
    unsafe fn set_len(&self, len: u64) -> StoreResult<()> {
        // SAFETY: the caller keeps the contract for the shared backend.
        unsafe { (**self).set_len(len) }
    }
    fn start_writeback(&self, off: u64, len: u64) {
        (**self).start_writeback(off, len)
    }
}
