//! The block index: where a block with a given BLAKE3 hash is, for a store
//! that syncs. A peer told of a block looks here before asking the server
//! for it, and reads the bytes from where the index points (a file it
//! already had, a copy made elsewhere, the old place of a moved file).
//!
//! ## Keys (in the filesystem's own key space, beside `B`)
//!
//! ```text
//! H  hash[..16]  inode u64 BE  block u64 BE      value: empty
//! MH                                             value: empty: the index is whole
//! ```
//!
//! Every block entry (`B` inode block, whose value starts with the block's
//! hash) has exactly one `H` key, written and deleted in the same commit
//! as the entry. Sixteen bytes of the hash name the key: a reader checks
//! the whole hash in the block entry, so a prefix shared by two hashes
//! costs a read, never a wrong block.
//!
//! The index costs a key per block on the write path, so a store keeps it
//! only once it syncs: [`Fs::keep_block_index`] builds it from the block
//! entries (in commits of at most `BUILD_CHUNK` keys) and writes `MH` with
//! the last part. From then on every commit keeps it, this mount and every
//! later one (a store that has `MH` keeps it whatever mounts it). A build
//! that fails leaves no `MH`: readers then find nothing (the peer fetches
//! the block) and the next build starts over.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use super::Fs;
use super::error::FsResult;
use super::inode::{block_key, prefix_end};
use crate::store::{Snapshot, WriteTxn};

pub(super) const MARKER: &[u8] = b"MH";
const PREFIX: u8 = b'H';
const HASH_BYTES: usize = 16;
/// Keys written (or deleted) by one commit of a build: what a build holds
/// in memory at once.
const BUILD_CHUNK: usize = 1 << 16;

fn key(hash: &[u8], ino: u64, idx: u64) -> [u8; 1 + HASH_BYTES + 16] {
    let mut k = [0u8; 1 + HASH_BYTES + 16];
    k[0] = PREFIX;
    let n = hash.len().min(HASH_BYTES);
    k[1..1 + n].copy_from_slice(&hash[..n]);
    k[1 + HASH_BYTES..1 + HASH_BYTES + 8].copy_from_slice(&ino.to_be_bytes());
    k[1 + HASH_BYTES + 8..].copy_from_slice(&idx.to_be_bytes());
    k
}

/// (inode, block) of a `B` key.
fn block_of(k: &[u8]) -> Option<(u64, u64)> {
    let ino = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let idx = u64::from_be_bytes(k.get(9..17)?.try_into().ok()?);
    Some((ino, idx))
}

/// The new block `(ino, idx)` with content `hash` is in the index.
pub(super) fn add(t: &mut WriteTxn<'_>, hash: &[u8], ino: u64, idx: u64) -> FsResult<()> {
    t.put(&key(hash, ino, idx), &[])?;
    Ok(())
}

/// The block entry `(ino, idx)`, if there is one, is about to go or be
/// replaced: its key leaves the index.
pub(super) fn remove(t: &mut WriteTxn<'_>, ino: u64, idx: u64) -> FsResult<()> {
    let old = t.get(&block_key(ino, idx))?.map(|e| key(e.value, ino, idx));
    if let Some(k) = old {
        t.delete(&k)?;
    }
    Ok(())
}

/// The block entries in `[start, end)` are about to go: their keys leave
/// the index.
pub(super) fn remove_range(t: &mut WriteTxn<'_>, start: &[u8], end: &[u8]) -> FsResult<()> {
    let keys: Vec<_> = t
        .range((Bound::Included(start), Bound::Excluded(end)))?
        .filter_map(|r| match r {
            Ok((k, e)) => block_of(k).map(|(ino, idx)| Ok(key(e.value, ino, idx))),
            Err(e) => Some(Err(e)),
        })
        .collect::<Result<_, _>>()?;
    for k in keys {
        t.delete(&k)?;
    }
    Ok(())
}

/// Where a block with content `hash` is in `snap`: (inode, block), or
/// `None` when no block has it or the index is not whole there.
pub fn find(snap: &Snapshot<'_>, hash: &[u8; 32]) -> FsResult<Option<(u64, u64)>> {
    if snap.get(MARKER)?.is_none() {
        return Ok(None);
    }
    let start = key(hash, 0, 0);
    let end = prefix_end(&start[..1 + HASH_BYTES]);
    for item in snap.range((Bound::Included(&start[..]), Bound::Excluded(&end[..])))? {
        let (k, _) = item?;
        let Some(at) = k.get(1 + HASH_BYTES..) else {
            continue;
        };
        let mut b = [0u8; 17];
        b[0] = b'B';
        b[1..].copy_from_slice(at);
        let Some((ino, idx)) = block_of(&b) else {
            continue;
        };
        if let Some(e) = snap.get_entry(&block_key(ino, idx))?
            && e.value.get(..32) == Some(&hash[..])
        {
            return Ok(Some((ino, idx)));
        }
    }
    Ok(None)
}

impl Fs {
    /// Whether commits keep the block index: set at open for a store that
    /// has one, and by [`Fs::keep_block_index`].
    pub(super) fn keeps_block_index(&self) -> bool {
        self.block_index.load(Ordering::Acquire)
    }

    /// Makes this store keep a block index from now on (it syncs), building
    /// it from the block entries if the store has none; commits wait
    /// meanwhile. A build that fails is logged and leaves the store without
    /// one (sync then fetches what it would have found here).
    pub fn keep_block_index(&self) -> FsResult<()> {
        if self.keeps_block_index() {
            return Ok(());
        }
        self.flush.exclusive(|| {
            self.commit_now("sync")?;
            let started = std::time::Instant::now();
            match self.build_block_index() {
                Ok(blocks) => {
                    self.block_index.store(true, Ordering::Release);
                    tracing::info!(blocks, took = ?started.elapsed(), "block index built");
                    Ok(())
                }
                Err(e) => {
                    tracing::warn!("cannot build the block index ({e}); sync fetches every block");
                    Ok(())
                }
            }
        })
    }

    /// Deletes what an earlier build left, then writes a key per block
    /// entry of the latest version and the marker; returns the blocks
    /// indexed. Only the caller commits meanwhile.
    fn build_block_index(&self) -> FsResult<u64> {
        let from = self.store.latest_version().unwrap_or(0);
        // Left by a build that failed: gone first, a chunk per commit.
        loop {
            let snap = self
                .store
                .snapshot(self.store.latest_version().unwrap_or(0))?;
            let stale: Vec<Vec<u8>> = snap
                .range(&[PREFIX][..]..&[PREFIX + 1][..])?
                .take(BUILD_CHUNK)
                .map(|r| r.map(|(k, _)| k.to_vec()))
                .collect::<Result<_, _>>()?;
            drop(snap);
            if stale.is_empty() {
                break;
            }
            let mut t = self.store.begin_write()?;
            for k in stale {
                t.delete(&k)?;
            }
            t.tag(&self.own_tag());
            t.commit("block index")?;
        }
        let snap = self.store.snapshot(from)?;
        let mut resume = b"B".to_vec();
        let mut blocks = 0u64;
        loop {
            let part: Vec<([u8; 33], Vec<u8>)> = snap
                .range((Bound::Excluded(&resume[..]), Bound::Excluded(&b"C"[..])))?
                .take(BUILD_CHUNK)
                .map(|r| {
                    r.map(|(k, e)| {
                        let (ino, idx) = block_of(k).unwrap_or_default();
                        (key(e.value, ino, idx), k.to_vec())
                    })
                })
                .collect::<Result<_, _>>()?;
            let last = part.len() < BUILD_CHUNK;
            let mut t = self.store.begin_write()?;
            for (k, _) in &part {
                t.put(k, &[])?;
            }
            if last {
                t.put(MARKER, &[])?;
            }
            t.tag(&self.own_tag());
            t.commit("block index")?;
            blocks += part.len() as u64;
            match part.into_iter().next_back() {
                Some((_, k)) if !last => resume = k,
                _ => return Ok(blocks),
            }
        }
    }

    /// The bytes of a block whose content is `hash` in `snap`, wherever
    /// it is, if the block index knows one.
    pub fn block_by_hash(&self, snap: &Snapshot<'_>, hash: &[u8; 32]) -> FsResult<Option<Vec<u8>>> {
        Ok(match find(snap, hash)? {
            Some((ino, idx)) => Some(super::history::block_at(snap, ino, idx)?.to_vec()),
            None => None,
        })
    }

    /// Whether `snap` has a block whose content is `hash`, by the index.
    pub fn has_block(&self, snap: &Snapshot<'_>, hash: &[u8; 32]) -> FsResult<bool> {
        Ok(find(snap, hash)?.is_some())
    }
}

/// Every block entry of `snap` against the index, both ways: what is
/// wrong, in words (tests and checks).
pub fn check(snap: &Snapshot<'_>) -> FsResult<Vec<String>> {
    let mut wrong = Vec::new();
    let mut want = std::collections::BTreeSet::new();
    for item in snap.range(&b"B"[..]..&b"C"[..])? {
        let (k, e) = item?;
        if let Some((ino, idx)) = block_of(k) {
            want.insert(key(e.value, ino, idx));
        }
    }
    let mut have = std::collections::BTreeSet::new();
    for item in snap.range(&[PREFIX][..]..&[PREFIX + 1][..])? {
        let (k, _) = item?;
        match <[u8; 33]>::try_from(k) {
            Ok(k) => {
                have.insert(k);
            }
            Err(_) => wrong.push(format!("index key of {} bytes", k.len())),
        }
    }
    for k in want.difference(&have) {
        wrong.push(format!("block {:?} not in the index", block_of(&k[16..])));
    }
    for k in have.difference(&want) {
        wrong.push(format!("index names {:?}, not a block", block_of(&k[16..])));
    }
    Ok(wrong)
}
