//! A shard's changes not yet committed (its delta), and reading through
//! the layers: the shard's delta, the delta being committed, then the
//! store's latest version.

use super::*;

/// One shard's changes since the last commit.
#[derive(Clone, Default, Debug)]
pub(super) struct Delta {
    /// `None`: the inode is gone, with every key it had.
    pub(super) inodes: HashMap<u64, Option<Inode>>,
    /// Per directory: name → `None` (removed) or the entry.
    pub(super) dirents: HashMap<u64, DirDelta>,
    /// `None`: a hole where committed data was.
    pub(super) blocks: HashMap<(u64, u64), Option<Vec<u8>>>,
    /// Committed blocks from this index on are gone (the file shrank).
    pub(super) truncs: HashMap<u64, u64>,
    pub(super) xattrs: HashMap<(u64, Vec<u8>), Option<Vec<u8>>>,
    pub(super) symlinks: HashMap<u64, Vec<u8>>,
    /// true: unlinked while open (an orphan); false: no longer an orphan.
    pub(super) orphans: HashMap<u64, bool>,
    /// File ids made elsewhere (sync) → the inode here, `None`: gone.
    pub(super) file_ids: HashMap<u128, Option<u64>>,
    /// Dirty data bytes held.
    pub(super) bytes: u64,
}

impl Delta {
    pub(super) fn is_empty(&self) -> bool {
        self.inodes.is_empty()
            && self.dirents.is_empty()
            && self.blocks.is_empty()
            && self.truncs.is_empty()
            && self.xattrs.is_empty()
            && self.symlinks.is_empty()
            && self.orphans.is_empty()
            && self.file_ids.is_empty()
    }

    /// Folds a newer delta into this older one.
    pub(super) fn absorb(&mut self, newer: Delta) {
        for (ino, i) in newer.inodes {
            if i.is_none() {
                self.drop_inode_data(ino);
            }
            self.inodes.insert(ino, i);
        }
        for (dir, ents) in newer.dirents {
            self.dirents.entry(dir).or_default().extend(ents);
        }
        for (ino, t) in newer.truncs {
            self.blocks.retain(|&(i, b), _| i != ino || b < t);
            let e = self.truncs.entry(ino).or_insert(t);
            *e = (*e).min(t);
        }
        self.blocks.extend(newer.blocks);
        self.xattrs.extend(newer.xattrs);
        self.symlinks.extend(newer.symlinks);
        self.orphans.extend(newer.orphans);
        self.file_ids.extend(newer.file_ids);
        self.bytes += newer.bytes;
    }

    /// Whether committing this delta adds nothing that takes space: no
    /// data, no xattr values, no symlink targets, no inode numbered from
    /// `first_new` on (made since the last commit). Deletes, renames and
    /// attribute changes qualify.
    pub(super) fn only_frees(&self, first_new: u64) -> bool {
        self.blocks.values().all(Option::is_none)
            && self.xattrs.values().all(Option::is_none)
            && self.file_ids.values().all(Option::is_none)
            && self.symlinks.is_empty()
            && !self
                .inodes
                .iter()
                .any(|(&ino, i)| i.is_some() && ino >= first_new)
    }

    pub(super) fn drop_inode_data(&mut self, ino: u64) {
        self.blocks.retain(|&(i, _), _| i != ino);
        self.truncs.remove(&ino);
        self.xattrs.retain(|(i, _), _| *i != ino);
        self.symlinks.remove(&ino);
    }
}

/// What a lookup in the layers of state found.
pub(super) enum Found<T> {
    Yes(T),
    Gone,
    Unknown,
}

impl Fs {
    pub(super) fn inode_in(&self, sh: &Shard, snap: &Snapshot<'_>, ino: u64) -> FsResult<Inode> {
        match layered(sh, |d| d.inodes.get(&ino).map(|i| i.clone().ok_or(())))? {
            Found::Yes(i) => Ok(i),
            Found::Gone => err(libc::ENOENT),
            Found::Unknown => history::inode_at(snap, ino)?.ok_or(FsError::Errno(libc::ENOENT)),
        }
    }

    pub(super) fn dirent_in(
        &self,
        sh: &Shard,
        snap: &Snapshot<'_>,
        parent: u64,
        name: &[u8],
    ) -> FsResult<Option<(u64, Kind)>> {
        match layered(sh, |d| {
            d.dirents
                .get(&parent)
                .and_then(|m| m.get(name))
                .map(|e| e.ok_or(()))
        })? {
            Found::Yes(e) => Ok(Some(e)),
            Found::Gone => Ok(None),
            Found::Unknown => history::dirent_at(snap, parent, name),
        }
    }

    /// Every entry of a directory, in name order.
    pub(super) fn list_in(
        &self,
        sh: &Shard,
        snap: &Snapshot<'_>,
        dir: u64,
    ) -> FsResult<BTreeMap<Vec<u8>, (u64, Kind)>> {
        let mut out = history::list_at(snap, dir)?;
        let mut apply = |d: &Delta| {
            if let Some(m) = d.dirents.get(&dir) {
                for (name, e) in m {
                    match e {
                        Some(e) => out.insert(name.clone(), *e),
                        None => out.remove(name),
                    };
                }
            }
        };
        if let Some(c) = &sh.committing {
            apply(c);
        }
        apply(&sh.delta);
        Ok(out)
    }

    /// The bytes of block `idx` of a file (shorter than a block at the end
    /// of the data; empty for a hole).
    pub(super) fn block_in<'a>(
        &self,
        sh: &'a Shard,
        snap: &Snapshot<'a>,
        ino: u64,
        idx: u64,
    ) -> FsResult<BlockRef<'a>> {
        for d in [Some(&sh.delta), sh.committing.as_deref()]
            .into_iter()
            .flatten()
        {
            if let Some(b) = d.blocks.get(&(ino, idx)) {
                return Ok(match b {
                    Some(v) => BlockRef::Mem(v),
                    None => BlockRef::Hole,
                });
            }
            if d.truncs.get(&ino).is_some_and(|&t| idx >= t)
                || matches!(d.inodes.get(&ino), Some(None))
            {
                return Ok(BlockRef::Hole);
            }
        }
        Ok(BlockRef::Store(history::block_at(snap, ino, idx)?))
    }

    pub(super) fn snap(&self) -> FsResult<Snapshot<'_>> {
        Ok(self.store.latest()?)
    }
}

/// Looks a key up in the shard's delta, then in the delta being committed.
pub(super) fn layered<T>(
    sh: &Shard,
    get: impl Fn(&Delta) -> Option<Result<T, ()>>,
) -> FsResult<Found<T>> {
    for d in [Some(&sh.delta), sh.committing.as_deref()]
        .into_iter()
        .flatten()
    {
        match get(d) {
            Some(Ok(v)) => return Ok(Found::Yes(v)),
            Some(Err(())) => return Ok(Found::Gone),
            None => {}
        }
    }
    Ok(Found::Unknown)
}

/// A block's bytes, wherever they are.
pub(super) enum BlockRef<'a> {
    Mem(&'a [u8]),
    Store(&'a [u8]),
    Hole,
}

impl<'a> BlockRef<'a> {
    pub(super) fn bytes(&self) -> &'a [u8] {
        match self {
            BlockRef::Mem(b) | BlockRef::Store(b) => b,
            BlockRef::Hole => &[],
        }
    }
    pub(super) fn to_vec(&self) -> Vec<u8> {
        self.bytes().to_vec()
    }
}
