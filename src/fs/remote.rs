//! Files by the ids every peer knows them by: what sync reads of the last
//! commit, and how it writes changes made elsewhere. Local inode numbers
//! never leave this file; the root is [`ROOT_FILE_ID`] on every peer.
//!
//! A change from elsewhere is applied only onto the commit it was worked
//! out against, with no change of this mount's pending in memory: the
//! caller commits, reads, works out the change, and tries again when
//! [`Fs::apply_remote`] answers [`Applied::Moved`] because a program
//! changed something in between.

use std::collections::HashMap;

use super::*;

/// The root directory's file id on every peer.
pub const ROOT_FILE_ID: u128 = 1;

/// One file of a commit, as sync sees it.
#[derive(Clone, Debug)]
pub struct FileState {
    pub id: u128,
    pub inode: Inode,
    /// Block index → BLAKE3 hash.
    pub blocks: Vec<(u64, [u8; 32])>,
    /// `Some`: read in part, `blocks` holds these blocks alone (those of
    /// them that are there); see [`BlocksChanged`].
    pub only: Option<BlocksChanged>,
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub target: Vec<u8>,
}

/// The whole of a commit by file id (files without a name, such as those
/// unlinked while open, are not in it).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct Committed {
    pub version: u64,
    pub files: Vec<FileState>,
    /// (directory id, name, file id).
    pub names: Vec<(u128, Vec<u8>, u128)>,
}

/// Part of a commit (see [`Fs::committed_part`]).
#[derive(Debug, Default)]
pub struct Part {
    pub version: u64,
    /// (inode, its state, or `None` if it is gone).
    pub files: Vec<(u64, Option<FileState>)>,
    /// (directory id, name, file id or `None`: no such entry).
    pub entries: Vec<(u128, Vec<u8>, Option<u128>)>,
}

/// The inode a key of the form `X ino ...` is about.
fn ino_in_key(k: &[u8]) -> Option<u64> {
    k.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
}

/// The directory and the inode a directory entry's key and value name.
fn dirent_in(k: &[u8], v: &[u8]) -> Option<(u64, u64)> {
    let child = v.get(..8)?.try_into().ok().map(u64::from_le_bytes)?;
    Some((ino_in_key(k)?, child))
}

/// One file's state in `snap`: its blocks, xattrs and symlink target.
/// With `only`, of its blocks only those (the rest are as they were).
fn file_state(
    snap: &Snapshot<'_>,
    id: u128,
    inode: Inode,
    only: Option<&BlocksChanged>,
) -> FsResult<FileState> {
    let ino = inode.ino;
    let mut f = FileState {
        id,
        inode,
        blocks: Vec::new(),
        xattrs: Vec::new(),
        target: Vec::new(),
        only: None,
    };
    let (b, x) = (block_prefix(ino), xattr_prefix(ino));
    if let Some(part) = only {
        let mut idx = part.blocks.clone();
        idx.sort_unstable();
        idx.dedup();
        for i in &idx {
            if let Some(e) = snap.get_entry(&block_key(ino, *i))?
                && let Some(hash) = e.value.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok())
            {
                f.blocks.push((*i, hash));
            }
        }
        f.only = Some(BlocksChanged {
            cut: part.cut,
            blocks: idx,
        });
    }
    let whole = if f.only.is_none() {
        Some(snap.range(&b[..]..&prefix_end(&b)[..])?)
    } else {
        None
    };
    for item in whole.into_iter().flatten() {
        let (k, v) = item?;
        let idx = k
            .get(9..17)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_be_bytes);
        let hash = v.value.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok());
        if let (Some(idx), Some(hash)) = (idx, hash) {
            f.blocks.push((idx, hash));
        }
    }
    for item in snap.range(&x[..]..&prefix_end(&x)[..])? {
        let (k, v) = item?;
        f.xattrs.push((k[9..].to_vec(), v.value.to_vec()));
    }
    if let Some(t) = snap.get(&symlink_key(ino))? {
        f.target = t.to_vec();
    }
    Ok(f)
}

/// A file's new content from elsewhere.
#[derive(Clone, Debug)]
pub struct RemoteFile {
    pub id: u128,
    pub kind: Kind,
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub rdev: u32,
    pub size: u64,
    pub mtime: Time,
    /// Everything is given: blocks and xattrs not listed are gone.
    pub whole: bool,
    /// Blocks from this index on are gone.
    pub cut: Option<u64>,
    /// Blocks set (their bytes) or made holes.
    pub blocks: Vec<(u64, Option<Vec<u8>>)>,
    pub xattrs: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    pub target: Option<Vec<u8>>,
}

/// A change from elsewhere, worked out against commit `base`.
#[derive(Clone, Debug, Default)]
pub struct RemoteChange {
    pub base: u64,
    pub files: Vec<RemoteFile>,
    /// (directory id, name) no longer there.
    pub unlinked: Vec<(u128, Vec<u8>)>,
    /// (directory id, name, file id) made.
    pub linked: Vec<(u128, Vec<u8>, u128)>,
}

/// What [`Fs::apply_remote`] did.
#[derive(Debug)]
pub enum Applied {
    /// Applied and committed: the inodes whose content changed and the
    /// (directory inode, name) entries that changed, for the kernel's caches.
    Done {
        inodes: Vec<u64>,
        entries: Vec<(u64, Vec<u8>)>,
    },
    /// Something changed here since `base`: work it out again.
    Moved,
}

impl Fs {
    /// Every file and name of the last commit, by file id, whole: read by
    /// its own walk of the store, apart from [`Fs::each_file`] and
    /// [`Fs::each_entry`] (what sync reads), for tests to hold them to.
    #[cfg(test)]
    pub fn committed(&self) -> FsResult<Committed> {
        let snap = self.snap()?;
        let mut out = Committed {
            version: snap.version(),
            ..Default::default()
        };
        let mut ids: HashMap<u64, u128> = HashMap::new();
        let mut files = std::collections::BTreeMap::<u64, FileState>::new();
        for item in snap.range(&b"I"[..]..&b"J"[..])? {
            let (k, v) = item?;
            let Some(ino) = ino_in_key(k) else {
                continue;
            };
            let inode = Inode::decode(ino, v.value)?;
            let id = if ino == ROOT {
                ROOT_FILE_ID
            } else {
                inode.file_id
            };
            ids.insert(ino, id);
            files.insert(
                ino,
                FileState {
                    id,
                    inode,
                    blocks: Vec::new(),
                    xattrs: Vec::new(),
                    target: Vec::new(),
                    only: None,
                },
            );
        }
        for item in snap.range(&[DIRENT][..]..&[DIRENT + 1][..])? {
            let (k, v) = item?;
            let Some((dir, child)) = dirent_in(k, v.value) else {
                continue;
            };
            if let (Some(&d), Some(&c)) = (ids.get(&dir), ids.get(&child)) {
                out.names.push((d, k[9..].to_vec(), c));
            }
        }
        for item in snap.range(&b"B"[..]..&b"C"[..])? {
            let (k, v) = item?;
            let (Some(ino), Some(idx), Some(hash)) = (
                ino_in_key(k),
                k.get(9..17)
                    .and_then(|b| b.try_into().ok())
                    .map(u64::from_be_bytes),
                v.value.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok()),
            ) else {
                continue;
            };
            if let Some(f) = files.get_mut(&ino) {
                f.blocks.push((idx, hash));
            }
        }
        for item in snap.range(&b"X"[..]..&b"Y"[..])? {
            let (k, v) = item?;
            if let Some(f) = ino_in_key(k).and_then(|i| files.get_mut(&i)) {
                f.xattrs.push((k[9..].to_vec(), v.value.to_vec()));
            }
        }
        for item in snap.range(&b"S"[..]..&b"T"[..])? {
            let (k, v) = item?;
            if let Some(f) = ino_in_key(k).and_then(|i| files.get_mut(&i)) {
                f.target = v.value.to_vec();
            }
        }
        let named: std::collections::HashSet<u128> = out.names.iter().map(|n| n.2).collect();
        out.files = files
            .into_values()
            .filter(|f| f.id == ROOT_FILE_ID || named.contains(&f.id))
            .collect();
        Ok(out)
    }

    /// Every file of the commit `snap` shows that has a name (and the
    /// root), one at a time in inode order, without holding them all;
    /// stops at the first error `f` returns.
    pub fn each_file<E: From<FsError>>(
        &self,
        snap: &Snapshot<'_>,
        f: &mut dyn FnMut(FileState) -> Result<(), E>,
    ) -> Result<(), E> {
        for item in snap.range(&b"I"[..]..&b"J"[..]).map_err(FsError::from)? {
            let (k, v) = item.map_err(FsError::from)?;
            let Some(ino) = ino_in_key(k) else {
                continue;
            };
            let inode = Inode::decode(ino, v.value)?;
            // Unlinked while open: no name, not in the tree.
            if ino != ROOT && inode.nlink == 0 {
                continue;
            }
            let id = if ino == ROOT {
                ROOT_FILE_ID
            } else {
                inode.file_id
            };
            f(file_state(snap, id, inode, None)?)?;
        }
        Ok(())
    }

    /// Every entry of the commit `snap` shows, as (directory id, name,
    /// file id), one at a time in key order; stops at the first error `f`
    /// returns.
    #[allow(clippy::type_complexity)]
    pub fn each_entry<E: From<FsError>>(
        &self,
        snap: &Snapshot<'_>,
        f: &mut dyn FnMut(u128, &[u8], u128) -> Result<(), E>,
    ) -> Result<(), E> {
        let id_of = |ino: u64| -> FsResult<Option<u128>> { self.file_id_at(snap, ino) };
        let mut dir: Option<(u64, Option<u128>)> = None;
        for item in snap
            .range(&[DIRENT][..]..&[DIRENT + 1][..])
            .map_err(FsError::from)?
        {
            let (k, v) = item.map_err(FsError::from)?;
            let Some((d, child)) = dirent_in(k, v.value) else {
                continue;
            };
            // Entries come by directory: its id is looked up once.
            let d_id = match dir {
                Some((at, id)) if at == d => id,
                _ => {
                    let id = id_of(d)?;
                    dir = Some((d, id));
                    id
                }
            };
            if let (Some(d_id), Some(c_id)) = (d_id, id_of(child)?) {
                f(d_id, &k[9..], c_id)?;
            }
        }
        Ok(())
    }

    /// Whether the commit `snap` shows has the file `fid` with a name.
    pub fn has_file_in(&self, snap: &Snapshot<'_>, fid: u128) -> FsResult<bool> {
        Ok(match self.ino_of(snap, &[], fid)? {
            Some(ROOT) => true,
            Some(ino) => history::inode_at(snap, ino)?.is_some_and(|i| i.nlink > 0),
            None => false,
        })
    }

    /// The file entry (`dir`, `name`) names in the commit `snap` shows.
    pub fn entry_in(&self, snap: &Snapshot<'_>, dir: u128, name: &[u8]) -> FsResult<Option<u128>> {
        let Some(d) = self.ino_of(snap, &[], dir)? else {
            return Ok(None);
        };
        match history::dirent_at(snap, d, name)? {
            Some((c, _)) => self.file_id_at(snap, c),
            None => Ok(None),
        }
    }

    /// Commit `through`, or the last one if that one is no longer kept
    /// (or for 0): where [`Fs::committed_part`] reads.
    pub fn commit_or_latest(&self, through: u64) -> FsResult<Snapshot<'_>> {
        match (through != 0).then(|| self.store.snapshot(through)) {
            Some(Ok(s)) => Ok(s),
            Some(Err(crate::store::StoreError::NoSuchVersion(_))) | None => self.snap(),
            Some(Err(e)) => Err(e.into()),
        }
    }

    /// Part of the commit `snap` shows: the state of `inodes` (`None`:
    /// gone or without a record) and of the entries `(directory inode,
    /// name)`, as (directory id, name, file id or `None`); entries of a
    /// directory that is gone are left out. O(what is asked), not O(files).
    ///
    /// `blocks` says which blocks of which of `inodes` changed in the
    /// commits up to `through` (what [`Changed::data`] said): if `snap` is
    /// commit `through`, only those blocks are read of them
    /// (`FileState::only`). Commits go on meanwhile, so the read is at
    /// `through`, not at the last commit, whose changes the caller has not
    /// been told yet.
    pub fn committed_part(
        &self,
        snap: &Snapshot<'_>,
        inodes: &[u64],
        blocks: &HashMap<u64, BlocksChanged>,
        through: u64,
        entries: &[(u64, Vec<u8>)],
    ) -> FsResult<Part> {
        let known = snap.version() == through;
        let mut out = Part {
            version: snap.version(),
            ..Default::default()
        };
        let id_of = |ino: u64, i: &Inode| if ino == ROOT { ROOT_FILE_ID } else { i.file_id };
        for &ino in inodes {
            let state = match history::inode_at(snap, ino)? {
                Some(inode) => {
                    let only = blocks.get(&ino).filter(|_| known);
                    Some(file_state(snap, id_of(ino, &inode), inode, only)?)
                }
                None => None,
            };
            out.files.push((ino, state));
        }
        for (dir, name) in entries {
            let Some(d) = history::inode_at(snap, *dir)? else {
                continue;
            };
            let child = match history::dirent_at(snap, *dir, name)? {
                Some((c, _)) => history::inode_at(snap, c)?.map(|i| id_of(c, &i)),
                None => None,
            };
            out.entries.push((id_of(*dir, &d), name.clone(), child));
        }
        Ok(out)
    }

    /// The bytes of block `idx` of the file with id `fid` in `version`.
    #[cfg(test)]
    pub fn committed_block(&self, version: u64, fid: u128, idx: u64) -> FsResult<Vec<u8>> {
        self.file_block_in(&self.store.snapshot(version)?, fid, idx)
    }

    /// The bytes of block `idx` of the file with id `fid` in `snap` (a
    /// snapshot held open keeps its version readable whatever retention
    /// decides meanwhile).
    pub fn file_block_in(&self, snap: &Snapshot<'_>, fid: u128, idx: u64) -> FsResult<Vec<u8>> {
        let ino = self
            .ino_of(snap, &[], fid)?
            .ok_or(FsError::Errno(libc::ENOENT))?;
        Ok(history::block_at(snap, ino, idx)?.to_vec())
    }

    /// The bytes of block `idx` of file `fid` in `snap` if the commit
    /// recorded `hash` for it (checked from the record, without hashing the
    /// block); `None` otherwise.
    pub fn file_block_if(
        &self,
        snap: &Snapshot<'_>,
        fid: u128,
        idx: u64,
        hash: &[u8; 32],
    ) -> FsResult<Option<Vec<u8>>> {
        let Some(ino) = self.ino_of(snap, &[], fid)? else {
            return Ok(None);
        };
        let Some(e) = snap.get_entry(&block_key(ino, idx))? else {
            return Ok(None);
        };
        if e.value.get(..32) != Some(&hash[..]) {
            return Ok(None);
        }
        Ok(Some(match e.extent {
            Some(x) => snap.read_extent(&x)?.to_vec(),
            None => e.value.get(32..).unwrap_or(&[]).to_vec(),
        }))
    }

    /// The inode of file id `fid` in the last commit, if it has one.
    /// The file id inode `ino` had in `snap` (`None`: it had no record).
    pub fn file_id_at(&self, snap: &Snapshot<'_>, ino: u64) -> FsResult<Option<u128>> {
        if ino == ROOT {
            return Ok(Some(ROOT_FILE_ID));
        }
        Ok(history::inode_at(snap, ino)?.map(|i| i.file_id))
    }

    pub fn ino_of_file_id(&self, fid: u128) -> FsResult<Option<u64>> {
        let snap = self.snap()?;
        self.ino_of(&snap, &[], fid)
    }

    /// The inode of file id `fid` here, if it has one: looked up in the
    /// pending index changes, then the index, then by the id's own form.
    fn ino_of(
        &self,
        snap: &Snapshot<'_>,
        pending: &[&HashMap<u128, Option<u64>>],
        fid: u128,
    ) -> FsResult<Option<u64>> {
        if fid == ROOT_FILE_ID {
            return Ok(Some(ROOT));
        }
        for p in pending {
            if let Some(i) = p.get(&fid) {
                return Ok(*i);
            }
        }
        let ino = match snap.get(&file_id_key(fid))? {
            Some(v) => v
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes),
            None if (fid >> 64) as u64 == self.fs_id as u64 => Some(fid as u64),
            None => None,
        };
        // A stale index entry or a made-up id finds no such inode.
        Ok(match ino {
            Some(i) => history::inode_at(snap, i)?
                .filter(|n| n.file_id == fid)
                .map(|_| i),
            None => None,
        })
    }

    /// The last server sequence applied here: by the latest commit, or
    /// since with nothing to write ([`Fs::synced_through`]).
    pub fn synced_seq(&self) -> u64 {
        self.origin.lock().seq
    }

    /// The tag of a version with no change of its own (gc, retention):
    /// this mount's, built on the last sequence applied.
    pub(crate) fn own_tag(&self) -> Vec<u8> {
        let seq = self.origin.lock().seq;
        super::Origin { peer: 0, seq }.tag()
    }

    /// Sync applied up to server sequence `seq` with nothing to write
    /// here: this mount's next changes build on it.
    pub fn synced_through(&self, seq: u64) {
        self.origin.lock().seq = seq;
    }

    /// Applies a change worked out elsewhere against commit `change.base`,
    /// and commits it with `cause` as a version from `origin` (from then
    /// on this mount's own changes build on `origin.seq`). Refused
    /// ([`Applied::Moved`]) if anything changed here since, or a fenced
    /// file's fence tripped ([`Fs::fence`]): the caller works it out
    /// again. Clears the fences.
    pub fn apply_remote(
        &self,
        change: &RemoteChange,
        cause: &str,
        origin: history::Origin,
    ) -> FsResult<Applied> {
        self.writable(ROOT)?;
        let done = {
            let mut all: Vec<MutexGuard<'_, Shard>> =
                self.shards.iter().map(|s| s.lock()).collect();
            let quiet = all
                .iter()
                .all(|s| s.delta.is_empty() && s.committing.is_none());
            let tripped = Self::fences_tripped(&mut all);
            if !quiet || tripped || self.store.latest_version() != Some(change.base) {
                return Ok(Applied::Moved);
            }
            let snap = self.snap()?;
            let mut w = RemoteWriter {
                fs: self,
                snap: &snap,
                n: self.shards.len(),
                shards: &mut all,
                index: HashMap::new(),
                inodes: HashMap::new(),
                named: HashMap::new(),
                entries: Vec::new(),
                now: Time::now(),
            };
            let done = w.apply(change)?;
            // Set with every shard held: a commit that takes these changes
            // records them as from `origin`.
            let before = std::mem::replace(&mut *self.origin.lock(), origin);
            (done, before)
        };
        let (done, before) = done;
        match self.commit(cause) {
            Ok(()) => {
                *self.origin.lock() = history::Origin {
                    peer: 0,
                    seq: origin.seq,
                };
                Ok(done)
            }
            Err(e) => {
                // Put back (a full disk): the commit that takes these
                // changes records them as `origin`'s, not as this mount's
                // own, and until then this mount is built on what it was.
                // Any other failure stops commits altogether (`Fs::fail`).
                if matches!(&e, FsError::Store(s) if s.is_no_space()) {
                    *self.unapplied.lock() = Some((origin, cause.to_string()));
                }
                *self.origin.lock() = before;
                Err(e)
            }
        }
    }
}

/// Writes one remote change into the shards' deltas, all shards locked.
struct RemoteWriter<'a, 'g> {
    fs: &'a Fs,
    snap: &'a Snapshot<'a>,
    n: usize,
    shards: &'a mut Vec<MutexGuard<'g, Shard>>,
    index: HashMap<u128, Option<u64>>,
    /// Inodes read or changed, as they are now.
    inodes: HashMap<u64, Inode>,
    /// Names made minus names gone, per inode.
    named: HashMap<u64, i32>,
    entries: Vec<(u64, Vec<u8>)>,
    now: Time,
}

impl RemoteWriter<'_, '_> {
    fn shard(&mut self, ino: u64) -> &mut Shard {
        &mut self.shards[shard_of(ino, self.n)]
    }

    fn ino(&self, fid: u128) -> FsResult<Option<u64>> {
        self.fs.ino_of(self.snap, &[&self.index], fid)
    }

    fn inode(&mut self, ino: u64) -> FsResult<Inode> {
        if let Some(i) = self.inodes.get(&ino) {
            return Ok(i.clone());
        }
        let i = history::inode_at(self.snap, ino)?.ok_or(FsError::Errno(libc::ENOENT))?;
        self.inodes.insert(ino, i.clone());
        Ok(i)
    }

    fn apply(&mut self, change: &RemoteChange) -> FsResult<Applied> {
        let mut changed = Vec::new();
        for f in &change.files {
            changed.push(self.content(f)?);
        }
        for (dir, name) in &change.unlinked {
            let Some(d) = self.ino(*dir)? else { continue };
            let Some((child, kind)) = history::dirent_at(self.snap, d, name)? else {
                continue;
            };
            self.shard(d)
                .delta
                .dirents
                .entry(d)
                .or_default()
                .insert(name.clone(), None);
            self.relink(d, child, kind, -1)?;
            self.entries.push((d, name.clone()));
        }
        for (dir, name, fid) in &change.linked {
            let (Some(d), Some(child)) = (self.ino(*dir)?, self.ino(*fid)?) else {
                tracing::warn!("sync: a name for a file or in a directory not here; skipped");
                continue;
            };
            let kind = self.inode(child)?.kind;
            self.shard(d)
                .delta
                .dirents
                .entry(d)
                .or_default()
                .insert(name.clone(), Some((child, kind)));
            self.relink(d, child, kind, 1)?;
            self.entries.push((d, name.clone()));
        }
        for (ino, mut i) in std::mem::take(&mut self.inodes) {
            // A directory has one name: one gone and none made, it is gone.
            if i.kind == Kind::Dir && self.named.get(&ino).is_some_and(|&n| n < 0) {
                i.nlink = 0;
            }
            if i.nlink == 0 && ino != ROOT {
                let fid = i.file_id;
                let fs = self.fs;
                fs.drop_link(self.shard(ino), i);
                if (fid >> 64) as u64 != fs.fs_id as u64 {
                    self.index.insert(fid, None);
                }
            } else {
                self.shard(ino).delta.inodes.insert(ino, Some(i));
            }
        }
        for (fid, ino) in std::mem::take(&mut self.index) {
            self.shard(ROOT).delta.file_ids.insert(fid, ino);
        }
        Ok(Applied::Done {
            inodes: changed,
            entries: std::mem::take(&mut self.entries),
        })
    }

    /// A name of `child` (of `kind`) in directory `dir` made (+1) or gone (-1).
    fn relink(&mut self, dir: u64, child: u64, kind: Kind, by: i32) -> FsResult<()> {
        let now = self.now;
        let mut d = self.inode(dir)?;
        d.mtime = now;
        d.changed(now);
        *self.named.entry(child).or_default() += by;
        let mut c = self.inode(child)?;
        if kind == Kind::Dir {
            d.nlink = d.nlink.saturating_add_signed(by);
            if by > 0 {
                c.parent = dir;
            }
        } else {
            c.nlink = c.nlink.saturating_add_signed(by);
        }
        c.changed(now);
        self.inodes.insert(dir, d);
        // Read `dir` again when it is the child (a directory's own entry).
        if dir != child {
            self.inodes.insert(child, c);
        }
        Ok(())
    }

    /// A file's content; returns its inode.
    fn content(&mut self, f: &RemoteFile) -> FsResult<u64> {
        let ino = match self.ino(f.id)? {
            Some(i) => i,
            None => {
                let ino = self.fs.next_ino.fetch_add(1, Ordering::Relaxed);
                self.index.insert(f.id, Some(ino));
                let now = self.now;
                self.inodes.insert(
                    ino,
                    Inode {
                        ino,
                        kind: f.kind,
                        perm: f.perm,
                        nlink: if f.kind == Kind::Dir { 2 } else { 0 },
                        uid: f.uid,
                        gid: f.gid,
                        rdev: f.rdev,
                        flags: 0,
                        size: 0,
                        parent: 0,
                        atime: now,
                        mtime: f.mtime,
                        ctime: now,
                        crtime: now,
                        file_id: f.id,
                    },
                );
                ino
            }
        };
        let mut i = self.inode(ino)?;
        if i.kind != f.kind {
            tracing::warn!(ino, "sync: a change of a file's kind; skipped");
            return Ok(ino);
        }
        i.perm = f.perm;
        i.uid = f.uid;
        i.gid = f.gid;
        i.rdev = f.rdev;
        i.size = if f.kind == Kind::Dir { i.size } else { f.size };
        i.mtime = f.mtime;
        i.changed(self.now);
        let bs = self.fs.block_size;
        let fs = self.fs;
        if f.whole || f.cut.is_some() {
            let from = if f.whole { 0 } else { f.cut.unwrap_or(0) };
            let sh = self.shard(ino);
            let t = sh.delta.truncs.entry(ino).or_insert(from);
            *t = (*t).min(from);
        }
        if f.whole {
            let names: Vec<Vec<u8>> = self
                .snap
                .range(&xattr_prefix(ino)[..]..&prefix_end(&xattr_prefix(ino))[..])?
                .filter_map(|r| r.ok().map(|(k, _)| k[9..].to_vec()))
                .collect();
            for n in names {
                self.shard(ino).delta.xattrs.insert((ino, n), None);
            }
        }
        for (idx, data) in &f.blocks {
            let data = data.clone().map(|mut d| {
                d.truncate(bs as usize);
                d
            });
            fs.put_block(self.shard(ino), ino, *idx, data);
        }
        for (name, value) in &f.xattrs {
            self.shard(ino)
                .delta
                .xattrs
                .insert((ino, name.clone()), value.clone());
        }
        if let Some(t) = &f.target {
            self.shard(ino).delta.symlinks.insert(ino, t.clone());
        }
        self.inodes.insert(ino, i);
        Ok(ino)
    }
}
