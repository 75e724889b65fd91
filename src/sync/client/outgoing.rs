//! The sending side of a session: the local tree brought up to the last
//! commit, a push made of what changed (at most one in flight, the next
//! after a gap that grows with its size), and the blocks the server asks
//! for, whole or as patches, queued while the outbox has room.

use super::*;

/// The least time between two pushes. A change made after a quiet moment
/// goes at once; under a stream of commits (an fsync loop makes thousands
/// a second) the pushes, and the server's and every peer's commits for
/// them, are at most 1 / PUSH_GAP a second, each carrying all that
/// changed since the last.
pub(super) const PUSH_GAP: Duration = Duration::from_millis(20);

/// How much longer the gap after a push is per operation and block it
/// carried, up to [`PUSH_GAP_MAX`]: a stream of big changes (thousands of
/// files made a second) goes in fewer, bigger pushes, whose fixed costs
/// (a commit on the server and on every peer, the messages, the wakes)
/// the machine's own work no longer pays fifty times a second. One small
/// change still goes after [`PUSH_GAP`].
const PUSH_GAP_PER_ITEM: Duration = Duration::from_micros(200);
const PUSH_GAP_MAX: Duration = Duration::from_millis(200);

/// The gap after a push of `ops` operations naming `blocks` blocks.
fn push_gap(ops: usize, blocks: usize) -> Duration {
    let items = u32::try_from(ops.saturating_add(blocks)).unwrap_or(u32::MAX);
    (PUSH_GAP + PUSH_GAP_PER_ITEM.saturating_mul(items)).min(PUSH_GAP_MAX)
}

impl<'a> Session<'a> {
    /// Queues the blocks the server asked for while the outbox has room.
    pub(super) fn fill(&mut self) -> Result<(), SyncError> {
        while self.outbox()?.has_room() {
            let Some(h) = self.owed.pop_front() else {
                break;
            };
            let m = self.block_for_server(h)?;
            self.send(&m)?;
        }
        Ok(())
    }

    /// A block of the push in flight, for the server: as a patch against
    /// the block the server has in its place, when the version the last
    /// acknowledged push was read from still holds that block here and
    /// the patch is small; whole otherwise, or if the server asks again.
    pub(super) fn block_for_server(&mut self, h: Hash) -> Result<Msg, SyncError> {
        let (Some(&(fid, idx)), Some(snap)) = (self.push_places.get(&h), &self.push_snap) else {
            return Err(SyncError::Protocol(
                "the server wants a block not pushed".into(),
            ));
        };
        let data = self.fs.file_block_in(snap, fid, idx)?;
        let base = self.peer.synced.block(fid, idx).filter(|b| *b != h);
        if let (Some(base), Some(base_snap)) = (base, &self.base_snap)
            && self.patched.insert(h)
            && let Ok(Some(old)) = self.fs.file_block_if(base_snap, fid, idx, &base)
            && let Some(patch) = crate::sync::patch::diff(&old, &data)
        {
            return Ok(Msg::Patch {
                hash: h,
                base,
                patch,
            });
        }
        Ok(Msg::Block { hash: h, data })
    }

    /// Brings the local tree up to the last commit: whole the first time
    /// (and after a flood of changes), else only what the commits since
    /// changed.
    pub(super) fn read_local(&mut self) -> Result<u64, SyncError> {
        // The sets are swapped out, not drained, under the lock: the
        // commit hook takes it too, and this thread runs at a lower
        // priority, so it must not be preempted while holding it.
        let (inodes, entries, blocks, overflow) = {
            let mut t = self.view.touched.lock();
            self.view.read_through = t.through;
            t.listed = 0;
            (
                std::mem::take(&mut t.inodes),
                std::mem::take(&mut t.entries),
                std::mem::take(&mut t.blocks),
                std::mem::take(&mut t.overflow),
            )
        };
        let inodes: Vec<u64> = inodes.into_iter().collect();
        let entries: Vec<(u64, Vec<u8>)> = entries.into_iter().collect();
        let fs: &'a Arc<Fs> = self.fs;
        if !self.view.ready || overflow {
            // Whole again next time unless this read gets through.
            self.view.ready = false;
            // Held as the commit this read was at (`LocalView::read_pin`).
            let snap = fs.store().latest()?;
            let (trees, status) = (self.trees, self.status);
            let mut full = false;
            let mut spill = |t: &mut crate::sync::tree::Tree| {
                if full {
                    return Ok(Vec::new());
                }
                let went = spill(trees, t, status)?;
                full = went.is_none();
                Ok(went.unwrap_or_default())
            };
            let spill_at = self.spill_at;
            let read = read_whole(fs, &snap, &self.peer.synced, spill_at, &mut spill);
            let (local, differ) = match read {
                Ok(r) => r,
                Err(e) => {
                    if self.peer.local.is_spilled() {
                        // The read's spills took the tree store's place of
                        // the spilled changes of the local tree it was to
                        // replace, which can no longer read them: it goes,
                        // and the next read (whole) brings it back.
                        self.peer.local = self.peer.synced.clone();
                        self.peer.mark_all();
                    }
                    return Err(e);
                }
            };
            self.peer.local = local;
            self.peer.mark_read(differ);
            self.view.ready = true;
            let version = snap.version();
            self.view.read_pin = Some(fs.shared_store().pin_snapshot(snap)?);
            return Ok(version);
        }
        let through = self.view.read_through;
        // A commit no longer kept is read at the latest (and then whole,
        // below).
        let snap = fs.commit_or_latest(through)?;
        let part = fs.committed_part(&snap, &inodes, &blocks, through, &entries)?;
        if through != 0 && part.version != through {
            // That commit is no longer kept: what the sets hold was read
            // at a later one, whose other changes the tree would lack.
            self.view.ready = false;
            return self.read_local();
        }
        // An inode that went is known by the id it had at the last read.
        let Some(read_pin) = self.view.read_pin.take() else {
            self.view.ready = false;
            return self.read_local();
        };
        let read_snap = read_pin.snapshot();
        let mut was = |ino| fs.file_id_at(&read_snap, ino).map_err(SyncError::from);
        let mut complete =
            self.view
                .refresh(&mut self.peer.local, part.files, part.entries, &mut was)?;
        if !complete.again.is_empty() {
            // Read in part, but new to the tree: read them whole.
            let rest = fs.committed_part(&snap, &complete.again, &HashMap::new(), through, &[])?;
            let more = self
                .view
                .refresh(&mut self.peer.local, rest.files, Vec::new(), &mut was)?;
            complete.changed.extend(more.changed);
        }
        drop(read_snap);
        drop(read_pin);
        self.view.read_pin = Some(fs.shared_store().pin_snapshot(snap)?);
        self.peer.share(complete.changed.iter().copied());
        self.peer.mark(complete.changed.iter().copied());
        if !complete.whole {
            // An entry names a file this tree does not have: read it whole.
            self.view.ready = false;
            return self.read_local();
        }
        self.spill_if_due()?;
        Ok(part.version)
    }

    /// The gap to wait after the last push: the one its size set while
    /// commits made here keep coming, the least once none came since it
    /// (a quiet mount has no writes to leave the machine to, and a
    /// backlog goes as fast as the server takes it; changes applied from
    /// elsewhere are this thread's own work).
    pub(super) fn gap_now(&self) -> Duration {
        if self.view.touched.lock().own_through > self.pushed_through {
            self.gap
        } else {
            PUSH_GAP
        }
    }

    /// Moves the local tree's changes out of memory once it holds
    /// `spill_at` of them (`-o sync_spill`): a backlog of changes not yet pushed is kept
    /// in the tree store. Without room for it there, the backlog stays in
    /// memory until there is.
    pub(super) fn spill_if_due(&mut self) -> Result<(), SyncError> {
        if self.peer.local.changes() < self.spill_at || self.peer.local.is_recording() {
            return Ok(());
        }
        if let Some(went) = spill(self.trees, &mut self.peer.local, self.status)? {
            self.peer.spilled(&went);
        }
        Ok(())
    }

    pub(super) fn push(&mut self) -> Result<(), SyncError> {
        if self.peer.in_flight() || !self.inc.is_empty() || self.peer.applied < self.welcome_head {
            return Ok(());
        }
        if self.last_push.is_some_and(|t| t.elapsed() < self.gap_now()) {
            self.push_later = true;
            return Ok(());
        }
        // Nothing committed since the tree was last read and pushed.
        if self.read_at != 0 && self.view.touched.lock().through == self.read_at {
            return Ok(());
        }
        let version = self.read_local()?;
        // Held until the push is acknowledged (see `push_snap`); if that
        // version is already gone, a newer commit came: read again later.
        let Ok(snap) = self.fs.store().snapshot(version) else {
            self.read_at = 0;
            return Ok(());
        };
        self.read_at = self.view.read_through;
        let push = self.peer.push();
        // A tree read that failed reads as a file not there: never push it.
        self.trees.check()?;
        let whole = !self.peer.has_waiting();
        if push.is_none() && whole {
            self.status.lock().queued.through(version);
        }
        if let Some(cs) = push {
            self.whole_at = whole.then_some((cs.counter, version));
            self.pushed_through = self.view.read_through;
            self.push_snap = Some(snap);
            self.push_places.clear();
            self.patched.clear();
            for op in &cs.ops {
                if let crate::sync::tree::Op::Node { fid, blocks, .. } = op {
                    for (i, h) in blocks {
                        if let Some(h) = h {
                            self.push_places.insert(*h, (*fid, *i));
                        }
                    }
                }
            }
            self.status.lock().in_flight_ops = cs.ops.len() as u64;
            tracing::debug!(counter = cs.counter, ops = cs.ops.len(), "sync push");
            self.owed.clear();
            self.gap = push_gap(cs.ops.len(), self.push_places.len());
            self.send(&Msg::Push(cs))?;
            self.last_push = Some(tokio::time::Instant::now());
        }
        Ok(())
    }
}

/// Spills `t`'s changes into `trees` (`TreeStore::spill`), counted in the
/// status: the files whose changes went, or `None` when the tree store's
/// disk has no room (they stay in memory, and that is said).
fn spill(
    trees: &TreeStore,
    t: &mut crate::sync::tree::Tree,
    status: &Mutex<Status>,
) -> Result<Option<Vec<FileId>>, SyncError> {
    match trees.spill(t) {
        Ok(went) => {
            status.lock().spills += 1;
            Ok(Some(went))
        }
        Err(e) if e.is_no_space() => {
            tracing::warn!("sync: the changes not yet pushed stay in memory: {e}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One small change waits the least gap; a big push makes the next
    /// wait longer, up to the most.
    #[test]
    fn the_gap_after_a_push_grows_with_what_it_carried_up_to_a_bound() {
        assert_eq!(push_gap(0, 0), PUSH_GAP);
        assert!(push_gap(2, 1) < Duration::from_millis(21));
        assert!(push_gap(250, 0) > Duration::from_millis(60));
        assert!(push_gap(200, 200) < PUSH_GAP_MAX);
        assert_eq!(push_gap(1024, 1024), PUSH_GAP_MAX);
        assert_eq!(push_gap(usize::MAX, usize::MAX), PUSH_GAP_MAX);
    }
}
