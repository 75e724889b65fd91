//! The block index: where a block with a given BLAKE3 hash is, for a store
//! that syncs. A peer told of a block looks here before asking the server
//! for it, and reads the bytes from where the index points (a file it
//! already had, a copy made elsewhere, the old place of a moved file).
//!
//! ## Keys (in the filesystem's own key space, beside `B`)
//!
//! ```text
//! H  hash[..16]  inode u64 BE  block u64 BE      value: empty
//! MH                                             value: version u64 LE
//! ```
//!
//! `MH` says the `H` keys are exact in the version it names: every block
//! entry (`B` inode block, whose value starts with the block's hash) has
//! exactly one `H` key, and every `H` key a block entry. Sixteen bytes of
//! the hash name a key: a reader checks the whole hash in the block entry,
//! so a prefix shared by two hashes costs a read, never a wrong block.
//!
//! The `H` keys are in hash order, so each block a commit changed would
//! dirty a leaf of its own (two, with the old block's key), and a loop of
//! 4 KiB writes and fsyncs pays every page a commit writes: written
//! straight into `H`, 8 jobs of it ran at 0.81 of sync off; written as a
//! log entry per commit, at 0.85
//! (`perf/notes/2026-12-05-block-index.md`). So commits write nothing of
//! the index: what they change waits in memory ([`Pending`], at most
//! `FOLD` changes, where lookups find the blocks it adds) until a commit
//! brings it to `FOLD`, or the last commit of a mount, which folds it into
//! `H` in one pass and writes `MH` with its own version. Like the
//! allocator's saved state, the index is then exact only at a clean
//! close: an open that finds `MH` naming an older version than the newest
//! (a crash came between folds) rebuilds it from the block entries.
//!
//! The index costs its keys and that rebuild, so a store keeps it only
//! once it syncs: [`Fs::keep_block_index`] builds it (in commits of at
//! most `BUILD_CHUNK` keys, `MH` with the last). From then on every
//! commit keeps it, this mount and every later one (a store that has `MH`
//! keeps it whatever mounts it). A build that fails leaves no `MH`:
//! readers then find nothing (the peer fetches the block) and the next
//! build starts over.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::atomic::Ordering;

use super::Fs;
use super::error::FsResult;
use super::inode::{block_key, prefix_end};
use crate::store::{Snapshot, WriteTxn};

pub(super) const MARKER: &[u8] = b"MH";
const PREFIX: u8 = b'H';
const HASH_BYTES: usize = 16;
/// Changes held in memory before a commit folds them into the `H` keys:
/// what memory holds of the index, and how many changes share one pass.
#[cfg(not(test))]
const FOLD: usize = 1 << 14;
/// Small in tests, so that their commits cross folds.
#[cfg(test)]
const FOLD: usize = 64;
/// Keys written (or deleted) by one commit of a build: what a build holds
/// in memory at once.
const BUILD_CHUNK: usize = 1 << 16;

type Key = [u8; 1 + HASH_BYTES + 16];

fn key(hash: &[u8], ino: u64, idx: u64) -> Key {
    let mut k = [0u8; 1 + HASH_BYTES + 16];
    k[0] = PREFIX;
    let n = hash.len().min(HASH_BYTES);
    k[1..1 + n].copy_from_slice(&hash[..n]);
    k[1 + HASH_BYTES..1 + HASH_BYTES + 8].copy_from_slice(&ino.to_be_bytes());
    k[1 + HASH_BYTES + 8..].copy_from_slice(&idx.to_be_bytes());
    k
}

/// (inode, block) of a `B` key, or of the tail of an `H` key.
fn block_of(k: &[u8]) -> Option<(u64, u64)> {
    let ino = u64::from_be_bytes(k.get(1..9)?.try_into().ok()?);
    let idx = u64::from_be_bytes(k.get(9..17)?.try_into().ok()?);
    Some((ino, idx))
}

/// The hash prefix and block an `H` key names.
fn parts(k: &Key) -> ([u8; HASH_BYTES], u64, u64) {
    let mut h = [0u8; HASH_BYTES];
    h.copy_from_slice(&k[1..1 + HASH_BYTES]);
    let (ino, idx) = block_of(&k[HASH_BYTES..]).unwrap_or_default();
    (h, ino, idx)
}

/// The version an `MH` value says the index is exact in.
fn exact_in(v: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(v.get(..8)?.try_into().ok()?))
}

/// What one commit does to the index, in the order it does it: `(true,
/// key)` a key in, `(false, key)` a key out.
#[derive(Default)]
pub(super) struct Changes(Vec<(bool, Key)>);

impl Changes {
    /// The new block `(ino, idx)` with content `hash` goes in.
    pub(super) fn added(&mut self, hash: &[u8], ino: u64, idx: u64) {
        self.0.push((true, key(hash, ino, idx)));
    }

    /// The block entry `(ino, idx)`, if there is one, is about to go or be
    /// replaced: its key goes out.
    pub(super) fn removed(&mut self, t: &mut WriteTxn<'_>, ino: u64, idx: u64) -> FsResult<()> {
        if let Some(e) = t.get(&block_key(ino, idx))? {
            self.0.push((false, key(e.value, ino, idx)));
        }
        Ok(())
    }

    /// The block entries in `[start, end)` are about to go.
    pub(super) fn removed_range(
        &mut self,
        t: &mut WriteTxn<'_>,
        start: &[u8],
        end: &[u8],
    ) -> FsResult<()> {
        for r in t.range((Bound::Included(start), Bound::Excluded(end)))? {
            let (k, e) = r?;
            if let Some((ino, idx)) = block_of(k) {
                self.0.push((false, key(e.value, ino, idx)));
            }
        }
        Ok(())
    }
}

/// The index changes of the commits since the last fold, in order, and
/// the blocks they add by hash prefix, where lookups find them (possibly
/// changed since: checked when read).
#[derive(Default)]
pub(super) struct Pending {
    changes: Vec<(bool, Key)>,
    added: HashMap<[u8; HASH_BYTES], Vec<(u64, u64)>>,
}

impl Pending {
    fn note(&mut self, changes: Vec<(bool, Key)>) {
        for (add, k) in &changes {
            if *add {
                let (h, ino, idx) = parts(k);
                self.added.entry(h).or_default().push((ino, idx));
            }
        }
        self.changes.extend(changes);
    }
}

/// Writes `changes` (in order: the last change of a key decides) into the
/// `H` keys of `t`, and `MH` saying they are exact in `t`'s version.
fn fold(t: &mut WriteTxn<'_>, changes: impl IntoIterator<Item = (bool, Key)>) -> FsResult<()> {
    let net: BTreeMap<Key, bool> = changes.into_iter().map(|(add, k)| (k, add)).collect();
    for (k, add) in net {
        if add {
            t.put(&k, &[])?;
        } else {
            t.delete(&k)?;
        }
    }
    t.put(MARKER, &t.version().to_le_bytes())?;
    Ok(())
}

/// For a commit made without a mount that changes no block entry (an
/// offline `gc` or retention change), begun on version `latest`: an index
/// exact in `latest` is exact in this commit too, and `MH` says so, or the
/// next open would rebuild the whole index for nothing.
pub(super) fn carry_exact(t: &mut WriteTxn<'_>, latest: u64) -> FsResult<()> {
    let exact = t.get(MARKER)?.and_then(|e| exact_in(e.value));
    if exact == Some(latest) {
        let v = t.version();
        t.put(MARKER, &v.to_le_bytes())?;
    }
    Ok(())
}

/// What [`check`] found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Checked {
    /// The store keeps an index.
    pub kept: bool,
    /// It is exact in the version checked (else a crash left it behind,
    /// and the next mount rebuilds it: nothing to check).
    pub exact: bool,
    /// Block entries and index keys looked at.
    pub blocks: u64,
    pub keys: u64,
    /// What is wrong, in words: at most [`PROBLEMS_SHOWN`] of `wrong`.
    pub problems: Vec<String>,
    pub wrong: u64,
}

/// The most problems [`check`] names; it counts them all.
pub const PROBLEMS_SHOWN: usize = 100;

/// The index of `snap` against its block entries, both ways, a key at a
/// time (memory does not grow with the store): every block entry has its
/// key, and every key names a block entry with that hash. A wrong index
/// never gives a wrong block (readers check a block's whole hash) but
/// makes sync fetch what the store has, or look in vain; deleting `MH`
/// (any change that leaves it behind) makes the next mount rebuild it.
pub fn check(snap: &Snapshot<'_>) -> FsResult<Checked> {
    let mut c = Checked::default();
    let Some(marker) = snap.get(MARKER)? else {
        return Ok(c);
    };
    c.kept = true;
    c.exact = exact_in(marker) == Some(snap.version());
    if !c.exact {
        return Ok(c);
    }
    let wrong = |c: &mut Checked, what: String| {
        c.wrong += 1;
        if c.problems.len() < PROBLEMS_SHOWN {
            c.problems.push(what);
        }
    };
    for item in snap.range(&b"B"[..]..&b"C"[..])? {
        let (k, e) = item?;
        let Some((ino, idx)) = block_of(k) else {
            continue;
        };
        c.blocks += 1;
        if snap.get(&key(e.value, ino, idx))?.is_none() {
            wrong(
                &mut c,
                format!("block {idx} of inode {ino} is not in the index"),
            );
        }
    }
    for item in snap.range(&[PREFIX][..]..&[PREFIX + 1][..])? {
        let (k, _) = item?;
        c.keys += 1;
        let Ok(k) = Key::try_from(k) else {
            wrong(&mut c, format!("an index key of {} bytes", k.len()));
            continue;
        };
        let (h, ino, idx) = parts(&k);
        match snap.get(&block_key(ino, idx))? {
            Some(v) if v.get(..HASH_BYTES) == Some(&h[..]) => {}
            Some(_) => wrong(
                &mut c,
                format!("the index names block {idx} of inode {ino} with another hash"),
            ),
            None => wrong(
                &mut c,
                format!("the index names block {idx} of inode {ino}, which is not there"),
            ),
        }
    }
    Ok(c)
}

/// Marks the index of `t` as behind every version, so that the next open
/// rebuilds it (`zippyfs fsck --rebuild-index`).
pub fn behind(t: &mut WriteTxn<'_>) -> crate::store::StoreResult<()> {
    if t.get(MARKER)?.is_some() {
        t.put(MARKER, &0u64.to_le_bytes())?;
    }
    Ok(())
}

/// What a commit did with its changes, for [`Fs::index_committed`].
pub(super) enum Written {
    Held(Changes),
    Folded,
}

impl Fs {
    /// Whether commits keep the block index: set at open for a store that
    /// has one, and by [`Fs::keep_block_index`].
    pub(super) fn keeps_block_index(&self) -> bool {
        self.block_index.load(Ordering::Acquire)
    }

    /// At open, for a store with an index (`MH` = `marker`): kept from now
    /// on, and rebuilt first if a crash left it behind the newest version.
    /// A rebuild that fails (a full disk) leaves it unkept for this mount:
    /// lookups find nothing, and the next open or sync start tries again
    /// (the mount itself must not fail for an index).
    pub(super) fn open_block_index(&self, marker: &[u8]) {
        let latest = self.store.latest_version().unwrap_or(0);
        if exact_in(marker) != Some(latest) {
            tracing::info!("the block index is behind the newest version (a crash); rebuilding it");
            let started = std::time::Instant::now();
            match self.build_block_index() {
                Ok(blocks) => {
                    tracing::info!(blocks, took = ?started.elapsed(), "block index rebuilt")
                }
                Err(e) => {
                    tracing::warn!(
                        "cannot rebuild the block index ({e}); sync fetches every block"
                    );
                    return;
                }
            }
        }
        *self.index_log.lock() = Pending::default();
        self.block_index.store(true, Ordering::Release);
    }

    /// A commit's index changes: held in memory, or, once that would hold
    /// `FOLD` changes (or the mount is on its way out), folded into `t`
    /// with every change held.
    pub(super) fn write_index(&self, t: &mut WriteTxn<'_>, ch: Changes) -> FsResult<Written> {
        let held = self.index_log.lock().changes.len();
        if held + ch.0.len() < FOLD && !self.unmounting.load(Ordering::Acquire) {
            return Ok(Written::Held(ch));
        }
        let all: Vec<(bool, Key)> = self.index_log.lock().changes.clone();
        fold(t, all.into_iter().chain(ch.0))?;
        Ok(Written::Folded)
    }

    /// The commit that wrote `w` is durable: memory follows it.
    pub(super) fn index_committed(&self, w: Written) {
        let mut p = self.index_log.lock();
        match w {
            Written::Held(ch) => p.note(ch.0),
            Written::Folded => *p = Pending::default(),
        }
    }

    /// At the end of a mount, after its last commit: what is held goes
    /// into the store and `MH` names the newest version (commits that
    /// changed no block moved it on too), so the next open finds the index
    /// exact.
    pub(super) fn fold_block_index(&self) -> FsResult<()> {
        if !self.keeps_block_index() {
            return Ok(());
        }
        let snap = self.store.latest()?;
        let marked = snap.get(MARKER)?.and_then(exact_in);
        let current = marked == Some(snap.version());
        drop(snap);
        if current && self.index_log.lock().changes.is_empty() {
            return Ok(());
        }
        let mut t = self.store.begin_write()?;
        let all = self.index_log.lock().changes.clone();
        fold(&mut t, all)?;
        t.tag(&self.own_tag());
        self.reported(t.commit("block index")?);
        self.index_committed(Written::Folded);
        Ok(())
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
                    *self.index_log.lock() = Pending::default();
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

    /// Deletes what an earlier index or build left, then writes a key per
    /// block entry of the latest version and the marker; returns the
    /// blocks indexed. Only the caller commits meanwhile.
    fn build_block_index(&self) -> FsResult<u64> {
        let mut stale = true;
        while stale {
            let snap = self.store.latest()?;
            let keys: Vec<Vec<u8>> = snap
                .range(&[PREFIX][..]..&[PREFIX + 1][..])?
                .take(BUILD_CHUNK)
                .map(|r| r.map(|(k, _)| k.to_vec()))
                .collect::<Result<_, _>>()?;
            let marker = snap.get(MARKER)?.is_some();
            drop(snap);
            stale = !keys.is_empty();
            if !stale && !marker {
                break;
            }
            let mut t = self.store.begin_write()?;
            t.delete(MARKER)?;
            for k in keys {
                t.delete(&k)?;
            }
            t.tag(&self.own_tag());
            self.reported(t.commit("block index")?);
        }
        let from = self.store.latest_version().unwrap_or(0);
        let snap = self.store.snapshot(from)?;
        let mut resume = b"B".to_vec();
        let mut blocks = 0u64;
        loop {
            let part: Vec<(Key, Vec<u8>)> = snap
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
                t.put(MARKER, &t.version().to_le_bytes())?;
            }
            t.tag(&self.own_tag());
            self.reported(t.commit("block index")?);
            blocks += part.len() as u64;
            match part.into_iter().next_back() {
                Some((_, k)) if !last => resume = k,
                _ => return Ok(blocks),
            }
        }
    }

    /// Where a block with content `hash` is in `snap`: (inode, block), or
    /// `None` when no block has it or the store keeps no index. Every place
    /// the index names is checked against the block's recorded hash, so a
    /// snapshot older than the index's last fold or build finds less,
    /// never a wrong block.
    pub fn find_block(&self, snap: &Snapshot<'_>, hash: &[u8; 32]) -> FsResult<Option<(u64, u64)>> {
        if !self.keeps_block_index() {
            return Ok(None);
        }
        let holds = |ino: u64, idx: u64| -> FsResult<bool> {
            Ok(snap
                .get_entry(&block_key(ino, idx))?
                .is_some_and(|e| e.value.get(..32) == Some(&hash[..])))
        };
        let mut prefix = [0u8; HASH_BYTES];
        prefix.copy_from_slice(&hash[..HASH_BYTES]);
        let held = self.index_log.lock().added.get(&prefix).cloned();
        for (ino, idx) in held.unwrap_or_default() {
            if holds(ino, idx)? {
                return Ok(Some((ino, idx)));
            }
        }
        let start = key(hash, 0, 0);
        let end = prefix_end(&start[..1 + HASH_BYTES]);
        for item in snap.range((Bound::Included(&start[..]), Bound::Excluded(&end[..])))? {
            let (k, _) = item?;
            let Some((ino, idx)) = k.get(HASH_BYTES..).and_then(block_of) else {
                continue;
            };
            if holds(ino, idx)? {
                return Ok(Some((ino, idx)));
            }
        }
        Ok(None)
    }

    /// The bytes of a block whose content is `hash` in `snap`, wherever
    /// it is, if the block index knows one.
    pub fn block_by_hash(&self, snap: &Snapshot<'_>, hash: &[u8; 32]) -> FsResult<Option<Vec<u8>>> {
        Ok(match self.find_block(snap, hash)? {
            Some((ino, idx)) => Some(super::history::block_at(snap, ino, idx)?.to_vec()),
            None => None,
        })
    }

    /// Whether `snap` has a block whose content is `hash`, by the index.
    pub fn has_block(&self, snap: &Snapshot<'_>, hash: &[u8; 32]) -> FsResult<bool> {
        Ok(self.find_block(snap, hash)?.is_some())
    }

    /// The index as of the newest version (its `H` keys with the changes
    /// held in memory) against that version's block entries, both ways:
    /// what is wrong, in words (tests and checks; nothing may commit
    /// meanwhile).
    #[cfg(test)]
    pub fn check_block_index(&self) -> FsResult<Vec<String>> {
        let snap = self.store.latest()?;
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
            match Key::try_from(k) {
                Ok(k) => {
                    have.insert(k);
                }
                Err(_) => wrong.push(format!("index key of {} bytes", k.len())),
            }
        }
        for (add, k) in self.index_log.lock().changes.clone() {
            let (was, what) = if add {
                (!have.insert(k), "in again")
            } else {
                (have.remove(&k), "out")
            };
            if was == add {
                wrong.push(format!("a commit takes {:?} {what}", parts(&k)));
            }
        }
        for k in want.difference(&have) {
            wrong.push(format!("block {:?} not in the index", parts(k)));
        }
        for k in have.difference(&want) {
            wrong.push(format!("index names {:?}, not a block", parts(k)));
        }
        Ok(wrong)
    }
}
