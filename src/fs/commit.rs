//! The commit pipeline: the cut across shards, the store transaction that
//! writes it (its large blocks hashed and written on the shards' I/O
//! threads: `commit/extents.rs`), making room on a full disk, and what
//! happens when a commit fails in a way that leaves the in-memory state
//! unsure.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use parking_lot::MutexGuard;

mod extents;

use super::*;
use crate::store::{Reserved, StoreError, VersionInfo, WriteTxn};
use extents::BlockJob;

impl Fs {
    /// Commits every change so far and waits until it is durable; callers
    /// arriving while a commit runs share the next one.
    pub fn fsync(&self) -> FsResult<()> {
        if self.failed.get().is_some() {
            return err(libc::EIO);
        }
        self.flush.sync(|| self.commit_now("fsync"))
    }

    /// Takes every shard's changes and commits them as one version.
    pub fn commit(&self, cause: &str) -> FsResult<()> {
        self.flush.exclusive(|| self.commit_now(cause))
    }

    /// Stops claiming durability: after a failure that leaves the changes
    /// held in memory unsure (a commit that panicked half way, a store
    /// whose writes failed), committing them could make a wrong state
    /// durable and answering fsync would be a lie. Every later change,
    /// fsync and commit fails with EIO; reads go on; the store is poisoned
    /// so nothing more is written to it, and the next mount opens it at
    /// the last commit that completed.
    fn fail(&self, why: String) {
        self.store.poison();
        if self.failed.set(why.clone()).is_ok() {
            tracing::error!(
                "{why}. From now on every write, fsync and commit fails with EIO (reads go on); \
                 changes not committed by then are lost. Unmount and mount again: the store \
                 opens at version {}, the last commit that completed",
                self.store.latest_version().unwrap_or(0)
            );
        }
    }

    /// Calls `hook` after every commit that made a version, with what it
    /// changed (once per filesystem; sync's client uses it to push without
    /// polling and to read only what changed).
    pub fn on_commit(&self, hook: Box<dyn Fn(&Changed) + Send + Sync>) {
        if self.commit_hook.set(hook).is_err() {
            tracing::warn!("a second commit hook was refused");
        }
    }

    /// Shows sync's state in `daemon.json` under `sync`.
    pub fn on_status(&self, status: Box<dyn Fn() -> serde_json::Value + Send + Sync>) {
        let _ = self.sync_status.set(status);
    }

    /// Adds sync's own check (its report, and how many problems it found)
    /// to a live `fsck` ([`Fs::sync_fsck`]).
    pub fn on_fsck(&self, check: Box<dyn Fn() -> (String, usize) + Send + Sync>) {
        let _ = self.sync_fsck.set(check);
    }

    /// Sync's own check, if the store syncs: its report and problems.
    pub fn sync_fsck(&self) -> Option<(String, usize)> {
        self.sync_fsck.get().map(|check| check())
    }

    /// Tells the kernel side that these inodes and entries changed from
    /// elsewhere (see [`KernelSide::invalidate`]).
    pub fn invalidate(&self, inodes: &[u64], entries: &[(u64, Vec<u8>)]) {
        if let Some(k) = self.kernel.get() {
            k.invalidate(inodes, entries);
        }
    }

    /// Why the filesystem stopped taking changes, if it did (see [`Fs::fail`]).
    pub fn failure(&self) -> Option<&str> {
        self.failed.get().map(String::as_str)
    }

    /// Changes held in memory, not yet in any version: (inodes changed,
    /// bytes of data, some names they go by: first of the files whose data
    /// is unsaved, then of the entries made).
    pub fn unsaved(&self) -> (usize, u64, Vec<String>) {
        const NAMES: usize = 8;
        let mut inodes = std::collections::HashSet::new();
        let mut with_data = std::collections::BTreeSet::new();
        let mut named: std::collections::BTreeMap<u64, String> = Default::default();
        let mut bytes = 0;
        for sh in self.shards.iter() {
            let sh = sh.lock();
            for d in std::iter::once(&sh.delta).chain(sh.committing.as_deref()) {
                inodes.extend(d.inodes.keys().copied());
                inodes.extend(d.xattrs.keys().map(|(i, _)| *i));
                with_data.extend(d.blocks.keys().map(|(i, _)| *i));
                bytes += d.bytes;
                for ents in d.dirents.values() {
                    for (name, e) in ents {
                        if let Some((ino, _)) = e {
                            named.insert(*ino, String::from_utf8_lossy(name).into_owned());
                        }
                    }
                }
            }
        }
        inodes.extend(with_data.iter().copied());
        let mut names: Vec<String> = with_data
            .iter()
            .filter_map(|i| named.get(i).cloned())
            .take(NAMES)
            .collect();
        // Files made before the last commit have their names in it.
        let unnamed: Vec<u64> = with_data
            .iter()
            .filter(|i| !named.contains_key(i))
            .take(NAMES)
            .copied()
            .collect();
        names.extend(self.committed_names(&unnamed, NAMES.saturating_sub(names.len())));
        for (ino, n) in &named {
            if names.len() >= NAMES {
                break;
            }
            if !with_data.contains(ino) {
                names.push(n.clone());
            }
        }
        (inodes.len(), bytes, names)
    }

    /// Up to `want` names the last commit gives `inos`, from a bounded scan
    /// of the directory entries (for messages, on the way out).
    fn committed_names(&self, inos: &[u64], want: usize) -> Vec<String> {
        let mut names = Vec::new();
        if inos.is_empty() || want == 0 {
            return names;
        }
        let Ok(snap) = self.snap() else {
            return names;
        };
        let (first, past) = ([DIRENT], [DIRENT + 1]);
        let Ok(entries) = snap.range(&first[..]..&past[..]) else {
            return names;
        };
        for item in entries.take(1_000_000) {
            let Ok((key, e)) = item else {
                break;
            };
            let ino = e
                .value
                .get(..8)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_le_bytes);
            if ino.is_some_and(|i| inos.contains(&i)) {
                let name = key.get(dirent_prefix(0).len()..).unwrap_or_default();
                names.push(String::from_utf8_lossy(name).into_owned());
                if names.len() >= want {
                    break;
                }
            }
        }
        names
    }

    /// Makes the commit panic at `step` (tests of what a panic leaves).
    #[cfg(test)]
    pub(crate) fn panic_at(&self, step: Option<&'static str>) {
        *self.panic_at.lock() = step;
    }

    /// Where a test may make the commit panic.
    fn step(&self, _name: &'static str) {
        #[cfg(test)]
        {
            if *self.panic_at.lock() == Some(_name) {
                panic!("injected panic at commit step {_name:?}");
            }
            let hook = self.on_step.lock().clone();
            if let Some(h) = hook {
                h(_name);
            }
        }
    }

    /// Tells the commit hook of `version`, a commit that changed no file
    /// (gc, retention, letting go, the block index): it learns of every
    /// version this mount makes, so that a reader that reads at the last
    /// one it was told of is never left behind the newest.
    pub(super) fn reported(&self, version: VersionInfo) -> VersionInfo {
        if let Some(hook) = self.commit_hook.get() {
            hook(&Changed {
                version: version.id,
                ..Changed::default()
            });
        }
        version
    }

    /// Runs `hook` at every commit step (tests).
    #[cfg(test)]
    pub(crate) fn on_step(&self, hook: Option<Arc<dyn Fn(&'static str) + Send + Sync>>) {
        *self.on_step.lock() = hook;
    }

    /// Commits every change so far, or fails. A failure that leaves the
    /// in-memory state unsure (a panic anywhere in the commit, a poisoned
    /// store) fails the filesystem (see [`Fs::fail`]); any other (a full
    /// disk) puts the changes back for the next commit.
    pub(super) fn commit_now(&self, cause: &str) -> FsResult<()> {
        if let Some(why) = self.failed.get() {
            tracing::debug!("commit refused: {why}");
            return err(libc::EIO);
        }
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.commit_making_room(cause)
        }));
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                if matches!(e, FsError::Store(StoreError::Poisoned)) || self.store.is_poisoned() {
                    self.fail(format!(
                        "a commit failed and the store cannot be trusted: {e}"
                    ));
                }
                Err(e)
            }
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                self.fail(format!("a commit panicked ({what})"));
                err(libc::EIO)
            }
        }
    }

    /// Commits; when the disk is full, lets the oldest kept versions go,
    /// one at a time, and tries again, until the commit fits or only the
    /// newest version is left (then the error stands: the data waits in
    /// memory for space). History gives way to new data, never the other
    /// way round; the log and the versions' causes say which went.
    fn commit_making_room(&self, cause: &str) -> FsResult<()> {
        // Counted only once the disk is full: the version list is not
        // copied on every commit.
        let mut rounds: Option<usize> = None;
        let mut let_go: Option<(VersionInfo, VersionInfo)> = None;
        let r = loop {
            let e = match self.cut_and_commit(cause) {
                Err(FsError::Store(e)) if e.is_no_space() => e,
                r => break r,
            };
            // The oldest version that is not itself a record of letting go.
            let versions = self.store.versions();
            let rounds = rounds.get_or_insert(versions.len());
            let Some(oldest) = versions
                .iter()
                .find(|v| !v.cause.starts_with(LET_GO))
                .filter(|v| Some(v.id) != versions.last().map(|l| l.id) && *rounds > 0)
            else {
                break Err(e.into());
            };
            *rounds -= 1;
            let mut t = self.store.begin_write()?;
            t.use_reserve();
            // Earlier records of letting go hold nothing of their own: the
            // newest one says how far it went.
            let records: Vec<u64> = versions
                .iter()
                .filter(|v| v.cause.starts_with(LET_GO))
                .map(|v| v.id)
                .collect();
            t.let_go_of(records.iter().copied().chain([oldest.id]).collect());
            t.tag(&self.own_tag());
            self.reported(t.commit(&format!("{LET_GO} {} let go", oldest.id))?);
            let first = let_go.map_or_else(|| oldest.clone(), |(f, _)| f);
            let_go = Some((first, oldest.clone()));
        };
        if let Some((first, last)) = let_go
            && let Some(quiet) = self.space_log.lock().allow()
        {
            tracing::warn!(
                "the disk holding the store is full: versions {} to {} ({} to {}) let go to make \
                 room, {} kept{}{}",
                first.id,
                last.id,
                history::rfc3339(first.time),
                history::rfc3339(last.time),
                self.store.versions().len(),
                if r.is_err() { "; still no room" } else { "" },
                if quiet > 0 {
                    format!(" ({quiet} more times since this was last logged)")
                } else {
                    String::new()
                }
            );
        }
        r
    }

    fn cut_and_commit(&self, cause: &str) -> FsResult<()> {
        // The cut: every shard at once.
        let mut deltas: Vec<(usize, Arc<Delta>)> = Vec::new();
        {
            let mut guards: Vec<MutexGuard<'_, Shard>> =
                self.shards.iter().map(|s| s.lock()).collect();
            for (i, g) in guards.iter_mut().enumerate() {
                if g.delta.is_empty() {
                    continue;
                }
                let d = Arc::new(std::mem::take(&mut g.delta));
                g.committing = Some(d.clone());
                deltas.push((i, d));
            }
        }
        if deltas.is_empty() {
            return Ok(());
        }
        self.step("cut");
        let bytes: u64 = deltas.iter().map(|(_, d)| d.bytes).sum();
        let unapplied = self.unapplied.lock().clone();
        let (cut_origin, cause) = match &unapplied {
            Some((o, c)) => (
                *o,
                std::borrow::Cow::Owned(format!("{c} (after waiting for room)")),
            ),
            None => (*self.origin.lock(), std::borrow::Cow::Borrowed(cause)),
        };
        let mut changed = self.commit_hook.get().map(|_| {
            let mut c = Changed::of(&deltas);
            c.own = cut_origin.peer == 0;
            c.bytes = bytes;
            if !c.own {
                // A change from elsewhere (`apply_remote`): the files it
                // wrote are read whole once, so whatever the sync thread
                // expected of them and this wrote differently is found.
                c.data.clear();
            }
            c
        });
        let result = self.write_deltas(&deltas, &cause, cut_origin);
        self.step("after commit");
        for (i, d) in deltas {
            let mut g = self.shards[i].lock();
            g.committing = None;
            if result.is_err() {
                // Put the changes back under the newer ones.
                let mut old = Arc::try_unwrap(d).unwrap_or_else(|a| (*a).clone());
                old.absorb(std::mem::take(&mut g.delta));
                g.delta = old;
            }
        }
        if let Ok(version) = result {
            // The change from elsewhere that did not fit is in: its
            // sequence is applied here now.
            if unapplied.is_some()
                && self
                    .unapplied
                    .lock()
                    .take_if(|u| u.0 == cut_origin)
                    .is_some()
            {
                let mut o = self.origin.lock();
                o.seq = o.seq.max(cut_origin.seq);
            }
            if let (Some(hook), Some(c)) = (self.commit_hook.get(), &mut changed) {
                c.version = version;
                hook(c);
            }
            self.sub_dirty(bytes);
            // The room is only consulted while space is promised (and
            // measuring it walks the store's free lists): not on every commit.
            if self.promised_bytes() > 0 {
                self.refresh_room();
            }
        }
        result.map(|_| ())
    }

    fn write_deltas(
        &self,
        deltas: &[(usize, Arc<Delta>)],
        cause: &str,
        origin: history::Origin,
    ) -> FsResult<u64> {
        // Phase timings, logged at debug level (the store logs its own).
        let t0 = std::time::Instant::now();
        let mut t = self.store.begin_write()?;
        // A commit that creates nothing and adds no data (deletes, renames,
        // attribute changes) may use the reserve: on a full disk, deleting
        // must still work, and nothing can fill the reserve with it.
        let first_new = self.committed_next_ino.load(Ordering::Relaxed);
        if deltas.iter().all(|(_, d)| d.only_frees(first_new)) {
            t.use_reserve();
        }
        self.step("edit");
        let t1 = std::time::Instant::now();
        let mut meta = Vec::with_capacity(28);
        let next_ino = self.next_ino.load(Ordering::Relaxed);
        meta.extend_from_slice(&next_ino.to_le_bytes());
        meta.extend_from_slice(&(self.block_size as u32).to_le_bytes());
        meta.extend_from_slice(&self.fs_id.to_le_bytes());
        t.put(META_KEY, &meta)?;
        let mut extent_jobs: Vec<BlockJob> = Vec::new();
        let index = self.keeps_block_index();
        let mut changes = blockindex::Changes::default();
        for (shard, d) in deltas {
            let extents = put_delta(&mut t, d, index.then_some(&mut changes))?;
            if !extents.is_empty() {
                extent_jobs.push(BlockJob {
                    shard: *shard,
                    delta: Arc::clone(d),
                    blocks: extents,
                });
            }
        }
        let t2 = std::time::Instant::now();
        let blocks: usize = extent_jobs.iter().map(|j| j.blocks.len()).sum();
        for written in self.write_blocks(extent_jobs)? {
            for w in written {
                t.put_with_reserved(&block_key(w.ino, w.idx), &w.hash, w.extent, w.sum)?;
                if index {
                    changes.added(&w.hash, w.ino, w.idx);
                }
            }
        }
        let t3 = std::time::Instant::now();
        self.step("store commit");
        let index = match index {
            true => Some(self.write_index(&mut t, changes)?),
            false => None,
        };
        t.tag(&origin.tag());
        let version = t.commit(cause)?.id;
        if let Some(w) = index {
            self.index_committed(w);
        }
        self.committed_next_ino.store(next_ino, Ordering::Relaxed);
        tracing::debug!(
            blocks,
            wait_writer = ?(t1 - t0),
            edit = ?(t2 - t1),
            hash_write = ?(t3 - t2),
            store_commit = ?t3.elapsed(),
            "fs commit"
        );
        Ok(version)
    }

    /// Runs the background committer until `stop` is called.
    pub fn spawn_flusher(self: &Arc<Self>) -> std::thread::JoinHandle<()> {
        let fs = Arc::clone(self);
        std::thread::Builder::new()
            .name("zippy-flush".into())
            .spawn(move || {
                let interval = fs.opts.flush_interval;
                let mut log = RepeatedError::default();
                while fs.flush.wait(interval) {
                    match fs.commit("writeback") {
                        Ok(()) => log.ok(),
                        Err(e) => log.failed(&e.to_string()),
                    }
                    // Closes ask for a commit: this runs after most.
                    fs.prune_released();
                }
            })
            .expect("spawn the committer thread")
    }

    /// Stops the committer and commits what is left.
    pub fn shutdown(&self) -> FsResult<()> {
        self.unmounting.store(true, Ordering::Release);
        self.flush.stop();
        self.commit("unmount")?;
        // Else the next open rebuilds it: the index is saved at a clean
        // close, as the store's allocator state is.
        if let Err(e) = self.fold_block_index() {
            tracing::warn!("cannot save the block index ({e}); the next mount rebuilds it");
        }
        Ok(())
    }
}

/// Lets a repeated log line through at most once a minute.
#[derive(Default)]
pub(super) struct Throttle {
    last: Option<std::time::Instant>,
    held: u64,
}

impl Throttle {
    /// `Some(lines held back since the last one)` if this one may go out.
    fn allow(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self.last.is_some_and(|t| now - t < Duration::from_secs(60)) {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// How the cause of a commit that let old versions go for space begins.
const LET_GO: &str = "disk full: versions up to";

/// Logs a background commit's failure once, then the same failure again
/// at most once a minute with how often it happened meanwhile, so a full
/// disk does not fill the log (each write that finds the cache full asks
/// for a commit).
#[derive(Default)]
struct RepeatedError {
    last: String,
    throttle: Throttle,
}

impl RepeatedError {
    fn failed(&mut self, e: &str) {
        if self.last != e {
            self.last = e.to_string();
            self.throttle = Throttle::default();
        }
        match self.throttle.allow() {
            Some(0) => tracing::error!("background commit failed: {e}"),
            Some(n) => tracing::error!(
                "background commit failed: {e} (and {n} more times since it was last logged)"
            ),
            None => {}
        }
    }

    fn ok(&mut self) {
        if !self.last.is_empty() {
            tracing::info!(
                "background commits succeed again (after {} unlogged failures)",
                self.throttle.held
            );
        }
        *self = RepeatedError::default();
    }
}

/// Puts one shard's delta into the transaction (and what it does to the
/// block index into `index`, for a store that keeps one); returns the
/// large blocks, each given an extent, whose bytes are still to be hashed
/// and written.
fn put_delta(
    t: &mut WriteTxn<'_>,
    d: &Delta,
    mut index: Option<&mut blockindex::Changes>,
) -> FsResult<Vec<(u64, u64, Reserved)>> {
    // Inodes that are gone take all their keys with them.
    for (&ino, i) in &d.inodes {
        if i.is_none() {
            t.delete(&inode_key(ino))?;
            t.delete(&symlink_key(ino))?;
            t.delete(&orphan_key(ino))?;
            let blocks = block_prefix(ino);
            if let Some(ch) = index.as_deref_mut() {
                ch.removed_range(t, &blocks, &prefix_end(&blocks))?;
            }
            delete_prefix(t, &blocks)?;
            delete_prefix(t, &xattr_prefix(ino))?;
        }
    }
    for (&ino, &from) in &d.truncs {
        let start = block_key(ino, from);
        let end = prefix_end(&block_prefix(ino));
        if let Some(ch) = index.as_deref_mut() {
            ch.removed_range(t, &start, &end)?;
        }
        delete_range(t, &start, &end)?;
    }
    for (&ino, i) in &d.inodes {
        if let Some(i) = i {
            t.put(&inode_key(ino), &i.encode())?;
        }
    }
    for (&dir, ents) in &d.dirents {
        for (name, e) in ents {
            let k = dirent_key(dir, name);
            match e {
                Some((ino, kind)) => {
                    let mut v = [0u8; 9];
                    v[..8].copy_from_slice(&ino.to_le_bytes());
                    v[8] = kind.code();
                    t.put(&k, &v)?;
                }
                None => {
                    t.delete(&k)?;
                }
            }
        }
    }
    // Large blocks get an extent now and are hashed and written
    // below, by their shard's I/O thread; small ones live in the entry.
    let mut extents = Vec::new();
    for (&(ino, idx), b) in &d.blocks {
        let k = block_key(ino, idx);
        if let Some(ch) = index.as_deref_mut() {
            ch.removed(t, ino, idx)?;
        }
        match b {
            Some(data) if data.len() > INLINE_BLOCK => {
                extents.push((ino, idx, t.reserve_extent(data.len() as u64)?));
            }
            Some(data) if !data.is_empty() => {
                let mut v = Vec::with_capacity(32 + data.len());
                v.extend_from_slice(blake3::hash(data).as_bytes());
                v.extend_from_slice(data);
                t.put(&k, &v)?;
                if let Some(ch) = index.as_deref_mut() {
                    ch.added(&v[..32], ino, idx);
                }
            }
            _ => {
                t.delete(&k)?;
            }
        }
    }
    for ((ino, name), v) in &d.xattrs {
        let k = xattr_key(*ino, name);
        match v {
            Some(v) => t.put(&k, v)?,
            None => {
                t.delete(&k)?;
            }
        }
    }
    for (&ino, target) in &d.symlinks {
        t.put(&symlink_key(ino), target)?;
    }
    for (&fid, ino) in &d.file_ids {
        match ino {
            Some(ino) => t.put(&file_id_key(fid), &ino.to_le_bytes())?,
            None => {
                t.delete(&file_id_key(fid))?;
            }
        }
    }
    for (&ino, &orphan) in &d.orphans {
        if orphan {
            t.put(&orphan_key(ino), b"")?;
        } else {
            t.delete(&orphan_key(ino))?;
        }
    }
    Ok(extents)
}

/// What one commit changed, for the commit hook: the inodes whose record,
/// data, xattrs or symlink target changed (or that went), and the
/// directory entries made or removed (directory inode, name).
#[derive(Debug, Default)]
pub struct Changed {
    /// The version the commit made (already visible when the hook runs).
    pub version: u64,
    pub inodes: Vec<u64>,
    pub entries: Vec<(u64, Vec<u8>)>,
    /// Of each changed inode that is still there, which of its blocks
    /// changed (block entries change only as a commit's delta says), so
    /// that a reader may read those alone; an inode of `inodes` not here
    /// went, or is to be read whole (every inode of a change applied from
    /// elsewhere).
    pub data: HashMap<u64, BlocksChanged>,
    /// Made here, not applied from elsewhere (`apply_remote`).
    pub own: bool,
    /// The data the commit wrote (its deltas' dirty bytes).
    pub bytes: u64,
}

/// Which blocks of one file one or more commits changed: those in
/// `blocks` (written, made holes, or cut) are as the store has them now;
/// every other block at or past `cut` went; no other block changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlocksChanged {
    pub cut: Option<u64>,
    pub blocks: Vec<u64>,
}

impl BlocksChanged {
    /// Adds what a later commit changed.
    pub fn then(&mut self, later: &BlocksChanged) {
        self.cut = match (self.cut, later.cut) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.blocks.extend_from_slice(&later.blocks);
    }
}

impl Changed {
    fn of(deltas: &[(usize, Arc<Delta>)]) -> Changed {
        let mut inodes = std::collections::HashSet::new();
        let mut entries = Vec::new();
        let mut gone = std::collections::HashSet::new();
        let mut data: HashMap<u64, BlocksChanged> = HashMap::new();
        for (_, d) in deltas {
            inodes.extend(d.inodes.keys().copied());
            gone.extend(
                d.inodes
                    .iter()
                    .filter(|(_, i)| i.is_none())
                    .map(|(ino, _)| *ino),
            );
            inodes.extend(d.blocks.keys().map(|(i, _)| *i));
            inodes.extend(d.truncs.keys().copied());
            inodes.extend(d.xattrs.keys().map(|(i, _)| *i));
            inodes.extend(d.symlinks.keys().copied());
            for &(ino, idx) in d.blocks.keys() {
                data.entry(ino).or_default().blocks.push(idx);
            }
            // A delta's truncation goes before its blocks (`put_delta`).
            for (&ino, &from) in &d.truncs {
                data.entry(ino).or_default().then(&BlocksChanged {
                    cut: Some(from),
                    blocks: Vec::new(),
                });
            }
            for (dir, ents) in &d.dirents {
                entries.extend(ents.keys().map(|n| (*dir, n.clone())));
            }
        }
        for &ino in &inodes {
            if gone.contains(&ino) {
                data.remove(&ino);
            } else {
                data.entry(ino).or_default();
            }
        }
        Changed {
            version: 0,
            inodes: inodes.into_iter().collect(),
            entries,
            data,
            own: false,
            bytes: 0,
        }
    }
}

fn delete_prefix(t: &mut crate::store::WriteTxn<'_>, prefix: &[u8]) -> FsResult<()> {
    delete_range(t, prefix, &prefix_end(prefix))
}

fn delete_range(t: &mut crate::store::WriteTxn<'_>, start: &[u8], end: &[u8]) -> FsResult<()> {
    let keys: Vec<Vec<u8>> = t
        .range((Bound::Included(start), Bound::Excluded(end)))?
        .map(|r| r.map(|(k, _)| k.to_vec()))
        .collect::<Result<_, _>>()?;
    for k in keys {
        t.delete(&k)?;
    }
    Ok(())
}
